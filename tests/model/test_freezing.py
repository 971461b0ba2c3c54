"""Every freezing strategy leaves exactly the intended parameters trainable."""

from __future__ import annotations

import re

import pytest

from mdf_search.model.freezing import param_role, parameter_counts

from .conftest import make_model

XATTN = re.compile(r"language_model\.layers\.(1|3)\.")  # tiny's cross-attention layers


def _expected(name: str, strategy: str) -> bool:
    role = param_role(name)
    always = role in ("fusion", "head") or name.startswith("film.")
    return {
        "none": True,
        "unet": always or role != "unet",
        "vision_tower": always or role != "vision",
        "mllm": always or role == "unet",
        "mllm_except_xattn": always or role == "unet" or (role == "llm" and bool(XATTN.search(name))),
        "lora": always or role == "unet" or "lora_" in name,
    }[strategy]


@pytest.mark.parametrize("strategy", ["none", "unet", "mllm", "mllm_except_xattn", "vision_tower", "lora"])
def test_strategy_trains_exactly_the_intended_parameters(strategy: str) -> None:
    model = make_model(freeze=strategy)
    wrong = [n for n, p in model.named_parameters() if p.requires_grad != _expected(n, strategy)]
    assert not wrong, wrong[:5]
    counts = parameter_counts(model)
    assert counts["fusion"][0] == counts["fusion"][1] > 0
    if strategy == "mllm":
        assert counts["llm"][1] == 0 and counts["vision"][1] == 0
    if strategy == "lora":
        lora = [n for n, p in model.named_parameters() if "lora_" in n]
        assert lora and all(".language_model." in n and re.search(r"\.(q_proj|v_proj)\.", n) for n in lora)
        assert any(".cross_attn." in n for n in lora) and any(".self_attn." in n for n in lora)
        assert counts["llm"][1] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_frozen_vision_tower_runs_without_autograd(batch: dict) -> None:
    model = make_model(freeze="vision_tower")
    states = model.vision_states(batch)
    assert states.requires_grad  # the projector trains
    vision = model.mllama.model.vision_model(
        pixel_values=batch["pixel_values"],
        aspect_ratio_ids=batch["aspect_ratio_ids"],
        aspect_ratio_mask=batch["aspect_ratio_mask"],
    ).last_hidden_state
    assert vision.requires_grad is False
    frozen_all = make_model(freeze="mllm", **{"film.placement": "none"})
    assert frozen_all.vision_states(batch).requires_grad is False


def test_every_parameter_has_a_role() -> None:
    model = make_model(freeze="lora", task="dual", **{"unet.aux_seg_weight": 1.0, "film.placement": "all"})
    roles = {param_role(n) for n, _ in model.named_parameters()}
    assert roles == {"unet", "fusion", "llm", "vision", "head"}
