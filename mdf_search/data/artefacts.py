"""A study's data artefacts (split, preprocessed cache, tokenizer) on every node, through its storage.

The sweep's process builds them once, under its own node's cache root (``$MDF_SEARCH_CACHE``, by default
``~/.cache/mdf-search``, a node-local folder), each under a content-addressed name: the split file by
the hash of its rows, the cache by the manifest's content hash, image size and preprocessing version,
the tokenizer by the hash of its corpus. A Train worker on another node has none of those files. So
the sweep *publishes* each artefact to the study's storage, which every node reaches already (Ray
Train writes the trials' checkpoints there):

    <experiment>/artefacts/<kind>/<name>/   the artefact's files (kind: splits, cache, tokenizers)
        artefact.json                       every file's SHA-256 and size, and their digest; written last

and a worker whose own cache root lacks ``<kind>/<name>`` *fetches* it: every file is downloaded into a
temporary folder (from a local or mounted storage: linked where it shares the file system) and checked
against artefact.json, then the folder is renamed into place (one fetch per node: the node's ranks wait
on a lock). A worker whose cache root has the name already (a
node that built it, a shared cache) uses it as it is.

Why publish rather than rebuild on each node: a node rebuilding would need the dataset's images (a
real dataset lives on the head's disk or a bucket of its own) and would spend its CPUs decoding them
again; a download needs only the storage the study writes anyway, and the hash makes sure each node
trains on the bytes the head built. The storage is a local folder (hard links when it shares the
cache's filesystem: no second copy), or ``s3://``/``gs://`` through pyarrow, like the results.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdf_search.atomic import commit_dir, temp_sibling
from mdf_search.data import storage
from mdf_search.data.schema import DataError

ARTEFACTS = "artefacts"  # <experiment>/artefacts/<kind>/<name>/
MANIFEST = "artefact.json"
FORMAT = 1
KINDS = ("splits", "cache", "tokenizers")  # the folders of a cache root that hold each kind
DERIVED = ("images.sha256",)  # files a reader adds to a committed artefact later (data/cache.py): not content
# File systems every node of a cluster mounts alike (/proc/mounts' type column).
SHARED_FS = (
    "nfs", "nfs4", "lustre", "ceph", "cephfs", "glusterfs", "gpfs", "beegfs", "fuse.gcsfuse", "fuse.s3fs",
    "fuse.juicefs", "fuse.sshfs", "fuse.mountpoint-s3", "wekafs", "virtiofs",
)  # fmt: skip


def prefix(kind: str, name: str) -> str:
    """Where artefact ``name`` of ``kind`` lives under an experiment root."""
    if kind not in KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{ARTEFACTS}/{kind}/{name}"


def _content(path: Path) -> dict[str, Path]:
    """An artefact's files by relative name: a file artefact is its own single file."""
    if path.is_file():
        return {path.name: path}
    if not path.is_dir():
        raise DataError(f"{path}: no such data artefact; prepare the trial's data again")
    out = {}
    for directory, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            rel = (Path(directory) / name).relative_to(path).as_posix()
            if not name.startswith(".") and rel not in DERIVED:
                out[rel] = Path(directory) / name
    return dict(sorted(out.items()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(storage.CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest(entries: dict[str, dict[str, Any]]) -> str:
    """One hash of an artefact's content: its files' names, SHA-256 and sizes, in name order."""
    text = "".join(f"{rel}\0{e['sha256']}\0{e['size']}\n" for rel, e in sorted(entries.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def describe(path: Path, kind: str) -> dict[str, Any]:
    """The artefact.json of the local artefact at ``path``."""
    entries = {rel: {"sha256": sha256_file(f), "size": f.stat().st_size} for rel, f in _content(path).items()}
    return {
        "format": FORMAT,
        "kind": kind,
        "name": path.name,
        "single_file": path.is_file(),
        "files": entries,
        "digest": digest(entries),
    }


def published(root: str, kind: str, name: str) -> dict[str, Any] | None:
    """The artefact.json of a published artefact, None when it is not (completely) published."""
    try:
        record = json.loads(storage.read_text(root, f"{prefix(kind, name)}/{MANIFEST}"))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise DataError(f"{storage.join(root, prefix(kind, name))}/{MANIFEST}: not JSON ({err})") from None
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT
        or not isinstance(record.get("files"), dict)
    ):
        raise DataError(
            f"{storage.join(root, prefix(kind, name))}/{MANIFEST}: not an artefact record of format {FORMAT}; "
            "remove the folder and run the sweep again (it publishes the artefact again)"
        )
    return record


def publish(path: str | Path, kind: str, root: str) -> str:
    """Publish the local artefact at ``path`` to ``root`` (an experiment root: a local path or a URI)
    unless it is published already (same name, same content: content-addressed); its digest."""
    path = Path(path)
    name = path.name
    found = published(root, kind, name)
    if found is not None:
        return str(found["digest"])
    record = describe(path, kind)
    where = prefix(kind, name)
    if storage.is_uri(root):
        for rel, file in _content(path).items():
            storage.upload_file(file, root, f"{where}/{rel}")
    else:  # a local (or mounted) folder: hard links where it shares the cache's file system
        final = Path(root).expanduser() / where
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(final)
        try:
            for rel, file in _content(path).items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                storage.link_or_copy(file, tmp / rel)
            (tmp / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")
            commit_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(record["digest"])
    storage.write_text(root, f"{where}/{MANIFEST}", json.dumps(record, indent=1) + "\n")  # last: complete
    return str(record["digest"])


@contextlib.contextmanager
def _node_lock(target: Path) -> Iterator[None]:
    """One fetch of ``target`` per node at a time (the node's other ranks wait, then find it there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(root: str, kind: str, name: str, folder: str | Path) -> Path:
    """The artefact ``name`` of ``kind`` in the local ``folder`` (``<cache root>/<kind>``): as it is when
    there, else downloaded from ``root``'s published copy and checked against its SHA-256s first."""
    target = Path(folder).expanduser() / name
    if target.exists():
        return target
    source = storage.join(root, prefix(kind, name))
    try:
        with _node_lock(target):
            if target.exists():  # another rank of this node fetched it while this one waited
                return target
            record = published(root, kind, name)
            if record is None:
                raise DataError(
                    f"{source}: the study's {kind} artefact {name} is not published there, and this node's "
                    f"cache {target.parent} lacks it; the sweep publishes it before its trials start: "
                    "run the study with `mdf-search sweep` (or resume it), with a --storage every node reaches"
                )
            _download(root, kind, name, record, target)
    except OSError as err:
        raise DataError(
            f"{target}: cannot fetch the {kind} artefact from {source} ({err}); give this node a writable "
            "cache root ($MDF_SEARCH_CACHE or data.cache_dir) and a --storage it can read"
        ) from None
    return target


def _download(root: str, kind: str, name: str, record: dict[str, Any], target: Path) -> None:
    source = storage.join(root, prefix(kind, name))
    entries: dict[str, dict[str, Any]] = record["files"]
    if digest(entries) != record.get("digest"):
        raise DataError(f"{source}/{MANIFEST}: its digest does not match its files; remove the folder")
    tmp = temp_sibling(target)
    tmp.mkdir()
    try:
        for rel, entry in entries.items():
            local = tmp / rel
            if not local.resolve().is_relative_to(tmp.resolve()):
                raise DataError(f"{source}/{MANIFEST}: names a file outside the artefact ({rel!r})")
            local.parent.mkdir(parents=True, exist_ok=True)

            def check(sha: str, size: int, rel: str = rel, entry: dict[str, Any] = entry) -> None:
                if sha != entry["sha256"] or size != entry["size"]:
                    raise DataError(
                        f"{source}/{rel}: arrived with SHA-256 {sha[:16]}… ({size} bytes), but {MANIFEST} "
                        f"records {str(entry['sha256'])[:16]}… ({entry['size']} bytes); the published copy "
                        "is damaged: remove the folder and run the sweep again"
                    )

            published_file = Path(root).expanduser() / prefix(kind, name) / rel
            if storage.is_uri(root) or not published_file.is_file():
                storage.download_file(root, f"{prefix(kind, name)}/{rel}", local, check)
            else:  # a local (or mounted) folder: checked, then linked where it shares this file system
                check(sha256_file(published_file), published_file.stat().st_size)
                storage.link_or_copy(published_file, local)
        if record.get("single_file"):
            os.replace(tmp / name, target)
        else:
            commit_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mount_type(path: str | Path) -> str | None:
    """The file system type of the mount holding ``path`` (its nearest existing parent), from
    /proc/mounts; None where that cannot be read (not Linux)."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    probe = probe.resolve()
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (probe == Path(point) or Path(point) in probe.parents) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def is_shared(path: str | Path) -> bool:
    """Whether ``path`` is on a file system other nodes mount too (NFS, EFS, Filestore, Lustre, ...)."""
    kind = mount_type(path)
    return kind is not None and (kind in SHARED_FS or kind.startswith("nfs"))


def node_local_note(cache_root: str, storage_root: str | None) -> str | None:
    """A warning for a multi-node cluster, None when the data artefacts will reach every node: the
    cache root (``cache_root``) is node-local, and the storage the workers fetch the artefacts from
    (``storage_root``; None: the default ``runs``) is a local folder that is not on a shared file
    system either (or, seen from a client, cannot be told to be)."""
    if is_shared(cache_root):
        return None
    if storage_root is not None and storage.is_uri(storage_root):
        return None
    where = storage_root or "runs (the default)"
    if storage_root is not None and Path(storage_root).is_absolute() and is_shared(storage_root):
        return None
    return (
        f"the data cache {cache_root} is node-local: Train workers on other nodes fetch the study's split, "
        f"cache and tokenizer from --storage {where} (<experiment>/{ARTEFACTS}/), so --storage must be a "
        "folder every node mounts (EFS, Filestore, NFS) or an s3:// / gs:// URI; a cache root on such a "
        "mount (data.cache_dir or $MDF_SEARCH_CACHE) works too"
    )
