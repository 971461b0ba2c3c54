"""One rank of one trial: the state the epoch loop (``train/loop.py``) works on, and the steps that build it.

:func:`setup_run` reads Ray Train's loop config (written by ``train/trainer.py``) and finds the trial's
data artefacts on this node (``builders.local_trial_data``: fetched from the study's storage where this
node lacks them), then :func:`setup_data` opens the split and the cache and builds this rank's datasets, and
:func:`setup_engine` builds the model (under ZeRO-3 construction, from the same seed on every rank, so
every rank starts from the same weights) and hands it to DeepSpeed.

Seeds: the trial seed (``run.seed``) seeds the weights, the augmentation and, with ``data.order_salt=0``,
the training order; the other uses of it (the shuffled-text permutation, a salted order) take seeds
derived from it (:func:`derived_seed`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mdf_search.config import TrialConfig
from mdf_search.data.batches import Collator, FundusDataset
from mdf_search.data.cache import open_cache
from mdf_search.data.schema import LabelSpace
from mdf_search.data.splits import read_split
from mdf_search.metrics import balanced_class_weights
from mdf_search.model.freezing import parameter_counts
from mdf_search.model.mdf import task_classes
from mdf_search.model.presets import get_preset
from mdf_search.train.builders import TrialData, build_model, local_trial_data
from mdf_search.train.deepspeed import build_ds_config, initialize, optimizer_steps, zero3_construction
from mdf_search.train.faults import Faults
from mdf_search.train.features import attach_features
from mdf_search.train.phases import PhaseClock
from mdf_search.train.predictions import SampleIndex
from mdf_search.train.selection import Selection

TEXT_SHUFFLE_STREAM = 0x7E47  # data.text=shuffled: the permutation's seed is (trial seed, this stream)
SPLITS = ("train", "val", "test")


def derived_seed(seed: int, stream: int) -> int:
    """An independent 31-bit seed for one use of the trial seed (``stream`` names the use)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def order_seed(seed: int, order_salt: int) -> int:
    """The training sampler's seed: the trial seed itself with ``data.order_salt=0`` (today's order, so
    earlier results and the resume tests hold), otherwise a seed derived from both."""
    return seed if order_salt == 0 else derived_seed(seed, order_salt)


@dataclass(frozen=True)
class Datasets:
    """This rank's data: the trial's three splits and what the loss and the predictions need of them."""

    sets: dict[str, FundusDataset]  # train, val, test: whole splits (each loader's sampler takes a share)
    samples: SampleIndex  # per manifest row: sample id, case and source (the predictions' columns)
    classes: dict[str, tuple[str, ...]]  # head → class names
    class_columns: list[str]  # the predictions' prob/ columns: every disease, then every type
    class_weights: dict[str, torch.Tensor]  # optim.class_weights=balanced: per head; {} for none


@dataclass(frozen=True)
class Model:
    """The DeepSpeed engine around the trial's model, and the tokenizer and collators that feed it."""

    engine: Any  # deepspeed.DeepSpeedEngine
    tokenizer: Any
    collate: dict[bool, Collator]  # True: training batches (augmented when data.augment); False: eval
    param_counts: dict[str, tuple[int, int]]  # role → (parameters, trainable parameters)
    features_reused: str = "none"  # train/features.py: vision | unet | none, "@eval": evaluation only


@dataclass
class Selected:
    """The epoch validation selected so far (``train/selection.py``) and what the trial reports of it."""

    value: float | None = None  # the selection's metric there; None: no epoch selected yet
    epoch: int | None = None  # 1-based, as reported (``best_epoch``)
    metrics: dict[str, Any] = field(default_factory=dict)  # its val/, test/ and train/ metrics
    predictions: pa.Table | None = None  # rank 0: its per-sample val and test predictions


@dataclass
class Run:
    """One rank of one trial: what setup built, the current epoch and the selection so far."""

    cfg: TrialConfig
    artefacts: TrialData  # paths and identities of the trial's data (split hash, label space, ...)
    selection: Selection  # the study's metric and mode: which epoch is the trial's
    faults: Faults  # test hooks; inert unless a test sets them
    progress: Any  # the ``train/progress.py`` actor rank 0 publishes steps to, or None
    rank: int
    world: int
    device: torch.device
    data: Datasets
    model: Model
    epoch: int = 0  # 0-based, the epoch being run
    selected: Selected = field(default_factory=Selected)
    clock: PhaseClock = field(default_factory=PhaseClock)  # where this rank's seconds go (train/phases.py)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.optim.precision == "bf16" else torch.float32

    def loader(self, name: str) -> DataLoader[Any]:
        """This rank's share of split ``name`` at the current epoch (shuffled for ``train`` only); building
        it counts as data time."""
        with self.clock.phase("data_s"):
            return self._loader(name)

    def _loader(self, name: str) -> DataLoader[Any]:
        train = name == "train"
        sampler: DistributedSampler[Any] = DistributedSampler(
            self.data.sets[name],
            num_replicas=self.world,
            rank=self.rank,
            shuffle=train,
            seed=order_seed(self.cfg.run.seed, self.cfg.data.order_salt),
            drop_last=False,
        )
        sampler.set_epoch(self.epoch)
        self.model.collate[train].set_epoch(self.epoch)
        return DataLoader(
            self.data.sets[name],
            batch_size=self.cfg.optim.micro_batch,
            sampler=sampler,
            collate_fn=self.model.collate[train],
            num_workers=0,
        )


def setup_run(config: Mapping[str, Any], clock: PhaseClock | None = None) -> Run:
    """This rank's :class:`Run` from Ray Train's loop config: ``{"params": flat trial params, "data":
    TrialData dict, "selection": Selection dict, "faults": Faults dict, "progress": actor or None,
    "launched_unix": when the Train run was built}``. ``clock``: the rank's phase clock (data setup
    counts as ``data_s``, the model and DeepSpeed as ``init_s``); a new one when not given."""
    clock = clock or PhaseClock(config.get("launched_unix"))
    cfg = TrialConfig.from_flat(config["params"])
    device = _device(cfg)
    world = dist.get_world_size()
    with clock.phase("data_s"):
        # the sweep's node wrote the paths in config["data"]; this node finds (or fetches) its own copies
        artefacts = local_trial_data(TrialData(**config["data"]), cfg)
        data = setup_data(cfg, artefacts, device)
    with clock.phase("init_s"):
        model = setup_engine(cfg, artefacts, data, world=world, device=device)
    return Run(
        cfg=cfg,
        artefacts=artefacts,
        selection=Selection.from_dict(config.get("selection")),
        faults=Faults.from_dict(config.get("faults")),
        progress=config.get("progress"),
        rank=dist.get_rank(),
        world=world,
        device=device,
        data=data,
        model=model,
        clock=clock,
    )


def setup_data(cfg: TrialConfig, artefacts: TrialData, device: torch.device) -> Datasets:
    """The split's three datasets over the cache, the sample index and the class weights."""
    split = read_split(artefacts.split)
    cache = open_cache(artefacts.cache)
    # data.text=shuffled permutes texts across the *training* cases only (a seed of its own per trial
    # seed): the text-label link is broken where the model learns it; val and test keep their texts.
    text_seed = derived_seed(cfg.run.seed, TEXT_SHUFFLE_STREAM)
    sets = {
        name: FundusDataset(
            cache,
            split.rows(name),
            text=cfg.data.text if name == "train" or cfg.data.text == "off" else "on",
            image=cfg.data.image,
            text_seed=text_seed,
        )
        for name in SPLITS
    }
    empty = [name for name, ds in sets.items() if len(ds) == 0 and name != "test"]
    if empty:
        raise ValueError(f"split {artefacts.split} has no {empty} rows; lower data.val_frac or add data")
    space = LabelSpace.from_json(artefacts.label_space)
    classes = task_classes(cfg.head.task, space.diseases)
    return Datasets(
        sets=sets,
        samples=SampleIndex.from_cache_index(cache.index),
        classes=classes,
        class_columns=[*space.diseases, *space.types],
        class_weights=_class_weights(cfg, classes, cache.index, split.rows("train"), device),
    )


def setup_engine(
    cfg: TrialConfig, artefacts: TrialData, data: Datasets, *, world: int, device: torch.device
) -> Model:
    """Build the model from the trial seed under ZeRO-3 construction and initialise DeepSpeed."""
    steps_per_epoch = optimizer_steps(len(data.sets["train"]), world, cfg.optim)
    ds_config = build_ds_config(
        cfg, world_size=world, steps_per_epoch=steps_per_epoch, on_gpu=device.type == "cuda"
    )
    _seed_everything(cfg.run.seed)  # same init on every rank
    with zero3_construction(ds_config):
        model, tokenizer = build_model(cfg, artefacts.label_space, tokenizer_dir=artefacts.tokenizer or None)
    if dict(model.classes) != data.classes:
        raise RuntimeError(f"the model's heads {dict(model.classes)} differ from the data's {data.classes}")
    counts = parameter_counts(model)
    engine, _, _ = initialize(model, cfg, ds_config)
    preset = get_preset(cfg.model.preset)
    collate = {
        train: Collator(
            tokenizer,
            preset.vision,
            preset.unet_size,
            cfg.data.max_text_tokens,
            augment=train and cfg.data.augment,
            seed=cfg.run.seed,
            vision_tiles=cfg.data.vision_tiles,
        )
        for train in (True, False)
    }
    # Frozen-feature reuse (train/features.py): the feature cache lives beside the data cache
    reused = attach_features(
        engine.module,
        collate,
        data.sets["train"].cache,
        Path(artefacts.cache).parent.parent / "features",
        device=device,
        dtype=torch.bfloat16 if cfg.optim.precision == "bf16" else torch.float32,
    )
    return Model(engine, tokenizer, collate, counts, reused)


def _class_weights(
    cfg: TrialConfig,
    classes: Mapping[str, tuple[str, ...]],
    index: pa.Table,
    train_rows: np.ndarray,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """``optim.class_weights=balanced``: per head, fitted on the training split only; {} for none."""
    if cfg.optim.class_weights == "none":
        return {}
    out = {}
    for task, names in classes.items():
        labels = np.asarray(index.column(f"{task}_index").to_pylist(), dtype=np.int64)[train_rows]
        weights = balanced_class_weights(labels, len(names))
        out[task] = torch.tensor(weights, dtype=torch.float32, device=device)
    return out


def _device(cfg: TrialConfig) -> torch.device:
    want_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.device_count() > 1 else 0
        )
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
