"""Compaction of a results table: settled rows folded into one compact file, each key in one file.

Compaction (after every ``COMPACT_EVERY`` writes of ``results.store``) folds the *settled* rows (a trial
attempt that is no longer running, and its epochs) into the table's one compact file
(``<table>/compact-<seq>.parquet``); rows still changing stay parts. Its steps are single moves ordered so
that a glob never lists a row twice: the parts to fold are first renamed to hidden
``.<name>.parquet.fold`` names, then the compact file is replaced in one move, then the hidden copies are
deleted. A row written again after it was folded (a trial reported again after a driver restart) is taken
out of the compact file in the same way before its part appears. During a compaction a glob may briefly
miss the rows being moved (never list them twice); ``ResultsStore`` also reads the hidden copies, so it
misses nothing, and a writer killed half-way finishes the job on its next write.

``Compaction`` holds the filesystem and the experiment's root for ``results.store.ResultsStore``, which
owns one, reads the tables and keeps their schemas; this module moves the files.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdf_search.atomic import atomic_stream
from mdf_search.results.quarantine import Unusable, listing, open_part
from mdf_search.results.schema import KEYS, Status

COMPACT = "compact-"
STALE_TMP_S = 3600.0  # a hidden .tmp this old is a write killed half-way (a live write takes seconds)
STAGED = ".fold"  # .<name>.parquet.fold: a row file a compaction is moving (hidden; not *.parquet)
Key = tuple[Any, ...]


def part_name(table_name: str, row: Mapping[str, Any]) -> str:
    """A row's part name: its key (``<trial>-a<attempt>``, epochs ``-e<epoch>``, no ``.parquet``)."""
    name = f"{row['trial_id']}-a{row['attempt']}"
    return f"{name}-e{row['epoch']}" if table_name == "epochs" else name


def put(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` atomically (``mdf_search.atomic``), its folder created if need be."""
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    with atomic_stream(fs, path) as sink:
        pq.write_table(table, sink)


def staged(path: str) -> str:
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}{STAGED}"


def is_staged(path: str) -> bool:
    name = path.rpartition("/")[2]
    return name.startswith(".") and name.endswith(STAGED)


def is_compact(path: str) -> bool:
    return path.rpartition("/")[2].startswith(COMPACT)


def _without(table: pa.Table, table_name: str, key: Key) -> pa.Table:
    """``table`` without the row(s) of ``key``."""
    mask = pa.array([True] * len(table))
    for name, value in zip(KEYS[table_name], key, strict=True):
        mask = pc.and_(mask, pc.equal(table.column(name), pa.scalar(value, table.schema.field(name).type)))
    return table.filter(pc.invert(pc.fill_null(mask, False)))


class Compaction:
    """The compact file of each table of one experiment (``path``: its root inside ``fs``) and the keys
    folded into it; learnt from the files (``learn``), never pickled (another process may have written)."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.compact: dict[str, str | None] = {}
        self.folded: dict[str, set[Key]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "compact": {}, "folded": {}}

    def _keys(self, table_name: str, path: str) -> set[Key]:
        try:
            keys = open_part(
                self.fs, path, lambda source: pq.read_table(source, columns=list(KEYS[table_name]))
            )
        except (Unusable, FileNotFoundError):
            return set()
        return {tuple(row.values()) for row in keys.to_pylist()}

    def learn(self, table_name: str, visible: list[str]) -> bool:
        """Learn the table's compact file and its keys from its parts (``visible``); True when a compaction
        was cut short (more than one compact file, a folded key in a part too) and the table needs one."""
        compacts = [p for p in visible if is_compact(p)]
        self.compact[table_name] = compacts[0] if compacts else None
        self.folded[table_name] = self._keys(table_name, compacts[0]) if len(compacts) == 1 else set()
        folded_names = {
            f"{self.path}/{table_name}/{part_name(table_name, dict(zip(KEYS[table_name], k, strict=True)))}.parquet"
            for k in self.folded[table_name]
        }
        return len(compacts) > 1 or bool(folded_names & set(visible))

    def write(self, table_name: str, key: Key, path: str, table: pa.Table) -> None:
        """Write a row's part (``path``); a row whose key is in the compact file is unfolded first."""
        if key in self.folded[table_name]:
            self._unfold(table_name, key, path, table)
        else:
            put(self.fs, path, table)

    def _unfold(self, table_name: str, key: Key, path: str, table: pa.Table) -> None:
        """Write a row whose key is in the compact file: hidden first, then the compact file without it
        (one move), then the row under its part name, so a glob never lists the key twice."""
        put(self.fs, staged(path), table)
        compact = self.compact.get(table_name)
        try:
            old = open_part(self.fs, compact, pq.read_table) if compact else None
        except (Unusable, FileNotFoundError):  # unreadable: no reader sees its rows; a read sets it aside
            old = None
        if compact and old is not None:
            rest = _without(old, table_name, key)
            if len(rest):
                put(self.fs, compact, rest)
            else:
                self.fs.delete_file(compact)
                self.compact[table_name] = None
        self.fs.move(staged(path), path)
        self.folded[table_name].discard(key)

    def rebalance(
        self,
        table_name: str,
        table: pa.Table,
        used: list[str],
        visible: list[str],
        trials: Callable[[], pl.DataFrame],
    ) -> None:
        """Rewrite the table (``table``: all its rows, with its schema, read from ``used``; ``visible``: its
        parts) each key in one file: settled rows in the compact file, the others one part each. Every step
        is one move, ordered so that a glob never lists a key twice (see the module's docstring); every row
        is in a visible or a hidden file at every moment. ``trials``: the trials table (for the epochs)."""
        directory = f"{self.path}/{table_name}"
        settled = self._settled(table_name, table, trials)
        fold, loose = table.filter(settled), table.filter(pc.invert(settled))
        compacts = [p for p in visible if is_compact(p)]
        compact = compacts[0] if compacts else f"{directory}/{COMPACT}{time.time_ns()}.parquet"
        appearing, stay = [], set()
        for i, row in enumerate(loose.select(list(KEYS[table_name])).to_pylist()):  # 1. loose rows
            path = f"{directory}/{part_name(table_name, row)}.parquet"
            stay.add(path)
            if path in visible:  # replaced in place: the same key in the same file
                put(self.fs, path, loose.slice(i, 1))
            else:  # now in a compact file or hidden: written hidden, shown after the compact file
                put(self.fs, staged(path), loose.slice(i, 1))
                appearing.append(path)
        for path in used:  # 2. hide the parts (and other compact files) whose rows are folded
            if path in visible and path not in stay and path != compact:
                self.fs.move(path, staged(path))
        if len(fold):  # 3. the compact file, replaced in one move
            put(self.fs, compact, fold)
        elif compact in used:  # (one a read set aside is gone already)
            self.fs.move(compact, staged(compact))
        for path in appearing:  # 4. the loose rows that were folded or hidden appear
            self.fs.move(staged(path), path)
        for path in listing(self.fs, directory, hidden=STAGED):  # 5. the hidden copies go
            if is_staged(path):
                self.fs.delete_file(path)
        self._drop_stale_temps(directory)
        self.compact[table_name] = compact if len(fold) else None
        keys = fold.select(list(KEYS[table_name])).to_pylist()
        self.folded[table_name] = {tuple(k.values()) for k in keys}

    def _drop_stale_temps(self, directory: str) -> None:
        """Delete the hidden ``.<name>.<hex>.tmp`` files of writes killed half-way (``atomic_stream``):
        no reader ever lists them, and a file older than :data:`STALE_TMP_S` belongs to no live write."""
        now = time.time()
        for info in self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
            name, mtime = info.base_name, info.mtime
            hidden_tmp = name.startswith(".") and name.endswith(".tmp")
            if hidden_tmp and mtime is not None and now - mtime.timestamp() > STALE_TMP_S:
                with contextlib.suppress(FileNotFoundError):  # another writer got there first
                    self.fs.delete_file(info.path)

    @staticmethod
    def _settled(table_name: str, table: pa.Table, trials: Callable[[], pl.DataFrame]) -> pa.ChunkedArray:
        """Rows that no longer change: a trial attempt that is not running, and the epochs of one."""
        if table_name == "trials":
            return pc.fill_null(pc.not_equal(table.column("status"), Status.RUNNING.value), False)
        frame = trials()
        done = (
            set()
            if frame.is_empty()
            else {
                (t, a)
                for t, a, s in frame.select("trial_id", "attempt", "status").iter_rows()
                if s not in (None, Status.RUNNING)
            }
        )
        pairs = zip(table.column("trial_id").to_pylist(), table.column("attempt").to_pylist(), strict=True)
        return pa.chunked_array([pa.array([p in done for p in pairs], pa.bool_())])
