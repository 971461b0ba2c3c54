"""Readers of table sources: a StoneRounds manifest and generic CSV/Parquet manifests.

- StoneRounds: a user-supplied CSV/Parquet (image path, case id, clinical text, diagnosis, gene); the
  diagnosis spellings map to canonical labels (:data:`DIAGNOSIS_LABELS`).
- Generic: a CSV/Parquet with the manifest's own columns (at least image_path, case_id, label).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from mdf_search.data.readers import Problems, ReadResult, add_probed, make_row, path_problem
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


_PATH_COLUMNS = ("image_path", "vessel_mask_path", "fov_mask_path")


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


# File signatures of things people save with a .csv name by mistake.
_BINARY_KINDS = {
    b"PK\x03\x04": "a zip archive (an .xlsx workbook?)",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook",
    b"PAR1": "a Parquet file (name it *.parquet)",
    b"\x89PNG": "a PNG image",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_TO_UTF8 = "save it as UTF-8 (Excel: Save As 'CSV UTF-8'; or iconv -t UTF-8)"


def _decode_csv(path: Path, data: bytes) -> str:
    """The text of a CSV manifest, which must be UTF-8 (a UTF-8 byte-order mark is allowed)."""
    kind = next((k for magic, k in _BINARY_KINDS.items() if data.startswith(magic)), None)
    if kind:
        raise DataError(f"{path}: not a text CSV but {kind}; export the table as CSV UTF-8")
    if data.startswith(_UTF16_BOMS) or (len(data) > 3 and (data[1] == 0 or data[0] == 0)):
        raise DataError(f"{path}: is UTF-16 text, not UTF-8; {_TO_UTF8}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if b"\x00" in data:
            raise DataError(f"{path}: not a text CSV (binary bytes); export the table as CSV UTF-8") from None
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 (byte 0x{data[err.start]:02x} on line {line}; Latin-1 or Windows-1252?); "
            + _TO_UTF8
        ) from None


def _parse_csv(path: Path, text: str, separator: str) -> pl.DataFrame:
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=separator))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise DataError(f"{path}: no header row")
    header = rows[0]
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header) and any(cell.strip() for cell in row):
            raise DataError(
                f"{path}: line {line} has {len(row)} fields but the header has {len(header)} columns; "
                "quote cells that contain the separator, or fix the row"
            )
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    columns = {name: [r[i] if r[i] != "" else None for r in body] for i, name in enumerate(header)}
    if len(columns) != len(header):
        raise DataError(f"{path}: the header names a column twice ({header}); rename one of them")
    return pl.DataFrame(columns, schema=dict.fromkeys(header, pl.String))


def _read_table(path: Path, required: Sequence[str]) -> pl.DataFrame:
    """Every column as text (nulls kept), column names lower-cased with a few common aliases."""
    needs = f"a header row with {', '.join(required)} and one row per image"
    problem = path_problem(path)
    if problem == "file not found":
        raise DataError(f"{path}: manifest file not found")
    if problem and problem.startswith("is a directory"):
        raise DataError(
            f"{path}: is a directory, not a manifest; pass the CSV or Parquet file, e.g. {path / 'manifest.csv'}"
        )
    if problem and problem.startswith("empty file"):
        raise DataError(f"{path}: empty file; a manifest needs {needs}")
    if problem:
        raise DataError(f"{path}: {problem}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
            frame = frame.select([pl.col(c).cast(pl.String) for c in frame.columns])
        elif suffix in (".csv", ".tsv"):
            text = _decode_csv(path, path.read_bytes())
            frame = _parse_csv(path, text, "\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(f"{path}: manifest must be .csv, .tsv or .parquet, got {suffix!r}")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(
            f"{path}: cannot read manifest table ({type(err).__name__}: {err}); "
            "write it again as CSV UTF-8 or Parquet"
        ) from None
    renamed = {}
    for c in frame.columns:
        key = c.strip().lower().replace(" ", "_")
        renamed[c] = _ALIASES.get(key, key)
    if len(set(renamed.values())) != len(renamed):
        raise DataError(f"{path}: two columns mean the same ({frame.columns}); keep one of them")
    frame = frame.rename(renamed)
    if frame.height == 0:
        raise DataError(f"{path}: no rows under the header; a manifest needs {needs}")
    return frame


def _check_columns(path: Path, frame: pl.DataFrame, required: Sequence[str]) -> None:
    """Column by column: present, and no empty value in a required column (rows counted from 1)."""
    problems = [
        f"{path}: missing column {c!r} (have {frame.columns})" for c in required if c not in frame.columns
    ]
    hint = f"a manifest needs the columns {', '.join(required)}"
    if problems and len(frame.columns) == 1:
        sep = next((s for s in (";", "\t", "|") if s in frame.columns[0]), None)
        if sep:
            hint = f"the header is separated by {sep!r}: save the file comma-separated (or tab-separated as .tsv)"
    for c in required:
        if c in frame.columns:
            empty = frame.with_row_index("row").filter(
                pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")
            )
            if len(empty):
                rows = [int(r) + 1 for r in empty["row"].head(5)]
                problems.append(f"{path}: column {c!r} is empty in {len(empty)} row(s), e.g. rows {rows}")
    if problems:
        raise DataError(problems, hint=hint)


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value or not value.strip():
        return None
    p = Path(value.strip()).expanduser()
    return p if p.is_absolute() else base / p


def _path_error(value: str | None) -> str | None:
    """Why a path cell cannot be used: a NUL byte, or a relative path climbing out of the manifest's folder
    (a shared manifest must not reach ``../../home/...``; an absolute path says where it goes)."""
    if not value:
        return None
    if "\x00" in value:
        return f"path {value!r} contains a NUL byte; fix the cell"
    p = Path(value.strip()).expanduser()
    if not p.is_absolute() and os.path.normpath(p).split(os.sep)[0] == "..":
        return (
            f"path {value.strip()!r} points outside the manifest's folder; write an absolute path, or keep "
            "the images under the manifest's folder"
        )
    return None


class _Seen:
    """Rows of one file already seen per image: a repeat with the same label is a duplicate row."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.first: dict[tuple[str, str], int] = {}

    def duplicate(self, image: Path, label: str, row: int) -> str | None:
        key = (str(image.resolve()), label)
        if key in self.first:
            return (
                f"rows {self.first[key]} and {row} of {self.name} list the same image; "
                "delete the duplicate row"
            )
        self.first[key] = row
        return None


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
    required = ("image_path", "case_id", "clinical_text", "diagnosis")
    frame = _read_table(path, required)
    _check_columns(path, frame, required)
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
    seen = _Seen(path)
    for i, rec in enumerate(frame.iter_rows(named=True), start=1):
        where = f"row {i} of {path.name}: "
        bad_path = _path_error(rec["image_path"])
        if bad_path:
            problems.add(path, where + bad_path)
            continue
        image = _resolve(base, rec["image_path"])
        assert image is not None  # required column checked above
        label = table.get(_norm_diagnosis(rec["diagnosis"]))
        if label is None:
            problems.add(image, f"{where}unknown diagnosis {rec['diagnosis']!r}")
            continue
        repeat = seen.duplicate(image, label, i)
        if repeat:
            problems.add(image, repeat)
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
        add_probed(row, rows, problems, where)
    return problems.finish(rows)


def read_generic(path: str | Path, *, skip_bad: bool = False, source: str | None = None) -> ReadResult:
    """Any other dataset, from a CSV/Parquet with the manifest's columns.

    Required: image_path, case_id, label. Optional: source (default: the file's stem), disease_type
    (default from the known label table), eye, clinical_text, gene, vessel_mask_path, fov_mask_path,
    authors_split. Width and height are always read from the images.
    """
    path = Path(path)
    required = ("image_path", "case_id", "label")
    frame = _read_table(path, required)
    _check_columns(path, frame, required)
    problems = Problems(skip_bad)
    rows: list[dict[str, Any]] = []
    seen = _Seen(path)
    for i, rec in enumerate(frame.iter_rows(named=True), start=1):
        where = f"row {i} of {path.name}: "
        bad_path = next(filter(None, (_path_error(rec.get(k)) for k in _PATH_COLUMNS)), None)
        if bad_path:
            problems.add(path, where + bad_path)
            continue
        image = _resolve(path.parent, rec["image_path"])
        assert image is not None
        label = _get(rec, "label").lower()
        kind = _get(rec, "disease_type").lower() or DISEASE_TYPES.get(label, "")
        split = _get(rec, "authors_split").lower() or None
        if kind not in TYPE_CLASSES:
            problems.add(
                image,
                f"{where}label {label!r} is not a known disease; give it a disease_type column "
                f"({', '.join(TYPE_CLASSES)})",
            )
            continue
        if split not in (None, "train", "test"):
            problems.add(image, f"{where}authors_split must be train, test or empty, got {split!r}")
            continue
        repeat = seen.duplicate(image, label, i)
        if repeat:
            problems.add(image, repeat)
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
        add_probed(row, rows, problems, where)
    return problems.finish(rows)
