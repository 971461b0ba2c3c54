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

from mdf_search.data import storage
from mdf_search.metrics import DEFAULT_METRIC, DEFAULT_MODE
from mdf_search.report.design import (
    ARMS_FILE,
    SPEC_FILE,
    DesignError,
    RecordedSpec,
    load_spec_record,
    read_record,
    same_value,
)
from mdf_search.results.schema import FINISHED_OK, Status
from mdf_search.results.store import ResultsError, ResultsStore

HEADLINE = ("val/accuracy", "val/macro_f1", "val/macro_recall", "val/auroc")
TASK_HEADS = ("disease", "type")  # metric namespaces of task=dual (metrics.metrics_for_tasks)


def in_trial_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s rows by trial id (and attempt): a fixed order for anything drawn or fitted from them."""
    keys = [k for k in ("trial_id", "attempt") if k in frame.columns]
    return frame.sort(keys, nulls_last=True, maintain_order=True) if keys else frame


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
    notes: list[str] = field(default_factory=list)  # shown with the results (warnings included)
    warnings: list[str] = field(default_factory=list)  # rows not shown: parts set aside (ResultsStore)
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
        """Trials that finished with a value of the study metric (completed or stopped early), in trial
        order whatever order the tables were read in (figures drawn from them are the same bytes)."""
        if self.metric not in self.trials.columns:
            return self.trials.head(0)
        return in_trial_order(self.trials.filter(pl.col("status").is_in(FINISHED_OK) & finite(self.metric)))

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
                out = (
                    frame.filter(pl.col("status").is_in(statuses) & finite(self.metric))
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
        return chosen.filter(finite(metric)).select(
            "arm", "seed", "trial_id", pl.col(metric).cast(pl.Float64).alias("value")
        )

    def predictions(self) -> pl.DataFrame:
        """The per-sample predictions table (empty when the experiment predates it); read once."""
        if "predictions" not in self._cache:
            store = ResultsStore(self.root)
            self._cache["predictions"] = store.predictions()
            found = store.warnings(("predictions",))
            self.warnings += found
            self.notes += found
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
            usable = part.filter(finite(self.metric))
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
        try:
            return dict(json.loads(storage.read_text(self.root, "provenance.json")))
        except (OSError, ValueError, TypeError):
            return {}


def reproduce_commands(root: str, report: str = "report") -> tuple[str, list[list[str]]]:
    """(where to run them, the commands as argument lists): rerun the study from scratch into a fresh
    storage root, resume this one, rewrite its report. For a local experiment they run from its
    directory (no machine path in a report; ``report`` relative to it); for one on object storage
    they name its URI (``report``: the report's folder under it, or a URI of its own)."""
    if not storage.is_uri(root):
        return (
            f"from the experiment directory ({Path(root).name}/, the one holding spec.yaml and trials/)",
            [
                ["mdf-search", "sweep", "spec.yaml", "--storage", "../rerun", "--fresh"],
                ["mdf-search", "resume", "."],
                ["mdf-search", "report", ".", "--out", report],
            ],
        )
    root = root.rstrip("/")
    out = report if storage.is_uri(report) else storage.join(root, report)
    return (
        "from anywhere with access to its storage",
        [
            [
                "mdf-search",
                "sweep",
                storage.join(root, SPEC_FILE),
                "--storage",
                f"{root.rsplit('/', 1)[0]}/rerun",
                "--fresh",
            ],
            ["mdf-search", "resume", root],
            ["mdf-search", "report", root, "--out", out],
        ],
    )


def read_predictions(experiment_dir: str) -> pl.DataFrame:
    """The experiment's per-sample predictions (``ResultsStore.predictions``: one row per trial,
    attempt, split, head and sample); an empty frame when the experiment predates them."""
    return ResultsStore(experiment_dir).predictions()


def metric_task(metric: str) -> str | None:
    """The head a metric key names (``val/type/macro_f1`` → ``type``); None for plain keys (one head)."""
    parts = metric.split("/")
    return parts[1] if len(parts) > 2 and parts[1] in TASK_HEADS else None


def finite(column: str) -> pl.Expr:
    """True where ``column`` holds a finite number: null, NaN, inf and -inf are no valid result."""
    return pl.col(column).cast(pl.Float64, strict=False).is_finite().fill_null(False)


def non_finite_note(frame: pl.DataFrame, column: str) -> str | None:
    """A note naming the trials whose ``column`` is inf, -inf or NaN (ranked last, never selected)."""
    if column not in frame.columns or not frame.schema[column].is_numeric():
        return None
    value = pl.col(column).cast(pl.Float64)
    bad = frame.filter(value.is_not_null() & ~value.is_finite())
    if bad.is_empty():
        return None
    ids = ", ".join(str(t) for t in bad["trial_id"].head(5).to_list()) if "trial_id" in bad.columns else ""
    more = f" and {bad.height - 5} more" if bad.height > 5 else ""
    trials = f"{bad.height} trial{'s' if bad.height != 1 else ''}"
    return (
        f"{trials} with a non-finite {column} (inf, -inf or nan: {ids}{more}): not a valid result, "
        "ranked last and never selected"
    )


_SPECS: dict[str, tuple[Any, ...]] = {}  # experiment root -> (file stamps, arms, spec, notes)


def _stamp(root: str, name: str) -> tuple[int, ...] | None:
    if storage.is_uri(root):
        try:
            return storage.stamp(root, name)
        except OSError:
            return None
    try:
        st = (Path(root) / name).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def recorded_spec(root: str | Path, trials: pl.DataFrame) -> tuple[RecordedSpec | None, list[str]]:
    """``design.load_spec_record``, read again only when arms.json or spec.yaml changes (modification
    time, size, inode): ``leaderboard --watch`` reloads the results every 2 s, never an unchanged spec.
    A spec reconstructed from spec.yaml depends on the arms in the trials table too, so new arms
    rebuild it. A file that does not load at all (a folder, nesting too deep, ...) becomes a note
    naming it. ``root``: a local path or a URI (``data.storage``)."""
    root = str(root)
    stamp = (_stamp(root, ARMS_FILE), _stamp(root, SPEC_FILE))
    arms = tuple(sorted(str(a) for a in trials["arm"].unique().to_list())) if "arm" in trials.columns else ()
    hit = _SPECS.get(str(root))
    if hit is not None and hit[0] == stamp and hit[1] in (None, arms):
        return hit[2], list(hit[3])
    try:
        spec, notes = load_spec_record(root, trials)
    except (OSError, ValueError, RecursionError, MemoryError) as err:
        culprit = storage.join(root, SPEC_FILE)
        try:
            read_record(root)
        except (FileNotFoundError, DesignError):
            pass
        except (OSError, ValueError, RecursionError, MemoryError):
            culprit = storage.join(root, ARMS_FILE)
        spec = None
        notes = [
            f"{culprit} does not load ({type(err).__name__}: {str(err)[:200]}): metric, factors and "
            f"baseline unknown; ranking by {DEFAULT_METRIC} ({DEFAULT_MODE}); fix or remove the file"
        ]
    _SPECS[str(root)] = (stamp, arms if spec is not None and spec.reconstructed else None, spec, notes)
    return spec, list(notes)


def load_experiment(experiment_dir: str) -> Experiment:
    """Read the Parquet tables and the recorded spec (``recorded_spec``: arms.json, or a reconstruction
    for an experiment that predates it); raise ``ExperimentError`` when the directory is missing or
    holds no readable trials. Parts that cannot be read are set aside (``ResultsStore``) and named in
    ``warnings`` (and ``notes``). Trials with a non-finite study metric are kept in ``trials`` but never
    selected (``ok``, ``selected``, ``per_seed``); the leaderboard and the report say how many.
    ``experiment_dir``: a local path or a URI (``s3://bucket/runs/name``), read through the results'
    filesystem; ``Experiment.root`` keeps a URI as given."""
    remote = storage.is_uri(experiment_dir)
    root = Path(experiment_dir).expanduser()
    if not remote and root.exists() and not root.is_dir():
        raise ExperimentError(
            f"{experiment_dir}: a file, not an experiment directory; pass runs/<experiment> as written by "
            "`mdf-search sweep`"
        )
    if not remote and not root.is_dir():
        raise ExperimentError(
            f"{experiment_dir}: no such experiment directory; pass runs/<experiment> as written by "
            "`mdf-search sweep`"
        )
    store = ResultsStore(experiment_dir)
    try:
        trials = store.trials()
        epochs = store.epochs()
    except ResultsError as err:
        raise ExperimentError(str(err)) from None
    warnings = store.warnings()
    if trials.is_empty():
        if warnings:
            left = [s for s in store.set_aside if s.moved_to is None]
            aside = len(left) + len(store.quarantined("trials"))
            raise ExperimentError(
                f"{experiment_dir}: no readable trial results: {aside} parts set aside "
                f"({'; '.join(warnings)})"
            )
        raise ExperimentError(
            f"{experiment_dir}: no trial results yet (trials/*.parquet is empty); is the sweep running?"
        )
    where = experiment_dir.rstrip("/") if remote else str(root)
    spec, notes = recorded_spec(where, trials)
    metric, mode = (spec.metric, spec.mode) if spec else (DEFAULT_METRIC, DEFAULT_MODE)
    notes += warnings
    return Experiment(where, spec, trials, epochs, metric, mode, notes, warnings)
