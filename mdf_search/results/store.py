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
  ``COMPACT_EVERY`` writes) folds the *settled* rows (a trial attempt that is no longer running, and its
  epochs) into the table's one compact file; rows still changing stay parts. Its steps are single moves
  ordered so that a glob never lists a row twice: the parts to fold are first renamed to hidden
  ``.<name>.parquet.fold`` names, then the compact file is replaced in one move, then the hidden copies
  are deleted. A row written again after it was folded (a trial reported again after a driver restart)
  is taken out of the compact file in the same way before its part appears. During a compaction a glob
  may briefly miss the rows being moved (never list them twice); ``ResultsStore`` also reads the hidden
  copies, so it misses nothing, and a writer killed half-way finishes the job on its next write.

Predictions (``results/schema.py``: one row per trial, attempt, split, sample and head, softmax
probabilities in ``prob/<class>`` columns) are never compacted: a part holds one attempt's validation and
test predictions at its selected epoch and is replaced whenever the trial selects a later epoch.

One bad part never makes an experiment unreadable. A part that cannot be read with the others (0 bytes,
truncated, not Parquet, a column of the wrong type, no key column) is moved whole, by a rename, to
``quarantine/<table>/`` beside the tables (outside every table folder, so no reader of a table reads it;
never deleted; a name taken there gets a ``.<ns>`` suffix) and recorded in ``set_aside``; the read returns
the rest. ``warnings()`` names each such part with the rows its footer declares, and every part still in a
quarantine folder from an earlier read (``<table>/quarantine/`` of older versions too, which the writer
moves out), so no row is dropped without a word. A part the reader may not read (a permission error: not
corruption) or may not move (no write permission on the folder) is skipped where it is and named the same
way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdf_search.atomic import atomic_stream
from mdf_search.results.schema import (
    KEYS,
    PREDICTION_SAMPLE,
    PREDICTION_TRIAL,
    PROB,
    PartError,
    Status,
    column_types,
    conform,
    field_for,
    metric_type,
    required_columns,
    table_schema,
    to_table,
)

log = logging.getLogger(__name__)
COMPACT_EVERY = 256
READ_TRIES = 10  # a listing raced by a compaction's moves is retried; ten races in a row need a stuck writer
TABLES = ("trials", "epochs")
QUARANTINE = "quarantine"  # <root>/quarantine/<table>/: parts a read could not use, moved aside whole
COMPACT = "compact-"
STAGED = ".fold"  # .<name>.parquet.fold: a row file a compaction is moving (hidden; not *.parquet)
Key = tuple[Any, ...]


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


def _part_name(table_name: str, row: Mapping[str, Any]) -> str:
    """A row's part name: its key (``<trial>-a<attempt>``, epochs ``-e<epoch>``, no ``.parquet``)."""
    name = f"{row['trial_id']}-a{row['attempt']}"
    return f"{name}-e{row['epoch']}" if table_name == "epochs" else name


def _staged(path: str) -> str:
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}{STAGED}"


def _is_compact(path: str) -> bool:
    return path.rpartition("/")[2].startswith(COMPACT)


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


def _without(table: pa.Table, table_name: str, key: Key) -> pa.Table:
    """``table`` without the row(s) of ``key``."""
    mask = pa.array([True] * len(table))
    for name, value in zip(KEYS[table_name], key, strict=True):
        mask = pc.and_(mask, pc.equal(table.column(name), pa.scalar(value, table.schema.field(name).type)))
    return table.filter(pc.invert(pc.fill_null(mask, False)))


@dataclass
class ResultsStore:
    """Writer and reader of one experiment's results (``root`` = ``<storage>/<experiment>``).

    ``metrics``: every metric the study's trials report (``schema.study_metrics``); each gets its column
    in every part from the first write on. Reports with other keys still get columns (the schema widens)."""

    root: str
    metrics: Sequence[str] = ()
    fs: pafs.FileSystem = field(init=False)
    path: str = field(init=False)
    set_aside: list[SetAside] = field(default_factory=list, init=False)  # by this store's reads
    _since_compaction: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    _schemas: dict[str, pa.Schema] = field(default_factory=dict, init=False, repr=False)
    _compact: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _folded: dict[str, set[Key]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.fs, self.path = filesystem(self.root)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the writer: a restored one learns the tables again (another process may have written)
        return {**self.__dict__, "_schemas": {}, "_compact": {}, "_folded": {}}

    # -- writing (one writer per experiment: the sweep driver) -------------------------------------
    def _put(self, path: str, table: pa.Table) -> None:
        self.fs.create_dir(path.rpartition("/")[0], recursive=True)
        with atomic_stream(self.fs, path) as sink:
            pq.write_table(table, sink)

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
        path = f"{self.path}/{table_name}/{_part_name(table_name, row)}.parquet"
        if key in self._folded[table_name]:
            self._unfold(table_name, key, path, table)
        else:
            self._put(path, table)
        self._since_compaction[table_name] += 1
        if self._since_compaction[table_name] >= COMPACT_EVERY:
            self.compact(table_name)

    def _unfold(self, table_name: str, key: Key, path: str, table: pa.Table) -> None:
        """Write a row whose key is in the compact file: hidden first, then the compact file without it
        (one move), then the row under its part name, so a glob never lists the key twice."""
        self._put(_staged(path), table)
        compact = self._compact.get(table_name)
        try:
            old = self._open(compact, pq.read_table) if compact else None
        except (_Unusable, FileNotFoundError):  # unreadable: no reader sees its rows; a read sets it aside
            old = None
        if compact and old is not None:
            rest = _without(old, table_name, key)
            if len(rest):
                self._put(compact, rest)
            else:
                self.fs.delete_file(compact)
                self._compact[table_name] = None
        self.fs.move(_staged(path), path)
        self._folded[table_name].discard(key)

    def _schema(self, table_name: str) -> pa.Schema:
        if table_name not in self._schemas:
            self._prepare(table_name)
        return self._schemas[table_name]

    def _prepare(self, table_name: str) -> None:
        """Learn the table's schema from its files (the declared columns and metrics first) and make the
        table uniform when it is not: files of an older version, a compaction cut short."""
        self._move_old_quarantine(table_name)
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
        compacts = [p for p in visible if _is_compact(p)]
        self._compact[table_name] = compacts[0] if compacts else None
        self._folded[table_name] = self._keys(table_name, compacts[0]) if len(compacts) == 1 else set()
        folded_names = {
            f"{self.path}/{table_name}/{_part_name(table_name, dict(zip(KEYS[table_name], k, strict=True)))}.parquet"
            for k in self._folded[table_name]
        }
        uniform = all(s is None or s.remove_metadata().equals(target) for s in footers)
        if staged or len(compacts) > 1 or not uniform or folded_names & set(visible):
            self._rebalance(table_name)

    def _rebalance(self, table_name: str) -> None:
        """Rewrite the table with its schema, each key in one file: settled rows in the compact file, the
        others one part each. Every step is one move, ordered so that a glob never lists a key twice (see
        the module's docstring); every row is in a visible or a hidden file at every moment."""
        frame, used, visible = self._read_table(table_name)
        directory = f"{self.path}/{table_name}"
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
        settled = self._settled(table_name, table)
        fold, loose = table.filter(settled), table.filter(pc.invert(settled))
        compacts = [p for p in visible if _is_compact(p)]
        compact = compacts[0] if compacts else f"{directory}/{COMPACT}{time.time_ns()}.parquet"
        appearing, stay = [], set()
        for i, row in enumerate(loose.select(list(KEYS[table_name])).to_pylist()):  # 1. loose rows
            path = f"{directory}/{_part_name(table_name, row)}.parquet"
            stay.add(path)
            if path in visible:  # replaced in place: the same key in the same file
                self._put(path, loose.slice(i, 1))
            else:  # now in a compact file or hidden: written hidden, shown after the compact file
                self._put(_staged(path), loose.slice(i, 1))
                appearing.append(path)
        for path in used:  # 2. hide the parts (and other compact files) whose rows are folded
            if path in visible and path not in stay and path != compact:
                self.fs.move(path, _staged(path))
        if len(fold):  # 3. the compact file, replaced in one move
            self._put(compact, fold)
        elif compact in used:  # (one a read set aside is gone already)
            self.fs.move(compact, _staged(compact))
        for path in appearing:  # 4. the loose rows that were folded or hidden appear
            self.fs.move(_staged(path), path)
        for path in self._scan(table_name)[1]:  # 5. the hidden copies go
            self.fs.delete_file(path)
        self._compact[table_name] = compact if len(fold) else None
        keys = fold.select(list(KEYS[table_name])).to_pylist()
        self._folded[table_name] = {tuple(k.values()) for k in keys}
        self._since_compaction[table_name] = 0

    def _settled(self, table_name: str, table: pa.Table) -> pa.ChunkedArray:
        """Rows that no longer change: a trial attempt that is not running, and the epochs of one."""
        if table_name == "trials":
            return pc.fill_null(pc.not_equal(table.column("status"), Status.RUNNING.value), False)
        trials = self.read("trials")
        done = (
            set()
            if trials.is_empty()
            else {
                (t, a)
                for t, a, s in trials.select("trial_id", "attempt", "status").iter_rows()
                if s not in (None, Status.RUNNING)
            }
        )
        pairs = zip(table.column("trial_id").to_pylist(), table.column("attempt").to_pylist(), strict=True)
        return pa.chunked_array([pa.array([p in done for p in pairs], pa.bool_())])

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
        self._put(f"{self.path}/predictions/{trial_id}-a{attempt}.parquet", table)

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
        names = self._listing(directory, hidden=True)
        visible = [p for p in names if not p.rpartition("/")[2].startswith(".")]
        staged = [p for p in names if p.rpartition("/")[2].startswith(".") and p.endswith(STAGED)]
        return visible, staged

    def _listing(self, directory: str, *, hidden: bool = False) -> list[str]:
        selector = pafs.FileSelector(directory, allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and (info.base_name.endswith(".parquet") or (hidden and info.base_name.endswith(STAGED)))
            and (hidden or not info.base_name.startswith("."))
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

    def _footer(self, path: str) -> pa.Schema | None:
        try:
            with self.fs.open_input_file(path) as source:
                return pq.read_schema(source)
        except (OSError, pa.ArrowException, ValueError, MemoryError):
            return None

    def _keys(self, table_name: str, path: str) -> set[Key]:
        try:
            keys = self._open(path, lambda source: pq.read_table(source, columns=list(KEYS[table_name])))
        except (_Unusable, FileNotFoundError):
            return set()
        return {tuple(row.values()) for row in keys.to_pylist()}

    def _quarantine_dir(self, table_name: str) -> str:
        return f"{self.path}/{QUARANTINE}/{table_name}"

    def _to_quarantine(self, table_name: str, path: str) -> str:
        """Move ``path`` into the table's quarantine folder (a name taken there gets a suffix)."""
        directory = self._quarantine_dir(table_name)
        name = path.rpartition("/")[2]
        target = f"{directory}/{name}"
        self.fs.create_dir(directory, recursive=True)
        if self.fs.get_file_info(target).type != pafs.FileType.NotFound:  # set aside before: keep both
            target = f"{directory}/{name.removesuffix('.parquet')}.{time.time_ns()}.parquet"
        self.fs.move(path, target)
        return target

    def _move_old_quarantine(self, table_name: str) -> None:
        """Parts older versions set aside in ``<table>/quarantine/``, where a reader of the table folder
        (pandas, a recursive glob) would read them: moved to ``quarantine/<table>/``."""
        old = f"{self.path}/{table_name}/{QUARANTINE}"
        if self.fs.get_file_info(old).type != pafs.FileType.Directory:
            return
        try:
            for path in self._listing(old):
                self._to_quarantine(table_name, path)
            if not self.fs.get_file_info(pafs.FileSelector(old, allow_not_found=True)):
                self.fs.delete_dir(old)
        except OSError as err:
            log.warning("cannot move %s out of the table folder: %s", old, err)

    def _set_aside(self, table_name: str, path: str, bad: _Unusable) -> None:
        """Move an unusable part whole to ``quarantine/<table>/`` (a rename: never a deletion) and record
        it; a part that cannot be moved (no write permission) is skipped where it is, and recorded."""
        rows = self._footer_rows(path)
        if bad.left_because:
            self.set_aside.append(SetAside(path, bad.reason, rows, None, bad.left_because))
            return
        directory = self._quarantine_dir(table_name)
        try:
            target = self._to_quarantine(table_name, path)
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

    # -- what was set aside -------------------------------------------------------------------------
    def _quarantine_dirs(self, table_name: str) -> tuple[str, str]:
        return self._quarantine_dir(table_name), f"{self.path}/{table_name}/{QUARANTINE}"  # and the old one

    def quarantined(self, table_name: str) -> list[str]:
        """The parts in ``quarantine/<table>/`` (and an older version's ``<table>/quarantine/``): set aside
        by a read, this one or an earlier one."""
        return [p for d in self._quarantine_dirs(table_name) for p in self._listing(d)]

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
        (still in ``quarantine/<table>/``): the rows a reader of these tables does not see."""
        out = [s.message() for s in self.set_aside]
        moved = {s.moved_to for s in self.set_aside}
        for table_name, directory in ((t, d) for t in tables for d in self._quarantine_dirs(t)):
            earlier = [p for p in self._listing(directory) if p not in moved]
            if not earlier:
                continue
            names = ", ".join(p.rpartition("/")[2] for p in earlier[:5])
            more = f" and {len(earlier) - 5} more" if len(earlier) > 5 else ""
            rows = _rows_text([self._footer_rows(p) for p in earlier])
            out.append(
                f"{directory}/: {len(earlier)} part(s) set aside by an earlier read "
                f"({names}{more}; {rows}) are not shown; repair a part and move it back to {table_name}/, "
                "or delete it"
            )
        return out
