"""The per-sample predictions table: rows per (split, sample, head), one schema for every task, the
round trip through a checkpoint directory and the results store, and reads by globbing readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from mdf_search.results.schema import prediction_schema
from mdf_search.results.store import ResultsStore
from mdf_search.train import predictions
from mdf_search.train.predictions import Gathered, SampleIndex

DISEASES = ("normal", "dr", "rp")
TYPES = ("healthy", "acquired", "inherited")
COLUMNS = [*DISEASES, *TYPES]
INDEX = SampleIndex(
    [f"/data/img{i}.png" for i in range(6)],
    ["c0", "c0", "c1", "c2", "c3", "c3"],
    ["fives", "fives", "hrf", "hrf", "stonerounds", "stonerounds"],
)


def _gathered(rows: list[int], classes: dict[str, tuple[str, ...]], seed: int = 0) -> Gathered:
    rng = np.random.default_rng(seed)
    labels, preds, probs = {}, {}, {}
    for task, names in classes.items():
        logits = rng.normal(size=(len(rows), len(names)))
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        probs[task] = p.astype(np.float32)
        preds[task] = logits.argmax(1)
        labels[task] = rng.integers(0, len(names), len(rows))
    return Gathered(np.asarray(rows), labels, preds, probs)


def test_one_row_per_sample_and_head_with_nulls_outside_the_head() -> None:
    classes = {"disease": DISEASES, "type": TYPES}
    g = _gathered([1, 4], classes)
    table = predictions.sample_table("val", 3, g, classes, COLUMNS, INDEX)
    assert table.schema == prediction_schema(COLUMNS, with_trial=False)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame) and frame.height == 4  # 2 samples x 2 heads
    row = frame.filter((pl.col("task") == "type") & (pl.col("manifest_row") == 4)).row(0, named=True)
    assert row["sample_id"] == "/data/img4.png" and row["case_id"] == "c3" and row["source"] == "stonerounds"
    assert row["split"] == "val" and row["epoch"] == 3
    assert row["label"] == TYPES[int(g.labels["type"][1])] and row["pred"] == TYPES[int(g.preds["type"][1])]
    assert [row[f"prob/{c}"] for c in TYPES] == pytest.approx(g.probs["type"][1].tolist())
    assert all(row[f"prob/{c}"] is None for c in DISEASES)
    assert sum(row[f"prob/{c}"] for c in TYPES) == pytest.approx(1.0, abs=1e-6)


def test_trials_of_different_tasks_share_one_schema_and_glob_together(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    for trial, classes in (
        ("t1", {"type": TYPES}),
        ("t2", {"disease": DISEASES}),
        (
            "t3",
            {
                "disease": DISEASES,
                "type": TYPES,
            },
        ),
    ):
        val = predictions.sample_table("val", 2, _gathered([0, 1, 2], classes), classes, COLUMNS, INDEX)
        test = predictions.sample_table("test", 2, _gathered([3, 5], classes), classes, COLUMNS, INDEX)
        directory = tmp_path / "ckpt" / trial
        directory.mkdir(parents=True)
        predictions.save(pa.concat_tables([val, test]), directory)  # what rank 0 puts in a checkpoint
        table = predictions.read_checkpoint(pafs.LocalFileSystem(), str(directory))
        assert table is not None
        store.write_predictions(trial, 1, table)
    files = sorted((tmp_path / "exp" / "predictions").glob("*.parquet"))
    assert [f.name for f in files] == ["t1-a1.parquet", "t2-a1.parquet", "t3-a1.parquet"]
    schemas = {pads.dataset(f).schema.remove_metadata() for f in files}
    assert len(schemas) == 1  # one fixed schema: DuckDB/polars globs need no union by name
    globbed = pl.read_parquet(str(tmp_path / "exp" / "predictions" / "*.parquet"))
    assert globbed.height == (3 + 2) * (1 + 1 + 2)
    frame = store.predictions()
    assert frame.sort(frame.columns).equals(globbed.sort(globbed.columns))
    counts = frame.group_by(["trial_id", "split"]).len().sort(["trial_id", "split"])
    assert counts["len"].to_list() == [2, 3, 2, 3, 4, 6]
    assert frame.schema["attempt"] == pl.Int64 and frame.schema["prob/rp"] == pl.Float32


def test_rewriting_an_attempt_replaces_its_part(tmp_path: Path) -> None:
    store = ResultsStore(str(tmp_path / "exp"))
    classes = {"type": TYPES}
    for epoch in (1, 3):
        table = predictions.sample_table("val", epoch, _gathered([0, 1], classes), classes, COLUMNS, INDEX)
        store.write_predictions("t1", 2, table)
    frame = store.predictions()
    assert frame.height == 2 and set(frame["epoch"]) == {3} and set(frame["attempt"]) == {2}


def test_a_checkpoint_without_predictions_and_a_table_with_missing_columns(tmp_path: Path) -> None:
    assert predictions.load(tmp_path) is None
    assert predictions.read_checkpoint(pafs.LocalFileSystem(), str(tmp_path)) is None
    bad = pa.table({"split": ["val"], "prob/a": [0.5]})
    with pytest.raises(ValueError, match="lack"):
        ResultsStore(str(tmp_path / "exp")).write_predictions("t1", 1, bad)
    assert ResultsStore(str(tmp_path / "empty")).predictions().is_empty()
