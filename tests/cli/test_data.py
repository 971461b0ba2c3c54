"""`mdf-search data ...` through Typer's CliRunner: exit codes 0 and 2, messages, no tracebacks."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from mdf_search.data.cli import data_app
from mdf_search.data.schema import read_manifest

runner = CliRunner()


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def test_synth_prepare_split_cache(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    result = runner.invoke(
        data_app, ["synth", "--out", str(out), "--images", "24", "--size", "48", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "manifest.parquet").is_file()
    manifest = tmp_path / "m.parquet"
    result = runner.invoke(
        data_app,
        [
            "prepare",
            "--fives",
            str(out / "FIVES"),
            "--hrf",
            str(out / "HRF"),
            "--stonerounds",
            str(out / "StoneRounds/manifest.csv"),
            "--out",
            str(manifest),
        ],
    )
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    assert "24 images" in text and "stonerounds" in text and "100%" in text and "stargardt" in text
    result = runner.invoke(
        data_app,
        ["split", "--manifest", str(manifest), "--out", str(tmp_path / "splits"), "--scheme", "authors"],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "splits").glob("split-*.parquet"))) == 1
    held = ["split", "--manifest", str(manifest), "--out", str(tmp_path / "splits")]
    result = runner.invoke(data_app, [*held, "--scheme", "leave_source_out", "--test-source", "hrf"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "splits").glob("split-*.parquet"))) == 2
    result = runner.invoke(data_app, [*held, "--scheme", "leave_source_out", "--test-source", "stonerounds"])
    assert result.exit_code == 2 and "unlearnable" in _plain(result.output)
    result = runner.invoke(
        data_app, ["cache", "--manifest", str(manifest), "--root", str(tmp_path / "c"), "--size", "32"]
    )
    assert result.exit_code == 0, result.output
    assert "cache:" in result.output


def test_bad_input_exits_2_with_the_file_named(study_copy: Path, tmp_path: Path) -> None:
    victim = sorted((study_copy / "FIVES/test/Original").glob("*.png"))[0]
    victim.write_bytes(b"nonsense")
    out = tmp_path / "m.parquet"
    result = runner.invoke(data_app, ["prepare", "--fives", str(study_copy / "FIVES"), "--out", str(out)])
    assert result.exit_code == 2
    text = _plain(result.output)
    assert victim.name in text and "corrupt" in text and "Traceback" not in text
    assert not out.exists()
    result = runner.invoke(
        data_app, ["prepare", "--fives", str(study_copy / "FIVES"), "--out", str(out), "--skip-bad"]
    )
    assert result.exit_code == 0, result.output
    assert "Skipped 1 file" in _plain(result.output) and victim.name in _plain(result.output)
    assert str(victim) not in read_manifest(out)[0].column("image_path").to_pylist()


def test_missing_directory_and_bad_options(tmp_path: Path) -> None:
    result = runner.invoke(
        data_app, ["prepare", "--hrf", str(tmp_path / "none"), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2 and "HRF directory not found" in _plain(result.output)
    result = runner.invoke(data_app, ["prepare", "--out", str(tmp_path / "m"), "--diagnosis", "oops"])
    assert result.exit_code == 2 and "expected 'Diagnosis name=label'" in _plain(result.output)
    result = runner.invoke(
        data_app, ["split", "--manifest", str(tmp_path / "nope.parquet"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "manifest file not found" in _plain(result.output)
    result = runner.invoke(data_app, ["synth", "--out", str(tmp_path / "s"), "--images", "5"])
    assert result.exit_code == 2  # Typer's own range check
