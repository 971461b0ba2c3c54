"""Batches for the MDF model: a torch Dataset over the cache and a collate function that builds Mllama inputs.

The collate function is where the two image paths part: the U-Net gets the cached image at its own,
higher resolution in [0, 1]; the vision tower gets the same (augmented) image normalised with CLIP
statistics, in Mllama's tile layout, exactly as transformers' ``MllamaImageProcessor`` and
``MllamaProcessor`` lay it out (tested against them):

- ``pixel_values`` ``(B, 1, max_num_tiles, 3, S, S)`` for tiles of ``S`` px: ``vision_tiles=1`` puts the
  fundus at tile size in tile 0; ``vision_tiles=4`` resizes it to ``2S`` and splits it 2x2 in row-major
  order (top-left, top-right, bottom-left, bottom-right, as the processor's ``split_to_tiles``). The
  remaining tiles up to the vision config's ``max_num_tiles`` are zeros. The vision tower computes all
  ``max_num_tiles`` tiles whatever ``vision_tiles`` is: padding tiles cost as much as real ones.
- ``aspect_ratio_ids`` ``(B, 1)``: 1 + the index of the tiling ``(rows, columns)`` in the vision config's
  ``supported_aspect_ratios`` (``[1, 1]`` → 1, ``[2, 2]`` → 6 for Mllama's default list); 0 means "no
  image", as the processor pads missing images.
- ``aspect_ratio_mask`` ``(B, 1, max_num_tiles)``: 1 on the image's tiles, 0 on padding tiles (tile 0 is
  always 1, as in the processor).
- ``cross_attention_mask`` ``(B, T, 1, max_num_tiles)``: 1 from the ``<|image|>`` token to the end of the
  sequence on the image's tiles, 0 on padding tiles and before the image token.

The prompt is written as ``MllamaProcessor`` writes a base-model prompt (``build_string_from_input``):
``<|image|><|begin_of_text|>`` then the text. Both the trained tokenizer (``model/mllama.py``) and
LLaMA 3's prepend their own ``<|begin_of_text|>``, so the ids start ``[BOS, IMAGE, BOS, ...]``, the same
ids the processor gives for the 11B.

Examples without an image for the vision tower (``FundusDataset(..., image="off")``, or
``drop_images=True`` for a text-only baseline) still carry a placeholder all-zero image with an all-zero
cross-attention mask: under DeepSpeed every rank must run the same modules each step, and a rank that
skipped the cross-attention layers would hang the others. ``image="off"`` blanks only the vision tower:
the U-Net still gets the fundus.

Augmentation is deterministic per (seed, epoch, example index), independent of batch composition and of
DataLoader workers, so a resumed or re-run trial sees the same pixels.

Frozen-feature reuse (``train/features.py``): a collator given a :class:`FeatureSource` takes the vision
tower's and/or the U-Net's features of each example from it (by manifest row) instead of building the
pixel inputs those modules would compute them from. A collator that augments refuses one: cached
features are those of the unaugmented image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mdf_search.config import IMAGE_MODES, TEXT_MODES
from mdf_search.data.cache import Cache
from mdf_search.model.presets import MAX_NUM_TILES, MLLAMA_ASPECT_RATIOS

IMAGE_TOKEN = "<|image|>"
BOS_TOKEN = "<|begin_of_text|>"
QUESTION = "Question: which retinal disease does this fundus image show? Answer:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")  # special-token spellings never come from the data


def prompt_text(clinical_text: str) -> str:
    """The prompt as ``MllamaProcessor`` writes it: image token, BOS, history, question.

    Mllama attends to the image from the ``<|image|>`` token on. Special-token spellings inside the
    clinical text are removed (a text must not add a second image or a BOS).
    """
    text = _SPECIAL.sub("", clinical_text or "").strip()
    history = f"Clinical history: {text} " if text else ""
    return f"{IMAGE_TOKEN}{BOS_TOKEN}{history}{QUESTION}"


class FeatureSource(Protocol):
    """Precomputed features of a frozen vision tower and/or U-Net (``train/features.py``), by manifest row."""

    @property
    def covers_vision(self) -> bool: ...  # the batch gets the vision features instead of pixel_values

    @property
    def covers_unet(self) -> bool: ...  # the batch gets the U-Net level features instead of unet_pixels

    def rows(
        self, indices: Sequence[int], vision_image: Sequence[bool], unet_image: Sequence[bool]
    ) -> dict[str, torch.Tensor]:
        """Batch tensors for these manifest rows; ``*_image[b]`` False: example ``b`` has no image for
        that module (its placeholder's features)."""
        ...


def unit_images(images: Sequence[np.ndarray | None], size: int) -> torch.Tensor:
    """``(B, 3, size, size)`` float images in [0, 1] from cached uint8 ``(S, S, 3)`` rows; None: zeros."""
    out = torch.zeros(len(images), 3, size, size)
    for b, image in enumerate(images):
        if image is not None:
            out[b] = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
    return out


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation strengths (ASSUMPTION: mild; fundus orientation carries little label)."""

    hflip: float = 0.5  # probability
    max_rotation_deg: float = 10.0
    brightness: float = 0.1  # factor drawn from [1 - x, 1 + x]
    contrast: float = 0.1
    saturation: float = 0.1


class FundusDataset(Dataset[dict[str, Any]]):
    """Rows of a cache (manifest row indices, e.g. ``split.rows("train")``): views, no copies, no PNGs.

    Modality switches (controls; the defaults are the full model):

    - ``text``: ``"on"``; ``"off"`` drops the clinical history from every prompt; ``"shuffled"`` permutes
      the clinical texts across the *cases* of this dataset's rows with ``text_seed``: every image of
      case ``c`` gets the text of case ``perm(c)`` (the text of that case's first row here; empty texts
      move too), so the text distribution is kept and its link to the label is broken. Deterministic for
      the same rows and seed (the caller picks which splits to shuffle and the seed).
    - ``image``: ``"on"``; ``"off"`` blanks the image for the vision tower only (a zero placeholder with
      a zero cross-attention mask); the U-Net and the vessel mask still get the fundus.
    - ``drop_images``: no image anywhere (neither tower; no vessel mask): a text-only example.
    """

    def __init__(
        self,
        cache: Cache,
        rows: Sequence[int] | np.ndarray,
        *,
        text: str = "on",
        image: str = "on",
        text_seed: int = 0,
        drop_images: bool = False,
    ) -> None:
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {list(TEXT_MODES)}, but got {text!r}")
        if image not in IMAGE_MODES:
            raise ValueError(f"image must be one of {list(IMAGE_MODES)}, but got {image!r}")
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= len(cache)):
            raise IndexError(
                f"rows must be in [0, {len(cache)}), but got [{self.rows.min()}, {self.rows.max()}]"
            )
        self.text, self.image, self.drop_images = text, image, drop_images
        index = cache.index
        texts = [t or "" for t in index.column("clinical_text").to_pylist()]
        if text == "off":
            self._texts = [""] * len(self.rows)
        elif text == "shuffled":
            self._texts = _shuffle_by_case(
                [texts[r] for r in self.rows], index.column("case_id").to_pylist(), self.rows, text_seed
            )
        else:
            self._texts = [texts[r] for r in self.rows]
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
            "vision": not self.drop_images and self.image == "on",  # the vision tower sees the image
            "mask": self.cache.masks[row],
            "has_mask": bool(self._has_mask[row]) and not self.drop_images,
            "text": self._texts[i],
            "disease": int(self._disease[row]),
            "type": int(self._type[row]),
        }


def _shuffle_by_case(texts: list[str], case_ids: list[str], rows: np.ndarray, seed: int) -> list[str]:
    """Each row gets the text of another case (a seeded permutation of the cases in ``rows``' order)."""
    cases = list(dict.fromkeys(case_ids[r] for r in rows))
    first: dict[str, str] = {}
    for r, t in zip(rows, texts, strict=True):
        first.setdefault(case_ids[r], t)
    perm = np.random.default_rng(seed).permutation(len(cases))
    source = {case: cases[int(j)] for case, j in zip(cases, perm, strict=True)}
    return [first[source[case_ids[r]]] for r in rows]


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


@dataclass(frozen=True)
class TileLayout:
    """Mllama's tiling of the vision input, read from a vision config (a preset's ``vision`` dict)."""

    tile_size: int
    max_num_tiles: int
    aspect_ratios: tuple[tuple[int, int], ...]  # supported (rows, columns) tilings; id = index + 1

    @classmethod
    def from_vision_config(cls, vision: Mapping[str, Any]) -> TileLayout:
        """As ``MllamaVisionConfig`` reads it: ``max_num_tiles`` defaults to 4 and ``supported_aspect_ratios``
        to Mllama's default list."""
        ratios = vision.get("supported_aspect_ratios")
        return cls(
            tile_size=int(vision["image_size"]),
            max_num_tiles=int(vision.get("max_num_tiles", MAX_NUM_TILES)),
            aspect_ratios=tuple((int(h), int(w)) for h, w in ratios) if ratios else MLLAMA_ASPECT_RATIOS,
        )

    def grid(self, tiles: int) -> tuple[int, int]:
        """The square tiling of ``tiles`` tiles (1 → 1x1, 4 → 2x2), checked against the config."""
        side = math.isqrt(tiles)
        if side * side != tiles or tiles > self.max_num_tiles or (side, side) not in self.aspect_ratios:
            raise ValueError(
                f"vision_tiles={tiles} needs a square tiling [{side}, {side}] among the vision config's "
                f"supported_aspect_ratios {[list(r) for r in self.aspect_ratios]} and "
                f"max_num_tiles={self.max_num_tiles} >= {tiles}; use vision_tiles=1"
            )
        return side, side

    def aspect_ratio_id(self, grid: tuple[int, int]) -> int:
        return self.aspect_ratios.index(grid) + 1

    def tile(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, 3, rows * S, cols * S)`` → ``(B, 1, max_num_tiles, 3, S, S)``, tiles in row-major order,
        padding tiles zero."""
        b, c, _, _ = images.shape
        rows, cols, s = grid[0], grid[1], self.tile_size
        tiles = (
            images.reshape(b, c, rows, s, cols, s).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c, s, s)
        )
        return F.pad(tiles, (0, 0, 0, 0, 0, 0, 0, self.max_num_tiles - rows * cols)).unsqueeze(1)


class Collator:
    """Items from :class:`FundusDataset` → the dict of tensors the model takes.

    ``tokenizer`` is a HF ``PreTrainedTokenizerFast``-compatible callable that knows ``<|image|>`` and
    ``<|begin_of_text|>`` and pads on the right. ``vision`` is the backbone's vision config (a preset's
    ``vision`` dict): its ``image_size``, ``max_num_tiles`` and ``supported_aspect_ratios`` decide the
    layout. ``vision_tiles`` (1 or 4) is how many tiles the fundus fills (``data.vision_tiles``).
    """

    def __init__(
        self,
        tokenizer: Any,
        vision: Mapping[str, Any],
        unet_size: int,
        max_text_tokens: int,
        augment: bool,
        seed: int = 0,
        augment_config: Augment | None = None,
        *,
        vision_tiles: int = 1,
    ) -> None:
        if not isinstance(vision, Mapping):
            raise TypeError(
                f"Collator takes the vision config (e.g. preset.vision), not {type(vision).__name__} "
                f"{vision!r}: the tile layout needs its image_size, max_num_tiles and supported_aspect_ratios"
            )
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ValueError(
                f"the tokenizer must pad on the right, but padding_side={tokenizer.padding_side!r}; "
                "set tokenizer.padding_side = 'right'"
            )
        for token in (IMAGE_TOKEN, BOS_TOKEN):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
                raise ValueError(
                    f"the tokenizer has no {token!r} token; add it with additional_special_tokens=[{token!r}]"
                )
        self.tokenizer = tokenizer
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.layout = TileLayout.from_vision_config(vision)
        self.grid = self.layout.grid(vision_tiles)
        self.vision_tiles = vision_tiles
        self.unet_size = unet_size
        self.max_text_tokens = max_text_tokens
        self.augment = augment
        self.seed = seed
        self.augment_config = augment_config or Augment()
        self.epoch = 0
        self.features: FeatureSource | None = None
        self._mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    @property
    def vision_size(self) -> int:
        """Side of the vision tower's input image before tiling: ``tiles per side x tile size``."""
        return self.grid[0] * self.layout.tile_size

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of each epoch so augmentation differs between epochs but not between runs."""
        self.epoch = epoch

    def use_features(self, features: FeatureSource | None) -> None:
        """Take the covered modules' inputs from ``features`` (None: back to pixels). Refused when this
        collator augments: the cached features are those of the unaugmented image, and augmentation
        changes the pixels every epoch."""
        if features is not None and self.augment:
            raise ValueError(
                "an augmenting collator cannot use precomputed features (augmentation changes the pixels "
                "every epoch); attach them to collators with augment=False"
            )
        self.features = features

    def _pixels(self, items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) image and (B, 1, S, S) mask in [0, 1] at cache size, augmented in training."""
        size = next((it["mask"].shape[-1] for it in items), self.unet_size)
        images = unit_images([it["image"] for it in items], size)
        masks = torch.zeros(len(items), 1, size, size)
        for b, it in enumerate(items):
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

    def vision_inputs(self, images: torch.Tensor, has_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pixel_values``, ``aspect_ratio_ids`` and ``aspect_ratio_mask`` from images in [0, 1] at any size."""
        batch, layout = images.shape[0], self.layout
        vision = (_resize(images, self.vision_size) - self._mean) / self._std
        vision = vision * has_image.view(-1, 1, 1, 1)  # placeholder: exact zeros without an image
        tiles = self.grid[0] * self.grid[1]
        ids = torch.where(has_image, layout.aspect_ratio_id(self.grid), 0).long().view(batch, 1)
        mask = torch.zeros(batch, 1, layout.max_num_tiles, dtype=torch.long)
        mask[:, :, 0] = 1  # as the processor: tile 0 is valid even for a missing image
        mask[has_image, :, :tiles] = 1
        return {
            "pixel_values": layout.tile(vision, self.grid),
            "aspect_ratio_ids": ids,
            "aspect_ratio_mask": mask,
        }

    def unet_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """``unet_pixels``: images in [0, 1] at any size → the U-Net's input size."""
        return _resize(images, self.unet_size).clamp_(0.0, 1.0).contiguous()

    def cross_attention_mask(self, input_ids: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """``(B, T, 1, max_num_tiles)``: from the first image token on, over the image's tiles."""
        batch, length = input_ids.shape
        is_image = input_ids == self.image_token_id
        first = torch.where(is_image.any(1), is_image.float().argmax(1), torch.full((batch,), length))
        rows = (torch.arange(length).unsqueeze(0) >= first.unsqueeze(1)) & has_image.unsqueeze(1)
        tiles = torch.arange(self.layout.max_num_tiles) < self.grid[0] * self.grid[1]
        return (rows[:, :, None, None] & tiles[None, None, None, :]).long()

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        has_image = torch.tensor([it["image"] is not None and it.get("vision", True) for it in items])
        images, masks = self._pixels(items)
        tokens = self.tokenizer(
            [prompt_text(it["text"]) for it in items],
            padding="max_length",
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].long()
        features = self.features
        reused: dict[str, torch.Tensor] = {}
        if features is not None:
            reused = features.rows(
                [int(it["index"]) for it in items],
                has_image.tolist(),
                [it["image"] is not None for it in items],
            )
        vision = (
            {} if features is not None and features.covers_vision else self.vision_inputs(images, has_image)
        )
        unet = (
            {} if features is not None and features.covers_unet else {"unet_pixels": self.unet_inputs(images)}
        )
        return {
            "input_ids": input_ids,
            "attention_mask": tokens["attention_mask"].long(),
            **vision,
            "cross_attention_mask": self.cross_attention_mask(input_ids, has_image),
            **unet,
            **reused,
            "vessel_mask": _resize(masks, self.unet_size).clamp_(0.0, 1.0).contiguous(),
            "has_mask": torch.tensor([bool(it["has_mask"]) for it in items], dtype=torch.bool),
            "labels_disease": torch.tensor([it["disease"] for it in items], dtype=torch.long),
            "labels_type": torch.tensor([it["type"] for it in items], dtype=torch.long),
            "has_image": has_image,
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        }
