"""The one-pass fused cross-attention (``FusedCrossAttention._fused``) computes what the two-call version did.

The reference below is the wrapper's former forward, kept here (not in the package): the wrapped layer
called once for the image, and once more for the U-Net path (``parallel``: the U-Net tokens alone;
``concat``: the joint [image; U-Net] keys), each call with its own q/k/v/o projections.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mdf_search.model.fusion import FusedCrossAttention, PatchEmbedding, pool_tokens
from mdf_search.model.mdf import MDFModel, mdf_loss

from .conftest import make_batch, make_model


def _model(flat: dict[str, Any]) -> MDFModel:
    return make_model(**flat)


def reference_forward(
    wrapper: FusedCrossAttention,
    hidden: torch.Tensor,
    image: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    inner = wrapper.inner
    out, _ = inner(hidden, image, cache=None, attention_mask=mask)
    if wrapper.mode == "concat":
        joint_mask = None if mask is None else F.pad(mask, (0, tokens.shape[1]), value=0.0)
        states = torch.cat([image.reshape(tokens.shape[0], -1, image.shape[-1]), tokens], dim=1)
        joint, _ = inner(hidden, states, cache=None, attention_mask=joint_mask)
        return out + wrapper.gate * (joint - out)
    unet_out, _ = inner(hidden, tokens, cache=None, attention_mask=None, is_causal=False)
    return out + wrapper.gate * unet_out


def _captured_call(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[FusedCrossAttention, dict]:
    """The first fused layer and the arguments Mllama called it with (captured from a real forward)."""
    wrapper = next(m for m in model.modules() if isinstance(m, FusedCrossAttention))
    seen: dict[str, Any] = {}

    def keep(_m: torch.nn.Module, _args: Any, kwargs: dict[str, Any], _out: Any) -> None:
        seen.update({k: v.detach() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    handle = wrapper.register_forward_hook(keep, with_kwargs=True)
    with torch.no_grad():
        model(batch)
    handle.remove()
    return wrapper, seen


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("injection", ["parallel", "concat"])
def test_one_pass_equals_the_two_call_reference_with_gradients(injection: str, attn: str) -> None:
    batch = make_batch()
    model = _model({"fusion.injection": injection, "fusion.scale_init": 0.7})
    model.mllama.set_attn_implementation(attn)
    wrapper, kwargs = _captured_call(model, batch)
    hidden = kwargs["hidden_states"].clone().requires_grad_(True)
    image = kwargs["cross_attention_states"].clone().requires_grad_(True)
    mask = kwargs["attention_mask"]
    tokens = torch.randn(hidden.shape[0], 32, hidden.shape[-1], requires_grad=True)
    params = [wrapper.fusion_scale, *wrapper.inner.parameters()]
    inputs = [hidden, image, tokens, *params]

    expected = reference_forward(wrapper, hidden, image, tokens, mask)
    grads_expected = torch.autograd.grad(expected.square().sum(), inputs)
    with model.context.use({wrapper.layer_idx: tokens}):
        got, _ = wrapper(hidden, image, attention_mask=mask)
    grads_got = torch.autograd.grad(got.square().sum(), inputs)

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    names = ["hidden", "image", "tokens", "scale", "q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"]
    for name, a, b in zip(names, grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"the gradient with respect to {name}")
    assert float(grads_got[3].abs()) > 0  # the scale gets its gradient
    assert float(grads_got[2].abs().sum()) > 0  # and so do the U-Net tokens, through the open gate


@pytest.mark.parametrize("injection", ["parallel", "concat"])
def test_closed_gate_is_the_wrapped_layer_bit_for_bit_and_the_scale_still_learns(injection: str) -> None:
    batch = make_batch()
    model = _model({"fusion.injection": injection})
    wrapper, kwargs = _captured_call(model, batch)
    hidden, image, mask = kwargs["hidden_states"], kwargs["cross_attention_states"], kwargs["attention_mask"]
    tokens = torch.randn(hidden.shape[0], 16, hidden.shape[-1], requires_grad=True)
    with model.context.use({wrapper.layer_idx: tokens}):
        got, _ = wrapper(hidden, image, attention_mask=mask)
    assert torch.equal(got, wrapper.inner(hidden, image, attention_mask=mask)[0])
    scale_grad, token_grad = torch.autograd.grad(got.sum(), [wrapper.fusion_scale, tokens])
    expected = torch.autograd.grad(
        reference_forward(wrapper, hidden, image, tokens, mask).sum(), [wrapper.fusion_scale]
    )[0]
    assert float(scale_grad.abs()) > 0
    torch.testing.assert_close(scale_grad, expected, rtol=1e-4, atol=1e-6)
    assert float(token_grad.abs().sum()) == 0  # closed: nothing upstream moves yet


@pytest.mark.parametrize("film", ["enc", "none"])
@pytest.mark.parametrize("projection", ["pool", "patch"])
@pytest.mark.parametrize("injection", ["parallel", "concat"])
def test_every_variant_steps_with_finite_gradients_to_every_part(
    injection: str, projection: str, film: str
) -> None:
    batch = make_batch(batch=3, length=12)
    model = _model(
        {
            "fusion.injection": injection,
            "fusion.projection": projection,
            "film.placement": film,
            "fusion.scale_init": 0.5,
        }
    )
    out = model(batch)
    assert out.logits["type"].shape == (3, 3)
    mdf_loss(out, batch)[0].backward()
    named = dict(model.named_parameters())
    prefixes = ["unet.encoders.0.", "fusion.projectors.1.", "fusion.projectors.4.", ".fusion_scale"]
    prefixes += ["film.generators.enc1."] if film == "enc" else []
    for prefix in prefixes:
        grads = [p.grad for n, p in named.items() if prefix in n]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), prefix
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, prefix


@pytest.mark.parametrize(("size", "grid"), [(128, 4), (56, 4), (28, 4), (72, 8), (16, 16), (8, 1)])
def test_patch_embedding_is_the_strided_convolution(size: int, grid: int) -> None:
    """The patch matmul against ``F.conv2d`` (kernel = stride) with the same weights, values and gradients."""
    torch.manual_seed(0)
    kernel = size // grid
    embed = PatchEmbedding(6, 5, kernel_size=kernel, stride=kernel)
    feature = torch.randn(3, 6, size, size, requires_grad=True)
    cotangent = torch.randn(3, grid * grid, 5)
    got = embed(feature)
    expected = F.conv2d(feature, embed.weight, embed.bias, stride=kernel).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert embed.bias is not None
    inputs = [feature, embed.weight, embed.bias]
    grads = torch.autograd.grad(got, inputs, cotangent)
    grads_expected = torch.autograd.grad(expected, inputs, cotangent)
    for a, b in zip(grads, grads_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("size", "grid"), [(224, 4), (28, 4), (70, 4), (17, 3), (8, 8)])
def test_pool_tokens_are_the_adaptive_average_pool(size: int, grid: int) -> None:
    torch.manual_seed(0)
    feature = torch.randn(2, 5, size, size, requires_grad=True)
    cotangent = torch.randn(2, grid * grid, 5)
    got = pool_tokens(feature, grid)
    expected = F.adaptive_avg_pool2d(feature, grid).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(got, [feature], cotangent)
    (grad_expected,) = torch.autograd.grad(expected, [feature], cotangent)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-5, atol=1e-7)


def test_patch_embedding_takes_a_rectangular_map_and_refuses_partial_patches() -> None:
    torch.manual_seed(0)
    embed = PatchEmbedding(3, 4, kernel_size=(2, 3), stride=(2, 3))
    feature = torch.randn(2, 3, 4, 9)
    expected = F.conv2d(feature, embed.weight, embed.bias, stride=(2, 3)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(feature), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not a whole number of 2x3 patches"):
        embed(torch.randn(2, 3, 5, 9))
