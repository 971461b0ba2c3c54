"""Real Ray Train trials (tiny preset, DeepSpeed ZeRO-3 on gloo CPU workers, synthetic data): a worker
SIGKILLed mid-epoch, and a deterministic OOM injected into the epoch loop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from mdf_search.config import TrialConfig
from mdf_search.data.splits import read_split
from mdf_search.train.builders import TrialData, prepare_trial_data
from mdf_search.train.faults import Faults
from tests.train.test_trial_integration import SMALL, _run, _same_results

from .helpers import Figures

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(ray_cluster: Any) -> TrialData:
    return prepare_trial_data(TrialConfig.from_flat(SMALL))


def test_a_worker_killed_mid_epoch_resumes_to_the_uninterrupted_result(
    data: TrialData, tmp_path: Path
) -> None:
    """Rank 1 SIGKILLed halfway through epoch 2's batches: Ray Train restarts the worker group, which
    resumes from epoch 1's checkpoint; the final metrics equal an uninterrupted run's bit for bit."""
    figures = Figures("Train worker SIGKILLed mid-epoch")
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 2, "seed": 3})
    _, straight = _run(cfg, data, tmp_path, "straight")
    figures.runs += 1
    per_rank = math.ceil(len(read_split(data.split).rows("train")) / cfg.run.workers)
    steps = math.ceil(per_rank / cfg.optim.micro_batch)
    marker = tmp_path / "killed-marker"
    faults = Faults(kill_at_step=steps + steps // 2, kill_marker=str(marker))  # mid epoch 2
    result, epochs = _run(cfg, data, tmp_path, "killed", faults=faults, max_failures=1)
    figures.runs += 1
    assert marker.exists(), "the kill did not fire"
    figures.faults += 1
    assert result.error is None, result.error
    assert [e["epoch"] for e in epochs] == [1, 2]  # epoch 2 reported once, after the restart
    try:
        _same_results(epochs[-1], straight[-1])
    except AssertionError:
        figures.wrong_results += 1
        figures.record()
        raise
    figures.record()


def test_an_injected_oom_is_recorded_as_oom_not_a_crash(data: TrialData, tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 1, "run.workers": 1})
    result, epochs = _run(cfg, data, tmp_path, "oom", faults=Faults(oom_at_step=1))
    assert result.error is None  # a result, not an exception: nothing for Tune to retry
    assert epochs[-1]["status"] == "oom" and "injected OOM" in epochs[-1]["message"], epochs[-1]
