"""Shared fixtures: one small synthetic study (generated once per session) and a tiny real tokenizer."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from mdf_search.data.synthetic import build_manifest, generate


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (1-bit grey) with almost no pixel data: what a
    decompression bomb's first bytes look like, and all a reader that checks the header needs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SYNTH_IMAGES = 48
SYNTH_SIZE = 96


@pytest.fixture(scope="session")
def synth_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated study (FIVES/, HRF/, StoneRounds/) and its manifest.parquet; treat it as read-only."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, images=SYNTH_IMAGES, size=SYNTH_SIZE, seed=3)
    build_manifest(root)
    return root


@pytest.fixture
def study_copy(synth_study: Path, tmp_path: Path) -> Path:
    """A private copy of the study that a test may damage."""
    dest = tmp_path / "study"
    shutil.copytree(synth_study, dest)
    (dest / "manifest.parquet").unlink()
    return dest


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """A real PreTrainedTokenizerFast (word level, trained on the prompt vocabulary) that knows <|image|>."""
    # transformers, and torch through batches, load only for the tests that ask for a tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mdf_search.data.batches import QUESTION

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [QUESTION, "Clinical history: night blindness central vision loss family history ABCA4 RHO"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", additional_special_tokens=["<|image|>"]
    )
