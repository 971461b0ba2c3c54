"""`mdf-search validate --deep`: every arm's model at full preset size through one step, fake tensors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mdf_search.cli import app
from mdf_search.config import TrialConfig
from mdf_search.search.deep import ModuleTracker, check_config, check_files

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))
ONE_TILE = {"max_num_tiles": 1, "supported_aspect_ratios": [[1, 1]]}  # the pre-issue-10 batch layout

SPEC = """\
experiment: deep_tiny
description: the layouts and switches a tiny study can combine
metric: val/macro_f1
mode: max
design: ofat
seeds: [0]
budget: {trials: 4, epochs: 1}
scheduler: {type: none}
baseline: {fusion.levels: none}
reference: {fusion.levels: "13", data.vision_tiles: 1, data.image: "on"}
scientific:
  fusion.levels: [none, "13"]
  data.vision_tiles: [1, 4]
  data.image: ["on", "off"]
nuisance:
  fusion.injection: {choices: [concat], when: {fusion.levels: {not: none}}, otherwise: none}
fixed:
  model.preset: tiny
  film.placement: enc
  data.text: shuffled
  optim.micro_batch: 2
  data.max_text_tokens: 24
resources: {workers: 1, concurrent_trials: 1, gpus_per_worker: 0}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "deep_tiny.yaml"
    path.write_text(SPEC)
    return path


def test_validate_deep_runs_every_arm_of_a_tiny_spec(spec: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "--deep", str(spec)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    ok = [line for line in result.output.splitlines() if line.startswith("  ok    ")]
    assert len(ok) == 4 and all("fake tensors" in line for line in ok), result.output
    assert "data.vision_tiles=4" in result.output and "data.image=off" in result.output
    assert "all 4 arm(s) passed the deep check" in result.output


def test_a_one_tile_batch_on_a_four_tile_backbone_fails_naming_arm_module_and_shapes(spec: Path) -> None:
    """The issue-10 bug, provoked through the Collator's public vision config: exit 2, and the report says
    which arm, which module, and the shapes it got."""
    code, lines = check_files([spec], batch_vision=ONE_TILE)
    report = "\n".join(lines)
    assert code == 2
    assert "4 of 4 arm(s) FAILED" in report
    assert (
        "FAIL  fusion.levels=13|data.vision_tiles=1|data.image=on: forward in mllama.model.vision_model "
        in report
    )
    assert "(MllamaVisionModel) (fake tensors): RuntimeError: shape '[2, 16, 32]' is invalid" in report
    assert "module inputs: pixel_values (2, 1, 1, 3, 64, 64) float32" in report
    assert "aspect_ratio_mask (2, 1, 1) int64" in report
    # A four-tile arm cannot even be laid out on a one-tile vision config: the Collator says so.
    assert "FAIL  fusion.levels=13|data.vision_tiles=4|data.image=on: collate (not run): ValueError" in report


def test_auto_mode_tries_the_meta_device_first() -> None:
    """docs/stack-facts.md: the meta device stops at transformers' masking (Tensor.item()); fake tensors go through."""
    cfg = TrialConfig.from_flat({"optim.micro_batch": 2, "data.max_text_tokens": 16})
    auto = check_config(cfg, "a", mode="auto")
    assert auto.ok and auto.mode == "fake tensors" and "item()" in auto.meta_error
    meta = check_config(cfg, "m", mode="meta")
    assert not meta.ok and meta.mode == "meta device" and meta.phase == "forward"
    assert meta.module == "mllama.model.language_model (MllamaTextModel)"


def test_arms_with_the_same_model_and_batch_run_once(tmp_path: Path) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text(
        "experiment: lr\nmetric: val/macro_f1\nmode: max\ndesign: grid\nseeds: [0]\n"
        "budget: {trials: 2, epochs: 1}\nscheduler: {type: none}\n"
        "scientific:\n  optim.lr: [0.001, 0.0001]\n"
        "fixed: {model.preset: tiny, optim.micro_batch: 2, data.max_text_tokens: 16}\n"
        "resources: {workers: 1, concurrent_trials: 1, gpus_per_worker: 0}\n"
    )
    code, lines = check_files([path])
    assert code == 0, lines
    assert any(
        "optim.lr=0.0001: same model and batch as optim.lr=0.001 (lr.yaml)" in line for line in lines
    ), lines


def test_module_tracker_names_the_innermost_running_module() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(3, -1)

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Boom()))
    tracker = ModuleTracker(model)
    model(torch.zeros(3, 4))  # finished modules leave the stack
    assert tracker.innermost() == ("", "")
    with pytest.raises(RuntimeError):
        model(torch.zeros(2, 4))
    assert tracker.innermost() == ("1.1 (Boom)", "arg0 (2, 4) float32")
    tracker.close()


@pytest.mark.integration
def test_every_shipped_space_passes_the_deep_check() -> None:
    """Every arm of every shipped study, the 11b ones at full size (seconds per arm, no weights)."""
    start = time.perf_counter()
    code, lines = check_files(SPACES)
    assert code == 0, "\n".join(lines)
    ran = [line for line in lines if line.startswith("  ok    ") and "same model" not in line]
    assert ran and all("fake tensors" in line for line in ran)
    assert time.perf_counter() - start < 60 * len(ran)  # measured: ~3 s of CPU per 11b arm
