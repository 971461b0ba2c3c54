"""The cache equals direct decoding, is committed atomically, and survives two builders at once."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdf_search.data.cache import (
    IMAGES_DIGEST,
    build_cache,
    fov_box,
    images_digest,
    open_cache,
    preprocess_image,
)
from mdf_search.data.schema import DataError, read_manifest
from mdf_search.data.sources import prepare


def test_cache_equals_direct_decoding(synth_study: Path, tmp_path: Path) -> None:
    manifest = synth_study / "manifest.parquet"
    calls: list[tuple[int, int]] = []
    path = build_cache(manifest, tmp_path, 64, workers=2, progress=lambda d, t: calls.append((d, t)))
    cache = open_cache(path)
    table, space = read_manifest(manifest)
    assert cache.images.shape == (table.num_rows, 64, 64, 3) and cache.images.dtype == np.uint8
    assert cache.masks.shape == (table.num_rows, 64, 64)
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert calls[-1] == (table.num_rows, table.num_rows)
    assert cache.label_space == space
    for i, (image, mask) in enumerate(
        zip(table.column("image_path").to_pylist(), table.column("vessel_mask_path").to_pylist(), strict=True)
    ):
        rgb, vessel, _ = preprocess_image(image, 64, mask or None)
        assert np.array_equal(cache.images[i], rgb) and np.array_equal(cache.masks[i], vessel)
    assert cache.index.column("image_path").to_pylist() == table.column("image_path").to_pylist()
    labels = table.column("label").to_pylist()
    assert cache.index.column("disease_index").to_pylist() == [space.disease_index(lb) for lb in labels]
    # Masks exist where the source has them (FIVES, HRF) and are zeros elsewhere (StoneRounds).
    sources = table.column("source").to_pylist()
    for i, src in enumerate(sources):
        assert (cache.masks[i].max() > 0) == (src != "stonerounds")
    assert build_cache(manifest, tmp_path, 64) == path  # second call is a hit


def test_crop_to_fov_makes_hrf_frames_square(synth_study: Path) -> None:
    image = next((synth_study / "HRF/images").glob("*_h.jpg"))
    rgb = np.asarray(Image.open(image).convert("RGB"))
    x0, y0, x1, y1 = fov_box(rgb)
    assert x1 - x0 == y1 - y0 and (x1 - x0) < rgb.shape[1]
    out, _, _ = preprocess_image(image, 32)
    assert out[16, 16].max() > 50 and out[0, 0].max() < 20  # retina fills the frame, corners stay black


def test_two_concurrent_builders_yield_one_valid_cache(synth_study: Path, tmp_path: Path) -> None:
    """Two independent processes (like two trials) build the same cache at the same moment."""
    manifest = synth_study / "manifest.parquet"
    code = "import sys; from mdf_search.data.cache import build_cache; print(build_cache(sys.argv[1], sys.argv[2], 48))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(manifest), str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    paths = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert paths[0] == paths[1]
    assert [p.name for p in tmp_path.iterdir()] == [Path(paths[0]).name]  # no temp dir left
    cache = open_cache(paths[0])
    first = read_manifest(manifest)[0].column("image_path").to_pylist()[0]
    assert np.array_equal(cache.images[0], preprocess_image(first, 48)[0])


def test_incomplete_cache_is_never_opened(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    np.save(tmp_path / "half/images.npy", np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="not a complete cache"):
        open_cache(tmp_path / "half")


def test_corrupt_image_found_at_build_leaves_nothing(study_copy: Path, tmp_path: Path) -> None:
    prepare(tmp_path / "m.parquet", fives=study_copy / "FIVES")
    table, _ = read_manifest(tmp_path / "m.parquet")
    victim = Path(table.column("image_path").to_pylist()[3])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # header intact, pixel data truncated
    root = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"{victim.name}: unreadable or corrupt image"):
        build_cache(tmp_path / "m.parquet", root, 32)
    assert list(root.iterdir()) == []


def test_mask_size_mismatch(study_copy: Path, tmp_path: Path) -> None:
    mask = next((study_copy / "HRF/manual1").glob("*.tif"))
    prepare(tmp_path / "m.parquet", hrf=study_copy / "HRF")
    Image.new("L", (10, 10)).save(mask)  # changed after prepare, which checks mask sizes itself
    with pytest.raises(DataError, match=rf"{mask.name}: vessel mask is 10x10 but its image"):
        build_cache(tmp_path / "m.parquet", tmp_path / "cache", 32)
    with pytest.raises(DataError, match=rf"vessel mask \S*{mask.name} is 10x10 px but its image is 144x96"):
        prepare(tmp_path / "m2.parquet", hrf=study_copy / "HRF")


def test_race_loser_discards_its_copy(tmp_path: Path) -> None:
    from mdf_search.atomic import commit_dir

    winner, loser = tmp_path / "key", tmp_path / ".key.tmp-1"
    for d in (winner, loser):
        d.mkdir()
        (d / "meta.json").write_text(d.name)
    assert commit_dir(loser, winner) is False
    assert not loser.exists() and (winner / "meta.json").read_text() == "key"


def test_cache_size_holds_the_larger_model_input() -> None:
    from mdf_search.data.cache import cache_size_for

    assert cache_size_for(128, 64) == 128  # tiny: the U-Net's 128 px; the tower resizes down to 64
    assert cache_size_for(224, 112, vision_tiles=4) == 224  # small: a 2x2 tiling of 112 px tiles
    assert cache_size_for(560, 560, vision_tiles=4) == 1120  # 11b: the tiling needs 2x the tile side
    with pytest.raises(ValueError, match="square number of tiles"):
        cache_size_for(128, 64, vision_tiles=2)


def test_images_digest_is_the_image_arrays_hash_kept_beside_it(synth_study: Path, tmp_path: Path) -> None:
    path = build_cache(synth_study / "manifest.parquet", tmp_path / "a", 64)
    digest = images_digest(open_cache(path))
    assert digest == hashlib.sha256((path / "images.npy").read_bytes()).hexdigest()
    assert (path / IMAGES_DIGEST).read_text() == digest  # computed once
    other = tmp_path / "b"
    shutil.copytree(path, other)
    (other / IMAGES_DIGEST).unlink()
    pixels = np.load(other / "images.npy", mmap_mode="r+")
    pixels[0, 0, 0, 0] ^= 1
    pixels.flush()
    assert images_digest(open_cache(other)) != digest
