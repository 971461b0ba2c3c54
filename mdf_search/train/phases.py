"""Where a trial's seconds go: one exclusive clock per rank, and the phase names every report carries.

A trial's wall time is split into phases that do not overlap and add up to it:

=============  ======================================================================================
``launch_s``   trial start until the workers are ready (the first line of ``train_loop_per_worker``):
               the trial driver (a memory plan or data preparation only when the sweep driver had not done them for the study), Ray Train's controller and worker
               group, the worker processes and their imports (the loop's module and what it imports)
``init_s``     ``import deepspeed``, the process group, the model build under ZeRO-3 construction and
               ``deepspeed.initialize``
``data_s``     dataset setup (split, cache, datasets, class weights), building each epoch's loaders,
               and every wait for the next batch of a loader (collation, tokenisation, augmentation:
               the loaders run in the worker's own thread), training and evaluation alike
``train_s``    optimiser steps: batch to device, forward, loss, backward, step, the finiteness check,
               and the epoch's training metrics (gathered from every rank)
``eval_s``     evaluation of the validation split (and of the test split at an epoch that becomes the
               selected one), the gathers behind it, and building the selected epoch's predictions
``ckpt_s``     checkpoints: restoring one when the run resumes, saving one (DeepSpeed shards, RNG,
               trial.json, tokenizer, predictions) and persisting it to the run's storage
``report_s``   ``ray.train.report`` (the ranks' barrier and the hand-over to Ray Train) and the other
               bookkeeping around it (peak memory gathered from every rank, the metrics dict)
``other_s``    the rest of the wall time: the glue between phases in the loop, and the trial's last
               report (its own ``ray.train.report`` call and its way to the driver), which no report
               can carry
=============  ======================================================================================

``startup_s`` is the trial start until the first optimiser step begins (so it is at least
``launch_s + init_s``).

Each rank keeps a :class:`PhaseClock`; Ray Train keeps rank 0's report, so the numbers are rank 0's.
Every report carries the totals so far (:meth:`PhaseClock.report`); the trial's row takes them from its
last report (``search/callbacks.py``). "Trial start" is where the trial was launched: on the worker side
the moment ``make_trainer`` built the Train run (``launched_unix`` in the loop config); the sweep's
results writer replaces it by the moment Tune started the trial (its ``on_trial_start``, on the driver's
clock), so ``launch_s`` then also covers the trial driver's own work. ``launch_s`` and ``startup_s``
compare a driver's wall clock (``time.time()``) with a worker's: on one host they are the same clock; across
nodes they carry the nodes' clock skew (NTP keeps it to milliseconds; the other phases are durations on
one rank's monotonic clock and carry none).

Profiling (``benchmarks/profile_trial.py``): with ``MDF_PROFILE_DIR`` set in a worker's environment,
the clock also runs one ``cProfile`` profiler per phase, enabled while its phase runs, and
:meth:`PhaseClock.dump_profiles` writes them as ``rank<r>-<phase>.prof``. Unset (always, outside that
benchmark) the clock only reads the time.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mdf_search.results.schema import PHASE_COLUMNS

T = TypeVar("T")

PHASES = PHASE_COLUMNS[:-1]  # the measured phases, launch_s first
OTHER = PHASE_COLUMNS[-1]  # other_s: the rest of the wall time
LOOP_PHASES = PHASES[1:]  # the phases of the epoch loop's clock
# Keys of a report that describe the trial run so far, not the reporting epoch: the trial row keeps them,
# epoch rows leave them out.
RUN_KEYS = (*PHASES, OTHER, "startup_s", "elapsed_s", "loop_start_unix")
PROFILE_ENV = "MDF_PROFILE_DIR"


class PhaseClock:
    """An exclusive stopwatch: at every moment since the loop started exactly one phase is running (the
    innermost :meth:`phase`, or ``other_s`` outside of all), so the phases add up to the time elapsed.

    ``launched_unix``: the trial's start (wall clock; ``None`` when unknown: ``launch_s`` is then 0).
    """

    def __init__(self, launched_unix: float | None = None) -> None:
        self.loop_start_unix = time.time()
        self._start = time.perf_counter()
        self._mark = self._start
        self.launch_s = max(0.0, self.loop_start_unix - launched_unix) if launched_unix else 0.0
        self.totals = dict.fromkeys((*LOOP_PHASES, OTHER), 0.0)
        self._stack = [OTHER]
        self.first_step_s: float | None = None  # since the loop started
        profile_dir = os.environ.get(PROFILE_ENV)
        self._profile_dir = Path(profile_dir) if profile_dir else None
        self._profiles: dict[str, cProfile.Profile] = {}
        self._profile(OTHER)

    def _charge(self) -> None:
        now = time.perf_counter()
        self.totals[self._stack[-1]] += now - self._mark
        self._mark = now

    def _profile(self, name: str, previous: str | None = None) -> None:
        """Profiling only: switch the running profiler from phase ``previous`` to phase ``name``."""
        if self._profile_dir is None:
            return
        if previous is not None:
            self._profiles[previous].disable()
        self._profiles.setdefault(name, cProfile.Profile()).enable()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the time inside the block to ``name`` (an inner phase takes over while it runs)."""
        if name not in self.totals:
            raise ValueError(f"unknown phase {name!r}; the phases are {sorted(self.totals)}")
        self._charge()
        self._profile(name, self._stack[-1])
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()
            self._profile(self._stack[-1], name)

    def iterate(self, items: Iterable[T], phase: str = "data_s") -> Iterator[T]:
        """``items``, with the time spent waiting for each next item charged to ``phase``."""
        with self.phase(phase):
            iterator = iter(items)
        while True:
            with self.phase(phase):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    def step_started(self) -> None:
        """Mark the first optimiser step (the end of ``startup_s``); later calls change nothing."""
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self._start

    def dump_profiles(self, rank: int) -> None:
        """Profiling only: stop the profilers and write ``rank<r>-<phase>.prof`` per phase."""
        if self._profile_dir is None:
            return
        self._profile_dir.mkdir(parents=True, exist_ok=True)
        for name, profile in self._profiles.items():
            profile.disable()
            profile.dump_stats(str(self._profile_dir / f"rank{rank}-{name.removesuffix('_s')}.prof"))

    def report(self) -> dict[str, Any]:
        """The totals so far, as a report carries them: every phase, ``other_s``, ``elapsed_s`` (their
        sum: trial start until now), ``startup_s`` (None before the first step) and ``loop_start_unix``."""
        self._charge()
        out: dict[str, Any] = {"launch_s": self.launch_s, **self.totals}
        out["elapsed_s"] = self.launch_s + sum(self.totals.values())
        out["startup_s"] = None if self.first_step_s is None else self.launch_s + self.first_step_s
        out["loop_start_unix"] = self.loop_start_unix
        return out


def trial_phases(
    last: dict[str, Any],
    *,
    started_unix: float | None,
    arrived_unix: float | None,
    tune_wall_s: float,
) -> dict[str, Any]:
    """A trial row's ``wall_s`` and phase columns from its last report (the worker's totals) and, when
    the results writer saw them, the driver's start of the attempt and the arrival of that report.

    With both, ``wall_s`` is the attempt's start until its last report arrived, and ``launch_s`` and
    ``startup_s`` count from that start. Without them (a driver restarted mid-trial) ``wall_s`` is Tune's
    ``time_total_s`` (``tune_wall_s``) and the worker's numbers stand, counted from the Train launch.
    Either way ``other_s`` is what the phases leave of ``wall_s``, so they add up to it. A report
    without phase totals (an infeasible trial's, one from before this accounting) gives only ``wall_s``.
    """
    known = started_unix is not None and arrived_unix is not None and arrived_unix >= started_unix
    wall = arrived_unix - started_unix if known else tune_wall_s  # type: ignore[operator]
    out: dict[str, Any] = {"wall_s": float(wall)}
    if not all(isinstance(last.get(k), int | float) for k in (*PHASES, "loop_start_unix")):
        return out
    phases = {k: float(last[k]) for k in PHASES}
    startup = last.get("startup_s")
    if known:
        launch = float(last["loop_start_unix"]) - started_unix  # type: ignore[operator]
        if isinstance(startup, int | float):
            startup = float(startup) - phases["launch_s"] + launch
        phases["launch_s"] = launch
    return {**out, **phases, OTHER: out["wall_s"] - sum(phases.values()), "startup_s": startup}
