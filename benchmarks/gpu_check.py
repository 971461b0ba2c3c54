"""GPU check (issue #4): train the `small` and `1b` presets for 50 steps with DeepSpeed ZeRO-3 in bf16 on one
GPU and print samples/s, MFU against the H100's 989 TFLOP/s dense bf16 peak, and peak memory.

    bash benchmarks/gpu_check.sh            # < 8 min on one H100; exits 0 with a message where there is no GPU

MFU is an estimate: 6 x parameters x tokens for the text model (B x T tokens) and the vision tower
(B x max_num_tiles x patches: the tower computes padding tiles too), the U-Net's convolutions left
out, so it is a lower bound.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEAK_TFLOPS = 989.0
STEPS, WARMUP = 50, 5


def _batch(preset, batch: int, length: int, device):  # type: ignore[no-untyped-def]
    import torch

    ids = torch.randint(4, preset.vocab_size, (batch, length), device=device)
    ids[:, 0], ids[:, 1] = 1, 2
    tiles = preset.max_num_tiles  # the image in tile 0, the others padding (data.vision_tiles=1)
    xattn = torch.zeros(batch, length, 1, tiles, dtype=torch.long, device=device)
    xattn[:, 1:, :, 0] = 1
    tile_mask = torch.zeros(batch, 1, tiles, dtype=torch.long, device=device)
    tile_mask[:, :, 0] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "pixel_values": torch.randn(
            batch, 1, tiles, 3, preset.vision_size, preset.vision_size, device=device, dtype=torch.bfloat16
        )
        * tile_mask.view(batch, 1, tiles, 1, 1, 1),
        "aspect_ratio_ids": torch.ones(batch, 1, dtype=torch.long, device=device),
        "aspect_ratio_mask": tile_mask,
        "cross_attention_mask": xattn,
        "unet_pixels": torch.rand(
            batch, 3, preset.unet_size, preset.unet_size, device=device, dtype=torch.bfloat16
        ),
        "labels_type": torch.randint(0, 3, (batch,), device=device),
    }


def run(preset_name: str, micro_batch: int, length: int) -> None:
    import torch

    from mdf_search.config import TrialConfig
    from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
    from mdf_search.model.mllama import build_mllama
    from mdf_search.model.presets import get_preset
    from mdf_search.train.deepspeed import build_ds_config, initialize, zero3_construction

    cfg = TrialConfig.from_flat(
        {
            "model.preset": preset_name,
            "optim.precision": "bf16",
            "optim.micro_batch": micro_batch,
            "run.workers": 1,
            "optim.epochs": 1,
            "data.max_text_tokens": length,
        }
    )
    preset = get_preset(preset_name)
    ds_config = build_ds_config(cfg, world_size=1, steps_per_epoch=STEPS, on_gpu=True)
    torch.cuda.reset_peak_memory_stats()
    with zero3_construction(ds_config):
        model = MDFModel(build_mllama(preset, gate_init=0.5), cfg.arch, task_classes("type", ()))
    engine, _, _ = initialize(model, cfg, ds_config)
    batch = _batch(preset, micro_batch, length, engine.device)
    for step in range(STEPS + WARMUP):
        if step == WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss, _ = mdf_loss(engine(batch), batch)
        engine.backward(loss)
        engine.step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counts = {n: int(getattr(p, "ds_numel", p.numel())) for n, p in model.named_parameters()}
    vision = sum(v for n, v in counts.items() if ".vision_model." in n)
    text = sum(counts.values()) - vision
    patches = preset.max_num_tiles * ((preset.vision_size // int(preset.vision["patch_size"])) ** 2 + 1)
    flops = 6 * (text * micro_batch * length + vision * micro_batch * patches) * STEPS
    mfu = flops / seconds / (PEAK_TFLOPS * 1e12)
    print(
        f"{preset_name:6s} params={sum(counts.values()) / 1e6:8.1f}M  micro_batch={micro_batch} tokens={length}  "
        f"{STEPS * micro_batch / seconds:8.1f} samples/s  MFU={mfu * 100:5.1f}%  "
        f"peak={torch.cuda.max_memory_allocated() / 2**30:6.1f} GiB  loss={float(loss):.3f}",
        flush=True,
    )
    engine.destroy()


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here, nothing to measure (run it on a machine with one GPU, e.g. an H100)."
        )
        return 0
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl")
    print(
        f"gpu_check on {torch.cuda.get_device_name(0)}: ZeRO-3 bf16, {STEPS} timed steps after {WARMUP} warm-up"
    )
    run("small", micro_batch=16, length=128)
    run("1b", micro_batch=8, length=128)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
