"""Fusion pieces: the level projections (pool | patch) at every preset, and what the concat gate does."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mdf_search.model.fusion import FusedCrossAttention, LevelProjector, patch_geometry
from mdf_search.model.presets import PRESETS

from .conftest import make_model


@pytest.mark.parametrize(
    ("size", "grid", "expected"),
    [(128, 4, (32, 0)), (16, 16, (1, 0)), (70, 4, (18, 2)), (28, 8, (4, 4)), (17, 16, (2, 15))],
)
def test_patch_geometry(size: int, grid: int, expected: tuple[int, int]) -> None:
    kernel, pad = expected
    assert patch_geometry(size, grid) == expected
    assert (size + pad) == kernel * grid and pad < grid


def test_patch_geometry_rejects_a_grid_finer_than_the_level() -> None:
    with pytest.raises(ValueError, match=r"grid=32, side=16"):
        patch_geometry(16, 32)


@pytest.mark.parametrize("projection", ["pool", "patch"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_level_gives_grid_squared_tokens(preset: str, projection: str) -> None:
    """Shapes at every level of every preset, on the meta device (11b level 1 patch is 80 M parameters)."""
    p = PRESETS[preset]
    for level, channels in enumerate(p.unet_channels, start=1):
        size = p.unet_size // 2 ** (level - 1)
        for grid in (g for g in (1, 3, 4, 8) if g <= size):
            with torch.device("meta"):
                projector = LevelProjector(channels, p.hidden_size, grid, projection, size)
                tokens = projector(torch.empty(2, channels, size, size))
            assert tokens.shape == (2, grid * grid, p.hidden_size), (preset, level, grid)


def test_patch_parameter_count() -> None:
    """Conv2d(C, C, k, k) + Linear(C, D) + positions + LayerNorm; pool has no convolution."""
    c, d, grid, size = 8, 64, 4, 128
    k = size // grid
    counts = {
        proj: sum(p.numel() for p in LevelProjector(c, d, grid, proj, size).parameters())
        for proj in ("pool", "patch")
    }
    assert counts["pool"] == c * d + d + grid * grid * d + 2 * d
    assert counts["patch"] - counts["pool"] == c * c * k * k + c


def test_patch_keeps_detail_that_pool_averages_away() -> None:
    """Two maps with the same mean in every patch: pool cannot tell them apart, patch can."""
    torch.manual_seed(0)
    a = torch.zeros(1, 2, 8, 8)
    b = torch.zeros(1, 2, 8, 8)
    a[0, 0, 0, 0] = 1.0  # a bright pixel in the top-left patch, at its corner ...
    b[0, 0, 2, 1] = 1.0  # ... or further inside the same 4x4 patch
    pool = LevelProjector(2, 16, 2, "pool")
    patch = LevelProjector(2, 16, 2, "patch", size=8)
    assert torch.equal(pool(a), pool(b))
    assert not torch.allclose(patch(a), patch(b))


def test_patch_projection_needs_the_size_it_was_built_for() -> None:
    projector = LevelProjector(4, 16, 4, "patch", size=32)
    with pytest.raises(ValueError, match=r"built for 32x32 px but got \(16, 16\)"):
        projector(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="needs the level's side"):
        LevelProjector(4, 16, 4, "patch")
    with pytest.raises(ValueError, match="must be one of"):
        LevelProjector(4, 16, 4, "conv")


def test_patch_projection_pads_a_level_that_the_grid_does_not_divide() -> None:
    projector = LevelProjector(4, 16, 4, "patch", size=70)  # 11b level 4 at grid 4: 18 px patches, 2 px pad
    assert projector.patch is not None and projector.patch.kernel_size == (18, 18)
    assert projector(torch.randn(1, 4, 70, 70)).shape == (1, 16, 16)


def _attend(
    inner: torch.nn.Module, hidden: torch.Tensor, states: torch.Tensor, mask: torch.Tensor | None, **kw
):
    """One call of the wrapped attention: per-head outputs before o_proj ``(B, T, H, Dh)`` and weights."""
    seen: list[torch.Tensor] = []
    handle = inner.o_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        _, weights = inner(hidden, states, cache=None, attention_mask=mask, **kw)
    finally:
        handle.remove()
    heads = inner.num_heads
    return seen[0].reshape(*seen[0].shape[:2], heads, -1), weights


@pytest.mark.parametrize("scale", [pytest.param(0.0, id="closed"), pytest.param(2.0, id="open")])
def test_concat_gate_sets_the_unet_share_of_attention(scale: float, batch: dict[str, torch.Tensor]) -> None:
    """concat = one softmax over [image; U-Net] keys in which the U-Net keys keep tanh(s) of their share m:
    the layer's output is exactly the attention whose U-Net mass is tanh(s) * m (0 when closed) and whose
    image keys keep the rest in their own proportions. Checked against the attention weights (eager)."""
    model = make_model(**{"fusion.injection": "concat", "fusion.scale_init": scale}).eval()
    model.mllama.set_attn_implementation("eager")
    wrapper = next(m for m in model.modules() if isinstance(m, FusedCrossAttention))
    seen: dict[str, Any] = {}
    wrapper.register_forward_hook(
        lambda _m, _args, kwargs, out: seen.update(kwargs=kwargs, out=out[0]), with_kwargs=True
    )
    with torch.no_grad():
        model(batch)
        tokens = model.fusion_tokens(batch)[0][wrapper.layer_idx]
        kwargs = seen["kwargs"]
        hidden, mask = kwargs["hidden_states"], kwargs["attention_mask"]
        image = kwargs["cross_attention_states"]  # (B * tiles, P, D) as Mllama hands it over
        n = tokens.shape[1]
        image_only, _ = _attend(wrapper.inner, hidden, image, mask)
        unet_only, _ = _attend(wrapper.inner, hidden, tokens, None, is_causal=False)
        joint = torch.cat([image.reshape(hidden.shape[0], -1, image.shape[-1]), tokens], dim=1)
        _, weights = _attend(wrapper.inner, hidden, joint, F.pad(mask, (0, n)))
        # the U-Net keys' share of the joint softmax, (B, T, H, 1)
        share = weights[..., -n:].sum(-1).transpose(1, 2)[..., None]
        unet_mass = wrapper.gate * share
        mixed = (1 - unet_mass) * image_only + unet_mass * unet_only
        out = seen["out"]
        torch.testing.assert_close(out, wrapper.inner.o_proj(mixed.flatten(2)))
        attending = batch["cross_attention_mask"][:, :, 0, 0].bool()  # text rows that see the image
        if scale == 0.0:
            assert torch.equal(unet_mass, torch.zeros_like(unet_mass))
            assert torch.equal(out, wrapper.inner(hidden, image, attention_mask=mask)[0])
            assert float(share[attending].mean()) > 0.1  # the keys would take mass: the gate holds them off
        else:
            assert float(unet_mass[attending].mean()) > 0.1
