"""Epoch time with and without frozen-feature reuse (``train/features.py``), side by side in one run.

    python benchmarks/bench_features.py [--preset small] [--images 24] [--epochs 2] [--quick]

For each frozen-tower arm of the freezing study (``search_spaces/freezing.yaml``: ``mllm``,
``mllm_except_xattn``, ``vision_tower``, ``lora``, with its fusion and FiLM settings) two models are built
from the same seed: one reads pixels, one reads the feature cache. Their epochs alternate (pixel epoch,
then reuse epoch), so machine load hits both alike. An epoch is the training pass over the split's
training rows plus evaluation of its validation rows, batches collated as a trial collates them
(``data.augment=false``: augmentation disables reuse for training batches). Each step is a plain
single-process forward, backward and AdamW step (no DeepSpeed: its overhead is the same on both sides).
Prints the largest relative difference between the two models' training losses: 0 where the kernels
give a row the same bits whatever its batch (the vision path on the CPU in fp32); oneDNN's convolutions
do not promise that, so a U-Net arm can differ in the last bits (features are built at batch 8, training
runs at ``--batch``). More than 1e-4 stops the benchmark: that would be a bug, not rounding.

Prints per arm: the pixel and reuse epoch times, their ratio, and the one-off cost of building the cache
(arms with the same frozen weights share one cache: ``mllm``, ``mllm_except_xattn`` and ``lora`` share the
projected states; ``vision_tower`` caches the tower's output). ``--unet`` adds a ``freeze=unet`` arm with
FiLM off (not a freezing-study arm: that study's FiLM makes the U-Net's features text-dependent).
Target: an epoch of a frozen-tower arm at least 3x faster with reuse. ``--quick``: tiny preset, one arm,
one epoch, seconds (CI). ``--prepare DIR`` writes the data cache and tokenizer to DIR and exits;
``--data DIR`` uses them (for a machine without the synthetic generator's dependencies, e.g. a GPU box:
``--preset 1b --device cuda --dtype bfloat16``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdf_search.config import TrialConfig
from mdf_search.data.batches import Collator, FundusDataset, prompt_text
from mdf_search.data.cache import Cache, cache_size_for, ensure_cache, open_cache
from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
from mdf_search.model.mllama import IMAGE, build_mllama, train_tokenizer
from mdf_search.model.presets import get_preset
from mdf_search.train.evaluate import to_device
from mdf_search.train.features import attach_features

# The freezing study's fixed architecture (search_spaces/freezing.yaml) and its frozen-tower arms
STUDY = {"fusion.levels": "1234", "fusion.injection": "parallel", "film.placement": "enc"}
ARMS = {
    "mllm": {"freeze": "mllm"},
    "mllm_except_xattn": {"freeze": "mllm_except_xattn"},
    "vision_tower": {"freeze": "vision_tower"},
    "lora": {"freeze": "lora"},
}
UNET_ARM = {"unet (FiLM off)": {"freeze": "unet", "film.placement": "none", "fusion.scale_init": 0.5}}


def _data(root: Path, preset: Any, images: int, prepared: Path | None) -> tuple[Cache, Any]:
    """The synthetic study's cache and a tokenizer trained on its prompts (or those under ``prepared``)."""
    if prepared is not None:
        from transformers import PreTrainedTokenizerFast

        (cache_dir,) = (prepared / "cache").iterdir()
        return open_cache(cache_dir), PreTrainedTokenizerFast.from_pretrained(str(prepared / "tokenizer"))
    from mdf_search.data.synthetic import build_manifest, generate  # needs polars: only where data is made

    generate(root / "synth", images=images, size=max(64, preset.unet_size), seed=0)
    manifest = build_manifest(root / "synth")
    cache = ensure_cache(manifest, root / "cache", cache_size_for(preset.unet_size, preset.vision_size))
    texts = [prompt_text(t or "") for t in cache.index.column("clinical_text").to_pylist()]
    return cache, train_tokenizer(texts, preset.vocab_size)


class Side:
    """One model of an arm, with its optimiser and collators; ``features``: reads the feature cache."""

    def __init__(self, flat: dict[str, Any], cache: Cache, tokenizer: Any, args: argparse.Namespace) -> None:
        self.cfg = TrialConfig.from_flat(
            {"model.preset": args.preset, "data.augment": False, "data.max_text_tokens": args.tokens, **flat}
        )
        preset = get_preset(args.preset)
        self.device, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        torch.manual_seed(0)
        with _building(self.device, self.dtype):  # an 11b is initialised on the GPU, not twice on the CPU
            image_token = tokenizer.convert_tokens_to_ids(IMAGE)
            mllama = build_mllama(preset, gate_init=0.5, image_token_index=image_token)
            self.model = MDFModel(mllama, self.cfg.arch, task_classes("disease", cache.label_space.diseases))
        self.model.to(self.device, self.dtype)
        self.collate = {
            train: Collator(tokenizer, preset.vision, preset.unet_size, args.tokens, augment=False)
            for train in (True, False)
        }
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        self.reused = "none"
        self.build_s = 0.0

    def attach(self, cache: Cache, root: Path) -> None:
        start = time.perf_counter()
        self.reused = attach_features(
            self.model, self.collate, cache, root, device=self.device, dtype=self.dtype
        )
        self.build_s = time.perf_counter() - start

    def epoch(
        self, dataset: FundusDataset, train: list[int], val: list[int], batch: int
    ) -> tuple[float, list[float]]:
        _sync(self.device)
        start = time.perf_counter()
        losses = []
        self.model.train()
        for i in range(0, len(train), batch):
            data = to_device(
                self.collate[True]([dataset[r] for r in train[i : i + batch]]), self.device, self.dtype
            )
            loss, _ = mdf_loss(self.model(data), data)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(val), batch):
                data = to_device(
                    self.collate[False]([dataset[r] for r in val[i : i + batch]]), self.device, self.dtype
                )
                self.model(data)
        _sync(self.device)
        return time.perf_counter() - start, losses


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside are created on ``device`` in ``dtype`` (a no-op for the CPU in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="tiny | small | 1b")
    parser.add_argument(
        "--images", type=int, default=24, help="synthetic images (>= 12); 80 %% train, 20 %% val"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="prompt length (the freezing study uses 256)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {list(ARMS)}")
    parser.add_argument("--unet", action="store_true", help="add a freeze=unet arm with FiLM off")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 (GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 12 images, one arm, one epoch")
    parser.add_argument("--prepare", type=Path, default=None, help="write the data and tokenizer here, exit")
    parser.add_argument("--data", type=Path, default=None, help="use the data written by --prepare")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.images, args.epochs, args.arms, args.tokens = "tiny", 12, 1, "mllm", 32
    torch.set_num_threads(args.threads)
    arms: dict[str, dict[str, Any]] = {name: ARMS[name] for name in args.arms.split(",")}
    if args.unet:
        arms.update(UNET_ARM)
    preset = get_preset(args.preset)

    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        root = Path(tmp)
        if args.prepare is not None:
            cache, tokenizer = _data(args.prepare, preset, args.images, None)
            tokenizer.save_pretrained(args.prepare / "tokenizer")
            shutil.rmtree(args.prepare / "synth")
            print(f"prepared {len(cache)} images at {cache.size} px in {args.prepare}")
            return
        cache, tokenizer = _data(root, preset, args.images, args.data)
        dataset = FundusDataset(cache, np.arange(len(cache)))
        rows = list(range(len(cache)))
        cut = max(1, round(0.8 * len(rows)))
        train, val = rows[:cut], rows[cut:]
        print(
            f"preset {args.preset}, {len(train)} train + {len(val)} val images, batch {args.batch}, "
            f"{args.tokens} tokens, {args.epochs} epoch(s), {args.device} {args.dtype}, {args.threads} thread(s)"
        )
        header = f"{'arm':<20} {'reused':<8} {'pixel s/epoch':>14} {'reuse s/epoch':>14} {'ratio':>7}"
        print(f"{header} {'build s':>8} {'max rel dloss':>14}")
        ratios = []
        for name, flat in arms.items():
            pixel = Side({**STUDY, **flat}, cache, tokenizer, args)
            reuse = Side({**STUDY, **flat}, cache, tokenizer, args)
            reuse.attach(cache, root / "features")
            times: dict[str, list[float]] = {"pixel": [], "reuse": []}
            drift = 0.0
            for _ in range(args.epochs):
                seconds, pixel_losses = pixel.epoch(dataset, train, val, args.batch)
                times["pixel"].append(seconds)
                seconds, reuse_losses = reuse.epoch(dataset, train, val, args.batch)
                times["reuse"].append(seconds)
                pairs = zip(pixel_losses, reuse_losses, strict=True)
                drift = max([drift, *(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)])
                if args.dtype == "float32" and drift > 1e-4:
                    raise SystemExit(f"{name}: losses differ with reuse: {pixel_losses} vs {reuse_losses}")
            p, r = statistics.median(times["pixel"]), statistics.median(times["reuse"])
            ratio = p / r
            if reuse.reused != "none":
                ratios.append(ratio)
            row = f"{name:<20} {reuse.reused:<8} {p:>14.2f} {r:>14.2f} {ratio:>6.2f}x"
            print(f"{row} {reuse.build_s:>8.2f} {drift:>14.1e}")
        if ratios:
            print(f"median epoch speed-up over reusing arms: {statistics.median(ratios):.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
