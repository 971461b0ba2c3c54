"""Cost and failures without a Ray cluster: the budgets count what the trials table records across
``resume``, a resumed attempt's rows keep its earlier sessions' hours, the error a trial's row keeps is
its worker's exception, the spec's ``max_failures``/``placement``/``price_per_gpu_hour``, multi-GPU trials
packed on one node, and the metrics a study declares to the results writer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from mdf_search.config import TrialConfig
from mdf_search.data.schema import LabelSpace
from mdf_search.results.store import ResultsStore
from mdf_search.search import callbacks
from mdf_search.search.callbacks import ResultsWriter, Spent, SweepGuard, _cause, recorded_spend
from mdf_search.search.runner import _wall_left
from mdf_search.search.trial import declared_metrics
from mdf_search.train.builders import TrialData, data_key
from mdf_search.train.trainer import placement
from tests.search.designs_helpers import grid_spec
from tests.search.test_callbacks import StandInTrial

# What reaches the results writer when a Ray Train worker raises (Ray 2.60, captured from a Tune trial
# whose TorchTrainer's loop raised): Tune's traceback of the trial, then the worker's, in Ray's colours.
TRAIN_ERROR = """Failure # 1 (occurred at 2026-11-30_04-46-34)
\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=25260, ip=192.0.2.2, actor_id=abcc, repr=trial)
  File "/venv/ray/tune/trainable/trainable.py", line 329, in train
    raise skipped from exception_cause(skipped)
  File "/venv/ray/train/v2/api/data_parallel_trainer.py", line 195, in fit
    raise result.error
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=25260, ip=192.0.2.2, actor_id=abcc, repr=trial)
  File "/work/main/mdf_search/train/loop.py", line 14, in loop
    raise ValueError("boom in the worker: bad batch 7")
ValueError: boom in the worker: bad batch 7
"""


def _row(writer: ResultsWriter, trial_id: str, attempt: int, wall_s: float) -> None:
    """A trial row as the writer writes it, with its wall time and the time it was written."""
    trial = StandInTrial(trial_id, num_failures=attempt - 1, last_result={"status": "running", "epoch": 1})
    row = writer._trial_row(trial, "running")
    row.update(wall_s=wall_s, gpu_hours=wall_s / 3600, cpu_hours=0.0)
    writer.store.write_trial(row)


def test_recorded_spend_sums_every_attempt_and_the_busy_wall_time(tmp_path: Path) -> None:
    root = str(tmp_path / "exp")
    writer = ResultsWriter(root, "exp", {"git_sha": "x"}, gpus_per_worker=1.0)
    for trial_id, attempt, wall in (("t1", 1, 1800.0), ("t1", 2, 3600.0), ("t2", 1, 7200.0)):
        _row(writer, trial_id, attempt, wall)
    spent = recorded_spend(ResultsStore(root))
    assert spent.gpu_hours == {"t1-a1": 0.5, "t1-a2": 1.0, "t2-a1": 2.0}
    # rows written a moment apart: their intervals overlap, so the busy time is about the longest one
    assert 7200.0 <= spent.wall_s < 7200.0 + 60
    assert recorded_spend(ResultsStore(str(tmp_path / "empty"))) == Spent()


def test_busy_wall_time_leaves_out_the_time_between_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions a day apart, each with an hour-long trial: two hours, not a day."""
    from mdf_search.results import schema

    root = str(tmp_path / "exp")
    writer = ResultsWriter(root, "exp", {"git_sha": "x"})
    for trial_id, when in (("t1", "2026-01-01T10:00:00"), ("t2", "2026-01-02T10:00:00")):
        stamp = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()
        monkeypatch.setattr(schema, "time", SimpleNamespace(time=lambda stamp=stamp: stamp))
        _row(writer, trial_id, 1, 3600.0)
    assert recorded_spend(ResultsStore(root)).wall_s == pytest.approx(7200.0)


def test_the_guard_counts_the_earlier_sessions_gpu_hours(tmp_path: Path) -> None:
    """A resumed sweep whose earlier sessions spent 1.5 of 2 GPU-hours stops once this session's rows
    add the rest, though this session alone spent far less."""
    root = str(tmp_path / "exp")
    first = ResultsWriter(root, "exp", {"git_sha": "x"}, gpus_per_worker=1.0)
    _row(first, "t1", 1, 3600.0)
    _row(first, "t2", 1, 1800.0)
    spent = recorded_spend(ResultsStore(root))
    writer = ResultsWriter(root, "exp", {"git_sha": "x"}, gpus_per_worker=1.0)
    writer.carried = spent
    guard = SweepGuard(writer, max_gpu_hours=2.0, gpus_per_trial=1.0, spent=spent)
    assert not guard.stop_all() and guard.gpu_hours() == pytest.approx(1.5)
    writer.spent["t3-a1"] = 0.6  # this session's row of a new trial
    assert guard.stop_all() and "GPU-hour budget spent (2.10 of 2, all sessions)" in guard.reason


def test_a_resumed_attempts_row_keeps_its_earlier_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "exp")
    writer = ResultsWriter(root, "exp", {"git_sha": "x"}, gpus_per_worker=1.0)
    writer.carried = Spent({"t1-a1": 1.0}, 0.0, {"t1-a1": 0.0})
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: clock[0])
    params = {**TrialConfig.from_flat({}).to_flat(), "run.workers": 1}
    trial = StandInTrial("t1", config={"params": params, "arm": "a"})
    writer.on_trial_start(0, [], trial)
    clock[0] += 1800
    trial.last_result = {"status": "running", "epoch": 2}
    writer.on_trial_result(0, [], trial, trial.last_result)
    row = ResultsStore(root).trials().row(0, named=True)
    assert row["gpu_hours"] == pytest.approx(1.5)  # 1 h before the resume + half an hour since
    assert writer.spent["t1-a1"] == pytest.approx(1.5)


def test_the_wall_budget_counts_every_session(tmp_path: Path) -> None:
    writer = ResultsWriter(str(tmp_path / "exp"), "exp", {"git_sha": "x"})
    guard = SweepGuard(writer, max_wall_s=3600.0, spent=Spent({}, 3590.0))
    assert not guard.stop_all()
    guard.started -= 20
    assert guard.stop_all() and "wall-time budget spent" in guard.reason
    assert _wall_left(3600.0, Spent({}, 600.0)) == 3000.0 and _wall_left(3600.0, None) == 3600.0
    assert _wall_left(3600.0, Spent({}, 5000.0)) == 1.0 and _wall_left(0.0, Spent({}, 5.0)) is None


def test_a_train_workers_exception_is_the_rows_message() -> None:
    message = callbacks.ANSI.sub("", TRAIN_ERROR).strip()
    assert "\x1b" not in message
    assert _cause(message) == "ValueError: boom in the worker: bad batch 7"
    assert _cause("Failure # 1\nsomething odd happened") == "something odd happened"
    assert _cause("") == "error"


def test_the_error_row_and_the_driver_log_get_the_workers_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = ResultsWriter(str(tmp_path / "exp"), "exp", {"git_sha": "x"})
    trial = StandInTrial("t1", num_failures=1, error_msg=TRAIN_ERROR)
    with caplog.at_level("ERROR", logger="mdf_search.search.callbacks"):
        writer.on_trial_error(0, [], trial)
    row = ResultsStore(str(tmp_path / "exp")).trials().row(0, named=True)
    assert row["status"] == "error" and row["message"] == "ValueError: boom in the worker: bad batch 7"
    (record,) = caplog.records
    assert (
        'raise ValueError("boom in the worker' in record.getMessage()
        and "[Rank 0 Error Snippet]" in record.getMessage()
    )


@pytest.mark.parametrize(
    ("workers", "gpu", "expected"),
    [(8, True, "STRICT_PACK"), (2, True, "STRICT_PACK"), (1, True, "PACK"), (4, False, "PACK")],
)
def test_multi_gpu_trials_are_packed_on_one_node(workers: int, gpu: bool, expected: str) -> None:
    assert placement(workers, gpu) == expected


def test_the_trainer_takes_the_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdf_search.train import trainer

    cfg = TrialConfig.from_flat({"model.preset": "tiny", "run.workers": 2, "run.device": "cpu"})
    data = TrialData("m", "s", "h", "c", "t", "{}")
    made = trainer.make_trainer(cfg, data, name="t", storage_path="/tmp/x", placement_strategy="SPREAD")
    assert made.scaling_config.placement_strategy == "SPREAD"
    default = trainer.make_trainer(cfg, data, name="t", storage_path="/tmp/x")
    assert default.scaling_config.placement_strategy == "PACK"  # CPU workers: Ray's default


def test_the_spec_takes_max_failures_placement_and_a_price(tmp_path: Path) -> None:
    spec = grid_spec(
        tmp_path,
        resources={"max_failures": 3, "placement": "spread"},
        budget={"epochs": 1, "price_per_gpu_hour": 2.5},
    )
    assert spec.resources.max_failures == 3 and spec.resources.placement == "spread"
    assert spec.budget.price_per_gpu_hour == 2.5
    default = grid_spec(tmp_path)
    assert default.resources.max_failures == 1 and default.resources.placement == "auto"
    assert default.budget.price_per_gpu_hour is None


def test_the_study_declares_the_metrics_of_its_prepared_heads() -> None:
    cfg = TrialConfig.from_flat({"model.preset": "tiny"})
    labels = LabelSpace(("normal", "dr", "amd"), ("healthy", "acquired", "inherited"))
    data = {data_key(cfg): TrialData("m", "s", "h", "c", "t", labels.to_json())}
    metrics = declared_metrics([cfg, cfg], data)
    assert "val/loss" in metrics and "test/loss" in metrics and len(metrics) == len(set(metrics))
    assert declared_metrics([cfg], {}) == ()  # no prepared data (a function trial's sweep): none
