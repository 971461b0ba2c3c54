"""Splits: no case in two splits, labels stratified, k-fold covers every case once, deterministic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from mdf_search.data.schema import DataError, manifest_table
from mdf_search.data.splits import make_split, read_split, write_split


def _manifest(n_cases: int = 120) -> pa.Table:
    """Cases of 1-4 images over four labels (inherited-like cases have several images)."""
    rows = []
    labels = ["normal", "dr", "rp", "stargardt"]
    for c in range(n_cases):
        label = labels[c % 4]
        for k in range(1 + (c * 7) % 4):
            rows.append(
                {
                    "image_path": f"/d/{c}_{k}.png",
                    "source": "s",
                    "case_id": f"s/{c}",
                    "label": label,
                    "disease_type": {"normal": "healthy", "dr": "acquired"}.get(label, "inherited"),
                    "clinical_text": "",
                    "vessel_mask_path": "",
                    "fov_mask_path": "",
                    "width": 8,
                    "height": 8,
                    "authors_split": ("test" if c % 5 == 0 else "train") if c < 40 else None,
                }
            )
    return manifest_table(rows)


def _cases(table: pa.Table, rows: list[int]) -> set[str]:
    ids = table.column("case_id").to_pylist()
    return {ids[i] for i in rows}


@pytest.mark.parametrize("scheme", ["stratified", "kfold", "authors"])
def test_no_case_in_two_splits(scheme: str) -> None:
    table = _manifest()
    split = make_split(table, scheme, seed=1)
    parts = {name: _cases(table, split.rows(name).tolist()) for name in ("train", "val", "test")}
    assert (
        not parts["train"] & parts["val"]
        and not parts["train"] & parts["test"]
        and not parts["val"] & parts["test"]
    )
    assert sum(len(split.rows(n)) for n in ("train", "val", "test")) == table.num_rows


def test_stratified_proportions() -> None:
    table = _manifest(200)
    split = make_split(table, "stratified", seed=0, val_frac=0.2, test_frac=0.2)
    counts = split.counts()
    totals = Counter(table.column("label").to_pylist())
    for label, total in totals.items():
        for name, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts.get((name, label), 0) / total - frac) < 0.06, (label, name)


def test_kfold_covers_everything_once_and_keeps_test_fixed() -> None:
    table = _manifest()
    splits = [make_split(table, "kfold", seed=2, folds=4, fold=i) for i in range(4)]
    tests = {tuple(s.rows("test")) for s in splits}
    assert len(tests) == 1
    val_rows = [r for s in splits for r in s.rows("val").tolist()]
    assert sorted(val_rows) == sorted(set(range(table.num_rows)) - set(splits[0].rows("test").tolist()))
    assert len({s.hash for s in splits}) == 4


def test_authors_split_is_kept() -> None:
    table = _manifest()
    split = make_split(table, "authors", seed=0)
    authors = table.column("authors_split").to_pylist()
    assigned = split.table.column("split").to_pylist()
    for a, s in zip(authors, assigned, strict=True):
        if a == "test":
            assert s == "test"
        elif a == "train":
            assert s in ("train", "val")
    assert {s for a, s in zip(authors, assigned, strict=True) if a == "train"} == {"train", "val"}


def test_deterministic_and_hash_addressed(tmp_path: Path) -> None:
    table = _manifest()
    a, b = make_split(table, seed=7), make_split(table, seed=7)
    assert a.hash == b.hash and a.table.equals(b.table)
    assert make_split(table, seed=8).hash != a.hash
    path = write_split(a, tmp_path)
    assert path.name == f"split-{a.hash}.parquet"
    again = read_split(path)
    assert again.hash == a.hash and again.scheme == "stratified" and again.params["seed"] == 7


def test_split_of_generated_study(synth_study: Path) -> None:
    from mdf_search.data.schema import read_manifest

    table, _ = read_manifest(synth_study / "manifest.parquet")
    split = make_split(table, "authors", seed=0)
    case_split: dict[str, str] = {}
    for case, name in zip(
        table.column("case_id").to_pylist(), split.table.column("split").to_pylist(), strict=True
    ):
        assert case_split.setdefault(case, name) == name


def test_bad_arguments_and_mixed_case() -> None:
    table = _manifest(8)
    with pytest.raises(ValueError, match="scheme must be one of"):
        make_split(table, "random")
    with pytest.raises(ValueError, match=r"`0 <= fold < folds` must hold, but got \(fold=5, folds=5\)"):
        make_split(table, "kfold", fold=5, folds=5)
    rows = table.to_pylist()
    rows[1]["case_id"] = rows[0]["case_id"]
    rows[1]["label"] = "dr" if rows[0]["label"] != "dr" else "normal"
    with pytest.raises(DataError, match="has images with labels"):
        make_split(manifest_table(rows))


# ---------------------------------------------------------------------------------------------------
# leave_source_out, on a manifest the real readers made from files in the real layouts
# ---------------------------------------------------------------------------------------------------
def _study(synth_study: Path) -> pa.Table:
    from mdf_search.data.schema import read_manifest

    return read_manifest(synth_study / "manifest.parquet")[0]


def test_leave_source_out_holds_one_source_out_whole(synth_study: Path, tmp_path: Path) -> None:
    table = _study(synth_study)
    split = make_split(table, "leave_source_out", seed=0, val_frac=0.25, test_source="hrf")
    sources = table.column("source").to_pylist()
    names = split.table.column("split").to_pylist()
    assert {n for s, n in zip(sources, names, strict=True) if s == "hrf"} == {"test"}
    assert {s for s, n in zip(sources, names, strict=True) if n == "test"} == {"hrf"}
    parts = {name: _cases(table, split.rows(name).tolist()) for name in ("train", "val")}
    assert parts["train"] and parts["val"] and not parts["train"] & parts["val"]
    counts = split.counts()  # train/val stratified: every label of the rest is in train
    labels = {lb for s, lb in zip(sources, table.column("label").to_pylist(), strict=True) if s != "hrf"}
    assert all(counts.get(("train", lb), 0) > counts.get(("val", lb), 0) for lb in labels)
    assert split.params["test_source"] == "hrf" and split.params["unseen_labels"] == []
    # Its hash differs from every other scheme's and from holding out another source.
    others = [make_split(table, s, seed=0, val_frac=0.25) for s in ("stratified", "kfold", "authors")]
    others.append(make_split(table, "leave_source_out", seed=0, val_frac=0.25, test_source="fives"))
    assert len({split.hash, *(o.hash for o in others)}) == 5
    again = read_split(write_split(split, tmp_path))
    assert again.hash == split.hash and again.scheme == "leave_source_out"
    assert again.params["test_source"] == "hrf"


def test_leave_source_out_warns_for_a_label_only_the_held_out_source_has(
    synth_study: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FIVES is the only source of amd: the type task still learns every test image, the disease task not."""
    with caplog.at_level("WARNING", logger="mdf_search.data.splits"):
        split = make_split(_study(synth_study), "leave_source_out", test_source="fives")
    assert split.params["unseen_labels"] == ["amd"]
    assert "['amd']" in caplog.text and "unlearnable for the disease task" in caplog.text


def test_leave_source_out_refuses_a_type_training_never_sees(synth_study: Path) -> None:
    """StoneRounds holds every inherited case: held out, the inherited test images are unlearnable."""
    with pytest.raises(DataError, match=r"no 'inherited' \(\d+ test images\) image in train/val") as err:
        make_split(_study(synth_study), "leave_source_out", test_source="stonerounds")
    assert "unlearnable" in str(err.value) and "data.text" in str(err.value)


def test_leave_source_out_bad_arguments(synth_study: Path) -> None:
    table = _study(synth_study)
    with pytest.raises(DataError, match=r"'FIVES' is not a source.*'fives' \(\d+ images\), 'hrf'"):
        make_split(table, "leave_source_out", test_source="FIVES")
    with pytest.raises(ValueError, match="test_source is needed with scheme 'leave_source_out'"):
        make_split(table, "leave_source_out")
    with pytest.raises(ValueError, match=r"only there, but got \(scheme='stratified', test_source='hrf'\)"):
        make_split(table, "stratified", test_source="hrf")
    with pytest.raises(DataError, match="at least two sources"):
        make_split(_manifest(8), "leave_source_out", test_source="s")
