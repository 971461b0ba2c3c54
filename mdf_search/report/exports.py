"""The report's exports: DeepCAVE's DataFrame run (configspace + trials CSV) and the Optuna study for
optuna-dashboard, named relative to the experiment directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from mdf_search.escape import csv_cell
from mdf_search.report.document import Section, d
from mdf_search.report.experiment import Experiment
from mdf_search.results.schema import Status

DEEPCAVE_STATUS: dict[str, str] = {  # our status → DeepCAVE's
    Status.COMPLETED: "success",
    Status.STOPPED_EARLY: "success",
    Status.DIVERGED: "crashed",
    Status.OOM: "memoryout",
    Status.INFEASIBLE: "not_evaluated",
    Status.ERROR: "crashed",
    Status.RUNNING: "not_evaluated",
}


def export_section(exp: Experiment, out: Path) -> Section:
    """DeepCAVE's DataFrame run (configspace.csv + trials.csv, as documented for
    ``deepcave.runs.converters.dataframe``) and the Optuna study for optuna-dashboard."""
    sec = Section("Exports", anchor="exports")
    directory = out / "deepcave"
    directory.mkdir(parents=True, exist_ok=True)
    spec = exp.spec
    space: list[dict[str, Any]] = []
    names: list[str] = []
    for key in [*exp.factors, *exp.nuisance]:
        param = spec.scientific.get(key) or spec.nuisance.get(key) if spec else None
        if param is None:
            continue
        names.append(key)
        if param.is_range:
            kind = "integer" if param.integer else "float"
            space.append(
                {
                    "name": key,
                    "type": kind,
                    "log": param.log,
                    "lower": param.low,
                    "upper": param.high,
                    "default": param.low if param.default is None else param.default,
                    "distribution": "uniform",
                }
            )
        else:
            items = [str(v) for v in exp.value_order(key)] or [str(c) for c in param.choices or ()]
            space.append(
                {"name": key, "type": "categorical", "default": items[0], "items": items, "ordered": False}
            )
    names.append("seed")
    max_items = max((len(s.get("items", [])) for s in space), default=0)
    header = [
        "name",
        "type",
        "log",
        "lower",
        "upper",
        "default",
        "distribution",
        *[f"item_{i}" for i in range(max_items)],
        "ordered",
    ]
    with (directory / "configspace.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in space:
            items = s.get("items", [])
            _row(
                w,
                [
                    s["name"],
                    s["type"],
                    s.get("log", ""),
                    s.get("lower", ""),
                    s.get("upper", ""),
                    s["default"],
                    s.get("distribution", ""),
                    *items,
                    *[""] * (max_items - len(items)),
                    s.get("ordered", ""),
                ],
            )
    (directory / "configspace.json").write_text(json.dumps({"hyperparameters": space}, indent=1, default=str))
    objective = f"{exp.metric}:normal [0.0; 1.0] ({'maximize' if exp.descending else 'minimize'})"
    with (directory / "trials.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        _row(
            w,
            [
                "config_id",
                *[n for n in names if n != "seed"],
                objective,
                "status",
                "start_time",
                "end_time",
                "budget",
                "seed",
                "additional",
            ],
        )
        configs: dict[tuple[str, ...], int] = {}
        clock = 0.0
        for r in exp.trials.sort("trial_id").iter_rows(named=True):
            values = tuple(
                str(r.get(n)) if r.get(n) is not None else "inactive" for n in names if n != "seed"
            )
            cid = configs.setdefault(values, len(configs))
            wall = float(r.get("wall_s") or 0.0)
            wall = wall if np.isfinite(wall) else 0.0
            metric = r.get(exp.metric)
            _row(
                w,
                [
                    cid,
                    *values,
                    ""
                    if metric is None or (isinstance(metric, float) and not np.isfinite(metric))
                    else metric,
                    DEEPCAVE_STATUS.get(str(r["status"]), "crashed"),
                    clock,
                    clock + wall,
                    r.get("epochs") or 0,
                    r.get("seed", -1),
                    json.dumps({"trial_id": r["trial_id"], "arm": r["arm"]}),
                ],
            )
            clock += wall
    sec.text(
        f'DeepCAVE (DataFrame converter): `{directory.name}/configspace.csv` and `{directory.name}/trials.csv` (inactive conditional values are the category "inactive"; budget = epochs; times are cumulative wall seconds).'
    )
    db = Path(exp.root) / "optuna.db"
    if db.is_file():
        sec.text("optuna-dashboard sqlite:///optuna.db", "code")
        sec.text(
            f"The Optuna study is {d(exp.name)} in optuna.db of the experiment directory (run the command "
            "above from it)."
        )
    else:
        storage = exp.spec.storage if exp.spec else None
        sec.note(
            f"no optuna.db in the experiment directory{f'; the study lives at {d(storage)}' if storage else ''}."
        )
    return sec


def _row(writer: Any, cells: list[Any]) -> None:
    """One CSV row; every text cell through ``escape.csv_cell`` (no formula runs in a spreadsheet)."""
    writer.writerow([csv_cell(c) for c in cells])
