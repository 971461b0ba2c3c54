"""A study's commands up to the point where Ray would start: ``validate``, and ``sweep`` and ``resume``
refusing a space or a directory before they connect to anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer

import mdf_search.cli.study
from tests.cli.helpers import invoke, plain

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "search_spaces/smoke.yaml"


def test_validate_a_shipped_space() -> None:
    result = invoke("validate", str(SMOKE))
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert f"{SMOKE}: ok: experiment smoke, design grid, 3 arm(s) x 3 seed(s) = 9 trials" in out
    assert "power: 3 shared seed(s), 2 arm(s) vs the baseline" in out and result.stderr == ""


def test_validate_lists_every_problem_of_every_file_and_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text('experiment: x\nscientific: {fusion.levels: [none, "13"]\n  nuisance: [\n')
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        "experiment: x\nmetric: val/macro_f1\nmode: max\ndesign: grid\nscientific: {fusion.levels: [none, '9']}\n"
    )
    result = invoke("validate", str(SMOKE), str(broken), str(wrong))
    assert result.exit_code == 2, result.output
    out = plain(result.stdout)
    assert f"{SMOKE}: ok" in out
    assert f"{broken}: INVALID (1 problem(s))" in out and "malformed YAML at line" in out
    assert f"{wrong}: INVALID (1 problem(s))" in out and "scientific.fusion.levels" in out


def test_sweep_of_a_broken_space_exits_2_with_one_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiment: x\nscientific: [\n")
    result = invoke("sweep", str(broken), "--storage", str(tmp_path / "runs"))
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert err.startswith("error: ") and err.count("error:") == 1 and str(broken) in err
    assert "malformed YAML" in err and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_resume_needs_an_experiment_directory(tmp_path: Path) -> None:
    result = invoke("resume", str(tmp_path))
    assert result.exit_code == 2
    assert plain(result.stderr) == (
        f"error: {tmp_path}: no spec.yaml; is this an experiment directory written by `mdf-search sweep`?"
    )
    # a spec.yaml that no longer validates is refused with its problems, before Ray starts
    shutil.copy(SMOKE, tmp_path / "spec.yaml")
    text = (tmp_path / "spec.yaml").read_text().replace("budget: {trials: 9", "budget: {trials: 2")
    (tmp_path / "spec.yaml").write_text(text)
    result = invoke("resume", str(tmp_path))
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert err.startswith(f"error: {tmp_path / 'spec.yaml'}: 1 problem(s): - ") and "budget.trials" in err


def _started_experiment(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "smoke"
    root.mkdir(parents=True)
    shutil.copy(SMOKE, root / "spec.yaml")
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    return root


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (instead of starting) the Ray that a command would connect to."""
    calls: list[str] = []

    def connect(*_: object, **__: object) -> None:
        calls.append("connect")
        raise typer.Exit(99)

    monkeypatch.setattr(mdf_search.cli.study, "connect", connect)
    return calls


def test_sweep_fresh_on_an_existing_experiment_refuses_before_ray_and_before_any_leaderboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_ray(monkeypatch)
    root = _started_experiment(tmp_path)
    result = invoke("sweep", str(SMOKE), "--storage", str(tmp_path / "runs"), "--fresh")
    assert result.exit_code == 2 and calls == [] and result.stdout == ""
    assert plain(result.stderr).startswith(f"error: {root}: the experiment exists (--fresh refuses")
    assert f"mdf-search resume {root}" in plain(result.stderr)


def test_sweep_continues_an_existing_experiment_of_the_same_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_ray(monkeypatch)
    _started_experiment(tmp_path)
    report_dir = str(tmp_path / "report")  # beside the results; a folder around them is refused
    result = invoke("sweep", str(SMOKE), "--storage", str(tmp_path / "runs"), "--report-dir", report_dir)
    assert result.exit_code == 99 and calls == ["connect"], result.output  # every check passed


def test_sweep_refuses_a_storage_it_cannot_write_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_ray(monkeypatch)
    (tmp_path / "runs").write_text("a file\n")
    result = invoke("sweep", str(SMOKE), "--storage", str(tmp_path / "runs"))
    assert result.exit_code == 2 and calls == []
    assert "is not a directory" in plain(result.stderr)


def test_resume_refuses_what_it_cannot_resume_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_ray(monkeypatch)
    root = _started_experiment(tmp_path)
    (root / "experiment_state-2026-01-01_00-00-00.json").unlink()
    result = invoke("resume", str(root))
    assert result.exit_code == 2 and calls == []
    assert "nothing to resume" in plain(result.stderr) and "mdf-search sweep" in plain(result.stderr)
    missing = invoke("resume", str(tmp_path / "runs" / "absent"))
    assert missing.exit_code == 2 and "no such directory" in plain(missing.stderr) and calls == []
    renamed = tmp_path / "runs" / "copy"
    shutil.copytree(_started_experiment(tmp_path / "b"), renamed)
    result = invoke("resume", str(renamed))
    assert result.exit_code == 2 and "names experiment 'smoke', but the directory is 'copy'" in plain(
        result.stderr
    )
    ok = invoke("resume", str(tmp_path / "b" / "runs" / "smoke"))
    assert ok.exit_code == 99 and calls == ["connect"], ok.output
