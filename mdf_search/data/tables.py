"""Readers of table sources: a StoneRounds manifest and generic CSV/Parquet manifests.

- StoneRounds: a user-supplied CSV/Parquet (image path, case id, clinical text, diagnosis, gene); the
  diagnosis spellings map to canonical labels (:data:`DIAGNOSIS_LABELS`).
- Generic: a CSV/Parquet with the manifest's own columns (at least image_path, case_id, label).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from mdf_search.data.readers import Problems, ReadResult, add_probed, make_row
from mdf_search.data.schema import (
    DISEASE_TYPES,
    TYPE_CLASSES,
    DataError,
)

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
    problems = Problems(skip_bad)
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
        row = make_row(
            image,
            "stonerounds",
            f"stonerounds/{_get(rec, 'case_id')}",
            label,
            disease_type="inherited",
            clinical_text=_get(rec, "clinical_text"),
            gene=_get(rec, "gene") or None,
            eye=eye,
        )
        add_probed(row, rows, problems)
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
    problems = Problems(skip_bad)
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
        row = make_row(
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
        add_probed(row, rows, problems)
    return problems.finish(rows)
