"""``run.checkpoint``: which epochs save model state, what a restarted run does with the latest
checkpoint, and what ``export`` says of a checkpoint without weights (``train/checkpoint.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdf_search.config import ConfigError, TrialConfig
from mdf_search.data.schema import LabelSpace
from mdf_search.train import checkpoint
from mdf_search.train.checkpoint import Kind, Resume, TrialState, checkpoint_kind, resume_action

M, L, N = Kind.MODEL, Kind.LIGHT, Kind.NONE


@pytest.mark.parametrize(
    ("policy", "middle", "middle_selected", "last"),
    [
        ("every_epoch", M, M, M),  # today's behaviour: every report resumes exactly
        ("last", N, L, M),  # weights at the last epoch only; predictions ride light checkpoints
        ("none", N, L, L),  # never weights; the last epoch still leaves its metrics for a re-report
    ],
)
def test_checkpoint_kind_per_policy(policy: str, middle: Kind, middle_selected: Kind, last: Kind) -> None:
    assert checkpoint_kind(policy, last_epoch=False, newly_selected=False) == middle
    assert checkpoint_kind(policy, last_epoch=False, newly_selected=True) == middle_selected
    assert checkpoint_kind(policy, last_epoch=True, newly_selected=False) == last
    assert checkpoint_kind(policy, last_epoch=True, newly_selected=True) == last


def test_an_unknown_policy_is_refused_by_the_config_and_by_the_decision() -> None:
    with pytest.raises(ConfigError, match=r"run\.checkpoint"):
        TrialConfig.from_flat({"run.checkpoint": "sometimes"})
    with pytest.raises(ValueError, match="every_epoch, last or none"):
        checkpoint_kind("sometimes", last_epoch=False, newly_selected=True)


def test_the_policy_is_not_part_of_the_arm_s_config_hash() -> None:
    base = TrialConfig.from_flat({})
    assert base.run.checkpoint == "every_epoch"
    for policy in ("last", "none"):
        assert base.replace(**{"run.checkpoint": policy}).config_hash() == base.config_hash()


@pytest.mark.parametrize(
    ("epoch", "has_model", "has_metrics", "action"),
    [
        (None, False, False, Resume.FRESH),  # no checkpoint yet
        (0, True, True, Resume.MODEL),  # every_epoch, killed after epoch 1 of 3: resume after it
        (0, False, True, Resume.FRESH),  # last/none, killed after epoch 1: nothing to resume, start over
        (2, True, True, Resume.REPORT_AGAIN),  # finished (model): report the final metrics again
        (2, False, True, Resume.REPORT_AGAIN),  # finished (none: a light last checkpoint) likewise
        (2, True, False, Resume.MODEL),  # a checkpoint from before reports were kept in it
    ],
)
def test_resume_action(epoch: int | None, has_model: bool, has_metrics: bool, action: Resume) -> None:
    assert resume_action(epoch, has_model=has_model, has_metrics=has_metrics, epochs=3) == action


def _light(directory: Path, policy: str, epoch: int = 1) -> Path:
    params = TrialConfig.from_flat({"run.checkpoint": policy, "optim.epochs": 3}).to_flat()
    space = LabelSpace(("normal", "dr"))
    state = TrialState(epoch, 0.5, params, space.to_json(), {"metrics": {"epoch": epoch + 1}})
    directory.mkdir(parents=True)
    checkpoint.write_state(directory, state, Kind.LIGHT)
    return directory


def test_a_light_checkpoint_round_trips_and_holds_no_model(tmp_path: Path) -> None:
    directory = _light(tmp_path / "light", "none")
    assert not checkpoint.has_model(directory)
    assert json.loads((directory / "trial.json").read_text())["kind"] == "light"
    state = checkpoint.read_state(directory)
    assert state.epoch == 1 and state.best_metric == 0.5 and state.extra["metrics"] == {"epoch": 2}
    (directory / checkpoint.TAG).mkdir()
    assert checkpoint.has_model(directory)


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ("none", "ran with run.checkpoint=none and kept no weights"),
        ("last", "only the trial's last epoch (3) saves weights"),
    ],
)
def test_export_says_why_a_light_checkpoint_has_no_weights(tmp_path: Path, policy: str, says: str) -> None:
    directory = _light(tmp_path / policy, policy)
    with pytest.raises(FileNotFoundError, match="holds no weights") as raised:
        checkpoint.export_checkpoint(directory, tmp_path / "out")
    assert says in str(raised.value) and "epoch 2" in str(raised.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="not an mdf-search checkpoint"):
        checkpoint.export_checkpoint(tmp_path, tmp_path / "out")


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    from mdf_search.train.deepspeed import safe_load

    torch.save(checkpoint._rng_state(), tmp_path / "rank0.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint._set_rng_state(safe_load(tmp_path / "rank0.pt"))  # weights_only=True, no allow-list needed
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_a_legacy_rng_file_with_numpy_arrays_still_loads(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    from mdf_search.train.deepspeed import UnsafeFile, safe_load

    legacy = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(legacy, tmp_path / "rank0.pt")
    with pytest.raises(UnsafeFile):  # numpy's classes are allowed for the rng role only
        safe_load(tmp_path / "rank0.pt")
    expected = np.random.rand(2)
    checkpoint._set_rng_state(safe_load(tmp_path / "rank0.pt", legacy_numpy=True))
    assert np.array_equal(np.random.rand(2), expected)
