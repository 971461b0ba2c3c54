"""A per-arm ASHA scheduler: early stopping that compares a trial only with trials of its own arm."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler


class PerArmASHA(FIFOScheduler):
    """ASHA within each arm: trials are only compared with trials of the same arm (same scientific values).

    One ``ASHAScheduler`` per arm id (``trial.config["arm"]``); every Tune event is routed to the trial's
    arm's scheduler. Seeds are part of the trial, so an arm's seeds share a rung schedule.
    """

    def __init__(
        self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float
    ) -> None:
        super().__init__()
        self._metric, self._mode = metric, mode
        self._kwargs: dict[str, Any] = {
            "time_attr": "epoch",
            "metric": metric,
            "mode": mode,
            "max_t": max_t,
            "grace_period": grace_period,
            "reduction_factor": reduction_factor,
        }
        self._arms: dict[str, ASHAScheduler] = {}

    def _for(self, trial: Any) -> ASHAScheduler:
        arm = str(trial.config.get("arm", ""))
        if arm not in self._arms:
            self._arms[arm] = ASHAScheduler(**self._kwargs)
        return self._arms[arm]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if "epoch" not in result or self._kwargs["metric"] not in result:
            return TrialScheduler.CONTINUE  # e.g. an infeasible trial's single report
        return str(self._for(trial).on_trial_result(tune_controller, trial, result))

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"PerArmASHA({len(self._arms)} arms)"
