"""Frozen-feature reuse (``train/features.py``): the same losses and logits as the pixel path, keys that
miss on any change, one cache from racing builders, and no reuse where augmentation touches the input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mdf_search.config import TrialConfig
from mdf_search.data.batches import Collator, FundusDataset, prompt_text
from mdf_search.data.cache import Cache, cache_size_for, ensure_cache, open_cache
from mdf_search.data.synthetic import build_manifest, generate
from mdf_search.model.mdf import (
    CACHED_TOWER,
    CACHED_VISION,
    MDFModel,
    cached_level_key,
    mdf_loss,
    task_classes,
)
from mdf_search.model.mllama import IMAGE, build_mllama, train_tokenizer
from mdf_search.model.presets import get_preset
from mdf_search.train import features
from mdf_search.train.features import ENV_SWITCH, ReusePlan, attach_features, reuse_plan

ROOT = Path(__file__).resolve().parents[2]
TINY = get_preset("tiny")
# Fusion open from the start (scale 0.5) and no FiLM, as U-Net reuse needs
FUSED = {
    "fusion.levels": "1234",
    "fusion.injection": "parallel",
    "fusion.scale_init": 0.5,
    "film.placement": "none",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cache, Any]:
    root = tmp_path_factory.mktemp("features-data")
    generate(root / "synth", images=12, size=128, seed=5)
    manifest = build_manifest(root / "synth")
    cache = ensure_cache(manifest, root / "cache", cache_size_for(TINY.unet_size, TINY.vision_size))
    texts = cache.index.column("clinical_text").to_pylist()
    return cache, train_tokenizer([prompt_text(t or "") for t in texts], TINY.vocab_size)


def _model(cfg: TrialConfig, cache: Cache, tokenizer: Any) -> MDFModel:
    torch.manual_seed(0)
    mllama = build_mllama(TINY, gate_init=0.5, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE))
    return MDFModel(mllama, cfg.arch, task_classes(cfg.head.task, cache.label_space.diseases))


def _collators(cfg: TrialConfig, tokenizer: Any) -> dict[bool, Collator]:
    return {
        train: Collator(
            tokenizer,
            TINY.vision,
            TINY.unet_size,
            32,
            augment=train and cfg.data.augment,
            seed=cfg.run.seed,
            vision_tiles=cfg.data.vision_tiles,
        )
        for train in (True, False)
    }


def _trial(
    flat: dict[str, Any], cache: Cache, tokenizer: Any, root: Path | None, *, image: str = "on"
) -> tuple[str, list[float], torch.Tensor, set[str]]:
    """Three optimiser steps at batch 3 then evaluation logits of four held-out rows, with features from
    ``root`` (None: the pixel path). Returns (features_reused, losses, logits, training batch keys)."""
    cfg = TrialConfig.from_flat({"model.preset": "tiny", "data.augment": False, **flat})
    model = _model(cfg, cache, tokenizer)
    collate = _collators(cfg, tokenizer)
    label = "none"
    if root is not None:
        label = attach_features(model, collate, cache, root, device=torch.device("cpu"), dtype=torch.float32)
    dataset = FundusDataset(cache, np.arange(len(cache)), image=image)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    model.train()
    for step in range(3):
        batch = collate[True]([dataset[i] for i in range(3 * step, 3 * step + 3)])
        loss, _ = mdf_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            list(model(collate[False]([dataset[i] for i in range(8, 12)])).logits.values()), -1
        )
    return label, losses, logits, set(batch)


@pytest.mark.parametrize(
    ("flat", "label", "key"),
    [
        pytest.param(
            {"freeze": "mllm", **FUSED, "film.placement": "enc"}, "vision", CACHED_VISION, id="mllm"
        ),
        pytest.param({"freeze": "mllm_except_xattn"}, "vision", CACHED_VISION, id="mllm-except-xattn"),
        pytest.param({"freeze": "vision_tower"}, "vision", CACHED_TOWER, id="vision-tower"),
        pytest.param({"freeze": "unet", **FUSED}, "unet", cached_level_key(1), id="unet-pool"),
        pytest.param(
            {"freeze": "unet", **FUSED, "fusion.levels": "24", "fusion.projection": "patch"},
            "unet",
            cached_level_key(2),
            id="unet-patch",
        ),
    ],
)
def test_reuse_gives_the_pixel_paths_losses_and_logits(
    flat: dict[str, Any], label: str, key: str, data: tuple[Cache, Any], tmp_path: Path
) -> None:
    cache, tokenizer = data
    pixels = _trial(flat, cache, tokenizer, None)
    reused = _trial(flat, cache, tokenizer, tmp_path)
    assert reused[0] == label and pixels[0] == "none"
    assert key in reused[3] and key not in pixels[3]
    assert ("pixel_values" in reused[3]) == (label != "vision")  # the cached path really ran
    assert ("unet_pixels" in reused[3]) == (label != "unet")
    assert reused[1] == pixels[1]  # bit for bit, in fp32 on the CPU
    assert torch.equal(reused[2], pixels[2])
    again = _trial(flat, cache, tokenizer, tmp_path)  # a second trial: a hit, same numbers
    assert again[1] == pixels[1] and len(list(tmp_path.iterdir())) == 1


def test_examples_without_an_image_use_the_placeholder_row(data: tuple[Cache, Any], tmp_path: Path) -> None:
    cache, tokenizer = data
    flat = {"freeze": "mllm"}
    pixels = _trial(flat, cache, tokenizer, None, image="off")
    reused = _trial(flat, cache, tokenizer, tmp_path, image="off")
    assert reused[0] == "vision" and reused[1] == pixels[1] and torch.equal(reused[2], pixels[2])


@pytest.mark.parametrize(
    ("flat", "plan"),
    [
        ({"freeze": "none"}, ReusePlan(None, False)),
        ({"freeze": "unet", **FUSED}, ReusePlan(None, True)),
        (
            {"freeze": "unet", **FUSED, "film.placement": "enc"},
            ReusePlan(None, False),
        ),  # FiLM: text-dependent
        ({"freeze": "mllm", **FUSED}, ReusePlan("projected", False)),  # the U-Net trains
        ({"freeze": "mllm_except_xattn"}, ReusePlan("projected", False)),
        ({"freeze": "vision_tower"}, ReusePlan("tower", False)),
        ({"freeze": "lora"}, ReusePlan("projected", False)),
        (
            {"fusion.levels": "none", "fusion.injection": "none", "film.placement": "none"},
            ReusePlan(None, False),
        ),
    ],
)
def test_the_plan_follows_the_freeze_strategy(
    flat: dict[str, Any], plan: ReusePlan, data: tuple[Cache, Any]
) -> None:
    cache, tokenizer = data
    assert reuse_plan(_model(TrialConfig.from_flat(flat), cache, tokenizer)) == plan


def test_a_frozen_module_with_dropout_is_not_reused(data: tuple[Cache, Any]) -> None:
    cache, tokenizer = data
    model = _model(TrialConfig.from_flat({"freeze": "mllm"}), cache, tokenizer)
    model.mllama.model.vision_model.layernorm_post = nn.Sequential(
        model.mllama.model.vision_model.layernorm_post, nn.Dropout(0.1)
    )
    assert reuse_plan(model).vision is None


def test_augmentation_disables_reuse_for_training_batches(data: tuple[Cache, Any], tmp_path: Path) -> None:
    cache, tokenizer = data
    cfg = TrialConfig.from_flat({"freeze": "mllm", "data.augment": True})
    collate = _collators(cfg, tokenizer)
    model = _model(cfg, cache, tokenizer)
    label = attach_features(model, collate, cache, tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    assert label == "vision@eval"
    assert collate[True].features is None and collate[False].features is not None
    item = FundusDataset(cache, [0])[0]
    assert "pixel_values" in collate[True]([item]) and CACHED_VISION in collate[False]([item])
    with pytest.raises(ValueError, match="augment"):
        collate[True].use_features(collate[False].features)


def test_the_switch_turns_reuse_off(
    data: tuple[Cache, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, tokenizer = data
    monkeypatch.setenv(ENV_SWITCH, "0")
    cfg = TrialConfig.from_flat({"freeze": "mllm", "data.augment": False})
    collate = _collators(cfg, tokenizer)
    root = tmp_path / "features"
    label = attach_features(
        _model(cfg, cache, tokenizer), collate, cache, root, device=torch.device("cpu"), dtype=torch.float32
    )
    assert label == "none" and collate[False].features is None and not root.exists()


def test_a_change_of_weights_preprocessing_or_image_misses(data: tuple[Cache, Any], tmp_path: Path) -> None:
    cache, tokenizer = data
    root = tmp_path / "features"

    def build(
        model_cache: Cache, *, perturb: bool = False, flat: dict[str, Any] | None = None
    ) -> features.FeatureArrays:
        cfg = TrialConfig.from_flat({"freeze": "mllm", "data.augment": False, **(flat or {})})
        model = _model(cfg, cache, tokenizer)
        if perturb:  # other weights (a random-init preset's weights follow the trial seed)
            with torch.no_grad():
                model.mllama.model.vision_model.class_embedding.add_(1e-3)
        collate = _collators(cfg, tokenizer)
        attach_features(model, collate, model_cache, root, device=torch.device("cpu"), dtype=torch.float32)
        source = collate[False].features
        assert isinstance(source, features.ReusedFeatures) and source.vision is not None
        return source.vision

    first = build(cache)
    assert build(cache).path == first.path  # same inputs: a hit
    other_weights = build(cache, perturb=True)
    other_tiles = build(cache, flat={"data.vision_tiles": 4})
    changed = tmp_path / "changed-cache"
    shutil.copytree(cache.path, changed)
    (changed / "images.sha256").unlink(missing_ok=True)
    pixels = np.load(changed / "images.npy", mmap_mode="r+")
    pixels[3, 10, 10, 0] ^= 1  # one bit of one pixel of one image
    pixels.flush()
    other_image = build(open_cache(changed))
    paths = {first.path, other_weights.path, other_tiles.path, other_image.path}
    assert len(paths) == 4 and sorted(p.name for p in root.iterdir()) == sorted(p.name for p in paths)
    key = CACHED_VISION
    assert not np.array_equal(first.arrays[key][3], other_image.arrays[key][3])
    assert np.array_equal(first.arrays[key][4], other_image.arrays[key][4])  # only that image's row moved
    assert not np.array_equal(first.arrays[key][0], other_weights.arrays[key][0])


def test_two_concurrent_builders_leave_one_cache(
    data: tuple[Cache, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both find no cache and build; both reach the commit before either commits; one wins."""
    cache, tokenizer = data
    both_built = threading.Barrier(2, timeout=120)
    real_commit = features.commit_dir
    won: list[bool] = []

    def commit_after_the_other_built(tmp: Path, final: Path) -> bool:
        both_built.wait()
        won.append(real_commit(tmp, final))
        return won[-1]

    monkeypatch.setattr(features, "commit_dir", commit_after_the_other_built)
    results: list[features.FeatureArrays] = []
    errors: list[BaseException] = []

    cfg = TrialConfig.from_flat({"freeze": "mllm", "data.augment": False})
    trials = [(_model(cfg, cache, tokenizer), _collators(cfg, tokenizer)) for _ in range(2)]  # same seed

    def builder(model: MDFModel, collate: dict[bool, Collator]) -> None:
        try:
            attach_features(model, collate, cache, tmp_path, device=torch.device("cpu"), dtype=torch.float32)
            source = collate[False].features
            assert isinstance(source, features.ReusedFeatures) and source.vision is not None
            results.append(source.vision)
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=builder, args=trial) for trial in trials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(won) == [False, True]
    assert len(list(tmp_path.iterdir())) == 1  # one cache, no temporary directory left behind
    assert results[0].path == results[1].path
    assert np.array_equal(results[0].arrays[CACHED_VISION], results[1].arrays[CACHED_VISION])


ZERO3 = textwrap.dedent(
    """
    import os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    from pathlib import Path
    import deepspeed, numpy as np, torch
    from mdf_search.config import TrialConfig
    from mdf_search.data.batches import Collator, FundusDataset, prompt_text
    from mdf_search.data.cache import cache_size_for, ensure_cache
    from mdf_search.data.synthetic import build_manifest, generate
    from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
    from mdf_search.model.mllama import IMAGE, build_mllama, train_tokenizer
    from mdf_search.model.presets import get_preset
    from mdf_search.train.deepspeed import build_ds_config, initialize, zero3_construction
    from mdf_search.train.features import attach_features

    deepspeed.init_distributed(dist_backend="gloo")
    root, tiny = Path(sys.argv[2]), get_preset("tiny")
    generate(root / "synth", images=12, size=128, seed=5)
    cache = ensure_cache(build_manifest(root / "synth"), root / "cache", cache_size_for(128, 64))
    tok = train_tokenizer([prompt_text(t or "") for t in cache.index.column("clinical_text").to_pylist()], 512)
    cfg = TrialConfig.from_flat({"model.preset": "tiny", "run.workers": 1, "optim.epochs": 1, "freeze": "mllm",
                                 "fusion.levels": "1234", "film.placement": "enc", "data.augment": False})

    def run(reuse):
        ds = build_ds_config(cfg, world_size=1, steps_per_epoch=3, on_gpu=False)
        torch.manual_seed(0)
        with zero3_construction(ds):
            mllama = build_mllama(tiny, gate_init=0.5, image_token_index=tok.convert_tokens_to_ids(IMAGE))
            model = MDFModel(mllama, cfg.arch, task_classes("disease", cache.label_space.diseases))
        engine, _, _ = initialize(model, cfg, ds)
        collate = {t: Collator(tok, tiny.vision, 128, 32, augment=False) for t in (True, False)}
        label = "none"
        if reuse:
            label = attach_features(engine.module, collate, cache, root / "features", device=engine.device,
                                    dtype=torch.float32)
        data = FundusDataset(cache, np.arange(12))
        losses = []
        for step in range(3):
            batch = collate[True]([data[i] for i in range(3 * step, 3 * step + 3)])
            loss, _ = mdf_loss(engine(batch), batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        return label, losses

    pixels, reused = run(False), run(True)
    print("runs", pixels, reused)
    assert reused[0] == "vision" and pixels[1] == reused[1], (pixels, reused)
    """
)


def test_zero3_gathers_the_partitioned_tower_and_matches_the_pixel_path(tmp_path: Path) -> None:
    """Under ZeRO-3 (one DeepSpeed process on gloo, in a subprocess) the tower's partitioned weights are
    gathered for hashing and building; the losses equal the pixel path's."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "OMP_NUM_THREADS": "1"}
    env.pop(ENV_SWITCH, None)
    port = str(29300 + os.getpid() % 300)
    done = subprocess.run(
        [sys.executable, "-c", ZERO3, port, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "runs" in done.stdout
