"""Cost as work grows (issue 12): study wall time and bookkeeping per trial at 10, 50 and 200 trials.

Function-only trials (each sleeps ``--sleep`` seconds per epoch and reports what the training loop
reports) run two ways, side by side in one Ray session, size after size:

- platform: the Tune pieces of ``mdf-search sweep`` (``search/runner.py``): ``ResultsWriter`` writing
  real Parquet parts (and compacting them), ``SweepGuard``, ``ResumableOptunaSearch`` on SQLite with the
  platform's sampler (``make_sampler``: per-arm TPE) and define-by-run, a ``trial_slot`` per trial;
  reusing trial processes as the runner does without a scheduler (``reuse_actors``);
- bare Tune: the same function, no callbacks, no stopper, ``OptunaSearch`` with an in-memory TPE,
  Tune's defaults (a fresh process per trial).

Bookkeeping per trial = (wall - the trials' own time / concurrency) / trials, where the trials' own time
is trials x epochs x sleep. Printed per size and side, with the time spent inside the results writer and
the searcher (ms per trial); the platform's must not grow with the number of trials. Timed numbers on a
shared machine are noisy: compare the two sides of one run.

    .venv/bin/python -m benchmarks.bench_scale             # 10, 50, 200 trials
    .venv/bin/python -m benchmarks.bench_scale --quick     # 10 trials (CI)
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_scale.py` as well as `-m benchmarks.bench_scale`
    sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from mdf_search.cluster import TRIAL_SLOT, connect, shutdown  # noqa: E402
from mdf_search.results.store import ResultsStore  # noqa: E402
from mdf_search.search.callbacks import ResultsWriter, ResumableOptunaSearch, SweepGuard  # noqa: E402
from mdf_search.search.designs import default_storage_url, define_by_run  # noqa: E402
from mdf_search.search.samplers import make_sampler  # noqa: E402
from mdf_search.search.space import SearchSpec, load_spec  # noqa: E402
from mdf_search.train.selection import Selection  # noqa: E402

METRIC, MODE = "val/macro_f1", "max"
GROWS = 1.5  # per-trial bookkeeping at the largest size over the smallest's above this: it grows


def scale_spec(directory: Path, trials: int, epochs: int, concurrency: int) -> SearchSpec:
    """A TPE study of ``trials`` trials over one nuisance range of one arm (what the platform samples)."""
    raw = {
        "experiment": f"bench_scale-{trials}",
        "metric": METRIC,
        "mode": MODE,
        "design": "tpe",
        "seeds": [0],
        "budget": {"trials": trials, "epochs": epochs},
        "scientific": {"model.preset": ["tiny"]},
        "nuisance": {"optim.lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True}},
        "fixed": {"run.device": "cpu"},
        "resources": {"workers": 1, "concurrent_trials": concurrency},
    }
    path = directory / f"{raw['experiment']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_spec(path)


def sleep_trainable(config: dict[str, Any], epochs: int, sleep_s: float) -> None:
    """Sleep per epoch; report the keys the training loop reports. The value peaks at lr 1e-4."""
    lr = float(config["params"]["optim.lr"] if "params" in config else config["lr"])
    value = 1.0 - abs(math.log10(lr) + 4.0) / 2.0
    for epoch in range(1, epochs + 1):
        time.sleep(sleep_s)
        tune.report(
            {
                "epoch": epoch,
                "status": "completed" if epoch == epochs else "running",
                METRIC: value,
                "best_epoch": 1,
                "best_value": value,
                f"selected/{METRIC}": value,
                "epoch_time_s": sleep_s,
            }
        )


class TimedWriter(ResultsWriter):
    """The platform's results writer, with the time spent in its callbacks."""

    busy_s = 0.0

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        start = time.perf_counter()
        super().on_trial_result(iteration, trials, trial, result, **info)
        self.busy_s += time.perf_counter() - start

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        start = time.perf_counter()
        super().on_trial_complete(iteration, trials, trial, **info)
        self.busy_s += time.perf_counter() - start


class _TimedSearch(Searcher):
    """Time spent in a searcher's suggest and result calls (first in the MRO of a concrete searcher)."""

    busy_s = 0.0

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        start = time.perf_counter()
        try:
            return super().suggest(trial_id)
        finally:
            self.busy_s += time.perf_counter() - start

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        start = time.perf_counter()
        super().on_trial_result(trial_id, result)
        self.busy_s += time.perf_counter() - start

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        start = time.perf_counter()
        super().on_trial_complete(trial_id, result=result, error=error)
        self.busy_s += time.perf_counter() - start


class TimedPlatformSearch(_TimedSearch, ResumableOptunaSearch):
    pass


class TimedBareSearch(_TimedSearch, OptunaSearch):
    pass


@dataclass(frozen=True)
class Run:
    side: str
    trials: int
    wall_s: float
    own_s: float  # the trials' own time: trials x epochs x sleep
    concurrency: int
    writer_s: float
    searcher_s: float

    @property
    def bookkeeping_s(self) -> float:
        """Per trial: (wall - own time / concurrency) / trials."""
        return (self.wall_s - self.own_s / self.concurrency) / self.trials


def platform_run(work: Path, trials: int, epochs: int, sleep_s: float, concurrency: int) -> Run:
    spec = scale_spec(work, trials, epochs, concurrency)
    root = work / "platform" / spec.experiment
    root.mkdir(parents=True)
    writer = TimedWriter(
        str(root), spec.experiment, {"git_sha": "bench", "versions": "{}"}, selection=Selection(METRIC, MODE)
    )
    searcher = TimedPlatformSearch(
        space=define_by_run(spec),
        metric=METRIC,
        mode=MODE,
        sampler=make_sampler(spec),
        storage=optuna.storages.RDBStorage(default_storage_url(root)),
        study_name=spec.experiment,
    )
    trainable = tune.with_resources(
        tune.with_parameters(sleep_trainable, epochs=epochs, sleep_s=sleep_s), {TRIAL_SLOT: 1}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=trials,
            max_concurrent_trials=concurrency,
            metric=METRIC,
            mode=MODE,
            reuse_actors=True,  # as the runner without a scheduler: trial processes are reused
        ),
        run_config=tune.RunConfig(
            name=spec.experiment,
            storage_path=str(root.parent),
            callbacks=[writer],
            stop=SweepGuard(writer),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    rows = ResultsStore(str(root)).trials()
    done = rows.filter(rows["status"] == "completed").height if rows.height else 0
    if done != trials:
        raise RuntimeError(f"platform run of {trials} trials wrote {done} completed trial rows")
    return Run(
        "platform", trials, wall, trials * epochs * sleep_s, concurrency, writer.busy_s, searcher.busy_s
    )


def bare_run(work: Path, trials: int, epochs: int, sleep_s: float, concurrency: int) -> Run:
    searcher = TimedBareSearch(
        space={"lr": optuna.distributions.FloatDistribution(1.0e-5, 1.0e-3, log=True)},
        metric=METRIC,
        mode=MODE,
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    tuner = tune.Tuner(
        tune.with_parameters(sleep_trainable, epochs=epochs, sleep_s=sleep_s),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=trials, max_concurrent_trials=concurrency
        ),
        run_config=tune.RunConfig(name=f"bare-{trials}", storage_path=str(work / "bare"), verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    if len(results) != trials or results.errors:
        raise RuntimeError(
            f"bare run of {trials} trials: {len(results)} results, {len(results.errors)} errors"
        )
    return Run("bare", trials, wall, trials * epochs * sleep_s, concurrency, 0.0, searcher.busy_s)


def print_runs(runs: Sequence[Run]) -> None:
    print(
        f"\n{'side':9s} {'trials':>6s} {'wall s':>8s} {'own/conc s':>10s} {'bookkeeping s/trial':>20s} {'writer ms/trial':>16s} {'searcher ms/trial':>18s}"
    )
    for r in runs:
        print(
            f"{r.side:9s} {r.trials:6d} {r.wall_s:8.1f} {r.own_s / r.concurrency:10.1f} {r.bookkeeping_s:20.3f} "
            f"{1000 * r.writer_s / r.trials:16.1f} {1000 * r.searcher_s / r.trials:18.1f}"
        )
    sizes = sorted({r.trials for r in runs})
    by = {(r.side, r.trials): r for r in runs}
    print()
    for n in sizes:
        p, b = by[("platform", n)], by[("bare", n)]
        print(
            f"{n:4d} trials: platform / bare wall {p.wall_s / b.wall_s:.2f}; platform's extra bookkeeping "
            f"{p.bookkeeping_s - b.bookkeeping_s:+.3f} s/trial"
        )
    if len(sizes) < 2:
        print("growth: one size only (--quick); run without --quick for 10, 50 and 200 trials")
        return
    small, large = sizes[0], sizes[-1]
    for side in ("platform", "bare"):
        a, z = by[(side, small)], by[(side, large)]
        ratio = z.bookkeeping_s / a.bookkeeping_s
        inner_a = (a.writer_s + a.searcher_s) / a.trials
        inner_z = (z.writer_s + z.searcher_s) / z.trials
        verdict = "GROWS" if ratio > GROWS else "does not grow"
        print(
            f"{side}: bookkeeping per trial at {large} / at {small} trials = {ratio:.2f} ({verdict}, threshold "
            f"{GROWS}); writer + searcher {1000 * inner_a:.1f} -> {1000 * inner_z:.1f} ms/trial"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 trials only (CI)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds per epoch")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [10] if args.quick else sorted(args.sizes)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    ray_tmp = tempfile.mkdtemp(prefix="mdfray-", dir="/tmp")  # AF_UNIX socket paths must stay short
    os.environ.setdefault("RAY_TMPDIR", ray_tmp)
    runs = []
    try:
        connect(temp_dir=ray_tmp, num_cpus=args.concurrency, trial_slots=args.concurrency)
        bare_run(work / "warm-up", 2, 1, 0.0, args.concurrency)  # Ray's first actors and imports: untimed
        # Side by side, size after size, so that drift in the machine's load hits both; which side goes
        # first alternates, so that neither always finds the other's idle worker processes.
        for i, n in enumerate(sizes):
            sides = [platform_run, bare_run] if i % 2 == 0 else [bare_run, platform_run]
            for run in sides:
                runs.append(run(work, n, args.epochs, args.sleep, args.concurrency))
            walls = {r.side: r.wall_s for r in runs[-2:]}
            print(f"{n} trials: platform {walls['platform']:.1f} s, bare {walls['bare']:.1f} s", flush=True)
    finally:
        shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(
        f"function-only trials: {args.epochs} epochs x {args.sleep:g} s sleep, concurrency {args.concurrency}, "
        "one Ray session"
    )
    print_runs(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
