"""Trial checkpoints: every rank saves its ZeRO shards, Ray merges them, a restart resumes exactly.

Layout of one model checkpoint directory (what Ray stores after merging every rank's upload)::

    mdf/                  DeepSpeed shards (model, optimizer, scheduler) under the tag "mdf"
    latest                DeepSpeed's tag pointer
    rng/rank{r}.pt        per-rank RNG states (torch, numpy, python)
    trial.json            rank 0: flat config, label space, epoch, best metric (everything an export needs)
    tokenizer/            rank 0: the trial's tokenizer
    predictions.parquet   rank 0: the selected epoch's predictions (``train/predictions.py``)

The policy ``run.checkpoint`` decides which epochs save model state (:func:`checkpoint_kind`):

- ``every_epoch`` (the default): every report carries a model checkpoint; any restart resumes from
  the last epoch reported.
- ``last``: only the trial's last epoch saves model state (the weights ``export`` reads); a trial that
  ASHA stops early keeps none.
- ``none``: no epoch saves model state.

An epoch that saves no model state but must hand something over reports a *light* checkpoint: rank 0's
``trial.json`` and ``predictions.parquet`` only (kilobytes), at an epoch that became the selected one
(the results writer copies the predictions from there, as from a model checkpoint) and at the trial's
last epoch (a finished trial started again reports its final metrics from it instead of training
again). Other epochs report no checkpoint.

Resuming (:func:`resume_action`): a Ray Train restart (a killed rank, a Tune retry, a restarted sweep)
finds the run's latest checkpoint. Model state: resume after its epoch, bit for bit. Light and the
trial's last epoch: report its final metrics again. Light otherwise: start over from epoch 0; a trial
is a deterministic function of its config and seed, so the final metrics are those of an uninterrupted
run (only the time is spent again). A trial stopped early by ASHA is never resumed.

``export_checkpoint`` consolidates the shards with DeepSpeed's ``zero_to_fp32`` into one safetensors
state dict (fp32 or bf16) that loads into :class:`MDFModel` without DeepSpeed.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from mdf_search.config import TrialConfig
from mdf_search.train.builders import build_model

log = logging.getLogger(__name__)
TAG = "mdf"
STATE_FILE = "trial.json"


class Kind(StrEnum):
    """What one epoch's report carries (:func:`checkpoint_kind`)."""

    MODEL = "model"  # every rank's DeepSpeed states, RNG; rank 0's trial.json, tokenizer, predictions
    LIGHT = "light"  # rank 0's trial.json and predictions only
    NONE = "none"  # no checkpoint


def checkpoint_kind(policy: str, *, last_epoch: bool, newly_selected: bool) -> Kind:
    """The checkpoint an epoch's report carries under ``run.checkpoint=policy``. ``last_epoch``: the
    trial's final epoch (it completes); ``newly_selected``: validation selected this epoch, so its
    predictions must reach the results writer. Identical on every rank (the inputs are)."""
    if policy == "every_epoch" or (policy == "last" and last_epoch):
        return Kind.MODEL
    if policy not in ("last", "none"):
        raise ValueError(f"run.checkpoint must be every_epoch, last or none, but got {policy!r}")
    return Kind.LIGHT if last_epoch or newly_selected else Kind.NONE


class Resume(StrEnum):
    """What a restarted run does with the latest checkpoint of its Train run (:func:`resume_action`)."""

    FRESH = "fresh"  # start at epoch 0 (no checkpoint, or one without model state mid-trial)
    REPORT_AGAIN = "report_again"  # the trial had finished: report its final metrics again
    MODEL = "model"  # load the model state and continue after its epoch


def resume_action(epoch: int | None, *, has_model: bool, has_metrics: bool, epochs: int) -> Resume:
    """``epoch``: the 0-based epoch of the latest checkpoint (None: no checkpoint); ``has_model``: it
    holds model state; ``has_metrics``: its trial.json keeps that epoch's report; ``epochs``: the
    trial's epochs."""
    if epoch is None:
        return Resume.FRESH
    if epoch + 1 >= epochs and has_metrics:
        return Resume.REPORT_AGAIN
    return Resume.MODEL if has_model else Resume.FRESH


def has_model(directory: Path) -> bool:
    """The checkpoint in ``directory`` holds DeepSpeed model state (not a light one)."""
    return (directory / TAG).is_dir()


@dataclass(frozen=True)
class TrialState:
    """What a resumed trial needs besides the DeepSpeed states."""

    epoch: int  # last completed epoch (0-based)
    best_metric: float | None  # the study metric at the selected epoch (its Selection's metric and mode)
    params: dict[str, Any]
    label_space: str  # LabelSpace JSON
    extra: dict[str, Any]


def save(engine: Any, directory: Path, state: TrialState, *, rank: int, tokenizer: Any | None) -> None:
    """Called on every rank with its own ``directory``; Ray merges the directories."""
    engine.save_checkpoint(str(directory), tag=TAG)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    (directory / "rng").mkdir(exist_ok=True)
    torch.save(rng, directory / "rng" / f"rank{rank}.pt")
    if rank == 0:
        write_state(directory, state, Kind.MODEL)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory / "tokenizer")


def write_state(directory: Path, state: TrialState, kind: Kind) -> None:
    """``trial.json``: rank 0's part of a checkpoint, and all of a light one with the predictions."""
    payload = {
        "kind": str(kind),
        "epoch": state.epoch,
        "best_metric": state.best_metric,
        "params": state.params,
        "label_space": json.loads(state.label_space),
        "extra": state.extra,
    }
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=1, default=str))


def load(engine: Any, directory: Path, *, rank: int) -> TrialState:
    """Restore DeepSpeed states and this rank's RNG; returns the trial state to continue from."""
    load_path, _ = engine.load_checkpoint(str(directory), tag=TAG)
    if load_path is None:
        raise RuntimeError(f"{directory}: DeepSpeed found no checkpoint under tag {TAG!r}")
    rng_file = directory / "rng" / f"rank{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return read_state(directory)


def read_state(directory: Path) -> TrialState:
    payload = json.loads((directory / STATE_FILE).read_text())
    return TrialState(
        epoch=int(payload["epoch"]),
        best_metric=payload["best_metric"],
        params=payload["params"],
        label_space=json.dumps(payload["label_space"]),
        extra=payload.get("extra", {}),
    )


def export_checkpoint(directory: str | Path, out: str | Path, *, dtype: str = "fp32") -> Path:
    """Consolidate ZeRO shards into ``out/model.safetensors`` (+ trial.json, tokenizer) for plain loading."""
    # deepspeed picks its accelerator when imported: only here, and in the trial's workers
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    src, dst = Path(directory), Path(out)
    if (src / STATE_FILE).is_file() and not has_model(src):
        raise FileNotFoundError(no_weights_message(src))
    if not (src / STATE_FILE).is_file() or not has_model(src):
        raise FileNotFoundError(f"{src}: not an mdf-search checkpoint (needs {STATE_FILE} and {TAG}/)")
    state = get_fp32_state_dict_from_zero_checkpoint(str(src), tag=TAG)
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    tensors = {k: v.to(target).contiguous() for k, v in state.items()}
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "dtype": dtype})
    tmp.replace(dst / "model.safetensors")
    (dst / STATE_FILE).write_text((src / STATE_FILE).read_text())
    if (src / "tokenizer").is_dir():
        PreTrainedTokenizerFast.from_pretrained(src / "tokenizer").save_pretrained(dst / "tokenizer")
    log.info("exported %d tensors to %s", len(tensors), dst)
    return dst / "model.safetensors"


def no_weights_message(directory: Path) -> str:
    """Why a light checkpoint cannot be exported, and what keeps weights."""
    state = read_state(directory)
    policy = str(state.params.get("run.checkpoint", "none"))
    epochs = state.params.get("optim.epochs")
    where = f"{directory}: this checkpoint (epoch {state.epoch + 1}) holds no weights, only metrics and predictions"
    if policy == "none":
        return f"{where}: the trial ran with run.checkpoint=none and kept no weights; rerun it with run.checkpoint=last (or every_epoch) to export a model"
    return f"{where}: with run.checkpoint={policy} only the trial's last epoch ({epochs}) saves weights, and a trial stopped before it (e.g. by ASHA) kept none; export the checkpoint of its last epoch, or rerun it with run.checkpoint=every_epoch"


def load_exported(directory: str | Path) -> torch.nn.Module:
    """Rebuild the trial's model without DeepSpeed and load an exported state dict into it."""
    src = Path(directory)
    state = read_state(src)
    cfg = TrialConfig.from_flat(state.params)
    tokenizer_dir = src / "tokenizer" if (src / "tokenizer").is_dir() else None
    model, _ = build_model(cfg, state.label_space, tokenizer_dir=tokenizer_dir)
    tensors = load_file(str(src / "model.safetensors"))
    reference = model.state_dict()
    missing = sorted(set(reference) - set(tensors))
    if missing:
        raise ValueError(f"{src}: exported state lacks {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict({k: tensors[k].to(reference[k].dtype) for k in reference})
    return model.eval()
