"""Search-space files: each malformed file fails with a precise, fixable message; all problems at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdf_search.cluster import GPU_MEM_GB
from mdf_search.config import TrialConfig
from mdf_search.search.space import SpecError, load_spec
from mdf_search.search.spec_schema import parse_duration
from mdf_search.search.validate import validate_files, validate_spec

BASE: dict[str, Any] = {
    "experiment": "t",
    "metric": "val/macro_f1",
    "mode": "max",
    "design": "grid",
    "seeds": [0],
    "budget": {"trials": 10, "epochs": 1},
    "baseline": {"fusion.levels": "none"},
    "scientific": {
        "fusion.levels": ["none", "1234"],
        "fusion.injection": {
            "choices": ["parallel"],
            "when": {"fusion.levels": {"not": "none"}},
            "otherwise": "none",
        },
    },
    "fixed": {"model.preset": "tiny"},
}
DELETE = object()


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in change.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _problems(tmp_path: Path, content: str | dict[str, Any]) -> list[str]:
    """Everything load_spec + validate_spec report for the file."""
    path = tmp_path / "s.yaml"
    text = content if isinstance(content, str) else yaml.safe_dump(_merge(BASE, content), sort_keys=False)
    path.write_text(text)
    try:
        spec = load_spec(path)
    except SpecError as err:
        return err.problems
    return validate_spec(spec)


def test_the_base_file_is_valid(tmp_path: Path) -> None:
    assert _problems(tmp_path, {}) == []


CASES: list[tuple[str, str | dict[str, Any], str]] = [
    ("yaml-syntax", "experiment: t\nscientific: [a, b\nmode: max\n", "malformed YAML at line 3"),
    ("top-not-mapping", "- a\n- b\n", "the top level must be a mapping"),
    ("unknown-top-key", {"experimnt": "x"}, "experimnt: unknown key; did you mean 'experiment'?"),
    ("missing-metric", {"metric": DELETE}, "metric: is required"),
    ("bad-experiment-name", {"experiment": "my exp"}, "experiment: must be letters, digits"),
    (
        "unknown-flat-key",
        {"fixed": {"optim.lrr": 0.1}},
        "fixed.optim.lrr: unknown flat key; did you mean 'optim.lr'?",
    ),
    (
        "seed-in-fixed",
        {"fixed": {"seed": 3}},
        "fixed.seed: is not set here; list seeds in the top-level `seeds",
    ),
    (
        "epochs-in-fixed",
        {"fixed": {"optim.epochs": 3}},
        "fixed.optim.epochs: is not set here; set `budget: {epochs: N}`",
    ),
    (
        "workers-in-nuisance",
        {"nuisance": {"run.workers": [1, 2]}},
        "nuisance.run.workers: is not set here; set `resources",
    ),
    (
        "non-scalar-choice",
        {"scientific": {"fusion.levels": ["none", [1, 2]]}},
        "scientific.fusion.levels.choices[1]: must be a scalar (str/int/float/bool/null), but got [1, 2]; Optuna's persistent storage",
    ),
    (
        "low-above-high",
        {"nuisance": {"optim.lr": {"low": 0.1, "high": 0.01}}},
        "nuisance.optim.lr: `low <= high` must hold, but got (low=0.1, high=0.01)",
    ),
    (
        "log-low-zero",
        {"nuisance": {"optim.weight_decay": {"low": 0, "high": 0.1, "log": True}}},
        "nuisance.optim.weight_decay.low: a log range needs low > 0, but got 0",
    ),
    (
        "log-and-step",
        {"nuisance": {"optim.lr": {"low": 0.001, "high": 0.01, "log": True, "step": 0.001}}},
        "Optuna cannot combine log with step",
    ),
    (
        "step-off-grid",
        {"nuisance": {"optim.warmup_frac": {"low": 0.0, "high": 0.25, "step": 0.1}}},
        "nuisance.optim.warmup_frac.step: high - low must be a multiple of step",
    ),
    (
        "range-out-of-parser",
        {"nuisance": {"optim.lr": {"low": 0.001, "high": 2.0}}},
        "nuisance.optim.lr.high: must be a number in (0.0, 1.0], but got 2.0",
    ),
    (
        "range-unknown-key",
        {"nuisance": {"optim.lr": {"low": 0.001, "hgh": 0.01}}},
        "nuisance.optim.lr.hgh: unknown key; did you mean 'high'?",
    ),
    (
        "range-default-outside",
        {"nuisance": {"optim.lr": {"low": 0.001, "high": 0.01, "default": 0.5}}},
        "nuisance.optim.lr.default: must lie in [0.001, 0.01], but got 0.5",
    ),
    (
        "categorical-default",
        {"nuisance": {"optim.micro_batch": {"choices": [2, 4], "default": 8}}},
        "nuisance.optim.micro_batch.default: 8 is not among the choices",
    ),
    (
        "scalar-param",
        {"nuisance": {"optim.lr": 0.001}},
        "nuisance.optim.lr: must be a list of values, {choices: [...]} or a range",
    ),
    (
        "scientific-range",
        {"scientific": {"optim.lr": {"low": 0.001, "high": 0.01}}},
        "scientific parameters are compared value by value",
    ),
    (
        "bad-mode",
        {"mode": "maximize"},
        "mode: must be one of max, min, but got 'maximize'; did you mean 'max'?",
    ),
    (
        "bad-design",
        {"design": "grd"},
        "design: must be one of grid, ofat, tpe, qmc, gp, but got 'grd'; did you mean 'grid'?",
    ),
    ("negative-trials", {"budget": {"trials": -3}}, "budget.trials: must be an integer >= 1, but got -3"),
    ("unknown-budget-key", {"budget": {"epoch": 2}}, "budget.epoch: unknown key; did you mean 'epochs'?"),
    (
        "bad-wall-time",
        {"budget": {"max_wall_time": "soon"}},
        "budget.max_wall_time: must be a duration like '90s', '30m', '2h' or seconds, but got 'soon'",
    ),
    (
        "bad-scheduler",
        {"scheduler": {"type": "hyperband"}},
        "scheduler.type: must be one of asha, none, but got 'hyperband'",
    ),
    (
        "grace-over-epochs",
        {"scheduler": {"type": "asha", "grace_period": 3}},
        "scheduler.grace_period: 3 epochs exceeds budget.epochs=1",
    ),
    ("duplicate-seeds", {"seeds": [0, 0]}, "seeds: duplicate seeds in [0, 0]"),
    (
        "when-unknown-key",
        {"scientific": {"fusion.injection": {"when": {"fusion.levls": "4"}}}},
        "scientific.fusion.injection.when.fusion.levls: unknown flat key; did you mean 'fusion.levels'?",
    ),
    (
        "when-undeclared-key",
        {"nuisance": {"freeze.lora_rank": {"choices": [4, 8], "when": {"freeze": "lora"}}}},
        "nuisance.freeze.lora_rank.when.freeze: names no fixed key and no parameter listed before 'freeze.lora_rank'",
    ),
    (
        "when-bad-shape",
        {"scientific": {"fusion.injection": {"when": {"fusion.levels": {"is": "4"}}}}},
        "must be a value, {not: value} or {in: [values]}",
    ),
    (
        "otherwise-without-when",
        {"nuisance": {"optim.micro_batch": {"choices": [2, 4], "otherwise": 1}}},
        "nuisance.optim.micro_batch.otherwise: is used only with `when`",
    ),
    (
        "key-in-two-sections",
        {"fixed": {"fusion.levels": "1234"}},
        "fixed.fusion.levels: also under scientific; a parameter has one role per study",
    ),
    (
        "baseline-not-an-arm",
        {"baseline": {"fusion.levels": "1234", "fusion.injection": "none"}},
        "baseline: {'fusion.levels': '1234', 'fusion.injection': 'none'} matches no arm",
    ),
    (
        "baseline-not-scientific",
        {"baseline": {"optim.lr": 0.1}},
        "baseline.optim.lr: is not a scientific parameter",
    ),
    (
        "baseline-unknown-value",
        {"baseline": {"fusion.levels": "2"}},
        "baseline.fusion.levels: '2' is not among the values ['none', '1234']",
    ),
    (
        "ofat-without-reference",
        {"design": "ofat"},
        "reference: design ofat varies each factor from a reference configuration; add",
    ),
    (
        "reference-without-ofat",
        {"reference": {"fusion.levels": "1234"}},
        "reference: is used only by design ofat (design is grid); remove it",
    ),
    (
        "tpe-without-trials",
        {"design": "tpe", "budget": {"trials": None}},
        "budget.trials: design tpe samples until a budget; set budget.trials",
    ),
    (
        "tpe-fewer-trials-than-arms",
        {"design": "tpe", "budget": {"trials": 1}},
        "budget.trials: 1 is fewer than the 2 arms",
    ),
    (
        "layer-map-not-xattn",
        {"fixed": {"fusion.map": "1:2,2:3,3:3,4:3"}},
        "arm fusion.levels=1234|fusion.injection=parallel: fusion.map: text layers [2] are not cross-attention layers of this preset; choose among [1, 3]",
    ),
    (
        "unknown-freeze",
        {"scientific": {"freeze": ["none", "everything"]}},
        "scientific.freeze.choices[1]: must be one of ['none', 'unet', 'mllm'",
    ),
    (
        "grid-over-budget",
        {"budget": {"trials": 1}},
        "budget.trials: the grid design has 2 arm(s) x 1 seed(s) = 2 trials, over budget.trials=1; raise budget.trials to 2",
    ),
    ("empty-scientific", {"scientific": {}}, "scientific: must name at least one parameter"),
    (
        "duplicate-values",
        {"scientific": {"fusion.levels": ["none", "1234", "4321"]}},
        "scientific.fusion.levels.choices[2]: duplicate value '4321' (same as '1234'); remove one",
    ),
    (
        "every-arm-fails",
        {"fixed": {"fusion.grid": 1000}},
        "fusion.grid: must be an integer in [1, 64], but got 1000",
    ),
    (
        "11b-without-weights",
        {"fixed": {"model.preset": "11b"}},
        "every arm (2): model.weights: the 11b preset loads LLaMA 3.2 11B Vision from a local directory",
    ),
    (
        "cross-field-in-arm",
        {"scientific": {"fusion.injection": {"otherwise": "parallel"}}},
        "arm fusion.levels=none: fusion.injection: 'parallel' needs fused levels",
    ),
]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_names_the_problem(
    tmp_path: Path, content: str | dict[str, Any], expected: str
) -> None:
    problems = _problems(tmp_path, content)
    assert any(expected in p for p in problems), "\n".join(problems)
    assert all(p.startswith(f"{tmp_path / 's.yaml'}: ") for p in problems)


def test_memory_that_does_not_fit_is_a_problem(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "fixed": {"model.preset": "11b", "optim.precision": "bf16"},
            "resources": {"workers": 1, "gpus_per_worker": 1, "gpu_mem_gb": 16},
        },
    )
    assert any("does not fit on 1 GPU(s): needs" in p for p in problems), problems
    # the plan is a meta-device build: it runs without model.weights, which is a problem of its own
    assert any("model.weights: the 11b preset loads" in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    schema = _problems(tmp_path, {"experimnt": "x", "mode": "maximize", "budget": {"trials": -3}})
    assert len(schema) == 3
    sections = _problems(
        tmp_path,
        {
            "fixed": {"optim.lrr": 0.1, "seed": 1},
            "nuisance": {"optim.lr": {"low": 0.1, "high": 0.01}},
            "baseline": {"fusion.levels": "2"},
        },
    )
    for expected in ("optim.lrr: unknown flat key", "fixed.seed", "`low <= high`", "baseline.fusion.levels"):
        assert any(expected in p for p in sections), sections
    assert len(sections) == 4


def test_validate_files_reports_each_file_and_exits_2_on_any_problem(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(BASE, sort_keys=False))
    bad.write_text(yaml.safe_dump(_merge(BASE, {"mode": "up"}), sort_keys=False))
    code, lines = validate_files([good])
    assert code == 0
    assert lines[:3] == [
        f"{good}: ok: experiment t, design grid, 2 arm(s) x 1 seed(s) = 2 trials",
        "  note: budget.trials=10 exceeds the design's 2 trials; the sweep runs 2",
        "  power: 1 shared seed(s), 1 arm(s) vs the baseline, α=0.05",
    ]
    assert "cannot reach α" in lines[3] and "needs >= 2 shared seeds" in lines[4]
    assert lines[-1].startswith("  warning: no seed-level comparison can reach α=0.05 with 1 shared seed(s)")
    code, lines = validate_files([good, bad, tmp_path / "missing.yaml"])
    assert code == 2
    at = lines.index(f"{bad}: INVALID (1 problem(s))")
    assert "mode: must be one of max, min, but got 'up'" in lines[at + 1]
    assert "file not found" in lines[-1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), (45, 45.0), ("1.5h", 5400.0), (None, None)],
)
def test_wall_time_spellings(text: Any, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_loaded_spec_is_typed(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, {"budget": {"max_wall_time": "30m"}}), sort_keys=False))
    spec = load_spec(path)
    assert spec.budget.max_wall_time == 1800.0
    assert spec.scientific["fusion.injection"].optuna_name == "fusion.injection[fusion.levels!=none]"
    assert spec.path == str(path) and spec.seeds == (0,)


def test_the_spec_defaults_are_the_trial_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    bare = _merge(BASE, {"seeds": DELETE, "budget": DELETE, "resources": DELETE})
    path.write_text(yaml.safe_dump(bare, sort_keys=False))
    spec, trial = load_spec(path), TrialConfig()
    assert spec.budget.epochs == trial.optim.epochs and spec.resources.workers == trial.run.workers
    assert spec.seeds == (trial.run.seed,) and spec.resources.gpu_mem_gb == GPU_MEM_GB


def test_validate_says_what_the_design_can_detect(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    three = _merge(
        BASE,
        {
            "seeds": [0, 1, 2],
            "budget": {"trials": 12},
            "scientific": {"fusion.levels": ["none", "4", "34", "1234"]},
        },
    )
    path.write_text(yaml.safe_dump(three, sort_keys=False))
    code, lines = validate_files([path])
    assert code == 0
    text = "\n".join(lines)
    assert "power: 3 shared seed(s), 3 arm(s) vs the baseline, α=0.05" in text
    assert "smallest p after Holm 0.75, cannot reach α" in text  # 3 arms x 2 / 2**3
    assert "warning: the exact sign-flip test cannot reach α=0.05 with 3 shared seed(s)" in text
    assert "adequate" not in text
    eight = _merge(BASE, {"seeds": list(range(8)), "budget": {"trials": 16}})
    path.write_text(yaml.safe_dump(eight, sort_keys=False))
    code, lines = validate_files([path])
    assert code == 0 and not any("warning" in line for line in lines)
    assert any("smallest p after Holm 0.00781, can reach α" in line for line in lines)


@pytest.mark.parametrize("metric", ["test/accuracy", "test/type/macro_f1"])
def test_a_test_metric_cannot_select(tmp_path: Path, metric: str) -> None:
    problems = _problems(tmp_path, {"metric": metric, "scheduler": {"type": "asha"}})
    assert len(problems) == 1, problems
    assert f"metric: {metric}: the study selects on validation only" in problems[0]
    assert problems[0].endswith(f"use val/{metric[5:]}") and "scheduler" in problems[0]
