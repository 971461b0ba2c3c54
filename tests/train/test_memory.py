"""Memory planner: exact agreement with DeepSpeed's estimators, freezing, the 11B table, refusals."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from deepspeed.runtime.zero import stage3, stage_1_and_2

from mdf_search.config import ConfigError, OptimConfig, TrialConfig
from mdf_search.model.mdf import MDFModel, task_classes
from mdf_search.model.mllama import build_mllama
from mdf_search.model.presets import get_preset
from mdf_search.model.summary import SUMMARY_DISEASES, summarize
from mdf_search.train.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    OPTIMIZER_BYTES,
    activation_rows,
    count_parameters,
    min_gpus_to_fit,
    model_states,
    plan_11b_table,
    plan_trial,
    worker_gpu_mem_gb,
)

PARAMS = [(1_000_003, 65_537), (1_234_567_891, 98_765_432), (10_713_413_231, 525_361_152)]
LAYOUTS = [(1, 1), (2, 1), (8, 1), (3, 2), (8, 4)]  # (GPUs per node, nodes)
BUFFERS = [1.0, 1.5]


@pytest.mark.parametrize(("params", "layout", "buffer"), list(itertools.product(PARAMS, LAYOUTS, BUFFERS)))
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_equals_deepspeed(
    params: tuple[int, int], layout: tuple[int, int], buffer: float, offload: bool
) -> None:
    (total, largest), (per_node, nodes) = params, layout
    cpu, gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(
        total, per_node, nodes, cpu_offload=offload, additional_buffer_factor=buffer
    )
    ours = model_states(
        total,
        total,
        largest,
        stage=2,
        num_gpus_per_node=per_node,
        num_nodes=nodes,
        offload_optimizer=offload,
        additional_buffer_factor=buffer,
    )
    assert (ours.cpu, ours.gpu) == (cpu, gpu)


ZERO3_FLAGS = [(False, False), (True, False), (True, True)]  # (offload optimizer, offload params)


@pytest.mark.parametrize(("params", "layout", "buffer"), list(itertools.product(PARAMS, LAYOUTS, BUFFERS)))
@pytest.mark.parametrize("flags", ZERO3_FLAGS)
@pytest.mark.parametrize("zero_init", [True, False])
def test_zero3_equals_deepspeed(
    params: tuple[int, int],
    layout: tuple[int, int],
    buffer: float,
    flags: tuple[bool, bool],
    zero_init: bool,
) -> None:
    (total, largest), (per_node, nodes), (opt, par) = params, layout, flags
    cpu, gpu, largest_mem = stage3.estimate_zero3_model_states_mem_needs(
        total, largest, per_node, nodes, opt, par, zero_init, buffer
    )
    ours = model_states(
        total,
        total,
        largest,
        stage=3,
        num_gpus_per_node=per_node,
        num_nodes=nodes,
        offload_optimizer=opt,
        offload_param=par,
        zero_init=zero_init,
        additional_buffer_factor=buffer,
    )
    assert (ours.cpu, ours.gpu, ours.gathered_layer) == (cpu, gpu, largest_mem)


def test_largest_layer_is_deepspeeds_definition_on_a_real_module() -> None:
    """``model_to_params`` of DeepSpeed on a real (tiny) model gives the same total and largest layer."""
    arch = TrialConfig().arch
    torch.manual_seed(0)
    model = MDFModel(
        build_mllama(get_preset("tiny"), gate_init=0.5), arch, task_classes("type", SUMMARY_DISEASES)
    )
    counts = count_parameters(arch)
    assert stage3.model_to_params(model) == (counts.total, counts.largest_layer)


def test_roles_match_summarize() -> None:
    arch = TrialConfig.from_flat({"freeze": "lora"}).arch
    assert count_parameters(arch).roles == summarize(arch).roles


def test_counts_are_cached_by_architecture() -> None:
    """Trials that differ only in training settings share one meta build."""
    base = TrialConfig.from_flat({"model.preset": "small"})
    other = base.replace(**{"optim.lr": 1e-5, "optim.micro_batch": 1, "data.max_text_tokens": 16, "seed": 3})
    assert count_parameters(base.arch) is count_parameters(other.arch)


# Freezing: bytes saved per frozen parameter (p=2, bf16), per stage, on N GPUs.
N, TOTAL, FROZEN, LARGEST = 8, 1_000_000_000, 600_000_000, 50_000_000


@pytest.mark.parametrize(
    ("stage", "offload", "gpu_saved", "cpu_saved"),
    [
        (0, False, (2 + OPTIMIZER_BYTES) * FROZEN, 0),  # no ZeRO: gradients and states on every GPU
        (1, False, 2 * FROZEN + OPTIMIZER_BYTES * FROZEN / N, 0),  # full gradients, partitioned states
        (2, False, (2 + OPTIMIZER_BYTES) * FROZEN / N, 0),
        (3, False, OPTIMIZER_BYTES * FROZEN / N, 0),
        (3, True, 0, OPTIMIZER_BYTES * FROZEN * 1.5),  # offloaded: the CPU saves, zero_init
    ],
)
def test_freezing_saves_gradients_and_optimizer_states(
    stage: int, offload: bool, gpu_saved: float, cpu_saved: float
) -> None:
    kw = {"stage": stage, "num_gpus_per_node": N, "offload_optimizer": offload}
    full = model_states(TOTAL, TOTAL, LARGEST, **kw)  # type: ignore[arg-type]
    part = model_states(TOTAL, TOTAL - FROZEN, LARGEST, **kw)  # type: ignore[arg-type]
    assert full.weights == part.weights and full.gathered_layer == part.gathered_layer
    assert full.gpu - part.gpu == pytest.approx(gpu_saved, abs=2)
    assert full.cpu - part.cpu == pytest.approx(cpu_saved, abs=2)


def test_all_frozen_leaves_only_weights() -> None:
    states = model_states(TOTAL, 0, LARGEST, stage=2, num_gpus_per_node=N)
    assert (states.weights, states.gradients, states.optimizer) == (2 * TOTAL, 0, 0)


def test_fp32_without_zero_has_no_master_copy() -> None:
    states = model_states(TOTAL, TOTAL, LARGEST, stage=0, precision="fp32")
    assert (states.weights, states.gradients, states.optimizer) == (4 * TOTAL, 4 * TOTAL, 8 * TOTAL)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"stage": 2, "offload_param": True}, "stage 3"),
        ({"stage": 0, "offload_optimizer": True}, "stage >= 1"),
        ({"stage": 4}, "0..3"),
    ],
)
def test_invalid_layouts_raise(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model_states(TOTAL, TOTAL, LARGEST, **kw)  # type: ignore[arg-type]


def test_plan_of_a_frozen_llm_differs_by_the_optimizer_bytes_of_the_frozen_params() -> None:
    base = {"model.preset": "small", "optim.precision": "bf16", "optim.zero_stage": 3}
    full = plan_trial(TrialConfig.from_flat({**base, "freeze": "none"}), gpus=2, gpu_mem_gb=80)
    frozen = plan_trial(TrialConfig.from_flat({**base, "freeze": "mllm"}), gpus=2, gpu_mem_gb=80)
    newly_frozen = full.trainable_params - frozen.trainable_params
    assert full.total_params == frozen.total_params and newly_frozen > 0
    rows_full, rows_frozen = dict(full.rows), dict(frozen.rows)
    assert rows_full["weights"] == rows_frozen["weights"]
    saved = rows_full["optimizer states"] - rows_frozen["optimizer states"]
    assert saved == pytest.approx(OPTIMIZER_BYTES * newly_frozen / 2, abs=2)
    # The frozen vision tower keeps no activations beyond one layer.
    assert rows_frozen["activations: vision tower"] < rows_full["activations: vision tower"]


def test_plan_rows_sum_to_the_total_and_include_the_cuda_context() -> None:
    plan = plan_trial(TrialConfig(), gpus=1, gpu_mem_gb=24)
    assert plan.fits and plan.reason is None
    assert plan.total_bytes == sum(b for _, b in plan.rows)
    assert dict(plan.rows)["CUDA context"] == CUDA_CONTEXT_BYTES
    assert all(isinstance(name, str) and b >= 0 for name, b in plan.rows)


def test_more_micro_batch_means_more_activations_not_more_states() -> None:
    small = dict(plan_trial(TrialConfig.from_flat({"optim.micro_batch": 1}), 1, 24).rows)
    large = dict(plan_trial(TrialConfig.from_flat({"optim.micro_batch": 8}), 1, 24).rows)
    assert small["optimizer states"] == large["optimizer states"]
    assert large["activations: text layers"] == 8 * small["activations: text layers"]


def test_aux_segmentation_adds_decoder_activations() -> None:
    base = {"model.preset": "small"}
    plain = dict(plan_trial(TrialConfig.from_flat(base), 1, 24).rows)
    seg = dict(plan_trial(TrialConfig.from_flat({**base, "unet.aux_seg_weight": 1.0}), 1, 24).rows)
    assert seg["activations: U-Net"] > plain["activations: U-Net"]


def test_infeasible_plan_has_a_reason_with_the_numbers_and_a_fix() -> None:
    cfg = TrialConfig.from_flat({"model.preset": "1b", "optim.zero_stage": 0})
    plan = plan_trial(cfg, gpus=1, gpu_mem_gb=4)
    assert not plan.fits
    assert plan.reason is not None and "GiB per GPU" in plan.reason and "optim.zero_stage=3" in plan.reason


@pytest.mark.parametrize("vision_tiles", [1, 4])
def test_vision_activations_count_every_computed_tile(vision_tiles: int) -> None:
    """Mllama computes max_num_tiles=4 tiles per image (padding tiles too), whatever data.vision_tiles."""
    flat = {"model.preset": "11b", "optim.precision": "bf16", "optim.micro_batch": 1}
    cfg = TrialConfig.from_flat({**flat, "data.vision_tiles": vision_tiles})
    rows = dict(activation_rows(cfg, count_parameters(cfg.arch)))
    patches = (560 // 14) ** 2 + 1  # 1601 per tile, padded to 1608 inside the tower
    per_layer = 4 * 1608 * (10 * 1280 + 4 * 5120) * 2
    assert rows["activations: vision tower"] == 40 * per_layer + 4 * patches * 7680 * 2
    # The text attends over every tile's tokens: 4 x 1601 image keys/values in each cross-attention layer.
    assert rows["activations: cross-attention keys/values"] >= 8 * 4 * patches * 2 * 4096 * 2


def test_a_config_that_breaks_a_rule_is_refused_with_the_configs_own_reason() -> None:
    """The planner applies TrialConfig's rules (a config built without from_flat can break them)."""
    with pytest.raises(ConfigError, match="optimizer offload needs ZeRO"):
        TrialConfig.from_flat({"optim.zero_stage": 0, "optim.offload_optimizer": True})
    cfg = dataclasses.replace(TrialConfig(), optim=OptimConfig(zero_stage=0, offload_optimizer=True))
    with pytest.raises(ConfigError, match=r"optim\.offload_optimizer: optimizer offload needs ZeRO"):
        plan_trial(cfg, gpus=1, gpu_mem_gb=80)


def test_cpu_memory_limit_is_checked_when_given() -> None:
    cfg = TrialConfig.from_flat({"model.preset": "1b", "optim.offload_optimizer": True})
    assert plan_trial(cfg, gpus=1, gpu_mem_gb=80).fits
    plan = plan_trial(cfg, gpus=1, gpu_mem_gb=80, cpu_mem_gb=1)
    assert plan.reason is not None and "CPU estimate" in plan.reason


def test_gpus_must_divide_over_nodes() -> None:
    with pytest.raises(ValueError, match="multiple of nodes"):
        plan_trial(TrialConfig(), gpus=3, gpu_mem_gb=80, nodes=2)


@pytest.mark.parametrize(
    ("gpus_per_worker", "expected"), [(1.0, 80.0), (0.5, 40.0), (0.25, 20.0), (2.0, 80.0)]
)
def test_workers_sharing_a_gpu_each_plan_for_their_fraction(gpus_per_worker: float, expected: float) -> None:
    """One rule for validate and the sweep's trials: a worker holding a whole GPU (or more) plans for one
    GPU's memory, a worker holding half a GPU for half of it."""
    assert worker_gpu_mem_gb(80.0, gpus_per_worker) == pytest.approx(expected)


def test_zero3_needs_fewer_gpus_as_memory_grows() -> None:
    cfg = TrialConfig.from_flat({"model.preset": "1b", "optim.precision": "bf16"})
    small, large = min_gpus_to_fit(cfg, 12), min_gpus_to_fit(cfg, 80)
    assert small is not None and large is not None and small.gpus > large.gpus == 1
    assert min_gpus_to_fit(cfg, 2, max_gpus=8) is None  # CUDA context + margin alone exceed 2 GiB


@pytest.fixture(scope="module")
def table_11b() -> dict[str, object]:
    return {row.strategy: row for row in plan_11b_table(80)}


def test_11b_full_fine_tune_needs_more_gpus_than_lora_or_a_frozen_llm(table_11b: dict) -> None:
    full, frozen, lora = table_11b["none"], table_11b["mllm"], table_11b["lora"]
    assert full.min_gpus is not None and frozen.min_gpus is not None and lora.min_gpus is not None
    assert full.min_gpus > lora.min_gpus and full.min_gpus > frozen.min_gpus
    assert (
        full.plan.trainable_params > 10e9 > 100e6 > lora.plan.trainable_params > frozen.plan.trainable_params
    )
    for row in (full, frozen, lora):
        assert row.plan.fits and row.plan.total_bytes <= 80 * GIB * 0.9
        assert row.plan.total_params == full.plan.total_params or row.strategy == "lora"


def test_11b_full_fine_tune_does_not_fit_one_gpu() -> None:
    cfg = TrialConfig.from_flat({"model.preset": "11b", "optim.precision": "bf16"})
    plan = plan_trial(cfg, gpus=1, gpu_mem_gb=80)
    assert not plan.fits and plan.reason is not None and "freeze=lora" in plan.reason
