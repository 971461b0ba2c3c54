"""The sweep's Tune-side pieces against stand-in Tune trials, called as Tune calls them (the real callback,
stopper and scheduler interfaces): the results writer on real Parquet, the sweep guard, ASHA per arm, and
the Optuna searcher with the selected epoch on a real Optuna study. No Ray cluster."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import pyarrow as pa
import pytest
from ray.tune.schedulers import TrialScheduler

from mdf_search.config import TrialConfig
from mdf_search.results.schema import PHASE_COLUMNS
from mdf_search.results.store import ResultsStore
from mdf_search.search import callbacks
from mdf_search.search.callbacks import (
    PerArmASHA,
    ResultsWriter,
    ResumableOptunaSearch,
    SweepGuard,
    selected_view,
)
from mdf_search.train import predictions
from mdf_search.train.phases import RUN_KEYS
from mdf_search.train.predictions import Gathered, SampleIndex
from mdf_search.train.selection import Selection

TYPES = ("healthy", "acquired", "inherited")


@dataclass
class StandInTrial:
    """What the writer and the scheduler read of a Tune ``Trial``."""

    trial_id: str
    config: dict[str, Any] = field(
        default_factory=lambda: {"params": TrialConfig.from_flat({}).to_flat(), "arm": "a"}
    )
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0
    error_msg: str | None = None
    error_file: str | None = None


def _report(epoch: int, best_epoch: int, val_loss: float, best_loss: float, ckpt: Path) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "status": "running",
        "val/loss": val_loss,
        "val/macro_f1": 0.1 * epoch,
        "train/loss": 1.0 / epoch,
        "best_epoch": best_epoch,
        "best_value": best_loss,
        "selected/val/loss": best_loss,
        "selected/val/macro_f1": 0.1 * best_epoch,
        "selected/test/macro_f1": 0.05 * best_epoch,
        "checkpoint_path": str(ckpt),
    }


def _checkpoint(directory: Path, epoch: int) -> Path:
    index = SampleIndex([f"img{i}" for i in range(3)], ["c0", "c1", "c2"], ["s"] * 3)
    rows = np.arange(3)
    g = Gathered(rows, {"type": rows}, {"type": rows}, {"type": np.eye(3, dtype=np.float32)})
    table = predictions.sample_table("val", epoch, g, {"type": TYPES}, ["normal", *TYPES], index)
    directory.mkdir(parents=True)
    predictions.save(table, directory)
    return directory


def test_rows_hold_the_selected_epoch_and_predictions_follow_it(tmp_path: Path) -> None:
    root = str(tmp_path / "exp")
    writer = ResultsWriter(root, "exp", {"git_sha": "x"}, selection=Selection("val/loss", "min"))
    trial = StandInTrial("t1")
    reports = [  # val/loss 0.9 (selected), 1.1, then 0.8 (selected)
        _report(1, 1, 0.9, 0.9, _checkpoint(tmp_path / "c1", 1)),
        _report(2, 1, 1.1, 0.9, _checkpoint(tmp_path / "c2", 1)),
        _report(3, 3, 0.8, 0.8, _checkpoint(tmp_path / "c3", 3)),
    ]
    store = ResultsStore(root)
    for i, result in enumerate(reports):
        trial.last_result = result
        writer.on_trial_result(i, [], trial, result)
        if i == 1:
            row = store.trials().row(0, named=True)
            assert row["val/loss"] == 0.9 and row["best_epoch"] == 1 and row["test/macro_f1"] == 0.05
            assert row["selection_metric"] == "val/loss" and row["selection_mode"] == "min"
            assert set(store.predictions()["epoch"]) == {1}
    epochs = store.epochs().sort("epoch")
    assert epochs["val/loss"].to_list() == [0.9, 1.1, 0.8]  # each epoch's own value
    assert epochs["best_epoch"].to_list() == [1, 1, 3]
    assert not any(c.startswith("selected/") for c in epochs.columns)
    trial.last_result = {**reports[-1], "status": "completed"}
    writer.on_trial_complete(3, [], trial)
    row = store.trials().row(0, named=True)
    assert row["status"] == "completed" and row["best_epoch"] == 3
    assert row["val/macro_f1"] == pytest.approx(0.3) and row["train/loss"] == pytest.approx(1 / 3)
    frame = store.predictions()
    assert frame.height == 3 and set(frame["epoch"]) == {3} and set(frame["trial_id"]) == {"t1"}


def test_an_unchanged_selection_is_not_copied_again_but_a_new_attempt_is(tmp_path: Path) -> None:
    root = str(tmp_path / "exp")
    writer = ResultsWriter(root, "exp", {})
    trial = StandInTrial("t1")
    first = _report(1, 1, 0.9, 0.9, _checkpoint(tmp_path / "c1", 1))
    writer.on_trial_result(0, [], trial, first)
    gone = _report(2, 1, 1.0, 0.9, tmp_path / "rotated-away")  # same selection: nothing to read
    writer.on_trial_result(1, [], trial, gone)
    trial.num_failures = 1  # Tune retried the trial: attempt 2 resumed with epoch 1 still selected
    writer.on_trial_result(2, [], trial, _report(2, 1, 1.0, 0.9, _checkpoint(tmp_path / "c2", 1)))
    frame = ResultsStore(root).predictions()
    assert sorted(set(frame["attempt"].to_list())) == [1, 2] and frame.height == 6


def test_selected_view_puts_the_selected_metrics_over_the_epoch_s_own() -> None:
    view = selected_view({"val/loss": 2.0, "epoch": 4, "selected/val/loss": 1.0, "selected/test/loss": 1.5})
    assert view == {"val/loss": 1.0, "epoch": 4, "test/loss": 1.5}


def test_the_optuna_study_is_told_the_value_of_the_selected_epoch(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("x", 0.0, 1.0)

    searcher = ResumableOptunaSearch(
        space=space,
        metric="val/loss",
        mode="min",
        storage=optuna.storages.RDBStorage(storage),
        study_name="s",
    )
    assert searcher.suggest("t1") is not None
    searcher.on_trial_complete("t1", result={"val/loss": 1.4, "selected/val/loss": 0.7, "epoch": 3})
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.value for t in study.trials] == [0.7]


def test_a_failure_report_without_the_metric_fails_the_trial_in_the_study(tmp_path: Path) -> None:
    """An oom/diverged/infeasible trial reports no validation value: the study records a failure, and
    nothing raises (a KeyError here ended the whole sweep)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    searcher = ResumableOptunaSearch(
        space=_grid_space, metric="m", mode="min", storage=optuna.storages.RDBStorage(storage), study_name="f"
    )
    searcher.suggest("t1")
    report = {"status": "oom", "epoch": 1, "message": "CUDA OOM"}
    searcher.on_trial_result("t1", report)
    searcher.on_trial_complete("t1", result=report)
    study = optuna.load_study(study_name="f", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def _grid_space(trial: optuna.Trial) -> dict[str, Any]:
    return {"p": trial.suggest_categorical("p", [0, 1, 2, 3])}


def test_a_restored_searcher_adopts_the_trials_a_killed_driver_left_running(tmp_path: Path) -> None:
    """A driver killed between Optuna's ask and Tune's snapshot: the restored searcher (from the older
    snapshot) hands the orphaned grid points to its new trials, each point once, numbers continuous."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def searcher() -> ResumableOptunaSearch:
        grid = optuna.samplers.GridSampler({"p": [0, 1, 2, 3]}, seed=0)
        return ResumableOptunaSearch(
            space=_grid_space,
            metric="m",
            mode="min",
            sampler=grid,
            storage=optuna.storages.RDBStorage(storage),
            study_name="g",
        )

    first = searcher()
    first.suggest("t1")
    first.on_trial_complete("t1", result={"m": 1.0})
    first.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot
    orphans = [first.suggest("t2"), first.suggest("t3")]  # asked, then the driver dies
    restored = searcher()
    restored.restore(str(tmp_path / "snapshot.pkl"))
    got = [restored.suggest(f"n{i}") for i in range(3)]
    for i in range(3):
        restored.on_trial_complete(f"n{i}", result={"m": float(i)})
    study = optuna.load_study(study_name="g", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # no trial asked anew for an orphan
    assert got[:2] == orphans  # the orphans' own grid points, oldest first
    assert sorted(t.params["p"] for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_checkpoint_table_keeps_its_float32_probabilities(tmp_path: Path) -> None:
    table = predictions.load(_checkpoint(tmp_path / "c", 2))
    assert table is not None and table.schema.field("prob/healthy").type == pa.float32()


# --- the results writer: statuses, attempts, costs, rows and events ---------------------------------
def _writer(tmp_path: Path, **kwargs: Any) -> tuple[ResultsWriter, ResultsStore]:
    root = str(tmp_path / "exp")
    return ResultsWriter(root, "exp", {"git_sha": "abc"}, **kwargs), ResultsStore(root)


@pytest.mark.parametrize("status", ["completed", "diverged", "oom", "infeasible"])
def test_an_ended_trial_keeps_the_status_of_its_last_report(status: str, tmp_path: Path) -> None:
    writer, store = _writer(tmp_path)
    trial = StandInTrial("t1", last_result={"epoch": 2, "status": status, "message": f"why {status}"})
    writer.on_trial_complete(0, [], trial)
    row = store.trials().row(0, named=True)
    assert (row["status"], row["message"], row["epochs"]) == (status, f"why {status}", 2)
    assert (writer.finished, writer.errors) == (1, [])


def test_a_trial_tune_ended_while_it_was_running_was_stopped_early(tmp_path: Path) -> None:
    writer, store = _writer(tmp_path)
    writer.on_trial_complete(0, [], StandInTrial("t1", last_result={"epoch": 1, "status": "running"}))
    assert store.trials()["status"].to_list() == ["stopped_early"]


def test_an_errored_trial_keeps_the_last_line_of_its_error(tmp_path: Path) -> None:
    writer, store = _writer(tmp_path)
    crashed = StandInTrial("t1")
    crashed.error_msg = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"
    writer.on_trial_error(0, [], crashed)
    error_file = tmp_path / "error.txt"  # a restored trial carries its error in a file only
    error_file.write_text("Traceback:\nValueError: from the file")
    restored = StandInTrial("t2")
    restored.error_file = str(error_file)
    writer.on_trial_error(1, [], restored)
    rows = {r["trial_id"]: r for r in store.trials().iter_rows(named=True)}
    assert rows["t1"]["status"] == rows["t2"]["status"] == "error"
    assert rows["t1"]["message"] == "RuntimeError: boom"
    assert rows["t2"]["message"] == "ValueError: from the file"
    assert writer.errors == [
        ("t1", "Traceback (most recent call last):\n  ...\nRuntimeError: boom"),
        ("t2", "Traceback:\nValueError: from the file"),
    ]
    assert writer.finished == 2


def test_a_retried_trial_writes_one_row_per_attempt(tmp_path: Path) -> None:
    """As Tune calls the writer: a failed attempt is counted (``num_failures``) before the callback."""
    writer, store = _writer(tmp_path)
    trial = StandInTrial("t1", last_result={"epoch": 1, "status": "running"})
    writer.on_trial_result(0, [], trial, dict(trial.last_result))  # attempt 1 reports, then its node dies
    trial.error_msg = "OSError: node lost"
    trial.num_failures = 1
    writer.on_trial_recover(1, [], trial)  # retried: not a failed configuration
    trial.last_result = {"epoch": 2, "status": "completed"}
    writer.on_trial_complete(2, [], trial)
    every = store.trials(latest_attempt=False).sort("attempt")
    assert every.select("attempt", "status").rows() == [(1, "error"), (2, "completed")]
    assert every["message"][0] == "retried: OSError: node lost" and not writer.errors
    assert store.trials().select("attempt", "status").rows() == [(2, "completed")]
    # a trial whose retry failed too ends as an error of its second attempt, not a third
    trial2 = StandInTrial("t2", last_result={"epoch": 1, "status": "running"})
    trial2.error_msg, trial2.num_failures = "RuntimeError: bad config", 2
    writer.on_trial_error(3, [], trial2)
    assert store.trials().filter(pl.col("trial_id") == "t2").select("attempt", "status").rows() == [
        (2, "error")
    ]


def test_a_row_carries_the_provenance_arm_params_and_config_hash(tmp_path: Path) -> None:
    writer, store = _writer(tmp_path)
    params = TrialConfig.from_flat({"optim.lr": 3e-4}).to_flat()
    writer.on_trial_complete(
        0, [], StandInTrial("t1", {"params": params, "arm": "arm-7"}, {"status": "completed"})
    )
    row = store.trials().row(0, named=True)
    assert (row["git_sha"], row["arm"], row["optim.lr"]) == ("abc", "arm-7", 3e-4)
    assert row["config_hash"] == TrialConfig.from_flat(params).config_hash() != ""


def test_a_config_the_trial_config_refuses_has_no_hash(tmp_path: Path) -> None:
    writer, store = _writer(tmp_path)
    params = {**TrialConfig.from_flat({}).to_flat(), "optim.lr": -1.0}
    writer.on_trial_complete(
        0, [], StandInTrial("t1", {"params": params, "arm": "a"}, {"status": "infeasible"})
    )
    assert store.trials()["config_hash"].to_list() == [""]


def test_wall_time_is_charged_to_the_gpus_or_else_to_the_cpus(tmp_path: Path) -> None:
    two_workers = {**TrialConfig.from_flat({}).to_flat(), "run.workers": 2}
    rows = {}
    for name, gpus_per_worker in (("gpu", 4.0), ("cpu", 0.0)):
        writer, store = _writer(tmp_path / name, gpus_per_worker=gpus_per_worker)
        last = {"epoch": 1, "status": "completed", "time_total_s": 1800.0}
        writer.on_trial_complete(0, [], StandInTrial(name, {"params": two_workers, "arm": "a"}, last))
        rows[name] = store.trials().row(0, named=True)
    assert (rows["gpu"]["gpu_hours"], rows["gpu"]["cpu_hours"]) == (4.0, 0.0)  # 0.5 h x 2 workers x 4 GPUs
    assert (rows["cpu"]["gpu_hours"], rows["cpu"]["cpu_hours"]) == (0.0, 1.0)  # 0.5 h x 2 workers
    assert rows["gpu"]["wall_s"] == 1800.0 and rows["gpu"]["world_size"] == 2


def _phase_report(epoch: int, loop_start: float, per_epoch: float) -> dict[str, Any]:
    """A worker's report after ``epoch`` epochs: its phase totals so far (``train/phases.py``), launched
    4 s before its loop started at ``loop_start``."""
    totals = {"init_s": 3.0, "data_s": 0.5 + 0.5 * epoch, "train_s": per_epoch * epoch, "eval_s": epoch}
    totals |= {"ckpt_s": 0.5 * epoch, "report_s": 0.25 * (epoch - 1), "other_s": 0.1 * epoch}
    return {
        "epoch": epoch,
        "status": "running",
        "val/loss": 1.0 / epoch,
        "epoch_time_s": per_epoch,
        "launch_s": 4.0,
        **totals,
        "elapsed_s": 4.0 + sum(totals.values()),
        "startup_s": 4.0 + 3.5,
        "loop_start_unix": loop_start,
    }


def test_the_trial_row_says_where_its_wall_time_went(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_700_000_000.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: clock[0])
    writer, store = _writer(tmp_path)
    trial = StandInTrial("t1")
    start = clock[0]
    writer.on_trial_start(0, [], trial)  # Tune started the attempt: 6 s before the workers were ready
    for epoch in (1, 2):
        report = _phase_report(epoch, loop_start=start + 6.0, per_epoch=5.0)
        clock[0] = start + 6.0 + report["elapsed_s"] - 4.0 + 0.75  # the report reaches the driver
        trial.last_result = report
        writer.on_trial_result(epoch, [], trial, report)
    trial.last_result = {**trial.last_result, "status": "completed", "time_total_s": 99.0}
    clock[0] += 5.0  # the trial's actor winds down: not the trial's wall time
    writer.on_trial_complete(3, [], trial)
    row = store.trials().row(0, named=True)
    assert row["wall_s"] == pytest.approx(6.0 + 3.0 + 1.5 + 10.0 + 2.0 + 1.0 + 0.25 + 0.2 + 0.75)
    assert row["launch_s"] == pytest.approx(6.0) and row["train_s"] == 10.0 and row["ckpt_s"] == 1.0
    assert row["startup_s"] == pytest.approx(6.0 + 3.5)  # counted from Tune's start, not Train's launch
    assert sum(row[c] for c in PHASE_COLUMNS) == pytest.approx(row["wall_s"])
    assert row["other_s"] == pytest.approx(0.2 + 0.75)  # the loop's glue, and the last report's trip
    assert row["cpu_hours"] == pytest.approx(row["wall_s"] * 2 / 3600)
    epochs = store.epochs()
    assert epochs["epoch_time_s"].to_list() == [5.0, 5.0]  # per-epoch metrics stay
    assert not set(RUN_KEYS) & set(epochs.columns)  # run totals are the trial row's, not an epoch's

    trial.num_failures = 1  # Tune retried it: the second attempt counts from its own start
    clock[0] += 100.0
    writer.on_trial_start(4, [], trial)
    report = _phase_report(1, loop_start=clock[0] + 2.0, per_epoch=5.0)
    clock[0] += 2.0 + report["elapsed_s"] - 4.0
    trial.last_result = report
    writer.on_trial_result(5, [], trial, report)
    second = store.trials().row(0, named=True)
    assert second["attempt"] == 2 and second["launch_s"] == pytest.approx(2.0)
    assert sum(second[c] for c in PHASE_COLUMNS) == pytest.approx(second["wall_s"])


def test_a_trial_row_without_the_start_keeps_the_worker_s_phases(tmp_path: Path) -> None:
    """A sweep driver restarted mid-trial never saw the attempt start: Tune's wall time, the worker's
    launch (from the Train run's launch) and the rest in other_s."""
    writer, store = _writer(tmp_path)
    report = {**_phase_report(1, loop_start=1.0, per_epoch=5.0), "time_total_s": 30.0}
    writer.on_trial_complete(0, [], StandInTrial("t1", last_result={**report, "status": "completed"}))
    row = store.trials().row(0, named=True)
    assert row["wall_s"] == 30.0 and row["launch_s"] == 4.0 and row["startup_s"] == 7.5
    assert sum(row[c] for c in PHASE_COLUMNS) == pytest.approx(30.0)


def test_an_epoch_row_holds_the_reported_scalars_and_no_tune_bookkeeping(tmp_path: Path) -> None:
    writer, store = _writer(tmp_path)
    result = {
        "training_iteration": 3,  # no "epoch" key: the iteration numbers the row
        "time_total_s": 12.0,
        "done": False,
        "config": {"arm": "a"},
        "status": "running",
        "message": "text is not a metric",
        "val/loss": 0.5,
        "val/confusion": [[2, 0], [1, 3]],
    }
    writer.on_trial_result(0, [], StandInTrial("t1", last_result=result), result)
    row = store.epochs().row(0, named=True)
    assert (row["epoch"], row["status"], row["val/loss"]) == (3, "running", 0.5)
    assert row["val/confusion"] == "[[2, 0], [1, 3]]"
    assert not {"time_total_s", "done", "config", "message", "training_iteration"} & set(row)
    assert store.trials()["status"].to_list() == ["running"]  # the trial row follows every report


def test_events_reach_the_sink_which_is_left_out_of_the_pickle(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    writer, _ = _writer(tmp_path, on_event=lambda event, data: events.append((event, data)))
    trial = StandInTrial("t1")
    report = {"epoch": 1, "status": "running", "val/loss": 2.0, "selected/val/loss": 1.0}
    writer.on_trial_result(0, [], trial, report)
    trial.last_result = {**report, "status": "completed"}
    writer.on_trial_complete(1, [], trial)
    assert [e for e, _ in events] == ["result", "completed"]
    assert events[0][1]["trial_id"] == "t1" and events[0][1]["arm"] == "a"
    assert events[1][1]["val/loss"] == 1.0  # the completion event shows the selected epoch
    copy = pickle.loads(pickle.dumps(writer))
    assert copy.on_event is None and writer.on_event is not None


# --- the sweep guard ------------------------------------------------------------------------------
def _error(writer: ResultsWriter, trial_id: str, message: str) -> None:
    trial = StandInTrial(trial_id)
    trial.error_msg = message
    writer.on_trial_error(0, [], trial)


def test_the_guard_stops_the_sweep_when_its_first_trials_all_failed(tmp_path: Path) -> None:
    writer, _ = _writer(tmp_path)
    guard = SweepGuard(writer, max_initial_errors=3)
    _error(writer, "t1", "ImportError: no module named x")
    _error(writer, "t2", "ImportError: no module named x")
    assert not guard.stop_all() and guard.reason == ""
    _error(writer, "t3", "ImportError: no module named x")
    assert guard.stop_all()
    assert "first 3 trials all failed" in guard.reason and "ImportError: no module named x" in guard.reason
    assert guard("t4", {"epoch": 1}) is False  # it never stops one trial


def test_a_success_before_the_failures_keeps_the_sweep_going(tmp_path: Path) -> None:
    writer, _ = _writer(tmp_path)
    guard = SweepGuard(writer, max_initial_errors=3)
    writer.on_trial_complete(0, [], StandInTrial("t0", last_result={"status": "completed"}))
    for i in range(1, 5):
        _error(writer, f"t{i}", "RuntimeError: flaky")
    assert not guard.stop_all() and guard.reason == ""


@pytest.mark.parametrize(
    ("max_gpu_hours", "gpus_per_worker", "stops"),
    [(1.5, 1.0, True), (3.0, 1.0, False), (0.0, 1.0, False), (1.5, 0.0, False)],
    ids=["spent", "left", "no-budget", "cpu-sweep"],
)
def test_the_guard_stops_the_sweep_when_the_gpu_hours_are_spent(
    max_gpu_hours: float, gpus_per_worker: float, stops: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A two-worker trial running for an hour without a report yet has spent 2 GPU-hours (1 GPU each)."""
    writer, _ = _writer(tmp_path, gpus_per_worker=gpus_per_worker)
    guard = SweepGuard(writer, max_gpu_hours=max_gpu_hours, gpus_per_trial=2 * gpus_per_worker)
    clock = [1000.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: clock[0])
    params = {**TrialConfig.from_flat({}).to_flat(), "run.workers": 2}
    writer.on_trial_start(0, [], StandInTrial("t1", config={"params": params, "arm": "a"}))
    clock[0] += 3600
    assert guard.stop_all() is stops
    assert ("GPU-hour budget spent" in guard.reason) is stops


# --- ASHA per arm, driven as Tune drives a scheduler (Ray's own scheduler tests do the same) ---------
ASHA_ARGS = {"max_t": 4, "grace_period": 1, "reduction_factor": 2}  # rungs at epochs 1, 2 and 4


def _asha(metric: str = "val/macro_f1", mode: str = "max") -> PerArmASHA:
    return PerArmASHA(metric, mode, **ASHA_ARGS)


def _trials(scheduler: PerArmASHA, *arms: str) -> list[StandInTrial]:
    trials = [StandInTrial(f"t{i}", {"arm": arm}) for i, arm in enumerate(arms)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    return trials


def test_asha_stops_the_worse_trials_of_an_arm_at_a_rung() -> None:
    asha = _asha()
    t0, t1, t2 = _trials(asha, "a", "a", "a")
    assert asha.on_trial_result(None, t0, {"epoch": 1, "val/macro_f1": 0.8}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, t1, {"epoch": 1, "val/macro_f1": 0.2}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, t2, {"epoch": 1, "val/macro_f1": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, t0, {"epoch": 2, "val/macro_f1": 0.85}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, t2, {"epoch": 2, "val/macro_f1": 0.7}) == TrialScheduler.STOP


def test_asha_minimises_a_loss() -> None:
    asha = _asha("val/loss", "min")
    t0, t1, t2 = _trials(asha, "a", "a", "a")
    assert asha.on_trial_result(None, t0, {"epoch": 1, "val/loss": 0.5}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, t1, {"epoch": 1, "val/loss": 0.9}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, t2, {"epoch": 1, "val/loss": 0.3}) == TrialScheduler.CONTINUE


def test_asha_compares_a_trial_with_its_own_arm_only() -> None:
    asha = _asha()
    good_a, weak_b, weaker_b = _trials(asha, "a", "b", "b")
    assert asha.on_trial_result(None, good_a, {"epoch": 1, "val/macro_f1": 0.8}) == TrialScheduler.CONTINUE
    # one scheduler for all arms would stop this trial (0.2 is below arm a's 0.8): it is first in arm b
    assert asha.on_trial_result(None, weak_b, {"epoch": 1, "val/macro_f1": 0.2}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, weaker_b, {"epoch": 1, "val/macro_f1": 0.1}) == TrialScheduler.STOP
    assert "2 arms" in asha.debug_string()


def test_asha_counts_a_completed_trial_in_its_arm_and_forgets_a_removed_one() -> None:
    asha = _asha()
    done_a, removed_b, late_a, late_b = _trials(asha, "a", "b", "a", "b")
    asha.on_trial_complete(None, done_a, {"epoch": 1, "val/macro_f1": 0.8})  # never reported before
    asha.on_trial_remove(None, removed_b)
    assert asha.on_trial_result(None, late_a, {"epoch": 1, "val/macro_f1": 0.5}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, late_b, {"epoch": 1, "val/macro_f1": 0.5}) == TrialScheduler.CONTINUE


def test_asha_lets_a_report_without_the_metric_or_epoch_pass() -> None:
    asha = _asha()
    leader, infeasible, unscored = _trials(asha, "a", "a", "a")
    asha.on_trial_result(None, leader, {"epoch": 1, "val/macro_f1": 0.9})
    assert asha.on_trial_result(None, infeasible, {"status": "infeasible"}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, unscored, {"epoch": 1, "val/loss": 9.0}) == TrialScheduler.CONTINUE


def test_asha_stops_a_trial_at_the_last_epoch() -> None:
    asha = _asha()
    (trial,) = _trials(asha, "a")
    assert asha.on_trial_result(None, trial, {"epoch": 4, "val/macro_f1": 0.9}) == TrialScheduler.STOP
