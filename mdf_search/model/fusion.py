"""Multi-depth fusion: U-Net skip features → patch tokens → chosen Mllama cross-attention layers.

Each fused level is pooled to a ``grid x grid`` patch grid and projected to the LLM hidden size (plus a
learned position embedding per patch and an embedding per level), then normalised. The tokens of every
level mapped to a cross-attention layer are concatenated and handed to that layer through
:class:`FusedCrossAttention`, which wraps the layer's own ``MllamaTextCrossAttention`` and so reuses its
q/k/v/o projections and norms:

- ``concat``: the U-Net tokens join the image keys/values (``[image; tanh(s) * unet]``) and the additive
  cross-attention mask is padded with zeros (attend) for them, on every step, generation's cached decode
  steps included (the cache then already holds the joined keys).
- ``parallel``: the paper's "scaled cross-attention": ``attn(image) + tanh(s) * attn(unet)``, a second
  attention branch over the U-Net tokens only, recomputed every step (it is never cached).

``s`` is one learnable scalar per fused layer, owned by the wrapper so that ZeRO-3 gathers it with the
module whose forward reads it. The tokens travel from the joint model's forward to the wrappers through a
:class:`FusionContext` (a plain holder, set for the duration of one forward or one ``generate``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class FusionContext:
    """Layer index → U-Net tokens ``(B, N, D)`` for the forward in progress."""

    def __init__(self) -> None:
        self.tokens: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def use(self, tokens: dict[int, torch.Tensor]) -> Iterator[None]:
        self.tokens = tokens
        try:
            yield
        finally:
            self.tokens = {}


class LevelProjector(nn.Module):
    """One U-Net level ``(B, C, h, w)`` → ``grid**2`` tokens of the LLM width ``(B, grid**2, D)``."""

    def __init__(self, channels: int, hidden: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(channels, hidden)
        self.pos = nn.Parameter(torch.zeros(grid * grid, hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(feature, self.grid)  # (B, C, g, g): patch-wise means
        tokens = pooled.flatten(2).transpose(1, 2)  # (B, g*g, C)
        return self.norm(self.proj(tokens) + self.pos)


class Fusion(nn.Module):
    """Projects the fused levels and assembles each layer's token set."""

    def __init__(
        self,
        level_channels: dict[int, int],
        layer_levels: dict[int, tuple[int, ...]],
        hidden: int,
        grid: int,
    ) -> None:
        super().__init__()
        self.layer_levels = layer_levels
        self.projectors = nn.ModuleDict(
            {str(lv): LevelProjector(c, hidden, grid) for lv, c in level_channels.items()}
        )

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.projectors)

    @property
    def layer_ids(self) -> tuple[int, ...]:
        return tuple(self.layer_levels)

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Token sets in the order of :attr:`layer_ids` (a list, not a dict: ZeRO-3's post-forward hook
        walks the output and expects string keys)."""
        per_level = {lv: self.projectors[str(lv)](skips[lv - 1]) for lv in self.levels}
        return [torch.cat([per_level[lv] for lv in lvs], dim=1) for lvs in self.layer_levels.values()]


class FusedCrossAttention(nn.Module):
    """Wraps one ``MllamaTextCrossAttention`` and adds the U-Net tokens of its layer."""

    def __init__(
        self, inner: nn.Module, layer_idx: int, mode: str, scale_init: float, context: FusionContext
    ) -> None:
        super().__init__()
        if mode not in ("concat", "parallel"):
            raise ValueError(f"injection mode must be 'concat' or 'parallel', but got {mode!r}")
        self.inner = inner
        self.layer_idx = layer_idx
        self.mode = mode
        self.fusion_scale = nn.Parameter(torch.full((1,), float(scale_init)))
        self._context = context  # not a module: shared, read-only here

    def forward(
        self,
        hidden_states: torch.Tensor,
        cross_attention_states: torch.Tensor | None = None,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self._context.tokens.get(self.layer_idx)
        if tokens is None:  # no fusion in this call (e.g. a text-only pass)
            return self.inner(
                hidden_states, cross_attention_states, cache=cache, attention_mask=attention_mask, **kwargs
            )
        gate = self.fusion_scale.tanh()
        if tokens.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"U-Net tokens have batch {tokens.shape[0]} but the text has {hidden_states.shape[0]}; "
                "beam search and num_return_sequences > 1 are not supported with fusion"
            )
        tokens = tokens.to(hidden_states.dtype)
        if self.mode == "concat":
            if cross_attention_states is not None:
                cross_attention_states = torch.cat([cross_attention_states, gate * tokens], dim=1)
            if attention_mask is not None:
                attention_mask = F.pad(attention_mask, (0, tokens.shape[1]), value=0.0)
            return self.inner(
                hidden_states, cross_attention_states, cache=cache, attention_mask=attention_mask, **kwargs
            )
        out, weights = self.inner(
            hidden_states, cross_attention_states, cache=cache, attention_mask=attention_mask, **kwargs
        )
        # No mask: every text token sees every U-Net token. is_causal must be explicit, or SDPA treats a
        # missing mask as causal and hides all but the first tokens from the first queries.
        unet_out, _ = self.inner(
            hidden_states, tokens, cache=None, attention_mask=None, **{**kwargs, "is_causal": False}
        )
        return out + gate * unet_out, weights


def install_fusion(
    mllama: nn.Module, layer_levels: dict[int, tuple[int, ...]], mode: str, scale_init: float
) -> FusionContext:
    """Wrap the cross-attention of every fused layer; returns the context the wrappers read."""
    from mdf_search.model.mllama import text_layers

    context = FusionContext()
    layers: Any = text_layers(mllama)
    for layer_idx in layer_levels:
        layer = layers[layer_idx]
        if not hasattr(layer, "cross_attn"):
            raise ValueError(f"text layer {layer_idx} is not a cross-attention layer")
        layer.cross_attn = FusedCrossAttention(layer.cross_attn, layer_idx, mode, scale_init, context)
    return context


def backbone_state_dict(mllama: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict with the fusion wrappers removed (plain Mllama key names)."""
    return {
        key.replace(".cross_attn.inner.", ".cross_attn."): value
        for key, value in mllama.state_dict().items()
        if not key.endswith(".fusion_scale")
    }
