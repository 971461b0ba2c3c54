"""Arrow schemas of the results tables.

Core columns have fixed types; every trial parameter is a typed column named by its flat key
(``fusion.levels``, ``optim.lr``, ...), typed from :mod:`mdf_search.config`; every scalar metric a
trial reports is a ``float64`` column under its own name (``val/macro_f1``, ``val/recall/inherited``);
list-valued metrics (confusion matrices) are stored as JSON text.

Every trial row says where its wall time went (``float64`` seconds, filled by the results writer from
the workers' reports; ``train/phases.py`` defines each phase exactly): ``launch_s`` (trial start until
the workers are ready), ``init_s`` (model build and DeepSpeed initialisation), ``data_s`` (dataset
setup and waits for batches), ``train_s`` (optimiser steps), ``eval_s`` (evaluation), ``ckpt_s``
(checkpoint restore, save and persistence), ``report_s`` (``ray.train.report`` and bookkeeping) and
``other_s`` (the rest) add up to ``wall_s`` (the attempt's start until its last report arrived);
``startup_s`` is the trial start until the first optimiser step. Null for a trial that reported none.

The ``predictions`` table has a fixed schema instead (:func:`prediction_schema`): one row per (trial,
attempt, split, sample, task head), the class probabilities in one ``prob/<class>`` column per class of
the label space (disease classes, then type classes). A row fills the columns of its head's classes and
leaves the others null, so trials of any task (disease, type, dual) share one schema within an experiment
and any Parquet reader can glob the part files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa

from mdf_search.config import flat_fields
from mdf_search.metrics import metrics_for_tasks

log = logging.getLogger(__name__)

KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id", "attempt"),
    "epochs": ("trial_id", "attempt", "epoch"),
    "predictions": ("trial_id", "attempt", "split", "task", "sample_id"),
}


class Status(StrEnum):
    """A trial attempt's state, as written in the ``status`` column (the values are the strings).

    ``running`` until the trial ends; then ``completed`` (all epochs), ``stopped_early`` (ASHA),
    or a failure: ``diverged`` (non-finite loss), ``oom``, ``infeasible`` (the memory plan refused it)
    or ``error`` (anything else, with the message).
    """

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_EARLY = "stopped_early"
    DIVERGED = "diverged"
    OOM = "oom"
    INFEASIBLE = "infeasible"
    ERROR = "error"

    @property
    def failed(self) -> bool:
        return self in FAILED


FAILED = frozenset({Status.DIVERGED, Status.OOM, Status.INFEASIBLE, Status.ERROR})
# Ended with a value of the study metric: all epochs, or stopped by the scheduler after some.
FINISHED_OK = frozenset({Status.COMPLETED, Status.STOPPED_EARLY})

# Where a trial's wall time went (train/phases.py), in the order a trial spends it; they add up to wall_s.
PHASE_COLUMNS = ("launch_s", "init_s", "data_s", "train_s", "eval_s", "ckpt_s", "report_s", "other_s")

TRIAL_CORE = pa.schema(
    [
        ("experiment", pa.string()),
        ("trial_id", pa.string()),
        ("attempt", pa.int64()),
        ("status", pa.string()),
        ("message", pa.string()),
        ("arm", pa.string()),
        ("epochs", pa.int64()),
        ("wall_s", pa.float64()),
        *((name, pa.float64()) for name in PHASE_COLUMNS),
        ("startup_s", pa.float64()),
        ("gpu_hours", pa.float64()),
        ("cpu_hours", pa.float64()),
        ("world_size", pa.int64()),
        ("split_hash", pa.string()),
        ("features_reused", pa.string()),  # vision | unet | none (@eval: evaluation only), features.py
        ("selection_metric", pa.string()),  # the study's metric and mode, which chose best_epoch
        ("selection_mode", pa.string()),
        ("best_epoch", pa.int64()),  # the selected epoch: the row's val/, test/, train/ metrics are its
        ("config_hash", pa.string()),
        ("git_sha", pa.string()),
        ("versions", pa.string()),
        ("host", pa.string()),
        ("written_at", pa.timestamp("us", tz="UTC")),
    ]
)
EPOCH_CORE = pa.schema(
    [
        ("experiment", pa.string()),
        ("trial_id", pa.string()),
        ("attempt", pa.int64()),
        ("arm", pa.string()),
        ("epoch", pa.int64()),
        ("status", pa.string()),
        ("best_epoch", pa.int64()),  # selected so far (epoch rows keep the epoch's own metrics)
        ("written_at", pa.timestamp("us", tz="UTC")),
    ]
)


# Written by the trial (rank 0, into its checkpoint); the results writer adds trial_id and attempt.
PREDICTION_SAMPLE = pa.schema(
    [
        ("split", pa.string()),  # val | test
        ("epoch", pa.int64()),  # the selected epoch (1-based, as in the epochs table)
        ("task", pa.string()),  # the head: disease | type (task=dual writes both)
        ("sample_id", pa.string()),  # the manifest's image_path: stable across trials and splits
        ("manifest_row", pa.int64()),
        ("case_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),  # class names of the head
        ("pred", pa.string()),
    ]
)
PREDICTION_TRIAL = pa.schema([("trial_id", pa.string()), ("attempt", pa.int64())])
PROB = "prob/"


def prediction_schema(class_names: Iterable[str], *, with_trial: bool = True) -> pa.Schema:
    """The predictions table's columns for a label space's class names (disease classes, then types)."""
    probs = [pa.field(f"{PROB}{name}", pa.float32()) for name in dict.fromkeys(class_names)]
    head = [*PREDICTION_TRIAL, *PREDICTION_SAMPLE] if with_trial else list(PREDICTION_SAMPLE)
    return pa.schema([*head, *probs])


def _param_type(default: Any) -> pa.DataType:
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, int):
        return pa.int64()
    if isinstance(default, float):
        return pa.float64()
    return pa.string()  # strings, None-able paths and tuples (stored in their flat spelling)


def param_schema() -> pa.Schema:
    """One typed column per flat trial parameter (``seed`` included)."""
    fields = []
    for key, (_, f) in sorted(flat_fields().items()):
        default = f.default
        fields.append(
            (
                key,
                pa.float64()
                if key.startswith("optim.") and isinstance(default, float)
                else _param_type(default),
            )
        )
    return pa.schema(fields)


_PARAMS = param_schema()


def _coerce(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(kind):
        return (
            value
            if isinstance(value, str)
            else json.dumps(value)
            if isinstance(value, list | dict)
            else str(value)
        )
    if pa.types.is_boolean(kind):
        return bool(value)
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_floating(kind):
        return float(value)
    return value


def to_table(rows_in: Iterable[Mapping[str, Any]], table: str, schema: pa.Schema | None = None) -> pa.Table:
    """Rows → an Arrow table: core and parameter columns typed, other scalars float64, lists as JSON.

    With ``schema`` (the store's table schema) the table has exactly its columns, in its order, null
    where a row has no value; a value its column cannot hold is written as null (and logged)."""
    now = int(time.time() * 1e6)
    rows = [{"written_at": now, **r} for r in rows_in]
    if schema is None:
        names: list[str] = []
        for r in rows:
            names.extend(k for k in r if k not in names)
        schema = pa.schema(
            [field_for(table, n, next((r[n] for r in rows if r.get(n) is not None), None)) for n in names]
        )
    columns = {f.name: [_coerce_or_null(r.get(f.name), f) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _coerce_or_null(value: Any, f: pa.Field) -> Any:
    try:
        return _coerce(value, f.type)
    except (TypeError, ValueError):
        log.warning("results column %r is %s: %r written as null", f.name, f.type, value)
        return None


# -- one schema for every part of a table ---------------------------------------------------------
def core_schema(table: str) -> pa.Schema:
    """The declared columns of ``trials`` (core, then every flat parameter) or ``epochs`` (core)."""
    return pa.schema([*TRIAL_CORE, *_PARAMS]) if table == "trials" else EPOCH_CORE


def metric_type(name: str) -> pa.DataType:
    """A metric column's type: JSON text for a confusion matrix, float64 for every other metric."""
    return pa.string() if name.rpartition("/")[2] == "confusion" else pa.float64()


def field_for(table: str, name: str, sample: Any = None) -> pa.Field:
    """The column a row's key ``name`` is written to: its declared type, else a metric's type, else the
    type of a value seen (number: float64; text, lists and dicts: string)."""
    core = core_schema(table)
    if name in core.names:
        return core.field(name)
    if name in _PARAMS.names:
        return _PARAMS.field(name)
    if isinstance(sample, str | list | dict) or (sample is None and pa.types.is_string(metric_type(name))):
        return pa.field(name, pa.string())
    is_bool = isinstance(sample, bool)
    return pa.field(name, pa.string() if is_bool else metric_type(name))


def table_schema(table: str, metrics: Sequence[str] = (), extra: Iterable[pa.Field] = ()) -> pa.Schema:
    """The schema every part of ``table`` is written with: the declared columns, the study's declared
    ``metrics`` (:func:`study_metrics`) in their order, then ``extra`` columns (keys a trial reported that
    were not declared, in the order they first appeared)."""
    fields = list(core_schema(table))
    names = {f.name for f in fields}
    for f in (*(field_for(table, m) for m in metrics), *extra):
        if f.name not in names:
            fields.append(f)
            names.add(f.name)
    return pa.schema(fields)


# What the trial loop reports besides the split metrics (train/loop.py, _trial_metrics and _train_epoch;
# train/<task>/accuracy for two heads), and after evaluating (loop.py, _evaluate and the report).
_BEFORE = ("trainable_params", "total_params")
_TRAIN = ("train/loss", "train_loss")
_TRAIN_AFTER = ("step_time_s", "samples_per_s", "epoch_time_s", "first_step_unix")
_AFTER = ("eval_time_s", "best_value", "peak_mem_mb")


def study_metrics(classes_by_task: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Every metric a trial of these heads (head → class names, ``model.mdf.task_classes``) reports,
    in the order the loop reports them: the ``val/`` and ``test/`` keys are those ``metrics.py`` gives
    the heads' classes (computed here on a stand-in split, so the names cannot drift from it)."""
    tasks = list(classes_by_task)
    if not tasks:
        return ()
    stand_in = {t: np.arange(len(classes_by_task[t])) for t in tasks}
    probs = {t: np.eye(len(classes_by_task[t])) for t in tasks}
    split = ["loss", *metrics_for_tasks(stand_in, stand_in, classes_by_task, probs), "n"]
    accuracy = ["train/accuracy"] if len(tasks) == 1 else [f"train/{t}/accuracy" for t in tasks]
    names = [*_BEFORE, *_TRAIN, *accuracy, *_TRAIN_AFTER]
    names += [f"{prefix}/{key}" for prefix in ("val", "test") for key in split]
    return tuple(dict.fromkeys([*names, *_AFTER]))


# -- what a part must hold to be read with the others ------------------------------------------------
class PartError(ValueError):
    """A part whose columns cannot be read with the table's other parts (the message says which)."""


def required_columns(table: str) -> tuple[str, ...]:
    """The columns without which a part's rows cannot be keyed or ordered."""
    return (*KEYS[table], *(("written_at",) if table in ("trials", "epochs") else ()))


def expected_types(table: str) -> dict[str, pa.DataType]:
    """The fixed type of each core (and, for trials and epochs, parameter) column of ``table``."""
    if table == "predictions":
        return {f.name: f.type for f in (*PREDICTION_TRIAL, *PREDICTION_SAMPLE)}
    core = TRIAL_CORE if table == "trials" else EPOCH_CORE
    return {f.name: f.type for f in (*_PARAMS, *core)}


def _family(kind: pa.DataType) -> str:
    """Types one column may take in different parts and still be read as one (null goes with any)."""
    if pa.types.is_null(kind):
        return "null"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_timestamp(kind):
        return "time"
    return str(kind)


def _all_null(table: pa.Table, name: str) -> bool:
    return table.column(name).null_count == table.num_rows


def column_types(table: str, parts: Mapping[str, pa.Table]) -> dict[str, pa.DataType]:
    """The type every column is read as: the fixed type of a core or parameter column, else the type
    most parts with values in the column give it (numbers before text on a tie)."""
    fixed = expected_types(table)
    votes: dict[str, dict[str, list[pa.DataType]]] = {}
    for part in parts.values():
        for f in part.schema:
            if f.name not in fixed and not _all_null(part, f.name):
                votes.setdefault(f.name, {}).setdefault(_family(f.type), []).append(f.type)
    out = dict(fixed)
    for name, families in votes.items():
        family = max(families, key=lambda k: (len(families[k]), k == "number"))
        kinds = families[family]
        out[name] = max(kinds, key=kinds.count)
    return out


def conform(table: str, part: pa.Table, types: Mapping[str, pa.DataType]) -> pa.Table:
    """``part`` with every column cast to ``types``; ``PartError`` saying which column when it cannot be."""
    names = part.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PartError(f"holds the column {twice[0]!r} twice")
    missing = [n for n in required_columns(table) if n not in names]
    if missing:
        raise PartError(f"lacks the column {missing[0]!r} that keys its rows")
    fields = []
    for f in part.schema:
        want = types.get(f.name, f.type)
        same_family = _family(f.type) == _family(want) or _family(f.type) == "null"
        if not same_family and not _all_null(part, f.name):
            raise PartError(f"holds {f.type} values in the column {f.name!r}, which is {want} in {table}")
        fields.append(pa.field(f.name, want))
    try:
        return part.cast(pa.schema(fields))
    except (pa.ArrowException, ValueError) as err:
        raise PartError(f"its columns cannot be read as {table}'s types ({str(err)[:200]})") from None
