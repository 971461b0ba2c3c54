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

import errno
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
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
# The largest image side accepted, checked from the header at `prepare` (and again by the cache). Every
# real fundus source is well below it (FIVES 2048², HRF 3504x2336, DSLR-based cameras about 5200x3500);
# the cache decodes a whole image in memory (3 bytes a pixel, per worker), and Pillow itself refuses
# pictures above about 179 Mpx as decompression bombs (13400² would already be one).
MAX_IMAGE_SIDE = 8192
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


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


def path_problem(path: Path, kind: str = "file") -> str | None:
    """Why ``path`` cannot be read as a regular ``kind`` ("file" or "folder"), or None when it can.

    Tells apart what ``is_file()`` folds into one False: missing, a broken symbolic link, a symbolic
    link loop, the other kind, a FIFO or device (which would block a reader), no read permission.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself); remove or repoint it"
        if os.path.islink(path):
            return (
                f"broken symbolic link to {os.readlink(path)!r} (the target is missing); remove or repoint it"
            )
        if err.errno == errno.EACCES:
            return f"permission denied; make it readable (chmod a+r {path.parent})"
        return f"{kind} not found" if err.errno == errno.ENOENT else f"cannot read it ({err.strerror})"
    want_dir = kind == "folder"
    if stat.S_ISDIR(info.st_mode) != want_dir:
        return "is a directory, not an image file" if not want_dir else "is a file, not a folder"
    if not want_dir and not stat.S_ISREG(info.st_mode):
        return "not a regular file (a FIFO, socket or device); point at the image file itself"
    if not os.access(path, os.R_OK | (os.X_OK if want_dir else 0)):
        return f"permission denied; make it readable (chmod a+r{'x' if want_dir else ''} {path})"
    if not want_dir and info.st_size == 0:
        return "empty file (0 bytes); copy the image again"
    return None


def _not_an_image(path: Path) -> str:
    """What a file that Pillow cannot identify is, when it is something common."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    text = head.lstrip().lower()
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the image; fetch the images with `git lfs pull`"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "not an image but an HTML/XML page (a failed download?); download the file again"
    return "not an image, or a corrupt one (Pillow cannot identify its format); copy the picture again"


def check_side(path: Path | str, width: int, height: int) -> None:
    if max(width, height) > MAX_IMAGE_SIDE:
        raise DataError(
            f"{path}: image is {width}x{height} px; images must be at most {MAX_IMAGE_SIDE} px a side "
            "(downscale it, e.g. to 4096 px)"
        )


def open_image(path: Path) -> Image.Image:
    """``Image.open`` after the file checks, with Pillow's decompression-bomb limit as a DataError; the
    caller closes it. Only the header is read; sides above :data:`MAX_IMAGE_SIDE` are refused."""
    problem = path_problem(path)
    if problem:
        raise DataError(f"{path}: {problem if problem != 'file not found' else 'image file not found'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the side check below is lower
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on odd headers (corrupt EXIF)
            im = Image.open(path)
    except Image.DecompressionBombError as err:
        pixels = _BOMB_PIXELS.search(str(err))
        raise DataError(
            f"{path}: header claims {pixels.group(1) if pixels else 'too many'} pixels, beyond Pillow's "
            f"decompression bomb limit; images must be at most {MAX_IMAGE_SIDE} px a side"
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: {_not_an_image(path)}") from None
    except OSError as err:
        raise DataError(f"{path}: unreadable image ({err.strerror or err})") from None
    try:
        check_side(path, *im.size)
    except DataError:
        im.close()
        raise
    return im


def probe_image(path: Path) -> tuple[int, int]:
    """Width and height from the header, after PIL's structural check (chunk CRCs for PNG, a 1/8-scale
    decode for JPEG, which reads the whole entropy-coded stream and so finds a truncated file).

    Raises DataError naming the file. A full decode happens only when the cache is built.
    """
    im = open_image(path)
    try:
        with im:
            size = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
            else:
                im.verify()
    except (OSError, SyntaxError, ValueError, struct_error) as err:
        detail = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise DataError(
            f"{path}: unreadable or {detail} image ({type(err).__name__}: {err}); copy the file again"
        ) from None
    return int(size[0]), int(size[1])


def probe_mask(mask: Path, image: Path, size: tuple[int, int]) -> str | None:
    """Why a vessel mask cannot serve its image (unreadable, or another size), or None."""
    try:
        width, height = probe_image(mask)
    except DataError as err:
        return f"vessel mask {err}"
    if (width, height) != size:
        return f"vessel mask {mask} is {width}x{height} px but its image is {size[0]}x{size[1]} px"
    return None


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


def add_probed(row: dict[str, Any], rows: list[dict[str, Any]], problems: Problems, where: str = "") -> None:
    """Read the row's image (and vessel mask) headers; keep the row, or list why not. ``where`` prefixes
    the reason (``"row 3 of g.csv: "``)."""
    image = Path(row["image_path"])
    try:
        row["width"], row["height"] = probe_image(image)
    except DataError as err:
        problems.add(image, where + str(err).split(": ", 1)[-1])
        return
    if row["vessel_mask_path"]:
        problem = probe_mask(Path(row["vessel_mask_path"]), image, (row["width"], row["height"]))
        if problem:
            problems.add(image, where + problem)
            return
    rows.append(row)


def require_dir(path: Path, what: str, option: str = "") -> Path:
    problem = path_problem(path, "folder")
    if problem == "folder not found":
        raise DataError(f"{path}: {what} directory not found")
    if problem:
        raise DataError(f"{path}: {problem}" + (f"; {option} takes the {what} folder" if option else ""))
    return path


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except PermissionError:
        raise DataError(f"{folder}: permission denied; make it readable (chmod a+rx {folder})") from None


def images_in(folder: Path, problems: Problems) -> list[Path]:
    """Image files in a folder, sorted; stray files (Thumbs.db, .xlsx, .DS_Store) are ignored.

    What looks like an image but cannot be read as one (a directory named ``x.png``, a broken symbolic
    link, a link loop, a FIFO) goes to ``problems``, as does any broken or looping link: nothing under a
    dataset tree is dropped without being listed.
    """
    found = []
    for p in _entries(folder):
        looks_like_image = p.suffix.lower() in IMAGE_SUFFIXES
        problem = path_problem(p) if looks_like_image or p.is_symlink() else None
        if problem and (looks_like_image or "symbolic link" in problem):
            problems.add(p, problem)
        elif looks_like_image:
            found.append(p)
        else:
            log.debug("ignoring non-image entry %s", p)
    return found


def by_lower_name(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in _entries(folder)} if folder.is_dir() else {}


# ---------------------------------------------------------------------------------------------------
# FIVES
# ---------------------------------------------------------------------------------------------------
def _fives_root(root: Path) -> Path:
    """Accept the dataset folder itself or a folder with exactly one subfolder holding train/ and test/."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return root
    nested = [p for p in _entries(root) if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())]
    if len(nested) == 1:
        return nested[0]
    raise DataError(
        f"{root}: no FIVES train/ or test/ folder found (expected train|test/Original/{{n}}_{{A|D|G|N}}.png)"
    )


def read_fives(root: str | Path, *, skip_bad: bool = False) -> ReadResult:
    """FIVES: every image is its own case (``fives/{split}/{n}``); the authors' split is kept."""
    root = _fives_root(require_dir(Path(root), "FIVES", "--fives"))
    problems = Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        originals = require_dir(root / split / "Original", f"FIVES {split}/Original")
        mask_dir = next((root / split / d for d in FIVES_MASK_DIRS if (root / split / d).is_dir()), None)
        masks = by_lower_name(mask_dir) if mask_dir else {}
        for image in images_in(originals, problems):
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
    root = require_dir(Path(root), "HRF", "--hrf")
    images_dir = require_dir(root / "images", "HRF images/")
    vessels = by_lower_name(root / "manual1")
    fovs = by_lower_name(root / "mask")
    problems = Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for image in images_in(images_dir, problems):
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
