"""One training step (forward + backward) of the fused model against the baseline MLLM, side by side.

    python benchmarks/bench_step.py [--preset small|tiny] [--repeats 5] [--arms baseline,parallel-pool-film]
    python benchmarks/bench_step.py --quick      # CI: tiny preset, one repetition, seconds

One process, one thread (``torch.set_num_threads(1)``). Every arm is the real ``MDFModel`` on
``build_mllama`` (same seed, so the same backbone), fed the same synthetic batch (``benchmarks/gpu_check.py``'s
helper, in fp32): batch 4 x 64 tokens, one image tile and the other tiles padding, as the collator lays out
``data.vision_tiles=1``. Arms:

- ``baseline``: ``fusion.levels=none``, no FiLM: the plain Mllama plus a linear head, no U-Net at all;
- ``<injection>-<projection>-<film|nofilm>``: ``fusion.levels=1234`` (the default ``shallow_early`` map),
  ``fusion.injection`` concat | parallel, ``fusion.projection`` pool | patch, FiLM on the encoder (the
  default) or off. The fusion gate is opened (``fusion.scale_init=0.5``): a closed gate computes exactly
  the same, but an open one is what a trial runs after its first step.

Timing: each repetition runs one step of every arm in turn (interleaved, so load on the machine hits every
arm alike). Each step is timed twice: this thread's CPU time (``time.thread_time``; with one torch thread
the whole step, backward included, runs on it) and wall time. The table gives each arm's medians and their
ratios to the baseline's; the CPU clock is the steadier one on a shared machine (another process's load
stretches wall time, far less CPU time). Gradients are dropped between steps
(``zero_grad(set_to_none=True)``); there is no optimiser step.

Breakdown (``--profile-steps`` extra steps per arm under ``torch.profiler``): forward ops are attributed to a range by
module hooks (``record_function``), and each backward node to the range of the forward op that created it
(the profiler's autograd sequence numbers), so every range is forward + backward:

- ``unet``: the U-Net's convolutions, norms, activations and pools (real work, not overhead);
- ``film``: the text vector, the FiLM generators and the modulation of the U-Net's feature maps;
- ``projection``: level features → patch tokens (``fusion.projection``);
- ``xattn``: the cross-attention modules of the fused layers (in the baseline: the same layers' plain
  cross-attention), so ``xattn`` minus the baseline's is the extra attention branch / joint keys;
- ``rest``: everything else (the vision tower, the text model, the heads, the loss).

Each range's share of the profiled step is applied to the unprofiled CPU median to give milliseconds. The
last columns: the U-Net's share of the fused step, and the fusion overhead without the U-Net
(``(fused - unet) / baseline``); the issue's target is a fused/baseline ratio of at most 1.15 on the
small preset with four levels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_check import _batch as gpu_check_batch  # the GPU check's synthetic batch, one helper
from mdf_search.config import TrialConfig
from mdf_search.model import unet as unet_module
from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
from mdf_search.model.mllama import build_mllama, text_layers, xattn_layer_ids
from mdf_search.model.presets import get_preset

RANGES = ("unet", "film", "projection", "xattn")
BASELINE: dict[str, object] = {"fusion.levels": "none", "fusion.injection": "none", "film.placement": "none"}
GATE_INIT = 0.5  # model.xattn_gate_init's default


def arms() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {"baseline": BASELINE}
    for injection in ("parallel", "concat"):
        for projection in ("pool", "patch"):
            for film in ("film", "nofilm"):
                out[f"{injection}-{projection}-{film}"] = {
                    "fusion.levels": "1234",
                    "fusion.injection": injection,
                    "fusion.projection": projection,
                    "fusion.scale_init": 0.5,
                    "film.placement": "enc" if film == "film" else "none",
                }
    return out


def build(preset: str, flat: dict[str, object]) -> MDFModel:
    cfg = TrialConfig.from_flat({"model.preset": preset, **flat})
    torch.manual_seed(0)
    mllama = build_mllama(get_preset(preset), gate_init=GATE_INIT)
    return MDFModel(mllama, cfg.arch, task_classes(cfg.head.task, ())).train()


def make_batch(preset: str, batch: int, length: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    out: dict[str, torch.Tensor] = gpu_check_batch(get_preset(preset), batch, length, torch.device("cpu"))
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def step(model: MDFModel, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """One forward + backward: (wall ms, this thread's CPU ms)."""
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.thread_time()
    loss, _ = mdf_loss(model(batch), batch)
    loss.backward()
    return (time.perf_counter() - wall) * 1000.0, (time.thread_time() - cpu) * 1000.0


# -- breakdown ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ranges(model: MDFModel) -> Iterator[None]:
    """Profiler ranges around the U-Net, FiLM, the projection and the fused layers' cross-attention."""
    handles: list[Any] = []

    def wrap(module: nn.Module, name: str) -> None:
        open_ranges: list[Any] = []

        def pre(_m: nn.Module, _args: Any) -> None:
            open_ranges.append(torch.profiler.record_function(name))
            open_ranges[-1].__enter__()

        def post(_m: nn.Module, _args: Any, _out: Any) -> None:
            open_ranges.pop().__exit__(None, None, None)

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    if model.unet is not None:
        wrap(model.unet, "unet")
    if model.film is not None:
        wrap(model.film, "film")
    if model.fusion is not None:
        wrap(model.fusion, "projection")
    layers: Any = text_layers(model.mllama)
    for idx in xattn_layer_ids(model.mllama):
        wrap(layers[idx].cross_attn, "xattn")

    film_fn, text_vector = unet_module.film, model.text_vector

    def film(*args: Any) -> torch.Tensor:
        with torch.profiler.record_function("film"):
            return film_fn(*args)

    def text(*args: Any) -> torch.Tensor:
        with torch.profiler.record_function("film"):
            return text_vector(*args)

    setattr(unet_module, "film", film)  # noqa: B010  # UNet.forward looks it up at call time
    setattr(model, "text_vector", text)  # noqa: B010  # an instance attribute over the method
    try:
        yield
    finally:
        setattr(unet_module, "film", film_fn)  # noqa: B010
        del model.text_vector
        for handle in handles:
            handle.remove()


def _range_of(event: Any) -> str:
    node = event
    while node is not None:
        if node.name in RANGES:
            return str(node.name)
        node = node.cpu_parent
    return "rest"


def breakdown(model: MDFModel, batch: dict[str, torch.Tensor], steps: int = 1) -> dict[str, float]:
    """Share of the profiled steps per range (forward + backward), summing to 1 with ``rest``."""
    forward = dict.fromkeys(RANGES, 0.0)
    backward = dict.fromkeys(RANGES, 0.0)
    total = 0.0
    for _ in range(steps):
        with ranges(model), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            total += step(model, batch)[0] * 1000.0  # wall µs, as the profiler counts
        _attribute(list(prof.events()), forward, backward)
    shares = {name: (forward[name] + backward[name]) / total for name in RANGES}
    shares["rest"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def _attribute(events: list[Any], forward: dict[str, float], backward: dict[str, float]) -> None:
    """Add one profiled step's µs per range to ``forward`` and ``backward``."""
    seq_range: dict[int, str] = {}
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function"):
            continue
        if event.sequence_nr >= 0 and event.sequence_nr not in seq_range:
            seq_range[event.sequence_nr] = _range_of(event)
        if event.name in RANGES:
            # a range's own time: its span minus the named ranges nested in it (FiLM inside the U-Net)
            nested = sum(c.cpu_time_total for c in _named_descendants(event))
            forward[event.name] += event.cpu_time_total - nested
    for event in events:  # backward nodes (they do not nest) → the range of the op that created them
        if event.name.startswith("autograd::engine::evaluate_function"):
            name = seq_range.get(event.sequence_nr, "rest")
            if name in backward:
                backward[name] += event.cpu_time_total


def _named_descendants(event: Any) -> list[Any]:
    """The outermost named ranges strictly inside ``event``."""
    found: list[Any] = []
    for child in event.cpu_children:
        if child.name in RANGES:
            found.append(child)
        else:
            found.extend(_named_descendants(child))
    return found


# -- main --------------------------------------------------------------------------------------------------
def run(
    preset: str, names: list[str], repeats: int, warmup: int, batch_size: int, length: int, profile_steps: int
) -> dict[str, dict[str, Any]]:
    torch.set_num_threads(1)
    specs = arms()
    models = {name: build(preset, specs[name]) for name in names}
    batch = make_batch(preset, batch_size, length)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + repeats):
        for name in names:  # interleaved: every arm sees the same moment's load
            wall_ms, cpu_ms = step(models[name], batch)
            if rep >= warmup:
                wall[name].append(wall_ms)
                cpu[name].append(cpu_ms)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        median = statistics.median(cpu[name])
        shares = breakdown(models[name], batch, profile_steps)
        results[name] = {
            "median_ms": median,
            "wall_median_ms": statistics.median(wall[name]),
            "cpu_ms": cpu[name],
            "wall_ms": wall[name],
            "ms": {part: share * median for part, share in shares.items()},
        }
    return results


def report(results: dict[str, dict[str, Any]], write: Callable[[str], None] = print) -> None:
    base = results.get("baseline")
    base_ms = base["median_ms"] if base else float("nan")
    base_wall = base["wall_median_ms"] if base else float("nan")
    base_xattn = base["ms"]["xattn"] if base else 0.0
    write(
        f"{'arm':24s} {'cpu ms':>8s} {'ratio':>6s} {'wall ms':>8s} {'ratio':>6s} {'unet':>6s} {'film':>5s} "
        f"{'proj':>5s} {'+xattn':>6s} {'rest':>6s} {'unet %':>6s} {'ratio w/o unet':>14s}"
    )
    for name, r in results.items():
        ms, wall, parts = r["median_ms"], r["wall_median_ms"], r["ms"]
        extra_xattn = parts["xattn"] - base_xattn
        write(
            f"{name:24s} {ms:8.1f} {ms / base_ms:6.2f} {wall:8.1f} {wall / base_wall:6.2f} "
            f"{parts['unet']:6.1f} {parts['film']:5.1f} {parts['projection']:5.1f} {extra_xattn:6.1f} "
            f"{parts['rest']:6.1f} {100 * parts['unet'] / ms:5.1f}% {(ms - parts['unet']) / base_ms:14.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("tiny", "small"), default="small")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per arm (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per arm first")
    parser.add_argument("--profile-steps", type=int, default=2, help="profiled steps per arm (breakdown)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--arms", default="all", help=f"comma-separated among {list(arms())}, or 'all'")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="CI: tiny preset, one repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.repeats, args.warmup, args.profile_steps = "tiny", 1, 1, 1
    names = list(arms()) if args.arms == "all" else ["baseline", *[a for a in args.arms.split(",") if a]]
    names = list(dict.fromkeys(names))  # the baseline once, first
    unknown = sorted(set(names) - set(arms()))
    if unknown:
        parser.error(f"unknown arms {unknown}; choose among {list(arms())}")
    print(
        f"bench_step: preset={args.preset} batch={args.batch}x{args.tokens} tokens, 1 thread, "
        f"{args.repeats} interleaved repetitions (median) after {args.warmup} warm-up, torch {torch.__version__}"
    )
    results = run(args.preset, names, args.repeats, args.warmup, args.batch, args.tokens, args.profile_steps)
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "arms": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
