"""The joint model on the tiny preset: real Mllama, real U-Net, real fusion wrappers."""

from __future__ import annotations

import pytest
import torch
from transformers import MllamaForConditionalGeneration

from mdf_search.model.fusion import FusedCrossAttention, backbone_state_dict
from mdf_search.model.mdf import BATCH_MLLAMA_KEYS, mdf_loss

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


@pytest.mark.parametrize("injection", ["concat", "parallel"])
def test_gradients_reach_unet_projection_scale_and_film(
    injection: str, batch: dict[str, torch.Tensor]
) -> None:
    model = make_model(gate_init=0.5, **{"fusion.injection": injection, "film.placement": "enc"})
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
    """FACTS.md: with the library's zero gates nothing injected into cross-attention gets a gradient."""
    model = make_model(gate_init=0.0, **{"film.placement": "none"})
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


def test_parallel_fusion_with_zero_scale_is_the_baseline(batch: dict[str, torch.Tensor]) -> None:
    fused = make_model(
        **{"fusion.injection": "parallel", "fusion.scale_init": 0.0, "film.placement": "none"}
    ).eval()
    plain = _plain_copy(fused)
    keys = BATCH_MLLAMA_KEYS
    with torch.no_grad():
        assert torch.equal(fused.lm_logits(batch), plain(**{k: batch[k] for k in keys}).logits)
        for module in fused.modules():
            if isinstance(module, FusedCrossAttention):
                module.fusion_scale.fill_(1.0)
        assert not torch.equal(fused.lm_logits(batch), plain(**{k: batch[k] for k in keys}).logits)


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
    extended["cross_attention_mask"] = torch.ones(2, extended["input_ids"].shape[1], 1, 1, dtype=torch.long)
    extended["cross_attention_mask"][:, :1] = 0
    with torch.no_grad():
        assert torch.equal(model.lm_logits(extended)[:, -1].argmax(-1), generated[:, -3])


def test_label_token_head_scores_lm_head_rows(batch: dict[str, torch.Tensor]) -> None:
    from mdf_search.config import TrialConfig
    from mdf_search.model.mdf import MDFModel, task_classes
    from mdf_search.model.mllama import build_mllama
    from mdf_search.model.presets import get_preset

    cfg = TrialConfig.from_flat({"head": "label_token", "task": "type"})
    model = MDFModel(
        build_mllama(get_preset("tiny"), gate_init=0.5), cfg, task_classes("type", ()), {"type": [7, 9, 11]}
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
