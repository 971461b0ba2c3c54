"""Learning curves and early stopping: per arm, the study metric and the train loss at each epoch, as
the mean over seeds with a band, and the trial outcomes by arm.

The curve of an (arm, seed) is that of the trial validation selected for it (``Experiment.selected``:
one per seed, the trial every other table of the report shows), so each arm's mean at an epoch is over
its seeds, and its band is the range over those seeds, min to max (none at an epoch only one seed
reached): with the two or three seeds a study usually has, a Student-t interval of the mean would be
several times wider than the data (t = 12.7 for two seeds) and hide every curve; the main table gives
the intervals. The baseline and the best arms by the ranking are drawn, :data:`CURVE_ARMS` in all.
"""

from __future__ import annotations

import math

import polars as pl

from mdf_search.report import figures as fg
from mdf_search.report.compare import Comparison
from mdf_search.report.document import Section, TableBlock, d
from mdf_search.report.experiment import Experiment
from mdf_search.report.review import TRAIN_LOSS
from mdf_search.results.schema import Status

CURVE_ARMS = 6  # arms drawn: the baseline and the best
BAND = "min to max over seeds (none at an epoch with one seed)"
Points = list[tuple[int, int, float, float, float]]  # (epoch, seeds, mean, min, max)


def curves_section(exp: Experiment, cmp: Comparison, sink: fg.FigureSink, arms: int = CURVE_ARMS) -> Section:
    sec = Section("Learning curves and early stopping", anchor="curves")
    curves, labels, seeds = arm_curves(exp, cmp, arms)
    if not curves:
        sec.note("no epoch results of a completed trial with the metric yet: no learning curves.")
    else:
        sec.blocks.append(fg.curves_figure(sink, exp.metric, curves, labels, BAND))
        if len(curves) >= len(seeds):
            which = "every arm"
        elif cmp.floor:
            which = f"the first {len(curves)} of {len(seeds)} arms in design order (the arms are not ranked)"
        else:
            which = f"the baseline and the best arms by {d(exp.metric)}: {len(curves)} of {len(seeds)}"
        sec.text(
            f"Per arm ({which}), each epoch's {d(exp.metric)} and train loss averaged over the seeds, one "
            "trial per seed: the one validation selected, as in the main table. The shaded band spans the "
            "seeds, from the lowest to the highest, absent at an epoch only one seed reached (the main table "
            f"gives the Student-t intervals). Seeds per arm: {', '.join(f'{d(a)} {seeds[a]}' for a in curves)}."
        )
    statuses = [*(s for s in Status if s != Status.RUNNING), Status.RUNNING]  # the finished ones first
    counts = exp.trials.group_by("arm").agg([(pl.col("status") == s).sum().alias(s) for s in statuses])
    order = {a: i for i, a in enumerate(exp.arms())}
    rows = [
        [d(row[0]), *row[1:]]
        for row in sorted(
            ([str(r["arm"]), *[str(r[s]) for s in statuses]] for r in counts.iter_rows(named=True)),
            key=lambda r: order.get(r[0], 1 << 30),
        )
    ]
    sec.blocks.append(
        TableBlock(
            "status_by_arm",
            ["arm", *[s.replace("_", " ") for s in statuses]],
            rows,
            "trial outcomes by arm (early-stopped = ended by the scheduler)",
        )
    )
    return sec


def arm_curves(
    exp: Experiment, cmp: Comparison, arms: int = CURVE_ARMS
) -> tuple[dict[str, dict[str, Points]], dict[str, str], dict[str, int]]:
    """Per arm (the baseline, then the best by the ranking, ``arms`` in all), for the study metric and the
    train loss, the points ``(epoch, seeds, mean, min, max)`` over the selected trial of each seed; the
    legend labels; and each arm's number of seeds with epochs."""
    ep, chosen = exp.epochs, exp.selected()
    if ep.is_empty() or exp.metric not in ep.columns or chosen.is_empty():
        return {}, {}, {}
    loss = next((c for c in TRAIN_LOSS if c in ep.columns), None)
    keys = chosen.select("arm", "seed", "trial_id", pl.col("attempt").cast(pl.Int64))
    columns = {"metric": exp.metric, **({"loss": loss} if loss else {})}
    rows = ep.select(
        "trial_id",
        pl.col("attempt").cast(pl.Int64),
        pl.col("epoch").cast(pl.Int64),
        *(pl.col(c).cast(pl.Float64).alias(k) for k, c in columns.items()),
    ).join(keys, on=["trial_id", "attempt"], how="inner")
    if rows.is_empty():
        return {}, {}, {}
    seeds = {str(a): int(n) for a, n in rows.group_by("arm").agg(pl.col("seed").n_unique()).iter_rows()}
    order = [a for a in ([cmp.base] if cmp.base else []) + cmp.ranked if a in seeds]
    order += sorted(a for a in seeds if a not in order)
    shown = list(dict.fromkeys(order))[:arms]
    curves: dict[str, dict[str, Points]] = {}
    for arm in shown:
        part = rows.filter(pl.col("arm") == arm)
        for key in columns:
            points: Points = []
            for (epoch,), group in part.group_by(["epoch"]):
                values = [v for v in group[key].to_list() if v is not None and math.isfinite(v)]
                if values:
                    mean = sum(values) / len(values)
                    lo, hi = (min(values), max(values)) if len(values) > 1 else (math.nan, math.nan)
                    points.append((int(epoch), len(values), mean, lo, hi))
            curves.setdefault(arm, {})[key] = sorted(points)
    labels = {a: ("baseline: " if a == cmp.base else "") + f"{fg.short(a, 44)} (n={seeds[a]})" for a in shown}
    return curves, labels, seeds
