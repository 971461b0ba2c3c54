"""Epoch read throughput: the preprocessed memmap cache vs decoding the PNGs every epoch, side by side.

    python benchmarks/bench_data_cache.py [--images 16] [--size 2048] [--cache-size 560] [--workers N]

Generates full-size synthetic fundus images (FIVES layout, with vessel masks), builds the cache once,
then reads one epoch both ways: (a) the cache (memmapped uint8 rows copied out, as the Dataset does),
(b) PIL decode + the same crop-to-FOV/resize (`preprocess_image`), which is what a trial without the
cache would pay every epoch. Prints the ratio (target >= 20x), cache build time per image, size on
disk, and a projection for the paper's 1,305 images at 560 px. Reads from the cache are from a warm
page cache (it is re-read every epoch and is small); the PNG path is CPU-bound either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdf_search.data.cache import build_cache, open_cache, preprocess_image
from mdf_search.data.schema import read_manifest
from mdf_search.data.synthetic import build_manifest, generate

PAPER_IMAGES = 1305
PAPER_SIZE = 560


def _epoch_cache(path: Path, epochs: int) -> float:
    cache = open_cache(path)
    start = time.perf_counter()
    checksum = 0
    for _ in range(epochs):
        for i in range(len(cache)):
            image = np.array(cache.images[i])
            mask = np.array(cache.masks[i])
            checksum += int(image[0, 0, 0]) + int(mask[0, 0])
    return epochs * len(cache) / (time.perf_counter() - start)


def _epoch_decode(images: list[str], masks: list[str], size: int) -> float:
    start = time.perf_counter()
    for image, mask in zip(images, masks, strict=True):
        preprocess_image(image, size, mask or None)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="synthetic images (>= 12)")
    parser.add_argument("--size", type=int, default=2048, help="source image side (px)")
    parser.add_argument("--cache-size", type=int, default=PAPER_SIZE, help="cached image side (px)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cache build processes")
    parser.add_argument("--cache-epochs", type=int, default=20, help="epochs read from the cache")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="CI: 12 images of 256 px, 64 px cache (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.cache_size, args.workers, args.cache_epochs = 12, 256, 64, 1, 2

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root / "synth", images=args.images, size=args.size, seed=0)
        generation = (time.perf_counter() - t0) / args.images
        manifest = build_manifest(root / "synth")
        table, _ = read_manifest(manifest)
        png_bytes = sum(Path(p).stat().st_size for p in table.column("image_path").to_pylist())

        t0 = time.perf_counter()
        cache_dir = build_cache(manifest, root / "cache", args.cache_size, workers=args.workers)
        build = time.perf_counter() - t0
        cache_bytes = sum(f.stat().st_size for f in cache_dir.iterdir())

        images = table.column("image_path").to_pylist()
        masks = table.column("vessel_mask_path").to_pylist()
        decode_rate = _epoch_decode(images, masks, args.cache_size)
        cache_rate = _epoch_cache(cache_dir, args.cache_epochs)

    n = table.num_rows
    print(
        f"images: {n} synthetic {args.size}x{args.size} PNGs ({png_bytes / n / 2**20:.2f} MiB each), "
        f"generated in {generation:.2f} s/image; cache at {args.cache_size} px"
    )
    print(f"{'path':<34}{'images/s':>12}")
    print(f"{'PIL decode + crop/resize per epoch':<34}{decode_rate:>12.1f}")
    print(f"{'memmap cache':<34}{cache_rate:>12.1f}")
    print(f"ratio cache / decode: {cache_rate / decode_rate:.0f}x (target >= 20x)")
    print(
        f"cache build: {build:.2f} s total, {build / n * 1000:.0f} ms/image wall with {args.workers} worker(s) "
        f"({build / n * args.workers * 1000:.0f} ms/image of CPU); size on disk {cache_bytes / 2**20:.1f} MiB "
        f"({cache_bytes / n / 2**20:.2f} MiB/image)"
    )
    paper_bytes = PAPER_IMAGES * (PAPER_SIZE**2) * 4
    paper_build = PAPER_IMAGES * build / n  # decode-bound: scales with the source size, not the cache size
    print(
        f"projection, {PAPER_IMAGES} images at {PAPER_SIZE} px: {paper_bytes:,} bytes ({paper_bytes / 2**30:.2f} "
        f"GiB; {PAPER_SIZE**2 * 4:,} bytes/image RGB + mask), build ~{paper_build:.0f} s with {args.workers} "
        f"worker(s) from {args.size} px sources"
    )


if __name__ == "__main__":
    main()
