"""Every results table read by plain Parquet readers, as a user would: pandas (the table folder), DuckDB
(a plain glob, no ``union_by_name``) and polars (``scan_parquet`` of the glob). The tables are written by
the sweep's own writer (``ResultsWriter`` over ``ResultsStore``) from reports laid out as the trial loop
lays them out (metric names from ``metrics.py``), through an errored trial, compactions, a status written
again after its row was folded, a second attempt, and a restarted driver. The three readers must agree
on the columns, and hold one row per key. No Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from mdf_search.metrics import metrics_for_tasks, prefixed
from mdf_search.model.mdf import task_classes
from mdf_search.results import store as store_module
from mdf_search.results.schema import KEYS, study_metrics, to_table
from mdf_search.results.store import ResultsStore
from mdf_search.search.callbacks import ResultsWriter
from mdf_search.train import predictions
from mdf_search.train.phases import RUN_KEYS
from mdf_search.train.predictions import Gathered, SampleIndex
from mdf_search.train.selection import Selection
from tests.search.test_callbacks import StandInTrial

DISEASES = ("healthy", "acquired", "inherited")
CLASSES = task_classes("disease", DISEASES)
METRICS = study_metrics(CLASSES)
NATURAL_KEY = {"trials": KEYS["trials"], "epochs": KEYS["epochs"], "predictions": KEYS["predictions"]}


def _split(name: str, seed: int) -> dict[str, Any]:
    """A split's metrics as ``train/evaluate.py`` reports them (loss, metrics.py's keys, n)."""
    rng = np.random.default_rng(seed)
    y = np.arange(12) % 3
    pred = np.where(rng.random(12) < 0.7, y, (y + 1) % 3)
    probs = rng.dirichlet(np.ones(3), 12)
    split = {"loss": float(rng.random()), **metrics_for_tasks({"disease": pred}, {"disease": y}, CLASSES, {"disease": probs}), "n": 12}  # fmt: skip
    return prefixed(split, name)


def _report(epoch: int, selected: int, status: str, ckpt: Path | None) -> dict[str, Any]:
    """One report of the trial loop (train/loop.py): the run's numbers, the epoch's train and val
    metrics, test only at an epoch validation selected, the selected epoch's under ``selected/``."""
    train = {"train/loss": 1.0 / epoch, "train_loss": 1.0 / epoch, "train/accuracy": 0.5, "step_time_s": 0.1,
             "samples_per_s": 40.0, "epoch_time_s": 1.0, "first_step_unix": 1.7e9}  # fmt: skip
    report: dict[str, Any] = {
        "world_size": 2, "split_hash": "abc", "features_reused": "none", "trainable_params": 10,
        "total_params": 20, **train, "epoch": epoch, "status": status, **_split("val", epoch),
    }  # fmt: skip
    if selected == epoch:
        report.update(_split("test", 100 + epoch))
    chosen = {**train, **_split("val", selected), **_split("test", 100 + selected)}
    report.update(eval_time_s=0.2, best_epoch=selected, best_value=0.5, peak_mem_mb=100.0)
    report.update(prefixed(chosen, "selected"), **dict.fromkeys(RUN_KEYS, 0.5))
    if ckpt is not None:
        report["checkpoint_path"] = str(ckpt)
    return report


def _checkpoint(directory: Path, epoch: int) -> Path:
    """A checkpoint holding the attempt's predictions at its selected epoch (train/predictions.py)."""
    index = SampleIndex([f"img{i}" for i in range(3)], ["c0", "c1", "c2"], ["s"] * 3)
    rows = np.arange(3)
    g = Gathered(rows, {"disease": rows}, {"disease": rows}, {"disease": np.eye(3, dtype=np.float32)})
    table = predictions.sample_table("val", epoch, g, CLASSES, list(DISEASES), index)
    directory.mkdir(parents=True, exist_ok=True)
    predictions.save(table, directory)
    return directory


def _writer(root: str, declared: bool) -> ResultsWriter:
    writer = ResultsWriter(root, "exp", {"git_sha": "x"}, selection=Selection("val/macro_f1", "max"))
    if declared:  # what the sweep passes once callbacks.py hands the study's metrics to the store
        writer.store = ResultsStore(root, metrics=METRICS)
    return writer


def _run(writer: ResultsWriter, trial: StandInTrial, epochs: list[tuple[int, int]], tmp: Path) -> None:
    """Report ``(epoch, selected)`` pairs as Tune calls the writer; completed after the last."""
    for i, (epoch, selected) in enumerate(epochs):
        ckpt = _checkpoint(tmp / f"{trial.trial_id}-a{trial.num_failures}-e{epoch}", selected)
        status = "completed" if i == len(epochs) - 1 else "running"
        trial.last_result = _report(epoch, selected, status, ckpt)
        writer.on_trial_result(i, [], trial, trial.last_result)
    writer.on_trial_complete(len(epochs), [], trial)


def _readers(folder: Path) -> Iterator[tuple[str, Callable[[], tuple[set[str], int, int]]]]:
    """Each reader's (columns, rows, distinct keys) of a table folder."""
    keys = list(NATURAL_KEY[folder.name])

    def counts(frame: pd.DataFrame) -> tuple[set[str], int, int]:
        return set(frame.columns), len(frame), len(frame[keys].drop_duplicates())

    glob = f"{folder}/*.parquet"
    yield "pandas", lambda: counts(pd.read_parquet(folder))
    yield "duckdb", lambda: counts(duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df())
    yield "polars", lambda: counts(pl.scan_parquet(glob).collect().to_pandas())


def _check(root: Path, when: str) -> dict[str, tuple[int, int]]:
    """The three readers agree with each other and with ResultsStore; one row per key; one schema."""
    store = ResultsStore(str(root))
    out = {}
    for table, read in (("trials", store.read), ("epochs", store.read), ("predictions", None)):
        folder = root / table
        frame = read(table) if read is not None else store.predictions()
        seen = {name: reader() for name, reader in _readers(folder)}
        columns = {name: c for name, (c, _, _) in seen.items()}
        assert len({frozenset(c) for c in columns.values()}) == 1, (when, table, columns)
        assert set(frame.columns) <= columns["pandas"], (when, table)  # the store's are all there
        for name, (_, rows, distinct) in seen.items():
            assert rows == distinct == frame.height, (when, table, name, rows, distinct, frame.height)
        schemas = {pq.read_schema(p).remove_metadata() for p in folder.glob("*.parquet")}
        assert len({s.to_string() for s in schemas}) == 1, (when, table, "parts differ in schema")
        out[table] = (len(columns["pandas"]), frame.height)
    return out


@pytest.mark.parametrize("declared", [True, False], ids=["metrics-declared", "metrics-learned"])
def test_plain_readers_agree_after_an_error_compaction_a_rewrite_and_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    monkeypatch.setattr(store_module, "COMPACT_EVERY", 5)  # compactions happen within this small study
    root = tmp_path / "exp"
    writer = _writer(str(root), declared)
    # an attempt that errors before its first report: its row has none of the metric columns
    t2 = StandInTrial("t2", error_msg="RuntimeError: worker died")
    writer.on_trial_error(0, [], t2)
    t1 = StandInTrial("t1")
    trial_loop = [(1, 1), (2, 1), (3, 3)]  # epoch 2 reports no test metrics
    t1.last_result = _report(1, 1, "running", _checkpoint(tmp_path / "c-t1", 1))
    writer.on_trial_result(0, [], t1, t1.last_result)
    first = _check(root, "after an errored trial")
    _run(writer, t1, trial_loop, tmp_path)
    oom = StandInTrial(
        "t3", last_result={"status": "oom", "epoch": 1, "message": "CUDA OOM", "world_size": 2}
    )
    writer.on_trial_error(0, [], oom)
    assert (root / "trials").glob("compact-*.parquet"), "the writes above compacted the table"
    _check(root, "after compaction")
    # the driver restarted after t1's last report: Tune reports it again (its rows were folded)
    restarted = _writer(str(root), declared)
    restarted.on_trial_result(3, [], t1, t1.last_result)
    restarted.on_trial_complete(3, [], t1)
    _check(root, "after a status written again")
    t2.num_failures = 1  # Tune retried t2: its second attempt runs to the end
    _run(restarted, t2, [(1, 1), (2, 2)], tmp_path)
    restarted.store.compact("trials")
    restarted.store.compact("epochs")
    last = _check(root, "after a resume")
    trials = ResultsStore(str(root)).read("trials")
    assert sorted(zip(trials["trial_id"], trials["attempt"], strict=True)) == [
        ("t1", 1), ("t2", 1), ("t2", 2), ("t3", 1)
    ]  # fmt: skip
    assert last["epochs"][1] == 5 and last["predictions"][1] == 3 * 2  # 3 samples x 2 attempts
    if declared:  # the columns were all there from the first write on
        assert first["trials"][0] == last["trials"][0] and first["epochs"][0] == last["epochs"][0]
        assert set(METRICS) <= set(pd.read_parquet(root / "trials").columns)


def test_the_declared_metrics_are_what_the_loop_reports() -> None:
    """study_metrics names every scalar key of a report (train, val and test of the loop's layout)."""
    reported = _report(1, 1, "running", None)
    metrics = {k for k in reported if k.startswith(("train", "val/", "test/")) and k not in RUN_KEYS}
    assert metrics <= set(METRICS), sorted(metrics - set(METRICS))
    assert {"trainable_params", "total_params", "best_value", "peak_mem_mb", "eval_time_s"} <= set(METRICS)
    dual = study_metrics(task_classes("dual", DISEASES))
    assert "val/disease/macro_f1" in dual and "train/type/accuracy" in dual and "val/loss" in dual


def _old_part(root: Path, table: str, name: str, row: dict[str, Any]) -> None:
    """A part as versions before one schema per table wrote it: the columns of its own row."""
    (root / table).mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table([row], table), root / table / f"{name}.parquet")


def test_parts_of_an_older_version_are_read_and_made_uniform_by_the_next_write(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    full = {"experiment": "e", "trial_id": "t1", "attempt": 1, "status": "completed", "val/macro_f1": 0.5}
    _old_part(root, "trials", "t0-a1", {"experiment": "e", "trial_id": "t0", "attempt": 1, "status": "error"})
    _old_part(root, "trials", "compact-1", {**full, "val/macro_f1": 0.4, "written_at": 1})  # folded,
    _old_part(root, "trials", "t1-a1", {**full, "written_at": 2})  # then written again
    (root / "trials" / "quarantine").mkdir()
    (root / "trials" / "quarantine" / "t9-a1.parquet").write_bytes(b"")  # set aside by an older version
    store = ResultsStore(str(root), metrics=("val/macro_f1", "val/confusion"))
    assert store.read("trials")["val/macro_f1"].to_list() == [None, 0.5]  # the store unifies them
    store.write_trial({"experiment": "e", "trial_id": "t2", "attempt": 1, "status": "running"})
    frame = pd.read_parquet(root / "trials")
    assert sorted(frame["trial_id"]) == ["t0", "t1", "t2"] and "val/confusion" in frame.columns
    assert frame.set_index("trial_id").loc["t1", "val/macro_f1"] == 0.5
    assert not (root / "trials" / "quarantine").exists()  # moved out of the table folder, still named
    assert (root / "quarantine" / "trials" / "t9-a1.parquet").exists()
    assert "t9-a1.parquet" in ResultsStore(str(root)).warnings()[0]


def test_a_part_set_aside_is_outside_the_table_folder(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    for i in range(3):
        store.write_trial({"experiment": "e", "trial_id": f"t{i}", "attempt": 1, "status": "completed"})
    (tmp_path / "exp" / "trials" / "t1-a1.parquet").write_bytes(b"")
    assert store.read("trials").height == 2
    assert len(pd.read_parquet(tmp_path / "exp" / "trials")) == 2  # pandas reads the folder recursively


class _Watched:
    """A filesystem that runs ``look`` after every move and delete (each step of a compaction)."""

    def __init__(self, fs: Any, look: Callable[[], None]) -> None:
        self._fs, self._look = fs, look

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)
        self._look()

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)
        self._look()


def test_no_step_of_a_compaction_or_a_rewrite_lists_a_row_twice(tmp_path: Path) -> None:
    """After every single move or delete, a glob lists each key at most once and ResultsStore reads
    every row; a compaction cut short at any step is finished by the next writer."""
    root = tmp_path / "exp"
    store = ResultsStore(str(root), metrics=("val/loss",))
    rows = [{"experiment": "e", "trial_id": f"t{i}", "attempt": 1, "status": "completed" if i % 3 else "running",
             "val/loss": float(i)} for i in range(9)]  # fmt: skip
    for row in rows:
        store.write_trial(row)
    steps: list[int] = []

    def look() -> None:
        glob = duckdb.sql(f"SELECT trial_id FROM read_parquet('{root}/trials/*.parquet')").fetchall()
        assert len(glob) == len(set(glob)), f"step {len(steps)}: {sorted(glob)}"
        assert ResultsStore(str(root)).read("trials").height == 9
        steps.append(len(glob))

    store.fs = _Watched(store.fs, look)
    store.compact("trials")
    store.write_trial({**rows[1], "status": "error"})  # folded, then written again
    store.write_trial({**rows[0], "status": "completed"})  # a running part, then settled
    store.compact("trials")
    assert len(steps) > 5 and min(steps) < 9  # the glob may miss a row being moved, never list it twice
    final = duckdb.sql(f"SELECT trial_id, status FROM read_parquet('{root}/trials/*.parquet')").fetchall()
    assert len(final) == 9 and ("t1", "error") in final

    class _Dies(Exception):
        pass

    def cut(folder: Path, stop: int) -> int:
        """Write the rows, then compact, raising after the ``stop``-th step (0: never); the steps run."""
        writer = ResultsStore(str(folder))
        for row in rows:
            writer.write_trial(row)
        done = [0]

        def die() -> None:
            done[0] += 1
            if done[0] == stop:
                raise _Dies

        writer.fs = _Watched(writer.fs, die)
        writer.compact("trials")
        return done[0]

    total = cut(tmp_path / "whole", 0)
    assert total >= 10  # moves in place, hides, the compact file, deletes of the hidden copies
    for stop in range(1, total + 1):  # cut a compaction short after each of its steps
        copy = tmp_path / f"cut{stop}"
        with pytest.raises(_Dies):
            cut(copy, stop)
        assert ResultsStore(str(copy)).read("trials").height == 9, stop
        ResultsStore(str(copy)).write_trial({**rows[2], "status": "error"})  # the next writer finishes it
        glob = duckdb.sql(f"SELECT trial_id FROM read_parquet('{copy}/trials/*.parquet')").fetchall()
        assert sorted(glob) == sorted((r["trial_id"],) for r in rows), stop
        assert not [p for p in (copy / "trials").iterdir() if p.name.startswith(".")], stop
