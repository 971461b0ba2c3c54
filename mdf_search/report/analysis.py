"""Report sections 1-5: provenance, design matrix, the main and paper tables, factor plots, per class.

Per-seed values: for each (arm, seed), the completed trial validation selected (``Experiment.selected``:
the best by the study's metric when a sampler design ran several); every column of an (arm, seed) comes
from that trial. Comparisons with the baseline live in ``report.compare``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import polars as pl

from mdf_search import escape
from mdf_search.data.schema import DISEASE_TYPES
from mdf_search.metrics import type_breakdown
from mdf_search.report import figures as fg
from mdf_search.report import tables as tb
from mdf_search.report.compare import Comparison, seed_values
from mdf_search.report.document import Section, TableBlock, d
from mdf_search.report.experiment import HEADLINE, Experiment, reproduce_commands
from mdf_search.report.stats import relative_change, summarize, t_interval
from mdf_search.results.schema import Status


# ---------------------------------------------------------------------------------------------------
def provenance_section(exp: Experiment, count: int, out: Path | None = None) -> Section:
    sec = Section("Provenance", anchor="provenance")
    spec, prov, trials = exp.spec, exp.provenance(), exp.trials

    def first(col: str) -> str:
        if col not in trials.columns:
            return "—"
        values = [v for v in trials[col].unique().to_list() if v]
        return ", ".join(sorted(map(str, values))[:3]) + (" …" if len(values) > 3 else "") if values else "—"

    versions = prov.get("versions") or (
        trials["versions"].drop_nulls()[0]
        if "versions" in trials.columns and trials["versions"].drop_nulls().len()
        else "{}"
    )
    try:
        version_text = ", ".join(f"{k} {v}" for k, v in json.loads(versions).items() if v) or "—"
    except (TypeError, ValueError, AttributeError):  # not JSON, or JSON that is not an object
        version_text = str(versions)
    hours = {
        c: float(trials[c].fill_null(0).sum()) for c in ("gpu_hours", "cpu_hours") if c in trials.columns
    }
    rows = [
        ["experiment", d(exp.name)],
        ["description", d(spec.description) if spec else "—"],
        ["design", d(spec.design) if spec else "—"],
        ["metric", f"{d(exp.metric)} ({d(exp.mode)})"],
        ["seeds", d(", ".join(map(str, spec.seeds)) if spec and spec.seeds else first("seed"))],
        ["budget", _budget(exp)],
        [
            "trials recorded",
            f"{trials.height} ({', '.join(f'{d(k)} {v}' for k, v in _counts(trials).items())})",
        ],
        ["compute used", ", ".join(f"{v:.3f} {k.replace('_', '-')}" for k, v in hours.items()) or "—"],
        ["git SHA", d(prov.get("git_sha") or first("git_sha"))],
        ["library versions", d(version_text)],
        ["hosts", d(first("host"))],
        ["world size", d(first("world_size"))],
        ["split hash", d(first("split_hash"))],
        ["report number", f"{count} (counted in reports.log)"],
    ]
    sec.blocks.append(TableBlock("provenance", ["field", "value"], rows))
    where, commands = reproduce_commands(exp.root, _relative(out, exp.root))
    sec.text(
        f"Reproduce, {d(where)}: rerun from scratch into a fresh storage root, resume this one after a "
        "crash, rewrite this report:"
    )
    sec.text("\n".join(escape.shell(words) for words in commands), "code")
    return sec


def _relative(out: Path | None, root: str) -> str:
    """The report directory relative to the experiment directory (no machine path in a report)."""
    if out is None or "://" in root:
        return "report"
    return os.path.relpath(Path(out).resolve(), Path(root).resolve())


def _counts(trials: pl.DataFrame) -> dict[str, int]:
    return dict(sorted(trials.group_by("status").len().iter_rows(), key=lambda kv: (-kv[1], str(kv[0]))))


def _budget(exp: Experiment) -> str:
    if exp.spec is None:
        return "—"
    b = exp.spec.budget
    parts = [f"{b.epochs} epochs"] if b.epochs else []
    if b.trials:
        parts.append(f"≤ {b.trials} trials")
    if b.max_wall_time_s:
        parts.append(f"≤ {b.max_wall_time_s / 60:g} min wall")
    if b.max_gpu_hours:
        parts.append(f"≤ {b.max_gpu_hours:g} GPU-h")
    return ", ".join(parts) or "—"


def design_section(exp: Experiment) -> Section:
    sec = Section("Design matrix", anchor="design")
    arms, params, base = exp.arms(), exp.arm_params(), exp.baseline_arm()
    if not exp.factors:
        sec.note("no scientific factors known (no arms.json or spec.yaml): arms are listed as recorded.")
    counts = exp.trials.group_by("arm").agg(
        pl.len().alias("n"), (pl.col("status") == Status.COMPLETED).sum().alias("ok")
    )
    n_by = {r["arm"]: (r["n"], r["ok"]) for r in counts.iter_rows(named=True)}
    headers = ["arm", *map(d, exp.factors), "trials", Status.COMPLETED.value]
    rows = []
    for arm in arms:
        cells = [("★ " if arm == base else "") + d(arm)]
        for f in exp.factors:
            value = params.get(arm, {}).get(f)
            cells.append("— (off)" if value in (None, "none") else d(value))
        n, ok = n_by.get(arm, (0, 0))
        rows.append([*cells, str(n), str(ok)])
    sec.blocks.append(
        TableBlock(
            "design_matrix", headers, rows, "arms × scientific factors (★ = baseline; — = component absent)"
        )
    )
    return sec


def main_section(exp: Experiment, cmp: Comparison) -> Section:
    sec = Section("Main results", anchor="main")
    base, stats = cmp.base, cmp.stats
    metrics = [m for m in HEADLINE if m in exp.trials.columns]
    if not stats:
        sec.note(f"no completed trial has {d(exp.metric)} yet; the tables appear once trials complete.")
        return sec
    if cmp.floor:
        sec.note(cmp.floor)
    headers = ["arm", "seeds"]
    for m in metrics:
        headers += [f"{m} mean ± sd", f"{m} 95 % Student-t CI"]
    rows = []
    per_metric = {m: seed_values(exp, m) for m in metrics}
    for arm in cmp.ranked:
        row = [("★ " if arm == base else "") + d(arm), str(len(stats[arm].seeds))]
        for m in metrics:
            s = summarize(list(per_metric[m].get(arm, {}).values()))
            row += [tb.mean_sd(s), tb.ci(s.t_lo, s.t_hi)]
        rows.append(row)
    order = (
        f"ranked by {d(exp.metric)}"
        if not cmp.floor
        else "design order, not ranked (the study measured nothing)"
    )
    sec.blocks.append(
        TableBlock("main", headers, rows, f"per seed, the completed trial validation selected; {order}")
    )
    n = sorted({len(st.seeds) for st in stats.values()})
    n_text = str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"
    sec.text(
        f"Mean ± sd over seeds with the 95 % Student-t CI over n seeds (n = {n_text}; none with one seed). "
        f"For each (arm, seed) one trial is selected, the best by {d(exp.metric)} ({d(exp.mode)}) on validation; "
        "every column, test metrics included, comes from that trial. The paired comparisons with the "
        "baseline follow in the next section."
    )
    if base is None:
        sec.note("no baseline arm with results (spec.baseline absent or not run yet): no paired comparison.")
    sec.blocks.extend(paper_table(exp, cmp).blocks)
    return sec


PAPER_METRICS = ("accuracy", "macro_f1", "macro_recall", "auroc")


def paper_table(exp: Experiment, cmp: Comparison) -> Section:
    sec = Section("paper")
    base = cmp.base
    split = "test" if any(c.startswith("test/") for c in exp.trials.columns) else "val"
    metrics = [f"{split}/{m}" for m in PAPER_METRICS if f"{split}/{m}" in exp.trials.columns]
    if base is None or not metrics:
        return sec
    means = {
        m: {a: float(np.mean(list(v.values()))) for a, v in seed_values(exp, m).items()} for m in metrics
    }
    headers = ["model", *[m.split("/", 1)[1].replace("_", " ") for m in metrics]]
    rows = [["Baseline MLLM", *[tb.num(means[m].get(base, math.nan)) for m in metrics]]]
    for arm in cmp.ranked:
        if arm == base:
            continue
        cells = []
        for m in metrics:
            v, b = means[m].get(arm, math.nan), means[m].get(base, math.nan)
            cells.append(f"{tb.num(v)} ({tb.signed(relative_change(v, b), percent=True)})")
        rows.append([f"MDF: {d(arm)}", *cells])
    sec.blocks.append(
        TableBlock(
            "paper",
            headers,
            rows,
            f"paper table ({split} split of the validation-selected trial per seed, mean over seeds; in "
            "brackets the relative improvement (variant − baseline) / baseline)",
        )
    )
    return sec


def factor_section(exp: Experiment, sink: fg.FigureSink) -> Section:
    sec = Section("Factors: main effects, interactions, isolation", anchor="factors")
    ok = (
        exp.trials.filter((pl.col("status") == Status.COMPLETED) & pl.col(exp.metric).is_not_null())
        if exp.metric in exp.trials.columns
        else exp.trials.head(0)
    )
    if ok.is_empty() or not exp.factors:
        sec.note("no completed trials or no scientific factors: nothing to plot yet.")
        return sec
    best_fn = max if exp.descending else min
    for factor in exp.factors:
        levels = [str(v) for v in exp.value_order(factor)]
        points: dict[str, list[float]] = {}
        for row in ok.select([factor, exp.metric]).iter_rows():
            points.setdefault(str(row[0]), []).append(float(row[1]))
        points = {lv: sorted(v) for lv, v in points.items()}  # dots and sums whatever the rows' order
        means = {lv: (float(np.mean(v)), *t_interval(v)) for lv, v in points.items()}
        best = {lv: best_fn(v) for lv, v in points.items()}
        sec.blocks.append(fg.factor_figure(sink, factor, exp.metric, levels, points, means, best))
    sec.text("Main effect: mean over every completed trial with that value (other factors vary with it, so read "
             "conditional factors together with the design matrix); isolation: the best trial per value over the "
             "nuisance parameters, as the tuning playbook recommends.")  # fmt: skip
    for a, b in list(itertools.combinations(exp.factors, 2))[:3]:
        series: dict[str, dict[str, tuple[float, float, float]]] = {}
        b_levels = [str(v) for v in exp.value_order(b)]
        for (bv, av), part in sorted(  # a fixed series order: each level of b keeps its colour
            ok.group_by([b, a]), key=lambda kv: (_level_rank(b_levels, kv[0][0]), str(kv[0][1]))
        ):
            values = sorted(part[exp.metric].to_list())
            series.setdefault(str(bv), {})[str(av)] = (float(np.mean(values)), *t_interval(values))
        a_levels = [str(v) for v in exp.value_order(a)]
        if len(series) > 1 and len(a_levels) > 1:
            sec.blocks.append(fg.interaction_figure(sink, a, b, exp.metric, a_levels, series))
        else:
            sec.note(
                f"{d(a)} × {d(b)}: only one combination level exists (conditional factor); no interaction plot."
            )
    return sec


def _level_rank(levels: list[str], value: object) -> tuple[int, str]:
    """Where ``value`` sits in a factor's declared order; values the spec does not list go last, by name."""
    text = str(value)
    return (levels.index(text), "") if text in levels else (len(levels), text)


def _arm_class_means(frame: pl.DataFrame, arm: str, classes: list[str]) -> dict[str, float]:
    part = frame.filter(pl.col("arm") == arm)
    out = {}
    for c in classes:
        for kind in ("recall", "f1"):
            col = f"val/{kind}/{c}"
            if col in part.columns and part[col].drop_nulls().len():
                out[f"{kind}/{c}"] = float(part[col].drop_nulls().mean())  # type: ignore[arg-type]
    return out


def per_class_section(exp: Experiment, cmp: Comparison, sink: fg.FigureSink) -> Section:
    sec = Section("Per class: recall, F1, confusion, acquired vs inherited", anchor="classes")
    classes = tb.per_class_names(exp.trials)
    chosen = exp.selected()
    if not classes or not cmp.ranked or chosen.is_empty():
        sec.note("no per-class metrics of completed trials yet.")
        return sec
    base = cmp.base
    best = None if cmp.floor else cmp.ranked[0]
    shown = [a for a in dict.fromkeys([base, best]) if a is not None]
    if not shown:
        sec.note("no baseline and no ranking (the study measured nothing): no per-class comparison.")
        return sec
    labels = {a: ("baseline: " if a == base else "best: ") + fg.short(a, 60) for a in shown}
    means = {a: _arm_class_means(chosen, a, classes) for a in shown}
    headers = [
        "class",
        *[f"{k} {('baseline' if a == base else 'best')}" for k in ("recall", "f1") for a in shown],
    ]
    rows = [
        [d(c), *[tb.num(means[a].get(f"{k}/{c}")) for k in ("recall", "f1") for a in shown]] for c in classes
    ]
    caption = "validation, mean over seeds of the validation-selected trials"
    sec.blocks.append(
        TableBlock("per_class", headers, rows, caption + (f"; best arm = {d(best)}" if best else ""))
    )
    sec.blocks.append(fg.per_class_figure(sink, classes, means, labels))
    matrices = {}
    for a in shown:
        mats = [
            m
            for m in (
                tb.confusion(t)
                for t in chosen.filter(pl.col("arm") == a)
                .get_column("val/confusion", default=pl.Series([], dtype=pl.String))
                .to_list()
            )
            if m is not None
        ]
        if mats and len({m.shape for m in mats}) == 1:
            matrices[a] = np.sum(mats, axis=0)
    if matrices:
        sec.blocks.append(fg.confusion_figure(sink, classes, matrices, labels))
    else:
        sec.note("no val/confusion recorded: no confusion matrices.")
    _type_breakdown(sec, exp, classes, matrices, labels)
    return sec


def _type_breakdown(
    sec: Section, exp: Experiment, classes: list[str], matrices: dict[str, np.ndarray], labels: dict[str, str]
) -> None:
    if {"acquired", "inherited"} <= set(classes):
        sec.text(
            "The task is the disease type: the acquired and inherited rows above are the type breakdown."
        )
        return
    if not matrices or not all(c in DISEASE_TYPES for c in classes):
        sec.note("classes without a known disease type: no acquired/inherited breakdown.")
        return
    rows = []
    for arm, matrix in matrices.items():
        t, p = np.nonzero(matrix)
        counts = matrix[t, p]
        out = type_breakdown(np.repeat(t, counts), np.repeat(p, counts), DISEASE_TYPES, classes)
        for kind in ("acquired", "inherited"):
            if f"{kind}/macro_recall" in out:
                rows.append(
                    [
                        d(labels[arm]),
                        kind,
                        tb.num(out[f"{kind}/macro_recall"]),
                        tb.num(out[f"{kind}/macro_f1"]),
                        str(int(out[f"{kind}/support"])),
                    ]
                )
    sec.blocks.append(
        TableBlock(
            "type_breakdown",
            ["arm", "type", "macro recall", "macro F1", "support"],
            rows,
            "acquired vs inherited (metrics.type_breakdown on the summed confusion matrices)",
        )
    )
