"""The results store: real Parquet files, atomic keyed parts, de-duplicated polars reads, compaction."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mdf_search.config import TrialConfig
from mdf_search.results import store as store_module
from mdf_search.results.schema import param_schema
from mdf_search.results.store import ResultsStore

PARAMS = TrialConfig.from_flat({}).to_flat()


def _trial(i: int, status: str = "completed", attempt: int = 1, **extra: object) -> dict[str, object]:
    return {
        "experiment": "e",
        "trial_id": f"t{i:04d}",
        "attempt": attempt,
        "status": status,
        **PARAMS,
        "val/macro_f1": i / 100,
        "val/confusion": [[1, 0], [0, 1]],
        **extra,
    }


def test_rewriting_a_trial_replaces_its_row_and_types_are_kept(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    store.write_trial(_trial(1, "running"))
    store.write_trial(_trial(1, "completed"))
    store.write_trial(_trial(2))
    trials = store.trials()
    assert trials.height == 2 and trials.filter(pl.col("trial_id") == "t0001")["status"].item() == "completed"
    assert trials.schema["optim.lr"] == pl.Float64 and trials.schema["fusion.levels"] == pl.String
    assert trials.schema["optim.epochs"] == pl.Int64 and trials.schema["data.augment"] == pl.Boolean
    assert trials["val/confusion"][0] == "[[1, 0], [0, 1]]"
    # any Parquet reader can glob the table
    files = sorted((tmp_path / "exp" / "trials").glob("*.parquet"))
    assert len(files) == 2 and pq.read_table(files[0]).num_rows == 1


def test_attempts_are_kept_apart_and_the_latest_attempt_wins(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    store.write_trial(_trial(1, "error", attempt=1))
    store.write_trial(_trial(1, "completed", attempt=2))
    assert store.read("trials").height == 2
    assert store.trials()["status"].to_list() == ["completed"]


def test_epochs_are_keyed_by_epoch_so_a_resumed_trial_never_duplicates(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    for epoch in (1, 2, 2, 3):  # epoch 2 reported again after a resume
        store.write_epoch(
            {"experiment": "e", "trial_id": "t1", "attempt": 1, "epoch": epoch, "val/loss": 1.0 / epoch}
        )
    assert store.epochs()["epoch"].to_list() == [1, 2, 3]


def test_compaction_folds_parts_and_reads_are_unchanged(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(store_module, "COMPACT_EVERY", 10)
    store = ResultsStore(str(tmp_path / "exp"))
    for i in range(25):
        store.write_trial(_trial(i))
    store.write_trial(_trial(3, "error"))
    files = [p.name for p in (tmp_path / "exp" / "trials").iterdir()]
    assert sum(name.startswith("compact-") for name in files) == 1 and len(files) < 10
    trials = store.trials()
    assert trials.height == 25
    assert trials.filter(pl.col("trial_id") == "t0003")["status"].item() == "error"


def test_a_concurrent_reader_never_sees_a_half_written_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(store_module, "COMPACT_EVERY", 16)
    writer = ResultsStore(str(tmp_path / "exp"))
    reader = ResultsStore(str(tmp_path / "exp"))
    done = threading.Event()
    errors: list[BaseException] = []

    def read_forever() -> None:
        while not done.is_set():
            try:
                frame = reader.trials()
                assert frame.is_empty() or frame["trial_id"].n_unique() == frame.height
            except BaseException as err:  # collected and re-raised by the test
                errors.append(err)
                return

    thread = threading.Thread(target=read_forever)
    thread.start()
    for i in range(80):
        writer.write_trial(_trial(i))
    done.set()
    thread.join()
    assert not errors, errors[0]
    assert reader.trials().height == 80


def test_every_trial_parameter_has_a_typed_column() -> None:
    schema = param_schema()
    assert set(schema.names) == set(PARAMS)
