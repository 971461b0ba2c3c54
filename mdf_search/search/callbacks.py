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
import math
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback, Stopper

from mdf_search.results.schema import Status
from mdf_search.results.store import ResultsStore
from mdf_search.search.keys import SELECTED, TUNE_KEYS, config_hash, final_status, selected_view
from mdf_search.search.optuna_search import ROOT_ATTR, ResumableOptunaSearch, claim_study
from mdf_search.search.schedulers import PerArmASHA
from mdf_search.train import predictions
from mdf_search.train.phases import RUN_KEYS, trial_phases
from mdf_search.train.selection import Selection

__all__ = [  # the scheduler and the searcher moved to their own modules; their names stay importable here
    "ROOT_ATTR",
    "SELECTED",
    "PerArmASHA",
    "ResultsWriter",
    "ResumableOptunaSearch",
    "SweepGuard",
    "claim_study",
    "selected_view",
]
log = logging.getLogger(__name__)


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
        metrics: Sequence[str] = (),
    ) -> None:
        """``gpus_per_worker``: the GPUs each worker of a trial holds (the spec's resources), for
        ``gpu_hours``; 0 counts ``cpu_hours`` instead. ``metrics``: every metric the study declares
        (``trial.declared_metrics``): each table part carries their columns from its first row on."""
        self.store = ResultsStore(store_root, metrics=metrics)
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
        self.spent: dict[str, float] = {}  # "<trial>-a<attempt>" → gpu_hours of its latest row
        self.carried = Spent()  # what earlier sessions recorded: a resumed attempt's rows add to it
        self._gpus: dict[str, float] = {}  # "<trial>-a<attempt>" → GPUs it holds, while it runs

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; the event sink (a console) stays here.
        return {**self.__dict__, "on_event": None}

    def _base(self, trial: Any, attempt: int | None = None) -> dict[str, Any]:
        config = trial.config
        params = dict(config.get("params", {}))
        return {
            "experiment": self.experiment,
            "trial_id": trial.trial_id,
            "attempt": attempt or _attempt(trial),
            "arm": config.get("arm", ""),
            "config_hash": config_hash(params),
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
            # this session's share, plus what earlier sessions recorded for the attempt (a resume)
            "gpu_hours": wall * gpus / 3600 + self.carried.gpu_hours.get(key, 0.0),
            "cpu_hours": (wall * workers / 3600 if not gpus else 0.0) + self.carried.cpu_hours.get(key, 0.0),
            "world_size": int(last.get("world_size", workers) or workers),
            "split_hash": str(last.get("split_hash", "") or ""),
            "features_reused": str(last.get("features_reused", "") or ""),  # train/features.py
            "selection_metric": self.selection.metric,
            "selection_mode": self.selection.mode,
        }
        row.update(_scalar_metrics(selected_view(last)))
        row.update(phases)
        self.spent[key] = float(row["gpu_hours"])
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
        key = _attempt_key(trial)
        self._started[key] = time.time()
        self._gpus[key] = self.gpus_per_worker * int(trial.config.get("params", {}).get("run.workers", 1))

    def in_flight_gpu_hours(self, now: float) -> float:
        """GPU-hours the running attempts spent since their last row (none of it written yet)."""
        return sum(
            max(0.0, now - self._arrived.get(k, self._started.get(k, now))) * gpus / 3600
            for k, gpus in self._gpus.items()
        )

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
        status = final_status(last)
        self.store.write_trial(self._trial_row(trial, status))
        self._gpus.pop(_attempt_key(trial), None)
        self.finished += 1
        self._emit(status, trial, selected_view(last))

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """An attempt failed and Tune retries the trial (a lost node, a killed process): the failed
        attempt's row ends as ``error`` with its message, the trial goes on as the next attempt, and the
        sweep does not count it as a failed configuration."""
        message = _error_message(trial)
        failed = max(1, int(getattr(trial, "num_failures", 1)))  # Tune counted this failure already
        self.store.write_trial(
            self._trial_row(trial, Status.ERROR, f"retried: {_cause(message)}", attempt=failed)
        )
        self._gpus.pop(_attempt_key(trial, failed), None)
        log.warning("trial %s attempt %d failed and is retried:\n%s", trial.trial_id, failed, message)
        self._emit("retried", trial, {"message": message})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        message = _error_message(trial)
        self.errors.append((trial.trial_id, message))
        failed = max(1, int(getattr(trial, "num_failures", 1)))  # Tune counted this failure already
        self.store.write_trial(self._trial_row(trial, Status.ERROR, _cause(message), failed))
        self._gpus.pop(_attempt_key(trial, failed), None)
        log.error("trial %s failed:\n%s", trial.trial_id, message)  # the traceback in the driver's log
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


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Ray colours the process prefixes of a worker's traceback
EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception|Interrupt|Exit|Failure)\b[^:]*: ")


def _cause(message: str) -> str:
    """The line of a trial's error the trials table keeps: the last exception line (``ValueError: ...``;
    a Train run's failure ends with its worker's, the root cause), else the last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (causes or lines or ["error"])[-1]


def _error_message(trial: Any) -> str:
    text = getattr(trial, "error_msg", None) or ""
    path = getattr(trial, "error_file", None)
    if not text and path:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            text = ""
    return ANSI.sub("", str(text)).strip()


@dataclass(frozen=True)
class Spent:
    """What the experiment's trials table records as spent before this session: GPU-hours by attempt
    (``<trial>-a<attempt>``) and the sweep's busy wall time (seconds in which some trial ran)."""

    gpu_hours: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_hours: dict[str, float] = field(default_factory=dict)


def recorded_spend(store: ResultsStore) -> Spent:
    """:class:`Spent` from the trials table: every attempt's ``gpu_hours``, and the union of the
    attempts' ``[written_at - wall_s, written_at]`` intervals (the time between sessions is not
    counted). An empty or older table (without those columns) has spent nothing."""
    trials = store.trials(latest_attempt=False)
    if trials.is_empty() or "gpu_hours" not in trials.columns:
        return Spent()
    keys = [f"{t}-a{a}" for t, a in zip(trials["trial_id"], trials["attempt"], strict=True)]
    hours = {k: float(h or 0.0) for k, h in zip(keys, trials["gpu_hours"], strict=True)}
    cpu = trials["cpu_hours"] if "cpu_hours" in trials.columns else [0.0] * len(keys)
    cpu_hours = {k: float(h or 0.0) for k, h in zip(keys, cpu, strict=True)}
    if "wall_s" not in trials.columns or "written_at" not in trials.columns:
        return Spent(hours, 0.0, cpu_hours)
    ends = [t.timestamp() if t is not None else None for t in trials["written_at"].to_list()]
    spans = sorted(
        (end - float(wall), end)
        for end, wall in zip(ends, trials["wall_s"].to_list(), strict=True)
        if end is not None and wall is not None and wall > 0
    )
    busy, reach = 0.0, -math.inf
    for start, end in spans:
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return Spent(hours, busy, cpu_hours)


class SweepGuard(Stopper):
    """Stops the whole sweep when the first ``max_initial_errors`` finished trials all errored (a code bug
    burns the budget otherwise), or when the GPU-hour or wall-time budget is spent.

    Both budgets count the experiment as a whole, across ``resume``: GPU-hours are the trials table's
    (``spent``, read when the session starts, then each attempt's latest row as this session's writer
    writes it: at most one epoch behind), and wall time is the busy time the table records plus this
    session's."""

    def __init__(
        self,
        writer: ResultsWriter,
        max_initial_errors: int = 3,
        max_gpu_hours: float = 0.0,
        gpus_per_trial: float = 0.0,
        max_wall_s: float = 0.0,
        spent: Spent | None = None,
    ) -> None:
        """``gpus_per_trial``: 0 when trials hold no GPU (no GPU-hour budget applies)."""
        self.writer = writer
        self.max_initial_errors = max_initial_errors
        self.max_gpu_hours = max_gpu_hours
        self.gpus_per_trial = gpus_per_trial
        self.max_wall_s = max_wall_s
        self.spent = spent or Spent()
        self.started = time.monotonic()
        self.reason = ""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def gpu_hours(self) -> float:
        """GPU-hours the experiment has spent: the table's before this session, updated by this
        session's rows (a resumed attempt's row carries its earlier sessions'), and what the running
        attempts spent since their last row."""
        recorded = sum({**self.spent.gpu_hours, **self.writer.spent}.values())
        return recorded + self.writer.in_flight_gpu_hours(time.time())

    def wall_s(self) -> float:
        """Busy wall time the experiment has spent, this session included."""
        return self.spent.wall_s + time.monotonic() - self.started

    def stop_all(self) -> bool:
        errors = len(self.writer.errors)
        if errors >= self.max_initial_errors and errors == self.writer.finished:
            self.reason = (
                f"the first {errors} trials all failed; the first error:\n{self.writer.errors[0][1]}"
            )
            return True
        if self.max_gpu_hours > 0 and self.gpus_per_trial > 0:
            used = self.gpu_hours()
            if used >= self.max_gpu_hours:
                self.reason = f"GPU-hour budget spent ({used:.2f} of {self.max_gpu_hours:g}, all sessions)"
                return True
        if self.max_wall_s > 0:
            wall = self.wall_s()
            if wall >= self.max_wall_s:
                self.reason = (
                    f"wall-time budget spent ({wall:.0f} s of {self.max_wall_s:.0f} s, all sessions)"
                )
                return True
        return False
