"""Every shipped search space loads, validates (memory plans included) and opens with its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdf_search.search.designs import arms, num_trials
from mdf_search.search.space import load_spec
from mdf_search.search.validate import validate_files

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def test_the_expected_spaces_are_shipped() -> None:
    names = {p.stem for p in SPACES}
    assert {"smoke", "paper_ablation", "fusion_depth", "film", "freezing", "hpo"} <= names


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_space_validates(path: Path) -> None:
    code, lines = validate_files([path])
    assert code == 0, "\n".join(lines)
    assert lines[0].startswith(f"{path}: ok: experiment {path.stem}, design ")


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_space_opens_with_the_command_that_runs_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first == f"# mdf-search sweep search_spaces/{path.name}"


def test_smoke_is_small_enough_for_a_two_core_cpu() -> None:
    spec = load_spec(SPACES[[p.stem for p in SPACES].index("smoke")])
    assert num_trials(spec) <= 9
    assert spec.fixed["model.preset"] == "tiny" and spec.resources.gpus_per_worker == 0
    ids = [arm.id for arm in arms(spec)]
    assert ids[0] == "fusion.levels=none|data.order_salt=0"  # the baseline first
    # the calibration's two controls: the planted positive (fused) and the negative (data order only)
    assert set(ids[1:]) == {"fusion.levels=none|data.order_salt=1", "fusion.levels=23"}


def test_gpu_spaces_fit_their_declared_gpus() -> None:
    gpu = [p for p in SPACES if load_spec(p).resources.gpus_per_worker > 0]
    assert gpu, "the 11b spaces declare GPUs"
    code, lines = validate_files(gpu)
    assert code == 0, "\n".join(lines)
    assert all("memory up to" in line for line in lines if ": ok:" in line)
