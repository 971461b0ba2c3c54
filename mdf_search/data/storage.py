"""Files of a study's storage, a local folder or an object store URI, through one pyarrow filesystem.

A study's storage (``--storage``: ``runs``, ``/shared/runs``, ``s3://bucket/runs``, ``gs://...``) holds
its Parquet results (``results.store``), and beside them the files this module reads and writes: the
recorded spec, design and provenance (``spec.yaml``, ``arms.json``, ``provenance.json``), the report's
folder and the published data artefacts (``data.artefacts``). Every one of them goes through the same
filesystem as the results (``results.store.filesystem``), so what works for one works for all of them.

Paths are ``root`` (a local path or a URI) plus a relative ``name`` with ``/`` separators. Writes are
atomic (``atomic.atomic_stream``): a reader never sees half a file under its final name. Nothing here
prints; a storage that cannot be reached raises ``StorageError`` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from mdf_search.atomic import atomic_file, atomic_stream

CHUNK = 1 << 22  # bytes per read of a stream (4 MiB)


class StorageError(OSError):
    """A file of the study's storage that cannot be read or written; the message names it."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(root: str, name: str) -> str:
    """``root/name`` (``name`` alone when ``root`` is empty); a URI keeps its ``scheme://`` (``pathlib``
    would fold it to ``scheme:/``)."""
    if not root:
        return name
    return f"{str(root).rstrip('/')}/{name.lstrip('/')}" if name else str(root)


def resolve(root: str) -> str:
    """A local root made absolute; a URI as given (without a trailing ``/``)."""
    return root.rstrip("/") if is_uri(root) else str(Path(root).expanduser().resolve())


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``root`` and the path inside it (``results.store``'s, shared)."""
    from mdf_search.results.store import filesystem as store_filesystem  # polars: only when called

    try:
        return store_filesystem(root)
    except (OSError, ValueError) as err:
        raise StorageError(f"{root}: cannot open the storage ({err})") from None


def _fs_path(root: str, name: str) -> tuple[pafs.FileSystem, str]:
    fs, base = filesystem(root)
    return fs, f"{base}/{name}" if name else base


def info(root: str, name: str = "") -> pafs.FileInfo:
    """pyarrow's ``FileInfo`` of ``root/name`` (type ``NotFound`` when absent)."""
    fs, path = _fs_path(root, name)
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise StorageError(f"{join(root, name)}: cannot be listed ({err})") from None


def is_file(root: str, name: str = "") -> bool:
    return info(root, name).type == pafs.FileType.File


def is_dir(root: str, name: str = "") -> bool:
    return info(root, name).type == pafs.FileType.Directory


def stamp(root: str, name: str) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, None when it is not one: a cheap change check."""
    found = info(root, name)
    if found.type != pafs.FileType.File:
        return None
    return (int(found.mtime_ns or 0), int(found.size or 0))


def read_bytes(root: str, name: str = "") -> bytes:
    """The content of ``root/name``; ``FileNotFoundError`` when it is absent, ``StorageError`` when it
    cannot be read."""
    fs, path = _fs_path(root, name)
    try:
        with fs.open_input_stream(path) as source:
            return bytes(source.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{join(root, name)}: no such file") from None
    except OSError as err:
        if info(root, name).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{join(root, name)}: no such file") from None
        raise StorageError(f"{join(root, name)}: cannot be read ({err})") from None


def read_text(root: str, name: str = "") -> str:
    return read_bytes(root, name).decode("utf-8")


def write_bytes(root: str, name: str, data: bytes) -> None:
    """Write ``root/name`` atomically (made with its folders when missing)."""
    if not is_uri(root):
        with atomic_file(Path(root).expanduser() / name) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = _fs_path(root, name)
    try:
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with atomic_stream(fs, path) as sink:
            sink.write(data)
    except OSError as err:
        raise StorageError(f"{join(root, name)}: cannot be written ({err})") from None


def write_text(root: str, name: str, text: str) -> None:
    write_bytes(root, name, text.encode("utf-8"))


def files(root: str, name: str = "") -> list[str]:
    """Every file under ``root/name`` (relative, ``/``-separated, sorted); files in flight (the hidden
    temporary names of ``atomic``) are left out. Empty when the folder is absent."""
    fs, base = _fs_path(root, name)
    try:
        found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise StorageError(f"{join(root, name)}: cannot be listed ({err})") from None
    out = []
    for entry in found:
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(base) :].lstrip("/")
        if not in_flight(rel.rsplit("/", 1)[-1]):
            out.append(rel)
    return sorted(out)


def in_flight(name: str) -> bool:
    """Whether a file name is one of ``atomic``'s temporaries (``.x.<hex>.tmp``, ``.x.tmp-<pid>-<hex>``)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


def delete(root: str, name: str) -> None:
    """Remove the file ``root/name`` (nothing when absent)."""
    fs, path = _fs_path(root, name)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        return
    except OSError as err:
        if info(root, name).type != pafs.FileType.NotFound:
            raise StorageError(f"{join(root, name)}: cannot be deleted ({err})") from None


def copy_stream(source: Any, sink: Any, digest: Any = None) -> int:
    """Copy a pyarrow or Python stream into another; update ``digest`` with what passes; bytes copied."""
    copied = 0
    while chunk := source.read(CHUNK):
        sink.write(chunk)
        if digest is not None:
            digest.update(chunk)
        copied += len(chunk)
    return copied


def upload_file(local: Path, root: str, name: str) -> None:
    """Copy a local file to ``root/name`` atomically."""
    fs, path = _fs_path(root, name)
    try:
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with open(local, "rb") as source, atomic_stream(fs, path) as sink:
            copy_stream(source, sink)
    except OSError as err:
        raise StorageError(f"{join(root, name)}: cannot be written ({err})") from None


def download_file(root: str, name: str, local: Path, check: Callable[[str, int], None] | None = None) -> None:
    """Copy ``root/name`` to the local file ``local`` (written in place: give a temporary name);
    ``check(sha256 hex, size)`` may refuse what arrived by raising."""
    fs, path = _fs_path(root, name)
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(path) as source, open(local, "wb") as sink:
            size = copy_stream(source, sink, digest)
    except FileNotFoundError:
        raise FileNotFoundError(f"{join(root, name)}: no such file") from None
    except OSError as err:
        raise StorageError(f"{join(root, name)}: cannot be read ({err})") from None
    if check is not None:
        check(digest.hexdigest(), size)


def upload_tree(local: Path, root: str, name: str, *, remove_others: bool = True) -> list[str]:
    """Copy every file under the local folder ``local`` to ``root/name`` (each file atomically); with
    ``remove_others``, files under ``root/name`` that ``local`` lacks are deleted afterwards, so the
    remote folder ends equal to the local one. Returns the files copied."""
    copied = []
    for path in sorted(_local_files(local)):
        rel = path.relative_to(local).as_posix()
        upload_file(path, root, join(name, rel))
        copied.append(rel)
    if remove_others:
        for rel in files(root, name):
            if rel not in copied:
                delete(root, join(name, rel))
    return copied


def download_tree(root: str, name: str, local: Path) -> list[str]:
    """Copy every file under ``root/name`` into the local folder ``local`` (made when missing)."""
    got = files(root, name)
    for rel in got:
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        download_file(root, join(name, rel), target)
    return got


@contextlib.contextmanager
def local_copy(root: str, name: str) -> Iterator[Path]:
    """A local path holding ``root/name``: the file itself for a local root; for a URI a temporary copy
    (same file name, removed afterwards), for readers that take a path. ``FileNotFoundError`` when
    absent."""
    if not is_uri(root):
        yield Path(root).expanduser() / name
        return
    folder = Path(tempfile.mkdtemp(prefix="mdf-search-"))
    try:
        local = folder / name.rsplit("/", 1)[-1]
        download_file(root, name, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _local_files(folder: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(folder):
        for file in names:
            yield Path(directory) / file


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` when both are on one filesystem (no second copy of the
    bytes), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
