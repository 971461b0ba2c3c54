"""Designs: which arms a study runs, the flat params of each trial, and the Optuna glue.

Everything here is pure and deterministic: the same spec gives the same arms, ids and params.

- An **arm** is one assignment of the scientific parameters, with ``when``/``otherwise`` applied. Its id
  is readable and stable (``fusion.levels=1234|fusion.injection=parallel``: only *active* scientific
  values, in file order); results, ASHA brackets and reports group by it. Combinations that the
  conditions make identical collapse into one arm (``fusion.levels=none`` makes every injection value
  ``none``). The baseline arm, when declared, comes first.
- **grid**: the full factorial. **ofat**: the reference arm plus each factor varied one value at a time
  from the reference. **tpe/qmc/gp**: arms as for grid; each arm gets ``trials_per_arm`` trials over its
  nuisance parameters.
- Trial params = ``fixed`` + the arm's values + nuisance values (suggested by the sampler, or the
  defaults for grid/ofat: see ``Param.default_value``) + ``seed`` + ``optim.epochs`` (``budget.epochs``)
  + ``run.workers`` (``resources.workers``): exactly what ``TrialConfig.from_flat`` takes.

**Optuna.** Every design runs through one persistent study driven by Ray Tune's ``OptunaSearch`` with
``space=define_by_run(spec)``. The define-by-run suggests ``arm`` and ``seed`` (categoricals over arm ids
and seeds), for sampler designs the nuisance parameters, and returns the constants
``{"params": <flat params>, "arm": <id>}`` which OptunaSearch merges into the Tune config.

- grid/ofat: ``GridSampler({"arm": ids, "seed": seeds})`` enumerates every (arm, seed) once.
- tpe/qmc/gp: ``ArmBudgetSampler`` *assigns* ``arm`` and ``seed`` round-robin from the trial number
  (trial ``n`` → arm ``n % A``, seed ``seeds[(n // A) % S]``), so the first ``A x trials_per_arm``
  trials give every arm exactly its budget whatever the order of completion, and a resumed study
  continues the rotation (Optuna numbers trials in its storage). The distributions stay fixed, as
  Optuna requires; only the sampler's choice is deterministic. Nuisance values come from one inner
  sampler *per arm* that sees only that arm's trials, so each arm's TPE/GP model is its own and one arm's
  good region never steers another's (a fair comparison). Within an arm the seed varies from one nuisance
  point to the next; rerun the best point of each arm over all seeds before concluding (the playbook).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GPSampler, GridSampler, QMCSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from mdf_search.config import ConfigError, TrialConfig
from mdf_search.search.space import Scalar, SearchSpec, canonical, format_value

RESERVED_NAMES = ("arm", "seed")  # Optuna param names the define-by-run owns


@dataclass(frozen=True)
class Arm:
    """One assignment of the scientific parameters (inactive ones hold their ``otherwise`` or are absent)."""

    id: str
    params: dict[str, Scalar] = field(default_factory=dict)

    def matches(self, assignment: Mapping[str, Any]) -> bool:
        return all(
            k in self.params and canonical(k, self.params[k]) == canonical(k, v)
            for k, v in assignment.items()
        )


def _arm(spec: SearchSpec, assignment: Mapping[str, Scalar]) -> Arm:
    """Apply the conditions in file order; a key missing from ``assignment`` takes its first value."""
    context: dict[str, Any] = dict(spec.fixed)
    resolved = _resolve(spec.scientific, assignment, context)
    params = {key: value for key, value, _ in resolved}
    parts = [f"{key}={format_value(value)}" for key, value, active in resolved if active]
    return Arm("|".join(parts) or "default", params)


def _resolve(
    space: Mapping[str, Any], chosen: Mapping[str, Scalar], context: dict[str, Any]
) -> list[tuple[str, Scalar, bool]]:
    """Apply ``when``/``otherwise`` in file order: (key, value, active) for every key that gets a value.

    An active key takes its chosen value (or its default); an inactive one its ``otherwise`` value, or
    none at all. ``context`` is updated as keys resolve, so later conditions see earlier values.
    """
    out: list[tuple[str, Scalar, bool]] = []
    for key, param in space.items():
        active = param.active(context)
        if active:
            value = chosen[key] if key in chosen else param.default_value()
        elif param.has_otherwise:
            value = param.otherwise
        else:
            continue
        out.append((key, value, active))
        context[key] = value
    return out


def _unique(candidates: Iterable[Arm]) -> list[Arm]:
    seen: set[tuple[tuple[str, Any], ...]] = set()
    out = []
    for arm in candidates:
        key = tuple((k, repr(canonical(k, v))) for k, v in arm.params.items())
        if key not in seen:
            seen.add(key)
            out.append(arm)
    return out


def arms(spec: SearchSpec) -> list[Arm]:
    """The study's arms, baseline first, then in design order (see the module docstring)."""
    keys = list(spec.scientific)
    if spec.design == "ofat":
        reference = dict(spec.reference or {})
        candidates = [_arm(spec, reference)]
        for key in keys:
            for value in spec.scientific[key].choices or ():
                if key in reference and canonical(key, value) == canonical(key, reference[key]):
                    continue
                candidates.append(_arm(spec, {**reference, key: value}))
    else:
        grids = [spec.scientific[k].choices or () for k in keys]
        candidates = [_arm(spec, dict(zip(keys, combo, strict=True))) for combo in itertools.product(*grids)]
    out = _unique(candidates)
    base = baseline_arms(spec, out)
    if len(base) == 1:
        out.remove(base[0])
        out.insert(0, base[0])
    return out


def baseline_arms(spec: SearchSpec, arm_list: list[Arm]) -> list[Arm]:
    """Arms the declared baseline matches (a valid spec has exactly one; none without a baseline)."""
    if spec.baseline is None:
        return []
    return [a for a in arm_list if a.matches(spec.baseline)]


def trial_params(
    spec: SearchSpec, arm: Arm, seed: int, nuisance: Mapping[str, Scalar] | None = None
) -> dict[str, Scalar]:
    """The full flat params of one trial (``nuisance`` by flat key; missing or None → defaults)."""
    params: dict[str, Scalar] = {**spec.fixed, **arm.params}
    for key, value, _ in _resolve(spec.nuisance, nuisance or {}, dict(params)):
        params[key] = value
    params["seed"] = seed
    params["optim.epochs"] = spec.budget.epochs
    params["run.workers"] = spec.resources.workers
    return params


def trials_per_arm(spec: SearchSpec, n_arms: int | None = None) -> int:
    """Sampler designs: ``budget.trials_per_arm``, else ``budget.trials // arms``; grid/ofat: the seeds."""
    if not spec.is_sampler:
        return len(spec.seeds)
    n = len(arms(spec)) if n_arms is None else n_arms
    return spec.budget.trials_per_arm or (spec.budget.trials or 0) // max(n, 1)


def num_trials(spec: SearchSpec) -> int:
    """Trials the sweep runs: arms x seeds (grid/ofat) or arms x trials_per_arm (tpe/qmc/gp).

    Validation keeps it within ``budget.trials``; the runner passes it as Tune's ``num_samples``.
    """
    n = len(arms(spec))
    return n * trials_per_arm(spec, n)


def study_name(spec: SearchSpec) -> str:
    """The Optuna study name: the experiment name (stable across resumes and machines)."""
    return spec.experiment


def default_storage_url(experiment_dir: str | Path) -> str:
    """SQLite under the experiment directory (absolute, so the URL does not depend on the cwd)."""
    return f"sqlite:///{Path(experiment_dir).expanduser().resolve() / 'optuna.db'}"


# ---------------------------------------------------------------------------------------------------
# Validation beyond the schema: needs the arms (designs.py) and TrialConfig; runs nothing.
# ---------------------------------------------------------------------------------------------------
def _where(ids: list[str], total: int) -> str:
    if len(ids) == total and total > 1:
        return f"every arm ({total})"
    return "arm " + ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")


def check_design(spec: SearchSpec) -> tuple[list[str], list[str], str]:
    """(problems, notes, one-line summary): what ``space.validate_spec``/``validate_files`` report."""
    src, problems, notes = spec.path, [], []
    arm_list = arms(spec)
    ids = [a.id for a in arm_list]
    by_problem: dict[str, list[str]] = {}
    configs: dict[str, TrialConfig] = {}
    for arm in arm_list:
        params = trial_params(spec, arm, spec.seeds[0])
        try:
            configs[arm.id] = TrialConfig.from_flat(params)
        except ConfigError as err:
            for p in err.problems:
                by_problem.setdefault(p, []).append(arm.id)
    problems += [f"{src}: {_where(where, len(ids))}: {p}" for p, where in by_problem.items()]

    if spec.baseline is not None:
        matched = baseline_arms(spec, arm_list)
        if len(matched) != 1:
            what = (
                "matches no arm" if not matched else f"matches {len(matched)} arms {[a.id for a in matched]}"
            )
            problems.append(
                f"{src}: baseline: {dict(spec.baseline)} {what}; name exactly one of the arms: {ids}"
                + ("; add the other scientific keys" if matched else "")
            )

    total = num_trials(spec)
    cap = spec.budget.trials
    if spec.is_sampler:
        per_arm = trials_per_arm(spec, len(ids))
        size = f"{len(ids)} arm(s) x {per_arm} trial(s) per arm = {total} trials"
        if per_arm < 1:
            problems.append(
                f"{src}: budget.trials: {cap} is fewer than the {len(ids)} arms, so some arm gets no trial; "
                f"raise it to at least {len(ids)} (or set budget.trials_per_arm)"
            )
        elif cap is not None and total > cap:
            problems.append(
                f"{src}: budget.trials: the design needs {size}, over budget.trials={cap}; raise "
                f"budget.trials to {total} or lower budget.trials_per_arm"
            )
    else:
        size = f"{len(ids)} arm(s) x {len(spec.seeds)} seed(s) = {total} trials"
        if cap is not None and total > cap:
            problems.append(
                f"{src}: budget.trials: the {spec.design} design has {size}, over budget.trials={cap}; "
                f"raise budget.trials to {total}, or drop values or seeds"
            )
        elif cap is not None and cap > total:
            notes.append(f"budget.trials={cap} exceeds the design's {total} trials; the sweep runs {total}")

    memory = ""
    if spec.resources.gpus_per_worker > 0 and configs:
        memory = _memory(spec, configs, problems, notes)
    summary = f"experiment {spec.experiment}, design {spec.design}, {size}{memory}"
    return problems, notes, summary


def _memory(spec: SearchSpec, configs: Mapping[str, Any], problems: list[str], notes: list[str]) -> str:
    """Plan each arm (at the nuisance defaults) on the declared GPUs; an 11b config without weights is
    planned with ``model.weights="(meta)"`` (the meta build needs no files) and only noted."""
    import dataclasses

    from mdf_search.train.memory import plan_trial

    res = spec.resources
    # Workers sharing a GPU (gpus_per_worker < 1) each get their fraction of its memory.
    mem = res.gpu_mem_gb * min(1.0, res.gpus_per_worker)
    worst: tuple[float, str] = (0.0, "")
    for arm_id, cfg in configs.items():
        if cfg.model.preset == "11b" and not cfg.model.weights:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights="(meta)"))
            notes.append(f"arm {arm_id}: planned without model.weights (meta device)")
        plan = plan_trial(cfg, gpus=res.workers, gpu_mem_gb=mem)
        if not plan.fits:
            problems.append(f"{spec.path}: arm {arm_id}: does not fit on {res.workers} GPU(s): {plan.reason}")
        worst = max(worst, (plan.total_gb, arm_id))
    return f", memory up to {worst[0]:.1f} of {mem:g} GiB per GPU on {res.workers} GPU(s) ({worst[1]})"


# ---------------------------------------------------------------------------------------------------
# Optuna glue.
# ---------------------------------------------------------------------------------------------------
def suggest_nuisance(spec: SearchSpec, arm: Arm, trial: optuna.Trial) -> dict[str, Scalar]:
    """Suggest the active nuisance parameters (conditional ones under their own distinct names)."""
    context: dict[str, Any] = {**spec.fixed, **arm.params}
    values: dict[str, Scalar] = {}
    for key, p in spec.nuisance.items():
        if not p.active(context):
            if p.has_otherwise:
                context[key] = p.otherwise
            continue
        value: Scalar
        if p.choices is not None:
            value = trial.suggest_categorical(p.optuna_name, list(p.choices))
        elif p.integer:
            value = trial.suggest_int(
                p.optuna_name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            value = trial.suggest_float(p.optuna_name, p.low, p.high, step=p.step, log=p.log)
        values[key] = value
        context[key] = value
    return values


class DefineByRun:
    """The ``space=`` of Ray's OptunaSearch (a class, not a closure: OptunaSearch pickles it on save)."""

    def __init__(self, spec: SearchSpec, extra: Mapping[str, Any] | None = None) -> None:
        self.spec = spec
        self.extra = dict(extra or {})
        self.arms = {a.id: a for a in arms(spec)}

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        arm_id = trial.suggest_categorical("arm", list(self.arms))
        seed = trial.suggest_categorical("seed", list(self.spec.seeds))
        arm = self.arms[str(arm_id)]
        nuisance = suggest_nuisance(self.spec, arm, trial) if self.spec.is_sampler else None
        params = trial_params(self.spec, arm, int(seed), nuisance)
        return {**self.extra, "params": params, "arm": arm.id}


def define_by_run(spec: SearchSpec, extra: Mapping[str, Any] | None = None) -> DefineByRun:
    """The define-by-run function; ``extra`` constants (e.g. resources) are merged into its result."""
    return DefineByRun(spec, extra)


class StudyGridSampler(GridSampler):
    """``GridSampler`` that leaves stopping to Tune's ``num_samples``.

    Optuna's calls ``study.stop()`` after the last grid point, which raises outside ``study.optimize``
    (every ask/tell driver, Ray's OptunaSearch included, would log that error at the end of a sweep).
    """

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
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if t.params.get("arm") == self._arm]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

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
        return {k: v for k, v in space.items() if k not in RESERVED_NAMES}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        inner, view = self._for(study, trial)
        return inner.sample_relative(view, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name == "arm":
            return self.arm_of(trial.number)
        if param_name == "seed":
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
        return StudyGridSampler({"arm": ids, "seed": list(spec.seeds)}, seed=seed)
    per_arm = trials_per_arm(spec, len(ids))
    # Optuna's default of 10 random start-up trials would leave a small per-arm budget all random.
    n_startup = max(3, min(10, per_arm // 3))
    return ArmBudgetSampler(spec.design, ids, list(spec.seeds), seed=seed, n_startup=n_startup)
