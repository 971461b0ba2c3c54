"""``train_loop_per_worker``: one DeepSpeed rank of one trial, run by Ray Train.

Per epoch: train, evaluate on the whole validation split (predictions gathered from every rank and
de-duplicated by sample index, so the metrics are those of the split, not a mean of per-rank metrics),
then report metrics and a checkpoint to Ray Train. After the last epoch the test split is evaluated
once, with the final weights, and reported under ``test/`` keys (never used for selection).

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
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mdf_search.config import TrialConfig
from mdf_search.data.batches import Collator, FundusDataset
from mdf_search.data.cache import open_cache
from mdf_search.data.schema import LabelSpace
from mdf_search.data.splits import read_split
from mdf_search.model.freezing import parameter_counts
from mdf_search.model.mdf import mdf_loss
from mdf_search.model.presets import get_preset
from mdf_search.train import checkpoint
from mdf_search.train.builders import TrialData, build_model
from mdf_search.train.deepspeed import build_ds_config, initialize, optimizer_steps, zero3_construction
from mdf_search.train.metrics import dedupe_predictions, metrics_for_tasks, prefixed

log = logging.getLogger(__name__)
SELECTION_METRIC = "val/macro_f1"  # what "best" means inside a trial; the study's metric is its own


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


def _to(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if value.is_floating_point() and key not in ("vessel_mask",):
            value = value.to(dtype)
        out[key] = value
    return out


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_true(flag: bool, device: torch.device) -> bool:
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item() == 1.0)


def _gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Run:
    """The state of one rank of one trial (a plain holder; the steps below are functions of it)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = TrialConfig.from_flat(config["params"])
        self.data = TrialData(**config["data"])
        self.hooks: dict[str, Any] = config.get("hooks", {})
        self.progress = config.get("progress")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = _device(self.cfg)
        self.dtype = torch.bfloat16 if self.cfg.optim.precision == "bf16" else torch.float32
        self.space = LabelSpace.from_json(self.data.label_space)
        split = read_split(self.data.split)
        cache = open_cache(self.data.cache)
        self.sets = {name: FundusDataset(cache, split.rows(name)) for name in ("train", "val", "test")}
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
        self.best: float | None = None
        self.last_metrics: dict[str, Any] | None = None  # of the checkpoint a restarted run resumed from

    def loader(self, name: str) -> DataLoader[Any]:
        train = name == "train"
        sampler: DistributedSampler[Any] = DistributedSampler(
            self.sets[name],
            num_replicas=self.world,
            rank=self.rank,
            shuffle=train,
            seed=self.cfg.run.seed,
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


def _train_epoch(run: Run) -> dict[str, float] | None:
    """One epoch; None when the loss went non-finite on any rank."""
    engine = run.engine
    engine.train()
    losses: list[float] = []
    step_times: list[float] = []
    samples = 0
    loader = run.loader("train")
    total = len(loader)
    crash_at = run.hooks.get("nan_at_step")
    first_step_unix = None
    for step, batch in enumerate(loader):
        start = time.perf_counter()
        first_step_unix = first_step_unix or time.time()
        batch = _to(batch, run.device, run.dtype)
        loss, _ = mdf_loss(engine(batch), batch, run.cfg.unet.aux_seg_weight)
        if crash_at is not None and run.epoch * total + step >= crash_at:
            loss = loss * float("nan")  # test hook: an injected divergence
        if not _all_true(bool(torch.isfinite(loss)), run.device):
            return None
        engine.backward(loss)
        engine.step()
        step_times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        samples += batch["input_ids"].shape[0]
        if run.progress is not None and run.rank == 0:
            run.progress.update.remote(epoch=run.epoch, step=step + 1, steps=total, loss=losses[-1])
    # steady state: the first step pays for allocations and ZeRO-3 traces
    steady = step_times[1:] or step_times
    per_rank = np.mean(steady)
    return {
        "train_loss": float(np.mean(_gather(float(np.mean(losses))))),
        "step_time_s": float(per_rank),
        "samples_per_s": float(run.cfg.optim.micro_batch * run.world / per_rank),
        "epoch_time_s": float(sum(step_times)),
        "first_step_unix": float(first_step_unix or time.time()),
    }


@torch.no_grad()
def _evaluate(run: Run, name: str) -> dict[str, Any]:
    engine = run.engine
    engine.eval()
    tasks = list(engine.module.classes)
    indices: list[int] = []
    preds: dict[str, list[int]] = {t: [] for t in tasks}
    labels: dict[str, list[int]] = {t: [] for t in tasks}
    losses: list[float] = []
    for batch in run.loader(name):
        batch = _to(batch, run.device, run.dtype)
        out = engine(batch)
        per_sample = sum(
            torch.nn.functional.cross_entropy(out.logits[t], batch[f"labels_{t}"], reduction="none")
            for t in tasks
        )
        indices.extend(batch["index"].tolist())
        losses.extend(torch.as_tensor(per_sample).float().tolist())
        for t in tasks:
            preds[t].extend(out.logits[t].argmax(-1).tolist())
            labels[t].extend(batch[f"labels_{t}"].tolist())
    gathered = _gather((indices, preds, labels, losses))
    all_idx = [i for g in gathered for i in g[0]]
    all_loss = [v for g in gathered for v in g[3]]
    keep = dedupe_predictions(np.asarray(all_idx), np.asarray(all_loss), np.asarray(all_loss))[0]
    metrics: dict[str, Any] = {}
    pred_by_task, label_by_task = {}, {}
    for t in tasks:
        _, p, y = dedupe_predictions(
            np.asarray(all_idx),
            np.asarray([v for g in gathered for v in g[1][t]]),
            np.asarray([v for g in gathered for v in g[2][t]]),
        )
        pred_by_task[t], label_by_task[t] = p, y
    loss_by_index = dict(zip(all_idx, all_loss, strict=True))
    metrics["loss"] = float(np.mean([loss_by_index[i] for i in keep]))
    metrics.update(metrics_for_tasks(pred_by_task, label_by_task, engine.module.classes))
    metrics["n"] = len(keep)
    if run.hooks.get("save_predictions") and run.rank == 0:
        path = Path(run.hooks["save_predictions"]) / f"{name}-epoch{run.epoch}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"index": keep}
        for t in tasks:
            arrays[f"pred_{t}"], arrays[f"label_{t}"] = pred_by_task[t], label_by_task[t]
        np.savez(path, **arrays)
    return prefixed(metrics, name)


@torch.no_grad()
def _save_probe(run: Run, directory: Path) -> None:
    """Test hook: every rank runs one eval batch (ZeRO-3 needs them in step); rank 0 saves batch + logits."""
    run.engine.eval()
    batch = next(iter(run.loader("val")))
    out = run.engine(_to(batch, run.device, run.dtype))
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
        state = checkpoint.TrialState(
            run.epoch,
            run.best,
            run.cfg.to_flat(),
            run.data.label_space,
            {"split_hash": run.data.split_hash, "metrics": metrics},
        )
        checkpoint.save(run.engine, Path(tmp), state, rank=run.rank, tokenizer=run.tokenizer)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _epochs(run: Run) -> Iterator[int]:
    import ray.train

    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as directory:
            state = checkpoint.load(run.engine, Path(directory), rank=run.rank)
        start, run.best = state.epoch + 1, state.best_metric
        run.last_metrics = state.extra.get("metrics")
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
    """Ray Train entry point. ``config``: ``{"params": flat trial params, "data": TrialData dict}``."""
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
        val = _evaluate(run, "val")
        score = val.get(SELECTION_METRIC, val.get(f"val/type/{SELECTION_METRIC[4:]}"))
        if score is not None and (run.best is None or score > run.best):
            run.best = float(score)
        last = epoch + 1 == run.cfg.optim.epochs
        metrics = {
            **base,
            **train,
            **val,
            "epoch": epoch + 1,
            "best_val": run.best,
            "status": "completed" if last else "running",
            "peak_mem_mb": max(_gather(_peak_memory_mb(run.device))),
        }
        if last and len(run.sets["test"]):
            metrics.update(_evaluate(run, "test"))
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
