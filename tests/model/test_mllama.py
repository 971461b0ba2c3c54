"""Backbone construction, presets, tokenizer training and local checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import MllamaImageProcessorPil, MllamaProcessor, MllamaVisionConfig

from mdf_search.model.mdf import BATCH_MLLAMA_KEYS
from mdf_search.model.mllama import (
    IMAGE,
    build_mllama,
    label_token_ids,
    load_pretrained,
    meta_parameter_count,
    train_tokenizer,
)
from mdf_search.model.presets import PRESETS, get_preset, require_weights

from .conftest import make_batch

CORPUS = [
    "Night blindness since childhood, father affected. Autosomal dominant. RHO variant.",
    "Central vision loss age 14, yellow flecks at the macula. ABCA4.",
    "Routine screening.",
] * 5


def test_11b_on_meta_device_has_the_published_parameter_count() -> None:
    count = meta_parameter_count(get_preset("11b"))
    assert 10.6e9 <= count <= 10.7e9
    assert get_preset("11b").cross_attention_layers == (3, 8, 13, 18, 23, 28, 33, 38)


@pytest.mark.parametrize(
    ("name", "low", "high"), [("tiny", 1e5, 1e6), ("small", 1e7, 1e8), ("1b", 0.9e9, 1.5e9)]
)
def test_preset_sizes(name: str, low: float, high: float) -> None:
    assert low <= meta_parameter_count(PRESETS[name]) <= high


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_tiles_as_the_11b(name: str) -> None:
    """Four tiles and Mllama's default aspect ratios everywhere, so CPU tests run the 11B's layout."""
    preset = PRESETS[name]
    assert preset.max_num_tiles == 4
    assert preset.vision["supported_aspect_ratios"] == MllamaVisionConfig().supported_aspect_ratios


@pytest.mark.parametrize("vision_tiles", [1, 4])
def test_tiny_backbone_runs_a_collated_batch(vision_tiles: int) -> None:
    """The real tiny Mllama on the Collator's layout (1 or 4 image tiles of max_num_tiles=4): the fundus
    changes the logits of an example that shows it (the gates are open), never those of an example whose
    vision input is off (its placeholder is all zeros whatever the fundus)."""
    from mdf_search.data.batches import Collator, prompt_text

    preset = get_preset("tiny")
    tokenizer = train_tokenizer([prompt_text(t) for t in CORPUS], vocab_size=preset.vocab_size)
    model = build_mllama(preset, gate_init=0.5).eval()
    size = preset.vision_size * (2 if vision_tiles == 4 else 1)
    g = torch.Generator().manual_seed(0)

    def fundus() -> object:
        return torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()

    items = [
        {
            "index": i,
            "image": fundus(),
            "vision": i == 0,
            "mask": torch.zeros(size, size, dtype=torch.uint8).numpy(),
            "has_mask": False,
            "text": CORPUS[i],
            "disease": 0,
            "type": 0,
        }
        for i in range(2)
    ]
    collate = Collator(
        tokenizer, preset.vision, preset.unet_size, 24, augment=False, vision_tiles=vision_tiles
    )
    batch = collate(items)
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in BATCH_MLLAMA_KEYS}).logits
        other = collate([{**item, "image": fundus()} for item in items])
        changed = model(**{k: other[k] for k in BATCH_MLLAMA_KEYS}).logits
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], changed[0])  # the image is seen
    assert torch.equal(logits[1], changed[1])  # the vision-off example is not affected


def test_random_presets_open_the_cross_attention_gates() -> None:
    model = build_mllama(get_preset("tiny"), gate_init=0.25)
    layer = model.model.language_model.layers[1]
    assert layer.cross_attn_attn_gate.item() == layer.cross_attn_mlp_gate.item() == 0.25


def test_trained_tokenizer_is_deterministic_and_places_special_tokens() -> None:
    a = train_tokenizer(CORPUS, vocab_size=512, extra_tokens=["rp", "stargardt"])
    b = train_tokenizer(CORPUS, vocab_size=512, extra_tokens=["rp", "stargardt"])
    text = f"{IMAGE} Night blindness, RHO."
    assert a(text)["input_ids"] == b(text)["input_ids"]
    ids = a(text)["input_ids"]
    assert ids[:2] == [1, 2]  # <|begin_of_text|> <|image|>
    assert a.pad_token_id == 0 and a.convert_tokens_to_ids(IMAGE) == 2
    assert len(a) <= 512
    assert label_token_ids(a, ["rp", "stargardt"]) == [
        a.convert_tokens_to_ids("rp"),
        a.convert_tokens_to_ids("stargardt"),
    ]


def test_label_tokens_must_be_distinct() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=300)
    with pytest.raises(ValueError, match="share first tokens"):
        label_token_ids(tok, ["xq1", "xq2"])


def test_pretrained_loading_is_the_same_code_for_a_tiny_checkpoint(tmp_path: Path) -> None:
    preset = get_preset("tiny")
    tokenizer = train_tokenizer(CORPUS, vocab_size=preset.vocab_size)
    model = build_mllama(preset, gate_init=0.5).eval()
    image_processor = MllamaImageProcessorPil(
        size={"height": preset.vision_size, "width": preset.vision_size}, max_image_tiles=preset.max_num_tiles
    )
    MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)

    loaded, loaded_tokenizer = load_pretrained(tmp_path)
    batch = make_batch()
    keys = BATCH_MLLAMA_KEYS
    with torch.no_grad():
        assert torch.equal(
            loaded.eval()(**{k: batch[k] for k in keys}).logits, model(**{k: batch[k] for k in keys}).logits
        )
    assert loaded_tokenizer("RHO")["input_ids"] == tokenizer("RHO")["input_ids"]


def test_a_pretrained_only_preset_is_not_built_for_real_without_weights() -> None:
    with pytest.raises(ValueError, match=r"model\.weights: the 11b preset loads .* set model\.weights to it"):
        require_weights(get_preset("11b"), None)
    require_weights(get_preset("11b"), "/models/Llama-3.2-11B-Vision")
    require_weights(get_preset("tiny"), None)


def test_missing_checkpoint_directory_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.weights must be a local directory"):
        load_pretrained(tmp_path / "nope")
