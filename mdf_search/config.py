"""Typed configuration of one trial.

The one path from a flat dict of scalars (what a sampler or a YAML ``fixed:`` block produces) to typed
config is :meth:`TrialConfig.from_flat`. Everything below it is a frozen dataclass; nothing downstream
reads a raw dict. Flat keys are stable strings (they are the Parquet column names of the results), e.g.
``fusion.levels="1234"``, ``film.placement="enc+bottleneck"``, ``freeze="lora"``, ``optim.lr=3e-5``.

The architecture sections (model, unet, fusion, film, freeze, head) live in ``model/arch.py``:
``TrialConfig.arch`` is what ``MDFModel`` is built from. This module adds the optimiser, data and run
sections, and :meth:`TrialConfig.cross_field_problems` holds every rule that joins fields (of any
sections, and with the preset's architecture). Each field is declared with
:func:`mdf_search.fields.flat_field`: its flat key, its parser and a one-line doc (every field has one;
it documents the key where it is declared, and nothing prints it).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mdf_search.fields import (
    boolean,
    choice,
    flat_field,
    float_range,
    int_choice,
    int_range,
    optional_str,
    short_repr,
)
from mdf_search.model.arch import (
    ARCH_SECTIONS,
    ArchConfig,
    FilmConfig,
    FreezeConfig,
    FusionConfig,
    HeadConfig,
    ModelConfig,
    UNetConfig,
)
from mdf_search.model.presets import get_preset
from mdf_search.model.wiring import resolve_layer_map

# Stable option names of the training sections (they appear in results and reports: never rename one, add
# a new one instead). The architecture's live in model/arch.py.
PRECISIONS = ("fp32", "bf16")
VISION_TILES = (1, 4)
TEXT_MODES = ("on", "off", "shuffled")
IMAGE_MODES = ("on", "off")
SPLITS = ("stratified", "kfold", "authors", "leave_source_out")
CLASS_WEIGHTS = ("none", "balanced")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_POLICIES = ("every_epoch", "last", "none")  # train/checkpoint.py says what each keeps
# Keys that never change what a trial computes, only how it runs: trials differing in them share an arm's
# config hash (the seed is its own axis).
NOT_HASHED = ("seed", "run.checkpoint")
# Bounds of the synthetic study (``data synth`` and ``data.synthetic_*`` read them; the defaults are
# DataConfig's). 12 images: 4 FIVES, 3 HRF, 5 StoneRounds (``data.synthetic.plan``). 4096 px covers the
# full size of every real source (FIVES 2048², HRF 3504x2336); one 4096 px picture already takes about
# 1 GB and 3 s to draw, and a trial draws its study on first use.
SYNTHETIC_MIN_IMAGES = 12
SYNTHETIC_MIN_SIZE = 32
SYNTHETIC_MAX_SIZE = 4096
MAX_SEED = 2**31 - 1  # seeds are 32-bit (numpy's and torch's generators take them)
MAX_WORKERS = 4096
MAX_EPOCHS = 10_000


class ConfigError(ValueError):
    """Every problem of a configuration at once, each with its key, the value and the fix."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}{len(self.problems)} invalid configuration value(s):\n{lines}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = flat_field("optim.lr", 3e-4, float_range(0.0, 1.0, open_low=True), "base learning rate (LLM)")
    lr_unet_mult: float = flat_field(
        "optim.lr_unet_mult", 10.0, float_range(0.0, 1e4), "U-Net lr = lr x this"
    )
    lr_fusion_mult: float = flat_field(
        "optim.lr_fusion_mult", 10.0, float_range(0.0, 1e4), "fusion+FiLM lr multiplier"
    )
    lr_vision_mult: float = flat_field(
        "optim.lr_vision_mult", 1.0, float_range(0.0, 1e4), "vision tower lr multiplier"
    )
    lr_head_mult: float = flat_field("optim.lr_head_mult", 10.0, float_range(0.0, 1e4), "head lr multiplier")
    weight_decay: float = flat_field(
        "optim.weight_decay", 0.01, float_range(0.0, 1.0), "decoupled weight decay"
    )
    warmup_frac: float = flat_field(
        "optim.warmup_frac", 0.1, float_range(0.0, 0.9), "warmup steps / total steps"
    )
    beta2: float = flat_field("optim.beta2", 0.999, float_range(0.5, 0.99999), "Adam beta2")
    grad_clip: float = flat_field(
        "optim.grad_clip", 1.0, float_range(0.0, 1e6), "global grad-norm clip (0 = off)"
    )
    micro_batch: int = flat_field("optim.micro_batch", 4, int_range(1, 4096), "micro-batch per worker")
    grad_accum: int = flat_field("optim.grad_accum", 1, int_range(1, 4096), "gradient accumulation steps")
    epochs: int = flat_field("optim.epochs", 3, int_range(1, MAX_EPOCHS), "epochs")
    zero_stage: int = flat_field("optim.zero_stage", 3, int_range(0, 3), "DeepSpeed ZeRO stage")
    offload_optimizer: bool = flat_field(
        "optim.offload_optimizer", False, boolean, "ZeRO optimizer-state offload to CPU"
    )
    offload_param: bool = flat_field("optim.offload_param", False, boolean, "ZeRO-3 parameter offload to CPU")
    precision: str = flat_field("optim.precision", "fp32", choice(PRECISIONS), "fp32 | bf16")
    class_weights: str = flat_field(
        "optim.class_weights",
        "none",
        choice(CLASS_WEIGHTS),
        "none | balanced (cross-entropy weights n / (k * n_class), fitted on the training split only)",
    )


@dataclass(frozen=True)
class DataConfig:
    manifest: str | None = flat_field(
        "data.manifest",
        None,
        optional_str,
        "manifest Parquet; empty = synthetic data generated on first use",
    )
    synthetic_images: int = flat_field(
        "data.synthetic_images", 240, int_range(SYNTHETIC_MIN_IMAGES, 1_000_000), "synthetic image count"
    )
    synthetic_size: int = flat_field(
        "data.synthetic_size",
        160,
        int_range(SYNTHETIC_MIN_SIZE, SYNTHETIC_MAX_SIZE),
        "synthetic image side (px)",
    )
    synthetic_severity: float = flat_field(
        "data.synthetic_severity", 1.0, float_range(0.0, 1.0), "synthetic sign strength (0 = invisible)"
    )
    split: str = flat_field(
        "data.split",
        "stratified",
        choice(SPLITS),
        "stratified | kfold | authors | leave_source_out (data.test_source is the test split)",
    )
    test_source: str | None = flat_field(
        "data.test_source",
        None,
        optional_str,
        "the source held out as the test split with data.split=leave_source_out (e.g. stonerounds)",
    )
    fold: int = flat_field("data.fold", 0, int_range(0, 99), "k-fold index (data.split=kfold)")
    folds: int = flat_field("data.folds", 5, int_range(2, 100), "k in k-fold")
    val_frac: float = flat_field(
        "data.val_frac", 0.2, float_range(0.0, 0.5, open_low=True), "validation fraction"
    )
    test_frac: float = flat_field("data.test_frac", 0.2, float_range(0.0, 0.5), "test fraction")
    max_text_tokens: int = flat_field(
        "data.max_text_tokens", 64, int_range(8, 8192), "prompt length in tokens"
    )
    augment: bool = flat_field(
        "data.augment", True, boolean, "flip / small rotation / colour jitter in training"
    )
    vision_tiles: int = flat_field(
        "data.vision_tiles",
        1,
        int_choice(VISION_TILES),
        "1: the fundus at tile size, the other tiles padding | 4: the fundus at twice the tile size as a "
        "2x2 tiling (4x the pixels; the vision tower computes padded tiles anyway)",
    )
    text: str = flat_field(
        "data.text",
        "on",
        choice(TEXT_MODES),
        "clinical text in the prompt: on | off | shuffled (permuted across training cases: a control)",
    )
    image: str = flat_field(
        "data.image",
        "on",
        choice(IMAGE_MODES),
        "the fundus for the vision tower: on | off (a zero placeholder with a zero mask; the U-Net still sees it)",
    )
    order_salt: int = flat_field(
        "data.order_salt",
        0,
        int_range(0, MAX_SEED),
        "extra seed of the training-data order only (a negative control: changing it cannot matter)",
    )
    split_seed: int = flat_field(
        "data.split_seed",
        0,
        int_range(0, MAX_SEED),
        "seed of the split (fixed across trial seeds on purpose)",
    )
    cache_dir: str | None = flat_field(
        "data.cache_dir",
        None,
        optional_str,
        "synthetic data, splits, caches, tokenizers ($MDF_SEARCH_CACHE)",
    )


@dataclass(frozen=True)
class RunConfig:
    seed: int = flat_field("seed", 0, int_range(0, MAX_SEED), "seed of init, data order and augmentation")
    workers: int = flat_field(
        "run.workers", 2, int_range(1, MAX_WORKERS), "Ray Train workers (DeepSpeed ranks)"
    )
    device: str = flat_field("run.device", "auto", choice(DEVICES), "auto | cpu | cuda")
    checkpoint: str = flat_field(
        "run.checkpoint",
        "every_epoch",
        choice(CHECKPOINT_POLICIES),
        "model checkpoints: every_epoch | last (the last epoch only) | none (metrics and predictions only)",
    )


_SECTIONS: dict[str, type] = {
    **ARCH_SECTIONS,
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
                name = str(key) if len(str(key)) <= 80 else str(key)[:77] + "..."
                problems.append(f"{name}: unknown key{_suggest(str(key)[:200], list(known))}")
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

    @property
    def arch(self) -> ArchConfig:
        """The architecture sections: what ``MDFModel`` is built from (hashable: a cache key)."""
        return ArchConfig(self.model, self.unet, self.fusion, self.film, self.freeze, self.head)

    def cross_field_problems(self) -> list[str]:
        """Every rule that needs several fields (and the preset's architecture); each problem names its
        key, what must hold and the fix. ``from_flat`` raises them; planners refuse a config that has any."""
        problems: list[str] = []
        preset = get_preset(self.model.preset)
        if not self.fusion.levels and self.fusion.injection != "none":
            problems.append(
                f"fusion.injection: {short_repr(self.fusion.injection)} needs fused levels, but fusion.levels is 'none'; "
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
                f"data.test_source: {short_repr(self.data.test_source)} is only used with data.split=leave_source_out"
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
        """Hash of everything but the seed and the checkpoint policy: trials of one arm share it."""
        flat = {k: v for k, v in self.to_flat().items() if k not in NOT_HASHED}
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]
