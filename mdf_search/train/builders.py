"""Everything a trial builds before its first step: data artefacts (driver side) and the model (ranks).

Driver side, once per study and safe to race: :func:`prepare_trial_data` makes (or finds) the synthetic
study, the manifest, the split file, the preprocessed cache and the tokenizer, each under a
content-addressed name with an atomic commit, so workers only read. The sweep driver prepares them once
per distinct :func:`data_key` before Tune starts (``search/runner.py``); a trial whose key was not
prepared (a sampled parameter that changes the data) prepares its own. Rank side: :func:`build_model`.

This module is imported where a trial is launched (the Tune trial's driver process): its heavy imports
(torch, transformers, the data pipeline) load inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdf_search.atomic import commit_dir, temp_sibling
from mdf_search.config import TrialConfig
from mdf_search.model.presets import get_preset, require_weights

if TYPE_CHECKING:
    from mdf_search.data.schema import LabelSpace
    from mdf_search.model.mdf import MDFModel

SYNTHETIC_SEED = 0  # the synthetic *dataset* is the same for every trial; trial seeds vary the training


def cache_root(cfg: TrialConfig) -> Path:
    root = cfg.data.cache_dir or os.environ.get("MDF_SEARCH_CACHE") or "~/.cache/mdf-search"
    return Path(root).expanduser()


@dataclass(frozen=True)
class TrialData:
    """Paths and identities of a trial's data artefacts (plain strings: travels to Ray workers)."""

    manifest: str
    split: str
    split_hash: str
    cache: str
    tokenizer: str  # directory; "" when the tokenizer comes with model.weights
    label_space: str  # LabelSpace JSON
    published: str = ""  # experiment root holding copies of split, cache and tokenizer (data/artefacts.py)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def artefacts(self) -> list[tuple[str, str]]:
        """(kind, local path) of the split, the cache and (when trained) the tokenizer."""
        found = [("splits", self.split), ("cache", self.cache)]
        return found + ([("tokenizers", self.tokenizer)] if self.tokenizer else [])


def data_key(cfg: TrialConfig) -> tuple[Any, ...]:
    """Everything :func:`prepare_trial_data` reads of a trial's config: trials with equal keys share
    their data artefacts (the sweep driver prepares each key once). The same on every node: the
    configured ``data.cache_dir``, not the cache root this node's ``$MDF_SEARCH_CACHE`` makes of it, so
    a trial driver on another node finds the study's prepared data under the sweep's key."""
    d = cfg.data
    return (
        d.cache_dir,
        d.manifest,
        d.synthetic_images,
        d.synthetic_size,
        d.synthetic_severity,
        d.split,
        d.split_seed,
        d.val_frac,
        d.test_frac,
        d.folds,
        d.fold,
        d.test_source,
        d.vision_tiles,
        cfg.model.preset,
        cfg.model.weights,
    )


def prepare_tokenizer(texts: list[str], space: LabelSpace, vocab_size: int, root: Path) -> Path:
    """Train (or find) the byte-level BPE tokenizer of these texts; class names become whole tokens."""
    extras = sorted({*space.diseases, *space.types})
    digest = hashlib.sha256(f"{vocab_size}\0{extras}\0".encode() + "\0".join(texts).encode()).hexdigest()[:16]
    final = root / f"bpe-{vocab_size}-{digest}"
    if (final / "tokenizer.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    from mdf_search.model.mllama import train_tokenizer  # transformers

    try:
        train_tokenizer(texts, vocab_size, extra_tokens=extras).save_pretrained(tmp)
        commit_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare_trial_data(cfg: TrialConfig, *, workers: int = 2, progress: Any = None) -> TrialData:
    """Make (or find) the trial's data artefacts; refuses first what the rank-side build would refuse."""
    from mdf_search.data.batches import prompt_text
    from mdf_search.data.cache import build_cache, cache_size_for
    from mdf_search.data.schema import read_manifest
    from mdf_search.data.splits import make_split, write_split
    from mdf_search.data.synthetic import ensure_synthetic

    preset = get_preset(cfg.model.preset)
    require_weights(preset, cfg.model.weights)
    root = cache_root(cfg)
    data = cfg.data
    manifest = (
        Path(data.manifest)
        if data.manifest
        else ensure_synthetic(
            root / "synthetic",
            images=data.synthetic_images,
            size=data.synthetic_size,
            severity=data.synthetic_severity,
            seed=SYNTHETIC_SEED,
            progress=progress,
        )
    )
    table, space = read_manifest(manifest)
    split = make_split(
        table,
        data.split,
        seed=data.split_seed,
        val_frac=data.val_frac,
        test_frac=data.test_frac,
        folds=data.folds,
        fold=data.fold,
        test_source=data.test_source,
    )
    split_path = write_split(split, root / "splits")
    cache = build_cache(
        manifest,
        root / "cache",
        cache_size_for(preset.unet_size, preset.vision_size, cfg.data.vision_tiles),
        workers=workers,
        progress=progress,
    )
    tokenizer = ""
    if not cfg.model.weights:
        texts = table.column("clinical_text").to_pylist()
        train_rows = split.rows("train")
        corpus = [prompt_text(texts[i] or "") for i in train_rows]
        tokenizer = str(prepare_tokenizer(corpus, space, preset.vocab_size, root / "tokenizers"))
    return TrialData(str(manifest), str(split_path), split.hash, str(cache), tokenizer, space.to_json())


def publish_trial_data(data: TrialData, root: str) -> TrialData:
    """Publish the trial's split, cache and tokenizer to the study's storage (``root``: the experiment
    root, a path or a URI; once per content: an artefact published already is left as it is), so Train
    workers on any node can fetch them (:func:`local_trial_data`); ``data`` naming ``root``."""
    from mdf_search.data.artefacts import publish

    for kind, path in data.artefacts():
        publish(path, kind, root)
    return replace(data, published=root)


def study_trial_data(cfg: TrialConfig, root: str) -> TrialData:
    """:func:`prepare_trial_data`, then :func:`publish_trial_data` to the experiment root ``root``."""
    return publish_trial_data(prepare_trial_data(cfg), root)


def local_trial_data(data: TrialData, cfg: TrialConfig) -> TrialData:
    """On a Train worker: the trial's artefacts under this node's own cache root (``cache_root``, from
    this node's environment), fetched from the study's storage and checked by hash where this node
    lacks them. A path the sweep's node wrote names a file on *that* node, so a worker never opens it:
    it finds each artefact by its content-addressed name. Data not published (``mdf-search train``) is
    used where it is."""
    if not data.published:
        return data
    from mdf_search.data.artefacts import fetch

    root = cache_root(cfg)
    local = {
        kind: str(fetch(data.published, kind, Path(path).name, root / kind))
        for kind, path in data.artefacts()
    }
    return replace(data, split=local["splits"], cache=local["cache"], tokenizer=local.get("tokenizers", ""))


def load_tokenizer(directory: str | Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(
    cfg: TrialConfig, label_space: str, *, tokenizer_dir: str | Path | None = None
) -> tuple[MDFModel, Any]:
    """The trial's joint model and tokenizer (under ZeRO-3 call it inside ``zero3_construction``)."""
    import torch

    from mdf_search.data.schema import LabelSpace
    from mdf_search.model.mdf import MDFModel, task_classes
    from mdf_search.model.mllama import IMAGE, build_mllama, label_token_ids, load_pretrained

    space = LabelSpace.from_json(label_space)
    preset = get_preset(cfg.model.preset)
    require_weights(preset, cfg.model.weights)
    classes = task_classes(cfg.head.task, space.diseases)
    if cfg.model.weights:
        dtype = torch.bfloat16 if cfg.optim.precision == "bf16" else torch.float32
        mllama, tokenizer = load_pretrained(cfg.model.weights, dtype=dtype)
        tokenizer.padding_side = "right"
    else:
        if tokenizer_dir is None:
            raise ValueError("a random-init preset needs the trial's trained tokenizer (tokenizer_dir)")
        tokenizer = load_tokenizer(tokenizer_dir)
        mllama = build_mllama(
            preset,
            gate_init=cfg.model.xattn_gate_init,
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        )
    label_ids = None
    if cfg.head.kind == "label_token":
        label_ids = {name: label_token_ids(tokenizer, names) for name, names in classes.items()}
    model = MDFModel(mllama, cfg.arch, classes, label_ids)
    if cfg.unet.init == "pretrained" and cfg.unet.weights and model.unet is not None:
        state = torch.load(cfg.unet.weights, map_location="cpu", weights_only=True)
        model.unet.load_state_dict(state)
    return model, tokenizer
