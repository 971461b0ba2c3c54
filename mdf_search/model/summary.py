"""What an architecture builds: modules, parameter counts, trainable counts and fusion wiring.

:func:`build_on_meta` is the one meta-device build of an ``ArchConfig``, shared by :func:`summarize`, the
memory planner (``train/memory.py``) and ``validate --deep`` (``search/deep.py``): shapes without storage,
so the 11B needs no weights and allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdf_search.model.arch import ArchConfig
from mdf_search.model.freezing import parameter_counts
from mdf_search.model.fusion import patch_geometry
from mdf_search.model.mdf import MDFModel, task_classes
from mdf_search.model.mllama import build_mllama
from mdf_search.model.presets import get_preset
from mdf_search.model.wiring import layers_to_levels

SUMMARY_DISEASES = ("normal", "dr", "amd", "glaucoma", "rp", "stargardt")  # stand-in disease classes


def build_on_meta(
    arch: ArchConfig,
    *,
    image_token_index: int | None = None,
    label_ids: dict[str, list[int]] | None = None,
) -> MDFModel:
    """The joint model of ``arch`` on the meta device, with a random-init backbone of the preset's full
    config and the heads of :data:`SUMMARY_DISEASES` (in the current default dtype).

    ``label_ids`` (head=label_token): the label tokens' ids; without them the first ids stand in (they are
    buffers, not parameters, so counts do not depend on them).
    """
    classes = task_classes(arch.head.task, SUMMARY_DISEASES)
    if arch.head.kind == "label_token" and label_ids is None:
        label_ids = {name: list(range(len(names))) for name, names in classes.items()}
    with torch.device("meta"):
        mllama = build_mllama(
            get_preset(arch.model.preset),
            gate_init=arch.model.xattn_gate_init,
            image_token_index=image_token_index,
        )
        return MDFModel(mllama, arch, classes, label_ids)


@dataclass(frozen=True)
class ModuleRow:
    name: str
    params: int
    trainable: int


@dataclass(frozen=True)
class ModelSummary:
    preset: str
    rows: list[ModuleRow]
    roles: dict[str, tuple[int, int]]
    wiring: list[tuple[int, tuple[int, ...], int]]  # (text layer, levels, tokens)
    cross_attention_layers: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(total for total, _ in self.roles.values())

    @property
    def trainable(self) -> int:
        return sum(trainable for _, trainable in self.roles.values())


def _count(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _projection(arch: ArchConfig, level: int) -> str:
    """How a level becomes tokens, e.g. ``pool to 4x4`` or ``patch 18x18 px, 2 px padding → 4x4``."""
    grid = arch.fusion.grid
    if arch.fusion.projection == "pool":
        return f"pool to {grid}x{grid}"
    kernel, pad = patch_geometry(get_preset(arch.model.preset).unet_size // 2 ** (level - 1), grid)
    return f"patch {kernel}x{kernel} px{f', {pad} px padding' if pad else ''} → {grid}x{grid}"


def summarize(arch: ArchConfig) -> ModelSummary:
    preset = get_preset(arch.model.preset)
    model = build_on_meta(arch)
    inner = model.mllama.model
    xattn = set(preset.cross_attention_layers)
    layers = inner.language_model.layers
    rows = [ModuleRow("unet", *_count(model.unet))] if model.unet is not None else []
    if model.film is not None:
        rows.append(ModuleRow("film", *_count(model.film)))
    if model.fusion is not None:
        for level, projector in model.fusion.projectors.items():
            rows.append(
                ModuleRow(f"fusion.level{level} ({_projection(arch, int(level))})", *_count(projector))
            )
    rows.append(ModuleRow("mllama.vision_model", *_count(inner.vision_model)))
    rows.append(ModuleRow("mllama.projector", *_count(inner.multi_modal_projector)))
    rows.append(ModuleRow("mllama.embed_tokens", *_count(inner.language_model.embed_tokens)))
    self_attn = [layers[i] for i in range(len(layers)) if i not in xattn]
    cross = [layers[i] for i in sorted(xattn)]
    rows.append(
        ModuleRow(
            f"mllama.self_attn_layers ({len(self_attn)})",
            *map(sum, zip(*map(_count, self_attn), strict=True)),
        )
    )
    rows.append(
        ModuleRow(f"mllama.xattn_layers ({len(cross)})", *map(sum, zip(*map(_count, cross), strict=True)))
    )
    rows.append(ModuleRow("mllama.lm_head", *_count(model.mllama.lm_head)))
    rows.append(ModuleRow("heads", *_count(model.heads)))
    tokens = arch.fusion.grid**2
    wiring = [
        (layer, levels, tokens * len(levels)) for layer, levels in layers_to_levels(model.layer_map).items()
    ]
    return ModelSummary(
        arch.model.preset, rows, parameter_counts(model), wiring, preset.cross_attention_layers
    )
