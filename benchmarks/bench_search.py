"""Search that needs a third of the grid (issue 12): a tabular benchmark of ASHA + TPE and ASHA + QMC.

The method of HPOBench/LCBench: run the full grid for real once (``benchmarks/search_grid.yaml``: the
smoke study's calibrated synthetic data, tiny preset, 14 arms, 4 epochs), keep every epoch's validation
metric per arm and seed as a table (``benchmarks/data/search_grid.csv``), then replay search strategies
against the table. The replay goes through the platform's own machinery: the spec loader, the
define-by-run (``designs.define_by_run``), the per-arm sampler (``samplers.make_sampler``), the Optuna
searcher on SQLite (``ResumableOptunaSearch``) and ``PerArmASHA``, in a real Ray Tune run. Only the
trainable is a stand-in: a plain function that reports the table's values epoch by epoch.

The replayed study is the grid turned into a tuning problem: one arm (the preset), the grid's factors as
categorical nuisance parameters (conditions kept), ``design: tpe|qmc`` and ``scheduler: asha``, a budget
of as many trials as the grid has. A strategy's cost is the trial-epochs reported until its best value so
far is within ``--tolerance`` (1 point: 0.01) of the grid's best arm; the grid's own cost is
arms x seeds x epochs (it knows its best arm only once every epoch of every arm has run). Target: at most
a third of the grid's, in every repeat. Beside it: the expected cost of trying the grid's trials in a
uniformly random order, each to its last epoch, until one is within the tolerance.

    .venv/bin/python -m benchmarks.bench_search                    # 3 repeats each against the table
    .venv/bin/python -m benchmarks.bench_search --quick            # a synthetic table, 1 repeat, seconds
    .venv/bin/mdf-search sweep benchmarks/search_grid.yaml --storage /tmp/bs --no-report   # the grid
    .venv/bin/python -m benchmarks.bench_search --extract /tmp/bs/bench_search   # -> the table (CSV)
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_search.py` as well as `-m benchmarks.bench_search`
    sys.path.insert(0, str(ROOT))

from mdf_search.search.designs import arms  # noqa: E402  (pure: no Ray, no torch)
from mdf_search.search.space import SearchSpec, canonical, load_spec  # noqa: E402
from mdf_search.yamlio import read_yaml_mapping  # noqa: E402

GRID_SPEC = ROOT / "benchmarks" / "search_grid.yaml"
TABLE = ROOT / "benchmarks" / "data" / "search_grid.csv"
TOLERANCE = 0.01  # "within 1 point" of the grid's best arm
ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
STRATEGIES = ("tpe", "qmc")
# Further columns of the table beside the grid's own metric (each with its mode): the grid's macro F1
# saturates (a fused arm classifies the 50 validation images perfectly), its validation loss does not.
EXTRA_METRICS = {"val/loss": "min"}


# ---------------------------------------------------------------------------------------------------
# The table and the counting (pure; tests/benchmarks/test_bench_search.py).
# ---------------------------------------------------------------------------------------------------
def improves(value: float, best: float | None, mode: str) -> bool:
    """``value`` is better than ``best`` under ``mode`` (None: nothing yet)."""
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def within(value: float, target: float, mode: str, tolerance: float) -> bool:
    """``value`` is at most ``tolerance`` worse than ``target`` (better counts too)."""
    slack = 1e-12  # 0.99 is within 0.01 of 1.0 although 1.0 - 0.99 rounds to 0.010000000000000009
    return value >= target - tolerance - slack if mode == "max" else value <= target + tolerance + slack


def epochs_to_target(reports: Iterable[float], target: float, mode: str, tolerance: float) -> int | None:
    """Trial-epochs (reports, in the order the driver got them) until the best so far is within
    ``tolerance`` of ``target``, counting the report that gets there; None if none does."""
    best: float | None = None
    for count, value in enumerate(reports, start=1):
        if math.isnan(value):
            continue
        if improves(value, best, mode):
            best = value
        if best is not None and within(best, target, mode, tolerance):
            return count
    return None


@dataclass(frozen=True)
class Table:
    """Every epoch's validation metric of a grid: ``curves[(arm, seed)]`` = values at epochs 1..E."""

    metric: str
    mode: str
    curves: Mapping[tuple[str, int], tuple[float, ...]]

    @property
    def arms(self) -> list[str]:
        return sorted({arm for arm, _ in self.curves})

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for _, seed in self.curves})

    @property
    def epochs(self) -> int:
        return max(len(c) for c in self.curves.values())

    def selected(self, arm: str, seed: int) -> float:
        """The trial's value at the epoch validation selects (the best under the mode, as the loop does)."""
        values = self.curves[(arm, seed)]
        return max(values) if self.mode == "max" else min(values)

    def arm_value(self, arm: str) -> float:
        """The arm's value: the mean over seeds of its trials' selected values."""
        return sum(self.selected(arm, s) for s in self.seeds) / len(self.seeds)

    def best(self) -> tuple[str, float]:
        """The grid's best arm and its value (ties: the first arm in sorted order)."""
        values = {arm: self.arm_value(arm) for arm in self.arms}
        pick = max if self.mode == "max" else min
        arm = pick(values, key=lambda a: values[a])
        return arm, values[arm]

    def grid_cost(self) -> int:
        """Trial-epochs the full grid runs: arms x seeds x epochs."""
        return sum(len(c) for c in self.curves.values())

    def arms_within(self, tolerance: float) -> list[str]:
        _, target = self.best()
        return [a for a in self.arms if within(self.arm_value(a), target, self.mode, tolerance)]

    def random_order_cost(self, tolerance: float) -> float | None:
        """Expected trial-epochs to get within ``tolerance`` of the best arm when the grid's trials run
        in a uniformly random order, each to its last epoch, stopping at the first report that gets
        there: E x (N - K) / (K + 1) for the K of N trials that get there, plus the mean epoch at which
        they do. None if no single trial gets there."""
        _, target = self.best()
        hits = [epochs_to_target(curve, target, self.mode, tolerance) for curve in self.curves.values()]
        good = [h for h in hits if h is not None]
        if not good:
            return None
        n, k = len(hits), len(good)
        return self.epochs * (n - k) / (k + 1) + sum(good) / k

    def check_design(self, spec: SearchSpec) -> None:
        """The table holds every (arm, seed) of ``spec`` with every epoch of its budget."""
        expected = {(a.id, s) for a in arms(spec) for s in spec.seeds}
        missing = sorted(expected - set(self.curves))
        short = sorted(k for k, c in self.curves.items() if len(c) != spec.budget.epochs)
        if missing or short or set(self.curves) - expected:
            raise ValueError(
                f"the table does not match {spec.path}: missing {missing[:5]}, short curves {short[:5]}, "
                f"unknown {sorted(set(self.curves) - expected)[:5]}; extract it from a finished grid run"
            )


def write_table(tables: Sequence[Table], path: Path, factors: Mapping[str, Mapping[str, Any]]) -> None:
    """CSV: ``arm, seed, epoch``, one column per table's metric (the tables cover the same trials), then
    the arm's factor values (``factors[arm]``) for reading."""
    keys = sorted({k for values in factors.values() for k in values})
    first = tables[0]
    if any(set(t.curves) != set(first.curves) for t in tables):
        raise ValueError("the tables cover different trials")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["arm", "seed", "epoch", *(t.metric for t in tables), *keys])
        for (arm, seed), curve in sorted(first.curves.items()):
            for epoch in range(1, len(curve) + 1):
                values = [repr(t.curves[(arm, seed)][epoch - 1]) for t in tables]
                out.writerow([arm, seed, epoch, *values, *(factors.get(arm, {}).get(k, "") for k in keys)])


def read_table(path: Path, metric: str, mode: str) -> Table:
    points: dict[tuple[str, int], dict[int, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["arm"], int(row["seed"]))
            points.setdefault(key, {})[int(row["epoch"])] = float(row[metric])
    curves = {}
    for key, by_epoch in points.items():
        if sorted(by_epoch) != list(range(1, len(by_epoch) + 1)):
            raise ValueError(f"{path}: {key} has epochs {sorted(by_epoch)}; expected 1..{len(by_epoch)}")
        curves[key] = tuple(by_epoch[e] for e in sorted(by_epoch))
    return Table(metric, mode, curves)


def synthetic_table(spec: SearchSpec, seed: int = 0) -> Table:
    """A made-up table over ``spec``'s arms and seeds (``--quick``): each arm climbs towards its own
    ceiling in [0.45, 0.85], one arm towards 0.97; small per-epoch noise."""
    rng = random.Random(seed)
    arm_ids = [a.id for a in arms(spec)]
    ceilings = {a: rng.uniform(0.45, 0.85) for a in arm_ids}
    ceilings[rng.choice(arm_ids)] = 0.97
    curves = {}
    for arm in arm_ids:
        for s in spec.seeds:
            curve = [
                0.4 + (ceilings[arm] - 0.4) * (1 - 0.5**e) + rng.uniform(-0.01, 0.01)
                for e in range(1, spec.budget.epochs + 1)
            ]
            curves[(arm, s)] = tuple(round(v, 6) for v in curve)
    return Table(spec.metric, spec.mode, curves)


# ---------------------------------------------------------------------------------------------------
# The replayed study: the grid's factors as nuisance parameters of one arm.
# ---------------------------------------------------------------------------------------------------
def replay_raw(
    grid_raw: Mapping[str, Any],
    design: str,
    scheduler: Mapping[str, Any],
    trials: int,
    objective: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The search-space file of the replay: one arm (the grid's preset), the grid's scientific and
    (pinned) nuisance parameters as nuisance, in file order, conditions kept. ``objective``: (metric,
    mode) to search on instead of the grid's."""
    metric, mode = objective or (grid_raw["metric"], grid_raw["mode"])
    fixed = dict(grid_raw.get("fixed") or {})
    preset = fixed.pop("model.preset", "tiny")
    resources = dict(grid_raw.get("resources") or {})
    return {
        "experiment": f"{grid_raw['experiment']}-{design}",
        "description": f"replay of {grid_raw['experiment']} with {design} + {scheduler['type']}",
        "metric": metric,
        "mode": mode,
        "design": design,
        "seeds": list(grid_raw.get("seeds") or [0]),
        "budget": {"trials": trials, "epochs": grid_raw["budget"]["epochs"]},
        "scheduler": dict(scheduler),
        "scientific": {"model.preset": [preset]},
        "nuisance": {**grid_raw["scientific"], **(grid_raw.get("nuisance") or {})},
        "fixed": fixed,
        "resources": {"workers": resources.get("workers", 1), "concurrent_trials": 1, "gpus_per_worker": 0},
    }


def replay_spec(
    grid_path: Path,
    design: str,
    directory: Path,
    scheduler: Mapping[str, Any] = ASHA,
    objective: tuple[str, str] | None = None,
) -> SearchSpec:
    """Write and load the replay's search-space file (the platform's loader checks it)."""
    grid = load_spec(grid_path)
    for key, param in grid.nuisance.items():
        if param.choices is None or len(param.choices) != 1:
            raise ValueError(
                f"{grid_path}: nuisance.{key}: the table holds one value of each nuisance parameter; pin it "
                "to one choice or make it scientific"
            )
    trials = len(arms(grid)) * len(grid.seeds)
    raw = replay_raw(read_yaml_mapping(grid_path), design, scheduler, trials, objective)
    path = directory / f"{raw['experiment']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_spec(path)


def arm_index(spec: SearchSpec) -> list[tuple[str, dict[str, Any]]]:
    """The grid's arms as (id, canonical values), for :func:`grid_arm_of`."""
    return [(a.id, {k: canonical(k, v) for k, v in a.params.items()}) for a in arms(spec)]


def grid_arm_of(index: Sequence[tuple[str, Mapping[str, Any]]], params: Mapping[str, Any]) -> str:
    """The grid arm whose every value the trial's flat params hold (canonically: "23" is levels (2, 3))."""
    for arm_id, values in index:
        if all(k in params and canonical(k, params[k]) == v for k, v in values.items()):
            return arm_id
    raise KeyError(f"no grid arm matches {dict(params)}")


# ---------------------------------------------------------------------------------------------------
# The Tune run (Ray and Optuna load here only).
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    trial_id: str
    arm: str
    seed: int
    epoch: int
    value: float


def replay_trainable(
    config: dict[str, Any],
    curves: Mapping[tuple[str, int], tuple[float, ...]],
    index: Sequence[tuple[str, Mapping[str, Any]]],
    metric: str,
    mode: str,
) -> None:
    """The stand-in trial: report the table's values epoch by epoch, with the keys the training loop
    reports (``status``, ``best_epoch``, ``best_value``, ``selected/<metric>``)."""
    from ray import tune

    params = config["params"]
    arm, seed = grid_arm_of(index, params), int(params["seed"])
    curve = curves[(arm, seed)]
    best: float | None = None
    best_epoch = 0
    for epoch, value in enumerate(curve, start=1):
        if improves(value, best, mode):
            best, best_epoch = value, epoch
        tune.report(
            {
                "epoch": epoch,
                "status": "completed" if epoch == len(curve) else "running",
                metric: value,
                "best_epoch": best_epoch,
                "best_value": best,
                f"selected/{metric}": best,
                "grid_arm": arm,
            }
        )


def _recorder(metric: str) -> Any:
    from ray.tune import Callback

    class Recorder(Callback):
        """Every report the driver receives, in order."""

        def __init__(self) -> None:
            self.reports: list[Report] = []

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            self.reports.append(
                Report(
                    trial.trial_id,
                    str(result["grid_arm"]),
                    int(trial.config["params"]["seed"]),
                    int(result["epoch"]),
                    float(result[metric]),
                )
            )

    return Recorder()


def replay(
    spec: SearchSpec, grid: SearchSpec, table: Table, sampler_seed: int, workdir: Path
) -> list[Report]:
    """One Tune run of ``spec`` (a replay spec) against ``table``; the reports in the order they came."""
    import optuna
    from ray import tune

    from mdf_search.search.callbacks import PerArmASHA, ResumableOptunaSearch
    from mdf_search.search.designs import default_storage_url, define_by_run, num_trials
    from mdf_search.search.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir.mkdir(parents=True, exist_ok=True)
    searcher = ResumableOptunaSearch(
        space=define_by_run(spec),
        metric=spec.metric,
        mode=spec.mode,
        sampler=make_sampler(spec, seed=sampler_seed),
        storage=optuna.storages.RDBStorage(default_storage_url(workdir)),
        study_name=spec.experiment,
    )
    scheduler = None
    if spec.scheduler.type == "asha":
        scheduler = PerArmASHA(
            spec.metric,
            spec.mode,
            max_t=spec.budget.epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    recorder = _recorder(spec.metric)
    trainable = tune.with_parameters(
        replay_trainable, curves=dict(table.curves), index=arm_index(grid), metric=spec.metric, mode=spec.mode
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_trials(spec),
            max_concurrent_trials=1,  # sequential: the count of trial-epochs has one order
            reuse_actors=True,  # the stand-in is instant; a fresh actor per trial would only cost time
            metric=spec.metric if scheduler is None else None,
            mode=spec.mode if scheduler is None else None,
        ),
        run_config=tune.RunConfig(
            name=spec.experiment, storage_path=str(workdir), callbacks=[recorder], verbose=0
        ),
    )
    tuner.fit()
    return list(recorder.reports)


@dataclass(frozen=True)
class Outcome:
    strategy: str
    repeat: int
    cost: int | None  # trial-epochs to within the tolerance; None: never
    trials: int
    trial_epochs: int
    best: float
    arms_tried: int


def outcome(
    strategy: str, repeat: int, reports: Sequence[Report], target: float, mode: str, tolerance: float
) -> Outcome:
    values = [r.value for r in reports]
    best = (max if mode == "max" else min)(values) if values else math.nan
    return Outcome(
        strategy,
        repeat,
        epochs_to_target(values, target, mode, tolerance),
        len({r.trial_id for r in reports}),
        len(reports),
        best,
        len({r.arm for r in reports}),
    )


def print_results(table: Table, outcomes: Sequence[Outcome], tolerance: float) -> bool:
    """The comparison table; True when every repeat of every strategy meets the target."""
    grid = table.grid_cost()
    arm, value = table.best()
    good = table.arms_within(tolerance)
    print(
        f"\ngrid: {len(table.arms)} arms x {len(table.seeds)} seed(s) x {table.epochs} epochs = {grid} "
        f"trial-epochs; best arm {arm} ({table.metric} {value:.4f}); {len(good)} arm(s) within {tolerance:g}"
    )
    random_cost = table.random_order_cost(tolerance)
    if random_cost is not None:
        print(
            f"random order, no early stopping (expected): {random_cost:.1f} trial-epochs ({random_cost / grid:.2f} of the grid)"
        )
    print(f"target: at most {grid / 3:.1f} trial-epochs (a third of the grid's) in every repeat\n")
    print(
        f"{'strategy':10s} {'repeat':>6s} {'to within':>10s} {'/ grid':>7s} {'trials':>7s} {'trial-ep':>9s} {'arms':>5s} {'best':>7s}"
    )
    met = True
    for o in outcomes:
        cost = "never" if o.cost is None else str(o.cost)
        ratio = "-" if o.cost is None else f"{o.cost / grid:.2f}"
        print(
            f"asha+{o.strategy:5s} {o.repeat:6d} {cost:>10s} {ratio:>7s} {o.trials:7d} {o.trial_epochs:9d} "
            f"{o.arms_tried:5d} {o.best:7.4f}"
        )
        met = met and o.cost is not None and o.cost <= grid / 3
    for strategy in sorted({o.strategy for o in outcomes}):
        costs = [o.cost for o in outcomes if o.strategy == strategy]
        if all(c is not None for c in costs):
            mean = sum(c for c in costs if c is not None) / len(costs)
            print(f"asha+{strategy}: mean {mean:.1f} trial-epochs = {mean / grid:.2f} of the grid's")
        else:
            print(
                f"asha+{strategy}: {sum(c is None for c in costs)} of {len(costs)} repeats never got within {tolerance:g}"
            )
    print(f"\ntarget met: {'yes' if met else 'no'}")
    return met


# ---------------------------------------------------------------------------------------------------
# Extracting the table from a real grid run.
# ---------------------------------------------------------------------------------------------------
def extract(experiment_dir: Path, out: Path) -> list[Table]:
    """The tables of a finished grid run (its metric, then ``EXTRA_METRICS``): each completed trial's
    (latest attempt's) epochs."""
    import polars as pl

    from mdf_search.results.store import ResultsStore

    spec = load_spec(experiment_dir / "spec.yaml")
    store = ResultsStore(str(experiment_dir))
    trials = store.trials().filter(pl.col("status") == "completed")
    epochs = store.epochs().join(trials.select("trial_id", "attempt", "seed"), on=["trial_id", "attempt"])
    tables = []
    for metric, mode in {spec.metric: spec.mode, **EXTRA_METRICS}.items():
        curves: dict[tuple[str, int], dict[int, float]] = {}
        for arm, seed, epoch, value in epochs.select("arm", "seed", "epoch", metric).iter_rows():
            curves.setdefault((str(arm), int(seed)), {})[int(epoch)] = float(value)
        table = Table(metric, mode, {k: tuple(v[e] for e in sorted(v)) for k, v in curves.items()})
        table.check_design(spec)
        tables.append(table)
    write_table(tables, out, {a.id: dict(a.params) for a in arms(spec)})
    print(f"{out}: {len(tables[0].curves)} trials x {tables[0].epochs} epochs from {experiment_dir}")
    return tables


# ---------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=GRID_SPEC, help="the grid's search-space file")
    parser.add_argument("--table", type=Path, default=TABLE, help="the grid's table (CSV)")
    parser.add_argument("--quick", action="store_true", help="a synthetic table, 1 repeat each (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="sampler seeds per strategy")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument(
        "--metric",
        help=f"search on this column of the table instead of the grid's metric ({', '.join(EXTRA_METRICS)})",
    )
    parser.add_argument(
        "--extract", type=Path, metavar="EXPERIMENT_DIR", help="write --table from a grid run"
    )
    args = parser.parse_args(argv)
    if args.extract:
        extract(args.extract, args.table)
        return 0
    grid = load_spec(args.spec)
    metric = args.metric or grid.metric
    mode = grid.mode if metric == grid.metric else EXTRA_METRICS.get(metric)
    if mode is None:
        parser.error(f"--metric: the table holds {grid.metric} and {', '.join(EXTRA_METRICS)}")
    if args.quick:
        if metric != grid.metric:
            parser.error("--quick replays a synthetic table of the grid's own metric; drop --metric")
        table, repeats = synthetic_table(grid), 1
        print("--quick: a synthetic table over the grid's arms (no training)")
    else:
        table, repeats = read_table(args.table, metric, mode), args.repeats
        print(f"table: {args.table} ({metric}, {mode})")
    table.check_design(grid)
    _, target = table.best()

    from mdf_search.cluster import connect, shutdown

    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    ray_tmp = tempfile.mkdtemp(prefix="mdfray-", dir="/tmp")  # AF_UNIX socket paths must stay short
    os.environ.setdefault("RAY_TMPDIR", ray_tmp)
    outcomes = []
    try:
        connect(temp_dir=ray_tmp, num_cpus=2, trial_slots=1)
        for strategy in STRATEGIES:
            spec = replay_spec(args.spec, strategy, tmp, objective=(metric, mode))
            for repeat in range(repeats):
                reports = replay(spec, grid, table, repeat, tmp / f"{strategy}-{repeat}")
                outcomes.append(outcome(strategy, repeat, reports, target, mode, args.tolerance))
    finally:
        shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print_results(table, outcomes, args.tolerance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
