"""Designs: hand-checked arms, stable ids, and a real in-memory Optuna study driving the define-by-run."""

from __future__ import annotations

import itertools
import math
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from mdf_search.config import TrialConfig
from mdf_search.search.designs import (
    Arm,
    ArmBudgetSampler,
    _ArmView,
    arms,
    default_storage_url,
    define_by_run,
    make_sampler,
    num_trials,
    study_name,
    trial_params,
)
from mdf_search.search.space import SearchSpec, load_spec

optuna.logging.set_verbosity(optuna.logging.ERROR)

INJECTION = {
    "choices": ["concat", "parallel"],
    "when": {"fusion.levels": {"not": "none"}},
    "otherwise": "none",
}


def _spec(tmp_path: Path, **fields: Any) -> SearchSpec:
    body: dict[str, Any] = {
        "experiment": "d",
        "metric": "val/macro_f1",
        "mode": "max",
        "design": "grid",
        "seeds": [0, 1],
        "budget": {"epochs": 2},
        "scientific": {"fusion.levels": ["none", "4", "1234"], "fusion.injection": INJECTION},
        "fixed": {"model.preset": "tiny"},
        **fields,
    }
    path = tmp_path / f"{body['experiment']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return load_spec(path)


def _ids(spec: SearchSpec) -> list[str]:
    return [a.id for a in arms(spec)]


def test_grid_is_the_factorial_with_conditions_collapsed(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert _ids(spec) == [
        "fusion.levels=none",  # none x {concat, parallel} collapse: injection is 'none' for both
        "fusion.levels=4|fusion.injection=concat",
        "fusion.levels=4|fusion.injection=parallel",
        "fusion.levels=1234|fusion.injection=concat",
        "fusion.levels=1234|fusion.injection=parallel",
    ]
    assert arms(spec)[0] == Arm("fusion.levels=none", {"fusion.levels": "none", "fusion.injection": "none"})
    assert num_trials(spec) == 5 * 2


def test_baseline_comes_first_and_ids_are_stable(tmp_path: Path) -> None:
    spec = _spec(tmp_path, baseline={"fusion.levels": "4321", "fusion.injection": "parallel"})
    assert _ids(spec)[0] == "fusion.levels=1234|fusion.injection=parallel"  # '4321' reads as '1234'
    assert _ids(spec) == _ids(load_spec(spec.path))
    assert len(set(_ids(spec))) == len(_ids(spec))


def test_ofat_varies_one_factor_at_a_time_from_the_reference(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        design="ofat",
        scientific={
            "fusion.levels": ["none", "4", "1234"],
            "fusion.injection": INJECTION,
            "freeze": ["none", "mllm"],
        },
        reference={"fusion.levels": "1234", "fusion.injection": "parallel", "freeze": "none"},
        baseline={"fusion.levels": "none"},
    )
    assert _ids(spec) == [
        "fusion.levels=none|freeze=none",
        "fusion.levels=1234|fusion.injection=parallel|freeze=none",  # the reference
        "fusion.levels=4|fusion.injection=parallel|freeze=none",
        "fusion.levels=1234|fusion.injection=concat|freeze=none",
        "fusion.levels=1234|fusion.injection=parallel|freeze=mllm",
    ]
    assert num_trials(spec) == 5 * 2


def test_trial_params_are_complete_and_pass_trial_config(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        scientific={"freeze": ["none", "lora"]},
        nuisance={
            "optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "optim.warmup_frac": {"low": 0.0, "high": 0.2, "step": 0.05},
            "freeze.lora_rank": {"choices": [4, 8], "when": {"freeze": "lora"}, "default": 8},
        },
        fixed={"model.preset": "tiny", "fusion.levels": "1234"},
        resources={"workers": 3},
    )
    plain, lora = arms(spec)
    params = trial_params(spec, plain, seed=7)
    assert params == {
        "model.preset": "tiny",
        "fusion.levels": "1234",
        "freeze": "none",
        "optim.lr": pytest.approx(1.0e-3),  # geometric mean of a log range without default
        "optim.warmup_frac": pytest.approx(0.1),  # midpoint, on the step grid
        "seed": 7,
        "optim.epochs": 2,
        "run.workers": 3,
    }
    assert trial_params(spec, lora, seed=0)["freeze.lora_rank"] == 8  # active only with freeze=lora
    assert trial_params(spec, lora, 0, {"freeze.lora_rank": 4, "optim.lr": 0.005})["freeze.lora_rank"] == 4
    cfg = TrialConfig.from_flat(trial_params(spec, lora, seed=1))
    assert (cfg.freeze.strategy, cfg.freeze.lora_rank, cfg.optim.epochs, cfg.run.seed) == ("lora", 8, 2, 1)


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
    space = define_by_run(spec, extra={"gpu_mem_gb": 80.0})
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space(trial)
        value = -math.log(config["params"].get("optim.lr", 1e-3)) + len(config["arm"]) * 0.01
        study.tell(trial, value)
        out.append((study.trials[trial.number], config))
    return out


def test_grid_study_enumerates_every_arm_and_seed_exactly_once(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    done = _drive(spec, num_trials(spec))
    pairs = Counter((config["arm"], config["params"]["seed"]) for _, config in done)
    assert pairs == Counter(itertools.product(_ids(spec), spec.seeds))
    for trial, config in done:
        assert trial.params == {"arm": config["arm"], "seed": config["params"]["seed"]}
        assert config["gpu_mem_gb"] == 80.0
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
    spec = _spec(tmp_path, design=design, **SAMPLER_FIELDS)
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
    spec = _spec(tmp_path, design="tpe", **SAMPLER_FIELDS)
    storage = optuna.storages.InMemoryStorage()
    first = _drive(spec, 5, storage)
    second = _drive(spec, 7, storage)  # a fresh sampler and study object on the same storage
    per_arm = Counter(config["arm"] for _, config in first + second)
    assert per_arm == {"freeze=none": 4, "freeze=mllm": 4, "freeze=lora": 4}


def test_each_arm_sampler_sees_only_its_own_trials(tmp_path: Path) -> None:
    spec = _spec(tmp_path, design="tpe", **SAMPLER_FIELDS)
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
        spec = _spec(tmp_path, design=design, **SAMPLER_FIELDS)
        sampler = pickle.loads(pickle.dumps(make_sampler(spec)))
        space = pickle.loads(pickle.dumps(define_by_run(spec)))
        assert space.arms.keys() == {a.id for a in arms(spec)}
        if design == "tpe":
            assert isinstance(sampler, ArmBudgetSampler) and sampler.arm_of(4) == "freeze=mllm"
        else:
            assert isinstance(sampler, optuna.samplers.GridSampler)


def test_names_and_storage(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert study_name(spec) == "d"
    assert default_storage_url(tmp_path / "runs" / "d") == f"sqlite:///{tmp_path.resolve()}/runs/d/optuna.db"
