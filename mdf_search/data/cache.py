"""The preprocessed image cache: decode, crop to the field of view and resize once, then memory-map.

A 2048² PNG costs tens of milliseconds to decode and resize; a trial that does it every epoch spends
its CPU on JPEG/PNG instead of training, and every concurrent trial repeats the work. The cache does it
once per (manifest content hash, image size, preprocessing version) into

    <root>/<manifest hash>-px<size>-v<version>/
        images.npy   uint8 (N, S, S, 3)   row i = manifest row i
        masks.npy    uint8 (N, S, S)      soft vessel coverage 0..255 (zeros where the source has none)
        index.parquet                     manifest columns + crop box + label indices, row-aligned
        meta.json                         key, label space, counts; written last

Building happens in a temp directory renamed into place when complete; the rename is the commit point,
so a reader never sees a half-written cache, and of two trials building the same key at once one wins
and the other discards its copy. Trials read the cache (``open_cache``), never the PNGs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.format import open_memmap
from PIL import Image

from mdf_search.atomic import commit_dir, temp_sibling, write_text
from mdf_search.data.readers import MAX_IMAGE_SIDE, open_image, path_problem
from mdf_search.data.schema import DataError, LabelSpace, manifest_hash, read_manifest

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1  # bump when preprocess_image changes: old caches then stop matching the key
BLACK_LEVEL = 12  # a pixel whose brightest channel is at or below this is background (JPEG noise included)
Progress = Callable[[int, int], None]
_AGAIN = "restore it, or prepare the manifest again with `mdf-search data prepare` (it checks every image)"


# ---------------------------------------------------------------------------------------------------
# The preprocessing function (the cache stores exactly its output)
# ---------------------------------------------------------------------------------------------------
def fov_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Square (x0, y0, x1, y1) around the non-black pixels, centred; may extend past the image.

    Cropping to the field of view removes the black margins (large in HRF's 3:2 frames) so the retina
    fills the model's input; making it square keeps circles circular.
    """
    bright = rgb.max(axis=2) > BLACK_LEVEL
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    h, w = bright.shape
    if rows.size == 0:  # an all-black image: keep the centred square of the whole frame
        y0, y1, x0, x1 = 0, h, 0, w
    else:
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(y1 - y0, x1 - x0)
    cy, cx = y0 + y1, x0 + x1  # twice the centre, to stay in integers
    top, left = (cy - side) // 2, (cx - side) // 2
    return left, top, left + side, top + side


def _crop_resize(im: Image.Image, box: tuple[int, int, int, int], size: int) -> Image.Image:
    # PIL pads a crop that extends past the image with zeros (black), which is what a square FOV needs.
    # reducing_gap: a box pre-reduction, then Lanczos: faster from 2048 px sources, visually the same.
    return im.crop(box).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def preprocess_image(
    image_path: str | Path, size: int, mask_path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Decode → crop to the square FOV box → resize: ``(rgb (S,S,3) uint8, vessel (S,S) uint8, box)``.

    The vessel mask gets the image's box and an area-preserving resize, so a 1 px vessel at 2048 px
    becomes a faint value instead of vanishing: it is soft coverage in 0..255, not a binary mask.
    """
    try:
        with open_image(Path(image_path)) as im:
            rgb_im = im.convert("RGB")
    except DataError as err:
        raise DataError(f"{err}; {_AGAIN}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"{image_path}: unreadable or corrupt image ({type(err).__name__}: {err}); {_AGAIN}"
        ) from None
    box = fov_box(np.asarray(rgb_im))
    rgb = np.asarray(_crop_resize(rgb_im, box, size), dtype=np.uint8)
    vessel = np.zeros((size, size), np.uint8)
    if mask_path:
        try:
            with open_image(Path(mask_path)) as m:
                mask_im = m.convert("L")
        except DataError as err:
            raise DataError(f"vessel mask {err}; {_AGAIN}") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{mask_path}: unreadable vessel mask ({type(err).__name__}: {err})") from None
        if mask_im.size != rgb_im.size:
            raise DataError(
                f"{mask_path}: vessel mask is {mask_im.size[0]}x{mask_im.size[1]} but its image "
                f"{image_path} is {rgb_im.size[0]}x{rgb_im.size[1]}"
            )
        binary = mask_im.point(lambda v: 255 if v > 127 else 0)
        vessel = np.asarray(_crop_resize(binary, box, size), dtype=np.uint8)
    return rgb, vessel, box


# ---------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------
def cache_key(manifest: pa.Table, size: int) -> str:
    return f"{manifest_hash(manifest)}-px{size}-v{PREPROCESS_VERSION}"


def _fill(
    directory: str, rows: Sequence[int], images: Sequence[str], masks: Sequence[str], size: int
) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Worker: preprocess some rows straight into the shared memmaps (no pixel data crosses processes)."""
    out_images = open_memmap(os.path.join(directory, "images.npy"), mode="r+")
    out_masks = open_memmap(os.path.join(directory, "masks.npy"), mode="r+")
    boxes = []
    for row, image, mask in zip(rows, images, masks, strict=True):
        rgb, vessel, box = preprocess_image(image, size, mask or None)
        out_images[row] = rgb
        out_masks[row] = vessel
        boxes.append((row, box))
    out_images.flush()
    out_masks.flush()
    del out_images, out_masks
    return boxes


def check_rows(manifest_path: str | Path, table: pa.Table) -> None:
    """Before decoding anything: every image is there and within the size limit, all problems at once
    (a manifest written by hand, by an older version, or whose images changed since ``prepare``)."""
    problems = []
    columns = [table.column(c).to_pylist() for c in ("image_path", "width", "height", "vessel_mask_path")]
    for i, (image, width, height, mask) in enumerate(zip(*columns, strict=True), start=1):
        if max(width, height) > MAX_IMAGE_SIDE:
            problems.append(
                f"{manifest_path}: row {i} ({image}) is {width}x{height} px; images must be at most "
                f"{MAX_IMAGE_SIDE} px a side"
            )
        for path, what in ((image, "image"), (mask, "vessel mask")):
            problem = path_problem(Path(path)) if path else None
            if problem:
                problems.append(f"{path}: {what} {problem} (row {i} of {manifest_path})")
    if problems:
        raise DataError(
            problems[:20] + [f"... and {len(problems) - 20} more"] * (len(problems) > 20), hint=_AGAIN
        )


def build_cache(
    manifest_path: str | Path,
    root: str | Path,
    size: int,
    *,
    workers: int = 1,
    progress: Progress | None = None,
) -> Path:
    """Build (or find) the cache of a manifest at ``size`` px; returns its directory.

    ``workers`` > 1 preprocesses in that many processes, each writing its rows into the memmaps directly.
    Workers are *spawned*, not forked: a trial process holds torch and Ray threads, and a fork taken while
    another thread holds a lock deadlocks the child. (As with any spawn pool, a script calling this with
    workers > 1 needs the usual ``if __name__ == "__main__":`` guard.)
    """
    table, space = read_manifest(manifest_path)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file; --root takes the cache folder (made if missing)")
    final = root / cache_key(table, size)
    if (final / "meta.json").is_file():
        log.debug("cache hit %s", final)
        return final
    check_rows(manifest_path, table)
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    n = table.num_rows
    try:
        open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)).flush()
        open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size)).flush()
        images = table.column("image_path").to_pylist()
        masks = table.column("vessel_mask_path").to_pylist()
        chunk = max(1, min(64, n // (max(1, workers) * 4) or 1))
        chunks = [list(range(i, min(n, i + chunk))) for i in range(0, n, chunk)]
        boxes: dict[int, tuple[int, int, int, int]] = {}
        done = 0

        def record(result: list[tuple[int, tuple[int, int, int, int]]]) -> None:
            nonlocal done
            boxes.update(result)
            done += len(result)
            if progress:
                progress(done, n)

        if workers <= 1:
            for rows in chunks:
                record(_fill(str(tmp), rows, [images[i] for i in rows], [masks[i] for i in rows], size))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(
                        _fill, str(tmp), rows, [images[i] for i in rows], [masks[i] for i in rows], size
                    )
                    for rows in chunks
                ]
                for future in as_completed(futures):
                    record(future.result())
        index = table.append_column("has_mask", pa.array([bool(m) for m in masks]))
        for k, name in enumerate(("box_x0", "box_y0", "box_x1", "box_y1")):
            index = index.append_column(name, pa.array([boxes[i][k] for i in range(n)], pa.int32()))
        index = index.append_column(
            "disease_index",
            pa.array([space.disease_index(lb) for lb in table.column("label").to_pylist()], pa.int64()),
        )
        index = index.append_column(
            "type_index",
            pa.array([space.types.index(t) for t in table.column("disease_type").to_pylist()], pa.int64()),
        )
        pq.write_table(index, tmp / "index.parquet")
        meta = {
            "key": final.name,
            "manifest_hash": manifest_hash(table),
            "size": size,
            "rows": n,
            "version": PREPROCESS_VERSION,
            "label_space": json.loads(space.to_json()),
            "manifest": str(Path(manifest_path).resolve()),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last file: the cache is complete
        if commit_dir(tmp, final):
            log.info("built cache %s (%d images at %d px)", final, n, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cache:
    """Memory-mapped arrays of one cache plus its row-aligned index (read only)."""

    path: Path
    images: np.ndarray  # (N, S, S, 3) uint8 memmap
    masks: np.ndarray  # (N, S, S) uint8 memmap
    index: pa.Table
    label_space: LabelSpace
    size: int

    def __len__(self) -> int:
        return int(self.images.shape[0])


def open_cache(path: str | Path) -> Cache:
    """Open a committed cache directory (from :func:`build_cache`) as read-only memmaps."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"{path}: not a complete cache (no meta.json); build it with `mdf-search data cache`")
    meta = json.loads(meta_file.read_text())
    images = np.load(path / "images.npy", mmap_mode="r")
    masks = np.load(path / "masks.npy", mmap_mode="r")
    index = pq.read_table(path / "index.parquet")
    if not (images.shape[0] == masks.shape[0] == index.num_rows == meta["rows"]):
        raise DataError(
            f"{path}: arrays ({images.shape[0]}, {masks.shape[0]}) and index ({index.num_rows}) "
            f"disagree with meta rows {meta['rows']}"
        )
    space = LabelSpace.from_json(json.dumps(meta["label_space"]))
    return Cache(path, images, masks, index, space, int(meta["size"]))


IMAGES_DIGEST = "images.sha256"  # beside images.npy: its content hash, computed on first use


def images_digest(cache: Cache) -> str:
    """SHA-256 of the cache's image array file (header and pixels): what a feature cache computed from
    these images is keyed on (``train/features.py``). Computed once, then kept beside the array (a cache
    is immutable once committed; a racing writer writes the same text; a read-only cache is hashed on
    every call)."""
    sidecar = cache.path / IMAGES_DIGEST
    if sidecar.is_file():
        return sidecar.read_text().strip()
    digest = hashlib.sha256()
    with open(cache.path / "images.npy", "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    text = digest.hexdigest()
    with contextlib.suppress(OSError):
        write_text(sidecar, text)
    return text


def ensure_cache(
    manifest_path: str | Path,
    root: str | Path,
    size: int,
    *,
    workers: int = 1,
    progress: Progress | None = None,
) -> Cache:
    """Build if needed, then open: what a trial calls."""
    return open_cache(build_cache(manifest_path, root, size, workers=workers, progress=progress))


def cache_size_for(unet_size: int, vision_size: int, vision_tiles: int = 1) -> int:
    """The cache keeps the larger of the two model inputs; batches resize down from it.

    ``vision_size`` is the tower's tile side; ``vision_tiles`` (1 or 4) tiles a square image of
    ``sqrt(vision_tiles)`` tiles a side, so with 4 the vision input is a 2x2 tiling at twice the tile size.
    """
    side = math.isqrt(vision_tiles) if vision_tiles > 0 else 0
    if side * side != vision_tiles:
        raise ValueError(f"vision_tiles must be a square number of tiles (1 or 4), but got {vision_tiles}")
    return max(unet_size, vision_size * side)
