"""DeepSpeed for one trial: a pure config builder, the optimiser's parameter groups, and the one
``deepspeed.initialize`` call of the code base.

The config builder is a pure function of the typed config and the run's shape, so it is covered by
table-driven unit tests without a process group. GPU-only choices sit behind ``on_gpu``:

- optimiser: AdamW. On CPU the torch implementation (``torch_adam``), because DeepSpeed's FusedAdam and
  DeepSpeedCPUAdam JIT-compile for ~60 s each (docs/stack-facts.md). With optimiser offload DeepSpeed picks
  DeepSpeedCPUAdam itself.
- schedule: linear warmup then cosine decay (DeepSpeed's ``WarmupCosineLR``), which scales every
  parameter group's own learning rate, so per-group rates survive.
- ZeRO-3 models are constructed under ``HfDeepSpeedConfig`` (see :func:`zero3_construction`), so an 11B
  backbone is partitioned as it is built and never materialises whole on one rank.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdf_search.config import OptimConfig, TrialConfig
from mdf_search.model.freezing import param_role

COS_MIN_RATIO = 0.1  # ASSUMPTION: cosine decays to 10 % of each group's peak rate
ADAM_EPS = 1e-8


def role_learning_rates(optim: OptimConfig) -> dict[str, float]:
    return {
        "llm": optim.lr,
        "vision": optim.lr * optim.lr_vision_mult,
        "unet": optim.lr * optim.lr_unet_mult,
        "fusion": optim.lr * optim.lr_fusion_mult,
        "head": optim.lr * optim.lr_head_mult,
    }


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, gates, scales and position embeddings are not decayed (1-D or explicitly named)."""
    shape = getattr(param, "ds_shape", param.shape)
    return len(shape) < 2 or name.endswith((".pos", "_gate", ".fusion_scale"))


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters only, grouped by role × decay, each group with its own lr and weight decay."""
    rates = role_learning_rates(optim)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((param_role(name), _no_decay(name, param)), []).append(param)
    out = []
    for (role, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": rates[role],
                "weight_decay": 0.0 if no_decay else optim.weight_decay,
                "name": f"{role}{'.no_decay' if no_decay else ''}",
            }
        )
    return out


def optimizer_steps(samples: int, world_size: int, optim: OptimConfig) -> int:
    """Optimiser steps per epoch when each rank sees ``ceil(samples / world)`` samples (padded sampler)."""
    per_rank = math.ceil(samples / world_size)
    micro_steps = math.ceil(per_rank / optim.micro_batch)
    return max(1, micro_steps // optim.grad_accum)


def build_ds_config(
    cfg: TrialConfig, *, world_size: int, steps_per_epoch: int, on_gpu: bool
) -> dict[str, Any]:
    """The DeepSpeed config dict for one trial (pure)."""
    optim = cfg.optim
    total = max(1, steps_per_epoch * optim.epochs)
    zero: dict[str, Any] = {"stage": optim.zero_stage}
    if optim.zero_stage >= 1:
        zero["overlap_comm"] = on_gpu
        zero["contiguous_gradients"] = True
    if optim.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # consolidate offline with zero_to_fp32
    if optim.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if optim.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    adam: dict[str, Any] = {
        "lr": optim.lr,
        "betas": [0.9, optim.beta2],
        "eps": ADAM_EPS,
        "weight_decay": optim.weight_decay,
    }
    if not on_gpu and not optim.offload_optimizer:
        adam["torch_adam"] = True
    warmup = round(optim.warmup_frac * total)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": optim.micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": optim.micro_batch * optim.grad_accum * world_size,
        "optimizer": {"type": "AdamW", "params": adam},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total,
                # DeepSpeed refuses 0 warmup steps: a run too short for one gets a single step that
                # starts at the full lr (min ratio 1), i.e. no warmup at all.
                "warmup_num_steps": max(1, warmup),
                "warmup_min_ratio": 0.0 if warmup else 1.0,
                "cos_min_ratio": COS_MIN_RATIO,
                "warmup_type": "linear",
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": optim.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if optim.grad_clip > 0:
        config["gradient_clipping"] = optim.grad_clip
    return config


@contextlib.contextmanager
def zero3_construction(ds_config: dict[str, Any]) -> Iterator[None]:
    """Keep an ``HfDeepSpeedConfig`` alive while the model is built, so ZeRO-3 partitions it at init.

    ``deepspeed.zero.Init`` + the plain Mllama constructor fails (docs/stack-facts.md); transformers' own hook,
    active while an ``HfDeepSpeedConfig`` object with stage 3 is alive, works with ``_from_config`` and
    ``from_pretrained``.
    """
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    # transformers' DeepSpeed integration imports deepspeed, which picks its accelerator when imported:
    # only in a trial's workers (the config builders above stay pure and light)
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    holder = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del holder
        unset_hf_deepspeed_config()


def _match_partitioned_dtype(model: nn.Module, ds_config: dict[str, Any]) -> None:
    """Under ZeRO-3 in bf16, give the parameters built outside ``zero3_construction``'s partitioning
    (the U-Net, fusion and heads: plain fp32 modules) the bf16 of the partitioned Mllama.

    Stage 3 flattens every trainable parameter into one low-precision buffer and asserts a single dtype
    (``deepspeed.runtime.zero.utils.defragment``), so a mixed model fails in ``deepspeed.initialize``;
    the fp32 master copy lives in the optimiser either way. Stages 0-2 cast the whole module themselves.
    """
    if ds_config["zero_optimization"]["stage"] != 3 or not ds_config.get("bf16", {}).get("enabled"):
        return
    for param in model.parameters():
        if not hasattr(param, "ds_id") and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)


def initialize(model: nn.Module, cfg: TrialConfig, ds_config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The one ``deepspeed.initialize`` call: returns (engine, optimizer, scheduler)."""
    import deepspeed  # see zero3_construction: only in a trial's workers

    _match_partitioned_dtype(model, ds_config)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.optim), config=ds_config
    )
    return engine, optimizer, scheduler


# --- Loading checkpoints without running code from them -------------------------------------------
# Every checkpoint file is read with torch.load(weights_only=True): tensors, containers and numbers
# only, plus the few DeepSpeed classes its optimiser states name (below). DeepSpeed's own loaders
# (TorchCheckpointEngine.load, zero_to_fp32) unpickle with weights_only=False, so a resume routes
# DeepSpeed's reads through :func:`safe_loads` and an export consolidates the shards itself
# (:func:`consolidate`), reusing DeepSpeed's merge of the already-loaded partitions.
DEEPSPEED_GLOBALS = (  # what DeepSpeed 0.19's ZeRO optimiser states name besides tensors
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",  # a scale and a flag
    "deepspeed.runtime.zero.config.ZeroStageEnum",  # an IntEnum
    "deepspeed.utils.tensor_fragment.fragment_address",  # ZeRO-1/2: a dataclass of two ints
)


class UnsafeFile(Exception):
    """A checkpoint file that does not load under ``weights_only=True``; ``reason`` says why."""

    def __init__(self, path: Path, reason: str, hostile: bool) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.hostile = path, reason, hostile


def _allowed(legacy_numpy: bool) -> list[Any]:
    import importlib

    allowed: list[Any] = []
    for qualified in DEEPSPEED_GLOBALS:
        module, _, name = qualified.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), name))
    if legacy_numpy:  # rng/rank{r}.pt written before numpy states were stored as tensors
        import numpy as np

        reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
        allowed += [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return allowed


def safe_load(
    path: str | Path, *, map_location: Any = "cpu", mmap: bool = False, legacy_numpy: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)`` with the DeepSpeed allow-list; raise :class:`UnsafeFile`
    naming the file when it needs arbitrary unpickling (``hostile``) or is not a torch file at all."""
    import pickle
    import re
    import warnings
    import zipfile

    path = Path(path)
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_allowed(legacy_numpy)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on a pickle protocol it did not write
            return torch.load(path, map_location=map_location, weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" not in text:  # not a pickle at all: text, random bytes
            raise UnsafeFile(path, f"not a torch checkpoint file ({text.splitlines()[0]})", False) from None
        named = re.search(r"GLOBAL ([\w.]+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        what = (
            f"it names {named.group(1)}" if named else (detail.group(1)[:200] if detail else "a raw pickle")
        )
        raise UnsafeFile(path, f"loading it needs arbitrary unpickling ({what})", True) from None
    except FileNotFoundError:
        raise UnsafeFile(path, "missing", False) from None
    except IsADirectoryError:
        raise UnsafeFile(path, "a directory where a file belongs", False) from None
    except Exception as err:  # EOFError, zip errors, IndexError on text: a broken file
        first = (str(err).splitlines() or [type(err).__name__])[0][:200] or type(err).__name__
        raise UnsafeFile(path, f"empty, truncated or corrupt ({first})", False) from None


class _SafeLoads:
    """A DeepSpeed checkpoint engine whose ``load`` is :func:`safe_load`; everything else delegates."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location)


@contextlib.contextmanager
def safe_loads(engine: Any) -> Iterator[None]:
    """While active, every file ``engine.load_checkpoint`` reads goes through :func:`safe_load`."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _SafeLoads(original)
    try:
        yield
    finally:
        engine.checkpoint_engine = original


def shape_mismatches(
    states: dict[str, Any], expected: dict[str, tuple[int, ...]], buffers: set[str]
) -> list[str]:
    """How the parameter shapes in a rank's model states (``*model_states.pt``, loaded) differ from
    ``expected`` (name → shape; ``buffers`` may be there too): one line per parameter."""
    found: dict[str, tuple[int, ...]] = {}
    for group in states.get("param_shapes") or []:
        found.update({k: tuple(v) for k, v in group.items()})
    found.update({k: tuple(v) for k, v in (states.get("frozen_param_shapes") or {}).items()})
    if not found:  # ZeRO-0: the whole module
        found = {k: tuple(v.shape) for k, v in states["module"].items()}
    wrong = [
        f"{k}: {list(found[k])} here, {list(v)} expected" for k, v in expected.items() if found.get(k, v) != v
    ]
    wrong += [f"{k}: missing" for k in expected if k not in found]
    return wrong + [f"{k}: not in the model" for k in found if k not in expected and k not in buffers]


def _natural(path: Path) -> list[Any]:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def consolidate(ds_dir: Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a DeepSpeed checkpoint folder (one tag), every file read by
    :func:`safe_load`: DeepSpeed's ``zero_to_fp32`` merge on partitions loaded safely. ZeRO-0 (no
    optimiser shards): the module's own state dict."""
    from deepspeed.utils import zero_to_fp32 as z  # picks its accelerator when imported

    model_files = sorted(ds_dir.glob("*model_states.pt"), key=_natural)
    optim_files = sorted(ds_dir.glob("*optim_states.pt"), key=_natural)
    if not optim_files:
        return {k: v for k, v in safe_load(model_files[0])["module"].items()}
    states = []
    for file in model_files:
        sd = safe_load(file)
        states.append(
            z.zero_model_state(
                buffers={
                    k: v.float() if v.is_floating_point() else v
                    for k, v in sd["module"].items()
                    if k in sd["buffer_names"]
                },
                param_shapes=sd["param_shapes"],
                shared_params=[[k, v] for k, v in sd["shared_params"].items()],
                ds_version=sd.get("ds_version"),
                frozen_param_shapes=sd.get("frozen_param_shapes"),
                frozen_param_fragments=sd.get("frozen_param_fragments"),
            )
        )
    shards = [safe_load(file, mmap=True)["optimizer_state_dict"] for file in optim_files]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress
        return _merge(z, shards, states)


def _merge(z: Any, shards: list[Any], states: list[Any]) -> dict[str, torch.Tensor]:
    stage, world = int(shards[0]["zero_stage"]), shards[0]["partition_count"]
    world = max(world) if isinstance(world, list) else world
    if stage <= 2:
        flat = [s["single_partition_of_fp32_groups"] for s in shards]
        merged = z._get_fp32_state_dict_from_zero2_checkpoint(
            world, flat, states, False, shards[0].get("param_alignment_paddings")
        )
    else:
        flat = [s["fp32_flat_groups"] for s in shards]
        merged = z._get_fp32_state_dict_from_zero3_checkpoint(world, flat, states, False)
    return dict(z.to_torch_tensor(merged))
