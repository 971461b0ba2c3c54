"""Sweep overhead and the Optuna sampler/storage cost (issue #5's benchmark), measured in one run.

1. Overhead of the smoke study: the fraction of the sweep's wall time spent outside training steps
   (Ray start-up, scheduling, worker start-up, data preparation, evaluation, checkpoints, results
   writing). Training time is the sum over trials and epochs of the reported ``epoch_time_s`` (the
   steps only); wall time spans the first trial row written to the last.
   Either runs the smoke sweep (``--run``) or reads an existing experiment (``--experiment runs/smoke``).
2. Sampler + storage cost per trial at 1,000 trials for the smoke space's define-by-run function:
   SQLite (what a sweep uses) vs in-memory Optuna storage, ask + tell, side by side.

    python benchmarks/bench_sweep.py --experiment runs/smoke [--trials 1000]
    python benchmarks/bench_sweep.py --run                    # runs search_spaces/smoke.yaml first
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def overhead(experiment: str) -> None:
    import polars as pl

    from mdf_search.results.store import ResultsStore

    store = ResultsStore(experiment)
    epochs, trials = store.epochs(), store.trials()
    training = float(epochs["epoch_time_s"].sum())
    evaluated = float(trials["wall_s"].sum())
    stamps = pl.concat([trials["written_at"], epochs["written_at"]])
    span = (stamps.max() - stamps.min()).total_seconds()  # type: ignore[operator, union-attr]
    first_trial_startup = float(trials["wall_s"].min())
    wall = span + first_trial_startup  # the first row is written after the first trial's first epoch
    print(f"experiment {experiment}: {trials.height} trials, {epochs.height} epoch reports")
    print(f"  sweep wall time (approx.)        {wall:8.1f} s")
    print(f"  trial wall time, summed          {evaluated:8.1f} s")
    print(f"  training steps, summed           {training:8.1f} s")
    print(f"  overhead fraction of the sweep   {1 - training / wall:8.3f}  (time outside training steps)")
    print(
        f"  overhead fraction inside trials  {1 - training / evaluated:8.3f}  (start-up, eval, checkpoints)"
    )


def sampler_cost(trials: int) -> None:
    import optuna

    from mdf_search.search.designs import define_by_run
    from mdf_search.search.samplers import make_sampler
    from mdf_search.search.space import load_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(ROOT / "search_spaces" / "hpo.yaml")  # a TPE design: the sampler does real work
    space = define_by_run(spec)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, storage in (("in-memory", None), ("sqlite", f"sqlite:///{tmp}/bench.db")):
            study = optuna.create_study(
                study_name="bench", storage=storage, sampler=make_sampler(spec), direction="maximize"
            )
            start = time.perf_counter()
            for i in range(trials):
                trial = study.ask()
                space(trial)
                study.tell(trial, float(i % 17) / 17)
            results[name] = (time.perf_counter() - start) / trials
    print(f"\nsampler + storage per trial, {trials} trials of {Path(spec.path).name} (TPE, ask + tell):")
    for name, seconds in results.items():
        print(f"  {name:10s} {seconds * 1000:8.2f} ms/trial")
    print(f"  ratio sqlite / in-memory: {results['sqlite'] / results['in-memory']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="runs/smoke")
    parser.add_argument("--run", action="store_true", help="run search_spaces/smoke.yaml first")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="CI: the sampler cost at 20 trials only")
    args = parser.parse_args()
    if args.quick:
        sampler_cost(20)
        return
    if args.run:
        subprocess.run(
            [sys.executable, "-m", "mdf_search.cli", "sweep", "search_spaces/smoke.yaml", "--no-report"],
            cwd=ROOT,
            check=True,
        )
    if Path(args.experiment).exists():
        overhead(args.experiment)
    else:
        print(f"{args.experiment}: no experiment; run with --run first")
    sampler_cost(args.trials)


if __name__ == "__main__":
    main()
