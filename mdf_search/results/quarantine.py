"""Parts a read could not use: set aside whole, never deleted, and named in every warning.

One bad part never makes an experiment unreadable. A part that cannot be read with the others (0 bytes,
truncated, not Parquet, a column of the wrong type, no key column) is moved whole, by a rename, to
``quarantine/<table>/`` beside the tables (outside every table folder, so no reader of a table reads it;
never deleted; a name taken there gets a ``.<ns>`` suffix) and recorded in ``set_aside``; the read returns
the rest. ``warnings()`` names each such part with the rows its footer declares, and every part still in a
quarantine folder from an earlier read (``<table>/quarantine/`` of older versions too, which the writer
moves out), so no row is dropped without a word. A part the reader may not read (a permission error: not
corruption) or may not move (no write permission on the folder) is skipped where it is and named the same
way.

A read decides what is unusable (``open_part``, the store's checks of the columns: ``Unusable``);
``Quarantine`` (the filesystem and the experiment's root; ``results.store.ResultsStore`` owns one) moves
such a part aside, records it and words the warnings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
QUARANTINE = "quarantine"  # <root>/quarantine/<table>/: parts a read could not use, moved aside whole


class SetAside(NamedTuple):
    """A part a read could not use: why, how many rows it declares, and where it went."""

    part: str  # its path where it was found
    reason: str
    rows: int | None  # the rows its footer declares; None when the footer is unreadable too
    moved_to: str | None  # its path under quarantine/<table>/; None when it was left in place
    left_because: str = ""  # why it was left in place

    def message(self) -> str:
        rows = rows_text([self.rows])
        if self.moved_to is not None:
            return (
                f"{self.part}: {self.reason}; set aside to {self.moved_to} (1 part, {rows}, not shown); "
                "repair it and move it back, or delete it"
            )
        return f"{self.part}: {self.reason}; skipped and left in place (1 part, {rows}, not shown): {self.left_because}"


class Unusable(Exception):
    """A part a read cannot use, and why; ``left_because`` set: not ours to move (a permission problem)."""

    def __init__(self, reason: str, left_because: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.left_because = left_because  # set: not ours to move (e.g. a permission problem)


def rows_text(rows: list[int | None]) -> str:
    known = sum(r for r in rows if r is not None)
    unknown = rows.count(None)
    parts = [f"{known} row{'s' if known != 1 else ''}"] if len(rows) > unknown else []
    if unknown:
        parts.append("rows unknown" if unknown == len(rows) == 1 else f"{unknown} part(s) of unknown size")
    return " + ".join(parts)


def open_part(fs: pafs.FileSystem, path: str, read: Callable[[Any], Any]) -> Any:
    """``read(source)`` of one part; FileNotFoundError passes (a compaction race), any other failure
    is ``Unusable``."""
    try:
        with fs.open_input_file(path) as source:
            return read(source)
    except FileNotFoundError:
        raise
    except PermissionError as err:
        raise Unusable(
            f"cannot be read ({err.strerror or err})",
            "a permission problem is not a corrupt file, so it is not moved; fix its permissions",
        ) from None
    except (OSError, pa.ArrowException, ValueError, MemoryError) as err:
        raise Unusable(f"not a readable Parquet file ({str(err)[:200]})") from None


def listing(fs: pafs.FileSystem, directory: str, *, hidden: str = "") -> list[str]:
    """The ``*.parquet`` files in ``directory`` (not a hidden ``.name``), sorted; ``hidden``: a name ending
    (a compaction's staged copies) whose files are listed too, and hidden files then with them."""
    selector = pafs.FileSelector(directory, allow_not_found=True)
    return sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and (info.base_name.endswith(".parquet") or (hidden and info.base_name.endswith(hidden)))
        and (hidden or not info.base_name.startswith("."))
    )


class Quarantine:
    """The quarantine folders of one experiment (``path``: its root inside ``fs``), and the parts this
    store's reads set aside (``set_aside``: the store's list, shared)."""

    def __init__(self, fs: pafs.FileSystem, path: str, set_aside: list[SetAside]) -> None:
        self.fs = fs
        self.path = path
        self.set_aside = set_aside

    def directory(self, table_name: str) -> str:
        return f"{self.path}/{QUARANTINE}/{table_name}"

    def _directories(self, table_name: str) -> tuple[str, str]:
        return self.directory(table_name), f"{self.path}/{table_name}/{QUARANTINE}"  # and the old one

    def _footer_rows(self, path: str) -> int | None:
        try:
            with self.fs.open_input_file(path) as source:
                return int(pq.read_metadata(source).num_rows)
        except (OSError, pa.ArrowException, ValueError, MemoryError):
            return None

    def _move(self, table_name: str, path: str) -> str:
        """Move ``path`` into the table's quarantine folder (a name taken there gets a suffix)."""
        directory = self.directory(table_name)
        name = path.rpartition("/")[2]
        target = f"{directory}/{name}"
        self.fs.create_dir(directory, recursive=True)
        if self.fs.get_file_info(target).type != pafs.FileType.NotFound:  # set aside before: keep both
            target = f"{directory}/{name.removesuffix('.parquet')}.{time.time_ns()}.parquet"
        self.fs.move(path, target)
        return target

    def move_old(self, table_name: str) -> None:
        """Parts older versions set aside in ``<table>/quarantine/``, where a reader of the table folder
        (pandas, a recursive glob) would read them: moved to ``quarantine/<table>/``."""
        old = f"{self.path}/{table_name}/{QUARANTINE}"
        if self.fs.get_file_info(old).type != pafs.FileType.Directory:
            return
        try:
            for path in listing(self.fs, old):
                self._move(table_name, path)
            if not self.fs.get_file_info(pafs.FileSelector(old, allow_not_found=True)):
                self.fs.delete_dir(old)
        except OSError as err:
            log.warning("cannot move %s out of the table folder: %s", old, err)

    def put_aside(self, table_name: str, path: str, bad: Unusable) -> None:
        """Move an unusable part whole to ``quarantine/<table>/`` (a rename: never a deletion) and record
        it; a part that cannot be moved (no write permission) is skipped where it is, and recorded."""
        rows = self._footer_rows(path)
        if bad.left_because:
            self.set_aside.append(SetAside(path, bad.reason, rows, None, bad.left_because))
            return
        directory = self.directory(table_name)
        try:
            target = self._move(table_name, path)
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

    def quarantined(self, table_name: str) -> list[str]:
        """The parts in ``quarantine/<table>/`` (and an older version's ``<table>/quarantine/``): set aside
        by a read, this one or an earlier one."""
        return [p for d in self._directories(table_name) for p in listing(self.fs, d)]

    def warnings(self, tables: Iterable[str]) -> list[str]:
        """One line per part this store set aside, and one per table for parts set aside earlier
        (still in ``quarantine/<table>/``): the rows a reader of these tables does not see."""
        out = [s.message() for s in self.set_aside]
        moved = {s.moved_to for s in self.set_aside}
        for table_name, directory in ((t, d) for t in tables for d in self._directories(t)):
            earlier = [p for p in listing(self.fs, directory) if p not in moved]
            if not earlier:
                continue
            names = ", ".join(p.rpartition("/")[2] for p in earlier[:5])
            more = f" and {len(earlier) - 5} more" if len(earlier) > 5 else ""
            rows = rows_text([self._footer_rows(p) for p in earlier])
            out.append(
                f"{directory}/: {len(earlier)} part(s) set aside by an earlier read "
                f"({names}{more}; {rows}) are not shown; repair a part and move it back to {table_name}/, "
                "or delete it"
            )
        return out
