"""Parquet results of an experiment: atomic part files written by one writer, read with polars.

Layout under ``<storage>/<experiment>/`` (a local path or any pyarrow filesystem URI: ``s3://``, ``gs://``)::

    trials/<trial_id>-a<attempt>.parquet       one row: the latest state of that trial attempt
    epochs/<trial_id>-a<attempt>-e<epoch>.parquet   one row per reported epoch
    trials/compact-<seq>.parquet, epochs/compact-<seq>.parquet   settled rows folded together (see below)
    predictions/<trial_id>-a<attempt>.parquet   per-sample predictions of the attempt's selected epoch
    quarantine/<table>/                        parts a read could not use, moved aside whole

Any Parquet reader can read a table: ``pandas.read_parquet("<root>/trials")``, DuckDB's
``read_parquet('<root>/trials/*.parquet')`` (no ``union_by_name`` needed) and
``pl.scan_parquet("<root>/trials/*.parquet")`` give the same columns and one row per key:

- **One schema per table.** Every file of ``trials`` or ``epochs`` is written with the table's schema
  (``schema.table_schema``): the declared columns, every metric the study declares (``metrics``:
  ``schema.study_metrics``), then any other key a trial reported, null where a row has no value, in one
  order with one type per column. The writer learns the schema from the table's files on its first write;
  a key never seen before widens it, and every file of the table is rewritten with the wider schema at
  once (a rare event when the study declares its metrics). Files of an older version are made uniform
  the same way on the first write; the reader unifies whatever it finds.
- **Each key in one file.** Writes are atomic (``mdf_search.atomic``): a part is written under a hidden
  ``.tmp`` name, then moved over its final name. A part's name is its key, so rewriting a trial's state
  or a resumed epoch replaces the row instead of duplicating it. Compaction (after every
  ``COMPACT_EVERY`` writes) folds the *settled* rows into the table's one compact file, in moves ordered so
  that a glob never lists a row twice (``results.compaction``); ``ResultsStore`` also reads a compaction's
  hidden copies, so it misses nothing.

Predictions (``results/schema.py``: one row per trial, attempt, split, sample and head, softmax
probabilities in ``prob/<class>`` columns) are never compacted: a part holds one attempt's validation and
test predictions at its selected epoch and is replaced whenever the trial selects a later epoch.

One bad part never makes an experiment unreadable: a part that cannot be read with the others is moved
whole to ``quarantine/<table>/`` beside the tables (never deleted), the read returns the rest, and
``warnings()`` names it with its rows (``results.quarantine``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdf_search.results.compaction import STAGED, Compaction, is_staged, part_name, put
from mdf_search.results.quarantine import QUARANTINE, Quarantine, SetAside, Unusable, listing, open_part
from mdf_search.results.schema import (
    KEYS,
    PREDICTION_SAMPLE,
    PREDICTION_TRIAL,
    PROB,
    PartError,
    column_types,
    conform,
    field_for,
    metric_type,
    required_columns,
    table_schema,
    to_table,
)

__all__ = ["COMPACT_EVERY", "QUARANTINE", "TABLES", "ResultsError", "ResultsStore", "SetAside", "filesystem"]

COMPACT_EVERY = 256
READ_TRIES = 10  # a listing raced by a compaction's moves is retried; ten races in a row need a stuck writer
TABLES = ("trials", "epochs")


class ResultsError(ValueError):
    """A results folder that cannot be read at all (a table folder that is a file, ...)."""


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or a URI."""
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())


def _plain(name: str, kind: pa.DataType) -> pa.DataType:
    """The type a column read by polars is written back as (text as string, numbers as float64)."""
    if pa.types.is_null(kind):
        return metric_type(name)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    return pa.float64() if pa.types.is_integer(kind) or pa.types.is_floating(kind) else kind


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order (null where ``table`` has none)."""
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass
class ResultsStore:
    """Writer and reader of one experiment's results (``root`` = ``<storage>/<experiment>``).

    ``metrics``: every metric the study's trials report (``schema.study_metrics``); each gets its column
    in every part from the first write on. Reports with other keys still get columns (the schema widens).
    It owns a ``Quarantine`` (parts set aside) and a ``Compaction`` (compact files), which share its ``fs``."""

    root: str
    metrics: Sequence[str] = ()
    path: str = field(init=False)
    set_aside: list[SetAside] = field(default_factory=list, init=False)  # by this store's reads
    _since_compaction: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    _schemas: dict[str, pa.Schema] = field(default_factory=dict, init=False, repr=False)
    _quarantine: Quarantine = field(init=False, repr=False, compare=False)
    _compaction: Compaction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fs, self.path = filesystem(self.root)
        self._quarantine = Quarantine(fs, self.path, self.set_aside)
        self._compaction = Compaction(fs, self.path)

    @property
    def fs(self) -> pafs.FileSystem:
        """The filesystem of ``root``; one set here (a wrapper, in tests) serves the quarantine and the
        compaction too."""
        return self._quarantine.fs

    @fs.setter
    def fs(self, fs: pafs.FileSystem) -> None:
        self._quarantine.fs = fs
        self._compaction.fs = fs

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the writer: a restored one learns the tables again (another process may have written;
        # the compaction forgets its compact files the same way)
        return {**self.__dict__, "_schemas": {}}

    # -- writing (one writer per experiment: the sweep driver) -------------------------------------
    def write_trial(self, row: Mapping[str, Any]) -> None:
        self._write_row("trials", row)

    def write_epoch(self, row: Mapping[str, Any]) -> None:
        self._write_row("epochs", row)

    def _write_row(self, table_name: str, row: Mapping[str, Any]) -> None:
        schema = self._schema(table_name)
        new = [field_for(table_name, k, v) for k, v in row.items() if k not in schema.names and v is not None]
        if new:  # a key never seen: every file of the table takes the wider schema at once
            self._schemas[table_name] = pa.schema([*schema, *new])
            self._rebalance(table_name)
        table = to_table([row], table_name, self._schemas[table_name])
        key = tuple(table.column(k)[0].as_py() for k in KEYS[table_name])
        path = f"{self.path}/{table_name}/{part_name(table_name, row)}.parquet"
        self._compaction.write(table_name, key, path, table)  # out of the compact file first if folded
        self._since_compaction[table_name] += 1
        if self._since_compaction[table_name] >= COMPACT_EVERY:
            self.compact(table_name)

    def _schema(self, table_name: str) -> pa.Schema:
        if table_name not in self._schemas:
            self._prepare(table_name)
        return self._schemas[table_name]

    def _prepare(self, table_name: str) -> None:
        """Learn the table's schema from its files (the declared columns and metrics first) and make the
        table uniform when it is not: files of an older version, a compaction cut short."""
        self._quarantine.move_old(table_name)
        visible, staged = self._scan(table_name)
        footers = [self._footer(p) for p in visible]
        seen: dict[str, pa.DataType] = {}
        for schema in footers:
            for f in schema or ():
                text = pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                if f.name not in seen or text:
                    seen[f.name] = pa.string() if text else field_for(table_name, f.name).type
        target = table_schema(table_name, self.metrics, (pa.field(n, t) for n, t in seen.items()))
        self._schemas[table_name] = target
        cut_short = self._compaction.learn(table_name, visible)
        uniform = all(s is None or s.remove_metadata().equals(target) for s in footers)
        if staged or cut_short or not uniform:
            self._rebalance(table_name)

    def _rebalance(self, table_name: str) -> None:
        """Rewrite the table with its schema (widened by the columns its files hold), each key in one file:
        settled rows in the compact file, the others one part each (``Compaction.rebalance``)."""
        frame, used, visible = self._read_table(table_name)
        known = [*self._schemas[table_name], *frame.to_arrow().schema]
        declared = table_schema(table_name, self.metrics)
        got = frame.to_arrow().schema
        extra = {
            f.name: pa.field(
                f.name, _plain(f.name, got.field(f.name).type if f.name in got.names else f.type)
            )
            for f in known
            if f.name not in declared.names
        }
        target = table_schema(table_name, self.metrics, extra.values())
        self._schemas[table_name] = target
        table = _cast(frame.to_arrow(), target) if len(frame) else target.empty_table()
        self._compaction.rebalance(table_name, table, used, visible, lambda: self.read("trials"))
        self._since_compaction[table_name] = 0

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
        put(self.fs, f"{self.path}/predictions/{trial_id}-a{attempt}.parquet", table)

    def compact(self, table_name: str) -> None:
        """Fold the settled rows of every part into the table's one compact file (``_rebalance``); a part
        the read set aside is in ``quarantine/<table>/`` already."""
        self._schema(table_name)
        visible, staged = self._scan(table_name)
        if len(visible) + len(staged) > 1:
            self._rebalance(table_name)

    # -- reading --------------------------------------------------------------------------------------
    def _files(self, table_name: str) -> list[str]:
        return self._scan(table_name)[0]

    def _scan(self, table_name: str) -> tuple[list[str], list[str]]:
        """The table's parts and its hidden copies of a compaction in progress, from one listing."""
        directory = f"{self.path}/{table_name}"
        if self.fs.get_file_info(directory).type == pafs.FileType.File:
            raise ResultsError(
                f"{directory}: a file, not a folder of Parquet parts; move it away (the sweep writes "
                f"{table_name}/<trial>.parquet parts there)"
            )
        names = listing(self.fs, directory, hidden=STAGED)
        visible = [p for p in names if not p.rpartition("/")[2].startswith(".")]
        return visible, [p for p in names if is_staged(p)]

    def _footer(self, path: str) -> pa.Schema | None:
        try:
            with self.fs.open_input_file(path) as source:
                return pq.read_schema(source)
        except (OSError, pa.ArrowException, ValueError, MemoryError):
            return None

    def _frames(self, table_name: str, files: Iterable[str]) -> tuple[list[pl.DataFrame], list[str]]:
        """The usable parts as frames with one type per column, and their paths; the others set aside."""
        parts: dict[str, pa.Table] = {}
        for path in files:
            try:
                parts[path] = open_part(self.fs, path, pq.read_table)
            except Unusable as bad:
                self._quarantine.put_aside(table_name, path, bad)
        types = column_types(table_name, parts)
        frames, used = [], []
        for path, part in parts.items():
            try:
                frame = pl.from_arrow(conform(table_name, part, types))
            except PartError as err:
                self._quarantine.put_aside(table_name, path, Unusable(str(err)))
                continue
            except (pl.exceptions.PolarsError, pa.ArrowException, ValueError) as err:
                self._quarantine.put_aside(
                    table_name, path, Unusable(f"its columns cannot be read ({str(err)[:200]})")
                )
                continue
            if isinstance(frame, pl.DataFrame):
                frames.append(frame)
                used.append(path)
        return frames, used

    def _read_files(self, table_name: str, files: Iterable[str]) -> tuple[pl.DataFrame, list[str]]:
        frames, used = self._frames(table_name, files)
        if not frames:
            return pl.DataFrame(), used
        frame = pl.concat(frames, how="diagonal_relaxed")
        keys = KEYS[table_name]
        deduplicated = (
            frame.sort("written_at")
            .unique(subset=list(keys), keep="last", maintain_order=True)
            .sort(list(keys))
        )
        return deduplicated, used

    def _read_table(self, table_name: str) -> tuple[pl.DataFrame, list[str], list[str]]:
        """The table (its parts and any hidden copies of a compaction in progress), the files it was read
        from, and the table's visible files."""
        for attempt in range(READ_TRIES):
            visible, staged = self._scan(table_name)
            try:
                frame, used = self._read_files(table_name, [*staged, *visible])
                return frame, used, visible
            except FileNotFoundError:  # a part was moved by a compaction between listing and reading
                if attempt == READ_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def read(self, table_name: str) -> pl.DataFrame:
        """The whole table, de-duplicated by its key (newest ``written_at`` wins). A part that cannot be
        read with the others (0-byte, truncated, not Parquet, wrong types) is set aside (``set_aside``,
        ``warnings``) and the rest is returned; ``ResultsError`` when the table folder is a file."""
        if table_name not in TABLES:
            raise ValueError(f"table must be one of {list(TABLES)}, but got {table_name!r}")
        return self._read_table(table_name)[0]

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
        """Every attempt's predictions (one part per attempt, no duplicates), sorted by key; unusable
        parts are set aside as in :meth:`read`.

        Join with :meth:`trials` on ``(trial_id, attempt)`` to keep the attempt a trial row reports.
        """
        # replaced by rename, never deleted: no retry needed
        frames, _ = self._frames("predictions", self._files("predictions"))
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="diagonal_relaxed").sort(list(KEYS["predictions"]))

    # -- what was set aside (``results.quarantine``) ---------------------------------------------------
    def quarantined(self, table_name: str) -> list[str]:
        """The parts in ``quarantine/<table>/`` (and an older version's ``<table>/quarantine/``): set aside
        by a read, this one or an earlier one."""
        return self._quarantine.quarantined(table_name)

    def check(self, tables: Iterable[str] = (*TABLES, "predictions")) -> None:
        """Set aside, as a read would, every part whose footer is unreadable or that lacks a key column,
        reading only footers (cheap: before a command that reads the tables later)."""
        for table_name in tables:
            for path in self._files(table_name):
                try:
                    names = open_part(self.fs, path, lambda source: pq.read_schema(source).names)
                    missing = [n for n in required_columns(table_name) if n not in names]
                    if missing:
                        raise Unusable(f"lacks the column {missing[0]!r} that keys its rows")
                except FileNotFoundError:
                    continue
                except Unusable as bad:
                    self._quarantine.put_aside(table_name, path, bad)

    def warnings(self, tables: Iterable[str] = TABLES) -> list[str]:
        """One line per part this store set aside, and one per table for parts set aside earlier
        (still in ``quarantine/<table>/``): the rows a reader of these tables does not see."""
        return self._quarantine.warnings(tables)
