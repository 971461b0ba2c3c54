"""The sweep's results writer and Optuna searcher with the selected epoch: stand-in Tune trials (the real
callback interface), real Parquet, a real Optuna study."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import pytest

from mdf_search.config import TrialConfig
from mdf_search.results.store import ResultsStore
from mdf_search.search.callbacks import ResultsWriter, ResumableOptunaSearch, selected_view
from mdf_search.train import predictions
from mdf_search.train.predictions import Gathered, SampleIndex
from mdf_search.train.selection import Selection

TYPES = ("healthy", "acquired", "inherited")


@dataclass
class StandInTrial:
    """What ResultsWriter reads of a Tune ``Trial``."""

    trial_id: str
    config: dict[str, Any] = field(
        default_factory=lambda: {"params": TrialConfig.from_flat({}).to_flat(), "arm": "a"}
    )
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0


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


def test_a_checkpoint_table_keeps_its_float32_probabilities(tmp_path: Path) -> None:
    table = predictions.load(_checkpoint(tmp_path / "c", 2))
    assert table is not None and table.schema.field("prob/healthy").type == pa.float32()
