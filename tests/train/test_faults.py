"""The trial's fault hooks: inert by default, a round trip through Ray's loop config, each hook's trigger."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdf_search.train.faults import Faults


def test_the_default_is_inert_and_crosses_as_an_empty_dict() -> None:
    faults = Faults()
    assert faults.to_dict() == {} and Faults.from_dict({}) == Faults.from_dict(None) == faults
    loss = torch.tensor(1.5)
    assert all(faults.diverge(loss, step=s) is loss for s in (0, 10**6))
    faults.kill_after_report(1, rank=1, world=2)  # returns: nothing to kill


def test_round_trip_keeps_every_hook(tmp_path: Path) -> None:
    faults = Faults(
        nan_at_step=3,
        save_logits=str(tmp_path / "probe"),
        kill_after_epoch=2,
        kill_marker=str(tmp_path / "marker"),
        kill_wait_for=str(tmp_path / "epochs.jsonl"),
        kill_at_step=5,
        oom_at_step=7,
    )
    assert Faults.from_dict(faults.to_dict()) == faults
    assert Faults.from_dict({"nan_at_step": 2}) == Faults(nan_at_step=2)


def test_unknown_hooks_and_an_incomplete_kill_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown fault hooks \['nan_at'\]"):
        Faults.from_dict({"nan_at": 2})
    with pytest.raises(ValueError, match="kill_after_epoch needs kill_marker and kill_wait_for"):
        Faults(kill_after_epoch=1, kill_marker="m")
    with pytest.raises(ValueError, match="kill_at_step needs kill_marker"):
        Faults(kill_at_step=3)


def test_diverge_poisons_the_loss_from_its_step_on() -> None:
    faults = Faults(nan_at_step=2)
    loss = torch.tensor(0.5)
    assert [math.isnan(float(faults.diverge(loss, step=s))) for s in range(4)] == [False, False, True, True]


def test_the_kill_fires_once_on_its_rank_and_epoch(tmp_path: Path) -> None:
    """Run in a child process: the hook SIGKILLs the process it runs in."""
    log = tmp_path / "epochs.jsonl"
    log.write_text("{}\n")
    marker = tmp_path / "marker"
    faults = Faults(kill_after_epoch=1, kill_marker=str(marker), kill_wait_for=str(log))
    code = (
        "import sys; from mdf_search.train.faults import Faults; "
        f"f = Faults.from_dict({faults.to_dict()!r}); "
        "f.kill_after_report(1, rank=int(sys.argv[1]), world=int(sys.argv[2])); sys.exit(3)"
    )

    def run(rank: int, world: int) -> int:
        return subprocess.run([sys.executable, "-c", code, str(rank), str(world)], timeout=60).returncode

    assert run(0, 2) == 3 and not marker.exists()  # not the rank to kill
    assert run(0, 1) == -9 and marker.read_text() == "killed"  # alone, rank 0 is the one
    assert run(0, 1) == 3  # the marker exists: never again
    faults.kill_after_report(2, rank=1, world=2)  # another epoch: nothing happens here either


def test_the_injected_oom_is_torchs_own_and_fires_at_its_step_only() -> None:
    faults = Faults(oom_at_step=3)
    for step in (0, 2, 4):
        faults.at_step(step, rank=0, world=2)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="injected OOM at training batch 3"):
        faults.at_step(3, rank=1, world=2)  # every rank


def test_the_mid_epoch_kill_fires_once_on_its_rank_and_step(tmp_path: Path) -> None:
    """Run in a child process: the hook SIGKILLs the process it runs in."""
    marker = tmp_path / "marker"
    faults = Faults(kill_at_step=4, kill_marker=str(marker))
    code = (
        "import sys; from mdf_search.train.faults import Faults; "
        f"f = Faults.from_dict({faults.to_dict()!r}); "
        "[f.at_step(s, rank=int(sys.argv[1]), world=int(sys.argv[2])) for s in range(8)]; sys.exit(3)"
    )

    def run(rank: int, world: int) -> int:
        return subprocess.run([sys.executable, "-c", code, str(rank), str(world)], timeout=60).returncode

    assert run(0, 2) == 3 and not marker.exists()  # rank 0 of two is not the one
    assert run(1, 2) == -9 and marker.read_text() == "killed"
    assert run(1, 2) == 3  # the marker exists: never again
