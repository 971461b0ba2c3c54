"""The results store: real Parquet files, atomic keyed parts, de-duplicated polars reads, compaction,
and bad parts set aside (never lost) while the rest is read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


# -- a bad part is set aside, never lost, and the rest is read ----------------------------------------
def _three(tmp_path: Path) -> tuple[ResultsStore, Path]:
    store = ResultsStore(str(tmp_path / "exp"))
    for i in range(3):
        store.write_trial(_trial(i))
    return store, tmp_path / "exp" / "trials"


def _text_metric(part: Path) -> bytes:
    table = pq.read_table(part)
    index = table.schema.get_field_index("val/macro_f1")
    pq.write_table(table.set_column(index, "val/macro_f1", pa.array(["high"])), part)
    return part.read_bytes()


@pytest.mark.parametrize(
    ("kind", "damage", "says"),
    [
        ("0-byte", lambda part: b"", "not a readable Parquet file"),
        ("truncated", lambda part: part.read_bytes()[:-30], "not a readable Parquet file"),
        ("not Parquet", lambda part: b"trial_id\nt0001\n", "not a readable Parquet file"),
        ("wrong-typed", _text_metric, "holds string values in the column 'val/macro_f1'"),
    ],
)
def test_a_bad_part_is_moved_whole_to_quarantine_and_the_rest_is_read(
    tmp_path: Path, kind: str, damage: Callable[[Path], bytes], says: str
) -> None:
    store, folder = _three(tmp_path)
    part = folder / "t0001-a1.parquet"
    bad = damage(part)
    part.write_bytes(bad)
    assert store.trials()["trial_id"].to_list() == ["t0000", "t0002"], kind
    moved = folder.parent / "quarantine" / "trials" / "t0001-a1.parquet"
    assert not part.exists() and moved.read_bytes() == bad  # renamed, byte for byte
    [aside] = store.set_aside
    assert aside.moved_to == str(moved) and says in aside.reason
    assert aside.rows == (1 if kind == "wrong-typed" else None)
    [warning] = store.warnings()
    assert str(part) in warning and str(moved) in warning and "not shown" in warning
    # a later read, by another reader, still says so: no row is dropped without a word
    later = ResultsStore(str(tmp_path / "exp"))
    assert later.trials().height == 2 and not later.set_aside
    [again] = later.warnings()
    assert "1 part(s) set aside by an earlier read" in again and "t0001-a1.parquet" in again


class _Proxy:
    """A filesystem that fails one operation on one path, and passes everything else through."""

    def __init__(self, fs: Any, method: str, path: str) -> None:
        self._fs, self._method, self._path = fs, method, path

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._fs, name)
        if name != self._method:
            return call

        def failing(*args: Any, **kwargs: Any) -> Any:
            if str(args[0]).endswith(self._path):
                raise PermissionError(13, "Permission denied")
            return call(*args, **kwargs)

        return failing


def test_a_reader_that_may_not_write_skips_the_bad_part_in_place_and_says_so(tmp_path: Path) -> None:
    store, folder = _three(tmp_path)
    (folder / "t0001-a1.parquet").write_bytes(b"")
    store.fs = _Proxy(store.fs, "move", "t0001-a1.parquet")  # type: ignore[assignment]
    assert store.trials().height == 2
    assert (folder / "t0001-a1.parquet").exists()
    [warning] = store.warnings()
    assert "skipped and left in place" in warning and "cannot move it to" in warning
    assert "Permission denied" in warning and "t0001-a1.parquet" in warning


def test_a_part_the_reader_may_not_read_is_not_moved(tmp_path: Path) -> None:
    store, folder = _three(tmp_path)
    store.fs = _Proxy(store.fs, "open_input_file", "t0002-a1.parquet")  # type: ignore[assignment]
    assert store.trials()["trial_id"].to_list() == ["t0000", "t0001"]
    assert (folder / "t0002-a1.parquet").exists() and not (folder.parent / "quarantine" / "trials").exists()
    [warning] = store.warnings()
    assert "cannot be read (Permission denied)" in warning and "fix its permissions" in warning


def test_a_name_taken_in_quarantine_keeps_both_parts(tmp_path: Path) -> None:
    store, folder = _three(tmp_path)
    for content in (b"first", b"second"):
        (folder / "t0001-a1.parquet").write_bytes(content)
        store.trials()
    kept = sorted(p.read_bytes() for p in (folder.parent / "quarantine" / "trials").iterdir())
    assert kept == [b"first", b"second"]


def test_compaction_sets_a_bad_part_aside_and_deletes_only_what_it_folded(tmp_path: Path) -> None:
    store, folder = _three(tmp_path)
    (folder / "t0001-a1.parquet").write_bytes(b"PAR1 but not really")
    store.compact("trials")
    [compacted] = folder.glob("*.parquet")
    assert compacted.name.startswith("compact-")
    assert (
        folder.parent / "quarantine" / "trials" / "t0001-a1.parquet"
    ).read_bytes() == b"PAR1 but not really"
    assert store.trials()["trial_id"].to_list() == ["t0000", "t0002"]


def test_a_metric_null_in_one_part_and_text_in_the_others_is_no_mismatch(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    store.write_trial(_trial(0, **{"val/confusion": None}))  # an all-null column is written as float64
    store.write_trial(_trial(1))
    trials = store.trials()
    assert trials.height == 2 and not store.set_aside and trials.schema["val/confusion"] == pl.String


def test_a_bad_predictions_part_is_set_aside_too(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    folder = tmp_path / "exp" / "predictions"
    folder.mkdir(parents=True)
    (folder / "t0001-a1.parquet").write_bytes(b"\x00" * 10)
    assert store.predictions().is_empty()
    assert (folder.parent / "quarantine" / "predictions" / "t0001-a1.parquet").exists()
    assert "quarantine/predictions" in store.warnings(("predictions",))[0]


def test_a_table_folder_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "trials").write_text("x")
    with pytest.raises(
        store_module.ResultsError, match="a file, not a folder of Parquet parts; move it away"
    ):
        ResultsStore(str(tmp_path / "exp")).trials()


def test_check_sets_aside_unreadable_footers_without_reading_the_data(tmp_path: Path) -> None:
    store, folder = _three(tmp_path)
    (folder / "t0002-a1.parquet").write_bytes(b"")
    store.check(("trials",))
    assert [Path(s.part).name for s in store.set_aside] == ["t0002-a1.parquet"]
    assert ResultsStore(str(tmp_path / "exp")).trials().height == 2


def test_compaction_deletes_the_temp_files_of_writes_killed_long_ago(tmp_path: Path) -> None:
    """A write killed half-way leaves a hidden ``.tmp`` no reader lists; compaction removes those older
    than an hour and leaves a fresh one (a write that may still be running) alone."""
    import os
    import time

    from mdf_search.results.compaction import STALE_TMP_S

    store = ResultsStore(str(tmp_path / "exp"))
    for i in range(3):
        store.write_trial({"experiment": "e", "trial_id": f"t{i}", "attempt": 1, "status": "completed"})
    folder = tmp_path / "exp" / "trials"
    old, fresh = folder / ".t9-a1.parquet.0badc0de.tmp", folder / ".t8-a1.parquet.0fedcba9.tmp"
    for path in (old, fresh):
        path.write_bytes(b"PAR1 half a file")
    stale = time.time() - STALE_TMP_S - 60
    os.utime(old, (stale, stale))
    store.compact("trials")
    assert not old.exists() and fresh.exists()
    assert store.read("trials").height == 3
