"""Designs: which arms a study runs, the flat params of each trial, and the define-by-run Optuna calls.

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
``{"params": <flat params>, "arm": <id>}`` which OptunaSearch merges into the Tune config. Which arm and
seed each trial gets is the sampler's choice (``samplers.make_sampler``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdf_search.search.space import Scalar, SearchSpec, canonical, format_value

if TYPE_CHECKING:  # only for annotations: designs (and report.power through it) need no Optuna import
    import optuna

# The Optuna param names the define-by-run owns (nuisance names are flat keys; `seed` is reserved).
ARM_PARAM, SEED_PARAM = "arm", "seed"


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
# The define-by-run.
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


def factor_levels(spec: SearchSpec) -> dict[str, list[Scalar]]:
    """Every value each scientific factor takes in some arm: its choices, then its ``otherwise``."""
    out: dict[str, list[Scalar]] = {}
    for key, param in spec.scientific.items():
        levels = list(param.choices or ())
        if param.has_otherwise and all(canonical(key, param.otherwise) != canonical(key, v) for v in levels):
            levels.append(param.otherwise)
        out[key] = levels
    return out


class DefineByRun:
    """The ``space=`` of Ray's OptunaSearch (a class, not a closure: OptunaSearch pickles it on save).

    Grid and ofat designs also suggest each scientific factor the arm holds, as its own categorical
    over :func:`factor_levels` (the grid sampler answers with the arm's value): the study then shows
    the factors to Optuna's importance, slice and parallel-coordinate views, not only the arm id."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.arms = {a.id: a for a in arms(spec)}
        self.levels = factor_levels(spec)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        arm_id = trial.suggest_categorical(ARM_PARAM, list(self.arms))
        seed = trial.suggest_categorical(SEED_PARAM, list(self.spec.seeds))
        arm = self.arms[str(arm_id)]
        if not self.spec.is_sampler:
            for key in (k for k in self.levels if k in arm.params):
                trial.suggest_categorical(key, self.levels[key])
        nuisance = suggest_nuisance(self.spec, arm, trial) if self.spec.is_sampler else None
        params = trial_params(self.spec, arm, int(seed), nuisance)
        return {"params": params, "arm": arm.id}


def define_by_run(spec: SearchSpec) -> DefineByRun:
    """The define-by-run function: each asked trial's Tune config, ``{"params": ..., "arm": ...}``."""
    return DefineByRun(spec)
