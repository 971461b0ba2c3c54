"""Leaderboard and report speed on 1k/10k/100k trials, side by side with Ray Tune's ExperimentAnalysis.

    .venv/bin/python -m benchmarks.bench_report            # 1k, 10k, 100k (Tune up to 10k)
    .venv/bin/python -m benchmarks.bench_report --quick    # 1k, 10k (Tune up to 1k)

Our side: trials written with the real schema (``to_table``) as one compact Parquet file, exactly what
the store's compaction produces; then ``load_experiment`` + sort + top 20 (what ``mdf-search leaderboard``
does) and a full report. Tune's side: the same trials fabricated in Tune's on-disk format
(``experiment_state-<ts>.json`` with each trial's JSON state, plus per-trial ``result.json`` and
``params.json``), loaded with ``ExperimentAnalysis`` and ranked with ``get_best_trial`` + ``dataframe()``.
Targets: leaderboard at 100k trials < 1 s; >= 50x faster than Tune's loader at 10k.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mdf_search.config import TrialConfig
from mdf_search.report.ablation import write_report
from mdf_search.report.experiment import load_experiment
from mdf_search.report.leaderboard import leaderboard_frame
from mdf_search.report.synthetic import write_spec, write_trials

ARMS = [
    "fusion.levels=none",
    "fusion.levels=4",
    "fusion.levels=1234|film.placement=none",
    "fusion.levels=1234|film.placement=enc",
]


def rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    base = TrialConfig.from_flat({}).to_flat()
    out = []
    for i in range(n):
        arm = ARMS[i % len(ARMS)]
        levels = arm.split("|")[0].split("=")[1]
        f1 = float(rng.uniform(0.3, 0.8))
        out.append(
            {
                **base, "experiment": "bench", "trial_id": f"t{i:07d}", "attempt": 1, "arm": arm,
                "status": "completed" if i % 17 else "error", "message": "", "epochs": 3, "wall_s": 30.0,
                "gpu_hours": 0.0, "cpu_hours": 0.016, "seed": (i // len(ARMS)) % 3, "fusion.levels": levels,
                "film.placement": "enc" if arm.endswith("enc") else "none", "optim.lr": float(rng.uniform(1e-4, 3e-3)),
                "val/macro_f1": f1, "val/accuracy": f1 + 0.01, "val/macro_recall": f1, "train_loss": 0.5,
                "trainable_params": 1.0e6, "val/recall/healthy": f1, "val/recall/acquired": f1, "val/recall/inherited": f1,
                "val/confusion": "[[5, 1, 0], [1, 4, 1], [0, 2, 4]]",
            }
        )  # fmt: skip
    return out


def ours(root: Path, n: int) -> None:
    write_spec(root, "bench")
    write_trials(str(root), rows(n))


def tune_dir(root: Path, trial_rows: list[dict[str, Any]]) -> Path:
    """Fabricate a Tune experiment directory of these trials (what Tuner.fit leaves on disk)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment.trial import Trial

    exp = root / "bench_tune"
    exp.mkdir(parents=True)
    states = []
    for r in trial_rows:
        dirname = f"trial_{r['trial_id']}"
        storage = StorageContext(
            storage_path=str(root), experiment_dir_name="bench_tune", trial_dir_name=dirname
        )
        config = {"params": {k: v for k, v in r.items() if "." in k or k == "seed"}, "arm": r["arm"]}
        trial = Trial(
            "trial_driver",
            config=config,
            trial_id=r["trial_id"],
            storage=storage,
            stub=True,
            placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
        )
        trial.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])  # what a real trial records
        trial.status = Trial.TERMINATED if r["status"] == "completed" else Trial.ERROR
        states.append(trial.get_json_state())
        tdir = exp / dirname
        tdir.mkdir()
        (tdir / "params.json").write_text(json.dumps(config))
        with (tdir / "result.json").open("w") as f:
            for epoch in (1, 2, 3):
                metrics = {k: v for k, v in r.items() if "/" in k and isinstance(v, float)}
                f.write(
                    json.dumps(
                        {
                            **metrics,
                            "epoch": epoch,
                            "training_iteration": epoch,
                            "trial_id": r["trial_id"],
                            "config": config,
                        }
                    )
                    + "\n"
                )
    state = {"trial_data": states, "runner_data": {}, "stats": {"start_time": time.time()}}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    return exp


def timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    tune_max = 1_000 if args.quick else 10_000
    os.environ.setdefault("RAY_AIR_NEW_PERSISTENCE_MODE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_report_"))
    print(f"{'trials':>8} {'leaderboard s':>14} {'report s':>9} {'tune load+rank s':>17} {'tune/ours':>10}")
    try:
        for n in sizes:
            root = tmp / f"ours_{n}"
            ours(root, n)

            def board(root: Path = root) -> None:
                leaderboard_frame(load_experiment(str(root)), top=20)

            t_board = timed(board)
            t_report = timed(
                lambda root=root, n=n: write_report(str(root), str(tmp / f"report_{n}")), repeat=1
            )
            t_tune = float("nan")
            if n <= tune_max:
                from ray.tune import ExperimentAnalysis

                exp = tune_dir(tmp / f"tune_{n}", rows(n))

                def tune_load(exp: Path = exp) -> None:
                    analysis = ExperimentAnalysis(str(exp), default_metric="val/macro_f1", default_mode="max")
                    analysis.dataframe().sort_values("val/macro_f1", ascending=False).head(20)

                t_tune = timed(tune_load, repeat=1)
            tune_text = f"{t_tune:>17.2f}" if t_tune == t_tune else f"{'(skipped)':>17}"
            ratio = f"{t_tune / t_board:>9.0f}x" if t_tune == t_tune else f"{'—':>10}"
            print(f"{n:>8} {t_board:>14.3f} {t_report:>9.2f} {tune_text} {ratio}", flush=True)
        print("targets: leaderboard at 100k < 1 s; >= 50x faster than Tune's loader at 10k")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
