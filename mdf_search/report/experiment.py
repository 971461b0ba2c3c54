"""One experiment directory as the reports read it: the spec, the Parquet tables, and derived views.

Everything the leaderboard and the report need is here, so both read an experiment the same way:
which metric and mode rank trials, which columns are scientific factors and nuisance parameters, the
arms in design order, the baseline arm, and the per-(arm, seed) table the statistics pair on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mdf_search.results.store import ResultsStore
from mdf_search.search.space import SearchSpec, SpecError, canonical, load_spec

log = logging.getLogger(__name__)
DEFAULT_METRIC = ("val/macro_f1", "max")
HEADLINE = ("val/accuracy", "val/macro_f1", "val/macro_recall")
FINISHED_OK = ("completed", "stopped_early")


class ExperimentError(ValueError):
    """The experiment directory is missing, has no results yet, or its spec does not load."""


@dataclass
class Experiment:
    root: str
    spec: SearchSpec | None
    trials: pl.DataFrame
    epochs: pl.DataFrame
    metric: str
    mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.spec is not None:
            return self.spec.experiment
        if "experiment" in self.trials.columns and self.trials.height:
            return str(self.trials["experiment"][0])
        return Path(self.root).name

    @property
    def descending(self) -> bool:
        return self.mode == "max"

    @property
    def factors(self) -> list[str]:
        """Scientific factors present as columns (spec order)."""
        keys = list(self.spec.scientific) if self.spec else []
        return [k for k in keys if k in self.trials.columns]

    @property
    def nuisance(self) -> list[str]:
        keys = list(self.spec.nuisance) if self.spec else []
        return [k for k in keys if k in self.trials.columns]

    def arms(self) -> list[str]:
        """Arm ids in design order (the spec's arms first, then any others in the data)."""
        present = [a for a in self.trials["arm"].unique(maintain_order=True).to_list() if a is not None]
        order: list[str] = []
        if self.spec is not None:
            from mdf_search.search.designs import arms

            try:
                order = [a.id for a in arms(self.spec)]
            except Exception as err:  # a spec that no longer builds arms: fall back to data order
                log.warning("cannot build the arms of %s: %s", self.spec.path, err)
        return [a for a in order if a in present] + sorted(a for a in present if a not in order)

    def baseline_arm(self) -> str | None:
        """The arm the spec's ``baseline`` matches, when it has results."""
        if self.spec is None or self.spec.baseline is None:
            return None
        from mdf_search.search.designs import arms, baseline_arms

        try:
            matched = baseline_arms(self.spec, arms(self.spec))
        except Exception:
            return None
        present = set(self.trials["arm"].to_list())
        ids = [a.id for a in matched if a.id in present]
        return ids[0] if len(ids) == 1 else None

    def ok(self) -> pl.DataFrame:
        """Trials that finished with a value of the study metric (completed or stopped early)."""
        if self.metric not in self.trials.columns:
            return self.trials.head(0)
        return self.trials.filter(
            pl.col("status").is_in(FINISHED_OK)
            & pl.col(self.metric).is_not_null()
            & pl.col(self.metric).is_not_nan()
        )

    def per_seed(self, metric: str | None = None, statuses: tuple[str, ...] = ("completed",)) -> pl.DataFrame:
        """One row per (arm, seed): the best trial's ``metric`` over nuisance values (one trial per seed in
        grid/ofat designs). Columns: arm, seed, value."""
        metric = metric or self.metric
        frame = self.trials
        if metric not in frame.columns or frame.is_empty():
            return pl.DataFrame(schema={"arm": pl.String, "seed": pl.Int64, "value": pl.Float64})
        seed = pl.col("seed") if "seed" in frame.columns else pl.lit(0, dtype=pl.Int64)
        best = pl.col(metric).max() if self.descending else pl.col(metric).min()
        return (
            frame.filter(pl.col("status").is_in(statuses) & pl.col(metric).is_not_null())
            .with_columns(seed.cast(pl.Int64).alias("seed"))
            .group_by(["arm", "seed"], maintain_order=True)
            .agg(best.cast(pl.Float64).alias("value"))
            .sort(["arm", "seed"])
        )

    def arm_params(self) -> dict[str, dict[str, Any]]:
        """Each arm's scientific values (from its first trial row)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.factors:
            return out
        for row in (
            self.trials.select(["arm", *self.factors]).unique("arm", keep="first").iter_rows(named=True)
        ):
            out[str(row["arm"])] = {k: row[k] for k in self.factors}
        return out

    def value_order(self, factor: str) -> list[Any]:
        """A factor's values in spec order (the data's extra values, e.g. ``otherwise``, after them)."""
        present = [v for v in self.trials[factor].unique(maintain_order=True).to_list() if v is not None]
        param = self.spec.scientific.get(factor) if self.spec else None
        choices = list(param.choices or ()) if param else []
        ordered: list[Any] = []
        for choice in choices:
            for value in present:
                if value not in ordered and canonical(factor, value) == canonical(factor, choice):
                    ordered.append(value)
        return ordered + [v for v in present if v not in ordered]

    def provenance(self) -> dict[str, Any]:
        path = Path(self.root) / "provenance.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}


def load_experiment(experiment_dir: str) -> Experiment:
    """Read ``<dir>/spec.yaml`` (when present) and the Parquet tables; raise ``ExperimentError`` when the
    directory is missing or holds no trials."""
    root = Path(experiment_dir).expanduser()
    if "://" not in experiment_dir and not root.is_dir():
        raise ExperimentError(
            f"{experiment_dir}: no such experiment directory; pass runs/<experiment> as written by "
            "`mdf-search sweep`"
        )
    notes: list[str] = []
    spec: SearchSpec | None = None
    spec_file = root / "spec.yaml"
    if spec_file.is_file():
        try:
            spec = load_spec(spec_file)
        except SpecError as err:
            notes.append(f"spec.yaml does not load ({len(err.problems)} problem(s)); factors unknown")
    else:
        notes.append("no spec.yaml: metric, factors and baseline unknown; ranking by val/macro_f1 (max)")
    store = ResultsStore(experiment_dir)
    trials = store.trials()
    if trials.is_empty():
        raise ExperimentError(
            f"{experiment_dir}: no trial results yet (trials/*.parquet is empty); is the sweep running?"
        )
    epochs = store.epochs()
    metric, mode = (spec.metric, spec.mode) if spec else DEFAULT_METRIC
    return Experiment(str(root), spec, trials, epochs, metric, mode, notes)
