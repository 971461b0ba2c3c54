"""Designs: hand-checked arms, stable ids, trial params, and the define-by-run on a real Optuna trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial

from mdf_search.config import TrialConfig
from mdf_search.search.designs import (
    Arm,
    arms,
    default_storage_url,
    define_by_run,
    num_trials,
    study_name,
    trial_params,
)
from mdf_search.search.space import load_spec
from tests.search.designs_helpers import INJECTION, arm_ids, grid_spec

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_grid_is_the_factorial_with_conditions_collapsed(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path)
    assert arm_ids(spec) == [
        "fusion.levels=none",  # none x {concat, parallel} collapse: injection is 'none' for both
        "fusion.levels=4|fusion.injection=concat",
        "fusion.levels=4|fusion.injection=parallel",
        "fusion.levels=1234|fusion.injection=concat",
        "fusion.levels=1234|fusion.injection=parallel",
    ]
    assert arms(spec)[0] == Arm("fusion.levels=none", {"fusion.levels": "none", "fusion.injection": "none"})
    assert num_trials(spec) == 5 * 2


def test_baseline_comes_first_and_ids_are_stable(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path, baseline={"fusion.levels": "4321", "fusion.injection": "parallel"})
    assert arm_ids(spec)[0] == "fusion.levels=1234|fusion.injection=parallel"  # '4321' reads as '1234'
    assert arm_ids(spec) == arm_ids(load_spec(spec.path))
    assert len(set(arm_ids(spec))) == len(arm_ids(spec))


def test_ofat_varies_one_factor_at_a_time_from_the_reference(tmp_path: Path) -> None:
    spec = grid_spec(
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
    assert arm_ids(spec) == [
        "fusion.levels=none|freeze=none",
        "fusion.levels=1234|fusion.injection=parallel|freeze=none",  # the reference
        "fusion.levels=4|fusion.injection=parallel|freeze=none",
        "fusion.levels=1234|fusion.injection=concat|freeze=none",
        "fusion.levels=1234|fusion.injection=parallel|freeze=mllm",
    ]
    assert num_trials(spec) == 5 * 2


def test_trial_params_are_complete_and_pass_trial_config(tmp_path: Path) -> None:
    spec = grid_spec(
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


def test_define_by_run_asks_for_the_arm_the_seed_and_the_active_nuisance(tmp_path: Path) -> None:
    fields: dict[str, Any] = {
        "scientific": {"freeze": ["none", "lora"]},
        "nuisance": {
            "optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "freeze.lora_rank": {"choices": [4, 8], "when": {"freeze": "lora"}},
        },
        "budget": {"trials": 4, "epochs": 1},
    }
    space = define_by_run(grid_spec(tmp_path, design="tpe", **fields))
    # FixedTrial answers only the names it holds: asking for any other parameter raises.
    names = {"arm": "freeze=lora", "seed": 1, "optim.lr": 0.002, "freeze.lora_rank[freeze=lora]": 4}
    assert space(FixedTrial(names)) == {
        "arm": "freeze=lora",
        "params": {
            "model.preset": "tiny",
            "freeze": "lora",
            "optim.lr": 0.002,
            "freeze.lora_rank": 4,
            "seed": 1,
            "optim.epochs": 1,
            "run.workers": 2,
        },
    }
    plain = space(FixedTrial({"arm": "freeze=none", "seed": 0, "optim.lr": 0.002}))
    assert plain["arm"] == "freeze=none" and "freeze.lora_rank" not in plain["params"]
    grid = define_by_run(grid_spec(tmp_path, design="grid", **fields))  # nuisance held at the defaults
    held = grid(FixedTrial({"arm": "freeze=lora", "seed": 0, "freeze": "lora"}))["params"]  # + the factor
    assert held["optim.lr"] == pytest.approx(1.0e-3) and held["freeze.lora_rank"] == 4


def test_names_and_storage(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path)
    assert study_name(spec) == "d"
    assert default_storage_url(tmp_path / "runs" / "d") == f"sqlite:///{tmp_path.resolve()}/runs/d/optuna.db"


def test_factor_levels_are_the_choices_then_otherwise(tmp_path: Path) -> None:
    from mdf_search.search.designs import factor_levels

    spec = grid_spec(tmp_path)  # fusion.injection: otherwise none when fusion.levels is none
    levels = factor_levels(spec)
    assert levels["fusion.levels"] == ["none", "4", "1234"]
    assert levels["fusion.injection"][-1] == "none" and len(set(levels["fusion.injection"])) == len(
        levels["fusion.injection"]
    )
