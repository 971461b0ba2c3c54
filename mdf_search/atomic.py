"""Atomic writes: nothing half-written is ever visible under its final name.

One helper for every writer of the package, on a local disk or on any pyarrow filesystem:

- :func:`atomic_file`: a local file, written under a unique hidden sibling name and renamed over the
  final name (``os.replace``) when the block succeeds;
- :func:`atomic_stream`: the same on a pyarrow filesystem (local, ``s3://``, ``gs://``): an output stream
  under a hidden ``.tmp`` name, moved to the final name on success;
- :func:`commit_dir`: publish a finished temporary directory; when another process won the race the
  loser discards its copy (writers of one key build identical content).

Hidden names start with ``.`` and end in ``.tmp`` or a ``tmp-<pid>-<hex>`` tag, so no reader's glob
(``*.parquet``, ``meta.json``) ever matches a file in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name next to ``path`` (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically, on error it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a local ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_stream(fs: Any, path: str) -> Iterator[Any]:
    """Yield an output stream on the pyarrow filesystem ``fs``; on success its content appears at
    ``path`` in one move, on error the partial file is deleted."""
    directory, _, name = path.rpartition("/")
    tmp = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open_output_stream(tmp) as sink:
            yield sink
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def commit_dir(tmp: Path, final: Path) -> bool:
    """Rename a finished temp directory to its final name; False if another process won the race.

    ``rename`` onto an existing non-empty directory fails on POSIX, so exactly one writer commits and
    the loser deletes its copy and uses the winner's (identical by construction: same key, same inputs).
    """
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if not final.exists():
            raise
        log.info("%s was committed by another process; discarding this copy", final)
        shutil.rmtree(tmp, ignore_errors=True)
        return False
