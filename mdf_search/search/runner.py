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
- Tune's config of a trial holds its flat params and its arm only; what every trial shares besides them
  (:class:`TrialSettings`: the selection, what a worker asks for, the GPUs' memory, the study's prepared
  data and parameter counts, test fault hooks) reaches the trial driver through ``tune.with_parameters``.

What every trial would repeat is done once per study, in this (the sweep's) process, before Tune starts:
the data artefacts of each distinct :func:`~mdf_search.train.builders.data_key` among the design's trials
(split, cache, tokenizer), and, when workers hold GPUs, the parameter counts of each distinct
architecture the memory planner needs. A trial whose data or architecture was not among them (a sampled
parameter that changes it) prepares or counts its own. Without ASHA, Tune reuses its trial-driver
processes (``reuse_actors``), and a trial driver never imports the model, transformers or DeepSpeed: its
workers do.

``resources.concurrent_trials: auto`` (:func:`resolve_resources`) runs as many trials at once as the
cluster's CPUs and GPUs hold (their start-ups overlap the others' training); on GPUs,
trials of the ``tiny`` and ``small`` presets with one worker share a GPU through a fractional
``gpus_per_worker`` (4 and 2 trials per GPU): a trial of two or more workers gets whole GPUs, because
Ray packs a trial's fractional workers onto one GPU and NCCL refuses two ranks of one communicator on
one device.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdf_search.cluster import TRIAL_SLOT
from mdf_search.config import TrialConfig
from mdf_search.model.arch import ArchConfig
from mdf_search.results.schema import Status
from mdf_search.search.designs import (
    arms,
    default_storage_url,
    define_by_run,
    num_trials,
    study_name,
    trial_params,
)
from mdf_search.search.record import write_design_record
from mdf_search.train.builders import TrialData, cache_root, data_key, prepare_trial_data
from mdf_search.train.faults import Faults
from mdf_search.train.memory import ParamCounts, count_parameters, plan_trial, worker_gpu_mem_gb
from mdf_search.train.selection import Selection

log = logging.getLogger(__name__)
RETRIES = 1  # Tune-level retries of a crashed trial (each resumes from its checkpoint)
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


# Trials per GPU that ``concurrent_trials: auto`` packs for these presets (one-worker trials on GPUs).
SHARED_GPU_TRIALS = {"tiny": 4, "small": 2}


@dataclass(frozen=True)
class TrialResources:
    """What a sweep runs with: trials at once, and what each of a trial's workers holds."""

    concurrent_trials: int
    cpus_per_worker: float
    gpus_per_worker: float  # 0: CPU workers, or one whole GPU per worker where workers run on GPUs


def resolve_resources(
    resources: Any, *, presets: Iterable[str], on_gpu: bool, cpus: float, gpus: float
) -> TrialResources:
    """``resources`` (a spec's) with ``concurrent_trials: auto`` resolved for a cluster of ``cpus`` CPUs
    and ``gpus`` GPUs; a number is kept as given. Pure.

    ``on_gpu``: the trials' workers run on GPUs (``run.device`` is not ``cpu`` and the cluster has GPUs).

    - On CPUs, ``auto`` runs as many trials as the CPUs train at once (``cpus // (workers x
      cpus_per_worker)``); trials start and end at different times, so one's start-up overlaps the
      others' training. On a machine smaller than one trial, one trial whose workers share the CPUs.
      (One trial more than that, its workers sharing CPUs, was measured on 2 cores: no faster, since
      the two trials started, trained and ended together, each at half speed.)
    - On GPUs, ``auto`` runs as many trials as the GPUs (``workers x gpus_per_worker`` each) and the CPUs
      hold, at least one. With ``gpus_per_worker: 0`` it picks the GPU share too: one-worker trials of
      presets that are all in :data:`SHARED_GPU_TRIALS` share a GPU (``1/4`` for tiny, ``1/2`` for small;
      the larger share when a study mixes them), every other trial holds one whole GPU per worker (see
      the module docstring for why not two-worker trials)."""
    workers, cpw, gpw = resources.workers, float(resources.cpus_per_worker), float(resources.gpus_per_worker)
    if resources.concurrent_trials != "auto":
        return TrialResources(int(resources.concurrent_trials), cpw, gpw)
    by_cpu = int(cpus // (workers * cpw))
    if not on_gpu:
        return TrialResources(max(1, by_cpu), min(cpw, cpus / workers), gpw)
    if gpw == 0:
        shares = [SHARED_GPU_TRIALS.get(p, 1) for p in presets] or [1]
        gpw = 1.0 / min(shares) if workers == 1 else 1.0
    by_gpu = int(gpus / (workers * gpw) + 1e-9)
    return TrialResources(max(1, min(by_cpu, by_gpu)), cpw, gpw)


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep gets besides its flat params and arm (Tune's config holds only those)."""

    experiment_root: str  # where the trials' Train runs store their checkpoints (under ``train/``)
    selection: Selection  # the study's metric and mode: they pick each trial's epoch
    gpus_per_worker: (
        float  # resolved resources.gpus_per_worker; 0: CPU workers (or whole GPUs), no memory check
    )
    gpu_mem_gb: float  # the spec's resources.gpu_mem_gb: a GPU's memory (``worker_gpu_mem_gb`` shares it)
    faults: Faults = field(default_factory=Faults)  # test hooks; inert by default
    cpus_per_worker: float = 1.0  # the spec's resources.cpus_per_worker
    data: Mapping[tuple[Any, ...], TrialData] = field(default_factory=dict)  # by data_key, prepared once
    param_counts: Mapping[ArchConfig, ParamCounts] = field(default_factory=dict)  # counted once per arch


def trial_data(cfg: TrialConfig, settings: TrialSettings) -> TrialData:
    """The trial's data artefacts: the study's, prepared once by the sweep; else prepared here."""
    prepared = settings.data.get(data_key(cfg))
    return prepared if prepared is not None else prepare_trial_data(cfg)


TrialFunction = Callable[[dict[str, Any], TrialSettings], None]


def trial_driver(config: dict[str, Any], settings: TrialSettings) -> None:
    """One Tune trial: refuse what cannot fit, find its data, then run Ray Train and report to Tune.

    ``config``: Tune's config of the trial, ``{"params": flat trial params, "arm": arm id}``."""
    # Ray and torch load where they run, not when the CLI imports this module (in every function here).
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from mdf_search.train.trainer import make_trainer

    cfg = TrialConfig.from_flat(config["params"])
    if settings.gpus_per_worker > 0:
        mem = worker_gpu_mem_gb(settings.gpu_mem_gb, settings.gpus_per_worker)
        counts = settings.param_counts.get(cfg.arch)
        plan = plan_trial(cfg, gpus=cfg.run.workers, gpu_mem_gb=mem, counts=counts)
        if not plan.fits:
            tune.report({"status": Status.INFEASIBLE, "message": plan.reason or "does not fit", "epoch": 0})
            return
    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(
        cfg,
        trial_data(cfg, settings),
        name=trial_id,
        storage_path=f"{settings.experiment_root}/train",
        callbacks=[TuneReportCallback()],
        faults=settings.faults,
        selection=settings.selection,
        cpus_per_worker=settings.cpus_per_worker,
        gpus_per_worker=settings.gpus_per_worker,
    )
    trainer.fit()


def design_configs(spec: Any) -> list[TrialConfig]:
    """The configs of the design's trials as far as they are known before any runs: every (arm, seed)
    at the nuisance defaults (a sampler's trials differ from these in their nuisance values only)."""
    return [TrialConfig.from_flat(trial_params(spec, arm, seed)) for arm in arms(spec) for seed in spec.seeds]


def prepare_study(
    configs: Iterable[TrialConfig], *, plan_memory: bool
) -> tuple[dict[tuple[Any, ...], TrialData], dict[ArchConfig, ParamCounts]]:
    """Once per study: the data artefacts of each distinct data key and (``plan_memory``) the parameter
    counts of each distinct architecture among ``configs``.

    What fails here (a missing manifest, say) is left to the trials that need it: each prepares its
    own, fails as before, and is recorded as an error while the sweep goes on."""
    data: dict[tuple[Any, ...], TrialData] = {}
    counts: dict[ArchConfig, ParamCounts] = {}
    failed: set[Any] = set()
    for cfg in configs:
        key = data_key(cfg)
        if key not in data and key not in failed:
            try:
                data[key] = prepare_trial_data(cfg)
            except Exception as err:  # the trial raises it again, where it is recorded
                log.warning("data of %s: %s (its trials prepare their own)", key, err)
                failed.add(key)
        if plan_memory and cfg.arch not in counts and cfg.arch not in failed:
            try:
                counts[cfg.arch] = count_parameters(cfg.arch)
            except Exception as err:  # likewise
                log.warning("parameter counts of %s: %s", cfg.arch, err)
                failed.add(cfg.arch)
    return data, counts


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

    from mdf_search.search.callbacks import (
        PerArmASHA,
        ResultsWriter,
        ResumableOptunaSearch,
        SweepGuard,
    )
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
        gpus_per_trial=settings.gpus_per_worker * spec.resources.workers * concurrent_trials,
    )
    # A restored Tuner takes the trainable again: this session's settings, from the same recorded spec.
    trainable = tune.with_resources(tune.with_parameters(trial, settings=settings), {TRIAL_SLOT: 1})
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
    settings = TrialSettings(
        experiment_root=root,
        selection=selection,
        gpus_per_worker=resources.gpus_per_worker,
        gpu_mem_gb=float(spec.resources.gpu_mem_gb),
        faults=faults or Faults(),
        cpus_per_worker=resources.cpus_per_worker,
        data=data,
        param_counts=counts,
    )
    os.environ.setdefault(NO_STRICT_METRIC, "1")  # an oom/diverged/infeasible report has no metric
    tuner, writer, guard = _tuner(
        spec, root, storage_path, on_event, restore, settings, resources.concurrent_trials, trial
    )
    tuner.fit()  # after Ctrl-C too: Tune stops its trials, saves its state and returns
    return SweepOutcome(root, writer.finished, writer.errors, guard.reason, _unfinished(spec, writer))


def _unfinished(spec: Any, writer: Any) -> int:
    """Planned trials without a final row (Ctrl-C or the time budget ended the sweep before them)."""
    trials = writer.store.trials()
    ended = 0 if trials.is_empty() else int((trials["status"] != Status.RUNNING).sum())
    return max(0, num_trials(spec) - ended)


def cluster_resources(spec: Any, configs: list[TrialConfig]) -> TrialResources:
    """:func:`resolve_resources` on the connected Ray cluster, capped at its trial slots."""
    import ray

    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0.0))
    on_gpu = gpus > 0 and any(cfg.run.device != "cpu" for cfg in configs)
    resolved = resolve_resources(
        spec.resources,
        presets={cfg.model.preset for cfg in configs},
        on_gpu=on_gpu,
        cpus=float(total.get("CPU", 0.0)),
        gpus=gpus,
    )
    slots = int(total.get(TRIAL_SLOT, 0))
    if 0 < slots < resolved.concurrent_trials:
        log.warning(
            "%d trials could run at once, but the cluster has %d %s resource(s)",
            resolved.concurrent_trials,
            slots,
            TRIAL_SLOT,
        )
        resolved = TrialResources(slots, resolved.cpus_per_worker, resolved.gpus_per_worker)
    log.info("trial resources: %s", resolved)
    return resolved


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
