"""Readers of the image-folder layouts (FIVES, HRF) and the pieces every source reader shares.

Each reader collects every problem it finds (a bad label letter, an unreadable image, a missing column)
before failing, so one run lists everything to fix. With ``skip_bad=True`` the same problems become
:class:`~mdf_search.data.schema.Skipped` entries instead and the rest of the data is kept.

Layouts (see docs/stack-facts.md):
- FIVES: ``train|test/Original/{n}_{A|D|G|N}.png``, vessel masks in ``train|test/Ground truth/`` or the
  misspelt ``Groud truth``; stray ``Thumbs.db`` / ``Quality Assessment.xlsx`` are ignored.
- HRF: ``images/NN_{h|g|dr}.jpg`` (``.JPG`` occurs), ``manual1/NN_x.tif``, ``mask/NN_x_mask.tif``.

Table sources (StoneRounds, generic manifests) are in :mod:`mdf_search.data.tables`; :func:`prepare` in
:mod:`mdf_search.data.sources` combines them all.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mdf_search.data.schema import (
    DISEASE_TYPES,
    DataError,
    Skipped,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
FIVES_LETTERS = {"A": "amd", "D": "dr", "G": "glaucoma", "N": "normal"}
FIVES_MASK_DIRS = ("Ground truth", "Groud truth")  # the second spelling is in one FIVES release
HRF_CODES = {"h": "normal", "g": "glaucoma", "dr": "dr"}
SKIP_HINT = "fix the files, or pass --skip-bad (skip_bad=True) to leave them out and list them"


@dataclass
class ReadResult:
    """Manifest rows from one source plus what was skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class Problems:
    """Collects problems; raises them all at once unless ``skip_bad``."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.items: list[Skipped] = []

    def add(self, path: str | Path, reason: str) -> None:
        self.items.append(Skipped(str(path), reason))

    def finish(self, rows: list[dict[str, Any]]) -> ReadResult:
        if self.items and not self.skip_bad:
            raise DataError([f"{s.path}: {s.reason}" for s in self.items], hint=SKIP_HINT)
        for s in self.items:
            log.warning("skipped %s: %s", s.path, s.reason)
        return ReadResult(rows, list(self.items))


def probe_image(path: Path) -> tuple[int, int]:
    """Width and height from the header, after PIL's structural check (chunk CRCs for PNG).

    Raises DataError naming the file. A full decode happens only when the cache is built.
    """
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable or corrupt image ({type(err).__name__}: {err})") from None
    return int(size[0]), int(size[1])


def make_row(image: Path, source: str, case_id: str, label: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "image_path": str(image.resolve()),
        "source": source,
        "case_id": case_id,
        "eye": None,
        "label": label,
        "disease_type": DISEASE_TYPES.get(label),
        "clinical_text": "",
        "gene": None,
        "vessel_mask_path": "",
        "fov_mask_path": "",
        "width": 0,
        "height": 0,
        "authors_split": None,
    }
    row.update(extra)
    return row


def add_probed(row: dict[str, Any], rows: list[dict[str, Any]], problems: Problems) -> None:
    try:
        row["width"], row["height"] = probe_image(Path(row["image_path"]))
    except DataError as err:
        problems.add(row["image_path"], str(err).split(": ", 1)[-1])
        return
    rows.append(row)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} directory not found")
    return path


def images_in(folder: Path) -> list[Path]:
    """Image files in a folder, sorted; stray files (Thumbs.db, .xlsx, .DS_Store) are ignored."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
        elif p.is_file():
            log.debug("ignoring non-image file %s", p)
    return found


def by_lower_name(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir()} if folder.is_dir() else {}


# ---------------------------------------------------------------------------------------------------
# FIVES
# ---------------------------------------------------------------------------------------------------
def _fives_root(root: Path) -> Path:
    """Accept the dataset folder itself or a folder with exactly one subfolder holding train/ and test/."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return root
    nested = [
        p for p in sorted(root.iterdir()) if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())
    ]
    if len(nested) == 1:
        return nested[0]
    raise DataError(
        f"{root}: no FIVES train/ or test/ folder found (expected train|test/Original/{{n}}_{{A|D|G|N}}.png)"
    )


def read_fives(root: str | Path, *, skip_bad: bool = False) -> ReadResult:
    """FIVES: every image is its own case (``fives/{split}/{n}``); the authors' split is kept."""
    root = _fives_root(require_dir(Path(root), "FIVES"))
    problems = Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        originals = require_dir(root / split / "Original", f"FIVES {split}/Original")
        mask_dir = next((root / split / d for d in FIVES_MASK_DIRS if (root / split / d).is_dir()), None)
        masks = by_lower_name(mask_dir) if mask_dir else {}
        for image in images_in(originals):
            match = re.fullmatch(r"(\d+)_([A-Za-z])", image.stem)
            if not match:
                problems.add(image, "file name is not {n}_{A|D|G|N}")
                continue
            number, letter = match.groups()
            label = FIVES_LETTERS.get(letter.upper())
            if label is None:
                problems.add(image, f"label letter {letter!r} is not one of {sorted(FIVES_LETTERS)}")
                continue
            mask = masks.get(image.name.lower())
            row = make_row(
                image,
                "fives",
                f"fives/{split}/{int(number)}",
                label,
                authors_split=split,
                vessel_mask_path=str(mask.resolve()) if mask else "",
            )
            add_probed(row, rows, problems)
    if not rows and not problems.items:
        raise DataError(f"{root}: no FIVES images found under train|test/Original")
    return problems.finish(rows)


# ---------------------------------------------------------------------------------------------------
# HRF
# ---------------------------------------------------------------------------------------------------
def read_hrf(root: str | Path, *, skip_bad: bool = False) -> ReadResult:
    """HRF: ``images/NN_{h|g|dr}.jpg`` with vessel and FOV masks.

    The case id is ``hrf/NN_x`` (one per image): HRF numbers each diagnostic group separately, so
    ``01_h`` and ``01_dr`` are different people; grouping by NN alone would merge three diagnoses.
    """
    root = require_dir(Path(root), "HRF")
    images_dir = require_dir(root / "images", "HRF images/")
    vessels = by_lower_name(root / "manual1")
    fovs = by_lower_name(root / "mask")
    problems = Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for image in images_in(images_dir):
        match = re.fullmatch(r"(\d+)_([A-Za-z]+)", image.stem)
        code = match.group(2).lower() if match else ""
        if not match or code not in HRF_CODES:
            problems.add(image, f"file name is not NN_{{{'|'.join(HRF_CODES)}}}.jpg")
            continue
        stem = f"{match.group(1)}_{code}"
        vessel = next(
            (vessels[n] for n in (f"{stem}.tif", f"{stem}.tiff", f"{stem}.png") if n in vessels), None
        )
        fov = next(
            (fovs[n] for n in (f"{stem}_mask.tif", f"{stem}_mask.tiff", f"{stem}_mask.png") if n in fovs),
            None,
        )
        row = make_row(
            image,
            "hrf",
            f"hrf/{stem}",
            HRF_CODES[code],
            vessel_mask_path=str(vessel.resolve()) if vessel else "",
            fov_mask_path=str(fov.resolve()) if fov else "",
        )
        add_probed(row, rows, problems)
    if not rows and not problems.items:
        raise DataError(f"{images_dir}: no HRF images found (expected NN_h.jpg, NN_g.jpg, NN_dr.JPG)")
    return problems.finish(rows)
