"""Run a study: search-space file → Ray Tune (+ Optuna, persistent study) → one trial driver per trial
→ Ray Train ``TorchTrainer`` (DeepSpeed ZeRO-3) → Parquet results.

- Every design goes through one persistent Optuna study (SQLite under the experiment directory by
  default, or any SQLAlchemy URL): grid and ofat through Optuna's ``GridSampler`` over (arm, seed),
  TPE/QMC/GP over the nuisance parameters per arm. ``optuna-dashboard`` and the ``optuna`` CLI read it
  (``optuna_search.py``: metric name, user attributes, the factors as parameters).
- A trial driver (``trial.py``) asks only for the ``trial_slot`` custom resource (docs/stack-facts.md: a
  driver cannot ask for 0 CPUs), which places drivers and caps concurrent trials; its workers ask for
  CPUs/GPUs (``resources.py``).
- A crashed or preempted trial is retried by Tune (``FailureConfig``, ``resources.max_failures`` times)
  and its Train run, named after the Tune trial id, resumes from its own checkpoint.
  ``diverged``/``oom``/``infeasible`` are results, never retried.
- ``resume`` (or ``sweep`` on an existing experiment) restores the Tuner: finished trials are not rerun,
  unfinished ones resume from their checkpoints, the Optuna study keeps its history, and the budgets
  count what the trials table records of the earlier sessions (``callbacks.SweepGuard``).
- An Optuna study belongs to one experiment directory (its ``experiment_root`` user attribute): a new
  experiment whose study name already exists in a shared storage (PostgreSQL) for another directory is
  refused before Tune starts, so two studies never mix their histories.
- A trial's last report may lack the study metric (``oom``/``diverged``/``infeasible`` report no
  validation value): Tune's strict metric check (which would end the whole sweep with a ``TuneError``)
  is off in the sweep's process, and Optuna records such a trial as failed.
- Ctrl-C: Tune stops the trials, saves its state and returns; :attr:`SweepOutcome.unfinished` counts the
  trials left to ``resume``.
- The spec's ``metric``/``mode`` travel to every trial as a :class:`Selection`: inside a trial they pick
  the epoch whose metrics (test included) the trial reports, as they pick trials and arms outside it.
- A ``tracking:`` block adds Ray's own logger callbacks (MLflow, W&B, TensorBoard: ``tracking.py``);
  Tune's incidental loggers stay off (``cluster.quiet_tune``).

What every trial would repeat is done once per study, in this (the sweep's) process, before Tune starts
(``trial.prepare_study``). Without ASHA, Tune reuses its trial-driver processes (``reuse_actors``).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdf_search.cluster import TRIAL_SLOT, quiet_tune, verbose
from mdf_search.config import TrialConfig
from mdf_search.results.schema import Status
from mdf_search.search.designs import default_storage_url, define_by_run, num_trials, study_name
from mdf_search.search.record import record_spec
from mdf_search.search.resources import (
    SHARED_GPU_TRIALS,
    TrialResources,
    cluster_resources,
    resolve_resources,
)
from mdf_search.search.trial import (
    TrialFunction,
    TrialSettings,
    declared_metrics,
    design_configs,
    prepare_study,
    trial_data,
    trial_driver,
)
from mdf_search.train.builders import cache_root, publish_trial_data
from mdf_search.train.faults import Faults
from mdf_search.train.selection import Selection

if TYPE_CHECKING:
    from mdf_search.results.store import ResultsStore

__all__ = [  # names that moved to resources.py and trial.py stay importable here
    "SHARED_GPU_TRIALS",
    "SweepOutcome",
    "TrialResources",
    "TrialSettings",
    "design_configs",
    "experiment_root",
    "prepare_study",
    "resolve_resources",
    "run_sweep",
    "trial_data",
    "trial_driver",
]
log = logging.getLogger(__name__)
NO_STRICT_METRIC = "TUNE_DISABLE_STRICT_METRIC_CHECKING"


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


@dataclass
class SweepOutcome:
    experiment_root: str
    trials: int  # trials that finished in this session
    errors: list[tuple[str, str]]
    stopped_reason: str
    unfinished: int = 0  # trials Tune left unfinished (Ctrl-C, the time budget): ``resume`` runs them


def _study_storage(spec: Any, root: str) -> Any:
    import optuna

    if spec.study.storage:
        url = spec.study.storage
    elif "://" in root:  # results on object storage: the study stays on this (head) node
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
    concurrent_trials: int,
    trial: TrialFunction = trial_driver,
) -> tuple[Any, Any, Any]:
    from ray import tune

    from mdf_search.search.callbacks import ResultsWriter, SweepGuard, recorded_spend
    from mdf_search.search.optuna_search import ResumableOptunaSearch
    from mdf_search.search.samplers import make_sampler  # optuna
    from mdf_search.search.schedulers import PerArmASHA
    from mdf_search.search.tracking import tracking_callbacks

    writer = ResultsWriter(
        root,
        spec.experiment,
        provenance(),
        on_event=on_event,
        selection=settings.selection,
        gpus_per_worker=settings.gpus_per_worker,
        metrics=declared_metrics(design_configs(spec), settings.data),
    )
    spent = recorded_spend(writer.store) if restore else None  # what the earlier sessions spent
    if spent is not None:
        writer.carried = spent  # a resumed attempt's rows keep counting its earlier sessions' hours
    max_wall = float(spec.budget.max_wall_time or 0)
    guard = SweepGuard(
        writer,
        max_gpu_hours=float(spec.budget.max_gpu_hours or 0),
        gpus_per_trial=settings.gpus_per_worker * spec.resources.workers * concurrent_trials,
        max_wall_s=max_wall,
        spent=spent,
    )
    callbacks = [writer, *tracking_callbacks(spec.tracking, spec.experiment)]
    # A restored Tuner takes the trainable again: this session's settings, from the same recorded spec.
    trainable = tune.with_resources(tune.with_parameters(trial, settings=settings), {TRIAL_SLOT: 1})
    quiet_tune()  # Tune's incidental loggers off (tracking adds its own), its box only when verbose
    if not verbose():  # Optuna's INFO lines ("A new study created ...") would break the live view
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_config = tune.RunConfig(
        name=spec.experiment,
        storage_path=storage_path,
        callbacks=callbacks,
        stop=guard,
        failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        verbose=1 if verbose() else 0,
    )
    if restore:
        tuner = tune.Tuner.restore(root, trainable, resume_unfinished=True, resume_errored=True)
        # The restored run config carries the pickled writer and guard of the interrupted session; this
        # session's (with its event sink) replace them. Tune exposes no public setter for this.
        assert tuner._local_tuner is not None  # local (non-client) Tuner
        restored = tuner._local_tuner.get_run_config()
        restored.callbacks = callbacks
        restored.stop = guard
        restored.failure_config = run_config.failure_config
        # Tune's time budget counts this session only: give it what the earlier sessions left.
        tuner._local_tuner._tune_config.time_budget_s = _wall_left(max_wall, spent)
        return tuner, writer, guard
    study_storage = _study_storage(spec, root)
    searcher = ResumableOptunaSearch(
        space=define_by_run(spec),
        metric=spec.metric,
        mode=spec.mode,
        sampler=make_sampler(spec),
        storage=study_storage,
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
        max_concurrent_trials=concurrent_trials,
        # A finished trial's driver process runs the next trial (no fresh Python per trial). Not under
        # ASHA: a stopped trial's driver is still inside its Train run, so Tune's reset of it fails, and
        # Tune then errors the trial it meant to run there.
        reuse_actors=scheduler is None,
        time_budget_s=max_wall or None,
        metric=spec.metric if scheduler is None else None,
        mode=spec.mode if scheduler is None else None,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), writer, guard


def _wall_left(max_wall: float, spent: Any) -> float | None:
    """Tune's time budget for a resumed session: what the earlier sessions left of ``max_wall`` (at
    least a second: the guard then stops the sweep with its reason); None without a wall budget."""
    if max_wall <= 0:
        return None
    return max(1.0, max_wall - (spent.wall_s if spent is not None else 0.0))


def run_sweep(
    spec: Any,
    *,
    storage: str = "runs",
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    faults: Faults | None = None,
    resume: bool | None = None,
    trial: TrialFunction = trial_driver,
) -> SweepOutcome:
    """Run (or resume) the study described by ``spec`` (a loaded ``SearchSpec``); returns when it ends.

    ``faults``: test hooks every trial gets (default none). ``trial``: what runs one Tune trial, given
    its Tune config and the :class:`TrialSettings` (default :func:`trial_driver`, a Ray Train run; the
    chaos tests pass function-only trials that report as the epoch loop does)."""
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
    if not restore and spec.study.storage and spec.study.storage != default_storage_url(root):
        from mdf_search.search.callbacks import claim_study  # a storage other experiments may share

        claim_study(_study_storage(spec, root), study_name(spec), root, spec.mode)
    _record_spec(spec, root)
    configs = design_configs(spec)
    resources = cluster_resources(spec, configs)
    data, counts = (
        prepare_study(configs, plan_memory=resources.gpus_per_worker > 0)
        if trial is trial_driver
        else ({}, {})  # a function trial uses none of the study's data
    )
    # Train workers on every node fetch the artefacts from the study's storage (data/artefacts.py)
    data = {key: publish_trial_data(prepared, root) for key, prepared in data.items()}
    settings = TrialSettings(
        experiment_root=root,
        selection=selection,
        gpus_per_worker=resources.gpus_per_worker,
        gpu_mem_gb=float(spec.resources.gpu_mem_gb),
        faults=faults or Faults(),
        cpus_per_worker=resources.cpus_per_worker,
        data=data,
        param_counts=counts,
        placement="" if spec.resources.placement == "auto" else spec.resources.placement.upper(),
    )
    os.environ.setdefault(NO_STRICT_METRIC, "1")  # an oom/diverged/infeasible report has no metric
    tuner, writer, guard = _tuner(
        spec, root, storage_path, on_event, restore, settings, resources.concurrent_trials, trial
    )
    tuner.fit()  # after Ctrl-C too: Tune stops its trials, saves its state and returns
    unfinished = _unfinished(spec, writer)
    if not unfinished and not guard.reason:
        _close_lost(writer.store)
    return SweepOutcome(root, writer.finished, writer.errors, guard.reason, unfinished)


LOST = (
    "lost: the sweep's driver was killed before Ray Tune recorded this trial; Tune ran its arm and seed again"
)


def _close_lost(store: ResultsStore) -> None:
    """A study that ran to its end has no running trial: a row still ``running`` belongs to a trial the
    driver started just before it was killed and Tune's restored state never knew (its Optuna trial was
    adopted by another). It is closed as an error saying so, so that no row stays ``running`` forever."""
    trials = store.trials()
    if trials.is_empty():
        return
    for row in trials.filter(trials["status"] == Status.RUNNING).iter_rows(named=True):
        log.warning("trial %s: %s", row["trial_id"], LOST)
        store.write_trial({**row, "status": Status.ERROR.value, "message": LOST})


def _unfinished(spec: Any, writer: Any) -> int:
    """Planned trials without a final row (Ctrl-C or the time budget ended the sweep before them)."""
    trials = writer.store.trials()
    ended = 0 if trials.is_empty() else int((trials["status"] != Status.RUNNING).sum())
    return max(0, num_trials(spec) - ended)


def _record_spec(spec: Any, root: str) -> None:
    """Keep the spec (resume reads it), its resolved design (``arms.json``) and this session's provenance
    next to the results, on a local path or a URI alike (``search.record.record_spec``)."""
    record_spec(spec, root, provenance())
