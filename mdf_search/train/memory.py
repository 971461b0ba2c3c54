"""Memory feasibility planner: will a trial fit on N GPUs of M GiB, and if not, why.

A sweep must refuse a trial that cannot fit *before* it holds GPUs for minutes and dies with a CUDA
out-of-memory error. This module is a pure estimator (no GPU, no weights): the model is built on the meta
device, and the per-GPU bytes are

    model states (ZeRO stage, offload, precision, trainable vs frozen)
  + activations (micro-batch, prompt length, image sizes; no gradient checkpointing)
  + CUDA context,

checked against the GPU's capacity less a safety margin.

**Model states** follow DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
``estimate_zero3_model_states_mem_needs``, deepspeed 0.19) term for term, so that with every parameter
trainable the GPU and CPU numbers are *equal* to DeepSpeed's (tested). Per parameter, with ``p`` bytes
for the working precision (2 for bf16, 4 for fp32), DeepSpeed counts ``p`` for the weights, ``p`` for the
working gradients (ZeRO-1/2 only; ZeRO-3 reduce-scatters into the fp32 partition) and 16 for the
optimizer: fp32 master weights 4 + fp32 gradients 4 + Adam moments 8. DeepSpeed keeps the fp32 master
copy even when training in fp32, so fp32 is counted the same way (conservative). What this module adds:

- *frozen parameters* need only their weights: gradients and optimizer states scale with the trainable
  count (DeepSpeed builds optimizer partitions from ``requires_grad`` parameters only);
- ZeRO-1 (gradients not partitioned: ``2p`` full + 16 partitioned) and no ZeRO (stage 0: all on every GPU;
  fp32 without ZeRO has no master copy: 4 + 4 + 8), which DeepSpeed has no estimator for.

ZeRO-3 also gathers the largest layer in full for its forward/backward (``2p`` bytes per parameter: weights
and gradients), where a "layer" is DeepSpeed's: the parameters owned directly by one module (for Mllama,
the token embedding or the LM head).

**Activations** are an ESTIMATE with assumed constants (the module-level names below), conservative on
purpose: saved tensors per token per decoder layer ``HIDDEN_TENSORS * hidden + FFN_TENSORS * ffn``
elements; cross-attention keys/values counted at the full hidden width (GQA heads repeated); attention
scores (``B * heads * T_q * T_k``, scores + probabilities) stored per layer only with eager attention, and
otherwise one layer's worth as transient workspace (transformers' default for Mllama is SDPA, whose fused
kernels store no score matrix); the vision tower computes the vision config's ``max_num_tiles`` tiles
per image (4 at every preset) whatever ``data.vision_tiles`` is, because Mllama pads the tile dimension
to ``max_num_tiles`` and runs its layers over padding tiles too (only attention masks them), and the
text attends over all of them as cross-attention keys; so vision activations and cross-attention keys
scale with ``max_num_tiles``, not with the tiles the fundus fills; every text layer's activations are kept even when the LLM is frozen (gradients flow back to the
fused U-Net tokens); the vision tower and the U-Net keep activations only when something in them trains
(FiLM counts for the U-Net), otherwise one level/layer is transient. Gigabytes are GiB (``2**30``), as in
DeepSpeed's printout and ``nvidia-smi``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mdf_search.config import ConfigError, TrialConfig
from mdf_search.model.arch import ArchConfig
from mdf_search.model.presets import get_preset
from mdf_search.model.wiring import layers_to_levels, resolve_layer_map

GIB = 2**30
OPTIMIZER_BYTES = 16  # per trainable parameter: fp32 master 4 + fp32 gradient 4 + Adam moments 8
LOAD_BYTES = 4  # DeepSpeed's CPU term for loading fp32 weights in every process of a node
SAFETY_FRACTION = 0.10  # fragmentation, allocator caches, NCCL buffers, the estimate's own error
CUDA_CONTEXT_BYTES = int(1.5 * GIB)  # CUDA context + cuBLAS/cuDNN workspaces per process
HIDDEN_TENSORS = 10  # per token per layer: 2 norm inputs, 2 residuals, q, k, v, attn out, o_proj in, MLP in
FFN_TENSORS = 4  # per token per layer: gate, up, act(gate), act(gate) * up
UNET_TENSORS = 8  # per pixel x channel of an encoder level / bottleneck: 2x (conv, norm, act) + pool + FiLM
UNET_DECODER_TENSORS = 10  # per decoder level: upsample, concat (2x), 2x (conv, norm, act), FiLM
FREEZE_TABLE = ("none", "mllm", "lora")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of the joint model, from a meta-device build."""

    total: int
    trainable: int
    largest_layer: int  # DeepSpeed's ``largest_layer_params``: max over modules of their own parameters
    roles: dict[str, tuple[int, int]]  # role -> (parameters, trainable), as ``summarize(arch).roles``

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


@functools.lru_cache(maxsize=32)
def count_parameters(arch: ArchConfig) -> ParamCounts:
    """Parameter counts of the architecture's model (cached by architecture)."""
    # torch and transformers: imported here to keep them out of `validate`'s import path
    from mdf_search.model.freezing import parameter_counts
    from mdf_search.model.summary import build_on_meta

    model = build_on_meta(arch)  # what summarize() builds: nothing is allocated, the 11B takes ~0.1 s
    roles = parameter_counts(model)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ParamCounts(
        total=sum(t for t, _ in roles.values()),
        trainable=sum(t for _, t in roles.values()),
        largest_layer=largest,
        roles=roles,
    )


@dataclass(frozen=True)
class ModelStates:
    """Per-GPU bytes by component (they sum to ``gpu``) and DeepSpeed's per-node CPU bytes."""

    weights: int
    gradients: int
    optimizer: int
    gathered_layer: int
    cpu: int

    @property
    def gpu(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.gathered_layer


def model_states(
    total_params: int,
    trainable_params: int,
    largest_layer_params: int,
    *,
    stage: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    precision: str = "bf16",
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> ModelStates:
    """Bytes of weights, gradients and optimizer states per GPU (and CPU per node) for ZeRO ``stage``.

    With ``trainable_params == total_params`` and bf16 this reproduces DeepSpeed's estimators exactly,
    including their rounding and their CPU terms (which multiply by ``additional_buffer_factor``); the
    expressions keep DeepSpeed's evaluation order for that reason.
    """
    if not 0 <= trainable_params <= total_params:
        raise ValueError(f"0 <= trainable <= total must hold, but got ({trainable_params}, {total_params})")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0..3, but got {stage}")
    if offload_param and stage != 3:
        raise ValueError(f"parameter offload needs ZeRO stage 3, but got stage {stage}")
    if offload_optimizer and stage == 0:
        raise ValueError("optimizer offload needs ZeRO stage >= 1, but got stage 0")
    psi, t, n = total_params, trainable_params, num_nodes * num_gpus_per_node
    p = {"bf16": 2, "fp32": 4}[precision]
    opt_bytes = OPTIMIZER_BYTES * t  # all optimizer-side bytes of the model
    # Per-parameter mean of optimizer-side bytes: exactly 16.0 when all train, as in DeepSpeed's max().
    opt_mean = opt_bytes / psi if psi else 0.0
    load_cpu = psi * LOAD_BYTES * num_gpus_per_node * additional_buffer_factor
    if stage == 0:
        # No ZeRO: everything on every GPU. fp32 has no separate master copy or fp32 gradient.
        optimizer = opt_bytes if p == 2 else 8 * t  # fp32: Adam moments only
        return ModelStates(p * psi, p * t, optimizer, 0, int(load_cpu))
    if stage in (1, 2):
        # ZeRO-1 keeps the full working gradients; ZeRO-2 partitions them (DeepSpeed's "18 / GPUs").
        if offload_optimizer:
            grads = p * t if stage == 1 else 0  # ZeRO-2 streams reduced gradients to the CPU
            cpu = psi * max(LOAD_BYTES * n, opt_mean) * additional_buffer_factor
            return ModelStates(p * psi, grads, 0, 0, int(cpu))
        if stage == 1:
            return ModelStates(p * psi, p * t, int(opt_bytes / n), 0, int(load_cpu))
        sharded = int((p * t + opt_bytes) / n)
        grads = int(p * t / n)
        return ModelStates(p * psi, grads, sharded - grads, 0, int(load_cpu))
    # ZeRO-3: weights, fp32 states partitioned; the largest layer is gathered (weights + gradients).
    gathered = 2 * p * largest_layer_params
    gpus_factor = 1 / num_nodes
    if offload_optimizer and offload_param:
        on_cpu = (p * psi + opt_bytes) / psi if psi else 0.0
        if zero_init:
            cpu = psi * on_cpu * gpus_factor * additional_buffer_factor
        else:
            cpu = psi * max(LOAD_BYTES * num_gpus_per_node, on_cpu * gpus_factor) * additional_buffer_factor
        return ModelStates(0, 0, 0, gathered, int(cpu))
    if offload_optimizer:
        if zero_init:
            cpu = psi * opt_mean * gpus_factor * additional_buffer_factor
        else:
            cpu = psi * max(LOAD_BYTES * num_gpus_per_node, opt_mean * gpus_factor) * additional_buffer_factor
        return ModelStates(int(p * psi / n), 0, 0, gathered, int(cpu))
    sharded = int((p * psi + opt_bytes) / n)
    weights = int(p * psi / n)
    if zero_init:
        cpu = largest_layer_params * LOAD_BYTES * num_gpus_per_node * additional_buffer_factor
    else:
        cpu = load_cpu
    return ModelStates(weights, 0, sharded - weights, gathered, int(cpu))


def _attention_bytes(batch: int, heads: int, queries: int, keys: int, q: int) -> int:
    return batch * heads * queries * keys * 2 * q  # scores + softmax probabilities


def activation_rows(
    cfg: TrialConfig, counts: ParamCounts, *, eager_attention: bool = False
) -> list[tuple[str, int]]:
    """Per-GPU activation bytes by component for one micro-batch (see the module docstring)."""
    preset = get_preset(cfg.model.preset)
    b, seq = cfg.optim.micro_batch, cfg.data.max_text_tokens
    q = 2 if cfg.optim.precision == "bf16" else 4
    text, vision = preset.text, preset.vision
    h, ffn, heads = int(text["hidden_size"]), int(text["intermediate_size"]), int(text["num_attention_heads"])
    per_token = HIDDEN_TENSORS * h + FFN_TENSORS * ffn
    rows = [("activations: text layers", b * seq * per_token * q * int(text["num_hidden_layers"]))]
    workspace: list[int] = [_attention_bytes(b, heads, seq, seq, q)]
    self_layers = int(text["num_hidden_layers"]) - len(preset.cross_attention_layers)
    scores = self_layers * workspace[0]

    patches = (preset.vision_size // int(vision["patch_size"])) ** 2 + 1  # + class token
    tiles = preset.max_num_tiles  # computed tiles, padding included (see the module docstring)
    vision_tokens = tiles * patches
    unet_tokens: dict[int, int] = {}
    if cfg.fusion.levels:
        layer_map = resolve_layer_map(cfg.fusion.layer_map, cfg.fusion.levels, preset.cross_attention_layers)
        unet_tokens = {
            layer: cfg.fusion.grid**2 * len(lv) for layer, lv in layers_to_levels(layer_map).items()
        }
    xattn = b * (vision_tokens + sum(unet_tokens.values())) * h * q  # cross_attention_states + U-Net tokens
    for layer in preset.cross_attention_layers:
        keys = vision_tokens + unet_tokens.get(layer, 0)
        xattn += b * keys * 2 * h * q  # keys and values at full width
        workspace.append(_attention_bytes(b, heads, seq, keys, q))
        scores += workspace[-1]
    rows.append(("activations: cross-attention keys/values", xattn))

    hv, fv = int(vision["hidden_size"]), int(vision["intermediate_size"])
    v_layers = int(vision["num_hidden_layers"]) + int(vision.get("num_global_layers", 0))
    v_tokens = tiles * (patches + (-patches) % 8)  # Mllama pads patches to a multiple of 8
    v_layer = b * v_tokens * (HIDDEN_TENSORS * hv + FFN_TENSORS * fv) * q
    v_trains = counts.roles.get("vision", (0, 0))[1] > 0
    v_out = b * vision_tokens * int(vision["vision_output_dim"]) * q
    rows.append(("activations: vision tower", (v_layers if v_trains else 1) * v_layer + v_out))
    workspace.append(_attention_bytes(b, int(vision["attention_heads"]), v_tokens, v_tokens, q))
    if v_trains:
        scores += v_layers * workspace[-1]

    decode = cfg.unet.aux_seg_weight > 0
    if cfg.fusion.levels or cfg.film.placement or decode:
        sides = [preset.unet_size // 2**i for i in range(5)]
        widths = [*preset.unet_channels, preset.unet_bottleneck]
        maps = [b * c * s * s * q for c, s in zip(widths, sides, strict=True)]
        levels = maps if decode else maps[:4]
        unet_trains = counts.roles.get("unet", (0, 0))[1] > 0 or bool(cfg.film.placement)
        unet = UNET_TENSORS * (sum(levels) if unet_trains else max(levels))
        if decode:
            unet += UNET_DECODER_TENSORS * sum(maps[:4]) + b * preset.unet_size**2 * q
        rows.append(("activations: U-Net", unet))
    if eager_attention:
        rows.append(("activations: attention scores (eager)", scores))
    else:
        rows.append(("attention workspace (one layer)", max(workspace)))
    return rows


@dataclass(frozen=True)
class Plan:
    """Per-GPU memory of one trial on ``gpus`` GPUs; ``rows`` are (component, bytes) for a table."""

    gpus: int
    nodes: int
    gpu_mem_gb: float
    rows: tuple[tuple[str, int], ...]
    cpu_bytes_per_node: int  # DeepSpeed's CPU estimate (offloaded states, weight loading)
    trainable_params: int
    total_params: int
    reason: str | None  # why it does not fit, with what to change; None when it fits

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.rows)

    @property
    def usable_bytes(self) -> int:
        return int(self.gpu_mem_gb * GIB * (1 - SAFETY_FRACTION))

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GIB


def worker_gpu_mem_gb(gpu_mem_gb: float, gpus_per_worker: float) -> float:
    """The GPU memory one worker's plan must fit in, from the spec's ``resources``: a whole GPU's
    ``gpu_mem_gb``, or its fraction when workers share a GPU (``gpus_per_worker`` < 1). The sweep's
    trials and ``validate`` both plan with it, so what validation accepts is what a trial runs."""
    return gpu_mem_gb * min(1.0, gpus_per_worker)


def plan_trial(
    cfg: TrialConfig,
    gpus: int,
    gpu_mem_gb: float,
    nodes: int = 1,
    *,
    cpu_mem_gb: float | None = None,
    eager_attention: bool = False,
    counts: ParamCounts | None = None,
) -> Plan:
    """Estimate the trial's per-GPU memory on ``gpus`` GPUs in total, spread evenly over ``nodes``.

    ``fits`` holds when the total (CUDA context included) is at most ``gpu_mem_gb`` GiB less
    ``SAFETY_FRACTION``, and, when ``cpu_mem_gb`` is given, DeepSpeed's CPU estimate fits a node's RAM.
    A config that breaks a rule of ``TrialConfig`` (e.g. optimizer offload without ZeRO; one that
    ``from_flat`` built cannot) raises ConfigError. ``counts``: the architecture's parameter counts when
    the caller has them (a sweep counts each distinct architecture once, in its driver: counting builds
    the model on the meta device, which imports torch and transformers); else they are counted here.
    """
    if gpus < 1 or nodes < 1 or gpus % nodes:
        raise ValueError(f"gpus must be a positive multiple of nodes, but got (gpus={gpus}, nodes={nodes})")
    if gpu_mem_gb <= 0:
        raise ValueError(f"gpu_mem_gb must be > 0, but got {gpu_mem_gb}")
    invalid = cfg.cross_field_problems()
    if invalid:
        raise ConfigError(invalid)
    counts = counts or count_parameters(cfg.arch)
    opt = cfg.optim
    problems: list[str] = []
    states = model_states(
        counts.total,
        counts.trainable,
        counts.largest_layer,
        stage=opt.zero_stage,
        num_gpus_per_node=gpus // nodes,
        num_nodes=nodes,
        offload_optimizer=opt.offload_optimizer,
        offload_param=opt.offload_param,
        precision=opt.precision,
    )
    rows = [
        ("weights", states.weights),
        ("gradients", states.gradients),
        ("optimizer states", states.optimizer),
        ("gathered largest layer (ZeRO-3)", states.gathered_layer),
        *activation_rows(cfg, counts, eager_attention=eager_attention),
        ("CUDA context", CUDA_CONTEXT_BYTES),
    ]
    plan = Plan(gpus, nodes, gpu_mem_gb, tuple(rows), states.cpu, counts.trainable, counts.total, None)
    if plan.total_bytes > plan.usable_bytes:
        problems.append(_too_big(plan, cfg))
    if cpu_mem_gb is not None and states.cpu > cpu_mem_gb * GIB:
        problems.append(
            f"DeepSpeed's CPU estimate is {states.cpu / GIB:.1f} GiB per node, over {cpu_mem_gb:g} GiB of RAM; "
            "offload less (optim.offload_param / optim.offload_optimizer) or use more nodes"
        )
    return dataclasses.replace(plan, reason="; ".join(problems) or None)


def _too_big(plan: Plan, cfg: TrialConfig) -> str:
    states = sum(size for _, size in plan.rows[:4])
    acts = sum(size for name, size in plan.rows if name.startswith(("activations", "attention")))
    hints = []
    if states >= acts:
        if cfg.optim.zero_stage < 3:
            hints.append("optim.zero_stage=3")
        if not cfg.optim.offload_optimizer:
            hints.append("optim.offload_optimizer=true")
        if cfg.freeze.strategy == "none":
            hints.append("freeze=lora or freeze=mllm")
        hints.append("more GPUs")
    else:
        if cfg.optim.micro_batch > 1:
            hints.append(f"optim.micro_batch < {cfg.optim.micro_batch} (with more optim.grad_accum)")
        vision = dict(plan.rows).get("activations: vision tower", 0)
        if vision * 2 > acts and cfg.freeze.strategy in ("none", "unet"):  # the vision tower trains
            hints.append("freeze=vision_tower (its activations dominate: every image is max_num_tiles tiles)")
        else:
            hints.append("a shorter data.max_text_tokens")
    if cfg.optim.precision == "fp32":
        hints.append("optim.precision=bf16")
    return (
        f"needs {plan.total_bytes / GIB:.1f} GiB per GPU on {plan.gpus} GPU(s) (model states "
        f"{states / GIB:.1f}, activations {acts / GIB:.1f}), but {plan.gpu_mem_gb:g} GiB less "
        f"{SAFETY_FRACTION:.0%} leaves {plan.usable_bytes / GIB:.1f} GiB; try {', '.join(hints)}"
    )


def _gpu_counts(max_gpus: int) -> list[int]:
    return [2**k for k in range(int(math.log2(max_gpus)) + 1)] if max_gpus >= 1 else []


def min_gpus_to_fit(
    cfg: TrialConfig, gpu_mem_gb: float, max_gpus: int = 64, gpus_per_node: int = 8
) -> Plan | None:
    """The plan at the fewest GPUs among 1, 2, 4, 8, ... <= ``max_gpus`` that fits, or None.

    Counts above ``gpus_per_node`` span ``ceil(gpus / gpus_per_node)`` nodes. Only ZeRO-2/3 shard model
    states, so more GPUs help only there; activations never shrink with GPUs (data parallelism).
    """
    for gpus in _gpu_counts(max_gpus):
        plan = plan_trial(cfg, gpus, gpu_mem_gb, nodes=max(1, math.ceil(gpus / gpus_per_node)))
        if plan.fits:
            return plan
    return None


@dataclass(frozen=True)
class FreezeRow:
    """One freezing strategy: the fewest GPUs that fit (None: not within ``max_gpus``) and that plan."""

    strategy: str
    min_gpus: int | None
    plan: Plan  # at ``min_gpus``, or at ``max_gpus`` when nothing fits (its ``reason`` says why)


def plan_freeze_table(
    cfg: TrialConfig,
    gpu_mem_gb: float,
    strategies: tuple[str, ...] = FREEZE_TABLE,
    max_gpus: int = 64,
    gpus_per_node: int = 8,
) -> list[FreezeRow]:
    """GPUs needed by each freezing strategy for the same trial otherwise."""
    rows = []
    for strategy in strategies:
        variant = cfg.replace(freeze=strategy)
        plan = min_gpus_to_fit(variant, gpu_mem_gb, max_gpus, gpus_per_node)
        if plan is None:
            top = _gpu_counts(max_gpus)[-1]
            worst = plan_trial(variant, top, gpu_mem_gb, nodes=max(1, math.ceil(top / gpus_per_node)))
            rows.append(FreezeRow(strategy, None, worst))
        else:
            rows.append(FreezeRow(strategy, plan.gpus, plan))
    return rows


def plan_11b_table(
    gpu_mem_gb: float, overrides: Mapping[str, Any] | None = None, max_gpus: int = 64
) -> list[FreezeRow]:
    """Full fine-tune vs frozen LLM vs LoRA for LLaMA 3.2 11B Vision + U-Net on ``gpu_mem_gb`` GPUs.

    Defaults: bf16, ZeRO-3 without offload, micro-batch 2 (as the shipped 11b studies: at 4, the full
    fine-tune's vision activations alone, four 560 px tiles per image through 40 layers, take ~64 GiB),
    the TrialConfig defaults otherwise (64 tokens); ``overrides`` are flat keys (e.g.
    ``{"optim.offload_optimizer": True}``).
    """
    flat = {
        "model.preset": "11b",
        "optim.precision": "bf16",
        "optim.zero_stage": 3,
        "optim.micro_batch": 2,
    }
    cfg = TrialConfig.from_flat({**flat, **(overrides or {})})
    return plan_freeze_table(cfg, gpu_mem_gb, max_gpus=max_gpus)
