"""Multi-depth fusion: U-Net skip features → patch tokens → chosen Mllama cross-attention layers.

Each fused level becomes a ``grid x grid`` patch grid, projected to the LLM hidden size (plus a learned
position embedding per patch), then normalised. ``fusion.projection`` chooses how a patch becomes a token:

- ``pool``: the patch's per-channel mean (adaptive average pooling), then a linear map ``C → D``. Detail
  inside a patch survives only as far as it moves the mean.
- ``patch``: a learned strided convolution over the whole patch, as a ViT's patch embedding
  (``kernel = stride = ceil(level_size / grid)``, computed as one matmul over the patches:
  :class:`PatchEmbedding`), then a linear map ``C → D``. The convolution keeps the
  level's width ``C``: a ViT-style ``Conv2d(C, D, k, k)`` would hold ``C * D * k**2`` parameters (5.1 B for
  level 1 of the 11b preset alone); the factorisation ``Conv2d(C, C, k, k)`` then ``Linear(C, D)``
  (an ASSUMPTION) costs ``C**2 * k**2``, about the same at every level because ``C`` doubles as the side
  halves. A level whose side is not a multiple of ``grid`` (e.g. 70 px at 11b, level 4, grid 4) is
  zero-padded symmetrically to ``k * grid`` first (:func:`patch_geometry`), so every level still gives
  ``grid**2`` tokens; the padding is less than ``grid`` pixels.

The tokens of every level mapped to a cross-attention layer are concatenated and handed to that layer
through :class:`FusedCrossAttention`, which wraps the layer's own ``MllamaTextCrossAttention`` and so
reuses its q/k/v/o projections and norms. Each wrapper owns one learnable scalar ``s`` (``fusion_scale``,
initialised to ``fusion.scale_init``) and gates the U-Net path with ``g = tanh(s)``:

- ``parallel``: the paper's "scaled cross-attention": ``attn(image) + g * attn(unet)``, a second attention
  branch over the U-Net tokens only, recomputed every step (it is never cached).
- ``concat``: the U-Net tokens join the image keys/values in one softmax, and the gate sets how much of
  that softmax's share they keep: ``attn(image) + g * (attn([image; unet]) - attn(image))``. If the U-Net
  keys take a share ``m`` of the joint softmax (per head and query), the output is exactly an attention in
  which they take ``g * m`` and the image keys ``1 - g * m`` in their own proportions. The additive
  cross-attention mask is padded with zeros (attend) for the U-Net keys.

``s = 0`` (the default) closes the path: ``g = 0``, the output is the wrapped layer's own output bit for
bit, and the fused model starts as the baseline MLLM. It still learns to open: ``d out / d s`` at 0 is
``attn(unet)`` (parallel) or ``attn([image; unet]) - attn(image)`` (concat), non-zero, so the scale gets a
gradient from the first step (once Mllama's own cross-attention gates are non-zero); the U-Net and the
projectors get theirs once ``g`` has moved. ``|g| < 1`` throughout; a negative ``g`` subtracts the U-Net
contribution (concat: extrapolates away from the joint attention), as Mllama's own tanh gates may.

Why not gate concat inside the softmax: scaling the U-Net tokens before ``k_proj`` does nothing to the
keys, because ``k_norm`` (RMS) cancels the scale (with the old gate at 0 the U-Net keys still took ~54 % of
the mass on tiny); and a bias on the U-Net logits that closes the path exactly (mass 0 in fp32) saturates
the softmax, whose gradient with respect to that bias is then 0 too, so a closed gate could never open.
Any smooth gate that is exactly closed and non-negative has a zero derivative there, hence the signed
interpolation. Its cost is a second softmax over the image keys; their projections are shared.

Cost (training and evaluation, :meth:`FusedCrossAttention._fused`): the wrapper runs the wrapped layer's
operations itself, so the query, the image keys/values and ``o_proj`` are computed once per layer for
both paths; only the U-Net tokens' keys/values and the second attention are extra. Generation (a cache in
use) calls the wrapped layer as it is, which fills the model's own cache.

The tokens travel from the joint model's forward to the wrappers through a :class:`FusionContext` (a plain
holder, set for the duration of one forward or one ``generate``), which also keeps the joint keys/values of
``concat`` layers between generation's cached decode steps (the model's own cache holds the image keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.mllama.modeling_mllama import eager_attention_forward

from mdf_search.model.arch import INJECTIONS, PROJECTIONS
from mdf_search.model.mllama import text_layers


class _KeyValues(NamedTuple):
    keys: torch.Tensor
    values: torch.Tensor


class JointKeyValues:
    """The joint (image + U-Net) keys/values of each ``concat`` layer, kept from prefill to the decode steps.

    Implements the part of transformers' cache interface ``MllamaTextCrossAttention`` uses: ``update`` at
    prefill (the whole key set: it replaces, never appends) and ``layers[layer_idx].keys / .values``.
    """

    def __init__(self) -> None:
        self.layers: dict[int, _KeyValues] = {}

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.layers[layer_idx] = _KeyValues(keys, values)
        return keys, values


class FusionContext:
    """Layer index → U-Net tokens ``(B, N, D)`` for the forward (or ``generate``) in progress."""

    def __init__(self) -> None:
        self.tokens: dict[int, torch.Tensor] = {}
        self.joint = JointKeyValues()

    @contextlib.contextmanager
    def use(self, tokens: dict[int, torch.Tensor]) -> Iterator[None]:
        self.tokens, self.joint = tokens, JointKeyValues()
        try:
            yield
        finally:
            self.tokens, self.joint = {}, JointKeyValues()


def patch_geometry(size: int, grid: int) -> tuple[int, int]:
    """``(kernel, padding)`` of the ``patch`` projection for a ``size`` px level: kernel = stride =
    ``ceil(size / grid)``, and ``padding = kernel * grid - size`` zero pixels (split around the level)."""
    if not 1 <= grid <= size:
        raise ValueError(f"1 <= fusion.grid <= level side must hold, but got (grid={grid}, side={size})")
    kernel = -(-size // grid)
    return kernel, kernel * grid - size


def _patches(feature: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, rows, H / rows, columns, W / columns)``: patch ``(i, j)`` is ``[:, :, i, :, j]``."""
    batch, channels, height, width = feature.shape
    return feature.reshape(batch, channels, rows, height // rows, columns, width // columns)


def pool_tokens(feature: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch-wise channel means ``(B, grid**2, C)``: ``adaptive_avg_pool2d(feature, grid)``, token-major.

    A side that ``grid`` divides (every preset's level at the default grid) is summed over a reshaped
    view: the same means (up to fp32 rounding), and a backward that broadcasts instead of running
    ``adaptive_avg_pool2d``'s slow CPU backward over the whole level.
    """
    height, width = feature.shape[-2:]
    if height % grid or width % grid:
        pooled = F.adaptive_avg_pool2d(feature, grid)
    else:
        pooled = _patches(feature, grid, grid).sum(5).sum(3) / ((height // grid) * (width // grid))
    return pooled.flatten(2).transpose(1, 2)


class PatchEmbedding(nn.Conv2d):
    """A ``Conv2d(C, C', k, k, stride=k)`` (no padding) computed as one matmul over the flattened patches.

    The same parameters (and state-dict keys) as the convolution, and the same result up to fp32
    rounding, but returned token-major ``(B, grid**2, C')``. A convolution whose kernel is as large as a
    patch (32-56 px at level 1) is slow on CPU; a patch never overlaps another, so the patches are only
    regrouped, once, and multiplied by the kernel flattened to ``(C', C * k * k)``.
    """

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        (height, width), (kh, kw) = feature.shape[-2:], self.kernel_size
        if height % kh or width % kw:
            raise ValueError(f"a {height}x{width} map is not a whole number of {kh}x{kw} patches")
        rows, columns = height // kh, width // kw
        patches = _patches(feature, rows, columns).permute(0, 2, 4, 1, 3, 5)  # (B, rows, columns, C, kh, kw)
        tokens = patches.reshape(feature.shape[0], rows * columns, -1)
        return F.linear(tokens, self.weight.flatten(1), self.bias)


class LevelProjector(nn.Module):
    """One U-Net level ``(B, C, h, w)`` → ``grid**2`` tokens of the LLM width ``(B, grid**2, D)``.

    ``size`` (the level's side in pixels) is needed by ``projection="patch"``, whose kernel depends on it.
    """

    def __init__(
        self, channels: int, hidden: int, grid: int, projection: str = "pool", size: int | None = None
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"fusion.projection must be one of {list(PROJECTIONS)}, but got {projection!r}")
        self.grid = grid
        self.projection = projection
        self.size = size
        self.patch: PatchEmbedding | None = None
        self.padding = (0, 0, 0, 0)
        if projection == "patch":
            if size is None:
                raise ValueError("projection='patch' needs the level's side in pixels (size)")
            kernel, pad = patch_geometry(size, grid)
            self.padding = (pad // 2, pad - pad // 2) * 2  # left, right, top, bottom
            self.patch = PatchEmbedding(channels, channels, kernel_size=kernel, stride=kernel)
        self.proj = nn.Linear(channels, hidden)
        self.pos = nn.Parameter(torch.zeros(grid * grid, hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            tokens = pool_tokens(feature, self.grid)  # (B, g*g, C): patch-wise means
        else:
            if feature.shape[-2:] != (self.size, self.size):
                raise ValueError(
                    f"the patch projection was built for {self.size}x{self.size} px but got "
                    f"{tuple(feature.shape[-2:])}: the U-Net input must have the preset's unet_size"
                )
            tokens = self.patch(F.pad(feature, self.padding) if any(self.padding) else feature)  # (B, g*g, C)
        return self.norm(self.proj(tokens) + self.pos)


class Fusion(nn.Module):
    """Projects the fused levels and assembles each layer's token set."""

    def __init__(
        self,
        level_channels: dict[int, int],
        layer_levels: dict[int, tuple[int, ...]],
        hidden: int,
        grid: int,
        projection: str = "pool",
        level_sizes: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        sizes = level_sizes or {}
        self.layer_levels = layer_levels
        self.projectors = nn.ModuleDict(
            {
                str(lv): LevelProjector(c, hidden, grid, projection, sizes.get(lv))
                for lv, c in level_channels.items()
            }
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
    """Wraps one ``MllamaTextCrossAttention`` and adds the U-Net tokens of its layer, gated by ``tanh(s)``."""

    def __init__(
        self, inner: nn.Module, layer_idx: int, mode: str, scale_init: float, context: FusionContext
    ) -> None:
        super().__init__()
        if mode == "none" or mode not in INJECTIONS:
            raise ValueError(f"injection mode must be 'concat' or 'parallel', but got {mode!r}")
        self.inner = inner
        self.layer_idx = layer_idx
        self.mode = mode
        self.fusion_scale = nn.Parameter(torch.full((1,), float(scale_init)))
        self._context = context  # not a module: shared, read-only here

    @property
    def gate(self) -> torch.Tensor:
        """``tanh(s)``: 0 closes the U-Net path, ±1 is the limit."""
        return self.fusion_scale.tanh()

    def forward(
        self,
        hidden_states: torch.Tensor,
        cross_attention_states: torch.Tensor | None = None,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self._context.tokens.get(self.layer_idx)
        if tokens is None:  # no fusion in this call (e.g. a text-only pass): the wrapped layer alone
            return self.inner(
                hidden_states, cross_attention_states, cache=cache, attention_mask=attention_mask, **kwargs
            )
        if tokens.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"U-Net tokens have batch {tokens.shape[0]} but the text has {hidden_states.shape[0]}; "
                "beam search and num_return_sequences > 1 are not supported with fusion"
            )
        tokens = tokens.to(hidden_states.dtype)
        if cache is None and cross_attention_states is not None:  # training, evaluation: one pass
            return self._fused(hidden_states, cross_attention_states, tokens, attention_mask, kwargs)
        # Generation (a cache is in use): the image path is the wrapped layer's own call, untouched (it
        # fills the model's cache); with the gate at 0 it is the output.
        out, weights = self.inner(
            hidden_states, cross_attention_states, cache=cache, attention_mask=attention_mask, **kwargs
        )
        if self.mode == "concat":
            joint = self._joint_attention(
                hidden_states, cross_attention_states, tokens, cache, attention_mask, kwargs
            )
            return out + self.gate * (joint - out), weights
        # No mask: every text token sees every U-Net token. is_causal must be explicit, or SDPA treats a
        # missing mask as causal and hides all but the first tokens from the first queries.
        unet_out, _ = self.inner(
            hidden_states, tokens, cache=None, attention_mask=None, **{**kwargs, "is_causal": False}
        )
        return out + self.gate * unet_out, weights

    def _project(self, states: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (``k_norm``-ed) and values ``(B, kv_heads, L, head_dim)``, as the wrapped layer computes them."""
        inner: Any = self.inner
        shape = (batch, -1, inner.num_key_value_heads, inner.head_dim)
        keys = inner.k_proj(states).view(shape).transpose(1, 2)
        values = inner.v_proj(states).view(shape).transpose(1, 2)
        return inner.k_norm(keys), values

    def _fused(
        self,
        hidden_states: torch.Tensor,
        cross_attention_states: torch.Tensor,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both paths in one pass: the wrapped layer's q/k/v/o projections and norms, each applied once.

        The same operations as ``MllamaTextCrossAttention.forward`` in the same order, so the image path is
        bitwise the wrapped layer's, but the query is projected once for both attentions, the image keys
        and values once (``concat`` used to project them again inside the joint attention), and ``o_proj``
        (linear, no bias) runs once on the gated mix of the per-head outputs instead of once per path:
        ``o(a) + g * o(b) = o(a + g * b)``. With the gate at 0 the mix is ``a`` exactly, so the output is
        still the wrapped layer's bit for bit.
        """
        inner: Any = self.inner
        kwargs = {k: v for k, v in kwargs.items() if k != "use_cache"}  # a named argument of the inner call
        batch, length, _ = hidden_states.shape
        query = inner.q_proj(hidden_states).view(batch, length, inner.num_heads, inner.head_dim)
        query = inner.q_norm(query.transpose(1, 2))
        image_keys, image_values = self._project(cross_attention_states, batch)
        unet_keys, unet_values = self._project(tokens, batch)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(
            inner.config._attn_implementation, eager_attention_forward
        )
        common = {"dropout": inner.dropout if inner.training else 0.0, "scaling": inner.scaling}
        image, weights = attend(inner, query, image_keys, image_values, attention_mask, **common, **kwargs)
        if self.mode == "concat":  # one softmax over [image; unet], the U-Net keys always attended
            mask = None if attention_mask is None else F.pad(attention_mask, (0, tokens.shape[1]), value=0.0)
            keys = torch.cat([image_keys, unet_keys], dim=2)
            values = torch.cat([image_values, unet_values], dim=2)
            joint, _ = attend(inner, query, keys, values, mask, **common, **kwargs)
            mixed = image + self.gate * (joint - image)
        else:  # see forward: no mask, and is_causal explicit
            unet, _ = attend(
                inner, query, unet_keys, unet_values, None, **common, **{**kwargs, "is_causal": False}
            )
            mixed = image + self.gate * unet
        return inner.o_proj(mixed.reshape(batch, length, -1).contiguous()), weights

    def _joint_attention(
        self,
        hidden_states: torch.Tensor,
        cross_attention_states: torch.Tensor | None,
        tokens: torch.Tensor,
        cache: Any,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """One attention over ``[image; unet]`` keys (the U-Net keys always attended)."""
        if attention_mask is not None:
            attention_mask = F.pad(attention_mask, (0, tokens.shape[1]), value=0.0)
        joint_cache = self._context.joint
        if cross_attention_states is not None:
            # Mllama hands the image states over as (B * images * tiles, patches, D) and views its keys as
            # (B, -1, ...): flatten the same way before joining.
            image = cross_attention_states.reshape(tokens.shape[0], -1, cross_attention_states.shape[-1])
            states = torch.cat([image, tokens], dim=1)
            # generation (a cache is in use): keep the joint keys for the decode steps
            store = joint_cache if cache is not None else None
            joint, _ = self.inner(hidden_states, states, cache=store, attention_mask=attention_mask, **kwargs)
            return joint
        if self.layer_idx not in joint_cache.layers:
            raise RuntimeError(
                f"fused layer {self.layer_idx}: a cached decode step without the joint keys of its prefill; "
                "run prefill and decode inside one FusionContext.use (MDFModel.generate does)"
            )
        joint, _ = self.inner(hidden_states, None, cache=joint_cache, attention_mask=attention_mask, **kwargs)
        return joint


def install_fusion(
    mllama: nn.Module, layer_levels: dict[int, tuple[int, ...]], mode: str, scale_init: float
) -> FusionContext:
    """Wrap the cross-attention of every fused layer; returns the context the wrappers read."""
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
