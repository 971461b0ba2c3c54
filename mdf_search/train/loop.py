"""``train_loop_per_worker``: one DeepSpeed rank of one trial, run by Ray Train.

Per epoch: train, evaluate on the whole validation split (predictions gathered from every rank and
de-duplicated by sample index, so the metrics are those of the split, not a mean of per-rank metrics),
then report metrics and a checkpoint to Ray Train.

Selection (SCIENCE.md: validation chooses, test only reports): the epoch whose validation value of the
study's metric is best under the study's mode (``train/selection.py``) is the trial's selected epoch.
Whenever an epoch becomes the selected one, the test split is evaluated with that epoch's weights, so
the test metrics reported for a trial are those of the model validation selected, never of the last
epoch unless it is the selected one. Test evaluation runs under a forked RNG: it never changes training.

Every report carries the epoch's own ``train/``, ``val/`` keys (``test/`` only at epochs that became
the selected one; ``eval_time_s`` is what evaluating them took), ``best_epoch`` and ``best_value`` (the
study metric there), and the selected epoch's ``val/``, ``test/`` and ``train/`` metrics again under
``selected/`` (the results writer puts those in the trial's row, and the Optuna searcher takes the study
value from there). Rank 0 keeps the selected epoch's per-sample predictions and writes them into every
checkpoint (``train/predictions.py``).

Statuses reported in ``status``: ``running`` (every epoch), ``completed`` (last epoch), ``diverged``
(a non-finite loss on any rank: all ranks stop together, nothing is retried) and ``oom`` (CUDA out of
memory, reported with the configuration that caused it).
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from mdf_search.config import TrialConfig
from mdf_search.data.batches import Collator, FundusDataset
from mdf_search.data.cache import open_cache
from mdf_search.data.schema import LabelSpace
from mdf_search.data.splits import read_split
from mdf_search.metrics import balanced_class_weights, prefixed
from mdf_search.model.freezing import parameter_counts
from mdf_search.model.mdf import MDFOutput, mdf_loss
from mdf_search.model.presets import get_preset
from mdf_search.train import checkpoint, predictions
from mdf_search.train.builders import TrialData, build_model
from mdf_search.train.deepspeed import build_ds_config, initialize, optimizer_steps, zero3_construction
from mdf_search.train.evaluate import evaluate, evaluate_test, gather, to_device
from mdf_search.train.predictions import Gathered
from mdf_search.train.selection import Selection

log = logging.getLogger(__name__)
TEXT_SHUFFLE_STREAM = 0x7E47  # data.text=shuffled: the permutation's seed is (trial seed, this stream)


def _device(cfg: TrialConfig) -> torch.device:
    want_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.device_count() > 1 else 0
        )
    return torch.device("cpu")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def derived_seed(seed: int, stream: int) -> int:
    """An independent 31-bit seed for one use of the trial seed (``stream`` names the use)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def order_seed(seed: int, order_salt: int) -> int:
    """The training sampler's seed: the trial seed itself with ``data.order_salt=0`` (today's order, so
    earlier results and the resume tests hold), otherwise a seed derived from both."""
    return seed if order_salt == 0 else derived_seed(seed, order_salt)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_true(flag: bool, device: torch.device) -> bool:
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item() == 1.0)


class Run:
    """The state of one rank of one trial (a plain holder; the steps below are functions of it)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = TrialConfig.from_flat(config["params"])
        self.data = TrialData(**config["data"])
        self.hooks: dict[str, Any] = config.get("hooks", {})
        self.selection = Selection.from_dict(config.get("selection"))
        self.progress = config.get("progress")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = _device(self.cfg)
        self.dtype = torch.bfloat16 if self.cfg.optim.precision == "bf16" else torch.float32
        self.space = LabelSpace.from_json(self.data.label_space)
        split = read_split(self.data.split)
        cache = open_cache(self.data.cache)
        self.samples = predictions.SampleIndex.from_cache_index(cache.index)
        data = self.cfg.data
        # data.text=shuffled permutes texts across the *training* cases only (a seed of its own per trial
        # seed): the text-label link is broken where the model learns it; val and test keep their texts.
        text_seed = derived_seed(self.cfg.run.seed, TEXT_SHUFFLE_STREAM)
        self.sets = {
            name: FundusDataset(
                cache,
                split.rows(name),
                text=data.text if name == "train" or data.text == "off" else "on",
                image=data.image,
                text_seed=text_seed,
            )
            for name in ("train", "val", "test")
        }
        empty = [name for name, ds in self.sets.items() if len(ds) == 0 and name != "test"]
        if empty:
            raise ValueError(f"split {self.data.split} has no {empty} rows; lower data.val_frac or add data")
        preset = get_preset(self.cfg.model.preset)
        self.steps_per_epoch = optimizer_steps(len(self.sets["train"]), self.world, self.cfg.optim)
        self.ds_config = build_ds_config(
            self.cfg,
            world_size=self.world,
            steps_per_epoch=self.steps_per_epoch,
            on_gpu=self.device.type == "cuda",
        )
        _seed_everything(self.cfg.run.seed)  # same init on every rank
        with zero3_construction(self.ds_config):
            model, self.tokenizer = build_model(
                self.cfg, self.data.label_space, tokenizer_dir=self.data.tokenizer or None
            )
        self.param_counts = parameter_counts(model)
        self.classes: dict[str, tuple[str, ...]] = dict(model.classes)
        self.class_columns = [*self.space.diseases, *self.space.types]  # the predictions' prob/ columns
        self.class_weights = self._class_weights(cache.index, split.rows("train"))
        self.engine, _, _ = initialize(model, self.cfg, self.ds_config)
        self.collate = {
            train: Collator(
                self.tokenizer,
                preset.vision,
                preset.unet_size,
                self.cfg.data.max_text_tokens,
                augment=train and self.cfg.data.augment,
                seed=self.cfg.run.seed,
                vision_tiles=self.cfg.data.vision_tiles,
            )
            for train in (True, False)
        }
        self.epoch = 0
        self.best: float | None = None  # the study metric at the selected epoch
        self.best_epoch: int | None = None  # 1-based, as reported
        self.selected: dict[str, Any] = {}  # the selected epoch's val/, test/ and train/ metrics
        self.predictions: pa.Table | None = None  # rank 0: the selected epoch's per-sample predictions
        self.last_metrics: dict[str, Any] | None = None  # of the checkpoint a restarted run resumed from

    def _class_weights(self, index: pa.Table, train_rows: np.ndarray) -> dict[str, torch.Tensor]:
        """``optim.class_weights=balanced``: per head, fitted on the training split only; {} for none."""
        if self.cfg.optim.class_weights == "none":
            return {}
        out = {}
        for task, names in self.classes.items():
            labels = np.asarray(index.column(f"{task}_index").to_pylist(), dtype=np.int64)[train_rows]
            weights = balanced_class_weights(labels, len(names))
            out[task] = torch.tensor(weights, dtype=torch.float32, device=self.device)
        return out

    def loader(self, name: str) -> DataLoader[Any]:
        train = name == "train"
        sampler: DistributedSampler[Any] = DistributedSampler(
            self.sets[name],
            num_replicas=self.world,
            rank=self.rank,
            shuffle=train,
            seed=order_seed(self.cfg.run.seed, self.cfg.data.order_salt),
            drop_last=False,
        )
        sampler.set_epoch(self.epoch)
        self.collate[train].set_epoch(self.epoch)
        return DataLoader(
            self.sets[name],
            batch_size=self.cfg.optim.micro_batch,
            sampler=sampler,
            collate_fn=self.collate[train],
            num_workers=0,
        )


def _loss(run: Run, out: MDFOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``mdf_loss``; with balanced class weights each head's cross-entropy is weighted (same seg term)."""
    loss, parts = mdf_loss(out, batch, run.cfg.unet.aux_seg_weight)
    if not run.class_weights:
        return loss
    weighted = sum(
        (
            F.cross_entropy(logits, batch[f"labels_{t}"], weight=run.class_weights[t])
            for t, logits in out.logits.items()
        ),
        torch.zeros((), device=loss.device),
    )
    seg = parts.get("seg")
    return weighted + run.cfg.unet.aux_seg_weight * seg if seg is not None else weighted


def _per_task(values: dict[str, float], tasks: list[str], name: str) -> dict[str, float]:
    """``train/<name>`` for one head, ``train/<task>/<name>`` for two (the val/ keys' layout)."""
    if len(tasks) == 1:
        return {f"train/{name}": values[tasks[0]]}
    return {f"train/{t}/{name}": values[t] for t in tasks}


def _train_epoch(run: Run) -> dict[str, float] | None:
    """One epoch; None when the loss went non-finite on any rank.

    ``train/loss`` is the mean optimised loss over the epoch's steps (every rank runs the same number);
    ``train/accuracy`` counts the training batches as seen (augmented, sampler padding included) over all
    ranks: summed correct over summed samples, not a mean of per-rank accuracies.
    """
    engine = run.engine
    engine.train()
    tasks = list(run.classes)
    losses: list[float] = []
    correct = dict.fromkeys(tasks, 0)
    step_times: list[float] = []
    samples = 0
    loader = run.loader("train")
    total = len(loader)
    crash_at = run.hooks.get("nan_at_step")
    first_step_unix = None
    for step, batch in enumerate(loader):
        start = time.perf_counter()
        first_step_unix = first_step_unix or time.time()
        batch = to_device(batch, run.device, run.dtype)
        out = engine(batch)
        loss = _loss(run, out, batch)
        if crash_at is not None and run.epoch * total + step >= crash_at:
            loss = loss * float("nan")  # test hook: an injected divergence
        if not _all_true(bool(torch.isfinite(loss)), run.device):
            return None
        engine.backward(loss)
        engine.step()
        step_times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        samples += batch["input_ids"].shape[0]
        for t in tasks:
            correct[t] += int((out.logits[t].detach().argmax(-1) == batch[f"labels_{t}"]).sum())
        if run.progress is not None and run.rank == 0:
            run.progress.update.remote(epoch=run.epoch, step=step + 1, steps=total, loss=losses[-1])
    # steady state: the first step pays for allocations and ZeRO-3 traces
    steady = step_times[1:] or step_times
    per_rank = np.mean(steady)
    mean_loss = float(np.mean(gather(float(np.mean(losses)))))
    counts = gather((samples, correct))
    seen = sum(n for n, _ in counts)
    accuracy = {t: sum(c[t] for _, c in counts) / seen for t in tasks}
    return {
        "train/loss": mean_loss,
        "train_loss": mean_loss,  # the same value under its first name (report/review.py, cli.py read it)
        **_per_task(accuracy, tasks, "accuracy"),
        "step_time_s": float(per_rank),
        "samples_per_s": float(run.cfg.optim.micro_batch * run.world / per_rank),
        "epoch_time_s": float(sum(step_times)),
        "first_step_unix": float(first_step_unix or time.time()),
    }


def _select(run: Run, metrics: dict[str, Any], val: Gathered) -> None:
    """Called at an epoch validation selected: test it, keep its metrics and (rank 0) its predictions."""
    test, test_split = evaluate_test(run)
    metrics.update(test)
    run.best_epoch = int(metrics["epoch"])
    keep = ("train/", "val/", "test/", "train_loss")
    run.selected = {k: v for k, v in metrics.items() if k.startswith(keep)}
    if run.rank == 0:
        parts = [("val", val), ("test", test_split)]
        run.predictions = pa.concat_tables(
            predictions.sample_table(split, run.best_epoch, g, run.classes, run.class_columns, run.samples)
            for split, g in parts
            if g is not None
        )


@torch.no_grad()
def _save_probe(run: Run, directory: Path) -> None:
    """Test hook: every rank runs one eval batch (ZeRO-3 needs them in step); rank 0 saves batch + logits."""
    run.engine.eval()
    batch = next(iter(run.loader("val")))
    out = run.engine(to_device(batch, run.device, run.dtype))
    if run.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        logits = {k: v.float().cpu() for k, v in out.logits.items()}
        torch.save(
            {"batch": batch, "logits": logits[next(iter(logits))], "all_logits": logits},
            directory / "batch.pt",
        )


def _report(run: Run, metrics: dict[str, Any], *, with_checkpoint: bool) -> None:
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="mdf-ckpt-") as tmp:
        extra = {
            "split_hash": run.data.split_hash,
            "metrics": metrics,
            "best_epoch": run.best_epoch,
            "selected": run.selected,
        }
        state = checkpoint.TrialState(run.epoch, run.best, run.cfg.to_flat(), run.data.label_space, extra)
        checkpoint.save(run.engine, Path(tmp), state, rank=run.rank, tokenizer=run.tokenizer)
        if run.rank == 0 and run.predictions is not None:
            predictions.save(run.predictions, Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _epochs(run: Run) -> Iterator[int]:
    import ray.train

    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as directory:
            state = checkpoint.load(run.engine, Path(directory), rank=run.rank)
            if run.rank == 0:
                run.predictions = predictions.load(Path(directory))
        start, run.best = state.epoch + 1, state.best_metric
        run.best_epoch, run.selected = state.extra.get("best_epoch"), state.extra.get("selected", {})
        run.last_metrics = state.extra.get("metrics")
        if run.last_metrics is not None:  # the results writer finds this attempt's predictions there
            run.last_metrics = {**run.last_metrics, "checkpoint_path": ckpt.path}
        log.info("rank %d resumes after epoch %d", run.rank, state.epoch)
    yield from range(start, run.cfg.optim.epochs)


def _wait_for_lines(path: Path, lines: int, timeout_s: float = 60.0) -> None:
    """Test hook helper: wait until the controller has recorded ``lines`` reports."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.2)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``{"params": flat trial params, "data": TrialData dict,
    "selection": Selection dict, "hooks": test hooks, "progress": actor or None}`` (``train/trainer.py``)."""
    import deepspeed
    import ray.train

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    started = time.perf_counter()
    try:
        run = Run(config)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
        ray.train.report({"status": "oom", "message": f"OOM while building: {err}", "epoch": 0})
        return
    startup = time.perf_counter() - started
    base = {
        "world_size": run.world,
        "split_hash": run.data.split_hash,
        "startup_s": startup,
        "trainable_params": sum(t for _, t in run.param_counts.values()),
        "total_params": sum(n for n, _ in run.param_counts.values()),
    }
    ran = False
    for epoch in _epochs(run):
        ran = True
        run.epoch = epoch
        try:
            train = _train_epoch(run)
        except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
            ray.train.report(
                {
                    **base,
                    "status": "oom",
                    "epoch": epoch + 1,
                    "message": f"CUDA OOM at epoch {epoch + 1} with {run.cfg.to_flat()}: {err}",
                }
            )
            return
        if train is None:
            ray.train.report(
                {
                    **base,
                    "status": "diverged",
                    "epoch": epoch + 1,
                    "message": f"non-finite loss in epoch {epoch + 1}",
                }
            )
            return
        evaluating = time.perf_counter()
        val, val_split = evaluate(run, "val")
        last = epoch + 1 == run.cfg.optim.epochs
        metrics = {**base, **train, **val, "epoch": epoch + 1, "status": "completed" if last else "running"}
        score = run.selection.value(val)  # identical on every rank: computed from gathered predictions
        if run.selection.improves(score, run.best):
            run.best = score
            _select(run, metrics, val_split)
        metrics.update(
            eval_time_s=time.perf_counter() - evaluating,  # validation, and test at a selected epoch
            best_epoch=run.best_epoch,
            best_value=run.best,
            peak_mem_mb=max(gather(_peak_memory_mb(run.device))),
            **prefixed(run.selected, "selected"),
        )
        _report(run, metrics, with_checkpoint=True)
        if last and run.hooks.get("save_logits"):
            _save_probe(run, Path(run.hooks["save_logits"]))
        kill_after = run.hooks.get("kill_after_epoch")
        if kill_after is not None and epoch + 1 == kill_after and run.rank == 1 % run.world:
            marker = Path(run.hooks["kill_marker"])
            if not marker.exists():
                _wait_for_lines(Path(run.hooks["kill_wait_for"]), kill_after)
                marker.write_text("killed")
                os.kill(os.getpid(), 9)  # test hook: a real SIGKILL of one rank once the report was recorded
    if not ran and run.last_metrics is not None:
        # Restarted after its last checkpoint (e.g. the sweep driver died between the final report and Tune
        # recording it): report the final metrics again so the trial ends with its result, not without one.
        ray.train.report(run.last_metrics)
