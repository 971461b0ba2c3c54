"""`mdf-search data ...` through Typer's CliRunner: exit codes 0 and 2, messages, no tracebacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import Result

from mdf_search.data.schema import read_manifest
from tests.cli.helpers import invoke
from tests.cli.helpers import plain as _plain


def data(*args: str) -> Result:
    return invoke("data", *args)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """``data synth``: a 24-image study (48 px) and the command's result; treat the study as read-only."""
    out = tmp_path_factory.mktemp("data") / "syn"
    return out, data("synth", "--out", str(out), "--images", "24", "--size", "48", "--seed", "1")


def test_synth_prepare_split_cache(synth: tuple[Path, Result], tmp_path: Path) -> None:
    out, result = synth
    assert result.exit_code == 0, result.output
    assert f"wrote 24 images (48 px, severity 1, seed 1) to {out}" in _plain(result.stdout)
    assert (out / "manifest.parquet").is_file()
    manifest = tmp_path / "m.parquet"
    sources = ["--fives", str(out / "FIVES"), "--hrf", str(out / "HRF")]
    sources += ["--stonerounds", str(out / "StoneRounds/manifest.csv")]
    result = data("prepare", *sources, "--out", str(manifest))
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    assert "24 images" in text and "stonerounds" in text and "100%" in text and "stargardt" in text
    result = data(
        "split", "--manifest", str(manifest), "--out", str(tmp_path / "splits"), "--scheme", "authors"
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "splits").glob("split-*.parquet"))) == 1
    held = ["split", "--manifest", str(manifest), "--out", str(tmp_path / "splits")]
    result = data(*held, "--scheme", "leave_source_out", "--test-source", "hrf")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "splits").glob("split-*.parquet"))) == 2
    result = data(*held, "--scheme", "leave_source_out", "--test-source", "stonerounds")
    assert result.exit_code == 2 and "unlearnable" in _plain(result.output)
    result = data("cache", "--manifest", str(manifest), "--root", str(tmp_path / "c"), "--size", "32")
    assert result.exit_code == 0, result.output
    assert "cache:" in result.output


def test_bad_input_exits_2_with_the_file_named(synth: tuple[Path, Result], tmp_path: Path) -> None:
    study_copy = tmp_path / "study"
    shutil.copytree(synth[0], study_copy)
    victim = sorted((study_copy / "FIVES/test/Original").glob("*.png"))[0]
    victim.write_bytes(b"nonsense")
    out = tmp_path / "m.parquet"
    result = data("prepare", "--fives", str(study_copy / "FIVES"), "--out", str(out))
    assert result.exit_code == 2
    text = _plain(result.output)
    assert text.startswith("error: ") and text.count("error:") == 1
    assert victim.name in text and "corrupt" in text and "Traceback" not in text
    assert not out.exists()
    result = data("prepare", "--fives", str(study_copy / "FIVES"), "--out", str(out), "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "Skipped 1 file" in _plain(result.output) and victim.name in _plain(result.output)
    assert str(victim) not in read_manifest(out)[0].column("image_path").to_pylist()


def test_missing_directory_and_bad_options(tmp_path: Path) -> None:
    result = data("prepare", "--hrf", str(tmp_path / "none"), "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "HRF directory not found" in _plain(result.output)
    result = data("prepare", "--out", str(tmp_path / "m"), "--diagnosis", "oops")
    assert result.exit_code == 2 and "expected 'Diagnosis name=label'" in _plain(result.output)
    result = data("split", "--manifest", str(tmp_path / "nope.parquet"), "--out", str(tmp_path))
    assert result.exit_code == 2 and "manifest file not found" in _plain(result.output)
    result = data("synth", "--out", str(tmp_path / "s"), "--images", "5")
    assert result.exit_code == 2  # Typer's own range check
