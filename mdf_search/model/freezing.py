"""Freezing strategies and parameter roles.

Every parameter of the joint model has one *role*, decided by its name in one place
(:func:`param_role`): ``unet``, ``fusion`` (projectors, fusion scales, FiLM generators), ``llm`` (text
model, projector, LM head, LoRA adapters), ``vision`` (the vision tower) and ``head``. Roles drive both
freezing (here) and the optimiser's parameter groups (``train/deepspeed.py``).

What each strategy trains (fusion, FiLM and the heads always train):

============================  ====================================================================
``none``                      everything (full fine-tune: the paper's best)
``unet``                      everything but the U-Net (FiLM still trains, through the frozen U-Net)
``mllm``                      U-Net, fusion, FiLM, heads; the whole Mllama is frozen
``mllm_except_xattn``         as ``mllm`` plus every Mllama cross-attention decoder layer
``vision_tower``              everything but the vision tower (the projector trains)
``lora``                      as ``mllm`` plus LoRA adapters on the LLM's self/cross-attention q,v
============================  ====================================================================
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, cast

from torch import nn

from mdf_search.model.arch import FreezeConfig
from mdf_search.model.mllama import xattn_layer_ids

ROLES = ("unet", "fusion", "llm", "vision", "head")
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn|cross_attn)\.(q_proj|v_proj)"


def param_role(name: str) -> str:
    if name.startswith("unet."):
        return "unet"
    if name.startswith(("fusion.", "film.")) or ".fusion_scale" in name:
        return "fusion"
    if name.startswith("heads."):
        return "head"
    if ".vision_model." in name:
        return "vision"
    if name.startswith("mllama."):
        return "llm"
    raise ValueError(f"parameter {name!r} has no role; extend mdf_search.model.freezing.param_role")


_XATTN_LAYER = re.compile(r"language_model\.layers\.(\d+)\.")


def _trainable(name: str, strategy: str, xattn_layers: set[int]) -> bool:
    role = param_role(name)
    if role in ("fusion", "head"):
        return True
    if strategy == "none":
        return True
    if strategy == "unet":
        return role != "unet"
    if strategy == "vision_tower":
        return role != "vision"
    if role == "unet":
        return True
    if strategy == "mllm":
        return False
    if strategy == "mllm_except_xattn":
        match = _XATTN_LAYER.search(name)
        return role == "llm" and match is not None and int(match.group(1)) in xattn_layers
    if strategy == "lora":
        return "lora_" in name
    raise ValueError(f"unknown freezing strategy {strategy!r}")


def apply_freezing(model: nn.Module, strategy: str) -> None:
    """Set ``requires_grad`` of every parameter of an ``MDFModel`` for the strategy."""
    xattn = set(xattn_layer_ids(cast(Any, model).mllama))
    for name, param in model.named_parameters():
        param.requires_grad_(_trainable(name, strategy, xattn))


def inject_lora(mllama: nn.Module, cfg: FreezeConfig) -> None:
    """LoRA adapters on the LLM's attention q/v projections, in place (the vision tower's are excluded)."""
    from peft import LoraConfig, inject_adapter_in_model  # heavy, and only freeze=lora needs it

    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cast(Any, cfg.lora_alpha),
        lora_dropout=cfg.lora_dropout,
        target_modules=LORA_TARGETS,
    )
    inject_adapter_in_model(config, mllama)


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Role → (parameters, trainable parameters). Under ZeRO-3 use ``ds_numel``."""
    total: Counter[str] = Counter()
    trainable: Counter[str] = Counter()
    for name, param in model.named_parameters():
        n = int(getattr(param, "ds_numel", param.numel()))
        role = param_role(name)
        total[role] += n
        if param.requires_grad:
            trainable[role] += n
    return {role: (total[role], trainable[role]) for role in ROLES if total[role]}
