"""Every kind of bad input fails with the file named and nothing written, or is skipped and listed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mdf_search.data.schema import DataError, read_manifest
from mdf_search.data.sources import prepare
from tests.data.conftest import png_header


def _sources(root: Path) -> dict[str, Any]:
    return {"fives": root / "FIVES", "hrf": root / "HRF", "stonerounds": root / "StoneRounds/manifest.csv"}


def _first_fives(root: Path) -> Path:
    return sorted((root / "FIVES/train/Original").glob("*.png"))[0]


def _assert_nothing_written(folder: Path) -> None:
    assert not (folder / "out.parquet").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: FIVES directory not found"):
        prepare(tmp_path / "out.parquet", fives=tmp_path / "nowhere")
    _assert_nothing_written(tmp_path)


def test_no_source_given(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data source"):
        prepare(tmp_path / "out.parquet")


def test_corrupt_image_is_named_and_skippable(study_copy: Path, tmp_path: Path) -> None:
    bad = _first_fives(study_copy)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    garbage = study_copy / "HRF/images/01_h.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError) as info:
        prepare(tmp_path / "out.parquet", **_sources(study_copy))
    text = str(info.value)
    assert str(bad) in text and str(garbage) in text and "corrupt" in text and "--skip-bad" in text
    _assert_nothing_written(tmp_path)
    result = prepare(tmp_path / "out.parquet", skip_bad=True, **_sources(study_copy))
    assert {s.path for s in result.skipped} == {str(bad), str(garbage)}
    table, _ = read_manifest(tmp_path / "out.parquet")
    assert str(bad) not in table.column("image_path").to_pylist()


def test_unknown_fives_letter(study_copy: Path, tmp_path: Path) -> None:
    original = study_copy / "FIVES/train/Original"
    shutil.copy(_first_fives(study_copy), original / "5_X.png")
    with pytest.raises(DataError, match=r"5_X\.png: label letter 'X' is not one of"):
        prepare(tmp_path / "out.parquet", fives=study_copy / "FIVES")
    _assert_nothing_written(tmp_path)
    result = prepare(tmp_path / "out.parquet", fives=study_copy / "FIVES", skip_bad=True)
    assert [Path(s.path).name for s in result.skipped] == ["5_X.png"]


def test_manifest_missing_columns(tmp_path: Path) -> None:
    csv = tmp_path / "sr.csv"
    csv.write_text("image_path,case_id\na.png,1\n")
    with pytest.raises(DataError) as info:
        prepare(tmp_path / "out.parquet", stonerounds=csv)
    assert "sr.csv: missing column 'clinical_text'" in str(info.value)
    assert "sr.csv: missing column 'diagnosis'" in str(info.value)
    _assert_nothing_written(tmp_path)


def test_manifest_empty_required_value(tmp_path: Path, synth_study: Path) -> None:
    image = next((synth_study / "StoneRounds/images").glob("*.png"))
    csv = tmp_path / "sr.csv"
    csv.write_text(f"image_path,case_id,clinical_text,diagnosis\n{image},,text,Retinitis pigmentosa\n")
    with pytest.raises(DataError, match=r"column 'case_id' is empty in 1 row\(s\), e.g. rows \[1\]"):
        prepare(tmp_path / "out.parquet", stonerounds=csv)


def test_unknown_diagnosis(study_copy: Path, tmp_path: Path) -> None:
    csv = study_copy / "StoneRounds/manifest.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace("Retinitis pigmentosa", "Mystery maculopathy")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"manifest.csv: unknown diagnosis name\(s\) \['Mystery maculopathy'\]"
    ):
        prepare(tmp_path / "out.parquet", stonerounds=csv)
    _assert_nothing_written(tmp_path)
    result = prepare(tmp_path / "out.parquet", stonerounds=csv, skip_bad=True)
    assert len(result.skipped) == 1 and "Mystery maculopathy" in result.skipped[0].reason
    ok = prepare(tmp_path / "out2.parquet", stonerounds=csv, extra_diagnoses={"Mystery maculopathy": "rp"})
    assert not ok.skipped


def test_image_referenced_twice_with_two_labels(tmp_path: Path, synth_study: Path) -> None:
    image = next((synth_study / "FIVES/train/Original").glob("*_N.png"))
    csv = tmp_path / "g.csv"
    csv.write_text(f"image_path,case_id,label\n{image},a,normal\n{image},b,dr\n")
    with pytest.raises(DataError, match=r"referenced 2 times with different labels \['dr', 'normal'\]"):
        prepare(tmp_path / "out.parquet", manifests=[csv])
    _assert_nothing_written(tmp_path)
    with pytest.raises(DataError, match="no usable images"):
        prepare(tmp_path / "out.parquet", manifests=[csv], skip_bad=True)


def test_case_split_across_two_labels(tmp_path: Path, synth_study: Path) -> None:
    a, b, c = sorted((synth_study / "FIVES/train/Original").glob("*.png"))[:3]
    csv = tmp_path / "g.csv"
    csv.write_text(f"image_path,case_id,label\n{a},p1,normal\n{b},p1,dr\n{c},p2,dr\n")
    with pytest.raises(DataError, match=r"case 'g/p1' has images with different labels \['dr', 'normal'\]"):
        prepare(tmp_path / "out.parquet", manifests=[csv])
    result = prepare(tmp_path / "out.parquet", manifests=[csv], skip_bad=True)
    assert {s.path for s in result.skipped} == {str(a), str(b)}
    assert result.rows == 1


def test_bad_generic_split_and_type(tmp_path: Path, synth_study: Path) -> None:
    a, b = sorted((synth_study / "FIVES/train/Original").glob("*.png"))[:2]
    csv = tmp_path / "g.csv"
    csv.write_text(f"image_path,case_id,label,authors_split\n{a},p1,weird,train\n{b},p2,dr,holdout\n")
    with pytest.raises(DataError) as info:
        prepare(tmp_path / "out.parquet", manifests=[csv])
    assert "row 1 of g.csv: label 'weird' is not a known disease; give it a disease_type" in str(info.value)
    assert "authors_split must be train, test or empty, got 'holdout'" in str(info.value)


def test_missing_image_referenced_by_manifest(tmp_path: Path) -> None:
    csv = tmp_path / "g.csv"
    csv.write_text("image_path,case_id,label\nimgs/none.png,p1,normal\n")
    with pytest.raises(DataError, match=r"imgs/none\.png: row 1 of g\.csv: image file not found"):
        prepare(tmp_path / "out.parquet", manifests=[csv])


def test_failed_prepare_keeps_previous_manifest(study_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    prepare(out, fives=study_copy / "FIVES")
    before = out.read_bytes()
    _first_fives(study_copy).write_bytes(b"broken")
    with pytest.raises(DataError, match="already exists; pass --force"):
        prepare(out, fives=study_copy / "FIVES")
    with pytest.raises(DataError, match="not an image"):
        prepare(out, fives=study_copy / "FIVES", force=True)
    assert out.read_bytes() == before


# ---------------------------------------------------------------------------------------------------
# Images too large, symbolic links, an existing manifest (issue 13, finding 8)
# ---------------------------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    from tests.cli.helpers import invoke, plain

    result = invoke("data", *args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, plain(result.stdout + result.stderr)


def test_bombs_huge_images_and_bad_links_are_skipped_and_listed(study_copy: Path, tmp_path: Path) -> None:
    """With --skip-bad each is left out and listed by path: none is a traceback, none dropped silently.
    The headers claim sizes their few bytes cannot hold, so only the header was read."""
    original = study_copy / "FIVES/train/Original"
    bomb, huge, loop, dangling = (original / n for n in ("1_A.png", "2_A.png", "15_N.png", "30_D.png"))
    bomb.write_bytes(png_header(30000, 30000))
    huge.write_bytes(png_header(12000, 12000))
    loop.unlink()
    loop.symlink_to(loop.name)
    dangling.symlink_to("gone.png")
    out = tmp_path / "out.parquet"
    code, text = _cli("prepare", "--fives", str(study_copy / "FIVES"), "--out", str(out))
    assert code == 2 and not out.exists() and "Traceback" not in text
    code, text = _cli("prepare", "--fives", str(study_copy / "FIVES"), "--out", str(out), "--skip-bad")
    assert code == 0, text
    assert "Skipped 4 file(s)" in text
    for path, why in (
        (bomb, "decompression bomb"),
        (huge, "12000x12000 px"),
        (loop, "symbolic link loop"),
        (dangling, "broken symbolic link"),
    ):
        assert f"{path} │ " in text and why in text
    listed = read_manifest(out)[0].column("image_path").to_pylist()
    assert not {str(p) for p in (bomb, huge, loop, dangling)} & set(listed)


def test_size_limit_reads_only_the_header(tmp_path: Path) -> None:
    from mdf_search.data.readers import MAX_IMAGE_SIDE, probe_image

    ok, big = tmp_path / "ok.png", tmp_path / "big.png"
    ok.write_bytes(png_header(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # at the limit: its (empty) pixels unread
    big.write_bytes(png_header(MAX_IMAGE_SIDE + 1, 64))
    assert probe_image(ok) == (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
    with pytest.raises(DataError, match=rf"big\.png: image is {MAX_IMAGE_SIDE + 1}x64 px; images must be"):
        probe_image(big)


def test_force_replaces_an_existing_manifest_atomically(study_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    out.write_bytes(b"an older manifest")
    code, text = _cli("prepare", "--hrf", str(study_copy / "HRF"), "--out", str(out))
    assert code == 2 and "already exists; pass --force" in text and out.read_bytes() == b"an older manifest"
    code, text = _cli("prepare", "--hrf", str(study_copy / "HRF"), "--out", str(out), "--force")
    assert code == 0, text
    assert read_manifest(out)[0].num_rows == 8
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_synth_force_replaces_the_study_and_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    args = ("synth", "--out", str(out), "--images", "12", "--size", "32")
    assert _cli(*args, "--seed", "1")[0] == 0
    (out / "notes.txt").write_text("mine")
    first = read_manifest(out / "manifest.parquet")[0]
    code, text = _cli(*args, "--seed", "2")
    assert code == 2 and "already holds a study" in text and "--force" in text
    code, text = _cli(*args, "--seed", "2", "--force")
    assert code == 0, text
    second = read_manifest(out / "manifest.parquet")[0]
    assert (out / "notes.txt").read_text() == "mine"
    assert first["clinical_text"].to_pylist() != second["clinical_text"].to_pylist()  # another draw
    assert all(
        Path(p).is_file() and str(p).startswith(str(out.resolve())) for p in second["image_path"].to_pylist()
    )
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temp or old copies left


def test_duplicate_rows_are_named_and_skippable(tmp_path: Path, synth_study: Path) -> None:
    a, b = sorted((synth_study / "FIVES/train/Original").glob("*.png"))[:2]
    csv = tmp_path / "g.csv"
    csv.write_text(f"image_path,case_id,label\n{a},p1,normal\n{b},p2,dr\n{a},p1,normal\n")
    with pytest.raises(DataError, match=r"rows 1 and 3 of g\.csv list the same image; delete the duplicate"):
        prepare(tmp_path / "out.parquet", manifests=[csv])
    result = prepare(tmp_path / "out.parquet", manifests=[csv], skip_bad=True)
    assert result.rows == 2 and [s.path for s in result.skipped] == [str(a)]


def test_utf8_with_byte_order_mark_is_read(tmp_path: Path, synth_study: Path) -> None:
    image = sorted((synth_study / "FIVES/train/Original").glob("*.png"))[0]
    csv = tmp_path / "g.csv"
    csv.write_bytes(f"image_path,case_id,label\n{image},p1,normal\n".encode("utf-8-sig"))  # Excel's CSV UTF-8
    assert prepare(tmp_path / "out.parquet", manifests=[csv]).rows == 1
