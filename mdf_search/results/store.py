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

One bad part never makes an experiment unreadable. A part that cannot be read with the others (0 bytes,
truncated, not Parquet, a column of the wrong type, no key column) is moved whole, by a rename, to
``<table>/quarantine/`` (never deleted; a name taken there gets a ``.<ns>`` suffix) and recorded in
``set_aside``; the read returns the rest. ``warnings()`` names each such part with the rows its footer
declares, and every part still in a quarantine folder from an earlier read, so no row is dropped without
a word. A part the reader may not read (a permission error: not corruption) or may not move (no write
permission on the folder) is skipped where it is and named the same way. Globs of ``<table>/*.parquet``
do not descend into ``quarantine/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdf_search.atomic import atomic_stream
from mdf_search.results.schema import (
    KEYS,
    PREDICTION_SAMPLE,
    PREDICTION_TRIAL,
    PROB,
    PartError,
    column_types,
    conform,
    required_columns,
    to_table,
)

log = logging.getLogger(__name__)
COMPACT_EVERY = 256
READ_TRIES = 3  # a listing raced by compaction is retried; three races in a row would need a stuck writer
TABLES = ("trials", "epochs")
QUARANTINE = "quarantine"  # <table>/quarantine/: parts a read could not use, moved aside whole


class ResultsError(ValueError):
    """A results folder that cannot be read at all (a table folder that is a file, ...)."""


class SetAside(NamedTuple):
    """A part a read could not use: why, how many rows it declares, and where it went."""

    part: str  # its path where it was found
    reason: str
    rows: int | None  # the rows its footer declares; None when the footer is unreadable too
    moved_to: str | None  # its path under <table>/quarantine/; None when it was left in place
    left_because: str = ""  # why it was left in place

    def message(self) -> str:
        rows = _rows_text([self.rows])
        if self.moved_to is not None:
            return (
                f"{self.part}: {self.reason}; set aside to {self.moved_to} (1 part, {rows}, not shown); "
                "repair it and move it back, or delete it"
            )
        return f"{self.part}: {self.reason}; skipped and left in place (1 part, {rows}, not shown): {self.left_because}"


class _Unusable(Exception):
    def __init__(self, reason: str, left_because: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.left_because = left_because  # set: not ours to move (e.g. a permission problem)


def _rows_text(rows: list[int | None]) -> str:
    known = sum(r for r in rows if r is not None)
    unknown = rows.count(None)
    parts = [f"{known} row{'s' if known != 1 else ''}"] if len(rows) > unknown else []
    if unknown:
        parts.append("rows unknown" if unknown == len(rows) == 1 else f"{unknown} part(s) of unknown size")
    return " + ".join(parts)


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
    set_aside: list[SetAside] = field(default_factory=list, init=False)  # by this store's reads
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
        """Fold every part (and the previous compact file) into one new compact file, then delete the
        parts it folded (a part the read set aside is in ``<table>/quarantine/`` already)."""
        files = self._files(table_name)
        if len(files) <= 1:
            return
        frame, folded = self._read_files(table_name, files)
        seq = time.time_ns()
        name = f"compact-{seq}"
        with atomic_stream(self.fs, f"{self.path}/{table_name}/{name}.parquet") as sink:
            pq.write_table(frame.to_arrow(), sink)
        for info in folded:
            self.fs.delete_file(info)
        self._since_compaction[table_name] = 0

    # -- reading --------------------------------------------------------------------------------------
    def _files(self, table_name: str) -> list[str]:
        directory = f"{self.path}/{table_name}"
        if self.fs.get_file_info(directory).type == pafs.FileType.File:
            raise ResultsError(
                f"{directory}: a file, not a folder of Parquet parts; move it away (the sweep writes "
                f"{table_name}/<trial>.parquet parts there)"
            )
        return self._listing(directory)

    def _listing(self, directory: str) -> list[str]:
        selector = pafs.FileSelector(directory, allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )

    def _open(self, path: str, read: Callable[[Any], Any]) -> Any:
        """``read(source)`` of one part; FileNotFoundError passes (a compaction race), any other failure
        is ``_Unusable``."""
        try:
            with self.fs.open_input_file(path) as source:
                return read(source)
        except FileNotFoundError:
            raise
        except PermissionError as err:
            raise _Unusable(
                f"cannot be read ({err.strerror or err})",
                "a permission problem is not a corrupt file, so it is not moved; fix its permissions",
            ) from None
        except (OSError, pa.ArrowException, ValueError, MemoryError) as err:
            raise _Unusable(f"not a readable Parquet file ({str(err)[:200]})") from None

    def _footer_rows(self, path: str) -> int | None:
        try:
            with self.fs.open_input_file(path) as source:
                return int(pq.read_metadata(source).num_rows)
        except (OSError, pa.ArrowException, ValueError, MemoryError):
            return None

    def _set_aside(self, table_name: str, path: str, bad: _Unusable) -> None:
        """Move an unusable part whole to ``<table>/quarantine/`` (a rename: never a deletion) and record
        it; a part that cannot be moved (no write permission) is skipped where it is, and recorded."""
        rows = self._footer_rows(path)
        if bad.left_because:
            self.set_aside.append(SetAside(path, bad.reason, rows, None, bad.left_because))
            return
        directory = f"{self.path}/{table_name}/{QUARANTINE}"
        name = path.rpartition("/")[2]
        target = f"{directory}/{name}"
        try:
            self.fs.create_dir(directory, recursive=True)
            if self.fs.get_file_info(target).type != pafs.FileType.NotFound:  # set aside before: keep both
                target = f"{directory}/{name.removesuffix('.parquet')}.{time.time_ns()}.parquet"
            self.fs.move(path, target)
        except FileNotFoundError:  # another reader (or the writer's compaction) moved it first
            return
        except OSError as err:
            reason = getattr(err, "strerror", None) or err
            why = (
                f"cannot move it to {directory}/ ({reason}); someone who can write the folder should move it"
            )
            self.set_aside.append(SetAside(path, bad.reason, rows, None, why))
            return
        log.info("set aside %s: %s", path, bad.reason)
        self.set_aside.append(SetAside(path, bad.reason, rows, target))

    def _frames(self, table_name: str, files: Iterable[str]) -> tuple[list[pl.DataFrame], list[str]]:
        """The usable parts as frames with one type per column, and their paths; the others set aside."""
        parts: dict[str, pa.Table] = {}
        for path in files:
            try:
                parts[path] = self._open(path, pq.read_table)
            except _Unusable as bad:
                self._set_aside(table_name, path, bad)
        types = column_types(table_name, parts)
        frames, used = [], []
        for path, part in parts.items():
            try:
                frame = pl.from_arrow(conform(table_name, part, types))
            except PartError as err:
                self._set_aside(table_name, path, _Unusable(str(err)))
                continue
            except (pl.exceptions.PolarsError, pa.ArrowException, ValueError) as err:
                self._set_aside(table_name, path, _Unusable(f"its columns cannot be read ({str(err)[:200]})"))
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

    def read(self, table_name: str) -> pl.DataFrame:
        """The whole table, de-duplicated by its key (newest ``written_at`` wins). A part that cannot be
        read with the others (0-byte, truncated, not Parquet, wrong types) is set aside (``set_aside``,
        ``warnings``) and the rest is returned; ``ResultsError`` when the table folder is a file."""
        if table_name not in TABLES:
            raise ValueError(f"table must be one of {list(TABLES)}, but got {table_name!r}")
        for attempt in range(READ_TRIES):
            try:
                return self._read_files(table_name, self._files(table_name))[0]
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
        """Every attempt's predictions (one part per attempt, no duplicates), sorted by key; unusable
        parts are set aside as in :meth:`read`.

        Join with :meth:`trials` on ``(trial_id, attempt)`` to keep the attempt a trial row reports.
        """
        # replaced by rename, never deleted: no retry needed
        frames, _ = self._frames("predictions", self._files("predictions"))
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="diagonal_relaxed").sort(list(KEYS["predictions"]))

    # -- what was set aside -------------------------------------------------------------------------
    def quarantined(self, table_name: str) -> list[str]:
        """The parts in ``<table>/quarantine/``: set aside by a read, this one or an earlier one."""
        return self._listing(f"{self.path}/{table_name}/{QUARANTINE}")

    def check(self, tables: Iterable[str] = (*TABLES, "predictions")) -> None:
        """Set aside, as a read would, every part whose footer is unreadable or that lacks a key column,
        reading only footers (cheap: before a command that reads the tables later)."""
        for table_name in tables:
            for path in self._files(table_name):
                try:
                    names = self._open(path, lambda source: pq.read_schema(source).names)
                    missing = [n for n in required_columns(table_name) if n not in names]
                    if missing:
                        raise _Unusable(f"lacks the column {missing[0]!r} that keys its rows")
                except FileNotFoundError:
                    continue
                except _Unusable as bad:
                    self._set_aside(table_name, path, bad)

    def warnings(self, tables: Iterable[str] = TABLES) -> list[str]:
        """One line per part this store set aside, and one per table for parts set aside earlier
        (still in ``<table>/quarantine/``): the rows a reader of these tables does not see."""
        out = [s.message() for s in self.set_aside]
        moved = {s.moved_to for s in self.set_aside}
        for table_name in tables:
            earlier = [p for p in self.quarantined(table_name) if p not in moved]
            if not earlier:
                continue
            names = ", ".join(p.rpartition("/")[2] for p in earlier[:5])
            more = f" and {len(earlier) - 5} more" if len(earlier) > 5 else ""
            rows = _rows_text([self._footer_rows(p) for p in earlier])
            out.append(
                f"{self.path}/{table_name}/{QUARANTINE}/: {len(earlier)} part(s) set aside by an earlier read "
                f"({names}{more}; {rows}) are not shown; repair a part and move it back to {table_name}/, "
                "or delete it"
            )
        return out
