"""Driver side of one trial: a Ray Train ``TorchTrainer`` over ``train_loop_per_worker``.

:func:`make_trainer` builds the trainer for ``mdf-search train`` and for a Ray Tune trial (``search/``),
where the Train run is named after the Tune trial id, so a restored trial resumes its own checkpoints.
The caller prepares the trial's data first (``train/builders.prepare_trial_data``).

This module loads in the process that launches a trial (for a sweep, the Tune trial's driver): the
epoch loop's imports (transformers, DeepSpeed, the model) load in the Ray Train workers only, through
:func:`train_loop`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from mdf_search.cluster import worker_env
from mdf_search.config import TrialConfig
from mdf_search.train.builders import TrialData
from mdf_search.train.faults import Faults
from mdf_search.train.selection import Selection

CHECKPOINTS_TO_KEEP = 2
# How often Ray Train's controller polls its workers (Ray's default 2 s): each trial's end, and each
# report reaching Tune, waits for the next poll. Propagated by Ray Train to the controller it starts.
CONTROLLER_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
CONTROLLER_POLL_S = "0.25"


class LeanTorchTrainer(TorchTrainer):
    """``TorchTrainer`` without Ray Data's dataset manager: a trial reads its own preprocessed cache and
    passes no Ray Dataset, yet Ray Train 2.60 starts a ``DatasetManager`` actor (one more Python process
    per trial) for every run. Every other default callback stays."""

    def _create_default_callbacks(self) -> list[Any]:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

        callbacks = super()._create_default_callbacks()  # type: ignore[misc]  # Ray Train v2's private hook
        if self.datasets:
            return list(callbacks)
        return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]


class EpochLog(UserCallback):
    """A Train callback appending rank 0's metrics of every report as one JSON line (``epochs.jsonl``).

    It runs in Ray Train's controller actor, not in the driver, so it writes to a path, not to memory.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        record = {**metrics[0], "checkpoint": checkpoint.path if checkpoint is not None else None}
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        return None


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's entry point in every worker: ``train/loop.py``'s ``train_loop_per_worker``, imported
    there (the launching process never loads the model's or DeepSpeed's modules)."""
    from mdf_search.train.loop import train_loop_per_worker

    train_loop_per_worker(config)


def use_gpu(cfg: TrialConfig) -> bool:
    if cfg.run.device == "cpu":
        return False
    if cfg.run.device == "cuda":
        return True
    return ray.cluster_resources().get("GPU", 0) > 0


def placement(workers: int, gpu: bool) -> str:
    """The default placement of a trial's workers: a trial of two or more GPU workers on one node
    (``STRICT_PACK``: Ray's ``PACK`` may split it across nodes when one node lacks room at the moment,
    and its collectives then cross the network); else ``PACK``, Ray Train's default."""
    return "STRICT_PACK" if gpu and workers > 1 else "PACK"


def make_trainer(
    cfg: TrialConfig,
    data: TrialData,
    *,
    name: str,
    storage_path: str,
    callbacks: Sequence[Any] = (),
    faults: Faults | None = None,
    progress: Any = None,
    max_failures: int = 0,
    storage_filesystem: Any = None,
    selection: Selection | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    placement_strategy: str | None = None,
) -> Any:
    """The trial's ``TorchTrainer``. ``selection``: the study's metric and mode, which pick the trial's
    epoch (default ``val/macro_f1``, max, as ``mdf-search train`` uses); ``faults``: test hooks (default
    none); ``progress``: a ``train/progress.py`` actor rank 0 publishes its steps to;
    ``cpus_per_worker``/``gpus_per_worker``: what each worker holds (the spec's ``resources``; a GPU
    fraction lets trials share a GPU, 0 on a GPU run: one whole GPU per worker, Ray Train's default);
    ``placement_strategy``: Ray's for the workers' placement group (:func:`placement`'s by default)."""
    gpu = use_gpu(cfg)
    env = worker_env()
    if not gpu:
        env["DS_ACCELERATOR"] = "cpu"
    per_worker: dict[str, float] = {"CPU": cpus_per_worker}
    if gpu and gpus_per_worker > 0:
        per_worker["GPU"] = gpus_per_worker
    os.environ.setdefault(CONTROLLER_POLL_ENV, CONTROLLER_POLL_S)
    return LeanTorchTrainer(
        train_loop,
        train_loop_config={
            "params": cfg.to_flat(),
            "data": data.to_dict(),
            "selection": (selection or Selection()).to_dict(),
            "faults": (faults or Faults()).to_dict(),
            "progress": progress,
            "launched_unix": time.time(),  # the trial's start as its workers see it (train/phases.py)
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.run.workers,
            use_gpu=gpu,
            resources_per_worker=per_worker,
            placement_strategy=placement_strategy or placement(cfg.run.workers, gpu),
        ),
        run_config=RunConfig(  # type: ignore[call-arg]  # ray.train.RunConfig (v2) has worker_runtime_env
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": env},
        ),
    )
