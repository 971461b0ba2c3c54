"""Typed configuration of one trial.

The one path from a flat dict of scalars (what a sampler or a YAML ``fixed:`` block produces) to typed
config is :meth:`TrialConfig.from_flat`. Everything below it is a frozen dataclass; nothing downstream
reads a raw dict. Flat keys are stable strings (they are the Parquet column names of the results), e.g.
``fusion.levels="1234"``, ``film.placement="enc+bottleneck"``, ``freeze="lora"``, ``optim.lr=3e-5``.

The paper (arXiv 2509.21358) publishes only its abstract: every default marked ASSUMPTION below is a
choice this platform made, and each is a searchable dimension.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------------
# Stable option names (they appear in results and reports: never rename one, add a new one instead).
# ---------------------------------------------------------------------------------------------------
PRESETS = ("tiny", "small", "1b", "11b")
LEVELS = (1, 2, 3, 4)
LAYER_MAP_STRATEGIES = ("shallow_early", "deep_early", "all", "single")
INJECTIONS = ("none", "concat", "parallel")
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
PRECISIONS = ("fp32", "bf16")
PROJECTIONS = ("pool", "patch")
VISION_TILES = (1, 4)
TEXT_MODES = ("on", "off", "shuffled")
IMAGE_MODES = ("on", "off")
SPLITS = ("stratified", "kfold", "authors", "leave_source_out")
CLASS_WEIGHTS = ("none", "balanced")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """Every problem of a configuration at once, each with its key, the value and the fix."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}{len(self.problems)} invalid configuration value(s):\n{lines}")


# ---------------------------------------------------------------------------------------------------
# Parsers of flat values. Each returns the typed value or raises ValueError with a readable reason.
# ---------------------------------------------------------------------------------------------------
def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {list(options)}, but got {value!r}")
        return text

    return parse


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"must be an integer in [{low}, {high}], but got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer in [{low}, {high}], but got {value!r}") from None
        if float(value) != number or not low <= number <= high:
            raise ValueError(f"must be an integer in [{low}, {high}], but got {value!r}")
        return number

    return parse


def _float_range(low: float, high: float, *, open_low: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number in [{low}, {high}], but got {value!r}") from None
        below = number <= low if open_low else number < low
        if math.isnan(number) or below or number > high:
            bracket = "(" if open_low else "["
            raise ValueError(f"must be a number in {bracket}{low}, {high}], but got {value!r}")
        return number

    return parse


def _int_choice(options: tuple[int, ...]) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or str(value).strip() not in {str(o) for o in options}:
            raise ValueError(f"must be one of {list(options)}, but got {value!r}")
        return int(str(value).strip())

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"must be true or false, but got {value!r}")


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
            f"must be digits from 1..4 such as '1234' or '13', or 'none', but got {value!r}"
        ) from None
    if any(level not in LEVELS for level in levels):
        raise ValueError(f"levels must be in 1..4, but got {value!r}")
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
                f"unknown FiLM site {token!r}: use '+'-joined names from {[*FILM_ALIASES, *FILM_SITES]}"
            )
    return tuple(s for s in FILM_SITES if s in sites)


def _layer_map(value: Any) -> str:
    """A strategy name, or an explicit map ``"1:3,2:8+13"`` (level:layer[+layer])."""
    text = str(value).strip().lower().replace(" ", "")
    if text in LAYER_MAP_STRATEGIES:
        return text
    parse_explicit_map(text)  # raises ValueError with the reason
    return text


def parse_explicit_map(text: str) -> dict[int, tuple[int, ...]]:
    mapping: dict[int, tuple[int, ...]] = {}
    for part in filter(None, text.split(",")):
        level_text, sep, layers_text = part.partition(":")
        if not sep:
            raise ValueError(
                f"must be one of {list(LAYER_MAP_STRATEGIES)} or an explicit map like '1:3,2:8+13', "
                f"but got {text!r}"
            )
        try:
            level = int(level_text)
            layers = tuple(sorted({int(x) for x in layers_text.split("+") if x}))
        except ValueError:
            raise ValueError(f"explicit map entries are level:layer[+layer], but got {part!r}") from None
        if level not in LEVELS or not layers:
            raise ValueError(f"explicit map entry {part!r} needs a level in 1..4 and at least one layer")
        mapping[level] = layers
    if not mapping:
        raise ValueError("an explicit layer map cannot be empty")
    return mapping


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# ---------------------------------------------------------------------------------------------------
# The dataclasses. Field metadata: flat key, parser. `doc` is the docstring shown by `validate`.
# ---------------------------------------------------------------------------------------------------
def _f(key: str, default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"key": key, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    preset: str = _f(
        "model.preset", "tiny", _choice(PRESETS), "tiny | small | 1b | 11b (see model/mllama.py)"
    )
    weights: str | None = _f(
        "model.weights",
        None,
        _optional_str,
        "local directory of a pretrained Mllama checkpoint (required by 11b)",
    )
    xattn_gate_init: float = _f(
        "model.xattn_gate_init",
        0.5,
        _float_range(-10.0, 10.0),
        "ASSUMPTION: initial value of the Mllama cross-attention tanh gates for randomly initialised presets "
        "(0 in the library, which blocks every gradient through those layers); ignored with model.weights",
    )


@dataclass(frozen=True)
class UNetConfig:
    init: str = _f("unet.init", "random", _choice(UNET_INITS), "random | pretrained (vessel segmentation)")
    weights: str | None = _f("unet.weights", None, _optional_str, "U-Net state dict for unet.init=pretrained")
    aux_seg_weight: float = _f(
        "unet.aux_seg_weight",
        0.0,
        _float_range(0.0, 100.0),
        "weight of the auxiliary vessel-segmentation loss",
    )


@dataclass(frozen=True)
class FusionConfig:
    levels: tuple[int, ...] = _f(
        "fusion.levels",
        (1, 2, 3, 4),
        _levels,
        "fused U-Net encoder levels: '1234', '13', or 'none' (baseline)",
    )
    layer_map: str = _f(
        "fusion.map",
        "shallow_early",
        _layer_map,
        "level → cross-attention layer map: shallow_early | deep_early | all | single | '1:3,2:8+13'",
    )
    injection: str = _f(
        "fusion.injection",
        "parallel",
        _choice(INJECTIONS),
        "none (baseline) | concat (U-Net tokens join the image keys/values) | parallel (own branch, tanh-gated scale)",
    )
    grid: int = _f("fusion.grid", 4, _int_range(1, 64), "patch grid per level: grid x grid tokens")
    projection: str = _f(
        "fusion.projection",
        "pool",
        _choice(PROJECTIONS),
        "level features → tokens: pool (adaptive average pool to the grid, then a linear map) | patch "
        "(a learned strided-convolution patch embedding, as in a ViT: keeps detail inside each patch)",
    )
    scale_init: float = _f(
        "fusion.scale_init",
        0.0,
        _float_range(-5.0, 5.0),
        "initial pre-tanh value of the learnable fusion scale; 0 (the default) closes the U-Net path, so "
        "at init the fused model's outputs equal the baseline's and fusion must earn its place",
    )


@dataclass(frozen=True)
class FilmConfig:
    placement: tuple[str, ...] = _f(
        "film.placement",
        ("enc1", "enc2", "enc3", "enc4"),
        _film_sites,
        "none | enc | bottleneck | decoder | a+b",
    )
    source: str = _f(
        "film.source",
        "prompt",
        _choice(FILM_SOURCES),
        "prompt (pooled prompt embedding) | hidden (LLM hidden)",
    )


@dataclass(frozen=True)
class FreezeConfig:
    strategy: str = _f("freeze", "none", _choice(FREEZE_STRATEGIES), "what is frozen (model/freezing.py)")
    lora_rank: int = _f("freeze.lora_rank", 8, _int_range(1, 1024), "LoRA rank (only with freeze=lora)")
    lora_alpha: float = _f("freeze.lora_alpha", 16.0, _float_range(0.0, 4096.0, open_low=True), "LoRA alpha")
    lora_dropout: float = _f("freeze.lora_dropout", 0.0, _float_range(0.0, 0.9), "LoRA dropout")


@dataclass(frozen=True)
class HeadConfig:
    kind: str = _f("head", "linear", _choice(HEADS), "linear (pooled hidden) | label_token (LM-head scoring)")
    task: str = _f("task", "type", _choice(TASKS), "disease | type (healthy/acquired/inherited) | dual")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f("optim.lr", 3e-4, _float_range(0.0, 1.0, open_low=True), "base learning rate (LLM)")
    lr_unet_mult: float = _f("optim.lr_unet_mult", 10.0, _float_range(0.0, 1e4), "U-Net lr = lr x this")
    lr_fusion_mult: float = _f(
        "optim.lr_fusion_mult", 10.0, _float_range(0.0, 1e4), "fusion+FiLM lr multiplier"
    )
    lr_vision_mult: float = _f(
        "optim.lr_vision_mult", 1.0, _float_range(0.0, 1e4), "vision tower lr multiplier"
    )
    lr_head_mult: float = _f("optim.lr_head_mult", 10.0, _float_range(0.0, 1e4), "head lr multiplier")
    weight_decay: float = _f("optim.weight_decay", 0.01, _float_range(0.0, 1.0), "decoupled weight decay")
    warmup_frac: float = _f("optim.warmup_frac", 0.1, _float_range(0.0, 0.9), "warmup steps / total steps")
    beta2: float = _f("optim.beta2", 0.999, _float_range(0.5, 0.99999), "Adam beta2")
    grad_clip: float = _f("optim.grad_clip", 1.0, _float_range(0.0, 1e6), "global grad-norm clip (0 = off)")
    micro_batch: int = _f("optim.micro_batch", 4, _int_range(1, 4096), "micro-batch per worker")
    grad_accum: int = _f("optim.grad_accum", 1, _int_range(1, 4096), "gradient accumulation steps")
    epochs: int = _f("optim.epochs", 3, _int_range(1, 10_000), "epochs")
    zero_stage: int = _f("optim.zero_stage", 3, _int_range(0, 3), "DeepSpeed ZeRO stage")
    offload_optimizer: bool = _f(
        "optim.offload_optimizer", False, _bool, "ZeRO optimizer-state offload to CPU"
    )
    offload_param: bool = _f("optim.offload_param", False, _bool, "ZeRO-3 parameter offload to CPU")
    precision: str = _f("optim.precision", "fp32", _choice(PRECISIONS), "fp32 | bf16")
    class_weights: str = _f(
        "optim.class_weights",
        "none",
        _choice(CLASS_WEIGHTS),
        "none | balanced (cross-entropy weights n / (k * n_class), fitted on the training split only)",
    )


@dataclass(frozen=True)
class DataConfig:
    manifest: str | None = _f(
        "data.manifest",
        None,
        _optional_str,
        "manifest Parquet; empty = synthetic data generated on first use",
    )
    synthetic_images: int = _f(
        "data.synthetic_images", 240, _int_range(12, 1_000_000), "synthetic image count"
    )
    synthetic_size: int = _f("data.synthetic_size", 160, _int_range(32, 4096), "synthetic image side (px)")
    synthetic_severity: float = _f(
        "data.synthetic_severity", 1.0, _float_range(0.0, 1.0), "synthetic sign strength (0 = invisible)"
    )
    split: str = _f(
        "data.split",
        "stratified",
        _choice(SPLITS),
        "stratified | kfold | authors | leave_source_out (data.test_source is the test split)",
    )
    test_source: str | None = _f(
        "data.test_source",
        None,
        _optional_str,
        "the source held out as the test split with data.split=leave_source_out (e.g. stonerounds)",
    )
    fold: int = _f("data.fold", 0, _int_range(0, 99), "k-fold index (data.split=kfold)")
    folds: int = _f("data.folds", 5, _int_range(2, 100), "k in k-fold")
    val_frac: float = _f("data.val_frac", 0.2, _float_range(0.0, 0.5, open_low=True), "validation fraction")
    test_frac: float = _f("data.test_frac", 0.2, _float_range(0.0, 0.5), "test fraction")
    max_text_tokens: int = _f("data.max_text_tokens", 64, _int_range(8, 8192), "prompt length in tokens")
    augment: bool = _f("data.augment", True, _bool, "flip / small rotation / colour jitter in training")
    vision_tiles: int = _f(
        "data.vision_tiles",
        1,
        _int_choice(VISION_TILES),
        "1: the fundus at tile size, the other tiles padding | 4: the fundus at twice the tile size as a "
        "2x2 tiling (4x the pixels; the vision tower computes padded tiles anyway)",
    )
    text: str = _f(
        "data.text",
        "on",
        _choice(TEXT_MODES),
        "clinical text in the prompt: on | off | shuffled (permuted across training cases: a control)",
    )
    image: str = _f(
        "data.image",
        "on",
        _choice(IMAGE_MODES),
        "the fundus for the vision tower: on | off (a zero placeholder with a zero mask; the U-Net still sees it)",
    )
    order_salt: int = _f(
        "data.order_salt",
        0,
        _int_range(0, 2**31 - 1),
        "extra seed of the training-data order only (a negative control: changing it cannot matter)",
    )
    split_seed: int = _f(
        "data.split_seed",
        0,
        _int_range(0, 2**31 - 1),
        "seed of the split (fixed across trial seeds on purpose)",
    )
    cache_dir: str | None = _f(
        "data.cache_dir",
        None,
        _optional_str,
        "synthetic data, splits, caches, tokenizers ($MDF_SEARCH_CACHE)",
    )


@dataclass(frozen=True)
class RunConfig:
    seed: int = _f("seed", 0, _int_range(0, 2**31 - 1), "seed of init, data order and augmentation")
    workers: int = _f("run.workers", 2, _int_range(1, 4096), "Ray Train workers (DeepSpeed ranks)")
    device: str = _f("run.device", "auto", _choice(DEVICES), "auto | cpu | cuda")


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "unet": UNetConfig,
    "fusion": FusionConfig,
    "film": FilmConfig,
    "freeze": FreezeConfig,
    "head": HeadConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "run": RunConfig,
}


def flat_fields() -> dict[str, tuple[str, dataclasses.Field[Any]]]:
    """Every flat key → (section attribute, dataclass field)."""
    out: dict[str, tuple[str, dataclasses.Field[Any]]] = {}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f.metadata["key"]] = (section, f)
    return out


def _suggest(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    film: FilmConfig = field(default_factory=FilmConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_flat(cls, params: Mapping[str, Any], *, source: str | None = None) -> TrialConfig:
        """Build the typed config from flat scalar params; raise one ConfigError listing every problem."""
        known = flat_fields()
        problems: list[str] = []
        values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, raw in params.items():
            if key not in known:
                problems.append(f"{key}: unknown key{_suggest(key, list(known))}")
                continue
            section, f = known[key]
            try:
                values[section][f.name] = f.metadata["parse"](raw)
            except ValueError as err:
                problems.append(f"{key}: {err}")
        cfg = cls(**{name: sec(**values[name]) for name, sec in _SECTIONS.items()})
        # Cross-field checks run on what parsed (defaults stand in for bad values); problems about a key
        # that already failed on its own are not repeated.
        failed = {p.split(":", 1)[0] for p in problems}
        problems.extend(p for p in cfg.cross_field_problems() if p.split(":", 1)[0] not in failed)
        if problems:
            raise ConfigError(problems, source)
        return cfg

    def cross_field_problems(self) -> list[str]:
        """Checks that need several fields (and the preset's architecture)."""
        from mdf_search.model.presets import get_preset  # model knows the cross-attention layers
        from mdf_search.model.wiring import resolve_layer_map

        problems: list[str] = []
        preset = get_preset(self.model.preset)
        if not self.fusion.levels and self.fusion.injection != "none":
            problems.append(
                f"fusion.injection: {self.fusion.injection!r} needs fused levels, but fusion.levels is 'none'; "
                "set fusion.injection=none for the baseline MLLM, or choose levels such as '1234'"
            )
        if self.fusion.levels and self.fusion.injection == "none":
            problems.append(
                f"fusion.injection: levels {''.join(map(str, self.fusion.levels))} are fused, so injection "
                "cannot be 'none'; choose concat or parallel, or set fusion.levels=none"
            )
        if self.fusion.levels:
            try:
                resolve_layer_map(self.fusion.layer_map, self.fusion.levels, preset.cross_attention_layers)
            except ValueError as err:
                problems.append(f"fusion.map: {err}")
            too_small = [
                lv for lv in self.fusion.levels if preset.unet_size // 2 ** (lv - 1) < self.fusion.grid
            ]
            if too_small:
                problems.append(
                    f"fusion.grid: a {self.fusion.grid}x{self.fusion.grid} grid is finer than U-Net level(s) "
                    f"{too_small} at {preset.unet_size}px; choose fusion.grid <= "
                    f"{preset.unet_size // 2 ** (max(too_small) - 1)}"
                )
        seg_only = [s for s in ("bottleneck", "decoder") if s in self.film.placement]
        if seg_only and self.unet.aux_seg_weight == 0:
            problems.append(
                f"film.placement: {seg_only} only change the segmentation output (the fused skip features "
                "come before the bottleneck), which is unused while unet.aux_seg_weight is 0; set "
                "unet.aux_seg_weight > 0 or use encoder sites (enc, enc1..enc4)"
            )
        if self.unet.init == "pretrained" and not self.unet.weights:
            problems.append(
                "unet.weights: unet.init=pretrained needs a U-Net state dict path in unet.weights"
            )
        if self.model.preset == "11b" and not self.model.weights:
            problems.append(
                "model.weights: the 11b preset loads LLaMA 3.2 11B Vision from a local directory; set "
                "model.weights to it (use preset tiny/small/1b for random init)"
            )
        if self.freeze.strategy == "unet" and self.unet.init == "random" and self.unet.aux_seg_weight > 0:
            problems.append(
                "unet.aux_seg_weight: the U-Net is frozen (freeze=unet), so a segmentation loss cannot train it"
            )
        if self.head.kind == "label_token" and self.head.task == "dual":
            problems.append("head: label_token scoring supports one task; use head=linear for task=dual")
        if self.optim.offload_param and self.optim.zero_stage != 3:
            problems.append("optim.offload_param: parameter offload needs optim.zero_stage=3")
        if self.optim.offload_optimizer and self.optim.zero_stage == 0:
            problems.append(
                "optim.offload_optimizer: optimizer offload needs ZeRO; set optim.zero_stage to 1, 2 or 3"
            )
        if self.data.split == "leave_source_out" and not self.data.test_source:
            problems.append(
                "data.test_source: data.split=leave_source_out needs the source to hold out, e.g. "
                "data.test_source=stonerounds"
            )
        if self.data.test_source and self.data.split != "leave_source_out":
            problems.append(
                f"data.test_source: {self.data.test_source!r} is only used with data.split=leave_source_out"
            )
        if self.data.vision_tiles > preset.max_num_tiles:
            problems.append(
                f"data.vision_tiles: preset {self.model.preset} has max_num_tiles={preset.max_num_tiles}; "
                f"choose data.vision_tiles <= {preset.max_num_tiles}"
            )

        return problems

    def to_flat(self) -> dict[str, Any]:
        """The inverse of from_flat: stable scalar values (tuples become their string spelling)."""
        out: dict[str, Any] = {}
        for key, (section, f) in flat_fields().items():
            value = getattr(getattr(self, section), f.name)
            if key == "fusion.levels":
                value = "".join(str(v) for v in value) or "none"
            elif key == "film.placement":
                value = "+".join(value) or "none"
            out[key] = value
        return out

    def replace(self, **flat: Any) -> TrialConfig:
        """A copy with some flat keys changed (validated again)."""
        return TrialConfig.from_flat({**self.to_flat(), **flat})

    def config_hash(self) -> str:
        """Hash of everything but the seed: trials of one arm share it."""
        flat = {k: v for k, v in self.to_flat().items() if k != "seed"}
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]
