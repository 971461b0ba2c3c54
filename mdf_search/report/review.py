"""Report sections 7-11 and the exports: ablation path, Pareto fronts, learning curves, a reviewer's
warnings, the failure appendix, DeepCAVE tables and the Optuna study for optuna-dashboard."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mdf_search.report import figures as fg
from mdf_search.report import tables as tb
from mdf_search.report.analysis import ArmStats, ranked_arms
from mdf_search.report.document import Section, TableBlock
from mdf_search.report.experiment import Experiment

FAILED = ("diverged", "oom", "infeasible", "error")


def path_section(exp: Experiment, stats: dict[str, ArmStats], sink: fg.FigureSink) -> Section:
    """Greedy path over the arms that exist: from the baseline, change the fewest factors (one when an arm
    exists for it) towards the best arm, choosing the best such arm at each step."""
    sec = Section("Ablation path", anchor="path")
    base, ranked = exp.baseline_arm(), ranked_arms(exp, stats)
    if base is None or base not in stats or not ranked:
        sec.note("needs a baseline arm and completed trials; no path.")
        return sec
    params = {a: {k: str(v) for k, v in p.items()} for a, p in exp.arm_params().items() if a in stats}
    target, current = ranked[0], base
    steps = [(base, "baseline", stats[base].mean)]
    while current != target:
        todo = {k for k, v in params[target].items() if params[current].get(k) != v}
        best_step: tuple[int, float, str] | None = None
        for arm, p in params.items():
            changed = {k for k in p if p.get(k) != params[current].get(k)}
            if (
                arm == current
                or not changed
                or not changed <= todo | {k for k in changed if p[k] == params[target].get(k)}
            ):
                continue
            if any(p[k] != params[target].get(k) for k in changed):
                continue
            score = -stats[arm].mean if exp.descending else stats[arm].mean
            key = (len(changed), score, arm)
            if best_step is None or key < best_step:
                best_step = key
        if best_step is None:
            break
        arm = best_step[2]
        change = ", ".join(
            f"{k}: {params[current].get(k)} → {params[arm][k]}"
            for k in params[arm]
            if params[arm][k] != params[current].get(k)
        )
        steps.append((arm, change, stats[arm].mean))
        current = arm
    rows = [
        [str(i), change, arm, tb.num(v), tb.signed(v - steps[0][2])]
        for i, (arm, change, v) in enumerate(steps)
    ]
    sec.blocks.append(
        TableBlock(
            "ablation_path",
            ["step", "change", "arm", exp.metric, "Δ vs baseline"],
            rows,
            "greedy path over existing arms (mean over seeds)",
        )
    )
    if len(steps) > 1:
        sec.blocks.append(
            fg.path_figure(
                sink,
                exp.metric,
                [s[1] if i else "baseline" for i, s in enumerate(steps)],
                [s[2] for s in steps],
            )
        )
    if current != target:
        sec.note(f"the path stops at {current}: no existing arm changes only factors towards {target}.")
    return sec


def pareto_section(exp: Experiment, sink: fg.FigureSink) -> Section:
    sec = Section("Cost: Pareto fronts", anchor="pareto")
    ok = exp.ok()
    if ok.is_empty():
        sec.note("no finished trials with the metric yet.")
        return sec
    cost = "gpu_hours"
    if "gpu_hours" not in ok.columns or float(ok["gpu_hours"].fill_null(0).sum()) == 0:
        cost = "cpu_hours"
        sec.note("GPU-hours are all 0 (a CPU study): cost is CPU-hours (wall time × workers).")
    ys = ok[exp.metric].to_list()
    arms = ok["arm"].to_list()
    for name, col, label, log in (
        ("pareto_cost", cost, cost.replace("_", "-"), False),
        ("pareto_params", "trainable_params", "trainable parameters", True),
    ):
        if col not in ok.columns or ok[col].drop_nulls().len() == 0:
            sec.note(f"no {col} recorded: no {label} front.")
            continue
        xs = [float(v) if v is not None else math.nan for v in ok[col].to_list()]
        keep = [i for i in range(len(xs)) if math.isfinite(xs[i]) and (xs[i] > 0 or not log)]
        x2, y2, a2 = [xs[i] for i in keep], [ys[i] for i in keep], [arms[i] for i in keep]
        front = tb.pareto_front(x2, y2, exp.descending)
        sec.blocks.append(fg.pareto_figure(sink, name, label, exp.metric, x2, y2, a2, front, log_x=log))
        rows = [
            [
                ok["trial_id"][keep[i]],
                a2[i],
                tb.num(x2[i], 4) if x2[i] < 1e3 else f"{x2[i]:.3g}",
                tb.num(y2[i]),
            ]
            for i in sorted(front, key=lambda i: x2[i])
        ]
        sec.blocks.append(
            TableBlock(
                name, ["trial", "arm", label, exp.metric], rows, f"Pareto front: {exp.metric} vs {label}"
            )
        )
    return sec


def curves_section(exp: Experiment, sink: fg.FigureSink, top: int = 5) -> Section:
    sec = Section("Learning curves and early stopping", anchor="curves")
    ok = exp.ok().sort(exp.metric, descending=exp.descending).head(top)
    ep = exp.epochs
    if ok.is_empty() or ep.is_empty() or exp.metric not in ep.columns:
        sec.note("no epoch results with the metric yet.")
    else:
        curves = {}
        for row in ok.iter_rows(named=True):
            part = ep.filter(
                (pl.col("trial_id") == row["trial_id"]) & (pl.col("attempt") == row["attempt"])
            ).sort("epoch")
            loss = (
                part.get_column("train_loss").to_list()
                if "train_loss" in part.columns
                else [math.nan] * part.height
            )
            curves[f"{row['trial_id']} {row['arm']}"] = (
                part["epoch"].to_list(),
                part[exp.metric].to_list(),
                [math.nan if v is None else v for v in loss],
            )
        sec.blocks.append(fg.curves_figure(sink, exp.metric, curves))
    statuses = ["completed", "stopped_early", "diverged", "oom", "infeasible", "error", "running"]
    counts = exp.trials.group_by("arm").agg([(pl.col("status") == s).sum().alias(s) for s in statuses])
    order = {a: i for i, a in enumerate(exp.arms())}
    rows = sorted(
        ([str(r["arm"]), *[str(r[s]) for s in statuses]] for r in counts.iter_rows(named=True)),
        key=lambda r: order.get(r[0], 1 << 30),
    )
    sec.blocks.append(
        TableBlock(
            "status_by_arm",
            ["arm", *[s.replace("_", " ") for s in statuses]],
            rows,
            "trial outcomes by arm (early-stopped = ended by the scheduler)",
        )
    )
    return sec


def warnings_section(exp: Experiment, stats: dict[str, ArmStats], reports: int) -> Section:
    sec = Section("Warnings a reviewer would raise", anchor="warnings")
    found = edge_warnings(exp, stats)
    seeds = {a: len(s.seeds) for a, s in stats.items()}
    few = sorted(a for a, n in seeds.items() if n < 3)
    if few:
        found.append(
            f"fewer than 3 completed seeds in {len(few)} arm(s) ({', '.join(few[:4])}{' …' if len(few) > 4 else ''}): CIs are wide and the smallest attainable permutation p is ≥ 0.25."
        )
    finished = exp.trials.filter(pl.col("status") != "running")
    failed = finished.filter(pl.col("status").is_in(FAILED)).height
    if finished.height and failed / finished.height > 0.2:
        found.append(
            f"high failure rate: {failed} of {finished.height} finished trials ({failed / finished.height:.0%}) diverged, ran out of memory, were infeasible or errored."
        )
    running = exp.trials.filter(pl.col("status") == "running").height
    if running:
        found.append(f"{running} trial(s) still running: this report reads a partial experiment.")
    found.extend(gap_warnings(exp, stats))
    if any(c.startswith("test/") for c in exp.trials.columns) and reports > 1:
        found.append(
            f"test metrics have been shown {reports} times for this experiment (reports.log): choosing a configuration after looking at test results biases them; select on validation."
        )
    if exp.baseline_arm() is None:
        found.append("no baseline arm with results: improvements are not measured against the baseline MLLM.")
    for text in found:
        sec.text(text, "warning")
    if not found:
        sec.text("none: best values are inside the search space, ≥ 3 seeds per arm, failures ≤ 20 %.")
    return sec


def edge_warnings(exp: Experiment, stats: dict[str, ArmStats]) -> list[str]:
    out: list[str] = []
    ok = exp.ok().sort(exp.metric, descending=exp.descending)
    if exp.spec is None or ok.is_empty():
        return out
    best = ok.row(0, named=True)
    for key, param in exp.spec.nuisance.items():
        value = best.get(key)
        if not param.is_range or value is None or param.high <= param.low:
            continue
        lo, hi, v = (
            (math.log(param.low), math.log(param.high), math.log(value))
            if param.log and value > 0
            else (param.low, param.high, value)
        )
        pos = (v - lo) / (hi - lo)
        if pos <= 0.05 or pos >= 0.95:
            out.append(
                f"best trial's {key}={value:.4g} is at the {'low' if pos <= 0.05 else 'high'} edge of [{param.low:g}, {param.high:g}]: widen the range."
            )
    ranked = ranked_arms(exp, stats)
    params = exp.arm_params()
    for key, param in exp.spec.scientific.items():
        choices = list(param.choices or ())
        if (
            ranked
            and len(choices) > 2
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)
        ):
            value = params.get(ranked[0], {}).get(key)
            numbers = [float(c) for c in choices if isinstance(c, int | float)]
            if isinstance(value, int | float) and value in (min(numbers), max(numbers)):
                out.append(
                    f"best arm's {key}={value} is an end of the ordered values {choices}: the optimum may lie beyond."
                )
    return out


def gap_warnings(exp: Experiment, stats: dict[str, ArmStats]) -> list[str]:
    ok = exp.ok().sort(exp.metric, descending=exp.descending)
    if ok.is_empty():
        return []
    best = ok.row(0, named=True)
    out = []
    for col in ok.columns:
        if col.startswith("train/") and f"val/{col[6:]}" in ok.columns:
            train, val = best.get(col), best.get(f"val/{col[6:]}")
            if isinstance(train, float) and isinstance(val, float) and train - val > 0.1:
                out.append(
                    f"large train/val gap in the best trial: {col}={train:.3f} vs val/{col[6:]}={val:.3f} (overfitting?)."
                )
    return out


def failures_section(exp: Experiment) -> Section:
    sec = Section("Failure appendix", anchor="failures")
    bad = exp.trials.filter(pl.col("status") != "completed").sort("trial_id")
    if bad.is_empty():
        sec.text("every trial completed.")
        return sec
    rows = []
    for r in bad.iter_rows(named=True):
        message = str(r.get("message") or "")
        rows.append(
            [
                str(r["trial_id"]),
                str(r.get("attempt")),
                str(r.get("arm")),
                str(r["status"]),
                str(r.get("epochs")),
                message[:300],
            ]
        )
    sec.blocks.append(
        TableBlock(
            "failures",
            ["trial", "attempt", "arm", "status", "epochs", "message"],
            rows,
            "every trial that did not complete",
        )
    )
    return sec


# -- exports -------------------------------------------------------------------------------------------
DEEPCAVE_STATUS = {
    "completed": "success",
    "stopped_early": "success",
    "diverged": "crashed",
    "oom": "memoryout",
    "infeasible": "not_evaluated",
    "error": "crashed",
    "running": "not_evaluated",
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
                    "default": param.default_value(),
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
    with (directory / "configspace.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in space:
            items = s.get("items", [])
            w.writerow(
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
                ]
            )
    (directory / "configspace.json").write_text(json.dumps({"hyperparameters": space}, indent=1, default=str))
    objective = f"{exp.metric}:normal [0.0; 1.0] ({'maximize' if exp.descending else 'minimize'})"
    with (directory / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
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
            ]
        )
        configs: dict[tuple[str, ...], int] = {}
        clock = 0.0
        for r in exp.trials.sort("trial_id").iter_rows(named=True):
            values = tuple(
                str(r.get(n)) if r.get(n) is not None else "inactive" for n in names if n != "seed"
            )
            cid = configs.setdefault(values, len(configs))
            wall = float(r.get("wall_s") or 0.0)
            metric = r.get(exp.metric)
            w.writerow(
                [
                    cid,
                    *values,
                    "" if metric is None or (isinstance(metric, float) and np.isnan(metric)) else metric,
                    DEEPCAVE_STATUS.get(str(r["status"]), "crashed"),
                    clock,
                    clock + wall,
                    r.get("epochs") or 0,
                    r.get("seed", -1),
                    json.dumps({"trial_id": r["trial_id"], "arm": r["arm"]}),
                ]
            )
            clock += wall
    sec.text(
        f'DeepCAVE (DataFrame converter): `{directory.name}/configspace.csv` and `{directory.name}/trials.csv` (inactive conditional values are the category "inactive"; budget = epochs; times are cumulative wall seconds).'
    )
    db = Path(exp.root) / "optuna.db"
    if db.is_file():
        sec.text(f"optuna-dashboard sqlite:///{db.resolve()}", "code")
        sec.text(f"The Optuna study is `{exp.name}` in {db.resolve()} (open it with the command above).")
    else:
        storage = exp.spec.study.storage if exp.spec and exp.spec.study.storage else None
        sec.note(
            f"no optuna.db in the experiment directory{f'; the study lives at {storage}' if storage else ''}."
        )
    return sec
