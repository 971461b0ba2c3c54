"""Collate: exact shapes and dtypes, Mllama conventions, augmentation only in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mdf_search.data.batches import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, Collator, FundusDataset, prompt_text
from mdf_search.data.cache import Cache, ensure_cache

B, T, HV, HU = 4, 24, 32, 64


@pytest.fixture(scope="module")
def cache(synth_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return ensure_cache(synth_study / "manifest.parquet", tmp_path_factory.mktemp("cache"), 64)


def _batch(
    cache: Cache, tokenizer: Any, rows: list[int], augment: bool = False, drop: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    dataset = FundusDataset(cache, rows, drop_images=drop)
    return Collator(tokenizer, HV, HU, T, augment=augment, seed=seed)(
        [dataset[i] for i in range(len(dataset))]
    )


def test_prompt_starts_with_image_token() -> None:
    assert prompt_text("Night blindness.").startswith(IMAGE_TOKEN + " Clinical history: Night blindness.")
    assert "Clinical history" not in prompt_text("  ")


def test_shapes_and_dtypes(cache: Cache, tokenizer: Any) -> None:
    text_rows = [i for i, t in enumerate(cache.index.column("clinical_text").to_pylist()) if t]
    rows = [0, 1, text_rows[0], text_rows[1]]
    batch = _batch(cache, tokenizer, rows)
    expected = {
        "input_ids": ((B, T), torch.long),
        "attention_mask": ((B, T), torch.long),
        "pixel_values": ((B, 1, 1, 3, HV, HV), torch.float32),
        "aspect_ratio_ids": ((B, 1), torch.long),
        "aspect_ratio_mask": ((B, 1, 1), torch.long),
        "cross_attention_mask": ((B, T, 1, 1), torch.long),
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
    assert (batch["aspect_ratio_ids"] == 1).all() and (batch["aspect_ratio_mask"] == 1).all()
    assert batch["unet_pixels"].min() >= 0 and batch["unet_pixels"].max() <= 1
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (batch["input_ids"][:, 0] == image_id).all()
    assert (batch["cross_attention_mask"] == 1).all()  # image token first: every position attends to it
    lengths = batch["attention_mask"].sum(1)
    assert lengths[2] > lengths[0]  # clinical text makes the prompt longer; right padding
    assert (batch["input_ids"][0, lengths[0] :] == tokenizer.pad_token_id).all()
    space = cache.label_space
    labels = cache.index.column("label").to_pylist()
    assert batch["labels_disease"].tolist() == [space.disease_index(labels[r]) for r in rows]
    assert batch["labels_type"].tolist() == [space.type_index(labels[r]) for r in rows]
    # The vision input is the normalised image: undo the normalisation and compare with the U-Net input.
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    restored = batch["pixel_values"][0, 0, 0] * std + mean
    expected_small = torch.nn.functional.interpolate(
        batch["unet_pixels"][:1], size=(HV, HV), mode="bilinear", antialias=True
    )[0]
    assert torch.allclose(restored, expected_small, atol=0.02)


def test_cross_attention_mask_starts_at_the_image_token(cache: Cache, tokenizer: Any) -> None:
    class WithBos:
        """The real tokenizer behind a BOS token, as LLaMA's adds one."""

        padding_side = "right"

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.pad_token_id = inner.pad_token_id

        def convert_tokens_to_ids(self, token: str) -> int:
            return int(self.inner.convert_tokens_to_ids(token))

        def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
            return self.inner(["[UNK] " + t for t in texts], **kwargs)

    dataset = FundusDataset(cache, [0, 1])
    batch = Collator(WithBos(tokenizer), HV, HU, T, augment=False)([dataset[0], dataset[1]])
    assert (
        batch["cross_attention_mask"][:, 0].sum() == 0 and (batch["cross_attention_mask"][:, 1:] == 1).all()
    )


def test_text_only_examples_get_placeholder_and_zero_mask(cache: Cache, tokenizer: Any) -> None:
    batch = _batch(cache, tokenizer, [0, 1, 2, 3], drop=True)
    assert not batch["has_image"].any() and not batch["has_mask"].any()
    assert (batch["pixel_values"] == 0).all() and (batch["unet_pixels"] == 0).all()
    assert (batch["cross_attention_mask"] == 0).all() and (batch["vessel_mask"] == 0).all()
    assert batch["pixel_values"].shape == (4, 1, 1, 3, HV, HV)


def test_augmentation_only_in_training_and_deterministic(cache: Cache, tokenizer: Any) -> None:
    rows = [0, 1, 2, 3]
    plain = _batch(cache, tokenizer, rows)
    again = _batch(cache, tokenizer, rows)
    assert torch.equal(plain["unet_pixels"], again["unet_pixels"])
    aug1 = _batch(cache, tokenizer, rows, augment=True, seed=5)
    aug2 = _batch(cache, tokenizer, rows, augment=True, seed=5)
    aug3 = _batch(cache, tokenizer, rows, augment=True, seed=6)
    assert torch.equal(aug1["unet_pixels"], aug2["unet_pixels"])
    assert not torch.equal(aug1["unet_pixels"], plain["unet_pixels"])
    assert not torch.equal(aug1["unet_pixels"], aug3["unet_pixels"])
    # Same example, different batch composition: identical augmentation.
    alone = _batch(cache, tokenizer, [2], augment=True, seed=5)
    assert torch.equal(alone["unet_pixels"][0], aug1["unet_pixels"][2])


def test_geometric_transform_is_shared_by_image_and_mask(cache: Cache, tokenizer: Any) -> None:
    from mdf_search.data.batches import Augment

    flip_only = Augment(hflip=1.0, max_rotation_deg=0.0, brightness=0, contrast=0, saturation=0)
    dataset = FundusDataset(cache, [0])
    plain = Collator(tokenizer, HV, HU, T, augment=False)([dataset[0]])
    flipped = Collator(tokenizer, HV, HU, T, augment=True, augment_config=flip_only)([dataset[0]])
    for key in ("unet_pixels", "vessel_mask"):
        assert torch.allclose(flipped[key], plain[key].flip(-1), atol=1e-5), key


def test_tokenizer_checks(tokenizer: Any) -> None:
    class Left:
        padding_side = "left"

    with pytest.raises(ValueError, match="pad on the right"):
        Collator(Left(), HV, HU, T, augment=False)
