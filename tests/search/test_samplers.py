"""Samplers: a real in-memory Optuna study, asked and told as Ray's OptunaSearch does, driving the
define-by-run; every arm and seed once (grid), every arm its budget (tpe/qmc/gp), one history per arm."""

from __future__ import annotations

import itertools
import math
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest

from mdf_search.config import TrialConfig
from mdf_search.search.designs import arms, define_by_run, factor_levels, num_trials, study_name
from mdf_search.search.samplers import ArmBudgetSampler, StudyGridSampler, _ArmView, make_sampler
from mdf_search.search.space import SearchSpec
from tests.search.designs_helpers import arm_ids, grid_spec

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _drive(
    spec: SearchSpec, n: int, storage: Any = None
) -> list[tuple[optuna.trial.FrozenTrial, dict[str, Any]]]:
    """Ask/tell like Ray's OptunaSearch: the define-by-run runs on each asked trial."""
    study = optuna.create_study(
        study_name=study_name(spec),
        storage=storage,
        sampler=make_sampler(spec),
        direction="maximize",
        load_if_exists=True,
    )
    space = define_by_run(spec)
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space(trial)
        value = -math.log(config["params"].get("optim.lr", 1e-3)) + len(config["arm"]) * 0.01
        study.tell(trial, value)
        out.append((study.trials[trial.number], config))
    return out


def test_grid_study_enumerates_every_arm_and_seed_exactly_once(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path)
    done = _drive(spec, num_trials(spec))
    pairs = Counter((config["arm"], config["params"]["seed"]) for _, config in done)
    assert pairs == Counter(itertools.product(arm_ids(spec), spec.seeds))
    for trial, config in done:
        # (arm, seed), and each scientific factor the arm holds as its own categorical over every level
        factors = {k: config["params"][k] for k in spec.scientific if k in config["params"]}
        assert trial.params == {"arm": config["arm"], "seed": config["params"]["seed"], **factors}
        for key in factors:
            assert trial.distributions[key].choices == tuple(factor_levels(spec)[key])  # type: ignore[attr-defined]
        assert set(config) == {"params", "arm"}  # Tune's config holds only these
        TrialConfig.from_flat(config["params"])


SAMPLER_FIELDS: dict[str, Any] = {
    "scientific": {"freeze": ["none", "mllm", "lora"]},
    "nuisance": {
        "optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "optim.micro_batch": {"low": 2, "high": 8, "int": True, "step": 2},
        "freeze.lora_rank": {"choices": [4, 8, 16], "when": {"freeze": "lora"}},
    },
    "fixed": {"model.preset": "tiny", "fusion.levels": "1234"},
    "budget": {"trials": 12, "trials_per_arm": 4, "epochs": 1},
}


@pytest.mark.parametrize("design", ["tpe", "qmc", "gp"])
def test_sampler_designs_give_each_arm_its_budget(tmp_path: Path, design: str) -> None:
    spec = grid_spec(tmp_path, design=design, **SAMPLER_FIELDS)
    assert num_trials(spec) == 12
    done = _drive(spec, num_trials(spec))
    per_arm = Counter(config["arm"] for _, config in done)
    assert per_arm == {"freeze=none": 4, "freeze=mllm": 4, "freeze=lora": 4}
    seeds = Counter((config["arm"], config["params"]["seed"]) for _, config in done)
    assert set(seeds.values()) == {2}  # the arm's 4 trials alternate over the 2 seeds
    for trial, config in done:
        lora = config["arm"] == "freeze=lora"
        assert ("freeze.lora_rank[freeze=lora]" in trial.params) == lora
        assert ("freeze.lora_rank" in config["params"]) == lora
        assert set(trial.params) >= {"arm", "seed", "optim.lr", "optim.micro_batch"}
        assert config["params"]["optim.micro_batch"] in (2, 4, 6, 8)
        TrialConfig.from_flat(config["params"])


def test_round_robin_continues_when_the_study_is_resumed(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path, design="tpe", **SAMPLER_FIELDS)
    storage = optuna.storages.InMemoryStorage()
    first = _drive(spec, 5, storage)
    second = _drive(spec, 7, storage)  # a fresh sampler and study object on the same storage
    per_arm = Counter(config["arm"] for _, config in first + second)
    assert per_arm == {"freeze=none": 4, "freeze=mllm": 4, "freeze=lora": 4}


def test_each_arm_sampler_sees_only_its_own_trials(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path, design="tpe", **SAMPLER_FIELDS)
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    space = define_by_run(spec)
    for _ in range(6):
        trial = study.ask()
        study.tell(trial, float(len(space(trial)["arm"])))
    view = _ArmView(study, "freeze=lora")
    assert [t.number for t in view._get_trials(deepcopy=False)] == [2, 5]
    assert [t.number for t in view.trials] == [2, 5]
    assert view.direction == study.direction  # everything else is the study's


def test_sampler_and_space_survive_pickle(tmp_path: Path) -> None:
    """Ray's OptunaSearch pickles its space and sampler into every searcher checkpoint."""
    for design in ("grid", "tpe"):
        spec = grid_spec(tmp_path, design=design, **SAMPLER_FIELDS)
        sampler = pickle.loads(pickle.dumps(make_sampler(spec)))
        space = pickle.loads(pickle.dumps(define_by_run(spec)))
        assert space.arms.keys() == {a.id for a in arms(spec)}
        if design == "tpe":
            assert isinstance(sampler, ArmBudgetSampler) and sampler.arm_of(4) == "freeze=mllm"
        else:
            assert isinstance(sampler, optuna.samplers.GridSampler)


def test_the_grid_sampler_leaves_stopping_to_tune() -> None:
    """Optuna's GridSampler stops the study after the last point, which raises outside optimize."""
    grid = {"arm": ["a", "b"], "seed": [0]}
    for sampler, raises in ((StudyGridSampler(grid), False), (optuna.samplers.GridSampler(grid), True)):
        study = optuna.create_study(sampler=sampler)
        study.tell(study.ask(), 1.0)
        last = study.ask()
        if raises:
            with pytest.raises(RuntimeError, match="stop"):
                study.tell(last, 2.0)
        else:
            study.tell(last, 2.0)
            assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_round_robin_by_trial_number() -> None:
    sampler = ArmBudgetSampler("tpe", ["a", "b", "c"], [10, 20])
    assert [sampler.arm_of(n) for n in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert [sampler.seed_of(n) for n in range(7)] == [10, 10, 10, 20, 20, 20, 10]


def test_an_unknown_inner_design_fails_when_the_sampler_is_made() -> None:
    with pytest.raises(ValueError, match="design must be one of tpe, qmc, gp, but got 'grid'"):
        ArmBudgetSampler("grid", ["a"], [0])


def test_the_relative_search_space_leaves_arm_and_seed_to_the_rotation(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path, design="tpe", **SAMPLER_FIELDS)
    sampler = make_sampler(spec)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    space = define_by_run(spec)
    for _ in range(9):
        trial = study.ask()
        study.tell(trial, float(len(space(trial)["arm"])))
    asked = study.ask()  # trial 9: arm freeze=none, whose history is trials 0, 3 and 6
    space_of_next = sampler.infer_relative_search_space(study, study.trials[asked.number])
    assert "arm" not in space_of_next and "seed" not in space_of_next
    assert {"optim.lr", "optim.micro_batch"} <= set(space_of_next)


@pytest.mark.parametrize(("per_arm", "startup"), [(4, 3), (12, 4), (60, 10)])
def test_startup_trials_scale_with_the_arm_budget(tmp_path: Path, per_arm: int, startup: int) -> None:
    budget = {"trials": 3 * per_arm, "trials_per_arm": per_arm, "epochs": 1}
    sampler = make_sampler(grid_spec(tmp_path, design="tpe", **{**SAMPLER_FIELDS, "budget": budget}))
    assert isinstance(sampler, ArmBudgetSampler) and sampler.n_startup == startup
