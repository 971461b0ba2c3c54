"""Run a study: search-space file → Ray Tune (+ Optuna, persistent study) → one trial driver per trial
→ Ray Train ``TorchTrainer`` (DeepSpeed ZeRO-3) → Parquet results.

- Every design goes through one persistent Optuna study (SQLite under the experiment directory by
  default, or any SQLAlchemy URL): grid and ofat through Optuna's ``GridSampler`` over (arm, seed),
  TPE/QMC/GP over the nuisance parameters per arm. ``optuna-dashboard`` and the ``optuna`` CLI read it.
- A trial driver asks only for the ``trial_slot`` custom resource (docs/stack-facts.md: a driver cannot
  ask for 0 CPUs), which places drivers and caps concurrent trials; its workers ask for CPUs/GPUs.
- A crashed or preempted trial is retried by Tune (``FailureConfig``) and its Train run, named after the
  Tune trial id, resumes from its own checkpoint. ``diverged``/``oom``/``infeasible`` are results, never
  retried.
- ``resume`` (or ``sweep`` on an existing experiment) restores the Tuner: finished trials are not rerun,
  unfinished ones resume from their checkpoints, and the Optuna study keeps its history.
- The spec's ``metric``/``mode`` travel to every trial as a :class:`Selection`: inside a trial they pick
  the epoch whose metrics (test included) the trial reports, as they pick trials and arms outside it.
- Tune's config of a trial holds its flat params and its arm only; what every trial shares besides them
  (:class:`TrialSettings`: the selection, the GPUs a worker asks for, their memory, test fault hooks)
  reaches the trial driver through ``tune.with_parameters``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdf_search.cluster import TRIAL_SLOT
from mdf_search.config import TrialConfig
from mdf_search.results.schema import Status
from mdf_search.search.designs import default_storage_url, define_by_run, num_trials, study_name
from mdf_search.search.record import write_design_record
from mdf_search.train.faults import Faults
from mdf_search.train.memory import plan_trial, worker_gpu_mem_gb
from mdf_search.train.selection import Selection

log = logging.getLogger(__name__)
RETRIES = 1  # Tune-level retries of a crashed trial (each resumes from its checkpoint)


def experiment_root(storage: str, experiment: str) -> str:
    base = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    return f"{base.rstrip('/')}/{experiment}"


def provenance() -> dict[str, str]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    versions = {}
    for package in ("torch", "ray", "deepspeed", "transformers", "optuna", "peft"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = ""
    return {"git_sha": sha or "unknown", "versions": json.dumps(versions, sort_keys=True)}


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep gets besides its flat params and arm (Tune's config holds only those)."""

    experiment_root: str  # where the trials' Train runs store their checkpoints (under ``train/``)
    selection: Selection  # the study's metric and mode: they pick each trial's epoch
    gpus_per_worker: float  # the spec's resources.gpus_per_worker; 0: CPU workers, no memory check
    gpu_mem_gb: float  # the spec's resources.gpu_mem_gb: a GPU's memory (``worker_gpu_mem_gb`` shares it)
    faults: Faults = field(default_factory=Faults)  # test hooks; inert by default


def trial_driver(config: dict[str, Any], settings: TrialSettings) -> None:
    """One Tune trial: refuse what cannot fit, prepare data, then run Ray Train and report to Tune.

    ``config``: Tune's config of the trial, ``{"params": flat trial params, "arm": arm id}``."""
    # Ray and torch load where they run, not when the CLI imports this module (in every function here).
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from mdf_search.train.builders import prepare_trial_data
    from mdf_search.train.trainer import make_trainer

    cfg = TrialConfig.from_flat(config["params"])
    if settings.gpus_per_worker > 0:
        mem = worker_gpu_mem_gb(settings.gpu_mem_gb, settings.gpus_per_worker)
        plan = plan_trial(cfg, gpus=cfg.run.workers, gpu_mem_gb=mem)
        if not plan.fits:
            tune.report({"status": Status.INFEASIBLE, "message": plan.reason or "does not fit", "epoch": 0})
            return
    trial_id = tune.get_context().get_trial_id()
    data = prepare_trial_data(cfg)
    trainer = make_trainer(
        cfg,
        data,
        name=trial_id,
        storage_path=f"{settings.experiment_root}/train",
        callbacks=[TuneReportCallback()],
        faults=settings.faults,
        selection=settings.selection,
    )
    trainer.fit()


@dataclass
class SweepOutcome:
    experiment_root: str
    trials: int
    errors: list[tuple[str, str]]
    stopped_reason: str


def _study_storage(spec: Any, root: str) -> Any:
    import optuna

    if spec.study.storage:
        url = spec.study.storage
    elif "://" in root:  # results on object storage: the study stays on this (head) node
        from mdf_search.train.builders import cache_root  # torch

        local = cache_root(TrialConfig.from_flat({})) / "studies" / spec.experiment
        log.warning(
            "results go to %s; the Optuna study stays on this node at %s (set study.storage to share it)",
            root,
            local,
        )
        url = default_storage_url(local)
    else:
        url = default_storage_url(root)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


def _tuner(
    spec: Any,
    root: str,
    storage_path: str,
    on_event: Callable[[str, dict[str, Any]], None] | None,
    restore: bool,
    settings: TrialSettings,
) -> tuple[Any, Any, Any]:
    from ray import tune

    from mdf_search.search.callbacks import PerArmASHA, ResultsWriter, ResumableOptunaSearch, SweepGuard
    from mdf_search.search.samplers import make_sampler  # optuna

    writer = ResultsWriter(
        root,
        spec.experiment,
        provenance(),
        on_event=on_event,
        selection=settings.selection,
        gpus_per_worker=settings.gpus_per_worker,
    )
    guard = SweepGuard(
        writer,
        max_gpu_hours=float(spec.budget.max_gpu_hours or 0),
        gpus_per_trial=settings.gpus_per_worker * spec.resources.workers * spec.resources.concurrent_trials,
    )
    # A restored Tuner takes the trainable again: this session's settings, from the same recorded spec.
    trainable = tune.with_resources(tune.with_parameters(trial_driver, settings=settings), {TRIAL_SLOT: 1})
    run_config = tune.RunConfig(
        name=spec.experiment,
        storage_path=storage_path,
        callbacks=[writer],
        stop=guard,
        failure_config=tune.FailureConfig(max_failures=RETRIES),
        verbose=0,
    )
    if restore:
        tuner = tune.Tuner.restore(root, trainable, resume_unfinished=True, resume_errored=True)
        # The restored run config carries the pickled writer and guard of the interrupted session; this
        # session's (with its event sink) replace them. Tune exposes no public setter for this.
        assert tuner._local_tuner is not None  # local (non-client) Tuner
        restored = tuner._local_tuner.get_run_config()
        restored.callbacks = [writer]
        restored.stop = guard
        return tuner, writer, guard
    searcher = ResumableOptunaSearch(
        space=define_by_run(spec),
        metric=spec.metric,
        mode=spec.mode,
        sampler=make_sampler(spec),
        storage=_study_storage(spec, root),
        study_name=study_name(spec),
    )
    scheduler = None
    if spec.scheduler.type == "asha":
        scheduler = PerArmASHA(
            spec.metric,
            spec.mode,
            max_t=spec.budget.epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=num_trials(spec),
        max_concurrent_trials=spec.resources.concurrent_trials,
        time_budget_s=spec.budget.max_wall_time or None,
        metric=spec.metric if scheduler is None else None,
        mode=spec.mode if scheduler is None else None,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), writer, guard


def run_sweep(
    spec: Any,
    *,
    storage: str = "runs",
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    faults: Faults | None = None,
    resume: bool | None = None,
) -> SweepOutcome:
    """Run (or resume) the study described by ``spec`` (a loaded ``SearchSpec``); returns when it ends.

    ``faults``: test hooks every trial gets (default none)."""
    from ray import tune

    selection = Selection(spec.metric, spec.mode)  # refuses a test metric before anything starts
    root = experiment_root(storage, spec.experiment)
    storage_path = root.rsplit("/", 1)[0]
    can_restore = tune.Tuner.can_restore(root)
    restore = can_restore if resume is None else resume
    if resume is False and can_restore:
        raise FileExistsError(
            f"{root}: the experiment exists; continue it with `mdf-search resume {root}` or rename it"
        )
    if restore and not can_restore:
        raise FileNotFoundError(f"{root}: no Tune experiment to resume; start it with `mdf-search sweep`")
    _record_spec(spec, root)
    settings = TrialSettings(
        experiment_root=root,
        selection=selection,
        gpus_per_worker=float(spec.resources.gpus_per_worker),
        gpu_mem_gb=float(spec.resources.gpu_mem_gb),
        faults=faults or Faults(),
    )
    tuner, writer, guard = _tuner(spec, root, storage_path, on_event, restore, settings)
    tuner.fit()
    return SweepOutcome(root, writer.finished, writer.errors, guard.reason)


def _record_spec(spec: Any, root: str) -> None:
    """Keep the spec (resume reads it) and its resolved design (``arms.json``, which reports and the live
    view read) next to the results; never overwrite either once there."""
    if "://" in root:
        return
    directory = Path(root)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "spec.yaml"
    source = Path(spec.path)
    if not target.exists():
        shutil.copyfile(source, target)
    write_design_record(spec, directory)
    (directory / "provenance.json").write_text(
        json.dumps({**provenance(), "spec": str(source), "cwd": os.getcwd()}, indent=1)
    )
