"""``train_loop_per_worker``: one DeepSpeed rank of one trial, run by Ray Train.

It reads top to bottom: set up the rank (``train/worker.py``: data, then engine), ``start = _restore(run)``
from the Train run's latest checkpoint, then ``for epoch in range(start, epochs)``: train, evaluate on the
whole validation split (predictions gathered from every rank and de-duplicated by sample index, so the
metrics are those of the split, not a mean of per-rank metrics), then report metrics and a checkpoint to
Ray Train. A trial that stops early ends with one report from ``_end``.

Selection (README, "What a result means": validation chooses, test only reports): the epoch whose validation value of the
study's metric is best under the study's mode (``train/selection.py``) is the trial's selected epoch
(``run.selected``). Whenever an epoch becomes the selected one, the test split is evaluated with that
epoch's weights, so the test metrics reported for a trial are those of the model validation selected,
never of the last epoch unless it is the selected one. Test evaluation runs under a forked RNG: it never
changes training.

Every report carries the epoch's own ``train/``, ``val/`` keys (``test/`` only at epochs that became
the selected one; ``eval_time_s`` is what evaluating them took), ``best_epoch`` and ``best_value`` (the
study metric there), and the selected epoch's ``val/``, ``test/`` and ``train/`` metrics again under
``selected/`` (the results writer puts those in the trial's row, and the Optuna searcher takes the study
value from there). Rank 0 keeps the selected epoch's per-sample predictions and writes them into every
checkpoint (``train/predictions.py``).

Statuses reported in ``status``: ``running`` (every epoch), ``completed`` (last epoch), ``diverged``
(a non-finite loss on any rank: all ranks stop together, nothing is retried) and ``oom`` (CUDA out of
memory, reported with the configuration that caused it).

Fault hooks (``train/faults.py``) fire at three points: on each training loss, after the last report,
after every report. They are inert unless a test sets them.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mdf_search.metrics import prefixed
from mdf_search.model.mdf import MDFOutput, mdf_loss
from mdf_search.results.schema import Status
from mdf_search.train import checkpoint, predictions
from mdf_search.train.evaluate import evaluate, evaluate_test, gather, to_device
from mdf_search.train.predictions import Gathered
from mdf_search.train.worker import Run, Selected, setup_run

log = logging.getLogger(__name__)
SELECTED_KEYS = ("train/", "val/", "test/", "train_loss")  # what the selected epoch's metrics keep


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: set up this rank, resume, run the remaining epochs. ``config``: Ray Train's
    loop config (:func:`~mdf_search.train.worker.setup_run` says what it holds)."""
    import deepspeed  # it picks its accelerator when imported: here, where DS_ACCELERATOR is set

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    started = time.perf_counter()
    try:
        run = setup_run(config)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
        _end(Status.OOM, 0, f"OOM while building: {err}")
        return
    base = _trial_metrics(run, startup_s=time.perf_counter() - started)
    epochs = run.cfg.optim.epochs
    start = _restore(run)
    if start >= epochs and run.resumed_report is not None:
        # Restarted after its last checkpoint (e.g. the sweep driver died between the final report and Tune
        # recording it): report the final metrics again so the trial ends with its result, not without one.
        ray.train.report(run.resumed_report)
        return
    for epoch in range(start, epochs):
        run.epoch = epoch
        try:
            train = _train_epoch(run)
        except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
            _end(
                Status.OOM, epoch + 1, f"CUDA OOM at epoch {epoch + 1} with {run.cfg.to_flat()}: {err}", base
            )
            return
        if train is None:
            _end(Status.DIVERGED, epoch + 1, f"non-finite loss in epoch {epoch + 1}", base)
            return
        status = Status.COMPLETED if epoch + 1 == epochs else Status.RUNNING
        metrics = {**base, **train, "epoch": epoch + 1, "status": status}
        metrics.update(_evaluate(run, metrics))
        metrics.update(
            best_epoch=run.selected.epoch,
            best_value=run.selected.value,
            peak_mem_mb=max(gather(_peak_memory_mb(run.device))),
            **prefixed(run.selected.metrics, "selected"),
        )
        _report(run, metrics)
        if status == Status.COMPLETED and run.faults.save_logits is not None:
            _save_logits(run, Path(run.faults.save_logits))
        run.faults.kill_after_report(epoch + 1, rank=run.rank, world=run.world)


def _trial_metrics(run: Run, *, startup_s: float) -> dict[str, Any]:
    """What every report of this run carries: the world, the split, setup time and parameter counts."""
    return {
        "world_size": run.world,
        "split_hash": run.artefacts.split_hash,
        "startup_s": startup_s,
        "trainable_params": sum(t for _, t in run.model.param_counts.values()),
        "total_params": sum(n for n, _ in run.model.param_counts.values()),
    }


def _restore(run: Run) -> int:
    """Resume from this Train run's latest checkpoint, if it has one: the DeepSpeed states, this rank's
    RNG, the selection so far and (rank 0) its predictions. Returns the first epoch to run (0-based)."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as directory:
        state = checkpoint.load(run.model.engine, Path(directory), rank=run.rank)
        table = predictions.load(Path(directory)) if run.rank == 0 else None
    extra = state.extra
    run.selected = Selected(state.best_metric, extra.get("best_epoch"), extra.get("selected", {}), table)
    if extra.get("metrics") is not None:  # the results writer finds this attempt's predictions there
        run.resumed_report = {**extra["metrics"], "checkpoint_path": ckpt.path}
    log.info("rank %d resumes after epoch %d", run.rank, state.epoch)
    return state.epoch + 1


def _end(status: Status, epoch: int, message: str, base: Mapping[str, Any] | None = None) -> None:
    """The last report of a trial that stops before its last epoch: ``status`` (``oom``, ``diverged``)
    at the 1-based ``epoch`` it stopped in (0: while building), with a message and no checkpoint."""
    ray.train.report({**(base or {}), "status": status, "epoch": epoch, "message": message})


def _train_epoch(run: Run) -> dict[str, float] | None:
    """One epoch; None when the loss went non-finite on any rank.

    ``train/loss`` is the mean optimised loss over the epoch's steps (every rank runs the same number);
    ``train/accuracy`` counts the training batches as seen (augmented, sampler padding included) over all
    ranks: summed correct over summed samples, not a mean of per-rank accuracies.
    """
    engine = run.model.engine
    engine.train()
    tasks = list(run.data.classes)
    losses: list[float] = []
    correct = dict.fromkeys(tasks, 0)
    step_times: list[float] = []
    samples = 0
    loader = run.loader("train")
    total = len(loader)
    first_step_unix = None
    for step, batch in enumerate(loader):
        start = time.perf_counter()
        first_step_unix = first_step_unix or time.time()
        batch = to_device(batch, run.device, run.dtype)
        out = engine(batch)
        loss = run.faults.diverge(_loss(run, out, batch), step=run.epoch * total + step)
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


def _loss(run: Run, out: MDFOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``mdf_loss``; with balanced class weights each head's cross-entropy is weighted (same seg term)."""
    loss, parts = mdf_loss(out, batch, run.cfg.unet.aux_seg_weight)
    weights = run.data.class_weights
    if not weights:
        return loss
    weighted = sum(
        (
            F.cross_entropy(logits, batch[f"labels_{t}"], weight=weights[t])
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


def _evaluate(run: Run, epoch_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The epoch's ``val/`` metrics; when validation selects the epoch, its ``test/`` metrics too, and it
    becomes ``run.selected``. ``eval_time_s``: what evaluating them took."""
    started = time.perf_counter()
    val, val_split = evaluate(run, "val")
    out = dict(val)
    value = run.selection.value(val)  # identical on every rank: computed from gathered predictions
    if run.selection.improves(value, run.selected.value):
        test, test_split = evaluate_test(run)
        out.update(test)
        _select(run, value, {**epoch_metrics, **out}, [("val", val_split), ("test", test_split)])
    out["eval_time_s"] = time.perf_counter() - started
    return out


def _select(
    run: Run, value: float, metrics: Mapping[str, Any], splits: list[tuple[str, Gathered | None]]
) -> None:
    """Make the epoch of ``metrics`` the selected one: keep its metrics and (rank 0) its predictions."""
    epoch = int(metrics["epoch"])
    table = None
    if run.rank == 0:
        data = run.data
        table = pa.concat_tables(
            predictions.sample_table(split, epoch, g, data.classes, data.class_columns, data.samples)
            for split, g in splits
            if g is not None
        )
    kept = {k: v for k, v in metrics.items() if k.startswith(SELECTED_KEYS)}
    run.selected = Selected(value, epoch, kept, table)


def _report(run: Run, metrics: dict[str, Any]) -> None:
    """Report the epoch's metrics to Ray Train with a checkpoint of every rank (and the predictions)."""
    with tempfile.TemporaryDirectory(prefix="mdf-ckpt-") as tmp:
        extra = {
            "split_hash": run.artefacts.split_hash,
            "metrics": metrics,
            "best_epoch": run.selected.epoch,
            "selected": run.selected.metrics,
        }
        state = checkpoint.TrialState(
            run.epoch, run.selected.value, run.cfg.to_flat(), run.artefacts.label_space, extra
        )
        checkpoint.save(run.model.engine, Path(tmp), state, rank=run.rank, tokenizer=run.model.tokenizer)
        if run.rank == 0 and run.selected.predictions is not None:
            predictions.save(run.selected.predictions, Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


@torch.no_grad()
def _save_logits(run: Run, directory: Path) -> None:
    """The ``save_logits`` fault hook: every rank runs one validation batch (ZeRO-3 needs them in step);
    rank 0 saves the batch and its logits to ``directory/batch.pt``."""
    run.model.engine.eval()
    batch = next(iter(run.loader("val")))
    out = run.model.engine(to_device(batch, run.device, run.dtype))
    if run.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        logits = {k: v.float().cpu() for k, v in out.logits.items()}
        torch.save(
            {"batch": batch, "logits": logits[next(iter(logits))], "all_logits": logits},
            directory / "batch.pt",
        )


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _all_true(flag: bool, device: torch.device) -> bool:
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item() == 1.0)
