"""Train/val/test splits: stratified by label, grouped by case, deterministic, addressed by content hash.

Grouping by case is what keeps the evaluation honest: StoneRounds cases have several images (both eyes,
repeat visits) that look alike, and an image of the same case in train and test would let a model
recognise the patient rather than the disease. Stratifying by label keeps rare inherited classes in
every split.

Schemes (the names are stable strings in results):
- ``stratified``: train / val / test by fractions of images, allocated case by case per label.
- ``kfold``: a test set held out first, the rest dealt into k folds; fold i is validation.
- ``authors``: the source's own train/test split where it has one (FIVES); val is carved from the
  authors' train grouped and stratified; sources without one are split as ``stratified``.
- ``leave_source_out``: every image of ``test_source`` is test (a new site, camera and population);
  train / val are a grouped, stratified split of the other sources. Test images of a disease *type*
  absent from train/val could never be learnt, so that is an error (e.g. holding out StoneRounds, the
  only source of inherited cases: test the StoneRounds shortcut with the text switched off or shuffled
  instead); a disease *label* seen only in the held-out source (FIVES' amd) is a warning, since only
  the disease task loses it. The unseen labels are recorded in the split's params.

A split is a Parquet file (manifest row index, image path, case id, label, split) named by the hash of
its sorted (image path, split) pairs and the scheme; trials refer to it by that hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mdf_search.atomic import atomic_file
from mdf_search.config import SPLITS
from mdf_search.data.schema import DataError, manifest_hash

log = logging.getLogger(__name__)

SCHEMES = SPLITS  # one vocabulary: config.py validates data.split against the same names
SPLIT_NAMES = ("train", "val", "test")
SPLIT_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),  # manifest row
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Split:
    """Which manifest rows are train / val / test, and the hash trials use to name it."""

    scheme: str
    table: pa.Table
    params: Mapping[str, object] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return split_hash(
            self.table.column("image_path").to_pylist(), self.table.column("split").to_pylist(), self.scheme
        )

    def rows(self, name: str) -> np.ndarray:
        """Manifest row indices of one split, in manifest order."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"split name must be one of {list(SPLIT_NAMES)}, but got {name!r}")
        mask = np.asarray(self.table.column("split").to_pylist()) == name
        return np.sort(np.asarray(self.table.column("index").to_pylist(), dtype=np.int64)[mask])

    def counts(self) -> dict[tuple[str, str], int]:
        """(split, label) → images."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for s, lb in zip(
            self.table.column("split").to_pylist(), self.table.column("label").to_pylist(), strict=True
        ):
            out[(s, lb)] += 1
        return dict(out)


def split_hash(paths: Sequence[str], splits: Sequence[str], scheme: str) -> str:
    digest = hashlib.sha256(scheme.encode())
    for path, name in sorted(zip(paths, splits, strict=True)):
        digest.update(f"\0{path}\t{name}".encode())
    return digest.hexdigest()[:16]


def _allocate(
    cases: Mapping[str, int], fractions: Mapping[str, float], rng: np.random.Generator
) -> dict[str, str]:
    """Deal cases (→ image count) to named bins so each bin's image share tracks its fraction.

    Cases are shuffled, then placed largest first (a stable sort keeps the shuffle among equals) into the
    bin furthest below its target: a greedy that stays within one case of the target per bin.
    """
    names = sorted(cases)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda c: -cases[c])
    total = sum(cases.values())
    filled = dict.fromkeys(fractions, 0)
    out: dict[str, str] = {}
    for case in order:
        bins = [b for b in fractions if fractions[b] > 0]
        best = max(bins, key=lambda b: (fractions[b] * total - filled[b]) / (fractions[b] * total))
        out[case] = best
        filled[best] += cases[case]
    return out


def _cases_by_label(table: pa.Table, rows: Sequence[int]) -> dict[str, dict[str, int]]:
    """label → {case → image count} over the given manifest rows; a case must have one label."""
    labels = table.column("label").to_pylist()
    case_ids = table.column("case_id").to_pylist()
    case_label: dict[str, str] = {}
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i in rows:
        case, label = case_ids[i], labels[i]
        if case_label.setdefault(case, label) != label:
            raise DataError(
                f"case {case!r} has images with labels {case_label[case]!r} and {label!r}; "
                "re-run `mdf-search data prepare`, which rejects such cases"
            )
        out[label][case] += 1
    return out


def _stratified(
    table: pa.Table, rows: Sequence[int], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """case → bin, allocating each label's cases separately (that is the stratification)."""
    out: dict[str, str] = {}
    for label, cases in sorted(_cases_by_label(table, rows).items()):
        rng = np.random.default_rng(
            [seed, int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "little")]
        )
        out.update(_allocate(cases, fractions, rng))
    return out


def _held_out_rows(manifest: pa.Table, test_source: str) -> list[int]:
    """Rows of the held-out source; a clear error for an unknown source or one that is all the data."""
    sources = manifest.column("source").to_pylist()
    counts = Counter(sources)
    listing = ", ".join(f"{name!r} ({n} images)" for name, n in sorted(counts.items()))
    if test_source not in counts:
        raise DataError(
            f"test_source {test_source!r} is not a source of this manifest; its sources are {listing}"
        )
    if len(counts) < 2:
        raise DataError(
            f"leave_source_out needs at least two sources, but this manifest has only {listing}",
            hint="hold a source out of a manifest that combines several (mdf-search data prepare)",
        )
    return [i for i, name in enumerate(sources) if name == test_source]


def _check_learnable(manifest: pa.Table, held: Sequence[int], rest: Sequence[int], source: str) -> list[str]:
    """Fail if a held-out test type never occurs in train/val; warn for labels; return unseen labels."""
    labels = manifest.column("label").to_pylist()
    types = manifest.column("disease_type").to_pylist()
    seen_types, seen_labels = {types[i] for i in rest}, {labels[i] for i in rest}
    unseen_types = Counter(types[i] for i in held if types[i] not in seen_types)
    if unseen_types:
        which = ", ".join(f"{t!r} ({n} test images)" for t, n in sorted(unseen_types.items()))
        raise DataError(
            f"holding out source {source!r} leaves no {which} image in train/val: a classifier cannot "
            "learn a class it never sees, so those test images would be unlearnable and the study would "
            "measure nothing about them",
            hint="hold out a source whose disease types also occur in other sources; to test a shortcut "
            "that one source carries (StoneRounds and clinical text), switch data.text off or shuffle it",
        )
    unseen = sorted({labels[i] for i in held} - seen_labels)
    if unseen:
        log.warning(
            "holding out source %r: disease label(s) %s occur only in the test split; they are unlearnable "
            "for the disease task (the type task is unaffected)",
            source,
            unseen,
        )
    return unseen


def make_split(
    manifest: pa.Table,
    scheme: str = "stratified",
    *,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    folds: int = 5,
    fold: int = 0,
    test_source: str | None = None,
) -> Split:
    """Assign every manifest row to train / val / test under ``scheme``.

    ``test_source`` names the held-out source of ``leave_source_out`` (and is an error with any other).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, but got {scheme!r}")
    if not (0 < val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(
            f"need 0 < val_frac (--val-frac), 0 <= test_frac (--test-frac) and their sum below 1 (the rest "
            f"is train), but got (val_frac={val_frac}, test_frac={test_frac}); e.g. --val-frac 0.2 --test-frac 0.2"
        )
    if scheme == "kfold" and not 0 <= fold < folds:
        raise ValueError(f"`0 <= fold < folds` must hold, but got (fold={fold}, folds={folds})")
    if (scheme == "leave_source_out") != (test_source is not None):
        raise ValueError(
            f"test_source is needed with scheme 'leave_source_out' and only there, but got "
            f"(scheme={scheme!r}, test_source={test_source!r})"
        )
    n = manifest.num_rows
    all_rows = list(range(n))
    case_ids = manifest.column("case_id").to_pylist()
    params: dict[str, object] = {"seed": seed, "manifest": manifest_hash(manifest)}
    case_bin: dict[str, str] = {}
    if scheme == "stratified":
        params.update(val_frac=val_frac, test_frac=test_frac)
        case_bin = _stratified(
            manifest, all_rows, {"train": 1 - val_frac - test_frac, "val": val_frac, "test": test_frac}, seed
        )
    elif scheme == "kfold":
        params.update(test_frac=test_frac, folds=folds, fold=fold)
        outer = _stratified(manifest, all_rows, {"rest": 1 - test_frac, "test": test_frac}, seed)
        rest = [i for i in all_rows if outer[case_ids[i]] == "rest"]
        dealt = _stratified(manifest, rest, {f"fold{k}": 1 / folds for k in range(folds)}, seed + 1)
        case_bin = {
            c: ("test" if b == "test" else "val" if dealt[c] == f"fold{fold}" else "train")
            for c, b in outer.items()
        }
    elif scheme == "leave_source_out":
        assert test_source is not None
        params.update(val_frac=val_frac, test_source=test_source)
        held = _held_out_rows(manifest, test_source)
        case_bin.update({case_ids[i]: "test" for i in held})
        rest = sorted(set(all_rows) - set(held))
        case_bin.update(_stratified(manifest, rest, {"train": 1 - val_frac, "val": val_frac}, seed))
        params["unseen_labels"] = _check_learnable(manifest, held, rest, test_source)
    else:
        params.update(val_frac=val_frac, test_frac=test_frac)
        authors = manifest.column("authors_split").to_pylist()
        has = [i for i in all_rows if authors[i] in ("train", "test")]
        if not has:
            log.warning(
                "no source in this manifest has an authors' split; 'authors' falls back to stratified"
            )
        train_pool = [i for i in has if authors[i] == "train"]
        case_bin.update({case_ids[i]: "test" for i in has if authors[i] == "test"})
        case_bin.update(_stratified(manifest, train_pool, {"train": 1 - val_frac, "val": val_frac}, seed))
        without = [i for i in all_rows if authors[i] not in ("train", "test")]
        case_bin.update(
            _stratified(
                manifest,
                without,
                {"train": 1 - val_frac - test_frac, "val": val_frac, "test": test_frac},
                seed,
            )
        )
    names = [case_bin[case_ids[i]] for i in all_rows]
    table = pa.Table.from_pydict(
        {
            "index": all_rows,
            "image_path": manifest.column("image_path").to_pylist(),
            "case_id": case_ids,
            "label": manifest.column("label").to_pylist(),
            "split": names,
        },
        schema=SPLIT_SCHEMA,
    )
    return Split(scheme, table, params)


def write_split(split: Split, directory: str | Path) -> Path:
    """Write ``split-{hash}.parquet`` atomically (same hash, same content: rewriting is harmless)."""
    if Path(directory).exists() and not Path(directory).is_dir():
        raise DataError(f"{directory}: is a file; --out takes the folder for split-<hash>.parquet")
    path = Path(directory) / f"split-{split.hash}.parquet"
    meta = {
        b"mdf_search.split": json.dumps({"scheme": split.scheme, "hash": split.hash, **split.params}).encode()
    }
    with atomic_file(path) as tmp:
        pq.write_table(split.table.replace_schema_metadata(meta), tmp)
    return path


def read_split(path: str | Path) -> Split:
    """Read a split file and check that its content still matches the hash in its metadata."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"mdf_search.split", b"{}"))
    if "scheme" not in meta:
        raise DataError(f"{path}: not a split file (no mdf_search.split metadata)")
    split = Split(
        meta.pop("scheme"), table.cast(SPLIT_SCHEMA), {k: v for k, v in meta.items() if k != "hash"}
    )
    if split.hash != meta.get("hash"):
        raise DataError(f"{path}: content hash {split.hash} does not match the recorded {meta.get('hash')}")
    return split
