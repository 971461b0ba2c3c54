"""What a sweep's trials run with: ``resources.concurrent_trials: auto`` resolved for the cluster, and the
share of a GPU or CPU each of a trial's workers holds.

``auto`` (:func:`resolve_resources`) runs as many trials at once as the cluster's CPUs and GPUs hold
(their start-ups overlap the others' training); on GPUs, trials of the ``tiny`` and ``small`` presets
with one worker share a GPU through a fractional ``gpus_per_worker`` (4 and 2 trials per GPU): a trial of
two or more workers gets whole GPUs, because Ray packs a trial's fractional workers onto one GPU and NCCL
refuses two ranks of one communicator on one device. :func:`cluster_resources` applies it to the
connected Ray cluster, capped at its ``trial_slot`` resources.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mdf_search.cluster import TRIAL_SLOT
from mdf_search.config import TrialConfig

log = logging.getLogger(__name__)


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
