"""Batches for the MDF model: a torch Dataset over the cache and a collate function that builds Mllama inputs.

The collate function is where the two image paths part: the U-Net gets the cached image at its own,
higher resolution in [0, 1]; the vision tower gets the same (augmented) image resized to its tile size
and normalised with CLIP statistics, in Mllama's tile layout ``(B, images=1, tiles=1, 3, H, W)``.

Text-only examples (``FundusDataset(..., drop_images=True)``, e.g. a text-only baseline) still carry a
placeholder all-zero image with an all-zero cross-attention mask: under DeepSpeed every rank must run
the same modules each step, and a rank that skipped the cross-attention layers would hang the others.

Augmentation is deterministic per (seed, epoch, example index), independent of batch composition and of
DataLoader workers, so a resumed or re-run trial sees the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mdf_search.data.cache import Cache

IMAGE_TOKEN = "<|image|>"
QUESTION = "Question: which retinal disease does this fundus image show? Answer:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def prompt_text(clinical_text: str) -> str:
    """The prompt: the image token first (Mllama attends to the image from there on), history, question."""
    history = f" Clinical history: {clinical_text.strip()}" if clinical_text and clinical_text.strip() else ""
    return f"{IMAGE_TOKEN}{history} {QUESTION}"


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation strengths (ASSUMPTION: mild; fundus orientation carries little label)."""

    hflip: float = 0.5  # probability
    max_rotation_deg: float = 10.0
    brightness: float = 0.1  # factor drawn from [1 - x, 1 + x]
    contrast: float = 0.1
    saturation: float = 0.1


class FundusDataset(Dataset[dict[str, Any]]):
    """Rows of a cache (manifest row indices, e.g. ``split.rows("train")``): views, no copies, no PNGs."""

    def __init__(self, cache: Cache, rows: Sequence[int] | np.ndarray, *, drop_images: bool = False) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= len(cache)):
            raise IndexError(
                f"rows must be in [0, {len(cache)}), but got [{self.rows.min()}, {self.rows.max()}]"
            )
        self.drop_images = drop_images
        index = cache.index
        self._text = index.column("clinical_text").to_pylist()
        self._disease = index.column("disease_index").to_pylist()
        self._type = index.column("type_index").to_pylist()
        self._has_mask = index.column("has_mask").to_pylist()

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        return {
            "index": row,
            "image": None if self.drop_images else self.cache.images[row],
            "mask": self.cache.masks[row],
            "has_mask": bool(self._has_mask[row]) and not self.drop_images,
            "text": self._text[row],
            "disease": int(self._disease[row]),
            "type": int(self._type[row]),
        }


def _affine(gen: torch.Generator, cfg: Augment) -> torch.Tensor:
    """A 2x3 matrix for ``affine_grid``: optional horizontal flip and a small rotation."""
    flip = -1.0 if torch.rand((), generator=gen).item() < cfg.hflip else 1.0
    angle = math.radians((torch.rand((), generator=gen).item() * 2 - 1) * cfg.max_rotation_deg)
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c * flip, -s, 0.0], [s * flip, c, 0.0]], dtype=torch.float32)


def _jitter(img: torch.Tensor, gen: torch.Generator, cfg: Augment) -> torch.Tensor:
    """Brightness, contrast, saturation on one (3, H, W) image in [0, 1]."""

    def factor(x: float) -> float:
        return 1.0 + (torch.rand((), generator=gen).item() * 2 - 1) * x

    img = img * factor(cfg.brightness)
    mean = img.mean()
    img = (img - mean) * factor(cfg.contrast) + mean
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
    img = (img - grey) * factor(cfg.saturation) + grey
    return img.clamp(0.0, 1.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Collator:
    """Items from :class:`FundusDataset` → the dict of tensors the model takes.

    ``tokenizer`` is a HF ``PreTrainedTokenizerFast``-compatible callable that knows ``<|image|>`` and pads
    on the right.
    """

    def __init__(
        self,
        tokenizer: Any,
        vision_size: int,
        unet_size: int,
        max_text_tokens: int,
        augment: bool,
        seed: int = 0,
        augment_config: Augment | None = None,
    ) -> None:
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ValueError(
                f"the tokenizer must pad on the right, but padding_side={tokenizer.padding_side!r}; "
                "set tokenizer.padding_side = 'right'"
            )
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_id is None or image_id == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(
                f"the tokenizer has no {IMAGE_TOKEN!r} token; add it with "
                f"additional_special_tokens=[{IMAGE_TOKEN!r}]"
            )
        self.tokenizer = tokenizer
        self.image_token_id = int(image_id)
        self.vision_size = vision_size
        self.unet_size = unet_size
        self.max_text_tokens = max_text_tokens
        self.augment = augment
        self.seed = seed
        self.augment_config = augment_config or Augment()
        self.epoch = 0
        self._mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of each epoch so augmentation differs between epochs but not between runs."""
        self.epoch = epoch

    def _pixels(self, items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) image and (B, 1, S, S) mask in [0, 1] at cache size, augmented in training."""
        size = next((it["mask"].shape[-1] for it in items), self.unet_size)
        images = torch.zeros(len(items), 3, size, size)
        masks = torch.zeros(len(items), 1, size, size)
        for b, it in enumerate(items):
            if it["image"] is not None:
                images[b] = torch.from_numpy(np.array(it["image"])).permute(2, 0, 1).float().div_(255.0)
            if it["has_mask"]:
                masks[b, 0] = torch.from_numpy(np.array(it["mask"])).float().div_(255.0)
        if not self.augment:
            return images, masks
        cfg = self.augment_config
        thetas = []
        for b, it in enumerate(items):
            state = np.random.SeedSequence([self.seed, self.epoch, int(it["index"])]).generate_state(1)[0]
            gen = torch.Generator().manual_seed(int(state))
            thetas.append(_affine(gen, cfg))
            if it["image"] is not None:
                images[b] = _jitter(images[b], gen, cfg)
        grid = F.affine_grid(torch.stack(thetas), [len(items), 4, size, size], align_corners=False)
        # One warp for image and mask together: the geometric transform is identical by construction.
        warped = F.grid_sample(
            torch.cat([images, masks], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return warped[:, :3], warped[:, 3:]

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = len(items)
        has_image = torch.tensor([it["image"] is not None for it in items], dtype=torch.bool)
        images, masks = self._pixels(items)
        vision = (_resize(images, self.vision_size) - self._mean) / self._std
        vision = vision * has_image.view(-1, 1, 1, 1)  # placeholder: exact zeros for text-only examples
        tokens = self.tokenizer(
            [prompt_text(it["text"]) for it in items],
            padding="max_length",
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].long()
        is_image = input_ids == self.image_token_id
        first = torch.where(
            is_image.any(1), is_image.float().argmax(1), torch.full((batch,), input_ids.shape[1])
        )
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        xattn = (positions >= first.unsqueeze(1)) & has_image.unsqueeze(1)
        return {
            "input_ids": input_ids,
            "attention_mask": tokens["attention_mask"].long(),
            "pixel_values": vision.reshape(batch, 1, 1, 3, self.vision_size, self.vision_size).contiguous(),
            "aspect_ratio_ids": torch.ones(batch, 1, dtype=torch.long),
            "aspect_ratio_mask": torch.ones(batch, 1, 1, dtype=torch.long),
            "cross_attention_mask": xattn.long().view(batch, -1, 1, 1),
            "unet_pixels": _resize(images, self.unet_size).clamp_(0.0, 1.0).contiguous(),
            "vessel_mask": _resize(masks, self.unet_size).clamp_(0.0, 1.0).contiguous(),
            "has_mask": torch.tensor([bool(it["has_mask"]) for it in items], dtype=torch.bool),
            "labels_disease": torch.tensor([it["disease"] for it in items], dtype=torch.long),
            "labels_type": torch.tensor([it["type"] for it in items], dtype=torch.long),
            "has_image": has_image,
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        }
