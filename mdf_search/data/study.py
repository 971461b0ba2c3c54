"""Writing a synthetic study into a user's folder (``mdf-search data synth``) without mixing it with one
already there: drawn beside the folder, then swapped in entry by entry."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mdf_search.atomic import temp_sibling
from mdf_search.data.schema import DataError, read_manifest, write_manifest
from mdf_search.data.synthetic import build_manifest, generate, rebase_paths

STUDY_ENTRIES = ("FIVES", "HRF", "StoneRounds", "manifest.parquet")  # what a study folder holds


def check_study_out(out: Path, *, force: bool) -> None:
    """Refuse an ``out`` that is a file, or that already holds a study unless ``force``."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; --out takes the folder to write FIVES/, HRF/, StoneRounds/ into")
    held = [name for name in STUDY_ENTRIES if (out / name).exists() or (out / name).is_symlink()]
    if held and not force:
        raise DataError(
            f"{out}: already holds a study ({', '.join(held)}); pass --force to replace it, "
            "or choose another --out"
        )


def write_study(
    out: str | Path, *, force: bool = False, manifest: bool = True, **options: Any
) -> Path | None:
    """:func:`generate` (``options``) into a temp folder beside ``out``, then swap each study entry in.

    Drawing over an old study would mix its pictures with the new ones (other labels under the same
    names); only the study's own entries (:data:`STUDY_ENTRIES`) are replaced, and each in one rename,
    so other files under ``out`` stay. Returns the manifest's path when ``manifest``.
    """
    out = Path(out)
    check_study_out(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    old: list[Path] = []
    try:
        generate(tmp, **options)
        if manifest:
            build_manifest(tmp, tmp / "manifest.parquet")
            table, _ = read_manifest(tmp / "manifest.parquet")
            write_manifest(rebase_paths(table, tmp, out), tmp / "manifest.parquet")
        out.mkdir(exist_ok=True)
        for name in STUDY_ENTRIES:
            if (out / name).exists() or (out / name).is_symlink():
                old.append(temp_sibling(out / name, "old"))
                os.replace(out / name, old[-1])
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in old:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return out / "manifest.parquet" if manifest else None
