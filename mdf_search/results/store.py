"""Parquet results of an experiment: atomic part files written by one writer, read with polars.

Layout under ``<storage>/<experiment>/`` (a local path or any pyarrow filesystem URI: ``s3://``, ``gs://``)::

    trials/<trial_id>-a<attempt>.parquet       one row: the latest state of that trial attempt
    epochs/<trial_id>-a<attempt>-e<epoch>.parquet   one row per reported epoch
    trials/compact-<seq>.parquet, epochs/compact-<seq>.parquet   parts folded together (see below)
    predictions/<trial_id>-a<attempt>.parquet   per-sample predictions of the attempt's selected epoch

Writes are atomic (``mdf_search.atomic``): a part is written under a hidden ``.tmp`` name that no reader
globs, then moved over its final name. A part's name is its key, so rewriting a trial's state or a resumed epoch replaces the row
instead of duplicating it, and readers also de-duplicate by key keeping the newest ``written_at``.

Compaction keeps reads fast for large studies: after every ``COMPACT_EVERY`` new parts the writer folds
the compact file and the parts into one new compact file (written atomically), then deletes the folded
parts. A reader that lists a part just before it is deleted lists again (up to ``READ_TRIES`` times).

Predictions (``results/schema.py``: one row per trial, attempt, split, sample and head, softmax
probabilities in ``prob/<class>`` columns) are never compacted: a part holds one attempt's validation and
test predictions at its selected epoch and is replaced whenever the trial selects a later epoch, so the
table is ready for paired tests over images without reading a compact file of every trial. Every part of
an experiment has the same schema: ``pl.scan_parquet("<root>/predictions/*.parquet")`` or DuckDB's
``read_parquet('<root>/predictions/*.parquet')`` read them directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdf_search.atomic import atomic_stream
from mdf_search.results.schema import KEYS, PREDICTION_SAMPLE, PREDICTION_TRIAL, PROB, to_table

log = logging.getLogger(__name__)
COMPACT_EVERY = 256
READ_TRIES = 3  # a listing raced by compaction is retried; three races in a row would need a stuck writer
TABLES = ("trials", "epochs")


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or a URI."""
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())


@dataclass
class ResultsStore:
    """Writer and reader of one experiment's results (``root`` = ``<storage>/<experiment>``)."""

    root: str
    fs: pafs.FileSystem = field(init=False)
    path: str = field(init=False)
    _since_compaction: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    def __post_init__(self) -> None:
        self.fs, self.path = filesystem(self.root)

    # -- writing (one writer per experiment: the sweep driver) -------------------------------------
    def _write(self, table_name: str, name: str, table: pa.Table, *, compact: bool = True) -> None:
        directory = f"{self.path}/{table_name}"
        self.fs.create_dir(directory, recursive=True)
        with atomic_stream(self.fs, f"{directory}/{name}.parquet") as sink:
            pq.write_table(table, sink)
        if not compact:
            return
        self._since_compaction[table_name] += 1
        if self._since_compaction[table_name] >= COMPACT_EVERY:
            self.compact(table_name)

    def write_trial(self, row: Mapping[str, Any]) -> None:
        table = to_table([row], "trials")
        self._write("trials", f"{row['trial_id']}-a{row['attempt']}", table)

    def write_epoch(self, row: Mapping[str, Any]) -> None:
        table = to_table([row], "epochs")
        self._write("epochs", f"{row['trial_id']}-a{row['attempt']}-e{row['epoch']}", table)

    def write_predictions(self, trial_id: str, attempt: int, samples: pa.Table) -> None:
        """Replace the attempt's predictions part with ``samples`` (the columns a trial writes, see
        ``PREDICTION_SAMPLE``, then ``prob/<class>`` float32 columns); trial_id and attempt are prepended."""
        missing = [f.name for f in PREDICTION_SAMPLE if f.name not in samples.column_names]
        extra = [
            n for n in samples.column_names if n not in PREDICTION_SAMPLE.names and not n.startswith(PROB)
        ]
        if missing or extra:
            raise ValueError(
                f"predictions of {trial_id} must have the columns {PREDICTION_SAMPLE.names} and "
                f"{PROB}<class> columns, but lack {missing} and have unknown {extra}"
            )
        probs = [n for n in samples.column_names if n.startswith(PROB)]
        schema = pa.schema(
            [*PREDICTION_TRIAL, *PREDICTION_SAMPLE, *(pa.field(n, pa.float32()) for n in probs)]
        )
        head = {
            "trial_id": pa.array([trial_id] * samples.num_rows, pa.string()),
            "attempt": pa.array([int(attempt)] * samples.num_rows, pa.int64()),
        }
        columns = [head[f.name] if f.name in head else samples.column(f.name).cast(f.type) for f in schema]
        table = pa.Table.from_arrays(columns, schema=schema)
        self._write("predictions", f"{trial_id}-a{attempt}", table, compact=False)

    def compact(self, table_name: str) -> None:
        """Fold every part (and the previous compact file) into one new compact file, then delete them."""
        files = self._files(table_name)
        if len(files) <= 1:
            return
        frame = self._read_files(table_name, files)
        seq = time.time_ns()
        name = f"compact-{seq}"
        with atomic_stream(self.fs, f"{self.path}/{table_name}/{name}.parquet") as sink:
            pq.write_table(frame.to_arrow(), sink)
        for info in files:
            self.fs.delete_file(info)
        self._since_compaction[table_name] = 0

    # -- reading --------------------------------------------------------------------------------------
    def _files(self, table_name: str) -> list[str]:
        selector = pafs.FileSelector(f"{self.path}/{table_name}", allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )

    def _read_files(self, table_name: str, files: Iterable[str]) -> pl.DataFrame:
        frames = []
        for path in files:
            with self.fs.open_input_file(path) as source:
                frames.append(pl.from_arrow(pq.read_table(source)))
        if not frames:
            return pl.DataFrame()
        frame = pl.concat([f for f in frames if isinstance(f, pl.DataFrame)], how="diagonal_relaxed")
        keys = KEYS[table_name]
        return (
            frame.sort("written_at")
            .unique(subset=list(keys), keep="last", maintain_order=True)
            .sort(list(keys))
        )

    def read(self, table_name: str) -> pl.DataFrame:
        """The whole table, de-duplicated by its key (newest ``written_at`` wins)."""
        if table_name not in TABLES:
            raise ValueError(f"table must be one of {list(TABLES)}, but got {table_name!r}")
        for attempt in range(READ_TRIES):
            try:
                return self._read_files(table_name, self._files(table_name))
            except FileNotFoundError:  # a part was compacted away between listing and reading
                if attempt == READ_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def trials(self, *, latest_attempt: bool = True) -> pl.DataFrame:
        """One row per trial (its latest attempt) unless ``latest_attempt`` is False."""
        frame = self.read("trials")
        if frame.is_empty() or not latest_attempt:
            return frame
        return frame.sort(["trial_id", "attempt"]).unique(
            subset=["trial_id"], keep="last", maintain_order=True
        )

    def epochs(self) -> pl.DataFrame:
        return self.read("epochs")

    def predictions(self) -> pl.DataFrame:
        """Every attempt's predictions (one part per attempt, no duplicates), sorted by key.

        Join with :meth:`trials` on ``(trial_id, attempt)`` to keep the attempt a trial row reports.
        """
        frames = []
        for path in self._files("predictions"):  # replaced by rename, never deleted: no retry needed
            with self.fs.open_input_file(path) as source:
                frame = pl.from_arrow(pq.read_table(source))
            if isinstance(frame, pl.DataFrame):
                frames.append(frame)
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="diagonal_relaxed").sort(list(KEYS["predictions"]))
