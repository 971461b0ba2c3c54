"""Tracking: the ``tracking:`` block of a space file → Ray Tune's own logger callbacks, grouped by arm.

- ``mlflow``: Ray's ``MLflowLoggerCallback``; one MLflow run per Tune trial in the MLflow experiment
  ``experiment_name`` (default: the study's experiment), tagged ``arm``, ``trial_id``, ``experiment``
  and, when it ends, ``status`` (the trials table's final status), so that MLflow's UI groups and filters
  the runs by arm.
- ``wandb``: Ray's ``WandbLoggerCallback``; one W&B run per Tune trial (its id is the trial id) in the
  project ``project`` (default: the experiment), its W&B group the arm. ``mode: offline`` (or
  ``WANDB_MODE=offline``) writes the runs to disk for ``wandb sync``: under ``WANDB_DIR`` when set, else
  under each trial's directory in Ray's session folder.
- ``tensorboard``: Ray's ``TBXLoggerCallback``: event files beside each trial's Tune directory.

Each run gets the trial's flat params (``optim.lr``, ``fusion.levels``, ..., plus ``arm``) as its
config, and every epoch's metrics with the epoch as the step: the reporting epoch's own metrics (the
``selected/`` copies and Tune's bookkeeping left out). The Parquet tables stay the study's record; a
tracker is a view of it. A resumed sweep starts a new tracking run for a trial it resumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mdf_search.search.keys import SELECTED, TUNE_KEYS

CONFIG_KEYS = ("params", "arm")  # Tune's config of a trial


def flat_config(trial: Any) -> dict[str, Any]:
    """A trial's flat params and its arm: what a tracking run records as its config."""
    config = trial.config
    return {**dict(config.get("params", {})), "arm": str(config.get("arm", ""))}


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """A report's own numeric metrics (no ``selected/`` copies, no Tune bookkeeping, no config)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in TUNE_KEYS or key.startswith(SELECTED):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _step(result: Mapping[str, Any], iteration: int) -> int:
    return int(result.get("epoch") or result.get("training_iteration") or iteration)


def tracking_callbacks(tracking: Any, experiment: str) -> list[Any]:
    """The logger callbacks of a spec's ``tracking`` block (``spec_schema.Tracking``); none for ``none``."""
    if tracking.backend == "mlflow":
        from mdf_search.search.trackers import ArmMLflowLoggerCallback  # Ray's integrations: only here

        return [
            ArmMLflowLoggerCallback(
                tracking.tracking_uri,
                experiment_name=tracking.experiment_name or experiment,
                tags={"experiment": experiment},
            )
        ]
    if tracking.backend == "wandb":
        mode = tracking.mode or os.environ.get("WANDB_MODE") or None
        where = os.environ.get("WANDB_DIR")  # the logging actors do not inherit it: passed as dir=
        options = (("entity", tracking.entity), ("mode", mode), ("dir", where))
        extra: dict[str, Any] = {k: v for k, v in options if v}
        from mdf_search.search.trackers import ArmWandbLoggerCallback

        return [ArmWandbLoggerCallback(project=tracking.project or experiment, tags=[experiment], **extra)]
    if tracking.backend == "tensorboard":
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]
    return []
