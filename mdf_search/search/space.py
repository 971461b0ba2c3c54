"""Search-space files: YAML → a typed, validated ``SearchSpec`` (every problem reported at once).

A study is one YAML file. Every shipped file opens with the command that runs it. Following the tuning
playbook, each parameter has exactly one role in a study: **scientific** (what the study measures; every
combination the design picks is an *arm*), **nuisance** (tuned or held at a default so that arms are
compared fairly) or **fixed** (everything else)::

    # mdf-search sweep search_spaces/smoke.yaml
    experiment: smoke                  # names the run directory and the Optuna study: [A-Za-z0-9_.-]
    description: baseline MLLM vs multi-depth fusion on the tiny preset
    metric: val/macro_f1               # any reported metric key
    mode: max                          # max | min
    design: grid                       # grid | ofat | tpe | qmc | gp
    seeds: [0, 1, 2]                   # every arm runs with these seeds (not a flat key elsewhere)
    budget: {trials: 12, epochs: 3, max_wall_time: 30m, max_gpu_hours: 0, trials_per_arm: 4}
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: none} (default)
    baseline: {fusion.levels: none}    # the arm reports compare against (must match exactly one arm)
    reference: {fusion.levels: "1234", fusion.injection: parallel}  # ofat only: the point factors vary from
    scientific:
      fusion.levels: [none, "4", "34", "1234"]
      fusion.injection: {choices: [concat, parallel], when: {fusion.levels: {not: none}}, otherwise: none}
    nuisance:
      optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true, default: 1.0e-3}
      freeze.lora_rank: {choices: [4, 8, 16], when: {freeze: lora}, default: 8}
    fixed:
      model.preset: tiny
    resources: {workers: 2, concurrent_trials: 1, gpus_per_worker: 0, gpu_mem_gb: 80}
    study: {storage: null}             # null = SQLite under the experiment directory; or a SQLAlchemy URL

**Keys.** Every key under ``scientific``/``nuisance``/``fixed`` (and in ``baseline``, ``reference`` and
``when``) is a flat key of ``TrialConfig`` (``mdf_search.config.flat_fields()``), except ``seed`` (use
``seeds``), ``optim.epochs`` (use ``budget.epochs``) and ``run.workers`` (use ``resources.workers``):
one place for each. A key has one role: it may not appear in two sections.

**Values.** A list (categorical), ``{choices: [...]}``, or a numeric range ``{low, high, log?, step?,
int?}``. Categorical values must be scalars (str/int/float/bool/null): Optuna's persistent storage
holds only scalars, so a structured option is *named* (``film.placement: enc+bottleneck``) and
``TrialConfig`` maps the name. Every value is checked against the key's own parser at load time.
Scientific parameters must be categorical (arms are compared value by value). ``default`` (nuisance)
is the value grid/ofat designs hold it at; without one a categorical uses its first choice and a range
its midpoint (geometric mean when ``log``), rounded to ``step``/``int``.

**Conditions.** ``when: {key: value}``, ``{key: {not: value}}`` or ``{key: {in: [...]}}`` (several keys:
all must hold) names a fixed key or a key listed *before it* (scientific before nuisance; a scientific
condition may not name a nuisance key). Values compare after the key's parser (``"43" == 34`` for
``fusion.levels``); a key that is itself inactive matches no value. When the condition fails the key
takes ``otherwise`` if given, else it is omitted and ``TrialConfig``'s default applies. Following the
playbook a conditional parameter is a *distinct* parameter: ``freeze.lora_rank`` exists only in trials
with ``freeze=lora``, and its Optuna name carries the condition (``freeze.lora_rank[freeze=lora]``).

**Budget.** ``epochs`` (→ ``optim.epochs``), ``trials`` (required for tpe/qmc/gp; a cap for
grid/ofat), ``trials_per_arm`` (tpe/qmc/gp; default ``trials // arms``), ``max_wall_time`` (``"90s"``,
``"30m"``, ``"2h"`` or seconds; null = none), ``max_gpu_hours`` (0/null = no cap).

``load_spec`` checks the schema and everything that needs no arms; ``validate_spec`` builds the arms
and checks each one's trial through ``TrialConfig.from_flat``, the design size and the memory plan.
Both speak ``<file>: <key path>: <what is wrong>; <fix>``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mdf_search.config import ConfigError, flat_fields
from mdf_search.yamlio import read_yaml_mapping

Scalar = str | int | float | bool | None
SCALARS = (str, int, float, bool, type(None))
DESIGNS = ("grid", "ofat", "tpe", "qmc", "gp")
SAMPLER_DESIGNS = ("tpe", "qmc", "gp")
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


# ---------------------------------------------------------------------------------------------------
# The schema (pydantic, frozen, unknown keys forbidden). Parameter blocks are parsed separately below so
# that their errors can name the flat key and use its parser.
# ---------------------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(value: Any) -> float | None:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` or a number of seconds → seconds (None stays None)."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        if value is not None and value < 0:
            raise ValueError(f"must be >= 0 seconds, but got {value!r}")
        return None if value is None else float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", str(value))
    if not match or isinstance(value, bool):
        raise ValueError(f"must be a duration like '90s', '30m', '2h' or seconds, but got {value!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


class Budget(_Model):
    trials: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=3, ge=1)
    max_wall_time: float | None = None
    max_gpu_hours: float | None = Field(default=None, ge=0)
    trials_per_arm: int | None = Field(default=None, ge=1)

    _duration = field_validator("max_wall_time", mode="before")(parse_duration)

    @property
    def max_wall_time_s(self) -> float | None:
        return self.max_wall_time


class Scheduler(_Model):
    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class Resources(_Model):
    workers: int = Field(default=2, ge=1)
    concurrent_trials: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpu_mem_gb: float = Field(default=80.0, gt=0)


class StudyStorage(_Model):
    storage: str | None = None


class _File(_Model):
    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]
    design: Literal["grid", "ofat", "tpe", "qmc", "gp"]
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    budget: Budget = Budget()
    scheduler: Scheduler = Scheduler()
    baseline: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    scientific: dict[str, Any]
    nuisance: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Resources()
    study: StudyStorage = StudyStorage()


class _CategoricalIn(_Model):
    choices: list[Any] = Field(min_length=1)
    when: dict[str, Any] | None = None
    otherwise: Any = None
    default: Any = None


class _RangeIn(_Model):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    integer: bool = Field(default=False, alias="int")
    when: dict[str, Any] | None = None
    otherwise: Any = None
    default: float | None = None


# ---------------------------------------------------------------------------------------------------
# The typed spec.
# ---------------------------------------------------------------------------------------------------
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

    @property
    def is_sampler(self) -> bool:
        return self.design in SAMPLER_DESIGNS


# ---------------------------------------------------------------------------------------------------
# Helpers shared with designs.py.
# ---------------------------------------------------------------------------------------------------
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


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    close = close or [o for o in options if o and word.lower().startswith(o.lower())][:1]
    return f"did you mean {close[0]!r}?" if close else f"choose among {', '.join(sorted(options))}"


def _on_grid(ratio: float) -> bool:
    return abs(ratio - round(ratio)) < 1e-9 * max(1.0, abs(ratio))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------------
# Pydantic errors → "<key path>: <what>; <fix>".
# ---------------------------------------------------------------------------------------------------
def _allowed_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str] | None:
    cls: Any = model
    for part in parent:
        info = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(info, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return [f.alias or name for name, f in cls.model_fields.items()]


_TYPES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping of keys to values",
    "model": "a mapping of keys to values",
}


def _explain(err: Any, model: type[BaseModel]) -> str:
    kind, loc, got = err["type"], err["loc"], err.get("input")
    ctx = err.get("ctx") or {}
    last = str(loc[-1]) if loc else ""
    if kind == "missing":
        return f"is required; add `{last}: ...`"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(loc[:-1])) or []
        return f"unknown key; {_suggest(last, allowed)}"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {', '.join(options)}, but got {_short(got)}; {_suggest(str(got), options)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op, bound = {
            "greater_than_equal": (">=", ctx.get("ge")),
            "greater_than": (">", ctx.get("gt")),
            "less_than_equal": ("<=", ctx.get("le")),
            "less_than": ("<", ctx.get("lt")),
        }[kind]
        what = "an integer" if isinstance(bound, int) and isinstance(got, int) else "a number"
        return f"must be {what} {op} {bound}, but got {_short(got)}"
    if kind == "string_pattern_mismatch":
        return f"must be letters, digits, '_', '.', '-' (it names a directory), but got {_short(got)}"
    if kind == "too_short":
        return f"must not be empty, but got {_short(got)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    for prefix, text in _TYPES.items():
        if kind.startswith(prefix):
            return f"must be {text}, but got {_short(got)}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, but got {_short(got)}"


def _pydantic_problems(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        out.append(f"{prefix}{'.' if prefix and path else ''}{path}: {_explain(e, model)}")
    return out


# ---------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------
def _check_key(key: str, where: str, problems: list[str]) -> bool:
    known = flat_fields()
    if key in RESERVED:
        problems.append(f"{where}.{key}: is not set here; {RESERVED[key]}")
        return False
    if key not in known:
        problems.append(f"{where}.{key}: unknown flat key; {_suggest(key, list(known))}")
        return False
    return True


def _check_value(key: str, value: Any, where: str, problems: list[str]) -> None:
    """Scalar, and accepted by the key's own parser."""
    if not isinstance(value, SCALARS):
        problems.append(
            f"{where}: must be a scalar (str/int/float/bool/null), but got {_short(value)}; Optuna's "
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
                    f"{_short(test)}"
                )
                continue
            op, arg = next(iter(test.items()))
            values = arg if op == "in" else [arg]
            if op == "in" and not isinstance(arg, list):
                problems.append(f"{where}.when.{key}.in: must be a list of values, but got {_short(arg)}")
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
            f"{_short(raw)}; a single value belongs under fixed:"
        )
        return None
    is_range = "choices" not in raw and ("low" in raw or "high" in raw)
    model: type[BaseModel] = _RangeIn if is_range else _CategoricalIn
    try:
        spec: Any = model.model_validate(raw)
    except ValidationError as err:
        problems.extend(_pydantic_problems(err, model, where))
        return None
    before = len(problems)
    when = _parse_when(spec.when or {}, where, problems)
    if "otherwise" in spec.model_fields_set:
        if not when:
            problems.append(f"{where}.otherwise: is used only with `when`; add a condition or remove it")
        else:
            _check_value(key, spec.otherwise, f"{where}.otherwise", problems)
    has_otherwise = "otherwise" in spec.model_fields_set
    if not is_range:
        seen: dict[Any, Any] = {}
        for i, value in enumerate(spec.choices):
            _check_value(key, value, f"{where}.choices[{i}]", problems)
            if isinstance(value, SCALARS):
                canon = canonical(key, value)
                if canon in seen:
                    problems.append(
                        f"{where}.choices[{i}]: duplicate value {value!r} (same as {seen[canon]!r}); remove one"
                    )
                seen.setdefault(canon, value)
        if spec.default is not None and canonical(key, spec.default) not in seen:
            problems.append(f"{where}.default: {spec.default!r} is not among the choices {spec.choices}")
        if len(problems) > before:
            return None
        return Param(
            key,
            choices=tuple(spec.choices),
            when=when,
            has_otherwise=has_otherwise,
            otherwise=spec.otherwise,
            default=spec.default,
        )
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
    if len(problems) > before:
        return None
    return Param(
        key,
        when=when,
        has_otherwise=has_otherwise,
        low=spec.low,
        high=spec.high,
        log=spec.log,
        step=spec.step,
        integer=spec.integer,
        otherwise=spec.otherwise,
        default=spec.default,
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
                    f"{param.key!r}; declare {cond.key!r} under fixed:, or above it"
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
                f"({_suggest(key, list(scientific))})"
            )
            continue
        choices = scientific[key].choices or ()
        allowed = [*choices, *([scientific[key].otherwise] if scientific[key].has_otherwise else [])]
        if canonical(key, value) not in [canonical(key, c) for c in allowed]:
            problems.append(
                f"{name}.{key}: {value!r} is not among the values {list(choices)}; use one of them"
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
        top = _File.model_validate(raw)
    except ValidationError as err:
        problems.extend(_pydantic_problems(err, _File))
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
    if len(set(top.seeds)) != len(top.seeds):
        problems.append(f"seeds: duplicate seeds in {top.seeds}; list each once")
    for i, seed in enumerate(top.seeds):
        if seed < 0:
            problems.append(f"seeds[{i}]: must be an integer >= 0, but got {seed}")
    baseline = _check_assignment("baseline", top.baseline or {}, sections["scientific"], problems)
    reference = _check_assignment("reference", top.reference or {}, sections["scientific"], problems)
    if top.design == "ofat" and top.reference is None:
        problems.append(
            "reference: design ofat varies each factor from a reference configuration; add "
            "`reference: {key: value, ...}` with a value for every scientific key"
        )
    if top.design == "ofat" and top.reference is not None:
        missing = [k for k, p in sections["scientific"].items() if k not in reference and not p.when]
        if missing:
            problems.append(f"reference: gives no value for {missing}; add one for every scientific key")
    if top.design != "ofat" and top.reference is not None:
        problems.append(f"reference: is used only by design ofat (design is {top.design}); remove it")
    if top.design in SAMPLER_DESIGNS and top.budget.trials is None:
        problems.append(f"budget.trials: design {top.design} samples until a budget; set budget.trials")
    if top.metric.startswith("test/"):
        problems.append(
            f"metric: {top.metric}: the study selects on validation only (the best epoch, the trial, the "
            f"sampler's next point and the scheduler's stops all follow it); use val/{top.metric[5:]}"
        )
    if top.scheduler.type == "asha" and top.scheduler.grace_period > top.budget.epochs:
        problems.append(
            f"scheduler.grace_period: {top.scheduler.grace_period} epochs exceeds budget.epochs="
            f"{top.budget.epochs}; lower it or raise budget.epochs"
        )
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
    )


def validate_spec(spec: SearchSpec) -> list[str]:
    """Problems beyond the schema: every arm's trial through ``TrialConfig.from_flat``, the baseline,
    the design size against ``budget.trials``, and the memory plan when GPUs are declared."""
    from mdf_search.search.designs import check_design

    return check_design(spec)[0]


def validate_files(paths: list[str] | list[Path]) -> tuple[int, list[str]]:
    """Exit code (0 ok, 2 any problem) and report lines: a summary per file, then its problems and notes,
    then what its design can detect (``report.power``) with a warning when a test cannot reach α."""
    from mdf_search.report.power import spec_power
    from mdf_search.search.designs import check_design

    code, lines = 0, []
    for path in paths:
        try:
            spec = load_spec(path)
        except SpecError as err:
            code = 2
            lines.append(f"{path}: INVALID ({len(err.problems)} problem(s))")
            lines.extend(f"  {p}" for p in err.problems)
            continue
        problems, notes, summary = check_design(spec)
        lines.append(
            f"{path}: {'ok' if not problems else f'INVALID ({len(problems)} problem(s))'}: {summary}"
        )
        lines.extend(f"  {p}" for p in problems)
        lines.extend(f"  note: {n}" for n in notes)
        if not problems:
            power = spec_power(spec)
            head, *tests = power.describe()
            lines.append(f"  power: {head}")
            lines.extend(f"    {t}" for t in tests)
            lines.extend(f"  warning: {w}" for w in power.warnings())
        code = max(code, 2 if problems else 0)
    return code, lines
