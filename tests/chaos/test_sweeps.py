"""Whole sweeps of function-only trials, each on its own embedded Ray: two studies under one storage
root at once, the failure classes (a deterministic OOM, a preemption-like kill), and load (200 trials)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mdf_search.results.store import ResultsStore
from tests.search.test_sweep_integration import _spec

from .helpers import Figures, check_results, check_study, start_driver, trained, write_plan

pytestmark = pytest.mark.integration
ARMS = ["fusion.levels=none", "fusion.levels=4|fusion.injection=parallel"]


def _study(
    tmp_path: Path, name: str, seeds: int, epochs: int, arms: int = 2
) -> tuple[Path, list[tuple[str, int]]]:
    scientific = {"fusion.levels": ["none", "4"][:arms]} if arms == 1 else None
    spec = _spec(
        tmp_path,
        name,
        seeds=list(range(seeds)),
        budget={"trials": arms * seeds, "epochs": epochs},
        resources={"workers": 1, "concurrent_trials": 2},
        **({"scientific": scientific, "baseline": {"fusion.levels": "none"}} if scientific else {}),
    )
    return spec, [(a, s) for a in ARMS[:arms] for s in range(seeds)]


def test_two_studies_under_one_root_at_once_stay_apart(tmp_path: Path) -> None:
    figures = Figures("two studies under one storage root at once")
    storage = tmp_path / "runs"
    plan = write_plan(tmp_path / "plan.json", log=str(tmp_path / "trained.jsonl"))
    studies = {name: _study(tmp_path, name, seeds=3, epochs=2) for name in ("left", "right")}
    drivers = {name: start_driver(spec, storage, plan=plan, run=name) for name, (spec, _) in studies.items()}
    for driver in drivers.values():
        assert driver.wait(timeout=300) == 0, driver.tail()
        figures.runs += 1
    for name, (_, planned) in studies.items():
        root = storage / name
        trials = check_results(root, planned, 2, figures, statuses={"completed"})
        assert set(trials["experiment"]) == {name}
        check_study(f"sqlite:///{root / 'optuna.db'}", name, len(planned))
        own = set(trials["trial_id"])
        other = set(ResultsStore(str(storage / ({"left", "right"} - {name}).pop())).trials()["trial_id"])
        assert not own & other
        assert set(ResultsStore(str(root)).epochs()["trial_id"]) == own  # no epoch row of the other study
    figures.record()


def test_failure_classes_oom_is_a_result_preemption_is_retried(tmp_path: Path) -> None:
    """Seed 1's trials report a deterministic OOM: recorded as ``oom``, never retried, the sweep goes on.
    Seed 2's trials are SIGKILLed (their process) mid-trial once: Tune retries them from their checkpoint,
    and they end ``completed``, not as a failure of their configuration."""
    figures = Figures("failure classes: OOM recorded, preemption retried")
    spec, planned = _study(tmp_path, "classes", seeds=3, epochs=3)
    storage, root = tmp_path / "runs", tmp_path / "runs" / "classes"
    (tmp_path / "markers").mkdir()
    log = tmp_path / "trained.jsonl"
    plan = write_plan(tmp_path / "plan.json", log=str(log), oom_seeds=[1], preempt_seeds=[2],
                      markers=str(tmp_path / "markers"))  # fmt: skip
    driver = start_driver(spec, storage, plan=plan)
    assert driver.wait(timeout=300) == 0, driver.tail()
    figures.runs, figures.faults = 1, 2 * 2  # two arms: two OOMs, two kills
    summary = driver.summary()
    assert not summary["errors"] and not summary["stopped"], summary
    trials = check_results(root, planned, 3, figures)
    by_seed = {s: trials.filter(pl.col("seed") == s) for s in (0, 1, 2)}
    assert set(by_seed[1]["status"]) == {"oom"} and set(by_seed[1]["attempt"]) == {1}  # not retried
    assert set(by_seed[2]["status"]) == {"completed"} and set(by_seed[2]["attempt"]) == {2}  # retried
    assert set(by_seed[0]["status"]) == {"completed"}
    assert len(list((tmp_path / "markers").iterdir())) == 2
    # the retried attempt resumed after its last checkpointed epoch: each epoch trained once
    epochs = trained(log).filter(pl.col("seed") == 2)
    assert epochs.group_by("trial_id", "epoch").len()["len"].max() == 1
    # the preempted attempt's row says what happened to it; the trial's row is its retry
    every = ResultsStore(str(root)).trials(latest_attempt=False).filter(pl.col("seed") == 2)
    assert every.height == 4 and set(every.filter(pl.col("attempt") == 1)["status"]) == {"error"}, every
    check_study(f"sqlite:///{root / 'optuna.db'}", "classes", len(planned), failed=2)  # the OOMs
    figures.record()


def test_load_200_short_trials(tmp_path: Path) -> None:
    """200 one-epoch trials of 1 s each, two at a time, on the local cluster; the bookkeeping overhead is
    the sweep's wall time (two slots busy) over the trials' own time, less one."""
    figures = Figures("load: 200 short function-only trials")
    spec, planned = _study(tmp_path, "load", seeds=100, epochs=1)
    storage, root = tmp_path / "runs", tmp_path / "runs" / "load"
    log = tmp_path / "trained.jsonl"
    plan = write_plan(tmp_path / "plan.json", log=str(log), epoch_s=1.0)
    driver = start_driver(spec, storage, plan=plan)
    assert driver.wait(timeout=600) == 0, driver.tail()
    figures.runs = 1
    summary = driver.summary()
    trials = check_results(root, planned, 1, figures, statuses={"completed"})
    assert trials.height == 200
    own = trained(log).select((pl.col("t1") - pl.col("t0")).sum()).item()
    first = trained(log)["t0"].min()
    last = trained(log)["t1"].max()
    span = float(last - first)  # the sweep's time from the first trial's start to the last one's end
    overhead = 2 * span / own - 1
    figures.notes = json.dumps(
        {
            "trials_own_s": round(own, 1),
            "span_s": round(span, 1),
            "driver_wall_s": round(summary["wall_s"], 1),
            "overhead": round(overhead, 3),
        }
    )
    figures.record()
