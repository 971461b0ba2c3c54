"""The resolved design a sweep records next to its results: ``<experiment>/arms.json``.

The design code runs here, once, when the sweep starts; reports and the live view read the file
(``report.design``, which documents the format) and run no search code, so a report of an old run shows
the arms that run had. The file is written atomically and never overwritten, like spec.yaml beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdf_search.atomic import write_text
from mdf_search.report.design import ARMS_FILE, FORMAT
from mdf_search.search.designs import arms, baseline_arms, num_trials
from mdf_search.search.space import Param, SearchSpec


def design_record(spec: SearchSpec) -> dict[str, Any]:
    """The arms.json content of ``spec`` (a JSON-ready dict; the format is ``report.design``'s)."""
    arm_list = arms(spec)
    baseline = {a.id for a in baseline_arms(spec, arm_list)}
    budget = spec.budget
    return {
        "format": FORMAT,
        "experiment": spec.experiment,
        "description": spec.description,
        "design": spec.design,
        "metric": spec.metric,
        "mode": spec.mode,
        "seeds": list(spec.seeds),
        "trials": num_trials(spec),
        "budget": {
            "epochs": budget.epochs,
            "trials": budget.trials,
            "trials_per_arm": budget.trials_per_arm,
            "max_wall_time_s": budget.max_wall_time,
            "max_gpu_hours": budget.max_gpu_hours,
        },
        "storage": spec.study.storage,
        "scientific": {key: _domain(param) for key, param in spec.scientific.items()},
        "nuisance": {key: _domain(param) for key, param in spec.nuisance.items()},
        "arms": [
            {"id": arm.id, "order": order, "baseline": arm.id in baseline, "params": dict(arm.params)}
            for order, arm in enumerate(arm_list)
        ],
    }


def _domain(param: Param) -> dict[str, Any]:
    if param.choices is not None:
        return {"choices": list(param.choices), "default": param.default_value()}
    return {
        "low": param.low,
        "high": param.high,
        "log": param.log,
        "step": param.step,
        "integer": param.integer,
        "default": param.default_value(),
    }


def write_design_record(spec: SearchSpec, experiment_dir: str | Path) -> Path:
    """Write ``<experiment_dir>/arms.json`` unless it is there (a resumed sweep keeps its first record)."""
    path = Path(experiment_dir) / ARMS_FILE
    if not path.exists():
        write_text(path, json.dumps(design_record(spec), indent=1) + "\n")
    return path
