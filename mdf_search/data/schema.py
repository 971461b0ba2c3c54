"""The manifest: one Parquet table that every source (FIVES, HRF, StoneRounds, any generic dataset) becomes.

Everything downstream (splits, the preprocessed cache, batches) reads only this table, so a new dataset
needs a reader and nothing else. The schema is explicit (not inferred) so that an empty column, an all-null
``eye`` or an all-empty ``clinical_text`` keep their types, and two manifests written months apart hash the
same when their content is the same.

The label vocabulary (:class:`LabelSpace`) travels in the Parquet metadata: a trial that reads a manifest
gets the same label → index mapping the cache and the metrics use, without a side file to lose.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mdf_search.atomic import atomic_file
from mdf_search.model.arch import TYPE_CLASSES  # the type head's classes are the disease types

log = logging.getLogger(__name__)

# Canonical disease label → disease type. Labels not listed here must come with a disease_type column
# (generic manifests) or an entry added by the caller; a guess would silently corrupt the type task.
DISEASE_TYPES: dict[str, str] = {
    "normal": "healthy",
    "dr": "acquired",
    "amd": "acquired",
    "glaucoma": "acquired",
    "rp": "inherited",
    "stargardt": "inherited",
    "best": "inherited",
    "choroideremia": "inherited",
    "cone_rod_dystrophy": "inherited",
    "lca": "inherited",
    "xlrs": "inherited",
    "usher": "inherited",
    "achromatopsia": "inherited",
    "bietti": "inherited",
    "gyrate_atrophy": "inherited",
    "pattern_dystrophy": "inherited",
}
# Display / index order of well-known labels; anything else follows alphabetically.
_LABEL_ORDER = ("normal", "dr", "amd", "glaucoma", "rp", "stargardt")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),  # absolute
        pa.field("source", pa.string(), nullable=False),  # fives | hrf | stonerounds | <generic name>
        pa.field("case_id", pa.string(), nullable=False),  # namespaced by source: "fives/train/12"
        pa.field("eye", pa.string()),  # OD | OS | null
        pa.field("label", pa.string(), nullable=False),  # canonical disease label, lower case
        pa.field("disease_type", pa.string(), nullable=False),  # healthy | acquired | inherited
        pa.field("clinical_text", pa.string(), nullable=False),  # "" when none
        pa.field("gene", pa.string()),  # causative gene where known (StoneRounds), else null
        pa.field("vessel_mask_path", pa.string(), nullable=False),  # "" when none
        pa.field("fov_mask_path", pa.string(), nullable=False),  # "" when none
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("authors_split", pa.string()),  # train | test | null (the source's own split)
    ]
)
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)
_META_LABELS = b"mdf_search.label_space"
_META_HASH = b"mdf_search.manifest_hash"
_PREPARE_HINT = (
    "write the manifest with `mdf-search data prepare` (a CSV with image_path, case_id, label goes in "
    "through `data prepare --manifest FILE.csv --out manifest.parquet`)"
)


class DataError(ValueError):
    """Bad input data: every problem names the file and what is wrong with it.

    The CLI catches it and exits with code 2 and no traceback; library callers get a ValueError.
    """

    def __init__(self, problems: str | Sequence[str], hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.hint = hint
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text + (f"\n{hint}" if hint else ""))


@dataclass(frozen=True)
class Skipped:
    """A file left out because of ``skip_bad``, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class LabelSpace:
    """Ordered disease labels plus the fixed type labels: the index space of both classification heads."""

    diseases: tuple[str, ...]
    types: tuple[str, ...] = TYPE_CLASSES
    disease_types: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.diseases)) != len(self.diseases):
            raise ValueError(f"disease labels must be unique, but got {list(self.diseases)}")
        missing = [d for d in self.diseases if d not in self.disease_types and d not in DISEASE_TYPES]
        if missing:
            raise ValueError(f"no disease type known for labels {missing}")

    def disease_index(self, label: str) -> int:
        return self.diseases.index(label)

    def type_of(self, label: str) -> str:
        return self.disease_types.get(label) or DISEASE_TYPES[label]

    def type_index(self, label: str) -> int:
        """Index of the *disease label's* type (the type task's target)."""
        return self.types.index(self.type_of(label))

    @classmethod
    def from_labels(cls, pairs: Iterable[tuple[str, str]]) -> LabelSpace:
        """From (label, type) pairs: known labels first in a fixed order, then the rest alphabetically."""
        mapping = dict(pairs)
        known = [lb for lb in _LABEL_ORDER if lb in mapping]
        rest = sorted(lb for lb in mapping if lb not in _LABEL_ORDER)
        return cls(diseases=tuple(known + rest), disease_types={k: mapping[k] for k in known + rest})

    @classmethod
    def from_table(cls, table: pa.Table) -> LabelSpace:
        labels = table.column("label").to_pylist()
        types = table.column("disease_type").to_pylist()
        return cls.from_labels(zip(labels, types, strict=True))

    def to_json(self) -> str:
        return json.dumps(
            {
                "diseases": list(self.diseases),
                "types": list(self.types),
                "disease_types": dict(self.disease_types),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LabelSpace:
        data = json.loads(text)
        return cls(tuple(data["diseases"]), tuple(data["types"]), dict(data["disease_types"]))


# ---------------------------------------------------------------------------------------------------
# Manifest table I/O.
# ---------------------------------------------------------------------------------------------------
def manifest_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with the manifest columns) → a table with the explicit schema."""
    columns = {name: [row.get(name) for row in rows] for name in MANIFEST_COLUMNS}
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def manifest_hash(table: pa.Table) -> str:
    """Content hash of the manifest rows (column by column, schema order): the cache key's first part.

    Images are assumed immutable under their paths; a changed file needs a new path or a new manifest.
    """
    digest = hashlib.sha256()
    for name in MANIFEST_COLUMNS:
        digest.update(name.encode())
        digest.update(json.dumps(table.column(name).to_pylist()).encode())
    return digest.hexdigest()[:16]


def write_manifest(table: pa.Table, path: str | Path) -> Path:
    """Write atomically, with the label space and content hash in the Parquet metadata."""
    table = table.cast(MANIFEST_SCHEMA)
    space = LabelSpace.from_table(table)
    meta = {_META_LABELS: space.to_json().encode(), _META_HASH: manifest_hash(table).encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_manifest(path: str | Path) -> tuple[pa.Table, LabelSpace]:
    """Read a manifest written by :func:`write_manifest` (or any Parquet with the manifest columns)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path}: is a directory; --manifest takes the manifest Parquet file, e.g. {path / 'manifest.parquet'}"
        )
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: not a readable Parquet manifest ({err})", hint=_PREPARE_HINT) from None
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing manifest column(s) {missing}", hint=_PREPARE_HINT)
    meta = table.schema.metadata or {}
    table = table.select(list(MANIFEST_COLUMNS))
    nulls = [f.name for f in MANIFEST_SCHEMA if not f.nullable and table.column(f.name).null_count]
    if nulls:
        counts = ", ".join(
            f"column {c!r} is empty (null) in {table.column(c).null_count} row(s)" for c in nulls
        )
        raise DataError(f"{path}: {counts}", hint=_PREPARE_HINT)
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (an empty manifest)", hint=_PREPARE_HINT)
    try:
        table = table.cast(MANIFEST_SCHEMA)
    except (pa.ArrowException, ValueError) as err:
        raise DataError(f"{path}: manifest columns of the wrong type ({err})", hint=_PREPARE_HINT) from None
    space = LabelSpace.from_json(meta[_META_LABELS]) if _META_LABELS in meta else LabelSpace.from_table(table)
    return table, space
