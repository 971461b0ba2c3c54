"""``train_loop_per_worker``: one DeepSpeed rank of one trial, run by Ray Train.

It reads top to bottom: read the Train run's latest checkpoint (a finished trial started again reports
its final metrics from it and stops), set up the rank (``train/worker.py``: data, then engine),
``start = _restore(run, ...)``, then ``for epoch in range(start, epochs)``: train, evaluate on the whole
validation split (predictions gathered from every rank and de-duplicated by sample index, so the metrics
are those of the split, not a mean of per-rank metrics), then report metrics and the checkpoint that
``run.checkpoint`` asks for (``train/checkpoint.py``: model, light or none) to Ray Train. A trial that
stops early ends with one report from ``_end``.

Every report also carries where this rank's time went so far (``train/phases.py``: ``launch_s``,
``init_s``, ``data_s``, ``train_s``, ``eval_s``, ``ckpt_s``, ``report_s``, ``other_s``, ``elapsed_s``,
``startup_s``): the loop runs each step inside its phase of the rank's :class:`PhaseClock`.

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

Fault hooks (``train/faults.py``) fire at four points: before each training batch, on each training
loss, after the last report, after every report. They are inert unless a test sets them.
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
from ray.train import CheckpointUploadMode

from mdf_search.config import TrialConfig
from mdf_search.metrics import prefixed
from mdf_search.model.mdf import MDFOutput, mdf_loss
from mdf_search.results.schema import Status
from mdf_search.train import checkpoint, predictions
from mdf_search.train.checkpoint import Kind, Resume
from mdf_search.train.evaluate import evaluate, evaluate_test, gather, to_device
from mdf_search.train.phases import PhaseClock
from mdf_search.train.predictions import Gathered
from mdf_search.train.worker import Run, Selected, setup_run

log = logging.getLogger(__name__)
SELECTED_KEYS = ("train/", "val/", "test/", "train_loss")  # what the selected epoch's metrics keep


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: set up this rank, resume, run the remaining epochs. ``config``: Ray Train's
    loop config (:func:`~mdf_search.train.worker.setup_run` says what it holds)."""
    clock = PhaseClock(config.get("launched_unix"))  # the workers are ready: launch_s ends here
    try:
        _run_trial(config, clock)
    finally:
        clock.dump_profiles(dist.get_rank() if dist.is_initialized() else 0)  # only when profiling


def _run_trial(config: dict[str, Any], clock: PhaseClock) -> None:
    """Report again if the trial had finished; else set up this rank, resume, run the epochs left."""
    epochs = TrialConfig.from_flat(config["params"]).optim.epochs
    with clock.phase("ckpt_s"):
        latest, action = _latest(epochs)
    if action == Resume.REPORT_AGAIN and latest is not None:
        # Restarted after its last checkpoint (e.g. the sweep driver died between the final report and Tune
        # recording it): report the final metrics again so the trial ends with its result, not without one.
        ray.train.report(latest)
        return
    with clock.phase("init_s"):
        import deepspeed  # it picks its accelerator when imported: here, where DS_ACCELERATOR is set

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        run = setup_run(config, clock)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
        _end(Status.OOM, 0, f"OOM while building: {err}", clock=clock)
        return
    base = _trial_metrics(run)
    start = _restore(run) if action == Resume.MODEL else 0
    for epoch in range(start, epochs):
        run.epoch = epoch
        try:
            with run.clock.phase("train_s"):
                train = _train_epoch(run)
        except torch.cuda.OutOfMemoryError as err:  # a GPU's, or Faults.oom_at_step's
            message = f"CUDA OOM at epoch {epoch + 1} with {run.cfg.to_flat()}: {err}"
            _end(Status.OOM, epoch + 1, message, base, clock=run.clock)
            return
        if train is None:
            _end(Status.DIVERGED, epoch + 1, f"non-finite loss in epoch {epoch + 1}", base, clock=run.clock)
            return
        status = Status.COMPLETED if epoch + 1 == epochs else Status.RUNNING
        metrics = {**base, **train, "epoch": epoch + 1, "status": status}
        with run.clock.phase("eval_s"):
            metrics.update(_evaluate(run, metrics))
        with run.clock.phase("report_s"):
            metrics.update(
                best_epoch=run.selected.epoch,
                best_value=run.selected.value,
                peak_mem_mb=max(gather(_peak_memory_mb(run.device))),
                **prefixed(run.selected.metrics, "selected"),
            )
        _report(run, metrics, newly_selected=run.selected.epoch == epoch + 1)
        if status == Status.COMPLETED and run.faults.save_logits is not None:
            _save_logits(run, Path(run.faults.save_logits))
        run.faults.kill_after_report(epoch + 1, rank=run.rank, world=run.world)


def _trial_metrics(run: Run) -> dict[str, Any]:
    """What every report of this run carries: the world, the split and parameter counts."""
    return {
        "world_size": run.world,
        "split_hash": run.artefacts.split_hash,
        "features_reused": run.model.features_reused,  # train/features.py
        "trainable_params": sum(t for _, t in run.model.param_counts.values()),
        "total_params": sum(n for n, _ in run.model.param_counts.values()),
    }


def _latest(epochs: int) -> tuple[dict[str, Any] | None, Resume]:
    """What this Train run's latest checkpoint asks of a (re)started run (``checkpoint.resume_action``),
    and for ``REPORT_AGAIN`` the report to repeat (with its checkpoint's path: the results writer finds
    the attempt's predictions there). Reads ``trial.json`` only."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, Resume.FRESH
    with ckpt.as_directory() as directory:
        state = checkpoint.read_state(Path(directory))
        model = checkpoint.has_model(Path(directory))
    metrics = state.extra.get("metrics")
    action = checkpoint.resume_action(
        state.epoch, has_model=model, has_metrics=metrics is not None, epochs=epochs
    )
    if action == Resume.FRESH:
        log.info("the latest checkpoint (epoch %d) keeps no model state: starting over", state.epoch + 1)
    report = {**metrics, "checkpoint_path": ckpt.path} if metrics is not None else None
    return report, action


def _restore(run: Run) -> int:
    """Resume from this Train run's latest checkpoint (one with model state): the DeepSpeed states, this
    rank's RNG, the selection so far and (rank 0) its predictions. Returns the first epoch to run
    (0-based)."""
    ckpt = ray.train.get_checkpoint()
    assert ckpt is not None  # _latest said Resume.MODEL
    with run.clock.phase("ckpt_s"), ckpt.as_directory() as directory:
        state = checkpoint.load(run.model.engine, Path(directory), rank=run.rank)
        table = predictions.load(Path(directory)) if run.rank == 0 else None
    extra = state.extra
    run.selected = Selected(state.best_metric, extra.get("best_epoch"), extra.get("selected", {}), table)
    log.info("rank %d resumes after epoch %d", run.rank, state.epoch + 1)
    return state.epoch + 1


def _end(
    status: Status,
    epoch: int,
    message: str,
    base: Mapping[str, Any] | None = None,
    *,
    clock: PhaseClock,
) -> None:
    """The last report of a trial that stops before its last epoch: ``status`` (``oom``, ``diverged``)
    at the 1-based ``epoch`` it stopped in (0: while building), with a message and no checkpoint."""
    report = {**(base or {}), "status": status, "epoch": epoch, "message": message}
    ray.train.report({**report, **clock.report()})


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
    for step, batch in enumerate(run.clock.iterate(loader)):  # the waits for batches count as data time
        run.clock.step_started()
        start = time.perf_counter()
        first_step_unix = first_step_unix or time.time()
        run.faults.at_step(run.epoch * total + step, rank=run.rank, world=run.world)
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


def _report(run: Run, metrics: dict[str, Any], *, newly_selected: bool) -> None:
    """Report the epoch's metrics to Ray Train with the checkpoint ``run.checkpoint`` asks for: model
    state of every rank, a light one (rank 0's trial.json and predictions) or none.

    The checkpoint is persisted to the run's storage before the report (``ckpt_s``), so the report carries
    its own epoch's checkpoint time; Ray Train then registers the persisted directory as it is."""
    kind = checkpoint.checkpoint_kind(
        run.cfg.run.checkpoint,
        last_epoch=metrics["status"] == Status.COMPLETED,
        newly_selected=newly_selected,
    )
    with tempfile.TemporaryDirectory(prefix="mdf-ckpt-") as tmp:
        with run.clock.phase("ckpt_s"):
            persisted, name = _save(run, Path(tmp), kind, metrics)
        with run.clock.phase("report_s"):
            metrics.update(run.clock.report())  # this report's own call is in the next one's report_s
            ray.train.report(
                metrics,
                checkpoint=persisted,
                checkpoint_dir_name=name,
                checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
            )


def _save(
    run: Run, directory: Path, kind: Kind, metrics: dict[str, Any]
) -> tuple[ray.train.Checkpoint | None, str | None]:
    """Write this rank's part of a ``kind`` checkpoint into ``directory`` and persist it to the run's
    storage under one name for every rank; (None, None) when this rank has nothing to report."""
    if kind == Kind.NONE or (kind == Kind.LIGHT and run.rank != 0):
        return None, None
    extra = {
        "split_hash": run.artefacts.split_hash,
        "metrics": metrics,
        "best_epoch": run.selected.epoch,
        "selected": run.selected.metrics,
    }
    state = checkpoint.TrialState(
        run.epoch, run.selected.value, run.cfg.to_flat(), run.artefacts.label_space, extra
    )
    storage = ray.train.get_context().get_storage()
    if kind == Kind.MODEL:  # a collective: every rank saves its shards
        checkpoint.save(run.model.engine, directory, state, rank=run.rank, tokenizer=run.model.tokenizer)
        name = gather(storage.make_default_checkpoint_dir_name() if run.rank == 0 else None)[0]
    else:
        checkpoint.write_state(directory, state, Kind.LIGHT)
        name = storage.make_default_checkpoint_dir_name()
    if run.rank == 0 and run.selected.predictions is not None:
        predictions.save(run.selected.predictions, directory)
    persisted = storage.persist_current_checkpoint(ray.train.Checkpoint.from_directory(str(directory)), name)
    return persisted, name


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
