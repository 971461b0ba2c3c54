"""The language-vision backbone: ``transformers``' ``MllamaForConditionalGeneration``, never a re-implementation.

- Random-init presets (tiny/small/1b) are built with ``_from_config``, which also works under
  ``HfDeepSpeedConfig`` for ZeRO-3 (``deepspeed.zero.Init`` + the plain constructor fails,
  docs/stack-facts.md).
- A pretrained checkpoint (the 11B, or a tiny one saved by the tests) loads from a local directory with
  :func:`load_pretrained`: the same code for both, with its processor and tokenizer.
- Presets without a pretrained tokenizer train a small byte-level BPE tokenizer offline from the
  dataset's own text (:func:`train_tokenizer`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    AutoProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from mdf_search.model.presets import Preset

log = logging.getLogger(__name__)

PAD, BOS, IMAGE, EOT = "<|pad|>", "<|begin_of_text|>", "<|image|>", "<|eot_id|>"
SPECIAL_TOKENS = (PAD, BOS, IMAGE, EOT)  # ids 0..3 in every trained tokenizer


def mllama_config(preset: Preset, *, image_token_index: int | None = None) -> MllamaConfig:
    index = image_token_index if image_token_index is not None else preset.extra.get("image_token_index", 2)
    text = dict(preset.text)
    if not preset.pretrained_only:  # ids of the trained tokenizer's special tokens
        text.update(pad_token_id=0, bos_token_id=1, eos_token_id=3)
    cfg = MllamaConfig(vision_config=dict(preset.vision), text_config=text, image_token_index=index)
    return cfg


def build_mllama(
    preset: Preset, *, gate_init: float, image_token_index: int | None = None
) -> MllamaForConditionalGeneration:
    """A randomly initialised backbone of the preset's architecture.

    The library initialises the cross-attention tanh gates to zero, which makes the image (and anything
    fused into those layers) invisible to the loss. For random-init presets they are set to ``gate_init``
    (an ASSUMPTION, ``model.xattn_gate_init``), as if the backbone had been pretrained.
    """
    model = MllamaForConditionalGeneration._from_config(
        mllama_config(preset, image_token_index=image_token_index)
    )
    set_xattn_gates(model, gate_init)
    return model


def text_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of an Mllama backbone (transformers 5.x module layout)."""
    return cast(Any, model).model.language_model.layers


def xattn_layer_ids(model: nn.Module) -> list[int]:
    return list(cast(Any, model).config.text_config.cross_attention_layers)


def text_hidden_size(model: nn.Module) -> int:
    return int(cast(Any, model).config.text_config.hidden_size)


def set_xattn_gates(model: MllamaForConditionalGeneration, value: float) -> None:
    layers: Any = text_layers(model)
    gates = [
        g
        for idx in xattn_layer_ids(model)
        for g in (layers[idx].cross_attn_attn_gate, layers[idx].cross_attn_mlp_gate)
    ]
    gather: Any = contextlib.nullcontext()
    if any(
        hasattr(g, "ds_id") for g in gates
    ):  # partitioned by ZeRO-3 at construction: gather, set, re-partition
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(gates, modifier_rank=0)
    with gather, torch.no_grad():
        for gate in gates:
            gate.fill_(value)


def meta_parameter_count(preset: Preset) -> int:
    """Parameters of the preset's backbone, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = MllamaForConditionalGeneration._from_config(mllama_config(preset))
    return sum(p.numel() for p in model.parameters())


def load_pretrained(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[MllamaForConditionalGeneration, PreTrainedTokenizerFast]:
    """Load an Mllama checkpoint, its processor and its tokenizer from a local directory (no network)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory}: no config.json; model.weights must be a local directory written by "
            "save_pretrained (e.g. a downloaded meta-llama/Llama-3.2-11B-Vision)"
        )
    model = MllamaForConditionalGeneration.from_pretrained(directory, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, extra_tokens: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline (deterministic for the same texts and size).

    ``extra_tokens`` (e.g. class names for label-token scoring) become single tokens.
    """
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    extras = sorted(set(extra_tokens))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(extras),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if extras:
        tok.add_tokens(extras)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"trained tokenizer has {tok.get_vocab_size()} tokens > preset vocab {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOT,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="right",
    )


def label_token_ids(tokenizer: PreTrainedTokenizerFast, labels: Iterable[str]) -> list[int]:
    """The first token of each label's spelling, for label-token scoring; they must be distinct."""
    vocab = tokenizer.get_vocab()
    ids = []
    for label in labels:
        if label in vocab:  # a whole token (an extra token of a trained tokenizer)
            ids.append(vocab[label])
        else:
            ids.append(tokenizer(f" {label}", add_special_tokens=False)["input_ids"][0])
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"labels {list(labels)} share first tokens {ids}; use head=linear for this label set"
        )
    return ids
