"""Combining sources: :func:`prepare` reads every given source, checks them together (one label per
image and per case), and writes one manifest atomically. The readers live in :mod:`mdf_search.data.readers`
(image-folder layouts) and :mod:`mdf_search.data.tables` (table manifests).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdf_search.data.readers import Problems, ReadResult, read_fives, read_hrf
from mdf_search.data.schema import (
    DataError,
    LabelSpace,
    Skipped,
    manifest_table,
    write_manifest,
)
from mdf_search.data.tables import read_generic, read_stonerounds

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Combining sources
# ---------------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    path: Path
    rows: int
    label_space: LabelSpace
    skipped: list[Skipped]
    counts: dict[tuple[str, str], int]  # (source, label) → images
    text_coverage: dict[str, float]  # source → fraction of images with clinical text


def check_consistency(
    rows: list[dict[str, Any]], *, skip_bad: bool
) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """One label per image and per case.

    An image listed twice with the same label is a harmless duplicate (kept once); with two labels, or
    a case whose images disagree, nobody can tell which label is right, so all its rows are bad.
    """
    problems = Problems(skip_bad)
    by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_image[row["image_path"]].append(row)
    unique: list[dict[str, Any]] = []
    bad_images: set[str] = set()
    for image, group in by_image.items():
        labels = sorted({r["label"] for r in group})
        if len(labels) > 1:
            problems.add(image, f"image referenced {len(group)} times with different labels {labels}")
            bad_images.add(image)
        else:
            if len(group) > 1:
                log.warning("%s is listed %d times; keeping one", image, len(group))
            unique.append(group[0])
    by_case: dict[str, set[str]] = defaultdict(set)
    for row in unique:
        by_case[row["case_id"]].add(row["label"])
    bad_cases = {case: sorted(labels) for case, labels in by_case.items() if len(labels) > 1}
    for row in unique:
        if row["case_id"] in bad_cases:
            problems.add(
                row["image_path"],
                f"case {row['case_id']!r} has images with different labels {bad_cases[row['case_id']]}",
            )
    result = problems.finish([r for r in unique if r["case_id"] not in bad_cases])
    return result.rows, result.skipped


_PATH_KEYS = ("image_path", "vessel_mask_path", "fov_mask_path")


def check_out(out: Path, *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse, before reading anything, an ``out`` that cannot or must not be written."""
    if out.is_dir():
        raise DataError(
            f"{out}: is a directory; --out takes the manifest file, e.g. {out / 'manifest.parquet'}"
        )
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise DataError(f"{out}: {parent} is not a folder; choose another --out")
            break
    resolved = out.resolve()
    for source in inputs:
        if source.resolve() == resolved:
            raise DataError(f"{out}: is one of the inputs ({source}); choose another --out")
    if (out.exists() or out.is_symlink()) and not force:
        raise DataError(
            f"{out}: already exists; pass --force to replace it (force=True), or choose another --out"
        )


def prepare(
    out: str | Path,
    *,
    fives: str | Path | None = None,
    hrf: str | Path | None = None,
    stonerounds: str | Path | None = None,
    manifests: Sequence[str | Path] = (),
    skip_bad: bool = False,
    extra_diagnoses: Mapping[str, str] | None = None,
    force: bool = False,
) -> PrepareResult:
    """Read every given source, check them together, and write one manifest atomically.

    All sources are read before anything fails, so the error lists the problems of every source. An
    existing ``out`` is replaced (atomically) only with ``force``; ``out`` is never one of the inputs.
    """
    out = Path(out)
    check_out(out, force=force, inputs=[Path(p) for p in (stonerounds, *manifests) if p is not None])
    results: list[ReadResult] = []
    errors: list[str] = []
    hints: list[str] = []
    readers: list[tuple[Any, Any]] = [
        (fives, lambda p: read_fives(p, skip_bad=skip_bad)),
        (hrf, lambda p: read_hrf(p, skip_bad=skip_bad)),
        (stonerounds, lambda p: read_stonerounds(p, skip_bad=skip_bad, extra_diagnoses=extra_diagnoses)),
        *[(m, lambda p: read_generic(p, skip_bad=skip_bad)) for m in manifests],
    ]
    if all(src is None for src, _ in readers):
        raise DataError(
            "no data source given", hint="pass at least one of --fives, --hrf, --stonerounds, --manifest"
        )
    for src, reader in readers:
        if src is None:
            continue
        try:
            results.append(reader(src))
        except DataError as err:
            errors.extend(err.problems)
            hints.extend(h for h in [err.hint or ""] if h and h not in hints)
    if errors:
        raise DataError(errors, hint="\n".join(hints) or None)
    rows = [row for r in results for row in r.rows]
    rows, conflicts = check_consistency(rows, skip_bad=skip_bad)
    skipped = [s for r in results for s in r.skipped] + conflicts
    if not rows:
        raise DataError(f"{out}: no usable images left to write ({len(skipped)} skipped)")
    written_from = {Path(r[k]) for r in rows for k in _PATH_KEYS if r[k]}
    if out.resolve() in written_from:
        raise DataError(f"{out}: is one of the input images or masks; choose another --out")
    table = manifest_table(rows)
    path = write_manifest(table, out)
    space = LabelSpace.from_table(table)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with_text: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        counts[(row["source"], row["label"])] += 1
        with_text[row["source"]][0] += bool(row["clinical_text"])
        with_text[row["source"]][1] += 1
    log.info("wrote %s: %d images, labels %s, %d skipped", path, len(rows), space.diseases, len(skipped))
    return PrepareResult(
        path, len(rows), space, skipped, dict(counts), {s: n / total for s, (n, total) in with_text.items()}
    )
