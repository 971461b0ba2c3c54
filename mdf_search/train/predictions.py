"""Per-sample predictions of a trial's selected epoch: built on rank 0, carried by every checkpoint.

Path of the table, and why this one: rank 0 builds it from the gathered, de-duplicated evaluation of the
validation split at each epoch that becomes the selected one, and of the test split evaluated at that same
epoch, keeps it in memory and writes it into every checkpoint it reports (``predictions.parquet`` next to
``trial.json``). The sweep's results writer (``search/callbacks.py``), the one writer of an experiment's
tables, copies it into ``<experiment>/predictions/<trial_id>-a<attempt>.parquet`` when a report names a
selected epoch it has not copied yet. Going through the checkpoint:

- the table never rides Tune's metrics dict (thousands of rows x classes at the paper's scale);
- the trial id and attempt number come from the writer that numbers the trials and epochs rows;
- a resumed attempt restores its selected predictions with its weights, so its part exists even when
  it never improves again;
- it works wherever Ray Train stores checkpoints (a local path or object storage), since the writer
  reads the checkpoint through the experiment's filesystem.

``mdf-search train`` has no results writer: the table stays in the trial's checkpoints.
Columns and null rules: ``results/schema.py`` (one row per split, sample and task head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdf_search.results.schema import PROB, prediction_schema

FILE = "predictions.parquet"


class Gathered(NamedTuple):
    """One split's evaluation from every rank, de-duplicated and sorted by manifest row."""

    rows: np.ndarray  # (N,) manifest rows
    labels: dict[str, np.ndarray]  # head → (N,) class indices
    preds: dict[str, np.ndarray]  # head → (N,) argmax of the logits
    probs: dict[str, np.ndarray]  # head → (N, classes) float32 softmax


class SampleIndex(NamedTuple):
    """Per manifest row: the stable sample id (the image path), the case and the source."""

    sample_id: list[str]
    case_id: list[str]
    source: list[str]

    @classmethod
    def from_cache_index(cls, index: pa.Table) -> SampleIndex:
        """From the cache's row-aligned index (the manifest's columns)."""
        return cls(
            [str(v) for v in index.column("image_path").to_pylist()],
            [str(v) for v in index.column("case_id").to_pylist()],
            [str(v) for v in index.column("source").to_pylist()],
        )


def sample_table(
    split: str,
    epoch: int,
    gathered: Gathered,
    classes: Mapping[str, Sequence[str]],
    class_columns: Sequence[str],
    index: SampleIndex,
) -> pa.Table:
    """The rows of one split: one per (sample, head); ``prob/<c>`` for every class of ``class_columns``,
    null where ``c`` is not a class of the row's head."""
    schema = prediction_schema(class_columns, with_trial=False)
    rows = [int(r) for r in gathered.rows]
    columns: dict[str, list[object]] = {name: [] for name in schema.names}
    for task, names in classes.items():
        n = len(rows)
        columns["split"] += [split] * n
        columns["epoch"] += [int(epoch)] * n
        columns["task"] += [task] * n
        columns["sample_id"] += [index.sample_id[r] for r in rows]
        columns["manifest_row"] += rows
        columns["case_id"] += [index.case_id[r] for r in rows]
        columns["source"] += [index.source[r] for r in rows]
        columns["label"] += [names[int(i)] for i in gathered.labels[task]]
        columns["pred"] += [names[int(i)] for i in gathered.preds[task]]
        probs = np.asarray(gathered.probs[task], dtype=np.float32)
        for column in dict.fromkeys(class_columns):
            values = probs[:, names.index(column)].tolist() if column in names else [None] * n
            columns[f"{PROB}{column}"] += values
    return pa.Table.from_pydict(columns, schema=schema)


def save(table: pa.Table, directory: Path) -> None:
    """Into a checkpoint directory (rank 0's, before Ray merges the ranks' uploads)."""
    pq.write_table(table, directory / FILE)


def load(directory: Path) -> pa.Table | None:
    """From a (local copy of a) checkpoint directory; None for a checkpoint without predictions."""
    path = directory / FILE
    return pq.read_table(path) if path.is_file() else None


def read_checkpoint(fs: pafs.FileSystem, checkpoint_path: str) -> pa.Table | None:
    """From a checkpoint in storage (``checkpoint_path`` as Ray Train reports it, inside ``fs``)."""
    path = f"{checkpoint_path.rstrip('/')}/{FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_file(path) as source:
        return pq.read_table(source)
