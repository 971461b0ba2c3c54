from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mdf_search.config import TrialConfig
from mdf_search.model.mdf import MDFModel, task_classes
from mdf_search.model.mllama import build_mllama
from mdf_search.model.presets import get_preset

DISEASES = ("normal", "dr", "amd", "glaucoma", "rp", "stargardt")


def make_batch(
    batch: int = 2, length: int = 16, preset: str = "tiny", pad: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A model batch with the shapes the data layer produces (random content): one image tile, the
    other ``max_num_tiles - 1`` tiles padding, as the Collator lays out ``data.vision_tiles=1``."""
    p = get_preset(preset)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, p.vocab_size, (batch, length), generator=g)
    ids[:, 0], ids[:, 1] = 1, 2  # <|begin_of_text|> <|image|>
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad and batch > 1:
        mask[1, length - 4 :] = 0
        ids[1, length - 4 :] = 0
    tiles = p.max_num_tiles
    xattn = torch.zeros(batch, length, 1, tiles, dtype=torch.long)
    xattn[:, 1:, :, 0] = 1
    pixels = torch.zeros(batch, 1, tiles, 3, p.vision_size, p.vision_size)
    pixels[:, :, 0] = torch.randn(batch, 1, 3, p.vision_size, p.vision_size, generator=g)
    tile_mask = torch.zeros(batch, 1, tiles, dtype=torch.long)
    tile_mask[:, :, 0] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixels,
        "aspect_ratio_ids": torch.ones(batch, 1, dtype=torch.long),
        "aspect_ratio_mask": tile_mask,
        "cross_attention_mask": xattn,
        "unet_pixels": torch.rand(batch, 3, p.unet_size, p.unet_size, generator=g),
        "vessel_mask": (torch.rand(batch, 1, p.unet_size, p.unet_size, generator=g) > 0.8).float(),
        "has_mask": torch.ones(batch, dtype=torch.bool),
        "labels_disease": torch.arange(batch) % len(DISEASES),
        "labels_type": torch.arange(batch) % 3,
    }


def make_model(gate_init: float = 0.5, seed: int = 0, **flat: object) -> MDFModel:
    cfg = TrialConfig.from_flat(flat)
    torch.manual_seed(seed)
    mllama = build_mllama(get_preset(cfg.model.preset), gate_init=gate_init)
    return MDFModel(mllama, cfg.arch, task_classes(cfg.head.task, DISEASES))


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return make_batch()


@pytest.fixture
def model_factory() -> Callable[..., MDFModel]:
    return make_model
