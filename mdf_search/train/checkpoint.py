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

``export_checkpoint`` consolidates the shards (DeepSpeed's ``zero_to_fp32`` merge) into one safetensors
state dict (fp32 or bf16) that loads into :class:`MDFModel` without DeepSpeed.

No code runs from a checkpoint: :func:`verify` reads every torch file of the folder with
``torch.load(weights_only=True)`` (``train/deepspeed.py``'s allow-list of three DeepSpeed classes) and
checks the layout (``trial.json``, the shards each rank wrote, no symlink out of the folder) before
DeepSpeed sees it; the resume then routes DeepSpeed's own reads through the same safe loader and the
export merges the shards itself. A file that needs arbitrary unpickling is refused, named
(:class:`CheckpointError`).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from mdf_search.config import ConfigError, TrialConfig
from mdf_search.train.builders import build_model
from mdf_search.train.deepspeed import UnsafeFile, consolidate, safe_load, safe_loads, shape_mismatches

log = logging.getLogger(__name__)
TAG = "mdf"
STATE_FILE = "trial.json"
UNSAFE_FIX = (
    "mdf-search never runs code from a checkpoint: do not use this folder (retrain the trial to write a new "
    "checkpoint), and let only the people who run the sweeps write to its storage"
)


class CheckpointError(ValueError):
    """A checkpoint that export or resume refuses; the message names the file and the fix."""


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
    (directory / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), directory / "rng" / f"rank{rank}.pt")
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


def _rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, numbers and lists only (loads under ``weights_only``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    numpy, python = rng["numpy"], rng["python"]
    if isinstance(numpy, tuple):  # written before numpy's state was stored as a tensor
        np.random.set_state(numpy)
        random.setstate(python)
        return
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


def load(engine: Any, directory: Path, *, rank: int) -> TrialState:
    """Restore DeepSpeed states and this rank's RNG; returns the trial state to continue from. The folder
    is verified first (:func:`verify`) and DeepSpeed reads it through the safe loader only."""
    verify(directory)
    expected = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in engine.module.named_parameters()}
    buffers = {n for n, _ in engine.module.named_buffers()}
    fix = "the run's storage holds another trial's checkpoint: start this trial fresh (sweep --fresh)"
    _compare_shapes(directory / TAG, expected, buffers, "the model this trial builds", fix)
    with safe_loads(engine):
        try:
            load_path, _ = engine.load_checkpoint(str(directory), tag=TAG)
        except UnsafeFile as err:  # replaced after verify: still refused, unread
            raise CheckpointError(_unsafe_message(err)) from None
    if load_path is None:
        raise CheckpointError(f"{directory}: DeepSpeed found no checkpoint under tag {TAG!r}")
    rng_file = directory / "rng" / f"rank{rank}.pt"
    if rng_file.exists():
        _set_rng_state(_safe(rng_file, legacy_numpy=True))
    return read_state(directory)


def read_state(directory: Path) -> TrialState:
    path = Path(directory) / STATE_FILE
    fix = "the checkpoint is incomplete or altered; use another checkpoint of the trial or retrain it"
    try:
        payload = json.loads(path.read_bytes())
        if not isinstance(payload, dict):
            raise TypeError(f"a JSON {type(payload).__name__}, not an object")
        return TrialState(
            epoch=int(payload["epoch"]),
            best_metric=payload["best_metric"],
            params=dict(payload["params"]),
            label_space=json.dumps(payload["label_space"]),
            extra=payload.get("extra", {}),
        )
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {fix}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a directory, not the trial's JSON state; {fix}") from None
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise CheckpointError(
            f"{path}: not the trial's JSON state ({type(err).__name__}: {str(err)[:120]}); {fix}"
        ) from None


def _unsafe_message(err: UnsafeFile) -> str:
    if err.hostile:
        return f"{err.path}: refused: {err.reason}, which could run code; {UNSAFE_FIX}"
    return f"{err.path}: {err.reason}; the checkpoint is incomplete or damaged: use another checkpoint of the trial or retrain it"


def _safe(path: Path, *, legacy_numpy: bool = False) -> Any:
    try:
        return safe_load(path, mmap=True, legacy_numpy=legacy_numpy)
    except UnsafeFile as err:
        raise CheckpointError(_unsafe_message(err)) from None


def verify(directory: str | Path) -> TrialState:
    """Check a checkpoint folder before DeepSpeed reads it: no symlink leaves it, ``trial.json`` is the
    trial's JSON state, every torch file loads under ``weights_only=True``, and every shard the ranks
    wrote is there. Raise :class:`CheckpointError` naming the file and the fix."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(
            f"{root}: not a checkpoint folder; pass a trial's checkpoint_NNNNNN folder ({STATE_FILE}, {TAG}/)"
        )
    real = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not path.resolve().is_relative_to(real):
                raise CheckpointError(
                    f"{path}: a symlink out of the checkpoint folder (to {os.readlink(path)}); "
                    "a checkpoint holds its own files: copy the file in instead of linking it"
                )
    state = read_state(root)
    latest = root / "latest"
    if latest.is_file() and latest.read_text(errors="replace").strip() != TAG:
        raise CheckpointError(
            f"{latest}: names tag {latest.read_text(errors='replace').strip()[:60]!r}, not {TAG!r}; write {TAG} into it or delete it"
        )
    if has_model(root):
        _verify_shards(root / TAG)
    for path in sorted((root / "rng").glob("*")) if (root / "rng").is_dir() else []:
        _safe(path, legacy_numpy=True)
    return state


def _verify_shards(ds_dir: Path) -> None:
    """Every torch file of the DeepSpeed tag folder loads safely, and each rank's shards are there."""
    model_files = sorted(ds_dir.glob("*model_states.pt"))
    if not model_files:
        raise CheckpointError(
            f"{ds_dir}: no DeepSpeed model states (*model_states.pt): the checkpoint is incomplete; "
            "use another checkpoint of the trial or retrain it"
        )
    loaded = {path: _safe(path) for path in sorted(ds_dir.iterdir())}
    states = loaded[model_files[0]]
    try:
        world, stage = int(states["dp_world_size"]), int(states["ds_config"]["zero_optimization"]["stage"])
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(
            f"{model_files[0]}: not DeepSpeed model states (no dp_world_size, ds_config); use another checkpoint of the trial or retrain it"
        ) from None
    prefix = "bf16_" if any(p.name.startswith("bf16_") for p in loaded) else ""
    wanted = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world) if stage == 3]
    wanted += [f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world) if stage >= 1]
    missing = [name for name in wanted if not (ds_dir / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{ds_dir}: missing {', '.join(missing)} of the {world} rank(s) that wrote it: the checkpoint is "
            "incomplete (a rank died while saving?); use an earlier checkpoint of the trial or retrain it"
        )


def _compare_shapes(
    ds_dir: Path, expected: dict[str, tuple[int, ...]], buffers: set[str], against: str, fix: str
) -> None:
    wrong = shape_mismatches(_safe(sorted(ds_dir.glob("*model_states.pt"))[0]), expected, buffers)
    if wrong:
        raise CheckpointError(
            f"{ds_dir}: holds a model of other shapes than {against} ({len(wrong)} parameter(s), e.g. "
            f"{'; '.join(wrong[:2])}); {fix}"
        )


def expected_shapes(state: TrialState) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Parameter shapes and buffer names of the model ``state``'s config builds (meta device: no weights)."""
    from mdf_search.data.schema import LabelSpace
    from mdf_search.model.mdf import MDFModel, task_classes
    from mdf_search.model.mllama import build_mllama
    from mdf_search.model.presets import get_preset

    try:
        cfg = TrialConfig.from_flat(state.params)
        classes = task_classes(cfg.head.task, LabelSpace.from_json(state.label_space).diseases)
    except (ConfigError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{STATE_FILE}: its config is not valid ({str(err)[:200]}); use another checkpoint of the trial or retrain it"
        ) from None
    label_ids = (
        {n: list(range(len(c))) for n, c in classes.items()} if cfg.head.kind == "label_token" else None
    )
    with torch.device("meta"):
        mllama = build_mllama(get_preset(cfg.model.preset), gate_init=cfg.model.xattn_gate_init)
        model = MDFModel(mllama, cfg.arch, classes, label_ids)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}, {n for n, _ in model.named_buffers()}


def export_checkpoint(directory: str | Path, out: str | Path, *, dtype: str = "fp32") -> Path:
    """Consolidate ZeRO shards into ``out/model.safetensors`` (+ trial.json, tokenizer) for plain loading.
    The folder is verified first (:func:`verify`): nothing is written for a refused checkpoint."""
    src, dst = Path(directory), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such checkpoint folder; pass a trial's checkpoint_NNNNNN folder")
    if (src / STATE_FILE).is_file() and not has_model(src) and _kind(src) != Kind.MODEL:
        raise FileNotFoundError(no_weights_message(src))
    if not (src / STATE_FILE).is_file() or not has_model(src):
        raise FileNotFoundError(
            f"{src}: not an mdf-search checkpoint (needs {STATE_FILE} and {TAG}/){_layout_hint(src)}"
        )
    if dst.exists() and not dst.is_dir():
        raise FileNotFoundError(
            f"--out {dst}: a file, not a directory; give a directory to write the export into"
        )
    state = verify(src)
    expected, buffers = expected_shapes(state)
    fix = "another trial's shards? export the trial's own checkpoint folder"
    _compare_shapes(src / TAG, expected, buffers, f"its {STATE_FILE} config", fix)
    try:
        tensors_fp32 = consolidate(src / TAG)
    except UnsafeFile as err:
        raise CheckpointError(_unsafe_message(err)) from None
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
        raise CheckpointError(
            f"{src / TAG}: the shards do not fit together ({type(err).__name__}: {str(err)[:160]}); "
            "the checkpoint is incomplete or altered: use another checkpoint of the trial or retrain it"
        ) from None
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    tensors = {
        k: v.to(target).contiguous() if v.is_floating_point() else v.contiguous()
        for k, v in tensors_fp32.items()
    }
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "dtype": dtype})
    tmp.replace(dst / "model.safetensors")
    (dst / STATE_FILE).write_text((src / STATE_FILE).read_text())
    if (src / "tokenizer").is_dir():
        PreTrainedTokenizerFast.from_pretrained(src / "tokenizer").save_pretrained(dst / "tokenizer")
    log.info("exported %d tensors to %s", len(tensors), dst)
    return dst / "model.safetensors"


def _kind(directory: Path) -> str | None:
    try:
        return str(json.loads((directory / STATE_FILE).read_bytes()).get("kind"))
    except (ValueError, AttributeError, OSError):
        return None


def _layout_hint(src: Path) -> str:
    shards = sorted(src.glob("*/*model_states.pt")) + sorted(src.glob("*model_states.pt"))
    if not shards:
        return ""
    where = shards[0].parent
    return f"; DeepSpeed shards are in {where}, but mdf-search keeps them in {TAG}/: pass the trial's own checkpoint folder"


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
