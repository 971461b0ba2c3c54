"""The architecture of the joint model: what ``MDFModel`` is built from, and nothing about training.

:class:`ArchConfig` holds six frozen sections (model, unet, fusion, film, freeze, head). It is hashable,
so builders and the memory planner can cache by architecture. ``TrialConfig`` (``mdf_search.config``)
holds the same sections plus the optimiser, data and run sections, checks the rules that join sections,
and returns the architecture as ``TrialConfig.arch``.

The option names below are stable strings (they appear in results and reports: never rename one, add a
new one instead). The paper (arXiv 2509.21358) publishes only its abstract: every default marked
ASSUMPTION is a choice this platform made, and each is a searchable dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mdf_search.fields import choice, flat_field, float_range, int_range, optional_str, short_repr
from mdf_search.model.presets import PRESETS
from mdf_search.model.wiring import LEVELS, parse_layer_map

INJECTIONS = ("none", "concat", "parallel")
PROJECTIONS = ("pool", "patch")
FILM_SITES = ("enc1", "enc2", "enc3", "enc4", "bottleneck", "decoder")
FILM_ALIASES = {
    "none": (),
    "enc": ("enc1", "enc2", "enc3", "enc4"),
    "all": FILM_SITES,
}
FILM_SOURCES = ("prompt", "hidden")
FREEZE_STRATEGIES = ("none", "unet", "mllm", "mllm_except_xattn", "vision_tower", "lora")
UNET_INITS = ("random", "pretrained")
HEADS = ("linear", "label_token")
TASKS = ("disease", "type", "dual")
# The disease types, in index order: the type head's classes and the manifest's ``disease_type`` values.
# Their one home (``data`` and ``report`` read them from ``data.schema``, which takes them from here).
TYPE_CLASSES: tuple[str, ...] = ("healthy", "acquired", "inherited")


def _levels(value: Any) -> tuple[int, ...]:
    """``"1234"``, ``"13"``, ``"none"``/``""`` (baseline), or a list of ints."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        text = str(value).strip().lower()
        if text in ("", "none", "baseline"):
            return ()
        items = list(text.replace(",", "").replace("+", "").replace(" ", ""))
    try:
        levels = sorted({int(v) for v in items})
    except ValueError:
        raise ValueError(
            f"must be digits from 1..4 such as '1234' or '13', or 'none', but got {short_repr(value)}"
        ) from None
    if any(level not in LEVELS for level in levels):
        raise ValueError(f"levels must be in 1..4, but got {short_repr(value)}")
    return tuple(levels)


def _film_sites(value: Any) -> tuple[str, ...]:
    """``"none"``, ``"enc"``, ``"bottleneck"``, ``"enc+bottleneck"``, ``"enc1+enc3+decoder"``, ``"all"``."""
    text = str(value if value is not None else "none").strip().lower()
    sites: list[str] = []
    for token in filter(None, (t.strip() for t in text.split("+"))):
        if token in FILM_ALIASES:
            sites.extend(FILM_ALIASES[token])
        elif token in FILM_SITES:
            sites.append(token)
        else:
            raise ValueError(
                f"unknown FiLM site {short_repr(token)}: use '+'-joined names from {[*FILM_ALIASES, *FILM_SITES]}"
            )
    return tuple(s for s in FILM_SITES if s in sites)


@dataclass(frozen=True)
class ModelConfig:
    preset: str = flat_field(
        "model.preset", "tiny", choice(tuple(PRESETS)), "tiny | small | 1b | 11b (see model/presets.py)"
    )
    weights: str | None = flat_field(
        "model.weights",
        None,
        optional_str,
        "local directory of a pretrained Mllama checkpoint (required to train 11b)",
    )
    xattn_gate_init: float = flat_field(
        "model.xattn_gate_init",
        0.5,
        float_range(-10.0, 10.0),
        "ASSUMPTION: initial value of the Mllama cross-attention tanh gates for randomly initialised presets "
        "(0 in the library, which blocks every gradient through those layers); ignored with model.weights",
    )


@dataclass(frozen=True)
class UNetConfig:
    init: str = flat_field(
        "unet.init", "random", choice(UNET_INITS), "random | pretrained (vessel segmentation)"
    )
    weights: str | None = flat_field(
        "unet.weights", None, optional_str, "U-Net state dict for unet.init=pretrained"
    )
    aux_seg_weight: float = flat_field(
        "unet.aux_seg_weight",
        0.0,
        float_range(0.0, 100.0),
        "weight of the auxiliary vessel-segmentation loss",
    )


@dataclass(frozen=True)
class FusionConfig:
    levels: tuple[int, ...] = flat_field(
        "fusion.levels",
        (1, 2, 3, 4),
        _levels,
        "fused U-Net encoder levels: '1234', '13', or 'none' (baseline)",
    )
    layer_map: str = flat_field(
        "fusion.map",
        "shallow_early",
        parse_layer_map,
        "level → cross-attention layer map: shallow_early | deep_early | all | single | '1:3,2:8+13'",
    )
    injection: str = flat_field(
        "fusion.injection",
        "parallel",
        choice(INJECTIONS),
        "none (baseline) | concat (U-Net tokens join the image keys/values) | parallel (own branch, tanh-gated scale)",
    )
    grid: int = flat_field("fusion.grid", 4, int_range(1, 64), "patch grid per level: grid x grid tokens")
    projection: str = flat_field(
        "fusion.projection",
        "pool",
        choice(PROJECTIONS),
        "level features → tokens: pool (adaptive average pool to the grid, then a linear map) | patch "
        "(a learned strided-convolution patch embedding, as in a ViT: keeps detail inside each patch)",
    )
    scale_init: float = flat_field(
        "fusion.scale_init",
        0.0,
        float_range(-5.0, 5.0),
        "initial pre-tanh value of the learnable fusion scale; 0 (the default) closes the U-Net path, so "
        "at init the fused model's outputs equal the baseline's and fusion must earn its place",
    )


@dataclass(frozen=True)
class FilmConfig:
    placement: tuple[str, ...] = flat_field(
        "film.placement",
        ("enc1", "enc2", "enc3", "enc4"),
        _film_sites,
        "none | enc | bottleneck | decoder | a+b",
    )
    source: str = flat_field(
        "film.source",
        "prompt",
        choice(FILM_SOURCES),
        "prompt (pooled prompt embedding) | hidden (LLM hidden)",
    )


@dataclass(frozen=True)
class FreezeConfig:
    strategy: str = flat_field(
        "freeze", "none", choice(FREEZE_STRATEGIES), "what is frozen (model/freezing.py)"
    )
    lora_rank: int = flat_field(
        "freeze.lora_rank", 8, int_range(1, 1024), "LoRA rank (only with freeze=lora)"
    )
    lora_alpha: float = flat_field(
        "freeze.lora_alpha", 16.0, float_range(0.0, 4096.0, open_low=True), "LoRA alpha"
    )
    lora_dropout: float = flat_field("freeze.lora_dropout", 0.0, float_range(0.0, 0.9), "LoRA dropout")


@dataclass(frozen=True)
class HeadConfig:
    kind: str = flat_field(
        "head", "linear", choice(HEADS), "linear (pooled hidden) | label_token (LM-head scoring)"
    )
    task: str = flat_field(
        "task", "type", choice(TASKS), "disease | type (healthy/acquired/inherited) | dual"
    )


@dataclass(frozen=True)
class ArchConfig:
    """What ``MDFModel`` is built from. Frozen and hashable (every section is frozen, every value a scalar
    or a tuple): equal architectures are equal keys."""

    model: ModelConfig = field(default_factory=ModelConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    film: FilmConfig = field(default_factory=FilmConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


ARCH_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "unet": UNetConfig,
    "fusion": FusionConfig,
    "film": FilmConfig,
    "freeze": FreezeConfig,
    "head": HeadConfig,
}
