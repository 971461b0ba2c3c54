"""The typed search space (``SearchSpec``) and ``load_spec``: a YAML file → checked, typed spec.

The file format (roles, keys, values, conditions, budget) is documented in ``spec_schema``, which checks
the file's shape. ``load_spec`` parses the parameter blocks key by key with each flat key's own parser
(``mdf_search.config.flat_fields()``) and checks everything that needs no arms; every problem at once, as
one ``SpecError`` whose lines read ``<file>: <key path>: <what is wrong>; <fix>``. What needs the arms
(each arm's ``TrialConfig``, the design size, the memory plan) is checked in ``validate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from mdf_search.config import ConfigError, flat_fields
from mdf_search.fields import short_repr
from mdf_search.search.spec_errors import pydantic_problems, suggest_name
from mdf_search.search.spec_schema import (
    SAMPLER_DESIGNS,
    Budget,
    CategoricalIn,
    RangeIn,
    Resources,
    Scheduler,
    SpecFile,
    StudyStorage,
    Tracking,
)
from mdf_search.yamlio import read_yaml_mapping

Scalar = str | int | float | bool | None
SCALARS = (str, int, float, bool, type(None))
# Flat keys with one home elsewhere in the file: key → the fix.
RESERVED = {
    "seed": "list seeds in the top-level `seeds: [0, 1, 2]`",
    "optim.epochs": "set `budget: {epochs: N}`",
    "run.workers": "set `resources: {workers: N}`",
}


class SpecError(ValueError):
    """Every problem of a search-space file, each as ``<file>: <key path>: <what is wrong>; <fix>``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Condition:
    """``key == value`` (op ``eq``), ``key != value`` (``not``) or ``key in values`` (``in``)."""

    key: str
    op: Literal["eq", "not", "in"]
    values: tuple[Scalar, ...]

    def holds(self, context: Mapping[str, Any]) -> bool:
        if self.key not in context:  # an inactive key matches no value
            return self.op == "not"
        actual = canonical(self.key, context[self.key])
        hit = any(canonical(self.key, v) == actual for v in self.values)
        return not hit if self.op == "not" else hit

    def label(self) -> str:
        text = "|".join(format_value(v) for v in self.values)
        return {"eq": f"{self.key}={text}", "not": f"{self.key}!={text}", "in": f"{self.key}~{text}"}[self.op]


@dataclass(frozen=True)
class Param:
    """One scientific or nuisance parameter: categorical (``choices``) or a numeric range."""

    key: str
    choices: tuple[Scalar, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False
    when: tuple[Condition, ...] = ()
    has_otherwise: bool = False
    otherwise: Scalar = None
    default: Scalar = None

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def active(self, context: Mapping[str, Any]) -> bool:
        return all(c.holds(context) for c in self.when)

    @property
    def optuna_name(self) -> str:
        """A distinct name per conditional parameter (no '/': Ray unflattens on it)."""
        if not self.when:
            return self.key
        return f"{self.key}[{','.join(c.label() for c in self.when)}]".replace("/", "_")

    def default_value(self) -> Scalar:
        """``default``; else the first choice, or the range's midpoint (geometric mean when log)."""
        if self.default is not None:
            return self.default
        if self.choices is not None:
            return self.choices[0]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step:
            mid = self.low + round((mid - self.low) / self.step) * self.step
        return round(mid) if self.integer else mid


@dataclass(frozen=True)
class SearchSpec:
    path: str
    experiment: str
    description: str
    metric: str
    mode: str
    design: str
    seeds: tuple[int, ...]
    budget: Budget
    scheduler: Scheduler
    resources: Resources
    study: StudyStorage
    scientific: dict[str, Param]
    nuisance: dict[str, Param] = field(default_factory=dict)
    fixed: dict[str, Scalar] = field(default_factory=dict)
    baseline: dict[str, Scalar] | None = None
    reference: dict[str, Scalar] | None = None
    tracking: Tracking = field(default_factory=Tracking)

    @property
    def is_sampler(self) -> bool:
        return self.design in SAMPLER_DESIGNS


def canonical(key: str, value: Any) -> Any:
    """The value as ``TrialConfig`` reads it (so ``"43"`` equals ``34`` for fusion.levels); raw if unparsable."""
    known = flat_fields()
    if key in known:
        try:
            return known[key][1].metadata["parse"](value)
        except ValueError:
            pass
    return value


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _on_grid(ratio: float) -> bool:
    return abs(ratio - round(ratio)) < 1e-9 * max(1.0, abs(ratio))


# ---------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------
def _check_key(key: str, where: str, problems: list[str]) -> bool:
    known = flat_fields()
    if len(key) > 80:
        key = key[:77] + "..."  # shown cut: no flat key is that long
    if key in RESERVED:
        problems.append(f"{where}.{key}: is not set here; {RESERVED[key]}")
        return False
    if key not in known:
        problems.append(f"{where}.{key}: unknown flat key; {suggest_name(key, list(known))}")
        return False
    return True


def _check_value(key: str, value: Any, where: str, problems: list[str]) -> None:
    """Scalar, and accepted by the key's own parser."""
    if not isinstance(value, SCALARS):
        problems.append(
            f"{where}: must be a scalar (str/int/float/bool/null), but got {short_repr(value)}; Optuna's "
            "persistent storage holds only scalars: name the option (e.g. 'enc+bottleneck')"
        )
        return
    try:
        flat_fields()[key][1].metadata["parse"](value)
    except ValueError as err:
        problems.append(f"{where}: {err}")


def _parse_when(raw: dict[str, Any], where: str, problems: list[str]) -> tuple[Condition, ...]:
    conditions = []
    for key, test in raw.items():
        if not _check_key(key, f"{where}.when", problems):
            continue
        if isinstance(test, dict):
            if len(test) != 1 or next(iter(test)) not in ("not", "in"):
                problems.append(
                    f"{where}.when.{key}: must be a value, {{not: value}} or {{in: [values]}}, but got "
                    f"{short_repr(test)}"
                )
                continue
            op, arg = next(iter(test.items()))
            values = arg if op == "in" else [arg]
            if op == "in" and not isinstance(arg, list):
                problems.append(f"{where}.when.{key}.in: must be a list of values, but got {short_repr(arg)}")
                continue
            conditions.append(Condition(key, op, tuple(values)))
        else:
            conditions.append(Condition(key, "eq", (test,)))
    return tuple(conditions)


def _parse_param(section: str, key: str, raw: Any, problems: list[str]) -> Param | None:
    where = f"{section}.{key}"
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        problems.append(
            f"{where}: must be a list of values, {{choices: [...]}} or a range {{low: .., high: ..}}, but got "
            f"{short_repr(raw)}; a single value belongs under fixed:"
        )
        return None
    is_range = "choices" not in raw and ("low" in raw or "high" in raw)
    model: type[BaseModel] = RangeIn if is_range else CategoricalIn
    try:
        spec: Any = model.model_validate(raw)
    except ValidationError as err:
        problems.extend(pydantic_problems(err, model, where))
        return None
    before = len(problems)
    when = _parse_when(spec.when or {}, where, problems)
    has_otherwise = "otherwise" in spec.model_fields_set
    if has_otherwise and not when:
        problems.append(f"{where}.otherwise: is used only with `when`; add a condition or remove it")
    elif has_otherwise:
        _check_value(key, spec.otherwise, f"{where}.otherwise", problems)
    if is_range:
        _check_range(section, key, spec, where, problems)
    else:
        _check_choices(key, spec, where, problems)
    if len(problems) > before:
        return None
    common: dict[str, Any] = {
        "when": when,
        "has_otherwise": has_otherwise,
        "otherwise": spec.otherwise,
        "default": spec.default,
    }
    if not is_range:
        return Param(key, choices=tuple(spec.choices), **common)
    bounds = {"low": spec.low, "high": spec.high, "log": spec.log, "step": spec.step, "integer": spec.integer}
    return Param(key, **bounds, **common)


def _check_choices(key: str, spec: CategoricalIn, where: str, problems: list[str]) -> None:
    seen: dict[Any, Any] = {}
    for i, value in enumerate(spec.choices):
        _check_value(key, value, f"{where}.choices[{i}]", problems)
        if isinstance(value, SCALARS):
            canon = canonical(key, value)
            if canon in seen:
                problems.append(
                    f"{where}.choices[{i}]: duplicate value {short_repr(value)} (same as "
                    f"{short_repr(seen[canon])}); remove one"
                )
            seen.setdefault(canon, value)
    if spec.default is not None and canonical(key, spec.default) not in seen:
        problems.append(
            f"{where}.default: {short_repr(spec.default)} is not among the choices {short_repr(spec.choices)}"
        )


def _check_range(section: str, key: str, spec: RangeIn, where: str, problems: list[str]) -> None:
    if section == "scientific":
        problems.append(
            f"{where}: scientific parameters are compared value by value; list the values (e.g. "
            f"[{spec.low:g}, {spec.high:g}]) or make it a nuisance parameter"
        )
    if spec.low > spec.high:
        problems.append(f"{where}: `low <= high` must hold, but got (low={spec.low:g}, high={spec.high:g})")
    if spec.log and spec.low <= 0:
        problems.append(f"{where}.low: a log range needs low > 0, but got {spec.low:g}")
    if spec.log and spec.step is not None:
        problems.append(f"{where}.step: Optuna cannot combine log with step; drop one")
    if spec.step and spec.high > spec.low and not _on_grid((spec.high - spec.low) / spec.step):
        problems.append(
            f"{where}.step: high - low must be a multiple of step, but got (low={spec.low:g}, "
            f"high={spec.high:g}, step={spec.step:g}); Optuna would silently lower high"
        )
    if spec.integer:
        for name in ("low", "high", "step"):
            value = getattr(spec, name)
            if value is not None and float(value) != int(value):
                problems.append(f"{where}.{name}: an int range needs integer bounds, but got {value:g}")
    for name in ("low", "high"):
        value = getattr(spec, name)
        _check_value(
            key, int(value) if spec.integer and value == int(value) else value, f"{where}.{name}", problems
        )
    if spec.default is not None and not spec.low <= spec.default <= spec.high:
        problems.append(
            f"{where}.default: must lie in [{spec.low:g}, {spec.high:g}], but got {spec.default:g}"
        )


def _check_order(spec_keys: list[tuple[str, Param]], fixed: Mapping[str, Any], problems: list[str]) -> None:
    """A condition names a fixed key or a key listed before it (scientific may not name nuisance)."""
    earlier: set[str] = set()
    for where, param in spec_keys:
        for cond in param.when:
            if cond.key == param.key:
                problems.append(f"{where}.when.{cond.key}: a parameter cannot depend on itself")
            elif cond.key not in fixed and cond.key not in earlier:
                problems.append(
                    f"{where}.when.{cond.key}: names no fixed key and no parameter listed before "
                    f"'{param.key}'; declare '{cond.key}' under fixed:, or above it"
                    + (
                        " (scientific conditions may not name nuisance keys)"
                        if where.startswith("sci")
                        else ""
                    )
                )
        earlier.add(param.key)


def _check_assignment(
    name: str, values: Mapping[str, Any], scientific: Mapping[str, Param], problems: list[str]
) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for key, value in values.items():
        if key not in scientific:
            problems.append(
                f"{name}.{key}: is not a scientific parameter; {name} assigns scientific values "
                f"({suggest_name(key, list(scientific))})"
            )
            continue
        choices = scientific[key].choices or ()
        allowed = [*choices, *([scientific[key].otherwise] if scientific[key].has_otherwise else [])]
        if canonical(key, value) not in [canonical(key, c) for c in allowed]:
            problems.append(
                f"{name}.{key}: {short_repr(value)} is not among the values {short_repr(list(choices), 200)}; "
                "use one of them"
            )
            continue
        out[key] = value
    return out


def load_spec(path: str | Path) -> SearchSpec:
    """Read and check a search-space file; raise one ``SpecError`` listing every problem."""
    src = str(path)
    try:
        raw = read_yaml_mapping(path)
    except ConfigError as err:
        raise SpecError([f"{src}: {p}" for p in err.problems]) from None
    problems: list[str] = []
    try:
        top = SpecFile.model_validate(raw)
    except ValidationError as err:
        problems.extend(pydantic_problems(err, SpecFile))
        raise SpecError([f"{src}: {p}" for p in problems]) from None

    sections: dict[str, dict[str, Param]] = {"scientific": {}, "nuisance": {}}
    seen_in: dict[str, str] = {}
    ordered: list[tuple[str, Param]] = []
    if not top.scientific:
        problems.append(
            "scientific: must name at least one parameter; for nuisance-only tuning name the architecture "
            'under study as a one-value scientific parameter (e.g. fusion.levels: ["1234"])'
        )
    for section in ("scientific", "nuisance", "fixed"):
        for key, value in getattr(top, section).items():
            if not _check_key(key, section, problems):
                continue
            if key in seen_in:
                problems.append(
                    f"{section}.{key}: also under {seen_in[key]}; a parameter has one role per study"
                )
                continue
            seen_in[key] = section
            if section == "fixed":
                _check_value(key, value, f"fixed.{key}", problems)
                continue
            param = _parse_param(section, key, value, problems)
            if param is not None:
                sections[section][key] = param
                ordered.append((f"{section}.{key}", param))
    fixed = {k: v for k, v in top.fixed.items() if seen_in.get(k) == "fixed"}
    _check_order(ordered, fixed, problems)
    problems.extend(top.cross_field_problems())
    baseline = _check_assignment("baseline", top.baseline or {}, sections["scientific"], problems)
    reference = _check_assignment("reference", top.reference or {}, sections["scientific"], problems)
    if top.design == "ofat" and top.reference is not None:
        missing = [k for k, p in sections["scientific"].items() if k not in reference and not p.when]
        if missing:
            problems.append(f"reference: gives no value for {missing}; add one for every scientific key")
    if problems:
        raise SpecError([f"{src}: {p}" for p in problems])
    return SearchSpec(
        path=src,
        experiment=top.experiment,
        description=top.description,
        metric=top.metric,
        mode=top.mode,
        design=top.design,
        seeds=tuple(top.seeds),
        budget=top.budget,
        scheduler=top.scheduler,
        resources=top.resources,
        study=top.study,
        scientific=sections["scientific"],
        nuisance=sections["nuisance"],
        fixed=fixed,
        baseline=baseline if top.baseline is not None else None,
        reference=reference if top.reference is not None else None,
        tracking=top.tracking,
    )
