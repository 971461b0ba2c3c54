"""The joint MDF-MLLM: U-Net (+FiLM from the text) → fusion tokens → Mllama cross-attention → heads.

One forward, in order:

1. text vector for FiLM (pooled prompt embedding, or pooled hidden state of a text-only LLM pass);
2. U-Net on the high-resolution image, modulated by FiLM; decoder only when its output is used (a frozen,
   unmodulated U-Net's level features may come precomputed in the batch, ``train/features.py``);
3. fusion tokens per cross-attention layer (``fusion.py``), placed in a :class:`FusionContext`;
4. vision tower + projector (under ``no_grad`` when frozen; when the batch carries their precomputed
   output, ``train/features.py``, that instead), then the Mllama text model;
5. heads on the pooled final hidden state (last non-padding token): linear heads, or label-token
   scoring with the LM head.

With no fused levels and no FiLM sites the model *is* the plain ``MllamaForConditionalGeneration`` plus a
head: nothing is wrapped, and its logits are identical to the library's. A fused model built from the same
seed starts as exactly that baseline: its fusion gates start closed (``fusion.scale_init=0``, ``fusion.py``),
FiLM starts as the identity, and the heads are initialised before the U-Net side draws from the RNG.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MllamaForConditionalGeneration

from mdf_search.model.arch import TYPE_CLASSES, ArchConfig
from mdf_search.model.freezing import apply_freezing, inject_lora
from mdf_search.model.fusion import Fusion, FusionContext, install_fusion
from mdf_search.model.mllama import text_hidden_size
from mdf_search.model.presets import get_preset
from mdf_search.model.unet import FiLM, UNet
from mdf_search.model.wiring import layers_to_levels, resolve_layer_map

BATCH_MLLAMA_KEYS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "aspect_ratio_ids",
    "aspect_ratio_mask",
    "cross_attention_mask",
)
# Precomputed features a batch may carry instead of pixels (``train/features.py``; frozen modules only):
# (B, tiles, patches, hidden): vision tower + projector; (B, tiles, patches, vision_output_dim): the tower only
CACHED_VISION = "cross_attention_states"
CACHED_TOWER = "vision_tower_states"


def cached_level_key(level: int) -> str:
    """Batch key of U-Net level ``level``'s skip features (pooled to the fusion grid for ``pool``)."""
    return f"unet_level{level}"


def task_classes(task: str, diseases: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Head name → class names for a task (``dual`` has both heads)."""
    heads = {"disease": diseases, "type": TYPE_CLASSES}
    return {name: heads[name] for name in (("disease", "type") if task == "dual" else (task,))}


class MDFOutput(NamedTuple):  # a NamedTuple: ZeRO-3's hooks see the tensors inside
    logits: dict[str, torch.Tensor]  # head name → (B, classes)
    seg_logits: torch.Tensor | None  # (B, 1, H, W) when the U-Net decoder ran


class MDFModel(nn.Module):
    def __init__(
        self,
        mllama: MllamaForConditionalGeneration,
        arch: ArchConfig,
        classes: dict[str, tuple[str, ...]],
        label_ids: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__()
        preset = get_preset(arch.model.preset)
        self.arch = arch
        self.classes = classes
        self.mllama = mllama
        hidden = text_hidden_size(mllama)
        if arch.freeze.strategy == "lora":
            inject_lora(mllama, arch.freeze)

        # The heads are initialised before every U-Net-side module: building those draws from the global
        # RNG, and the heads must start with the baseline's weights (same seed), so that a fused model whose
        # gates start closed (fusion.scale_init=0) gives the baseline's outputs bit for bit. (They are
        # registered last, as before, so parameter and state-dict order do not change.)
        heads = nn.ModuleDict()
        if arch.head.kind == "linear":
            heads.update({f"{name}_head": nn.Linear(hidden, len(n)) for name, n in classes.items()})
        elif label_ids is None or set(label_ids) != set(classes):
            raise ValueError("head=label_token needs the label token ids of every head's classes")

        # The baseline MLLM (no fused level, no FiLM, no segmentation loss) has no U-Net at all, so its
        # parameter counts and optimizer hold only what it trains.
        uses_unet = bool(arch.fusion.levels or arch.film.placement or arch.unet.aux_seg_weight > 0)
        self.unet = UNet(preset.unet_channels, preset.unet_bottleneck) if uses_unet else None
        self.film = (
            FiLM(arch.film.placement, self.unet.site_channels, hidden)
            if self.unet and arch.film.placement
            else None
        )
        self.layer_map = resolve_layer_map(
            arch.fusion.layer_map, arch.fusion.levels, preset.cross_attention_layers
        )
        self.fusion: Fusion | None = None
        self.context = FusionContext()
        if arch.fusion.levels:
            layer_levels = layers_to_levels(self.layer_map)
            level_channels = {lv: preset.unet_channels[lv - 1] for lv in arch.fusion.levels}
            level_sizes = {lv: preset.unet_size // 2 ** (lv - 1) for lv in arch.fusion.levels}
            self.fusion = Fusion(
                level_channels, layer_levels, hidden, arch.fusion.grid, arch.fusion.projection, level_sizes
            )
            self.context = install_fusion(mllama, layer_levels, arch.fusion.injection, arch.fusion.scale_init)

        self.heads = heads
        if arch.head.kind == "label_token":
            assert label_ids is not None  # checked with the heads above
            for name, ids in label_ids.items():
                self.register_buffer(
                    f"label_ids_{name}", torch.tensor(ids, dtype=torch.long), persistent=False
                )
        self.decode_unet = arch.unet.aux_seg_weight > 0
        apply_freezing(self, arch.freeze.strategy)

    # -- pieces -------------------------------------------------------------------------------------
    @staticmethod
    def _trainable(module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    def _grad_if(self, module: nn.Module) -> contextlib.AbstractContextManager[None]:
        """``no_grad`` for a frozen module whose output needs no gradient (exact: nothing upstream trains)."""
        return contextlib.nullcontext() if self._trainable(module) else torch.no_grad()

    def text_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).float()
        if self.arch.film.source == "prompt":
            embed = self.mllama.get_input_embeddings()
            with self._grad_if(embed):
                states = embed(input_ids)
        else:
            language_model = self.mllama.model.language_model
            with self._grad_if(language_model):
                states = language_model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).last_hidden_state
        mean = (states.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # pooled in fp32
        return mean.to(states.dtype)  # FiLM runs in the model's dtype (bf16 under ZeRO-3 bf16)

    def vision_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Vision tower + projector, as ``MllamaModel.forward`` does, with ``no_grad`` where frozen; or the
        frozen ones' precomputed output from the batch (``CACHED_VISION``, ``CACHED_TOWER``)."""
        inner = self.mllama.model
        cached = batch.get(CACHED_VISION, batch.get(CACHED_TOWER))
        if cached is not None and (
            self._trainable(inner.vision_model)
            or (CACHED_VISION in batch and self._trainable(inner.multi_modal_projector))
        ):
            raise RuntimeError(
                "the batch carries precomputed vision features, but the modules they stand for train"
            )
        if cached is not None and CACHED_VISION in batch:
            return cached.reshape(-1, cached.shape[-2], inner.hidden_size)
        if cached is not None:
            vision = cached
        else:
            with self._grad_if(inner.vision_model):
                vision = inner.vision_model(
                    pixel_values=batch["pixel_values"],
                    aspect_ratio_ids=batch["aspect_ratio_ids"],
                    aspect_ratio_mask=batch["aspect_ratio_mask"],
                ).last_hidden_state
        with self._grad_if(inner.multi_modal_projector):
            states = inner.multi_modal_projector(vision)
        return states.reshape(-1, vision.shape[-2], inner.hidden_size)

    def fusion_tokens(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        if self.fusion is None and not self.decode_unet and self.film is None:
            return {}, None
        assert self.unet is not None  # built whenever fusion, FiLM or the segmentation loss needs it
        if self.fusion is not None and cached_level_key(self.fusion.levels[0]) in batch:
            if self.film is not None or self.decode_unet or self._trainable(self.unet):
                raise RuntimeError(
                    "the batch carries U-Net features, but the U-Net trains, is modulated or decodes"
                )
            # Fusion reads the fused levels only (skips[level - 1]); the others stay None.
            skips: Any = [batch.get(cached_level_key(level)) for level in (1, 2, 3, 4)]
            return dict(zip(self.fusion.layer_ids, self.fusion(skips), strict=True)), None
        film = self.film(self.text_vector(batch["input_ids"], batch["attention_mask"])) if self.film else None
        with contextlib.nullcontext() if film is not None else self._grad_if(self.unet):
            out = self.unet(batch["unet_pixels"], film, decode=self.decode_unet)
        tokens: dict[int, torch.Tensor] = {}
        if self.fusion is not None:
            tokens = dict(zip(self.fusion.layer_ids, self.fusion(out.skips), strict=True))
        return tokens, out.seg_logits

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> MDFOutput:
        tokens, seg = self.fusion_tokens(batch)
        with self.context.use(tokens):
            out = self.mllama.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                cross_attention_states=self.vision_states(batch),
                cross_attention_mask=batch["cross_attention_mask"],
                use_cache=False,
            )
        hidden = out.last_hidden_state
        last = batch["attention_mask"].sum(1).clamp_min(1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.arch.head.kind == "linear":
            logits = {name: self.heads[f"{name}_head"](pooled).float() for name in self.classes}
        else:
            vocab_logits = self.mllama.lm_head(pooled).float()
            logits = {name: vocab_logits[:, getattr(self, f"label_ids_{name}")] for name in self.classes}
        return MDFOutput(logits=logits, seg_logits=seg)

    def lm_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone's own LM logits with fusion active (used to compare against plain Mllama)."""
        tokens, _ = self.fusion_tokens(batch)
        with self.context.use(tokens):
            return self.mllama(**{k: batch[k] for k in BATCH_MLLAMA_KEYS}, use_cache=False).logits

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **kwargs: object) -> torch.Tensor:
        """Greedy/sampled generation with the U-Net tokens injected at every step (cached decode included)."""
        tokens, _ = self.fusion_tokens(batch)
        with self.context.use(tokens):
            return self.mllama.generate(**{k: batch[k] for k in BATCH_MLLAMA_KEYS}, **kwargs)


def mdf_loss(
    output: MDFOutput, batch: dict[str, torch.Tensor], aux_seg_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed cross-entropy over heads (``dual`` = sum of both) plus the optional vessel loss."""
    parts = {name: F.cross_entropy(logits, batch[f"labels_{name}"]) for name, logits in output.logits.items()}
    total = sum(parts.values(), torch.zeros((), device=next(iter(parts.values())).device))
    if aux_seg_weight > 0 and output.seg_logits is not None:
        has = batch["has_mask"].to(output.seg_logits.dtype)[:, None, None, None]
        per_pixel = F.binary_cross_entropy_with_logits(
            output.seg_logits.float(), batch["vessel_mask"], reduction="none"
        )
        seg = (per_pixel * has).sum() / (has.sum() * per_pixel[0].numel()).clamp_min(1.0)
        parts["seg"] = seg
        total = total + aux_seg_weight * seg
    return total, parts
