"""Trial checkpoints: every rank saves its ZeRO shards, Ray merges them, a restart resumes exactly.

Layout of one checkpoint directory (what Ray stores after merging every rank's upload)::

    mdf/                  DeepSpeed shards (model, optimizer, scheduler) under the tag "mdf"
    latest                DeepSpeed's tag pointer
    rng/rank{r}.pt        per-rank RNG states (torch, numpy, python)
    trial.json            rank 0: flat config, label space, epoch, best metric (everything an export needs)
    tokenizer/            rank 0: the trial's tokenizer

``export_checkpoint`` consolidates the shards with DeepSpeed's ``zero_to_fp32`` into one safetensors
state dict (fp32 or bf16) that loads into :class:`MDFModel` without DeepSpeed.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
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
        payload = {
            "epoch": state.epoch,
            "best_metric": state.best_metric,
            "params": state.params,
            "label_space": json.loads(state.label_space),
            "extra": state.extra,
        }
        (directory / "trial.json").write_text(json.dumps(payload, indent=1, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(directory / "tokenizer")


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
    payload = json.loads((directory / "trial.json").read_text())
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
    if not (src / "trial.json").is_file() or not (src / TAG).is_dir():
        raise FileNotFoundError(f"{src}: not an mdf-search checkpoint (needs trial.json and {TAG}/)")
    state = get_fp32_state_dict_from_zero_checkpoint(str(src), tag=TAG)
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    tensors = {k: v.to(target).contiguous() for k, v in state.items()}
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "dtype": dtype})
    tmp.replace(dst / "model.safetensors")
    (dst / "trial.json").write_text((src / "trial.json").read_text())
    if (src / "tokenizer").is_dir():
        PreTrainedTokenizerFast.from_pretrained(src / "tokenizer").save_pretrained(dst / "tokenizer")
    log.info("exported %d tensors to %s", len(tensors), dst)
    return dst / "model.safetensors"


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
