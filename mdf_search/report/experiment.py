"""One experiment directory as the reports read it: the recorded spec, the Parquet tables, and derived
views.

Everything the leaderboard and the report need is here, so both read an experiment the same way:
which metric and mode rank trials, which columns are scientific factors and nuisance parameters, the
arms in design order, the baseline arm, and the per-(arm, seed) table the statistics pair on. The
design comes from the sweep's record (``arms.json``, ``report.design``), never from running search code.

**Selection.** Validation chooses, test only reports. For each (arm, seed) exactly one trial is
selected: the completed trial with the best value of the study's metric (a validation metric; its
mode). Every number shown for that (arm, seed), test metrics, per-class values, confusion matrices,
predictions and curves included, is read from that one trial (``selected``), never the best of each
column over several trials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mdf_search.metrics import DEFAULT_METRIC, DEFAULT_MODE
from mdf_search.report.design import RecordedSpec, load_spec_record, same_value
from mdf_search.results.schema import FINISHED_OK, Status
from mdf_search.results.store import ResultsStore

HEADLINE = ("val/accuracy", "val/macro_f1", "val/macro_recall", "val/auroc")
TASK_HEADS = ("disease", "type")  # metric namespaces of task=dual (metrics.metrics_for_tasks)


class ExperimentError(ValueError):
    """The experiment directory is missing or has no results yet."""


@dataclass
class Experiment:
    root: str
    spec: RecordedSpec | None
    trials: pl.DataFrame
    epochs: pl.DataFrame
    metric: str
    mode: str
    notes: list[str] = field(default_factory=list)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        if self.spec is not None and self.spec.experiment:
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
        """Arm ids in design order (the recorded arms first, then any others in the data, sorted)."""
        present = [a for a in self.trials["arm"].unique(maintain_order=True).to_list() if a is not None]
        order = self.spec.arm_ids() if self.spec is not None else []
        return [a for a in order if a in present] + sorted(a for a in present if a not in order)

    def baseline_arm(self) -> str | None:
        """The arm recorded as the baseline, when exactly one is and it has results."""
        if self.spec is None:
            return None
        present = set(self.trials["arm"].to_list())
        ids = [a for a in self.spec.baseline_ids() if a in present]
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

    def selected(self, statuses: tuple[str, ...] = (Status.COMPLETED,)) -> pl.DataFrame:
        """One trial row per (arm, seed): among its trials with a status in ``statuses`` and a value of
        the study metric, the best by that metric and mode (ties: the lowest trial id). ``seed`` is an
        Int64 column (0 when the table has none). Grid/ofat designs have one trial per (arm, seed);
        sampler designs several, of which validation picks one."""
        key = ("selected", statuses)
        if key not in self._cache:
            frame = self.trials
            if self.metric not in frame.columns or frame.is_empty():
                out = frame.head(0).with_columns(pl.lit(0, dtype=pl.Int64).alias("seed"))
            else:
                seed = pl.col("seed") if "seed" in frame.columns else pl.lit(0, dtype=pl.Int64)
                value = pl.col(self.metric)
                out = (
                    frame.filter(pl.col("status").is_in(statuses) & value.is_not_null() & value.is_not_nan())
                    .with_columns(seed.cast(pl.Int64).alias("seed"))
                    .sort([self.metric, "trial_id"], descending=[self.descending, False])
                    .unique(["arm", "seed"], keep="first", maintain_order=True)
                    .sort(["arm", "seed"])
                )
            self._cache[key] = out
        frame = self._cache[key]
        assert isinstance(frame, pl.DataFrame)
        return frame

    def per_seed(
        self, metric: str | None = None, statuses: tuple[str, ...] = (Status.COMPLETED,)
    ) -> pl.DataFrame:
        """One row per (arm, seed): ``metric`` of the trial validation selected (``selected``), so every
        metric of an (arm, seed) comes from the same trial. Columns: arm, seed, trial_id, value."""
        metric = metric or self.metric
        chosen = self.selected(statuses)
        if metric not in chosen.columns or chosen.is_empty():
            return pl.DataFrame(
                schema={"arm": pl.String, "seed": pl.Int64, "trial_id": pl.String, "value": pl.Float64}
            )
        return chosen.select(
            "arm", "seed", "trial_id", pl.col(metric).cast(pl.Float64).fill_nan(None).alias("value")
        ).filter(pl.col("value").is_not_null())

    def predictions(self) -> pl.DataFrame:
        """The per-sample predictions table (empty when the experiment predates it); read once."""
        if "predictions" not in self._cache:
            self._cache["predictions"] = read_predictions(self.root)
        frame = self._cache["predictions"]
        assert isinstance(frame, pl.DataFrame)
        return frame

    def selected_epoch(self, trial_id: str, attempt: int) -> dict[str, Any] | None:
        """The epoch row a trial kept: its ``best_epoch`` when recorded, else the epoch with the best
        study metric (ties: the earliest), else its last epoch; None without epoch rows."""
        ep = self.epochs
        if ep.is_empty() or "trial_id" not in ep.columns:
            return None
        part = ep.filter((pl.col("trial_id") == trial_id) & (pl.col("attempt") == attempt)).sort("epoch")
        if part.is_empty():
            return None
        row = self.trials.filter((pl.col("trial_id") == trial_id) & (pl.col("attempt") == attempt))
        best_epoch = row["best_epoch"][0] if "best_epoch" in row.columns and row.height else None
        if best_epoch is not None:
            hit = part.filter(pl.col("epoch") == int(best_epoch))
            if hit.height:
                return hit.row(0, named=True)
        if self.metric in part.columns:
            usable = part.filter(pl.col(self.metric).is_not_null() & pl.col(self.metric).is_not_nan())
            if usable.height:
                ranked = usable.sort([self.metric, "epoch"], descending=[self.descending, False])
                return ranked.row(0, named=True)
        return part.row(part.height - 1, named=True)

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
        domain = self.spec.scientific.get(factor) if self.spec else None
        choices = list(domain.choices or ()) if domain else []
        ordered: list[Any] = []
        for choice in choices:
            for value in present:
                if value not in ordered and same_value(value, choice):
                    ordered.append(value)
        return ordered + [v for v in present if v not in ordered]

    def provenance(self) -> dict[str, Any]:
        path = Path(self.root) / "provenance.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}


def read_predictions(experiment_dir: str) -> pl.DataFrame:
    """The experiment's per-sample predictions (``ResultsStore.predictions``: one row per trial,
    attempt, split, head and sample); an empty frame when the experiment predates them."""
    return ResultsStore(experiment_dir).predictions()


def metric_task(metric: str) -> str | None:
    """The head a metric key names (``val/type/macro_f1`` → ``type``); None for plain keys (one head)."""
    parts = metric.split("/")
    return parts[1] if len(parts) > 2 and parts[1] in TASK_HEADS else None


def load_experiment(experiment_dir: str) -> Experiment:
    """Read the Parquet tables and the recorded spec (``report.design.load_spec_record``: arms.json, or a
    reconstruction for an experiment that predates it); raise ``ExperimentError`` when the directory is
    missing or holds no trials."""
    root = Path(experiment_dir).expanduser()
    if "://" not in experiment_dir and not root.is_dir():
        raise ExperimentError(
            f"{experiment_dir}: no such experiment directory; pass runs/<experiment> as written by "
            "`mdf-search sweep`"
        )
    store = ResultsStore(experiment_dir)
    trials = store.trials()
    if trials.is_empty():
        raise ExperimentError(
            f"{experiment_dir}: no trial results yet (trials/*.parquet is empty); is the sweep running?"
        )
    epochs = store.epochs()
    spec, notes = load_spec_record(root, trials)
    metric, mode = (spec.metric, spec.mode) if spec else (DEFAULT_METRIC, DEFAULT_MODE)
    return Experiment(str(root), spec, trials, epochs, metric, mode, notes)
