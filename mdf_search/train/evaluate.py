"""Whole-split evaluation across the ranks of a trial, and the two collective helpers the loop shares.

Every rank evaluates its ``DistributedSampler`` share; predictions, labels, per-sample losses and
softmax probabilities are gathered from every rank and de-duplicated by manifest row (the sampler pads
shares by repeating samples), so metrics are those of the split, identical on every rank, and rank 0
holds the whole split's predictions for the predictions table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mdf_search.metrics import dedupe_predictions, metrics_for_tasks, prefixed
from mdf_search.train.predictions import Gathered

if TYPE_CHECKING:
    from mdf_search.train.worker import Run


def to_device(
    batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Move a batch; floating tensors take the trial's dtype (the vessel-mask target stays fp32)."""
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if value.is_floating_point() and key not in ("vessel_mask",):
            value = value.to(dtype)
        out[key] = value
    return out


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def evaluate(run: Run, name: str) -> tuple[dict[str, Any], Gathered]:
    """Whole-split metrics (``<name>/`` keys, AUROC from the softmax) and the gathered predictions."""
    engine = run.model.engine
    engine.eval()
    tasks = list(run.data.classes)
    indices: list[int] = []
    losses: list[float] = []
    preds: dict[str, list[int]] = {t: [] for t in tasks}
    labels: dict[str, list[int]] = {t: [] for t in tasks}
    probs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for batch in run.clock.iterate(run.loader(name)):  # the waits for batches count as data time
        batch = to_device(batch, run.device, run.dtype)
        out = engine(batch)
        per_sample = sum(
            F.cross_entropy(out.logits[t], batch[f"labels_{t}"], reduction="none") for t in tasks
        )
        indices.extend(batch["index"].tolist())
        losses.extend(torch.as_tensor(per_sample).float().tolist())
        for t in tasks:
            preds[t].extend(out.logits[t].argmax(-1).tolist())
            labels[t].extend(batch[f"labels_{t}"].tolist())
            probs[t].append(out.logits[t].float().softmax(-1).cpu().numpy())
    gathered = gather((indices, losses, preds, labels, probs))
    all_idx = np.asarray([i for g in gathered for i in g[0]])
    all_loss = np.asarray([v for g in gathered for v in g[1]])
    keep = dedupe_predictions(all_idx, all_loss, all_loss)[0]
    loss_by_index = dict(zip(all_idx.tolist(), all_loss.tolist(), strict=True))
    split = Gathered(keep, {}, {}, {})
    for t in tasks:
        stacked = np.concatenate([p for g in gathered for p in g[4][t]]).astype(np.float32)
        _, split.preds[t], split.labels[t] = dedupe_predictions(
            all_idx,
            np.asarray([v for g in gathered for v in g[2][t]]),
            np.asarray([v for g in gathered for v in g[3][t]]),
        )
        split.probs[t] = dedupe_predictions(all_idx, stacked, all_idx)[1]
    metrics: dict[str, Any] = {"loss": float(np.mean([loss_by_index[i] for i in keep.tolist()]))}
    metrics.update(metrics_for_tasks(split.preds, split.labels, run.data.classes, split.probs))
    metrics["n"] = len(keep)
    return prefixed(metrics, name), split


def evaluate_test(run: Run) -> tuple[dict[str, Any], Gathered | None]:
    """The test split with the current weights, under a forked RNG (test evaluation never changes
    what training does next); nothing when the split has no test rows."""
    if not len(run.data.sets["test"]):
        return {}, None
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return evaluate(run, "test")
