"""Driver side of one trial: a Ray Train ``TorchTrainer`` over ``train_loop_per_worker``.

:func:`make_trainer` builds the trainer for ``mdf-search train`` and for a Ray Tune trial (``search/``),
where the Train run is named after the Tune trial id, so a restored trial resumes its own checkpoints.
The caller prepares the trial's data first (``train/builders.prepare_trial_data``).
"""

from __future__ import annotations

import json
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
from mdf_search.train.loop import train_loop_per_worker
from mdf_search.train.selection import Selection

CHECKPOINTS_TO_KEEP = 2


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


def use_gpu(cfg: TrialConfig) -> bool:
    if cfg.run.device == "cpu":
        return False
    if cfg.run.device == "cuda":
        return True
    return ray.cluster_resources().get("GPU", 0) > 0


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
) -> Any:
    """The trial's ``TorchTrainer``. ``selection``: the study's metric and mode, which pick the trial's
    epoch (default ``val/macro_f1``, max, as ``mdf-search train`` uses); ``faults``: test hooks (default
    none); ``progress``: a ``train/progress.py`` actor rank 0 publishes its steps to."""
    gpu = use_gpu(cfg)
    env = worker_env()
    if not gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "params": cfg.to_flat(),
            "data": data.to_dict(),
            "selection": (selection or Selection()).to_dict(),
            "faults": (faults or Faults()).to_dict(),
            "progress": progress,
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.run.workers, use_gpu=gpu, resources_per_worker={"CPU": 1}
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
