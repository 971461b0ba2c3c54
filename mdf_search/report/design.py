"""The study an experiment ran, as its sweep recorded it: ``<experiment>/arms.json``.

The sweep resolves its spec once (``search.record.design_record``) and writes the result next to the
results, so a report shows the arms that run had, whatever today's design code would build, and the
report package runs no search code. The file is a JSON object (``format`` 1):

- ``experiment``, ``description``, ``design`` (grid | ofat | tpe | qmc | gp), ``metric``, ``mode``
  (max | min), ``seeds`` (list of int), ``trials`` (how many trials the sweep runs);
- ``budget``: ``epochs``, ``trials``, ``trials_per_arm``, ``max_wall_time_s``, ``max_gpu_hours`` (null
  where the spec sets none);
- ``storage``: the Optuna study's storage URL (null: ``optuna.db`` in the experiment directory);
- ``scientific`` and ``nuisance``: flat key → domain, in file order: ``{"choices": [...], "default": v}``
  or ``{"low", "high", "log", "step", "integer", "default"}``, where ``default`` is the value grid/ofat
  designs hold the parameter at;
- ``arms``: in design order, each ``{"id", "order", "baseline", "params"}``: ``order`` is its position
  (0 first), ``baseline`` whether the spec's ``baseline`` matches it, ``params`` its flat scientific
  values (an inactive one at its ``otherwise``), as the trials table holds them.

An experiment written before the sweep recorded arms.json is read by :func:`reconstruct` from spec.yaml
as plain YAML data and from the trials table: what cannot be known that way stays unknown, and
``load_spec_record`` says so in its notes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mdf_search.config import ConfigError
from mdf_search.data import storage
from mdf_search.metrics import DEFAULT_METRIC, DEFAULT_MODE
from mdf_search.yamlio import read_yaml_mapping

ARMS_FILE = "arms.json"
SPEC_FILE = "spec.yaml"
FORMAT = 1


class DesignError(ValueError):
    """arms.json is not a design record this reader understands."""


@dataclass(frozen=True)
class Domain:
    """The values one scientific or nuisance parameter may take: categorical ``choices`` or a numeric
    range. Neither (a reconstructed entry that could not be read) means unknown."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: float = math.nan
    high: float = math.nan
    log: bool = False
    step: float | None = None
    integer: bool = False
    default: Any = None

    @property
    def is_range(self) -> bool:
        return self.choices is None and math.isfinite(self.low) and math.isfinite(self.high)


@dataclass(frozen=True)
class RecordedArm:
    id: str
    order: int
    baseline: bool
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedBudget:
    epochs: int | None = None
    trials: int | None = None
    trials_per_arm: int | None = None
    max_wall_time_s: float | None = None
    max_gpu_hours: float | None = None
    price_per_gpu_hour: float | None = None  # money per GPU-hour, for the cost column and table


@dataclass(frozen=True)
class RecordedSpec:
    """The study as recorded (arms.json), or as far as an older experiment's files tell
    (``reconstructed``: read from spec.yaml and the trials table)."""

    experiment: str
    description: str
    design: str
    metric: str
    mode: str
    seeds: tuple[int, ...]
    trials: int | None
    budget: RecordedBudget
    storage: str | None
    scientific: dict[str, Domain]
    nuisance: dict[str, Domain]
    arms: tuple[RecordedArm, ...]
    reconstructed: bool = False

    def arm_ids(self) -> list[str]:
        """Arm ids in design order."""
        return [a.id for a in self.arms]

    def baseline_ids(self) -> list[str]:
        return [a.id for a in self.arms if a.baseline]


def same_value(a: Any, b: Any) -> bool:
    """Equal as a results table and a spec spell them: numbers by value (``1 == 1.0``), anything else by
    its text (``"4" == 4``: a string column holds a YAML integer choice as text)."""
    numeric = (int, float)
    if (
        isinstance(a, numeric)
        and isinstance(b, numeric)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return float(a) == float(b)
    if a is None or b is None:
        return a is b
    return str(a) == str(b)


# -- arms.json ----------------------------------------------------------------------------------------
def read_record(experiment_dir: str | Path) -> RecordedSpec:
    """Read ``<dir>/arms.json`` (``dir`` a local path or a URI: ``data.storage``); ``FileNotFoundError``
    when absent, ``DesignError`` when unreadable."""
    try:
        data = json.loads(storage.read_text(str(experiment_dir), ARMS_FILE))
    except ValueError as err:
        raise DesignError(f"{ARMS_FILE}: not JSON ({err})") from None
    return parse_record(data)


def parse_record(data: Any) -> RecordedSpec:
    if not isinstance(data, dict):
        raise DesignError(f"{ARMS_FILE}: must hold a JSON object, but got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise DesignError(f"{ARMS_FILE}: format must be {FORMAT}, but got {data.get('format')!r}")
    try:
        budget = data["budget"]
        arms = [
            RecordedArm(str(a["id"]), int(a["order"]), bool(a["baseline"]), dict(a["params"]))
            for a in data["arms"]
        ]
        return RecordedSpec(
            experiment=str(data["experiment"]),
            description=str(data["description"]),
            design=str(data["design"]),
            metric=str(data["metric"]),
            mode=str(data["mode"]),
            seeds=tuple(int(s) for s in data["seeds"]),
            trials=None if data["trials"] is None else int(data["trials"]),
            budget=RecordedBudget(
                _int(budget["epochs"]),
                _int(budget["trials"]),
                _int(budget["trials_per_arm"]),
                _float(budget["max_wall_time_s"]),
                _float(budget["max_gpu_hours"]),
                _float(budget.get("price_per_gpu_hour")),  # absent from arms.json written before it
            ),
            storage=None if data["storage"] is None else str(data["storage"]),
            scientific={k: _domain(k, v) for k, v in data["scientific"].items()},
            nuisance={k: _domain(k, v) for k, v in data["nuisance"].items()},
            arms=tuple(sorted(arms, key=lambda a: a.order)),
        )
    except KeyError as err:
        raise DesignError(f"{ARMS_FILE}: missing key {err}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise DesignError(f"{ARMS_FILE}: {err}") from None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _domain(key: str, raw: Mapping[str, Any]) -> Domain:
    if "choices" in raw:
        return Domain(key, tuple(raw["choices"]), default=raw.get("default"))
    return Domain(
        key,
        low=float(raw["low"]),
        high=float(raw["high"]),
        log=bool(raw.get("log", False)),
        step=_float(raw.get("step")),
        integer=bool(raw.get("integer", False)),
        default=raw.get("default"),
    )


# -- experiments that predate arms.json ----------------------------------------------------------------
def reconstruct(spec: Mapping[str, Any], trials: pl.DataFrame) -> RecordedSpec:
    """What spec.yaml (plain YAML data, no design code) and the trials table tell of an experiment
    without arms.json: the factors and nuisance keys with their domains as written, the arms present
    in the trials table (the baseline, matched on its first trial's values, first; then by the position
    of each factor's value among its choices), and no trial total. Budget values written as durations
    (``15m``) stay unknown."""
    scientific = {str(k): _plain_domain(str(k), v) for k, v in _mapping(spec.get("scientific")).items()}
    nuisance = {str(k): _plain_domain(str(k), v) for k, v in _mapping(spec.get("nuisance")).items()}
    first = _first_rows(trials, list(scientific))
    baseline = _mapping(spec.get("baseline"))
    matched = [
        arm
        for arm, row in first.items()
        if baseline and all(k in row and same_value(row[k], v) for k, v in baseline.items())
    ]

    def position(arm: str) -> tuple[Any, ...]:
        row = first[arm]
        ranks = []
        for key, domain in scientific.items():
            choices = domain.choices or ()
            hits = [i for i, c in enumerate(choices) if same_value(row.get(key), c)]
            ranks.append(hits[0] if hits else len(choices))
        return (arm not in matched or len(matched) != 1, *ranks, arm)

    ordered = sorted(first, key=position)
    arms = tuple(
        RecordedArm(arm, i, len(matched) == 1 and arm in matched, dict(first[arm]))
        for i, arm in enumerate(ordered)
    )
    raw_budget = _mapping(spec.get("budget"))
    seeds = spec.get("seeds")
    return RecordedSpec(
        experiment=str(spec.get("experiment") or ""),
        description=str(spec.get("description") or ""),
        design=str(spec.get("design") or "?"),
        metric=str(spec.get("metric") or DEFAULT_METRIC),
        mode=str(spec.get("mode") or DEFAULT_MODE),
        seeds=tuple(s for s in seeds if isinstance(s, int)) if isinstance(seeds, list) else (),
        trials=None,
        budget=RecordedBudget(
            _number(raw_budget.get("epochs"), int),
            _number(raw_budget.get("trials"), int),
            _number(raw_budget.get("trials_per_arm"), int),
            _number(raw_budget.get("max_wall_time"), float),
            _number(raw_budget.get("max_gpu_hours"), float),
            _number(raw_budget.get("price_per_gpu_hour"), float),
        ),
        storage=_mapping(spec.get("study")).get("storage"),
        scientific=scientific,
        nuisance=nuisance,
        arms=arms,
        reconstructed=True,
    )


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    return kind(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _plain_domain(key: str, raw: Any) -> Domain:
    """A parameter block as written: a list or ``{choices: [...]}``, or a ``{low, high}`` range."""
    if isinstance(raw, list):
        return Domain(key, tuple(raw), default=raw[0] if raw else None)
    block = _mapping(raw)
    if isinstance(block.get("choices"), list):
        choices = tuple(block["choices"])
        return Domain(key, choices, default=block.get("default", choices[0] if choices else None))
    low, high = _number(block.get("low"), float), _number(block.get("high"), float)
    if low is None or high is None:
        return Domain(key)
    return Domain(
        key,
        low=low,
        high=high,
        log=bool(block.get("log", False)),
        step=_number(block.get("step"), float),
        integer=bool(block.get("int", False)),
        default=block.get("default"),
    )


def _first_rows(trials: pl.DataFrame, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each arm's scientific values, from its first trial row (arms in table order)."""
    if "arm" not in trials.columns:
        return {}
    present = [k for k in keys if k in trials.columns]
    rows = trials.select(["arm", *present]).filter(pl.col("arm").is_not_null()).unique("arm", keep="first")
    return {str(r["arm"]): {k: r[k] for k in present} for r in rows.iter_rows(named=True)}


# -- either -------------------------------------------------------------------------------------------
def load_spec_record(
    experiment_dir: str | Path, trials: pl.DataFrame
) -> tuple[RecordedSpec | None, list[str]]:
    """The experiment's recorded spec and notes for the report: arms.json when it loads; else a
    reconstruction from spec.yaml and the trials table; None when neither file is there.
    ``experiment_dir``: a local path or a URI (``data.storage``)."""
    root = str(experiment_dir)
    notes: list[str] = []
    try:
        return read_record(root), notes
    except FileNotFoundError:
        notes.append(
            f"no {ARMS_FILE} (sweeps record their resolved design there; this experiment predates it): "
            "arms, factors and baseline are reconstructed from spec.yaml and the trials table"
        )
    except DesignError as err:
        notes.append(
            f"{err}: arms, factors and baseline are reconstructed from spec.yaml and the trials table"
        )
    if not storage.is_file(root, SPEC_FILE):
        notes[-1] = (
            f"no {ARMS_FILE} and no spec.yaml: metric, factors and baseline unknown; ranking by val/macro_f1 (max)"
        )
        return None, notes
    try:
        with storage.local_copy(root, SPEC_FILE) as spec_file:
            data = read_yaml_mapping(spec_file)
    except ConfigError as err:
        notes.append(
            f"spec.yaml does not load ({'; '.join(err.problems)}): metric, factors and baseline unknown"
        )
        return None, notes
    return reconstruct(data, trials), notes
