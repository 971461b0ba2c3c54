"""Readers that turn each dataset's on-disk layout into manifest rows, and :func:`prepare` that combines them.

Each reader collects every problem it finds (a bad label letter, an unreadable image, a missing column)
before failing, so one run lists everything to fix. With ``skip_bad=True`` the same problems become
:class:`~mdf_search.data.schema.Skipped` entries instead and the rest of the data is kept.

Layouts (see docs/stack-facts.md):
- FIVES: ``train|test/Original/{n}_{A|D|G|N}.png``, vessel masks in ``train|test/Ground truth/`` or the
  misspelt ``Groud truth``; stray ``Thumbs.db`` / ``Quality Assessment.xlsx`` are ignored.
- HRF: ``images/NN_{h|g|dr}.jpg`` (``.JPG`` occurs), ``manual1/NN_x.tif``, ``mask/NN_x_mask.tif``.
- StoneRounds: a user-supplied CSV/Parquet (image path, case id, clinical text, diagnosis, gene).
- Generic: a CSV/Parquet with the manifest's own columns (at least image_path, case_id, label).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image, UnidentifiedImageError

from mdf_search.data.schema import (
    DISEASE_TYPES,
    TYPE_CLASSES,
    DataError,
    LabelSpace,
    Skipped,
    manifest_table,
    write_manifest,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
FIVES_LETTERS = {"A": "amd", "D": "dr", "G": "glaucoma", "N": "normal"}
FIVES_MASK_DIRS = ("Ground truth", "Groud truth")  # the second spelling is in one FIVES release
HRF_CODES = {"h": "normal", "g": "glaucoma", "dr": "dr"}
SKIP_HINT = "fix the files, or pass --skip-bad (skip_bad=True) to leave them out and list them"

# StoneRounds diagnosis spellings → canonical label. Keys are normalised by _norm_diagnosis. Extend it
# per call with ``extra_diagnoses`` (the CLI's --diagnosis NAME=LABEL) rather than editing this table.
DIAGNOSIS_LABELS: dict[str, str] = {
    "retinitis pigmentosa": "rp",
    "rp": "rp",
    "autosomal dominant retinitis pigmentosa": "rp",
    "autosomal recessive retinitis pigmentosa": "rp",
    "x linked retinitis pigmentosa": "rp",
    "stargardt": "stargardt",
    "stargardt disease": "stargardt",
    "stargardt macular dystrophy": "stargardt",
    "fundus flavimaculatus": "stargardt",
    "abca4 retinopathy": "stargardt",
    "best disease": "best",
    "best vitelliform macular dystrophy": "best",
    "choroideremia": "choroideremia",
    "cone rod dystrophy": "cone_rod_dystrophy",
    "leber congenital amaurosis": "lca",
    "x linked retinoschisis": "xlrs",
    "usher syndrome": "usher",
    "achromatopsia": "achromatopsia",
    "bietti crystalline dystrophy": "bietti",
    "gyrate atrophy": "gyrate_atrophy",
    "pattern dystrophy": "pattern_dystrophy",
}


def _norm_diagnosis(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@dataclass
class ReadResult:
    """Manifest rows from one source plus what was skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class _Problems:
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


def _row(image: Path, source: str, case_id: str, label: str, **extra: Any) -> dict[str, Any]:
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


def _add_probed(row: dict[str, Any], rows: list[dict[str, Any]], problems: _Problems) -> None:
    try:
        row["width"], row["height"] = probe_image(Path(row["image_path"]))
    except DataError as err:
        problems.add(row["image_path"], str(err).split(": ", 1)[-1])
        return
    rows.append(row)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} directory not found")
    return path


def _images_in(folder: Path) -> list[Path]:
    """Image files in a folder, sorted; stray files (Thumbs.db, .xlsx, .DS_Store) are ignored."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
        elif p.is_file():
            log.debug("ignoring non-image file %s", p)
    return found


def _by_lower_name(folder: Path) -> dict[str, Path]:
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
    root = _fives_root(_require_dir(Path(root), "FIVES"))
    problems = _Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        originals = _require_dir(root / split / "Original", f"FIVES {split}/Original")
        mask_dir = next((root / split / d for d in FIVES_MASK_DIRS if (root / split / d).is_dir()), None)
        masks = _by_lower_name(mask_dir) if mask_dir else {}
        for image in _images_in(originals):
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
            row = _row(
                image,
                "fives",
                f"fives/{split}/{int(number)}",
                label,
                authors_split=split,
                vessel_mask_path=str(mask.resolve()) if mask else "",
            )
            _add_probed(row, rows, problems)
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
    root = _require_dir(Path(root), "HRF")
    images_dir = _require_dir(root / "images", "HRF images/")
    vessels = _by_lower_name(root / "manual1")
    fovs = _by_lower_name(root / "mask")
    problems = _Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for image in _images_in(images_dir):
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
        row = _row(
            image,
            "hrf",
            f"hrf/{stem}",
            HRF_CODES[code],
            vessel_mask_path=str(vessel.resolve()) if vessel else "",
            fov_mask_path=str(fov.resolve()) if fov else "",
        )
        _add_probed(row, rows, problems)
    if not rows and not problems.items:
        raise DataError(f"{images_dir}: no HRF images found (expected NN_h.jpg, NN_g.jpg, NN_dr.JPG)")
    return problems.finish(rows)


# ---------------------------------------------------------------------------------------------------
# Table manifests (StoneRounds and generic)
# ---------------------------------------------------------------------------------------------------
_ALIASES = {
    "image": "image_path",
    "path": "image_path",
    "file": "image_path",
    "case": "case_id",
    "text": "clinical_text",
    "history": "clinical_text",
    "diagnosis_name": "diagnosis",
}


def _read_table(path: Path) -> pl.DataFrame:
    """Every column as text (nulls kept), column names lower-cased with a few common aliases."""
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pl.read_parquet(path)
            frame = frame.select([pl.col(c).cast(pl.String) for c in frame.columns])
        elif path.suffix.lower() in (".csv", ".tsv"):
            frame = pl.read_csv(
                path, infer_schema=False, separator="\t" if path.suffix.lower() == ".tsv" else ","
            )
        else:
            raise DataError(f"{path}: manifest must be .csv, .tsv or .parquet, got {path.suffix!r}")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{path}: cannot read manifest table ({type(err).__name__}: {err})") from None
    renamed = {}
    for c in frame.columns:
        key = c.strip().lower().replace(" ", "_")
        renamed[c] = _ALIASES.get(key, key)
    return frame.rename(renamed)


def _check_columns(path: Path, frame: pl.DataFrame, required: Sequence[str]) -> None:
    """Column by column: present, and no empty value in a required column (rows counted from 1)."""
    problems = [
        f"{path}: missing column {c!r} (have {frame.columns})" for c in required if c not in frame.columns
    ]
    for c in required:
        if c in frame.columns:
            empty = frame.with_row_index("row").filter(
                pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")
            )
            if len(empty):
                rows = [int(r) + 1 for r in empty["row"].head(5)]
                problems.append(f"{path}: column {c!r} is empty in {len(empty)} row(s), e.g. rows {rows}")
    if problems:
        raise DataError(problems)


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value or not value.strip():
        return None
    p = Path(value.strip()).expanduser()
    return p if p.is_absolute() else base / p


def _get(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value).strip()


def read_stonerounds(
    path: str | Path, *, skip_bad: bool = False, extra_diagnoses: Mapping[str, str] | None = None
) -> ReadResult:
    """StoneRounds from a user manifest: every diagnosis is an inherited disease.

    An unknown diagnosis is an error (it would become a label nobody asked for); add it with
    ``extra_diagnoses={"Name as written": "label"}``.
    """
    path = Path(path)
    frame = _read_table(path)
    _check_columns(path, frame, ("image_path", "case_id", "clinical_text", "diagnosis"))
    table = {_norm_diagnosis(k): v for k, v in DIAGNOSIS_LABELS.items()}
    table.update({_norm_diagnosis(k): v.strip().lower() for k, v in (extra_diagnoses or {}).items()})
    unknown = sorted({d for d in frame["diagnosis"].to_list() if _norm_diagnosis(d) not in table})
    if unknown and not skip_bad:
        raise DataError(
            f"{path}: unknown diagnosis name(s) {unknown}",
            hint=f"known: {sorted(DIAGNOSIS_LABELS)}; add one with --diagnosis 'NAME=label' "
            "(extra_diagnoses) or pass --skip-bad",
        )
    problems = _Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    base = path.parent
    for i, rec in enumerate(frame.iter_rows(named=True), start=1):
        image = _resolve(base, rec["image_path"])
        assert image is not None  # required column checked above
        label = table.get(_norm_diagnosis(rec["diagnosis"]))
        if label is None:
            problems.add(image, f"row {i} of {path.name}: unknown diagnosis {rec['diagnosis']!r}")
            continue
        eye = _get(rec, "eye").upper() or None
        row = _row(
            image,
            "stonerounds",
            f"stonerounds/{_get(rec, 'case_id')}",
            label,
            disease_type="inherited",
            clinical_text=_get(rec, "clinical_text"),
            gene=_get(rec, "gene") or None,
            eye=eye,
        )
        _add_probed(row, rows, problems)
    return problems.finish(rows)


def read_generic(path: str | Path, *, skip_bad: bool = False, source: str | None = None) -> ReadResult:
    """Any other dataset, from a CSV/Parquet with the manifest's columns.

    Required: image_path, case_id, label. Optional: source (default: the file's stem), disease_type
    (default from the known label table), eye, clinical_text, gene, vessel_mask_path, fov_mask_path,
    authors_split. Width and height are always read from the images.
    """
    path = Path(path)
    frame = _read_table(path)
    _check_columns(path, frame, ("image_path", "case_id", "label"))
    problems = _Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.iter_rows(named=True), start=1):
        image = _resolve(path.parent, rec["image_path"])
        assert image is not None
        label = _get(rec, "label").lower()
        kind = _get(rec, "disease_type").lower() or DISEASE_TYPES.get(label, "")
        split = _get(rec, "authors_split").lower() or None
        if kind not in TYPE_CLASSES:
            problems.add(
                image, f"row {i} of {path.name}: label {label!r} needs a disease_type in {list(TYPE_CLASSES)}"
            )
            continue
        if split not in (None, "train", "test"):
            problems.add(
                image, f"row {i} of {path.name}: authors_split must be train, test or empty, got {split!r}"
            )
            continue
        src = _get(rec, "source") or source or path.stem
        masks = {k: _resolve(path.parent, rec.get(k)) for k in ("vessel_mask_path", "fov_mask_path")}
        row = _row(
            image,
            src,
            f"{src}/{_get(rec, 'case_id')}",
            label,
            disease_type=kind,
            clinical_text=_get(rec, "clinical_text"),
            gene=_get(rec, "gene") or None,
            eye=_get(rec, "eye").upper() or None,
            authors_split=split,
            **{k: str(v.resolve()) if v else "" for k, v in masks.items()},
        )
        _add_probed(row, rows, problems)
    return problems.finish(rows)


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
    problems = _Problems(skip_bad)
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


def prepare(
    out: str | Path,
    *,
    fives: str | Path | None = None,
    hrf: str | Path | None = None,
    stonerounds: str | Path | None = None,
    manifests: Sequence[str | Path] = (),
    skip_bad: bool = False,
    extra_diagnoses: Mapping[str, str] | None = None,
) -> PrepareResult:
    """Read every given source, check them together, and write one manifest atomically.

    All sources are read before anything fails, so the error lists the problems of every source.
    """
    results: list[ReadResult] = []
    errors: list[str] = []
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
    if errors:
        raise DataError(errors, hint=SKIP_HINT)
    rows = [row for r in results for row in r.rows]
    rows, conflicts = check_consistency(rows, skip_bad=skip_bad)
    skipped = [s for r in results for s in r.skipped] + conflicts
    if not rows:
        raise DataError(f"{out}: no usable images left to write ({len(skipped)} skipped)")
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
