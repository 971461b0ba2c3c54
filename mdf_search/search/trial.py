"""One trial of a sweep, and what the sweep prepares once for all of them.

- :class:`TrialSettings`: what every trial shares besides its flat params and arm (Tune's config holds
  only those): the selection, what a worker asks for, the GPUs' memory, the study's prepared data and
  parameter counts, test fault hooks. It reaches the trial driver through ``tune.with_parameters``.
- :func:`trial_driver`: one Tune trial, a Ray Train run reporting to Tune; it never imports the model,
  transformers or DeepSpeed (its workers do).
- :func:`prepare_study`: once per study, in the sweep's process, the data artefacts of each distinct
  :func:`~mdf_search.train.builders.data_key` among the design's trials (split, cache, tokenizer) and,
  when workers hold GPUs, the parameter counts of each distinct architecture the memory planner needs. A
  trial whose data or architecture was not among them (a sampled parameter that changes it) prepares or
  counts its own.
- :func:`declared_metrics`: every metric the study's trials report, so that each part of the results
  tables carries every column from the first row on (``results.schema.study_metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mdf_search.config import TrialConfig
from mdf_search.model.arch import ArchConfig
from mdf_search.results.schema import Status
from mdf_search.search.designs import arms, trial_params
from mdf_search.train.builders import TrialData, data_key, prepare_trial_data, study_trial_data
from mdf_search.train.faults import Faults
from mdf_search.train.memory import ParamCounts, count_parameters, plan_trial, worker_gpu_mem_gb
from mdf_search.train.selection import Selection

log = logging.getLogger(__name__)


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
    placement: str = ""  # the spec's resources.placement: Ray Train's placement strategy; "": the default


def trial_data(cfg: TrialConfig, settings: TrialSettings) -> TrialData:
    """The trial's data artefacts: the study's, prepared once by the sweep; else prepared here."""
    prepared = settings.data.get(data_key(cfg))
    return prepared if prepared is not None else study_trial_data(cfg, settings.experiment_root)


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
        placement_strategy=settings.placement or None,
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


def declared_metrics(
    configs: Iterable[TrialConfig], data: Mapping[tuple[Any, ...], TrialData]
) -> tuple[str, ...]:
    """Every metric the trials of ``configs`` report (``results.schema.study_metrics`` of each head's
    classes), over the configs whose data the study prepared (``data``, by data key; a config whose data
    failed, and a function trial's, add none), in first-seen order."""
    names: dict[str, None] = {}
    for cfg in configs:
        prepared = data.get(data_key(cfg))
        if prepared is None:
            continue
        from mdf_search.data.schema import LabelSpace
        from mdf_search.model.mdf import task_classes  # torch: only when the study has prepared data
        from mdf_search.results.schema import study_metrics

        diseases = LabelSpace.from_json(prepared.label_space).diseases
        names.update(dict.fromkeys(study_metrics(task_classes(cfg.head.task, diseases))))
    return tuple(names)
