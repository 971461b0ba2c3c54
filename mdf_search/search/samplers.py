"""The study's Optuna samplers: a grid over (arm, seed), or round-robin arms with a per-arm TPE/QMC/GP.

``make_sampler(spec)`` picks one for the design (``designs.define_by_run`` asks for ``arm``, ``seed`` and
the nuisance values; the sampler answers):

- grid/ofat: ``StudyGridSampler({"arm": ids, "seed": seeds})`` enumerates every (arm, seed) once.
- tpe/qmc/gp: ``ArmBudgetSampler`` *assigns* ``arm`` and ``seed`` round-robin from the trial number
  (trial ``n`` → arm ``n % A``, seed ``seeds[(n // A) % S]``), so the first ``A x trials_per_arm``
  trials give every arm exactly its budget whatever the order of completion, and a resumed study
  continues the rotation (Optuna numbers trials in its storage). The distributions stay fixed, as
  Optuna requires; only the sampler's choice is deterministic. Nuisance values come from one inner
  sampler *per arm* that sees only that arm's trials, so each arm's TPE/GP model is its own and one arm's
  good region never steers another's (a fair comparison). Within an arm the seed varies from one nuisance
  point to the next; rerun the best point of each arm over all seeds before concluding (the playbook).

Optuna has no public way to show a sampler part of a study's history, so ``_ArmView`` stands in for the
study: Optuna's samplers read the history through the private ``Study._get_trials`` (with its per-ask
cache), and the view answers that call, filtered to one arm. Everything else (storage, directions, the
QMC sequence's position) is the real study's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GPSampler, GridSampler, QMCSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from mdf_search.search.designs import ARM_PARAM, SEED_PARAM, arms, trials_per_arm
from mdf_search.search.space import SearchSpec


class StudyGridSampler(GridSampler):
    """``GridSampler`` that leaves stopping to Tune's ``num_samples``, and answers the factors.

    Optuna's calls ``study.stop()`` after the last grid point, which raises outside ``study.optimize``
    (every ask/tell driver, Ray's OptunaSearch included, would log that error at the end of a sweep).
    The grid is over (arm, seed); a scientific factor the define-by-run asks for after them takes the
    value the trial's arm holds (``factors``: arm id → factor → value).
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[Any]],
        seed: int | None = None,
        factors: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(search_space, seed=seed)
        self._factors = {arm: dict(values) for arm, values in (factors or {}).items()}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        own = self._factors.get(str(trial.params.get(ARM_PARAM)), {})
        if param_name in own:
            return own[param_name]
        return super().sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Any
    ) -> None:  # pragma: no cover - trivial
        return None


class _ArmView:
    """The study as one arm's sampler sees it: only that arm's trials; everything else is the study's."""

    def __init__(self, study: Study, arm: str) -> None:
        self._study = study
        self._arm = arm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        """What Optuna's samplers call (private ``Study._get_trials``); forwarded with ``use_cache`` so
        that one ask reads the history from storage once, as it does without the view."""
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if t.params.get(ARM_PARAM) == self._arm]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get(ARM_PARAM) == self._arm]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def _inner_sampler(design: str, seed: int, n_startup: int) -> BaseSampler:
    with warnings.catch_warnings():  # multivariate/group TPE and QMC are flagged experimental: chosen
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if design == "tpe":
            return TPESampler(multivariate=True, group=True, seed=seed, n_startup_trials=n_startup)
        if design == "qmc":
            return QMCSampler(seed=seed, scramble=True)
        if design == "gp":
            return GPSampler(seed=seed, n_startup_trials=n_startup)
    raise ValueError(f"design must be one of tpe, qmc, gp, but got {design!r}")


class ArmBudgetSampler(BaseSampler):
    """Round-robin ``arm``/``seed`` by trial number; nuisance values from a per-arm inner sampler.

    Each arm's inner sampler starts from the same seed, so TPE/GP give every arm the same random
    start-up points (a paired comparison); QMC draws successive points of one scrambled Sobol sequence.
    """

    def __init__(
        self, design: str, arm_ids: list[str], seeds: list[int], seed: int = 0, n_startup: int = 10
    ) -> None:
        self.design, self.arm_ids, self.seeds = design, list(arm_ids), list(seeds)
        self.seed, self.n_startup = seed, n_startup
        _inner_sampler(design, seed, n_startup)  # fail here, not at the first trial
        self._inner: dict[str, BaseSampler] = {}

    def arm_of(self, number: int) -> str:
        return self.arm_ids[number % len(self.arm_ids)]

    def seed_of(self, number: int) -> int:
        return self.seeds[(number // len(self.arm_ids)) % len(self.seeds)]

    def _for(self, study: Study, trial: FrozenTrial) -> tuple[BaseSampler, Any]:
        arm = self.arm_of(trial.number)
        if arm not in self._inner:
            self._inner[arm] = _inner_sampler(self.design, self.seed, self.n_startup)
        return self._inner[arm], _ArmView(study, arm)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        inner, view = self._for(study, trial)
        space = inner.infer_relative_search_space(view, trial)
        return {k: v for k, v in space.items() if k not in (ARM_PARAM, SEED_PARAM)}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        inner, view = self._for(study, trial)
        return inner.sample_relative(view, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name == ARM_PARAM:
            return self.arm_of(trial.number)
        if param_name == SEED_PARAM:
            return self.seed_of(trial.number)
        inner, view = self._for(study, trial)
        return inner.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        inner, view = self._for(study, trial)
        inner.before_trial(view, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        inner, view = self._for(study, trial)
        inner.after_trial(view, trial, state, values)

    def reseed_rng(self) -> None:
        for inner in self._inner.values():
            inner.reseed_rng()


def make_sampler(spec: SearchSpec, seed: int = 0) -> BaseSampler:
    """The study's sampler: a grid over (arm, seed), or round-robin arms with a per-arm TPE/QMC/GP."""
    ids = [a.id for a in arms(spec)]
    if not spec.is_sampler:
        factors = {a.id: {k: v for k, v in a.params.items() if k in spec.scientific} for a in arms(spec)}
        return StudyGridSampler({ARM_PARAM: ids, SEED_PARAM: list(spec.seeds)}, seed=seed, factors=factors)
    per_arm = trials_per_arm(spec, len(ids))
    # Optuna's default of 10 random start-up trials would leave a small per-arm budget all random.
    n_startup = max(3, min(10, per_arm // 3))
    return ArmBudgetSampler(spec.design, ids, list(spec.seeds), seed=seed, n_startup=n_startup)
