"""The static leaderboard: top trials (or arms, seeds collapsed) of an experiment, read from Parquet only.

``leaderboard_frame`` computes the rows (``mdf-search leaderboard``, the live view and the tests use
it); ``render_text`` and ``rich_table`` render them, and ``mdf_search.cli.results`` prints them.
``--group-by`` collapses seeds into mean ± a 95 % **Student-t** interval of the mean
(``t_ci95_lo``/``t_ci95_hi``; n < 2 gives no interval). Its unit is the *selected* trial of each
(arm, seed) (``Experiment.selected``: the completed trial with the best study metric, validation
choosing), so with ``--group-by arm`` n counts seeds, and a sampler design's several trials per
(arm, seed) (nuisance points) never enter the mean side by side. ``trials`` is how many completed trials
the selection chose from. ``best`` is the shown metric of the group's selected trial with the best study
metric (validation selects), never the maximum of the shown metric itself: with ``--by test/...`` it is
that trial's test score.

``--by phases`` shows where the time went instead (``phase_frame``): per arm (or per ``--group-by``
column), the median of each phase column over the trials that recorded them (every status: a failed
trial's time was spent too), the median ``wall_s`` and the phases' share of the summed wall time.
Ranking by a cost column (``wall_s``, a phase, ``startup_s``, GPU/CPU hours) puts the cheapest first
and shows the phase columns. With ``budget.price_per_gpu_hour`` in the spec, the ungrouped board shows a
``cost`` column (``gpu_hours`` x the price) and every board a note of the GPU-hours and cost in all.

A non-finite value (inf, -inf, NaN) is no result: such trials rank last, whatever the mode, and a note
says how many. Every piece of data is made inert for its output (``mdf_search.escape``): rich markup and
control characters on the terminal, markdown and HTML in ``--format markdown``, formulas in CSV cells.
"""

from __future__ import annotations

import difflib
import io
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import polars as pl
from rich.table import Table

from mdf_search.escape import csv_cell, markdown, terminal
from mdf_search.report.experiment import HEADLINE, Experiment, ExperimentError, non_finite_note
from mdf_search.report.formats import FORMATS
from mdf_search.report.stats import t_interval
from mdf_search.report.where import apply_where
from mdf_search.results.schema import PHASE_COLUMNS, Status, param_schema

PHASES_VIEW = "phases"  # --by phases: the phase view
COST = "cost"  # gpu_hours x budget.price_per_gpu_hour, shown when the study sets a price
COST_COLUMNS = ("wall_s", *PHASE_COLUMNS, "startup_s", "gpu_hours", "cpu_hours")  # smaller is better


def gpu_price(exp: Experiment) -> float | None:
    """The study's ``budget.price_per_gpu_hour`` (money per GPU-hour, in the user's currency), if set."""
    budget = exp.spec.budget if exp.spec is not None else None
    price = getattr(budget, "price_per_gpu_hour", None)
    if isinstance(price, int | float) and not isinstance(price, bool) and math.isfinite(price) and price >= 0:
        return float(price)
    return None


def cost_note(frame: pl.DataFrame, price: float | None) -> str | None:
    """``cost = gpu_hours x price``, and what the trials of ``frame`` spent in all (every status: a
    failed trial's hours were spent too); None without a price or GPU-hours."""
    if price is None or "gpu_hours" not in frame.columns:
        return None
    hours = float(frame["gpu_hours"].cast(pl.Float64).fill_null(0).sum())
    return (
        f"cost = gpu_hours × budget.price_per_gpu_hour ({price:g} per GPU-hour); these {frame.height} "
        f"trials: {hours:.3f} GPU-hours, cost {hours * price:.2f}"
    )


def param_columns(frame: pl.DataFrame) -> list[str]:
    """Trial-parameter columns: flat config keys (those contain a '.' or are ``seed``/``task``/``head``)."""
    known = set(param_schema().names)
    return [c for c in frame.columns if c in known]


def varying(frame: pl.DataFrame, columns: list[str]) -> list[str]:
    """Columns whose value differs between the rows of ``frame`` (nulls count as a value)."""
    out = []
    for c in columns:
        if c in frame.columns and frame.height > 1 and frame[c].n_unique() > 1:
            out.append(c)
    return out


@dataclass
class Board:
    frame: pl.DataFrame
    title: str
    notes: list[str]


def _sort(frame: pl.DataFrame, by: str, descending: bool) -> pl.DataFrame:
    """Rows by ``by``; null, NaN, inf and -inf last (no value is no result, whichever the mode)."""
    value = pl.col(by).cast(pl.Float64, strict=False)
    key = pl.when(value.is_finite()).then(value).otherwise(None)
    return frame.sort(key, descending=descending, nulls_last=True, maintain_order=True)


def leaderboard_frame(
    exp: Experiment,
    top: int = 20,
    by: str | None = None,
    where: str | None = None,
    group_by: str | None = None,
) -> Board:
    """The rows to show; raise ``WhereError``/``ExperimentError`` on a bad filter or column."""
    if by is not None and not by.strip():
        raise ExperimentError(f"--by: empty; name a metric column, e.g. --by {exp.metric}, or --by phases")
    metric = by or exp.metric
    frame = apply_where(exp.trials, where)
    if metric == PHASES_VIEW:
        return _phase_board(exp, frame, top, where, group_by or "arm")
    if metric not in exp.trials.columns:
        close = difflib.get_close_matches(metric, exp.trials.columns, n=3, cutoff=0.6)
        metrics = [exp.metric, *close, *sorted(c for c in exp.trials.columns if c.startswith("val/"))]
        shown = ", ".join(dict.fromkeys(m for m in metrics if m in exp.trials.columns))
        raise ExperimentError(f"--by: no column {metric!r}; pass one of: {shown}, or phases")
    if not exp.trials.schema[metric].is_numeric():
        raise ExperimentError(
            f"--by: column {metric!r} is {exp.trials.schema[metric]}, not a number; rank by a metric, "
            f"e.g. --by {exp.metric}, or filter on {metric} with --where"
        )
    descending = exp.descending
    notes = list(exp.notes)
    price = gpu_price(exp)
    priced = cost_note(frame, price)
    notes += [priced] if priced else []
    invalid = non_finite_note(frame, metric)
    notes += [invalid] if invalid else []
    if metric.startswith("test/"):
        notes.append(
            f"ranked by {metric}, a test metric: for reading only; choosing a configuration by it biases the "
            f"test estimate (select on {exp.metric})"
        )
    title = f"{exp.name}: top {metric} ({exp.mode})"
    if group_by:
        if group_by not in frame.columns:
            raise ExperimentError(f"--group-by: no column {group_by!r}; try arm or a parameter key")
        unit = "seeds" if group_by == "arm" else "(arm, seed)s"
        groups = "arms" if group_by == "arm" else group_by
        title = f"{exp.name}: {groups} by {metric} ({exp.mode}), mean over {unit}"
        if where:
            notes.append(
                f"where: {where} ({frame.height} of {exp.trials.height} trials, filtered before validation "
                "selects one per (arm, seed))"
            )
        notes.append(
            f"n = {unit}: each (arm, seed) enters once, with its completed trial of best {exp.metric} "
            f"({exp.mode}) on validation; trials = the completed trials that selection chose from; "
            f"t_ci95 = Student-t 95 % interval of the mean over n; best = {metric} of the group's selected "
            f"trial with the best {exp.metric}"
        )
        if group_by not in ("arm", "seed", *exp.factors):
            notes.append(
                f"{group_by} is not a scientific factor: a group holds the (arm, seed)s whose selected "
                "trial had that value; the ungrouped view shows every trial"
            )
        if exp.metric not in exp.trials.columns:
            notes.append(f"no column {exp.metric!r} (the study metric): no trial can be selected, n = 0")
        return Board(_grouped(frame, metric, group_by, exp).head(top), title, notes)
    cost = metric in COST_COLUMNS
    extra = [m for m in HEADLINE if m != metric and m in frame.columns]
    if cost:
        title = f"{exp.name}: top {metric} (min: the cheapest first)"
        extra = [exp.metric, *(c for c in ("wall_s", *PHASE_COLUMNS) if c != metric)]
    ranked = _sort(frame, metric, descending and not cost).head(top)
    if priced and price is not None:
        ranked = ranked.with_columns((pl.col("gpu_hours").cast(pl.Float64) * price).alias(COST))
    in_arm = set(exp.factors)  # the arm id already spells the scientific values
    shown_params = varying(ranked, [p for p in param_columns(ranked) if p != "seed" and p not in in_arm])
    cols = ["trial_id", "arm", "status", *(["seed"] if "seed" in ranked.columns else []), metric, *extra]
    cols += ["epochs", *([] if cost else ["wall_s"]), *([COST] if priced else []), *shown_params]
    out = ranked.select([c for c in cols if c in ranked.columns]).with_row_index("rank", offset=1)
    if where:
        notes.append(f"where: {where} ({frame.height} of {exp.trials.height} trials)")
    return Board(out, title, notes)


def phase_frame(frame: pl.DataFrame, group_by: str = "arm") -> pl.DataFrame:
    """Per ``group_by`` value: ``trials`` (those that recorded phase times), the median ``wall_s``, of
    each phase (``results.schema.PHASE_COLUMNS``) and of ``startup_s``, and ``train_share`` (the
    group's summed ``train_s`` over its summed ``wall_s``); the fastest group (median wall) first. A
    group without phase times keeps a row with 0 trials. Medians of the phases need not add up to the
    median wall time; each trial's phases add up to its own."""
    columns = ("wall_s", *PHASE_COLUMNS, "startup_s")
    schema: dict[str, pl.DataType] = {group_by: frame.schema[group_by], "trials": pl.Int64()}
    schema |= {c: pl.Float64() for c in (*columns, "train_share")}
    timed = frame.head(0)
    if {"train_s", "wall_s"} <= set(frame.columns):
        timed = frame.filter(pl.col("train_s").is_not_null() & pl.col("wall_s").is_not_null())
    rows: list[dict[str, Any]] = []
    for key in frame[group_by].unique(maintain_order=True).to_list():
        part = (
            timed.filter(pl.col(group_by) == key)
            if key is not None
            else timed.filter(pl.col(group_by).is_null())
        )
        row: dict[str, Any] = {group_by: key, "trials": part.height}
        if part.height:
            for c in (c for c in columns if c in part.columns):
                median = part[c].cast(pl.Float64).median()
                row[c] = None if median is None else float(median)  # type: ignore[arg-type]
            wall = float(part["wall_s"].sum())
            row["train_share"] = float(part["train_s"].sum()) / wall if wall > 0 else None
        rows.append(row)
    out = pl.DataFrame(rows, schema=schema)
    return out.sort("wall_s", nulls_last=True).with_row_index("rank", offset=1)


def _phase_board(exp: Experiment, frame: pl.DataFrame, top: int, where: str | None, group_by: str) -> Board:
    if group_by not in frame.columns:
        raise ExperimentError(f"--group-by: no column {group_by!r}; try arm or a parameter key")
    groups = "arms" if group_by == "arm" else group_by
    title = f"{exp.name}: where the time goes, median seconds per trial, by {groups}"
    notes = [
        *exp.notes,
        "median over the trials of each group that recorded phase times (every status); per trial "
        "launch_s + init_s + data_s + train_s + eval_s + ckpt_s + report_s + other_s = wall_s; "
        "train_share = the group's summed train_s / summed wall_s",
    ]
    if where:
        notes.append(f"where: {where} ({frame.height} of {exp.trials.height} trials)")
    priced = cost_note(frame, gpu_price(exp))
    notes += [priced] if priced else []
    if "train_s" not in frame.columns or frame["train_s"].null_count() == frame.height:
        notes.append("no phase times recorded (an experiment from before they were)")
    return Board(phase_frame(frame, group_by).head(top), title, notes)


def _grouped(frame: pl.DataFrame, metric: str, group_by: str, exp: Experiment) -> pl.DataFrame:
    """Mean ± 95 % Student-t interval per group over the *selected* trial of each (arm, seed) in it
    (``Experiment.selected`` over the trials of ``frame``: completed, best study metric; diverged or
    early-stopped values are not a seed's result); a seed whose selected trial has no value of
    ``metric`` adds nothing. Groups with none keep a row with n = 0. ``best`` is ``metric`` of the group's
    selected trial with the best study metric (validation selects; ties: lowest id)."""
    candidates = exp if frame.height == exp.trials.height else replace(exp, trials=frame, _cache={})
    chosen = candidates.selected()
    completed = frame.filter(pl.col("status") == Status.COMPLETED)
    counts = dict(completed.group_by(group_by).len().iter_rows()) if completed.height else {}
    rows: list[dict[str, Any]] = []
    if group_by in chosen.columns and metric in chosen.columns:
        for key, part in chosen.group_by(group_by, maintain_order=True):
            value = pl.col(metric).cast(pl.Float64)
            values = part.filter(value.is_finite())[metric].cast(pl.Float64).to_numpy()
            if not len(values):
                continue
            lo, hi = t_interval(values)
            best = _sort(part.sort("trial_id"), exp.metric, exp.descending).row(0, named=True)[metric]
            rows.append(
                {
                    group_by: key[0],
                    "n": len(values),
                    "trials": int(counts.get(key[0], 0)),
                    "mean": float(values.mean()),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                    "t_ci95_lo": None if math.isnan(lo) else lo,
                    "t_ci95_hi": None if math.isnan(hi) else hi,
                    "best": None if best is None or not math.isfinite(best) else float(best),
                }
            )
    seen = {r[group_by] for r in rows}
    for key in frame[group_by].unique(maintain_order=True).to_list():
        if key not in seen:
            rows.append({group_by: key, "n": 0, "trials": int(counts.get(key, 0))})
    schema: dict[str, pl.DataType] = {group_by: frame.schema[group_by], "n": pl.Int64(), "trials": pl.Int64()}
    schema |= {"mean": pl.Float64(), "sd": pl.Float64()}
    schema |= {"t_ci95_lo": pl.Float64(), "t_ci95_hi": pl.Float64(), "best": pl.Float64()}
    out = pl.DataFrame(rows, schema=schema)
    return out.sort("mean", descending=exp.descending, nulls_last=True).with_row_index("rank", offset=1)


# -- rendering -----------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def _json_value(value: Any) -> Any:
    """JSON has no inf or NaN: a non-finite number is written as the text ``inf``, ``-inf`` or ``nan``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def render_text(board: Board, fmt: str) -> str:
    """csv / json / markdown text of a board (``table`` is rendered by rich); data escaped for each."""
    frame = board.frame
    if fmt == "csv":
        text = [c for c, kind in frame.schema.items() if kind == pl.String]
        safe = frame.with_columns(
            pl.col(c).map_elements(csv_cell, return_dtype=pl.String, skip_nulls=True) for c in text
        ).rename({c: str(csv_cell(c)) for c in frame.columns})
        buf = io.StringIO()
        safe.write_csv(buf)
        return buf.getvalue()
    if fmt == "json":
        rows = [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dicts()]
        return json.dumps(rows, default=str, indent=1)
    if fmt == "markdown":
        head = "| " + " | ".join(markdown(c) for c in frame.columns) + " |"
        sep = "| " + " | ".join("---" for _ in frame.columns) + " |"
        body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.iter_rows()]
        return "\n".join([f"**{markdown(board.title)}**", "", head, sep, *body]) + "\n"
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, but got {fmt!r}")


def _md_cell(value: Any) -> str:
    """A markdown cell: a number as ``_cell`` writes it, text escaped (no HTML, link or ``|``)."""
    return _cell(value) if isinstance(value, int | float) or value is None else markdown(value)


def rich_table(board: Board) -> Table:
    """The board as a rich table; the title, notes, column names and cells are data, printed as text."""
    caption = "\n".join(terminal(n) for n in board.notes) or None
    table = Table(title=terminal(board.title), caption=caption, header_style="bold")
    for col in board.frame.columns:
        numeric = board.frame.schema[col].is_numeric()
        table.add_column(
            terminal(col), justify="right" if numeric else "left", overflow="fold", no_wrap=col == "arm"
        )
    for row in board.frame.iter_rows():
        table.add_row(*[terminal(_cell(v)) for v in row])
    return table
