"""Collate: exact shapes and dtypes, Mllama's layout (checked against transformers' own processor),
modality switches, augmentation only in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import MllamaImageProcessorPil, MllamaProcessor
from transformers.models.mllama.processing_mllama import (
    build_string_from_input,
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from mdf_search.data.batches import (
    BOS_TOKEN,
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_TOKEN,
    Augment,
    Collator,
    FundusDataset,
    prompt_text,
)
from mdf_search.data.cache import Cache, cache_size_for, ensure_cache
from mdf_search.model.mllama import train_tokenizer
from mdf_search.model.presets import get_preset

B, T, HV, HU, CACHE = 4, 32, 32, 64, 64


def vision(tile: int = HV, **extra: Any) -> dict[str, Any]:
    """The tiny preset's vision config at another tile size (max_num_tiles=4, Mllama's default ratios)."""
    return {**get_preset("tiny").vision, "image_size": tile, **extra}


@pytest.fixture(scope="module")
def cache(synth_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return ensure_cache(synth_study / "manifest.parquet", tmp_path_factory.mktemp("cache"), CACHE)


@pytest.fixture(scope="module")
def bpe(cache: Cache) -> Any:
    """The project's own tokenizer (byte-level BPE, adds a BOS), trained on this study's prompts."""
    texts = cache.index.column("clinical_text").to_pylist()
    return train_tokenizer([prompt_text(t or "") for t in texts], vocab_size=512)


def text_rows(cache: Cache) -> list[int]:
    return [i for i, t in enumerate(cache.index.column("clinical_text").to_pylist()) if t]


def collate(
    cache: Cache, tokenizer: Any, rows: list[int], *, tile: int = HV, vision_tiles: int = 1, **dataset: Any
) -> dict[str, torch.Tensor]:
    data = FundusDataset(cache, rows, **dataset)
    collator = Collator(tokenizer, vision(tile), HU, T, augment=False, vision_tiles=vision_tiles)
    return collator([data[i] for i in range(len(data))])


def test_prompt_is_written_as_mllama_processor_writes_it() -> None:
    prompt = prompt_text("Night blindness.")
    assert prompt.startswith(IMAGE_TOKEN + BOS_TOKEN + "Clinical history: Night blindness. Question:")
    user = prompt.replace(BOS_TOKEN, "")
    assert build_string_from_input(user, BOS_TOKEN, IMAGE_TOKEN) == prompt
    assert "Clinical history" not in prompt_text("  ")
    # A clinical text cannot add an image or a BOS.
    assert prompt_text(f"x {IMAGE_TOKEN}{BOS_TOKEN}y").count(IMAGE_TOKEN) == 1


def test_shapes_and_dtypes(cache: Cache, bpe: Any) -> None:
    rows = [0, 1, text_rows(cache)[0], text_rows(cache)[1]]
    batch = collate(cache, bpe, rows)
    expected = {
        "input_ids": ((B, T), torch.long),
        "attention_mask": ((B, T), torch.long),
        "pixel_values": ((B, 1, 4, 3, HV, HV), torch.float32),
        "aspect_ratio_ids": ((B, 1), torch.long),
        "aspect_ratio_mask": ((B, 1, 4), torch.long),
        "cross_attention_mask": ((B, T, 1, 4), torch.long),
        "unet_pixels": ((B, 3, HU, HU), torch.float32),
        "vessel_mask": ((B, 1, HU, HU), torch.float32),
        "has_mask": ((B,), torch.bool),
        "labels_disease": ((B,), torch.long),
        "labels_type": ((B,), torch.long),
        "has_image": ((B,), torch.bool),
        "index": ((B,), torch.long),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["index"].tolist() == rows
    assert (batch["aspect_ratio_ids"] == 1).all()
    assert batch["aspect_ratio_mask"].tolist() == [[[1, 0, 0, 0]]] * B
    assert (batch["pixel_values"][:, :, 1:] == 0).all()  # padding tiles
    bos, image = bpe.convert_tokens_to_ids([BOS_TOKEN, IMAGE_TOKEN])
    assert (batch["input_ids"][:, :3] == torch.tensor([bos, image, bos])).all()
    xattn = batch["cross_attention_mask"]
    assert (xattn[:, 0] == 0).all() and (xattn[:, 1:, 0, 0] == 1).all() and (xattn[..., 1:] == 0).all()
    lengths = batch["attention_mask"].sum(1)
    assert lengths[2] > lengths[0]  # clinical text makes the prompt longer; right padding
    assert (batch["input_ids"][0, lengths[0] :] == bpe.pad_token_id).all()
    space = cache.label_space
    labels = cache.index.column("label").to_pylist()
    assert batch["labels_disease"].tolist() == [space.disease_index(labels[r]) for r in rows]
    assert batch["labels_type"].tolist() == [space.type_index(labels[r]) for r in rows]
    # The vision input is the normalised image: undo the normalisation and compare with the U-Net input.
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    restored = batch["pixel_values"][0, 0, 0] * std + mean
    small = torch.nn.functional.interpolate(
        batch["unet_pixels"][:1], size=(HV, HV), mode="bilinear", antialias=True
    )
    assert torch.allclose(restored, small[0], atol=0.02)


@pytest.mark.parametrize(("vision_tiles", "tile"), [(1, CACHE), (4, CACHE // 2), (4, 24)])
def test_layout_equals_mllama_processor(cache: Cache, bpe: Any, vision_tiles: int, tile: int) -> None:
    """Every Mllama input equals what ``MllamaProcessor`` (with ``MllamaImageProcessor``) makes of the same
    image and prompt. Where the fundus fills its tiling exactly (cache 64 px: one 64 px tile, or 2x2 tiles
    of 32 px) neither side resamples and the pixels agree to float rounding; where both resize (64 -> 48
    px as 2x2 tiles of 24) the resampling filters differ (torch antialiased bilinear vs PIL bilinear) and
    the pixels agree to a tolerance, the layout and masks still exactly. (For a square image larger than
    one tile the processor always picks 2x2 tiles; it picks one tile only for an image at most a tile.)"""
    rows = [text_rows(cache)[0], 0, 1]
    batch = collate(cache, bpe, rows, tile=tile, vision_tiles=vision_tiles)
    images = [[np.array(cache.images[r])] for r in rows]
    texts = cache.index.column("clinical_text").to_pylist()
    user_prompts = [prompt_text(texts[r] or "").replace(BOS_TOKEN, "") for r in rows]  # the processor adds it
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(
            size={"height": tile, "width": tile}, max_image_tiles=4, image_mean=CLIP_MEAN, image_std=CLIP_STD
        ),
        tokenizer=bpe,
    )
    ref = processor(
        images=images,
        text=user_prompts,
        padding="max_length",
        max_length=T,
        truncation=True,
        return_tensors="pt",
    )
    for key in (
        "input_ids",
        "attention_mask",
        "aspect_ratio_ids",
        "aspect_ratio_mask",
        "cross_attention_mask",
    ):
        assert torch.equal(batch[key], ref[key]), key
    assert batch["aspect_ratio_ids"].flatten().tolist() == [6 if vision_tiles == 4 else 1] * len(rows)
    exact = tile * int(vision_tiles**0.5) == CACHE
    diff = (batch["pixel_values"] - ref["pixel_values"]).abs().max().item()
    assert diff < (1e-5 if exact else 0.03), diff  # measured: 0 exactly, and 0.015 resampled
    # The cross-attention mask, from transformers' own functions on the collator's ids.
    image_id = bpe.convert_tokens_to_ids(IMAGE_TOKEN)
    sparse = [get_cross_attention_token_mask(ids.tolist(), image_id) for ids in batch["input_ids"]]
    dense = convert_sparse_cross_attention_mask_to_dense(sparse, [[vision_tiles]] * len(rows), 4, T)
    assert torch.equal(batch["cross_attention_mask"], torch.from_numpy(dense))


def test_four_tiles_are_the_quadrants_in_row_major_order(cache: Cache, bpe: Any) -> None:
    batch = collate(cache, bpe, [0], tile=CACHE // 2, vision_tiles=4)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    full = (torch.from_numpy(np.array(cache.images[0])).permute(2, 0, 1).float() / 255 - mean) / std
    h = CACHE // 2
    quadrants = [full[:, :h, :h], full[:, :h, h:], full[:, h:, :h], full[:, h:, h:]]
    for k, quadrant in enumerate(quadrants):
        assert torch.allclose(batch["pixel_values"][0, 0, k], quadrant, atol=1e-5), k
    assert batch["aspect_ratio_mask"].tolist() == [[[1, 1, 1, 1]]]


def test_the_11b_vision_config_gets_four_tiles(bpe: Any) -> None:
    item = {
        "index": 0,
        "image": np.zeros((1120, 1120, 3), np.uint8),
        "mask": np.zeros((1120, 1120), np.uint8),
        "has_mask": False,
        "text": "",
        "disease": 0,
        "type": 0,
    }
    assert cache_size_for(560, 560, vision_tiles=4) == 1120  # the cache holds the 2x2 tiling's pixels
    assert cache_size_for(128, 64, vision_tiles=4) == cache_size_for(128, 64) == 128  # tiny: the U-Net's
    for tiles, ratio_id in ((1, 1), (4, 6)):
        batch = Collator(bpe, get_preset("11b").vision, 560, T, augment=False, vision_tiles=tiles)([item])
        assert batch["pixel_values"].shape == (1, 1, 4, 3, 560, 560)
        assert batch["aspect_ratio_ids"].item() == ratio_id
        assert batch["aspect_ratio_mask"].sum().item() == tiles


def test_text_only_examples_get_placeholder_and_zero_mask(cache: Cache, bpe: Any) -> None:
    batch = collate(cache, bpe, [0, 1, 2, 3], drop_images=True)
    assert not batch["has_image"].any() and not batch["has_mask"].any()
    assert (batch["pixel_values"] == 0).all() and (batch["unet_pixels"] == 0).all()
    assert (batch["cross_attention_mask"] == 0).all() and (batch["vessel_mask"] == 0).all()
    # As the processor pads a missing image: aspect-ratio id 0, tile 0 marked valid.
    assert (batch["aspect_ratio_ids"] == 0).all()
    assert batch["aspect_ratio_mask"].tolist() == [[[1, 0, 0, 0]]] * 4


@pytest.mark.parametrize("vision_tiles", [1, 4])
def test_image_off_blanks_only_the_vision_tower(cache: Cache, bpe: Any, vision_tiles: int) -> None:
    rows = [0, 1, 2, 3]
    kwargs = {"tile": CACHE // 2 if vision_tiles == 4 else HV, "vision_tiles": vision_tiles}
    on = collate(cache, bpe, rows, **kwargs)
    off = collate(cache, bpe, rows, image="off", **kwargs)
    assert on["has_image"].all() and not off["has_image"].any()
    assert (off["pixel_values"] == 0).all() and (off["cross_attention_mask"] == 0).all()
    assert on["pixel_values"].abs().sum() > 0
    assert torch.equal(off["unet_pixels"], on["unet_pixels"]) and on["unet_pixels"].abs().sum() > 0
    assert torch.equal(off["vessel_mask"], on["vessel_mask"]) and torch.equal(off["has_mask"], on["has_mask"])
    assert torch.equal(off["input_ids"], on["input_ids"])


def test_text_off_removes_the_history(cache: Cache, bpe: Any) -> None:
    rows = text_rows(cache)[:3]
    data = FundusDataset(cache, rows, text="off")
    assert all(data[i]["text"] == "" for i in range(len(data)))
    on, off = collate(cache, bpe, rows), collate(cache, bpe, rows, text="off")
    assert (off["attention_mask"].sum(1) < on["attention_mask"].sum(1)).all()
    assert torch.equal(off["pixel_values"], on["pixel_values"])


def test_text_shuffled_permutes_across_cases_deterministically(cache: Cache) -> None:
    rows = list(range(len(cache)))
    index = cache.index
    texts = [t or "" for t in index.column("clinical_text").to_pylist()]
    cases = index.column("case_id").to_pylist()

    def shuffled(seed: int) -> list[str]:
        data = FundusDataset(cache, rows, text="shuffled", text_seed=seed)
        return [data[i]["text"] for i in range(len(data))]

    a, b, c = shuffled(1), shuffled(1), shuffled(2)
    assert a == b and a != c and a != texts
    case_text = {case: texts[r] for r, case in reversed(list(enumerate(cases)))}  # first row's text
    assert sorted(case_text.values()) == sorted({case: a[r] for r, case in enumerate(cases)}.values())
    for r, case in enumerate(cases):  # every image of a case gets that case's (new) text
        assert a[r] == a[cases.index(case)]
    # Labels stay with their images; only the texts move.
    data = FundusDataset(cache, rows, text="shuffled", text_seed=1)
    assert [data[i]["disease"] for i in rows] == index.column("disease_index").to_pylist()


def test_modes_are_checked(cache: Cache) -> None:
    with pytest.raises(ValueError, match="text must be one of"):
        FundusDataset(cache, [0], text="shuffle")
    with pytest.raises(ValueError, match="image must be one of"):
        FundusDataset(cache, [0], image="none")


def test_augmentation_only_in_training_and_deterministic(cache: Cache, bpe: Any) -> None:
    rows = [0, 1, 2, 3]
    data = FundusDataset(cache, rows)
    items = [data[i] for i in range(len(data))]

    def run(augment: bool, seed: int = 0, subset: list[int] = rows) -> dict[str, torch.Tensor]:
        return Collator(bpe, vision(), HU, T, augment=augment, seed=seed)([items[i] for i in subset])

    plain, again = run(False), run(False)
    assert torch.equal(plain["unet_pixels"], again["unet_pixels"])
    aug1, aug2, aug3 = run(True, 5), run(True, 5), run(True, 6)
    assert torch.equal(aug1["unet_pixels"], aug2["unet_pixels"])
    assert not torch.equal(aug1["unet_pixels"], plain["unet_pixels"])
    assert not torch.equal(aug1["unet_pixels"], aug3["unet_pixels"])
    # Same example, different batch composition: identical augmentation.
    assert torch.equal(run(True, 5, [2])["unet_pixels"][0], aug1["unet_pixels"][2])


def test_geometric_transform_is_shared_by_image_and_mask(cache: Cache, bpe: Any) -> None:
    flip_only = Augment(hflip=1.0, max_rotation_deg=0.0, brightness=0, contrast=0, saturation=0)
    item = FundusDataset(cache, [0])[0]
    plain = Collator(bpe, vision(), HU, T, augment=False)([item])
    flipped = Collator(bpe, vision(), HU, T, augment=True, augment_config=flip_only)([item])
    for key in ("unet_pixels", "vessel_mask"):
        assert torch.allclose(flipped[key], plain[key].flip(-1), atol=1e-5), key


def test_collator_checks(bpe: Any, tokenizer: Any) -> None:
    class Left:
        padding_side = "left"

    with pytest.raises(ValueError, match="pad on the right"):
        Collator(Left(), vision(), HU, T, augment=False)
    with pytest.raises(ValueError, match=r"no '<\|begin_of_text\|>' token"):
        Collator(tokenizer, vision(), HU, T, augment=False)  # a word-level tokenizer without BOS
    with pytest.raises(TypeError, match=r"vision config \(e\.g\. preset\.vision\)"):
        Collator(bpe, HV, HU, T, augment=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use vision_tiles=1"):
        Collator(bpe, vision(max_num_tiles=1, supported_aspect_ratios=[[1, 1]]), HU, T, False, vision_tiles=4)
