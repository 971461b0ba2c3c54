"""The logger callbacks ``tracking.py`` adds: Ray Tune's MLflow and W&B callbacks, one run per trial,
grouped by arm (an ``arm`` tag; the W&B group), with the trial's flat params and per-epoch metrics.

A module of its own because importing Ray's integrations costs a second or more: only a study that asks
for tracking loads it. The classes live at module level: Tune pickles its callbacks with its state.
"""

from __future__ import annotations

import os
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from mdf_search.search.keys import final_status
from mdf_search.search.tracking import _step, epoch_metrics, flat_config

WANDB_MODE = "WANDB_MODE"


class ArmMLflowLoggerCallback(MLflowLoggerCallback):
    """Ray's MLflow callback with one run per trial tagged by arm, flat params, metrics by epoch."""

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_runs:  # a retried attempt: the same run goes on
            return
        arm = str(trial.config.get("arm", ""))
        tags = {**(self.tags or {}), "trial_name": str(trial), "trial_id": trial.trial_id, "arm": arm}
        run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
        self._trial_runs[trial] = run.info.run_id
        self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=flat_config(trial))

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        self.mlflow_util.log_metrics(
            run_id=self._trial_runs[trial],
            metrics_to_log=epoch_metrics(result),
            step=_step(result, iteration),
        )

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial not in self._trial_runs:
            return
        status = final_status(trial.last_result, failed)
        from mlflow import MlflowClient  # the tracking URI Ray's util set up

        MlflowClient().set_tag(self._trial_runs[trial], "status", status)
        super().log_trial_end(trial, failed)


class ArmWandbLoggerCallback(WandbLoggerCallback):
    """Ray's W&B callback with the arm as each run's group, flat params, metrics by epoch."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Ray's set-up, which asks for an API key unless ``WANDB_MODE`` says offline: ``mode: offline``
        in the space file says so too (for the set-up only; the runs get it as ``wandb.init``'s mode)."""
        offline = self.kwargs.get("mode") == "offline" and WANDB_MODE not in os.environ
        if offline:
            os.environ[WANDB_MODE] = "offline"
        try:
            super().setup(*args, **kwargs)
        finally:
            if offline:
                os.environ.pop(WANDB_MODE, None)

    def log_trial_start(self, trial: Any) -> None:
        exclude = [*self._exclude_results, *self.excludes, "config"]
        init = {
            "id": trial.trial_id,
            "name": str(trial),
            "resume": "allow",  # a retried attempt or a resumed sweep continues the trial's run
            "reinit": True,
            "allow_val_change": True,
            "group": str(trial.config.get("arm", "")),
            "project": self.project,
            "config": flat_config(trial),
            **self.kwargs,
        }
        self._start_logging_actor(trial, exclude, **init)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        step = _step(result, iteration)
        super().log_trial_result(iteration, trial, {**epoch_metrics(result), "training_iteration": step})
