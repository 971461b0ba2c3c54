"""Tune-side pieces of a sweep that run in the driver: the results writer, the error guard, the budget
stopper, and a per-arm ASHA scheduler.

The results writer is the *one* writer of an experiment's Parquet tables. Trial status mapping:

- ``completed`` / ``diverged`` / ``oom`` / ``infeasible``: the trial's last reported ``status``;
- ``stopped_early``: Tune ended the trial (ASHA) while its last report still said ``running``;
- ``error``: the trial raised (after Tune's retries); the message is the first line of the error.

A trial row carries the metrics of the trial's *selected* epoch (the loop reports them under
``selected/``; README, "What a result means": every number shown for a trial comes from the epoch validation selected), with
``best_epoch`` naming it; an epoch row carries that epoch's own metrics. The Optuna searcher is told the
study metric at the selected epoch too. The writer also copies each attempt's per-sample predictions out
of the checkpoint that reported a newly selected epoch (``train/predictions.py`` says why that way).

Where a trial's seconds went (``train/phases.py`` defines each phase): every report carries the
workers' totals so far; the trial row takes them from its last report, with ``launch_s`` and
``startup_s`` counted from the moment Tune started the attempt (``on_trial_start``, this process's
clock) and ``wall_s`` from then until its last report arrived here; ``other_s`` is what the phases
leave of ``wall_s``. Epoch rows keep the epoch's own metrics only, not these run totals.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna
from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from mdf_search.config import TrialConfig
from mdf_search.results.schema import Status
from mdf_search.results.store import ResultsStore
from mdf_search.train import predictions
from mdf_search.train.phases import RUN_KEYS, trial_phases
from mdf_search.train.selection import Selection

log = logging.getLogger(__name__)
TUNE_KEYS = (
    "config",
    "trial_id",
    "experiment_id",
    "date",
    "timestamp",
    "pid",
    "hostname",
    "node_ip",
    "done",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "should_checkpoint",
    "experiment_tag",
)
SELECTED = "selected/"  # the loop's prefix of the selected epoch's metrics


def selected_view(result: dict[str, Any]) -> dict[str, Any]:
    """A report as its trial's row sees it: the selected epoch's metrics replace the reporting epoch's."""
    own = {k: v for k, v in result.items() if not k.startswith(SELECTED)}
    return {**own, **{k.removeprefix(SELECTED): v for k, v in result.items() if k.startswith(SELECTED)}}


def _scalar_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """A report's scalar metrics as columns (lists and dicts as JSON), without Tune's bookkeeping, the
    row's own core columns and the run totals of ``train/phases.py`` (the trial row computes those)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if (
            key in TUNE_KEYS
            or key in RUN_KEYS
            or key in ("status", "message", "epoch", "world_size", "split_hash")
        ):
            continue
        if key.startswith(SELECTED):  # an epoch row holds its own epoch's metrics only
            continue
        if isinstance(value, bool | int | float) or value is None:
            out[key] = value
        elif isinstance(value, list | dict):
            out[key] = json.dumps(value)
    return out


class ResultsWriter(Callback):
    """Writes ``trials`` and ``epochs`` Parquet parts as Tune reports arrive (driver process)."""

    def __init__(
        self,
        store_root: str,
        experiment: str,
        provenance: dict[str, str],
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        selection: Selection | None = None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        """``gpus_per_worker``: the GPUs each worker of a trial holds (the spec's resources), for
        ``gpu_hours``; 0 counts ``cpu_hours`` instead."""
        self.store = ResultsStore(store_root)
        self.experiment = experiment
        self.provenance = provenance
        self.on_event = on_event
        self.selection = selection or Selection()
        self.gpus_per_worker = gpus_per_worker
        self.errors: list[tuple[str, str]] = []
        self.finished = 0
        self._predictions_at: dict[str, int] = {}  # "<trial>-a<attempt>" → selected epoch copied
        self._started: dict[str, float] = {}  # "<trial>-a<attempt>" → when Tune started it (time.time())
        self._arrived: dict[str, float] = {}  # "<trial>-a<attempt>" → when its last report arrived

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; the event sink (a console) stays here.
        return {**self.__dict__, "on_event": None}

    def _base(self, trial: Any, attempt: int | None = None) -> dict[str, Any]:
        config = trial.config
        params = dict(config.get("params", {}))
        try:
            config_hash = TrialConfig.from_flat(params).config_hash()
        except ValueError:
            config_hash = ""
        return {
            "experiment": self.experiment,
            "trial_id": trial.trial_id,
            "attempt": attempt or _attempt(trial),
            "arm": config.get("arm", ""),
            "config_hash": config_hash,
            "host": socket.gethostname(),
            **self.provenance,
            **params,
        }

    def _trial_row(
        self, trial: Any, status: str, message: str = "", attempt: int | None = None
    ) -> dict[str, Any]:
        last = dict(trial.last_result or {})
        key = _attempt_key(trial, attempt)
        phases = trial_phases(
            last,
            started_unix=self._started.get(key),
            arrived_unix=self._arrived.get(key),
            tune_wall_s=float(last.get("time_total_s", 0.0) or 0.0),
        )
        wall = phases["wall_s"]
        workers = int(trial.config.get("params", {}).get("run.workers", 1))
        gpus = self.gpus_per_worker * workers
        row = {
            **self._base(trial, attempt),
            "status": status,
            "message": message or str(last.get("message", "") or ""),
            "epochs": int(last.get("epoch", 0) or 0),
            "wall_s": wall,
            "gpu_hours": wall * gpus / 3600,
            "cpu_hours": wall * workers / 3600 if not gpus else 0.0,
            "world_size": int(last.get("world_size", workers) or workers),
            "split_hash": str(last.get("split_hash", "") or ""),
            "features_reused": str(last.get("features_reused", "") or ""),  # train/features.py
            "selection_metric": self.selection.metric,
            "selection_mode": self.selection.mode,
        }
        row.update(_scalar_metrics(selected_view(last)))
        row.update(phases)
        return row

    def _copy_predictions(self, trial_id: str, attempt: int, result: dict[str, Any]) -> None:
        """Copy the attempt's predictions out of the reporting checkpoint when it selected a new epoch
        (or this writer has not copied this attempt's yet: a resumed attempt, a restarted driver)."""
        epoch, path = result.get("best_epoch"), result.get("checkpoint_path")
        key = f"{trial_id}-a{attempt}"
        if epoch is None or not path or self._predictions_at.get(key) == epoch:
            return
        try:
            table = predictions.read_checkpoint(self.store.fs, str(path))
        except OSError as err:  # e.g. the checkpoint was already rotated away; the next report carries them
            log.warning("predictions of %s: cannot read checkpoint %s (%s)", key, path, err)
            return
        if table is not None:
            self.store.write_predictions(trial_id, attempt, table)
            self._predictions_at[key] = int(epoch)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Tune started an attempt of ``trial`` (its actor is up): the start its phases count from."""
        self._started[_attempt_key(trial)] = time.time()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._arrived[_attempt_key(trial)] = time.time()
        base = self._base(trial)
        epoch_row = {k: base[k] for k in ("experiment", "trial_id", "attempt", "arm")}
        epoch_row.update(
            epoch=int(result.get("epoch", result.get("training_iteration", 0))),
            status=str(result.get("status", Status.RUNNING)),
            **_scalar_metrics(result),
        )
        self.store.write_epoch(epoch_row)
        self._copy_predictions(base["trial_id"], base["attempt"], result)
        self.store.write_trial(self._trial_row(trial, Status.RUNNING))
        self._emit("result", trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        status = str(last.get("status", Status.RUNNING))
        if status == Status.RUNNING:
            status = Status.STOPPED_EARLY
        self.store.write_trial(self._trial_row(trial, status))
        self.finished += 1
        self._emit(status, trial, selected_view(last))

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """An attempt failed and Tune retries the trial (a lost node, a killed process): the failed
        attempt's row ends as ``error`` with its message, the trial goes on as the next attempt, and the
        sweep does not count it as a failed configuration."""
        message = _error_message(trial)
        failed = max(1, int(getattr(trial, "num_failures", 1)))  # Tune counted this failure already
        last = message.splitlines()[-1] if message else "error"
        self.store.write_trial(self._trial_row(trial, Status.ERROR, f"retried: {last}", attempt=failed))
        self._emit("retried", trial, {"message": message})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        message = _error_message(trial)
        self.errors.append((trial.trial_id, message))
        failed = max(1, int(getattr(trial, "num_failures", 1)))  # Tune counted this failure already
        self.store.write_trial(
            self._trial_row(trial, Status.ERROR, message.splitlines()[-1] if message else "error", failed)
        )
        self.finished += 1
        self._emit(Status.ERROR, trial, {"message": message})

    def _emit(self, event: str, trial: Any, result: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event, {"trial_id": trial.trial_id, "arm": trial.config.get("arm", ""), **result})


def _attempt(trial: Any) -> int:
    """The 1-based attempt a Tune trial is on (Tune counts its failures)."""
    return int(getattr(trial, "num_failures", 0)) + 1


def _attempt_key(trial: Any, attempt: int | None = None) -> str:
    """``<trial>-a<attempt>``: the attempt a Tune trial is on, or ``attempt``."""
    return f"{trial.trial_id}-a{attempt or _attempt(trial)}"


def _error_message(trial: Any) -> str:
    text = getattr(trial, "error_msg", None) or ""
    path = getattr(trial, "error_file", None)
    if not text and path:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            text = ""
    return str(text).strip()


class SweepGuard(Stopper):
    """Stops the whole sweep when the first ``max_initial_errors`` finished trials all errored (a code bug
    burns the budget otherwise) or when the GPU-hour budget is spent."""

    def __init__(
        self,
        writer: ResultsWriter,
        max_initial_errors: int = 3,
        max_gpu_hours: float = 0.0,
        gpus_per_trial: float = 0.0,
    ) -> None:
        self.writer = writer
        self.max_initial_errors = max_initial_errors
        self.max_gpu_hours = max_gpu_hours
        self.gpus_per_trial = gpus_per_trial
        self.started = time.monotonic()
        self.reason = ""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        errors = len(self.writer.errors)
        if errors >= self.max_initial_errors and errors == self.writer.finished:
            self.reason = (
                f"the first {errors} trials all failed; the first error:\n{self.writer.errors[0][1]}"
            )
            return True
        if self.max_gpu_hours > 0 and self.gpus_per_trial > 0:
            # a conservative upper bound: every trial slot busy since the start
            used = (time.monotonic() - self.started) / 3600 * self.gpus_per_trial
            if used >= self.max_gpu_hours:
                self.reason = f"GPU-hour budget spent ({used:.2f} of {self.max_gpu_hours})"
                return True
        return False


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


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that survives a driver killed between Optuna's ``tell`` and Tune's own checkpoint.

    The persistent study then already holds the trial as finished while Tune restores it as unfinished
    and reruns it (its Train run re-reports the final result); Optuna refuses to update a finished trial.
    The study keeps the value it was told, and the sweep goes on.

    It also adopts the study's orphans: a driver killed after Optuna's ``ask`` but before Tune's next
    snapshot leaves RUNNING trials in the study that the restored Tune never heard of. Asking anew
    would leave them RUNNING forever, and the grid sampler, counting their grid points as taken, would
    hand a taken point out twice and skip theirs. A new Tune trial takes over the oldest orphan
    instead (its params are already set), so each planned trial runs once and the study's trial
    numbers stay continuous.
    """

    _orphans: list[Any] | None = None  # RUNNING study trials no Tune trial owns; None: not listed yet

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._orphans = None  # the snapshot's list is stale: list them again against its trials

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if callable(self._space) and trial_id not in self._ot_trials:
            orphan = self._adopt_orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = orphan
                log.info("trial %s takes over the study's orphaned trial %d", trial_id, orphan.number)
        return super().suggest(trial_id)

    def _adopt_orphan(self) -> optuna.Trial | None:
        study = self._ot_study
        assert study is not None  # set up with the define-by-run space
        if self._orphans is None:
            known = {t.number for t in self._ot_trials.values()}
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            self._orphans = sorted((t for t in running if t.number not in known), key=lambda t: t.number)
        if not self._orphans:
            return None
        frozen = self._orphans.pop(0)
        return optuna.Trial(study, frozen._trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return  # an oom/diverged/infeasible report: no value to tell (the trial fails in the study)
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s was already finished in the Optuna study (resumed sweep)", trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """The study is told the study metric at the trial's selected epoch, not at its last one; a
        trial that ended without one (``oom``, ``diverged``, ``infeasible``) failed (Optuna's default for
        a result without the metric is ``PRUNED``, which samplers read as a stopped, valid trial)."""
        if result and isinstance(self.metric, str) and f"{SELECTED}{self.metric}" in result:
            result = {**result, self.metric: result[f"{SELECTED}{self.metric}"]}
        elif result and isinstance(self.metric, str) and self.metric not in result:
            error = True
        try:
            super().on_trial_complete(trial_id, result=result, error=error)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s was already finished in the Optuna study (resumed sweep)", trial_id)


ROOT_ATTR = "experiment_root"  # the Optuna study's user attribute naming the experiment it belongs to


def claim_study(storage: Any, name: str, root: str, direction: str) -> None:
    """Create the study ``name`` in ``storage`` for the experiment at ``root``, or load it when it is
    this experiment's own (a sweep restarted before Tune saved its state); a study of another experiment
    is refused with the fix."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="minimize" if direction == "min" else "maximize",
    )
    owner = study.user_attrs.get(ROOT_ATTR)
    if owner is None and not study.trials:
        study.set_user_attr(ROOT_ATTR, root)
    elif owner != root:
        where = _without_password(str(getattr(storage, "url", storage)))
        raise FileExistsError(
            f"{where}: the Optuna study {name!r} already exists (experiment {owner or 'unknown'}, "
            f"{len(study.trials)} trials); continue it with `mdf-search resume {owner or '<experiment dir>'}`, "
            f"or give this experiment another name"
        )


def _without_password(url: str) -> str:
    """``url`` with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: nothing to mask
        return url
