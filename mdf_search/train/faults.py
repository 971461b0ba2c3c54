"""Fault injection for the trial tests: a typed, frozen set of hooks, inert unless a test sets one.

Only tests set them (``tests/train/test_trial_integration.py``); a sweep or ``mdf-search train`` runs with
``Faults()``, where every hook is ``None`` and every method below does nothing. They cross Ray's process
edge inside Ray Train's loop config as a plain dict (:meth:`Faults.to_dict`, :meth:`Faults.from_dict`).

Where each hook fires in the epoch loop (``train/loop.py``):

- ``nan_at_step``: :meth:`Faults.diverge` on every training batch's loss, before the finiteness check;
- ``save_logits``: after the last epoch's report (the loop saves one validation batch and its logits);
- ``kill_after_*``: :meth:`Faults.kill_after_report` after every epoch's report;
- ``kill_at_step`` and ``oom_at_step``: :meth:`Faults.at_step` before every training batch (mid-epoch).

This module imports nothing heavy: the sweep driver builds a :class:`Faults` without torch or Ray.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Faults:
    """The fault hooks of one trial; ``None`` leaves a hook off."""

    nan_at_step: int | None = None
    """From this training batch on (counted from 0 across epochs), every rank's loss is multiplied by
    NaN: an injected divergence, which ends the trial as ``diverged``."""

    save_logits: str | None = None
    """A directory: after the last epoch, rank 0 saves one validation batch with the model's logits on
    it to ``<directory>/batch.pt`` (the export test reloads the exported model and compares)."""

    kill_after_epoch: int | None = None
    """After this 1-based epoch's report is recorded, rank 1 (rank 0 when alone) kills itself with
    SIGKILL, unless ``kill_marker`` exists: the run fails once and resumes when started again."""

    kill_marker: str | None = None
    """A file written just before the kill; once it exists the kill never fires again."""

    kill_wait_for: str | None = None
    """A JSON-lines file of recorded reports (an ``EpochLog``): the kill waits until it holds
    ``kill_after_epoch`` lines, so the epoch's report is on record before the rank dies."""

    kill_at_step: int | None = None
    """Before this training batch (counted from 0 across epochs), rank 1 (rank 0 when alone) kills
    itself with SIGKILL, mid-epoch, unless ``kill_marker`` exists (it is written just before the kill)."""

    oom_at_step: int | None = None
    """Before this training batch, every rank raises ``torch.cuda.OutOfMemoryError``: an injected,
    deterministic OOM, which ends the trial as ``oom`` (never retried)."""

    def __post_init__(self) -> None:
        if self.kill_at_step is not None and self.kill_marker is None:
            raise ValueError("kill_at_step needs kill_marker (the kill fires once, until it exists)")
        if self.kill_after_epoch is not None and (self.kill_marker is None or self.kill_wait_for is None):
            raise ValueError(
                f"kill_after_epoch needs kill_marker and kill_wait_for, but got "
                f"(kill_marker={self.kill_marker!r}, kill_wait_for={self.kill_wait_for!r})"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Faults:
        """The inverse of :meth:`to_dict`; ``None`` or ``{}`` is ``Faults()``. Unknown keys are refused."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault hooks {unknown}; the known ones are {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The hooks that are set (``{}`` for ``Faults()``): plain values for Ray's loop config."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def diverge(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """``loss``, or ``loss * NaN`` once ``step`` (training batches counted across epochs) reaches
        ``nan_at_step``."""
        if self.nan_at_step is not None and step >= self.nan_at_step:
            return loss * float("nan")
        return loss

    def kill_after_report(self, epoch: int, *, rank: int, world: int) -> None:
        """After the report of ``epoch`` (1-based): SIGKILL this process when it is the rank to kill and
        the marker does not exist yet (a no-op otherwise)."""
        if self.kill_after_epoch is None or epoch != self.kill_after_epoch or rank != 1 % world:
            return
        assert self.kill_marker is not None and self.kill_wait_for is not None  # __post_init__
        marker = Path(self.kill_marker)
        if marker.exists():
            return
        _wait_for_lines(Path(self.kill_wait_for), self.kill_after_epoch)
        marker.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)

    def at_step(self, step: int, *, rank: int, world: int) -> None:
        """Before training batch ``step`` (counted across epochs): the injected OOM on every rank, or the
        mid-epoch SIGKILL of the rank to kill while the marker does not exist (a no-op otherwise)."""
        if self.oom_at_step is not None and step == self.oom_at_step:
            import torch

            raise torch.cuda.OutOfMemoryError(f"injected OOM at training batch {step} (Faults.oom_at_step)")
        if self.kill_at_step is None or step != self.kill_at_step or rank != 1 % world:
            return
        assert self.kill_marker is not None  # __post_init__
        marker = Path(self.kill_marker)
        if not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_lines(path: Path, lines: int, timeout_s: float = 60.0) -> None:
    """Wait until ``path`` holds ``lines`` lines (the controller has recorded that many reports)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.2)
