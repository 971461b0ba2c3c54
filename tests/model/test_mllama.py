"""Backbone construction, presets, tokenizer training and local checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import MllamaImageProcessor, MllamaProcessor

from mdf_search.model.mdf import BATCH_MLLAMA_KEYS
from mdf_search.model.mllama import (
    IMAGE,
    build_mllama,
    label_token_ids,
    load_pretrained,
    meta_parameter_count,
    train_tokenizer,
)
from mdf_search.model.presets import PRESETS, get_preset

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
    image_processor = MllamaImageProcessor(
        size={"height": preset.vision_size, "width": preset.vision_size}, max_image_tiles=1
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


def test_missing_checkpoint_directory_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.weights must be a local directory"):
        load_pretrained(tmp_path / "nope")
