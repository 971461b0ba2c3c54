"""Where a report goes: ``--out DIR`` is a new folder, an empty one, or an earlier report's, and a
report writes only its own files there.

A report is built in a hidden sibling of DIR (same filesystem) and swapped in when it is complete, so
DIR never holds half a report. Its folder carries a marker, :data:`MARKER`, listing every file it wrote
with its SHA-256. Into an existing folder a report goes only when that marker says an earlier report
made it:

- a non-empty folder without the marker (a user's folder, the results, a report from before the
  marker) is refused, naming a few of its files, with the fix (another ``--out``, or remove it);
- in an earlier report's folder, a file the user changed, or added inside ``figures/``, ``tables/`` or
  ``deepcave/`` (folders the report owns), is refused the same way: replacing it would lose it;
- anything else the user added there (``README.md``, ``notes/``) is copied into the new report before
  the swap, so it is kept, never deleted;
- DIR holding the experiment folder is refused, and so is DIR inside it, except the experiment's own
  report folder :data:`OWN_FOLDER` (``<experiment>/report``, where ``sweep`` writes by default). Nothing
  that reads the experiment reads that folder: the results are the Parquet parts directly under
  ``trials/``, ``epochs/`` and ``predictions/`` (``results.store`` lists those folders, not recursively),
  Tune's state is the ``experiment_state-*.json`` at the top, and a report writes no Parquet file.

An ``--out`` URI (``s3://bucket/runs/name/report``, the default of a sweep on object storage) follows
the same rules through the storage's filesystem (``data.storage``): :func:`check_remote_out` refuses
what ``check_out`` would, listing only, without downloading; :func:`fetch_remote` copies an earlier
report there into a local folder, the report is built there as above, and :func:`publish_remote`
uploads the result and deletes what the new report no longer has (each file is replaced atomically;
the folder as a whole is not: an object store has no rename of folders).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mdf_search.atomic import commit_dir, temp_sibling
from mdf_search.data import storage
from mdf_search.report.experiment import ExperimentError

MARKER = ".mdf-search-report.json"
OWN_FILES = ("report.md", "report.html", MARKER)
OWN_DIRS = ("figures", "tables", "deepcave")
FORMAT = 1
OWN_FOLDER = "report"  # <experiment>/report: the one folder inside the experiment a report may go to
SHOWN = 3  # paths named in an error
FIX = "pass another --out (a new or empty folder), or remove {out} first"


class ReportError(ExperimentError):
    """The report cannot go where it was asked to, or it was written with sections that failed.

    ``code`` is the exit status the command ends with: 2 for a refused ``--out`` (a bad input, nothing
    written), 1 when the report itself failed.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Target:
    """A checked ``--out``: where the report goes, and what of an earlier one is replaced or kept."""

    path: Path
    existing: dict[str, str] = field(default_factory=dict)  # what is there now (``scan``), to replace
    kept: list[str] = field(default_factory=list)  # the user's paths in an earlier report, carried over
    created: list[Path] = field(default_factory=list)  # parent folders made for it (removed on failure)


def scan(root: Path) -> dict[str, str]:
    """Every path under ``root`` (relative, ``/``-separated) → ``dir``, ``link``, ``other`` or the file's
    SHA-256; symbolic links are listed, never followed."""
    out: dict[str, str] = {}

    def walk(folder: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = prefix + entry.name
            if entry.is_symlink():
                out[rel] = "link"
            elif entry.is_dir():
                out[rel] = "dir"
                walk(Path(entry.path), rel + "/")
            elif entry.is_file():
                out[rel] = _sha256(Path(entry.path))
            else:
                out[rel] = "other"

    walk(root, "")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _manifest(path: Path) -> dict[str, str] | None:
    """The files an earlier report wrote (its marker), or None when the marker is not a report's."""
    marker = path / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return None
    return dict(files)


def _owned(rel: str) -> bool:
    """Whether ``rel`` is a name the report writes (so a user's file there would be replaced)."""
    return rel in OWN_FILES or rel.split("/", 1)[0] in OWN_DIRS


def check_out(out: str, experiment_root: str) -> Target:
    """Check ``--out`` before anything is written; raise :class:`ReportError` (the folder, the fix)."""
    if not out.strip():
        raise ReportError("--out is empty: pass the folder the report goes to, e.g. --out reports/<name>")
    if "://" in out:
        raise ReportError(
            f"--out {out}: a report is written to a local folder, not a URI; pass e.g. --out "
            "reports/<name> and copy the folder up afterwards"
        )
    path = Path(out).expanduser()
    where = path.resolve()
    if "://" not in experiment_root:
        root = Path(experiment_root).resolve()
        if (where == root or root in where.parents) and where != root / OWN_FOLDER:
            raise ReportError(
                f"--out {out}: is inside the experiment folder {experiment_root}, which holds the results; "
                f"a report goes to its own folder there or beside it: pass --out "
                f"{experiment_root.rstrip('/')}/{OWN_FOLDER}, or e.g. --out reports/{root.name}"
            )
        if where in root.parents:
            raise ReportError(
                f"--out {out}: holds the experiment folder {experiment_root}; a report replaces its "
                f"folder, so it never goes around the results: pass e.g. --out reports/{root.name}"
            )
    if path.is_symlink():
        raise ReportError(
            f"--out {out}: is a symbolic link; pass the folder itself (a report replaces its folder, "
            "and would replace the link)"
        )
    if path.exists() and not path.is_dir():
        raise ReportError(f"--out {out}: is a file, not a folder; {FIX.format(out=out)}")
    created = _missing_parents(path, out)
    if not path.exists():
        return Target(path, created=created)
    existing = scan(path)
    if not existing:
        return Target(path)
    manifest = _manifest(path)
    if manifest is None:
        looks = "report.md" in existing and MARKER not in existing
        why = (
            "holds a report written before reports carried their marker " + MARKER
            if looks
            else "already holds files no report wrote"
        )
        foreign = [rel for rel in existing if "/" not in rel]
        raise ReportError(
            f"--out {out}: {why} ({_some(foreign)}); a report replaces its folder, so it writes only "
            f"into a new or empty folder or an earlier report's; {FIX.format(out=out)}"
        )
    changed, refused, kept = [], [], []
    for rel, kind in existing.items():
        if rel == MARKER or (kind == "dir" and rel in OWN_DIRS):
            continue
        if rel in manifest:
            if kind != manifest[rel]:
                changed.append(rel)
        elif _owned(rel) or kind == "other":
            refused.append(rel)
        else:
            kept.append(rel)
    if changed or refused:
        parts = [f"changed since the report wrote them: {_some(changed)}"] if changed else []
        parts += [f"added where the report writes its own files: {_some(refused)}"] if refused else []
        raise ReportError(
            f"--out {out}: holds an earlier report with files the report did not write ({'; '.join(parts)}); "
            f"writing the report again would replace them: move them out of {out}, or pass another --out"
        )
    return Target(path, existing=existing, kept=kept)


def _missing_parents(path: Path, out: str) -> list[Path]:
    """The parent folders that do not exist yet (outermost first); refuse when one of them is a file."""
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise ReportError(
            f"--out {out}: {parent} is a file, so no folder can be made under it; {FIX.format(out=out)}"
        )
    return missing[::-1]


def staging(target: Target) -> Path:
    """Make the hidden sibling the report is built in (and any missing parent of ``--out``)."""
    try:
        for folder in target.created:
            folder.mkdir(exist_ok=True)
        tmp = temp_sibling(target.path)
        tmp.mkdir()
    except OSError as err:
        discard(None, target)
        raise ReportError(
            f"--out {target.path}: cannot write beside it ({err.strerror or err}); pass an --out in a "
            "folder you can write"
        ) from None
    return tmp


def discard(tmp: Path | None, target: Target) -> None:
    """Remove a report that was not published, and the parent folders made for it."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(target.created):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when still empty


def publish(tmp: Path, target: Target) -> None:
    """Write the marker, carry over the user's files of an earlier report, and swap ``tmp`` in."""
    files = {rel: kind for rel, kind in scan(tmp).items() if kind not in ("dir", "link", "other")}
    marker = {"format": FORMAT, "written_by": "mdf-search report", "files": files}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for rel in target.kept:  # sorted: a folder comes before what it holds
        source, copy = target.path / rel, tmp / rel
        if source.is_symlink():
            os.symlink(os.readlink(source), copy)
        elif source.is_dir():
            copy.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copy2(source, copy)
    if not target.existing:
        try:
            committed = commit_dir(tmp, target.path)  # a new folder, or onto an empty one
        except OSError as err:
            raise ReportError(
                f"--out {target.path}: was changed while the report was written ({err.strerror or err}); "
                "run the report again"
            ) from None
        if not committed:
            raise ReportError(
                f"--out {target.path}: another report was written there at the same time; run it again"
            )
        return
    aside = temp_sibling(target.path, "old")
    os.rename(target.path, aside)
    if scan(aside) != target.existing:  # the user changed it while the report was built
        os.rename(aside, target.path)
        raise ReportError(
            f"--out {target.path}: was changed while the report was written; nothing was replaced; "
            "run the report again"
        )
    try:
        os.rename(tmp, target.path)
    except OSError:
        os.rename(aside, target.path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def check_remote_out(out: str, experiment_root: str) -> list[str]:
    """Check an ``--out`` URI before anything is written, as :func:`check_out` checks a folder: not the
    experiment, not inside it (except its own :data:`OWN_FOLDER`), not around it, and empty or an
    earlier report's (its marker). Returns the files there now. Raises :class:`ReportError`."""
    out = out.rstrip("/")
    root = experiment_root.rstrip("/")
    if out == root or (out.startswith(root + "/") and out != f"{root}/{OWN_FOLDER}"):
        raise ReportError(
            f"--out {out}: is inside the experiment folder {root}, which holds the results; a report goes to "
            f"its own folder there or beside it: pass --out {root}/{OWN_FOLDER}"
        )
    if root.startswith(out + "/"):
        raise ReportError(
            f"--out {out}: holds the experiment folder {root}; a report replaces its folder, so it never "
            f"goes around the results: pass e.g. --out {root}/{OWN_FOLDER}"
        )
    if storage.is_file(out):
        raise ReportError(f"--out {out}: is a file, not a folder; {FIX.format(out=out)}")
    present = storage.files(out)
    if present and MARKER not in present:
        raise ReportError(
            f"--out {out}: already holds files no report wrote ({_some(present)}); a report replaces its "
            f"folder, so it writes only into a new or empty folder or an earlier report's; {FIX.format(out=out)}"
        )
    return present


def fetch_remote(out: str, local: Path) -> None:
    """Copy an earlier report at the URI ``out`` (checked by :func:`check_remote_out`) into the local
    folder ``local``, so the report is built over it as over a local one (the user's files kept)."""
    if storage.files(out):
        storage.download_tree(out, "", local)


def publish_remote(local: Path, out: str) -> None:
    """Upload the report built in ``local`` to the URI ``out``; files it no longer has are deleted
    there (the earlier report's; the user's files were carried over into ``local``)."""
    try:
        storage.upload_tree(local, out, "")
    except OSError as err:
        raise ReportError(
            f"--out {out}: uploading the report failed ({err}); run the report again", code=1
        ) from None
