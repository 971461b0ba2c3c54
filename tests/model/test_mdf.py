"""The joint model on the tiny preset: real Mllama, real U-Net, real fusion wrappers."""

from __future__ import annotations

import pytest
import torch
from transformers import MllamaForConditionalGeneration

from mdf_search.config import TrialConfig
from mdf_search.model.fusion import FusedCrossAttention, backbone_state_dict
from mdf_search.model.mdf import BATCH_MLLAMA_KEYS, MDFModel, mdf_loss, task_classes
from mdf_search.model.mllama import build_mllama
from mdf_search.model.presets import get_preset

from .conftest import make_batch, make_model

BASELINE = {"fusion.levels": "none", "fusion.injection": "none", "film.placement": "none"}


@pytest.mark.parametrize(
    "flat",
    [
        pytest.param(BASELINE, id="baseline"),
        pytest.param({"fusion.levels": "3", "fusion.injection": "concat"}, id="concat-1-level"),
        pytest.param({"fusion.levels": "1234", "fusion.injection": "concat"}, id="concat-4-levels"),
        pytest.param({"fusion.levels": "2", "fusion.injection": "parallel"}, id="parallel-1-level"),
        pytest.param({"fusion.levels": "1234", "fusion.injection": "parallel"}, id="parallel-4-levels"),
        pytest.param(
            {"fusion.injection": "concat", "fusion.projection": "patch", "fusion.scale_init": 1.0},
            id="concat-patch",
        ),
        pytest.param(
            {"fusion.injection": "parallel", "fusion.projection": "patch", "fusion.scale_init": 1.0},
            id="parallel-patch",
        ),
    ],
)
def test_forward_backward_every_injection(flat: dict[str, object], batch: dict[str, torch.Tensor]) -> None:
    model = make_model(**flat)
    out = model(batch)
    assert out.logits["type"].shape == (2, 3)
    loss, _ = mdf_loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    wrapped = [m for m in model.modules() if isinstance(m, FusedCrossAttention)]
    assert len(wrapped) == (
        0 if flat is BASELINE else len({ly for lys in model.layer_map.values() for ly in lys})
    )


def _wrappers(model: torch.nn.Module) -> list[FusedCrossAttention]:
    return [m for m in model.modules() if isinstance(m, FusedCrossAttention)]


@pytest.mark.parametrize("projection", ["pool", "patch"])
@pytest.mark.parametrize("injection", ["concat", "parallel"])
def test_gradients_reach_unet_projection_scale_and_film(
    injection: str, projection: str, batch: dict[str, torch.Tensor]
) -> None:
    """With the fusion gate open (fusion.scale_init=0, the default, closes it: see the tests below)."""
    model = make_model(
        gate_init=0.5,
        **{
            "fusion.injection": injection,
            "fusion.projection": projection,
            "fusion.scale_init": 1.0,
            "film.placement": "enc",
        },
    )
    loss, _ = mdf_loss(model(batch), batch)
    loss.backward()
    named = dict(model.named_parameters())

    def grad_norm(prefix: str) -> float:
        return sum(float(p.grad.abs().sum()) for n, p in named.items() if prefix in n and p.grad is not None)

    for part in (
        "unet.encoders.0.",
        "unet.encoders.3.",
        "fusion.projectors.1.",
        "fusion.projectors.4.",
        ".fusion_scale",
        "film.generators.enc1.",
        "film.generators.enc4.",
    ):
        assert grad_norm(part) > 0, f"no gradient reaches {part}"
    # without a segmentation loss the bottleneck and decoder do not run, so they get no gradient
    assert grad_norm("unet.mid.") == 0 and grad_norm("unet.decoders.") == 0


def test_zero_mllama_gates_block_every_fusion_gradient(batch: dict[str, torch.Tensor]) -> None:
    """docs/stack-facts.md: with the library's zero gates nothing injected into cross-attention gets a gradient."""
    model = make_model(gate_init=0.0, **{"film.placement": "none", "fusion.scale_init": 1.0})
    loss, _ = mdf_loss(model(batch), batch)
    loss.backward()
    unet = [p.grad for n, p in model.named_parameters() if n.startswith("unet.")]
    assert all(g is None or float(g.abs().sum()) == 0 for g in unet)


def _plain_copy(model: torch.nn.Module) -> MllamaForConditionalGeneration:
    plain = MllamaForConditionalGeneration._from_config(model.mllama.config)
    plain.load_state_dict(backbone_state_dict(model.mllama))
    return plain.eval()


def test_baseline_logits_identical_to_plain_mllama(batch: dict[str, torch.Tensor]) -> None:
    model = make_model(**BASELINE).eval()
    assert model.unet is None  # nothing unused is built, trained or counted
    plain = _plain_copy(model)
    keys = BATCH_MLLAMA_KEYS
    with torch.no_grad():
        expected = plain(**{k: batch[k] for k in keys}).logits
        assert torch.equal(model.lm_logits(batch), expected)
        # the classification path (precomputed vision states) sees the same final hidden states
        hidden = plain.model(**{k: batch[k] for k in keys}).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        head = model.heads["type_head"](hidden[torch.arange(2), last])
        torch.testing.assert_close(model(batch).logits["type"], head, rtol=0, atol=1e-6)


@pytest.mark.parametrize("injection", ["parallel", "concat"])
def test_fused_model_at_init_is_the_baseline(injection: str, batch: dict[str, torch.Tensor]) -> None:
    """fusion.scale_init=0 (the default) closes the U-Net path: the outputs are the baseline's, bit for bit.

    Honest by construction order, no weights copied: ``make_model`` builds the backbone before MDFModel, and
    MDFModel initialises its heads before any U-Net-side module, so the same seed gives both models the
    same Mllama and head weights (checked first). The fused model keeps the default FiLM (enc1..enc4).
    """
    baseline = make_model(seed=0, **BASELINE).eval()
    fused = make_model(seed=0, **{"fusion.injection": injection}).eval()
    assert fused.arch.fusion.scale_init == 0.0 and fused.unet is not None and fused.film is not None
    plain_state = backbone_state_dict(baseline.mllama)
    fused_state = backbone_state_dict(fused.mllama)
    assert fused_state.keys() == plain_state.keys()
    assert all(torch.equal(fused_state[k], v) for k, v in plain_state.items())
    assert all(
        torch.equal(a, b) for a, b in zip(fused.heads.parameters(), baseline.heads.parameters(), strict=True)
    )
    with torch.no_grad():
        expected = baseline(batch).logits["type"]
        assert torch.equal(fused(batch).logits["type"], expected)
        assert torch.equal(fused.lm_logits(batch), baseline.lm_logits(batch))
        # closed means closed: what the U-Net sees no longer matters at all
        other = {**batch, "unet_pixels": torch.rand_like(batch["unet_pixels"])}
        assert torch.equal(fused(other).logits["type"], expected)
        # generation's cached decode steps too
        unpadded = make_batch(pad=False)
        assert torch.equal(
            fused.generate(unpadded, max_new_tokens=3, do_sample=False),
            baseline.generate(unpadded, max_new_tokens=3, do_sample=False),
        )
        for module in _wrappers(fused):
            module.fusion_scale.fill_(1.0)
        assert not torch.equal(fused(batch).logits["type"], expected)


@pytest.mark.parametrize("injection", ["parallel", "concat"])
def test_closed_fusion_gate_gets_a_gradient_and_opens(injection: str, batch: dict[str, torch.Tensor]) -> None:
    """From the closed state the scale itself gets a gradient (d tanh(s)/ds = 1 at 0, times a non-zero
    U-Net branch); the U-Net gets none until the gate has moved, then it does."""
    model = make_model(gate_init=0.5, **{"fusion.injection": injection})
    scales = [m.fusion_scale for m in _wrappers(model)]
    assert scales and all(float(s.detach()) == 0.0 for s in scales)
    mdf_loss(model(batch), batch)[0].backward()
    assert all(s.grad is not None and float(s.grad.abs()) > 0 for s in scales)
    upstream = [p for n, p in model.named_parameters() if n.startswith(("unet.", "fusion.", "film."))]
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in upstream)

    torch.optim.SGD(scales, lr=0.5).step()
    model.zero_grad()
    assert all(float(s.detach()) != 0.0 for s in scales)
    mdf_loss(model(batch), batch)[0].backward()
    named = dict(model.named_parameters())
    for prefix in (
        "unet.encoders.0.",
        "fusion.projectors.1.",
        "fusion.projectors.4.",
        "film.generators.enc1.",
    ):
        grads = [p.grad for n, p in named.items() if n.startswith(prefix)]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), f"no gradient reaches {prefix}"


@pytest.mark.parametrize("injection", ["concat", "parallel"])
def test_generate_with_fusion_uses_the_unet_tokens(injection: str) -> None:
    batch = make_batch(pad=False)
    model = make_model(**{"fusion.injection": injection, "fusion.scale_init": 2.0}).eval()
    with torch.no_grad():
        generated = model.generate(batch, max_new_tokens=4, do_sample=False)
        prefill_next = model.lm_logits(batch)[:, -1].argmax(-1)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 4)
    assert torch.equal(generated[:, batch["input_ids"].shape[1]], prefill_next)
    # step 2 through the cache equals a fresh forward over the extended sequence
    extended = dict(batch)
    extended["input_ids"] = generated[:, :-3]
    extended["attention_mask"] = torch.ones_like(extended["input_ids"])
    xattn = batch["cross_attention_mask"]  # the new tokens see the image as the last prompt token does
    extra = extended["input_ids"].shape[1] - xattn.shape[1]
    extended["cross_attention_mask"] = torch.cat([xattn, xattn[:, -1:].expand(-1, extra, -1, -1)], dim=1)
    with torch.no_grad():
        assert torch.equal(model.lm_logits(extended)[:, -1].argmax(-1), generated[:, -3])


def test_label_token_head_scores_lm_head_rows(batch: dict[str, torch.Tensor]) -> None:
    arch = TrialConfig.from_flat({"head": "label_token", "task": "type"}).arch
    model = MDFModel(
        build_mllama(get_preset("tiny"), gate_init=0.5), arch, task_classes("type", ()), {"type": [7, 9, 11]}
    )
    assert sum(p.numel() for p in model.heads.parameters()) == 0
    out = model(batch)
    assert out.logits["type"].shape == (2, 3)
    mdf_loss(out, batch)[0].backward()
    assert model.mllama.lm_head.weight.grad[[7, 9, 11]].abs().sum() > 0


def test_dual_task_sums_two_heads_and_aux_segmentation(batch: dict[str, torch.Tensor]) -> None:
    model = make_model(
        **{"task": "dual", "unet.aux_seg_weight": 0.5, "film.placement": "enc+bottleneck+decoder"}
    )
    out = model(batch)
    assert set(out.logits) == {"disease", "type"} and out.seg_logits is not None
    loss, parts = mdf_loss(out, batch, aux_seg_weight=0.5)
    torch.testing.assert_close(loss, parts["disease"] + parts["type"] + 0.5 * parts["seg"])
    loss.backward()
    assert model.film.generators["dec1"][1].weight.grad.abs().sum() > 0
    assert model.film.generators["bottleneck"][1].weight.grad.abs().sum() > 0
