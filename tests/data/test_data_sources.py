"""Readers parse generated trees in each real layout, odd spellings and stray files included."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from mdf_search.data.readers import read_fives, read_hrf
from mdf_search.data.schema import MANIFEST_SCHEMA, LabelSpace, read_manifest, write_manifest
from mdf_search.data.sources import prepare
from mdf_search.data.tables import read_generic, read_stonerounds


def test_fives_reads_both_mask_spellings_and_ignores_stray_files(synth_study: Path) -> None:
    root = synth_study / "FIVES"
    assert (root / "train/Ground truth").is_dir() and (root / "test/Groud truth").is_dir()
    assert (root / "train/Original/Thumbs.db").is_file() and (root / "Quality Assessment.xlsx").is_file()
    result = read_fives(root)
    originals = [p for s in ("train", "test") for p in (root / s / "Original").glob("*.png")]
    assert len(result.rows) == len(originals)
    assert not result.skipped
    assert all(r["vessel_mask_path"] and Path(r["vessel_mask_path"]).is_file() for r in result.rows)
    assert {r["authors_split"] for r in result.rows} == {"train", "test"}
    assert {r["label"] for r in result.rows} == {"amd", "dr", "glaucoma", "normal"}
    row = next(r for r in result.rows if r["image_path"].endswith("test/Original/1_A.png"))
    assert row["case_id"] == "fives/test/1" and row["label"] == "amd" and row["disease_type"] == "acquired"
    assert Path(row["image_path"]).is_absolute() and row["width"] == row["height"] == 96


def test_fives_accepts_a_wrapping_folder(study_copy: Path, tmp_path: Path) -> None:
    wrapper = tmp_path / "download"
    wrapper.mkdir()
    (study_copy / "FIVES").rename(wrapper / "FIVES A Fundus Image Dataset")
    assert len(read_fives(wrapper).rows) > 0


def test_hrf_upper_case_extension_masks_and_fov(synth_study: Path) -> None:
    result = read_hrf(synth_study / "HRF")
    dr = [r for r in result.rows if r["label"] == "dr"]
    assert dr and all(r["image_path"].endswith(".JPG") for r in dr)
    assert {r["label"] for r in result.rows} == {"normal", "glaucoma", "dr"}
    for r in result.rows:
        assert r["vessel_mask_path"].endswith(".tif") and r["fov_mask_path"].endswith("_mask.tif")
        assert r["width"] == 144 and r["height"] == 96  # 3:2 frames
    assert len({r["case_id"] for r in result.rows}) == len(result.rows)  # 01_h and 01_dr are different people


def test_stonerounds_manifest_maps_diagnoses_and_keeps_text(synth_study: Path) -> None:
    result = read_stonerounds(synth_study / "StoneRounds/manifest.csv")
    assert {r["label"] for r in result.rows} == {"rp", "stargardt"}
    assert all(r["disease_type"] == "inherited" and r["clinical_text"] for r in result.rows)
    cases = pl.DataFrame(result.rows).group_by("case_id").len()
    assert min(cases["len"].to_list()) >= 2  # several images per case
    assert {r["eye"] for r in result.rows} == {"OD", "OS"}


def test_stonerounds_extra_diagnosis_and_parquet(tmp_path: Path, synth_study: Path) -> None:
    frame = pl.read_csv(synth_study / "StoneRounds/manifest.csv", infer_schema=False)
    frame = frame.with_columns(
        pl.col("image_path").map_elements(
            lambda p: str(synth_study / "StoneRounds" / p), return_dtype=pl.String
        ),
        pl.when(pl.col("diagnosis") == "Stargardt disease")
        .then(pl.lit("Fundus albipunctatus"))
        .otherwise(pl.col("diagnosis"))
        .alias("diagnosis"),
    )
    path = tmp_path / "sr.parquet"
    frame.write_parquet(path)
    result = read_stonerounds(path, extra_diagnoses={"fundus albipunctatus": "albipunctatus"})
    assert {r["label"] for r in result.rows} == {"rp", "albipunctatus"}


def test_generic_manifest(tmp_path: Path, synth_study: Path) -> None:
    images = sorted((synth_study / "FIVES/train/Original").glob("*.png"))[:3]
    csv = tmp_path / "mine.csv"
    lines = ["image_path,case_id,label,clinical_text,authors_split"]
    lines += [f"{p},p{i},normal,note {i},train" for i, p in enumerate(images)]
    csv.write_text("\n".join(lines) + "\n")
    result = read_generic(csv)
    assert [r["case_id"] for r in result.rows] == ["mine/p0", "mine/p1", "mine/p2"]
    assert all(r["source"] == "mine" and r["disease_type"] == "healthy" for r in result.rows)


def test_prepare_combines_sources_with_one_vocabulary(synth_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    result = prepare(
        out,
        fives=synth_study / "FIVES",
        hrf=synth_study / "HRF",
        stonerounds=synth_study / "StoneRounds/manifest.csv",
    )
    table, space = read_manifest(out)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert space.diseases == ("normal", "dr", "amd", "glaucoma", "rp", "stargardt")
    assert space.types == ("healthy", "acquired", "inherited")
    assert result.rows == table.num_rows == sum(result.counts.values())
    assert result.text_coverage == {"fives": 0.0, "hrf": 0.0, "stonerounds": 1.0}
    assert not list(tmp_path.glob(".*tmp*"))


def test_label_space_round_trips_through_parquet_metadata(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(
        [
            {
                "image_path": "/x.png",
                "source": "s",
                "case_id": "s/1",
                "label": "zeta",
                "disease_type": "inherited",
                "clinical_text": "",
                "vessel_mask_path": "",
                "fov_mask_path": "",
                "width": 1,
                "height": 1,
            }
        ],
        schema=MANIFEST_SCHEMA,
    )
    write_manifest(table, tmp_path / "m.parquet")
    _, space = read_manifest(tmp_path / "m.parquet")
    assert space == LabelSpace(("zeta",), disease_types={"zeta": "inherited"})
    assert space.type_index("zeta") == 2
    with pytest.raises(ValueError, match="no disease type"):
        LabelSpace(("unknown_thing",))
