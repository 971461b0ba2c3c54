"""Sweeps end to end on an embedded Ray: YAML → Tune + Optuna → Ray Train (DeepSpeed ZeRO-3) → Parquet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import pytest
import yaml

from mdf_search.results.store import ResultsStore
from mdf_search.search.runner import run_sweep
from mdf_search.search.space import load_spec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

FIXED = {
    "model.preset": "tiny",
    "data.synthetic_images": 72,
    "data.synthetic_size": 128,
    "optim.micro_batch": 4,
    "optim.lr": 1.0e-3,
    "film.placement": "none",
}


def _spec(tmp_path: Path, name: str, **overrides: Any) -> Path:
    body: dict[str, Any] = {
        "experiment": name,
        "description": "integration test",
        "metric": "val/loss",
        "mode": "min",
        "design": "grid",
        "seeds": [0],
        "budget": {"trials": 8, "epochs": 1},
        "scheduler": {"type": "none"},
        "scientific": {
            "fusion.levels": ["none", "4"],
            "fusion.injection": {
                "choices": ["parallel"],
                "when": {"fusion.levels": {"not": "none"}},
                "otherwise": "none",
            },
        },
        "baseline": {"fusion.levels": "none"},
        "fixed": dict(FIXED),
        "resources": {"workers": 2, "concurrent_trials": 1},
    }
    for key, value in overrides.items():
        body[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# mdf-search sweep {path}\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def _assert_predictions_of_selected_epochs(store: ResultsStore) -> None:
    """Every finished trial row's attempt has its predictions: val and test rows at the row's best_epoch,
    as many as the row's val/n and test/n."""
    trials = store.trials().filter(pl.col("status").is_in(["completed", "stopped_early"]))
    preds = store.predictions()
    assert preds.columns[:2] == ["trial_id", "attempt"] and "prob/inherited" in preds.columns
    for row in trials.iter_rows(named=True):
        own = preds.filter((pl.col("trial_id") == row["trial_id"]) & (pl.col("attempt") == row["attempt"]))
        assert set(own["epoch"]) == {row["best_epoch"]}, row["trial_id"]
        for split in ("val", "test"):
            assert own.filter(pl.col("split") == split).height == row[f"{split}/n"], (row["trial_id"], split)


def test_grid_sweep_end_to_end_to_parquet(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "grid", seeds=[0, 1], budget={"trials": 8, "epochs": 2}))
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    assert not outcome.errors and not outcome.stopped_reason
    store = ResultsStore(outcome.experiment_root)
    trials = store.trials()
    assert trials.height == 4  # 2 arms x 2 seeds, each exactly once
    assert sorted(zip(trials["arm"].to_list(), trials["seed"].to_list(), strict=True)) == sorted(
        [(a, s) for a in ("fusion.levels=none", "fusion.levels=4|fusion.injection=parallel") for s in (0, 1)]
    )
    assert set(trials["status"]) == {"completed"}
    for column in (
        "val/macro_f1",
        "test/accuracy",
        "wall_s",
        "cpu_hours",
        "split_hash",
        "config_hash",
        "git_sha",
        "versions",
        "best_epoch",
        "train/loss",
        "train/accuracy",
        "val/auroc",
    ):
        assert trials[column].null_count() == 0, column
    assert set(trials["selection_metric"]) == {"val/loss"} and set(trials["selection_mode"]) == {"min"}
    epochs = store.epochs()
    assert epochs.height == 8 and set(epochs["epoch"]) == {1, 2}
    assert epochs["train/loss"].null_count() == 0 and epochs["train/accuracy"].null_count() == 0
    # each trial row holds its selected epoch: the one with the lowest val/loss (the study's min metric),
    # test metrics included (evaluated at that epoch)
    for row in trials.iter_rows(named=True):
        own = epochs.filter(pl.col("trial_id") == row["trial_id"]).sort("epoch")
        best = int(own["val/loss"].arg_min() or 0) + 1
        chosen = own.row(best - 1, named=True)
        assert row["best_epoch"] == best and row["val/loss"] == chosen["val/loss"]
        assert row["test/accuracy"] == chosen["test/accuracy"] and row["train/loss"] == chosen["train/loss"]
    _assert_predictions_of_selected_epochs(store)
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{outcome.experiment_root}/optuna.db")
    assert len(study.trials) == 4 and {t.params["seed"] for t in study.trials} == {0, 1}


def test_ofat_design_runs_exactly_its_arms(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            "ofat",
            design="ofat",
            reference={"fusion.levels": "4", "fusion.injection": "parallel", "freeze": "none"},
            scientific={
                "fusion.levels": ["none", "4"],
                "fusion.injection": {
                    "choices": ["parallel"],
                    "when": {"fusion.levels": {"not": "none"}},
                    "otherwise": "none",
                },
                "freeze": ["none", "mllm"],
            },
            baseline={"fusion.levels": "none"},
        )
    )
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    arms = sorted(ResultsStore(outcome.experiment_root).trials()["arm"].to_list())
    assert len(arms) == 3 and len(set(arms)) == 3  # reference, levels varied, freeze varied


def test_workers_reach_their_own_ray_beside_another(ray_cluster: Any, tmp_path: Path) -> None:
    """With a second Ray on the machine, a worker's state-API call (Ray Train's placement-group cleaner
    makes one when ASHA stops a trial) still reaches this Ray: without that the stopped trial's CPUs
    stay held and the next trial waits forever (``cluster.pin_ray_address``)."""
    import shutil
    import tempfile

    import ray

    other_tmp = tempfile.mkdtemp(prefix="mdfray2-", dir="/tmp")  # AF_UNIX socket paths stay short
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ray, sys, time; ray.init(num_cpus=1, include_dashboard=True, "
            f"_temp_dir={other_tmp!r}); print('up', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "up"

        @ray.remote(num_cpus=0, runtime_env={"env_vars": {"MDF_TEST": "1"}})  # as Ray Train's actors
        class Probe:
            def state(self) -> tuple[str | None, str]:
                from ray.util.state import get_actor

                found = get_actor(str(ray.get_runtime_context().get_actor_id()))
                return os.environ.get("RAY_ADDRESS"), str(found.state if found else None)

        probe = Probe.remote()  # type: ignore[attr-defined]
        address, state = ray.get(probe.state.remote(), timeout=120)
        assert address == ray.get_runtime_context().gcs_address and state == "ALIVE"
    finally:
        os.killpg(other.pid, signal.SIGTERM)
        other.wait(timeout=60)
        shutil.rmtree(other_tmp, ignore_errors=True)


def test_asha_stops_trials_within_an_arm_and_records_them(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            "asha",
            design="qmc",
            seeds=[0],
            scientific={"fusion.levels": ["4"]},
            baseline=None,
            nuisance={"optim.lr": {"low": 1.0e-5, "high": 3.0e-2, "log": True, "default": 1.0e-3}},
            budget={"trials": 6, "epochs": 3, "trials_per_arm": 6},
            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
            fixed={**{k: v for k, v in FIXED.items() if k != "optim.lr"}, "fusion.injection": "parallel"},
        )
    )
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    trials = ResultsStore(outcome.experiment_root).trials()
    assert trials.height == 6
    stopped = trials.filter(pl.col("status") == "stopped_early")
    assert stopped.height >= 1 and (stopped["epochs"] < 3).all()
    assert trials.filter(pl.col("status") == "completed").height >= 1
    _assert_predictions_of_selected_epochs(ResultsStore(outcome.experiment_root))  # stopped trials too


def test_auto_concurrency_runs_trials_side_by_side_on_the_study_data(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """``concurrent_trials: auto`` on the test cluster (at least 2 CPUs, 2 trial slots): one-worker trials,
    two at once, both on the data the sweep prepared once; results as with one trial at a time."""
    spec = load_spec(
        _spec(tmp_path, "auto", resources={"workers": 1, "concurrent_trials": "auto"}, seeds=[0])
    )
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    assert not outcome.errors and not outcome.stopped_reason
    store = ResultsStore(outcome.experiment_root)
    trials = store.trials()
    assert trials.height == 2 and set(trials["status"]) == {"completed"}
    assert trials["split_hash"].n_unique() == 1 and trials["val/macro_f1"].null_count() == 0
    _assert_predictions_of_selected_epochs(store)
    # side by side: each trial's span (its start, first step less start-up, to its epoch's last step)
    spans = (
        store.epochs()
        .join(trials.select("trial_id", "startup_s"), on="trial_id")
        .select(
            start=pl.col("first_step_unix") - pl.col("startup_s"),
            end=pl.col("first_step_unix") + pl.col("epoch_time_s"),
        )
    )
    assert spans["start"].max() < spans["end"].min()  # type: ignore[operator]


def test_a_failing_trial_is_recorded_and_the_sweep_continues(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            "failing",
            scientific={"data.manifest": ["", str(tmp_path / "missing.parquet")]},
            baseline={"data.manifest": ""},
        )
    )
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    trials = ResultsStore(outcome.experiment_root).trials()
    assert sorted(trials["status"].to_list()) == ["completed", "error"]
    error = trials.filter(pl.col("status") == "error")
    assert "missing.parquet" in error["message"].item()
    assert not outcome.stopped_reason


def test_an_error_in_every_trial_stops_the_sweep_early(ray_cluster: Any, tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            "broken",
            seeds=[0, 1, 2, 3, 4],
            scientific={"data.manifest": [str(tmp_path / "missing.parquet")]},
            baseline=None,
        )
    )
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    assert "trials all failed" in outcome.stopped_reason and "missing.parquet" in outcome.stopped_reason
    assert ResultsStore(outcome.experiment_root).trials().height < 5


def test_kill_the_driver_mid_sweep_then_resume(tmp_path: Path, session_tmp: Path) -> None:
    """A real SIGKILL of the sweep's process group (driver and its embedded Ray), then `mdf-search resume`."""
    spec_path = _spec(tmp_path, "killed", seeds=[0, 1], budget={"trials": 8, "epochs": 2})
    storage = tmp_path / "runs"
    env = {**os.environ, "MDF_SEARCH_CACHE": str(session_tmp / "cache"), "RAY_TMPDIR": "/tmp"}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "mdf_search.cli"]
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - closed after the kill
    driver = subprocess.Popen(
        [*cli, "sweep", str(spec_path), "--storage", str(storage)],
        cwd=tmp_path,  # its report goes to tmp_path/reports, not into the checkout
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    store = ResultsStore(str(storage / "killed"))
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            done = store.trials() if (storage / "killed" / "trials").exists() else pl.DataFrame()
            if not done.is_empty() and (done["status"] == "completed").sum() >= 1:
                break
            time.sleep(1)
        else:
            pytest.fail(
                "no trial completed before the deadline:\n" + (tmp_path / "driver.log").read_text()[-3000:]
            )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    before = optuna.load_study(study_name="killed", storage=f"sqlite:///{storage}/killed/optuna.db")
    numbers_before = sorted(t.number for t in before.trials)
    resumed = subprocess.run(
        [*cli, "resume", str(storage / "killed")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = store.trials()
    assert trials.height == 4 and trials["trial_id"].n_unique() == 4  # every trial exactly once
    assert set(trials["status"]) == {"completed"}
    epochs = store.epochs()
    assert epochs.group_by(["trial_id", "epoch"]).len()["len"].max() == 1
    _assert_predictions_of_selected_epochs(store)  # resumed trials and attempts included
    after = optuna.load_study(study_name="killed", storage=f"sqlite:///{storage}/killed/optuna.db")
    assert sorted(t.number for t in after.trials)[: len(numbers_before)] == numbers_before  # history kept
    assert len(after.trials) >= len(numbers_before)
