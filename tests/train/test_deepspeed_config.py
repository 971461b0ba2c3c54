"""The DeepSpeed config builder and parameter groups (pure: no process group)."""

from __future__ import annotations

import pytest

from mdf_search.config import TrialConfig
from mdf_search.train.deepspeed import build_ds_config, optimizer_steps, param_groups, role_learning_rates


def _cfg(**flat: object) -> TrialConfig:
    return TrialConfig.from_flat(flat)


@pytest.mark.parametrize(
    ("flat", "on_gpu", "expect"),
    [
        (
            {},
            False,
            {"zero_optimization.stage": 3, "optimizer.params.torch_adam": True, "bf16.enabled": False},
        ),
        ({}, True, {"optimizer.params.torch_adam": None, "zero_optimization.overlap_comm": True}),
        ({"optim.precision": "bf16"}, True, {"bf16.enabled": True}),
        (
            {"optim.zero_stage": 2, "optim.offload_optimizer": True},
            True,
            {
                "zero_optimization.stage": 2,
                "zero_optimization.offload_optimizer.device": "cpu",
                "zero_optimization.offload_param": None,
            },
        ),
        (
            {"optim.offload_optimizer": True, "optim.offload_param": True},
            False,
            {
                "zero_optimization.offload_param.device": "cpu",
                "zero_optimization.offload_param.pin_memory": False,
                "optimizer.params.torch_adam": None,
            },
        ),
        (
            {"optim.zero_stage": 0},
            False,
            {"zero_optimization.stage": 0, "zero_optimization.overlap_comm": None},
        ),
        ({"optim.grad_clip": 0}, False, {"gradient_clipping": None}),
        ({"optim.grad_clip": 0.5}, False, {"gradient_clipping": 0.5}),
        (
            {"optim.micro_batch": 3, "optim.grad_accum": 5},
            False,
            {"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 5, "train_batch_size": 30},
        ),
        (
            {"optim.epochs": 4, "optim.warmup_frac": 0.25},
            False,
            {
                "scheduler.type": "WarmupCosineLR",
                "scheduler.params.total_num_steps": 40,
                "scheduler.params.warmup_num_steps": 10,
            },
        ),
        (
            {"optim.beta2": 0.95, "optim.weight_decay": 0.1},
            False,
            {"optimizer.params.betas": [0.9, 0.95], "optimizer.params.weight_decay": 0.1},
        ),
    ],
)
def test_config_builder_table(flat: dict[str, object], on_gpu: bool, expect: dict[str, object]) -> None:
    config = build_ds_config(_cfg(**flat), world_size=2, steps_per_epoch=10, on_gpu=on_gpu)
    for dotted, value in expect.items():
        node: object = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        assert node == value, dotted


def test_config_is_pure_and_json_serialisable() -> None:
    import json

    cfg = _cfg()
    a = build_ds_config(cfg, world_size=2, steps_per_epoch=7, on_gpu=False)
    assert a == build_ds_config(cfg, world_size=2, steps_per_epoch=7, on_gpu=False)
    json.dumps(a)


@pytest.mark.parametrize(
    ("samples", "world", "micro", "accum", "steps"),
    [(100, 2, 4, 1, 13), (100, 2, 4, 2, 6), (3, 2, 4, 1, 1), (8, 1, 8, 1, 1)],
)
def test_optimizer_steps_per_epoch(samples: int, world: int, micro: int, accum: int, steps: int) -> None:
    cfg = _cfg(**{"optim.micro_batch": micro, "optim.grad_accum": accum})
    assert optimizer_steps(samples, world, cfg.optim) == steps


def test_param_groups_have_role_learning_rates_and_only_trainable_params() -> None:
    from tests.model.conftest import make_model

    model = make_model(freeze="mllm")
    cfg = TrialConfig.from_flat({"freeze": "mllm"})
    groups = param_groups(model, cfg.optim)
    rates = role_learning_rates(cfg.optim)
    names = {g["name"] for g in groups}
    assert {"unet", "unet.no_decay", "fusion", "fusion.no_decay", "head", "head.no_decay"} <= names
    assert not any(n.startswith(("llm", "vision")) for n in names)  # frozen by freeze=mllm
    for group in groups:
        role = group["name"].split(".")[0]
        assert group["lr"] == rates[role]
        assert group["weight_decay"] == (
            0.0 if group["name"].endswith("no_decay") else cfg.optim.weight_decay
        )
        assert all(p.requires_grad for p in group["params"])
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)
    scales = next(g for g in groups if g["name"] == "fusion.no_decay")["params"]
    assert any(p.numel() == 1 for p in scales)  # the tanh-gated fusion scales are not decayed


def test_a_run_too_short_for_one_warmup_step_gets_none_instead_of_a_refusal() -> None:
    # 2 steps x warmup_frac 0.1 rounds to 0 warmup steps, which DeepSpeed's WarmupCosineLR refuses.
    import torch
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    cfg = _cfg(**{"optim.epochs": 1, "optim.warmup_frac": 0.1})
    params = build_ds_config(cfg, world_size=2, steps_per_epoch=2, on_gpu=False)["scheduler"]["params"]
    assert params["warmup_num_steps"] == 1 and params["warmup_min_ratio"] == 1.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    WarmupCosineLR(optimizer, **params).step()  # the schedule's first step
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # full lr at once: no warmup
    longer = build_ds_config(cfg, world_size=2, steps_per_epoch=50, on_gpu=False)["scheduler"]["params"]
    assert longer["warmup_num_steps"] == 5 and longer["warmup_min_ratio"] == 0.0
