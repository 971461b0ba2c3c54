"""Non-finite numbers are not results: the report reads an experiment with every ``inf``, ``-inf`` and
``NaN`` it recorded set aside, and says how many it set aside.

A trial whose study metric is not finite (a diverging loss that still reported, a metric that divided
by zero) would otherwise rank first (``inf``), or break a figure's axis or a statistic. :func:`finite`
returns the experiment with each non-finite float cell of its trials and epochs tables made null (so
selection, tables, figures and statistics skip it, as they skip a missing value), the notes that count
them, and the finished trials whose study metric was set aside (the failure appendix lists them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import polars as pl

from mdf_search.report.document import d
from mdf_search.report.experiment import Experiment
from mdf_search.results.schema import FINISHED_OK

SHOWN = 5  # trial ids named in a note


@dataclass
class SetAside:
    """What :func:`finite` left out: the finished trials with a non-finite study metric (trial_id,
    attempt, arm, status, value) and, per other column, how many cells."""

    trials: pl.DataFrame
    cells: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _float_columns(frame: pl.DataFrame) -> list[str]:
    return [name for name, dtype in frame.schema.items() if dtype.is_float()]


def _nonfinite(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & pl.col(column).is_finite().not_()


def _clean(frame: pl.DataFrame) -> pl.DataFrame:
    columns = _float_columns(frame)
    if not columns:
        return frame
    return frame.with_columns(
        pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(None).alias(c) for c in columns
    )


def finite(exp: Experiment) -> tuple[Experiment, SetAside]:
    """``exp`` with its non-finite values set aside, and what was set aside (see the module doc)."""
    trials, metric = exp.trials, exp.metric
    columns = _float_columns(trials)
    invalid = pl.DataFrame(schema={"trial_id": pl.String, "value": pl.String})
    if metric in columns:
        hit = trials.filter(pl.col("status").is_in(FINISHED_OK) & _nonfinite(metric))
        invalid = hit.select(
            [c for c in ("trial_id", "attempt", "arm", "status", "epochs") if c in hit.columns]
            + [pl.col(metric).cast(pl.String).alias("value")]
        ).sort("trial_id")
    finished = trials.filter(pl.col("status").is_in(FINISHED_OK))  # a diverged trial's NaN is expected
    cells = {c: n for c in columns if c != metric and (n := finished.select(_nonfinite(c).sum()).item())}
    epochs = exp.epochs
    epoch_cells = int(epochs.select(_nonfinite(metric).sum()).item()) if metric in epochs.columns else 0
    notes = []
    if invalid.height:
        ids = invalid["trial_id"].cast(pl.String).to_list()
        named = ", ".join(map(d, ids[:SHOWN])) + (" …" if len(ids) > SHOWN else "")
        values = ", ".join(sorted(set(invalid["value"].to_list())))  # inf, -inf, NaN: polars' own text
        notes.append(
            f"{invalid.height} finished trial(s) recorded a non-finite {d(metric)} ({values}): {named}. "
            "Not a valid result: they are left out of selection, rankings, tables and statistics, and "
            "listed in the failure appendix."
        )
    if cells:
        listed = ", ".join(f"{d(c)} ({n})" for c, n in sorted(cells.items())[:SHOWN])
        more = " …" if len(cells) > SHOWN else ""
        notes.append(
            f"non-finite values (inf or NaN) in {sum(cells.values())} other trial cell(s), shown as "
            f"missing (—) and left out of every statistic: {listed}{more}."
        )
    if epoch_cells:
        notes.append(
            f"{epoch_cells} non-finite per-epoch {d(metric)} value(s) (inf or NaN) are left out of the "
            "learning curves."
        )
    clean = dataclasses.replace(
        exp, trials=_clean(trials), epochs=_clean(epochs), notes=list(exp.notes), _cache={}
    )
    return clean, SetAside(invalid, cells, notes)
