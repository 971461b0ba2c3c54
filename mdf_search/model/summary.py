"""What a model configuration builds: modules, parameter counts, trainable counts and fusion wiring.

Built on the meta device when asked (the 11B needs no weights and allocates nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdf_search.config import TrialConfig
from mdf_search.model.freezing import parameter_counts
from mdf_search.model.fusion import patch_geometry
from mdf_search.model.mdf import MDFModel, task_classes
from mdf_search.model.mllama import build_mllama
from mdf_search.model.presets import get_preset
from mdf_search.model.wiring import layers_to_levels

SUMMARY_DISEASES = ("normal", "dr", "amd", "glaucoma", "rp", "stargardt")


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


def _projection(cfg: TrialConfig, level: int) -> str:
    """How a level becomes tokens, e.g. ``pool to 4x4`` or ``patch 18x18 px, 2 px padding → 4x4``."""
    grid = cfg.fusion.grid
    if cfg.fusion.projection == "pool":
        return f"pool to {grid}x{grid}"
    kernel, pad = patch_geometry(get_preset(cfg.model.preset).unet_size // 2 ** (level - 1), grid)
    return f"patch {kernel}x{kernel} px{f', {pad} px padding' if pad else ''} → {grid}x{grid}"


def summarize(cfg: TrialConfig, *, meta: bool = True) -> ModelSummary:
    preset = get_preset(cfg.model.preset)
    device = torch.device("meta") if meta else torch.device("cpu")
    with device:
        mllama = build_mllama(preset, gate_init=cfg.model.xattn_gate_init)
        model = MDFModel(mllama, cfg, task_classes(cfg.head.task, SUMMARY_DISEASES))
    inner = model.mllama.model
    xattn = set(preset.cross_attention_layers)
    layers = inner.language_model.layers
    rows = [ModuleRow("unet", *_count(model.unet))] if model.unet is not None else []
    if model.film is not None:
        rows.append(ModuleRow("film", *_count(model.film)))
    if model.fusion is not None:
        for level, projector in model.fusion.projectors.items():
            rows.append(
                ModuleRow(f"fusion.level{level} ({_projection(cfg, int(level))})", *_count(projector))
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
    tokens = cfg.fusion.grid**2
    wiring = [
        (layer, levels, tokens * len(levels)) for layer, levels in layers_to_levels(model.layer_map).items()
    ]
    return ModelSummary(
        cfg.model.preset, rows, parameter_counts(model), wiring, preset.cross_attention_layers
    )
