"""The shape of a search-space file (pydantic, frozen, unknown keys forbidden), and its errors in words.

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
    budget: {trials: 12, epochs: 3, max_wall_time: 30m, max_gpu_hours: 0, trials_per_arm: 4,
             price_per_gpu_hour: 2.5}
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
    resources: {workers: 2, concurrent_trials: 1, gpus_per_worker: 0, gpu_mem_gb: 80, max_failures: 1}
    study: {storage: null}             # null = SQLite under the experiment directory; or a SQLAlchemy URL
    tracking: {backend: mlflow, tracking_uri: file:./mlruns}   # or wandb, tensorboard, none (default)

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

**Resources.** ``workers`` per trial, each holding ``cpus_per_worker`` CPUs and ``gpus_per_worker``
GPUs (0: CPU workers, or one whole GPU each when the workers run on GPUs; a fraction lets one-worker
trials share a GPU), ``gpu_mem_gb`` per GPU (the memory planner's capacity), ``concurrent_trials``: a
number, or ``auto``: as many trials as the cluster's CPUs and GPUs hold, and on GPUs, with
``gpus_per_worker: 0``, one-worker trials of the tiny and small presets share a GPU (4 and 2 per GPU;
``search/resources.resolve_resources``). ``max_failures``: how often Tune retries a crashed trial (a lost
node, a killed process; each retry resumes from the trial's checkpoint; -1: without end; default 1).
``placement``: Ray Train's placement strategy of a trial's workers; ``auto`` (default) packs a trial of
two or more GPU workers onto one node (``STRICT_PACK``) and leaves the rest to Ray (``PACK``);
``pack``, ``strict_pack`` or ``spread`` choose one.

**Budget.** ``epochs`` (→ ``optim.epochs``), ``trials`` (required for tpe/qmc/gp; a cap for
grid/ofat), ``trials_per_arm`` (tpe/qmc/gp; default ``trials // arms``), ``max_wall_time`` (``"90s"``,
``"30m"``, ``"2h"`` or seconds; null = none), ``max_gpu_hours`` (0/null = no cap). Both caps count the
experiment across ``resume`` (what its trials table records). ``price_per_gpu_hour`` (optional, in your
currency) turns GPU-hours into money in the leaderboard and the report's cost section.

**Tracking.** ``tracking: {backend: mlflow | wandb | tensorboard | none}`` adds Ray Tune's own logger
callback for that tool: one run per trial with its flat params and per-epoch metrics, grouped by arm
(an ``arm`` tag in MLflow, the W&B group). Options: mlflow ``tracking_uri`` (a server, ``file:`` URI or
path; default MLflow's own) and ``experiment_name`` (default: the experiment); wandb ``project``
(default: the experiment), ``entity`` and ``mode`` (``online``/``offline``; default ``WANDB_MODE``);
tensorboard none (event files under each trial's Tune directory). Tune's incidental CSV/JSON/TensorBoard
files stay off.

**Bounds.** Every number is finite (``.nan`` and ``.inf`` are refused: a nan bound would pass every
check and mean no limit); seeds lie in [0, 2^31-1]; the experiment name is at most 128 characters of
``[A-Za-z0-9_.-]`` (it names a directory and files); resources and budgets have upper bounds past any
real study (``MAX_*`` below); ``study.storage`` must parse as a SQLAlchemy URL of a known backend. The
file itself is read within ``yamlio``'s limits (size, nesting, aliases).

The defaults that are also trial settings (``budget.epochs``, ``resources.workers``, the default seed)
are read from the ``TrialConfig`` dataclasses and ``resources.gpu_mem_gb`` from ``cluster.GPU_MEM_GB``,
so each has one home.

This module checks the shape only: the parameter blocks stay raw mappings, which ``space.load_spec``
parses key by key with each flat key's own parser (the rules above), and ``validate.validate_spec``
checks what needs the arms. Every problem reads ``<file>: <key path>: <what is wrong>; <fix>``;
``spec_errors.pydantic_problems`` words pydantic's errors that way.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mdf_search.cluster import GPU_MEM_GB
from mdf_search.config import MAX_EPOCHS, MAX_SEED, MAX_WORKERS, OptimConfig, RunConfig
from mdf_search.fields import short_repr

SAMPLER_DESIGNS = ("tpe", "qmc", "gp")  # designs that sample nuisance values (the others enumerate arms)
# Bounds beyond any real study: a value past one is a typo or a hostile file, refused by `validate`.
MAX_EXPERIMENT_NAME = 128  # characters; it names a directory (255 bytes a path component) and files
MAX_TRIALS = 1_000_000
MAX_CONCURRENT_TRIALS = 10_000
MAX_CPUS_PER_WORKER = 1024.0
MAX_GPUS_PER_WORKER = 16.0  # the most GPUs one node holds
MAX_GPU_MEM_GB = 1024.0
MAX_GPU_HOURS = 1e7
MAX_WALL_TIME_S = 366 * 86400.0
MAX_PRICE_PER_GPU_HOUR = 1e6
MAX_FAILURES = 1000
TRACKING_BACKENDS = ("mlflow", "wandb", "tensorboard", "none")
# tracking: option → the backends that take it
TRACKING_OPTIONS = {
    "tracking_uri": ("mlflow",),
    "experiment_name": ("mlflow",),
    "project": ("wandb",),
    "entity": ("wandb",),
    "mode": ("wandb",),
}
# tracking: backend → the package its Ray logger callback imports
TRACKING_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}


class _Model(BaseModel):
    # nan and inf are refused in every float (a nan bound compares false with everything, so it would
    # pass every check and mean "no limit")
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def parse_duration(value: Any) -> float | None:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` or a number of seconds → seconds (None stays None)."""
    fix = "write e.g. 2h or 7200, or null for no limit"
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if not isinstance(value, int) or abs(value) < 10**20 else math.inf
    else:
        match = re.fullmatch(r"\s*(\d{1,12}(?:\.\d{0,12})?)\s*([smhd]?)\s*", str(value)[:100])
        if not match or isinstance(value, bool):
            raise ValueError(
                f"must be a duration like '90s', '30m', '2h' or seconds, but got {short_repr(value)}; {fix}"
            )
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite number of seconds, but got {short_repr(value)}; {fix}")
    if seconds < 0:
        raise ValueError(f"must be >= 0 seconds, but got {short_repr(value)}; {fix}")
    if seconds > MAX_WALL_TIME_S:
        raise ValueError(
            f"must be at most 366 days ({MAX_WALL_TIME_S:.0f} s), but got {short_repr(value)}; {fix}"
        )
    return seconds


class Budget(_Model):
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    epochs: int = Field(default=OptimConfig.epochs, ge=1, le=MAX_EPOCHS)
    max_wall_time: float | None = None  # seconds
    max_gpu_hours: float | None = Field(default=None, ge=0, le=MAX_GPU_HOURS)
    trials_per_arm: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    price_per_gpu_hour: float | None = Field(default=None, ge=0, le=MAX_PRICE_PER_GPU_HOUR)

    _duration = field_validator("max_wall_time", mode="before")(parse_duration)


class Scheduler(_Model):
    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(default=1, ge=1, le=MAX_EPOCHS)
    reduction_factor: float = Field(default=2.0, gt=1, le=1000)


def parse_concurrent_trials(value: Any) -> int | str:
    """``auto`` or an integer in [1, MAX_CONCURRENT_TRIALS] (``search/runner.resolve_resources``
    resolves ``auto``)."""
    if value == "auto" or (
        isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONCURRENT_TRIALS
    ):
        return value
    raise ValueError(
        f"must be an integer >= 1 or 'auto' (as many trials as the cluster's CPUs and GPUs hold), and at "
        f"most {MAX_CONCURRENT_TRIALS}, but got {short_repr(value)}"
    )


class Resources(_Model):
    workers: int = Field(default=RunConfig.workers, ge=1, le=MAX_WORKERS)
    concurrent_trials: int | Literal["auto"] = 1
    gpus_per_worker: float = Field(default=0.0, ge=0, le=MAX_GPUS_PER_WORKER)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=MAX_CPUS_PER_WORKER)
    gpu_mem_gb: float = Field(default=GPU_MEM_GB, gt=0, le=MAX_GPU_MEM_GB)
    max_failures: int = Field(default=1, ge=-1, le=MAX_FAILURES)  # Tune's retries of a crashed trial
    placement: Literal["auto", "pack", "strict_pack", "spread"] = "auto"

    _concurrent = field_validator("concurrent_trials", mode="before")(parse_concurrent_trials)


def parse_study_storage(value: Any) -> Any:
    """None, or a SQLAlchemy URL of a database backend SQLAlchemy knows (``sqlite:///...``,
    ``postgresql+psycopg://user@host/db``); what Optuna's RDBStorage will be given."""
    if value is None or not isinstance(value, str):
        return value  # pydantic words a wrong type
    fix = "write e.g. postgresql+psycopg://user@host/db or sqlite:////abs/path/optuna.db, or null"
    from sqlalchemy.engine import make_url  # an Optuna dependency; only when a URL is given
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(value).get_dialect()
    except ArgumentError:
        raise ValueError(f"{short_repr(value)} is not a database URL; {fix}") from None
    except NoSuchModuleError:
        raise ValueError(f"{short_repr(value)}: SQLAlchemy knows no such database backend; {fix}") from None
    return value


class StudyStorage(_Model):
    storage: str | None = None

    _url = field_validator("storage", mode="before")(parse_study_storage)


class Tracking(_Model):
    """``tracking:``: Ray Tune's logger callbacks for one tracking tool (``search/tracking.py``)."""

    backend: Literal["mlflow", "wandb", "tensorboard", "none"] = "none"
    tracking_uri: str | None = Field(default=None, min_length=1)  # mlflow: a server URL, file: or a path
    experiment_name: str | None = Field(default=None, min_length=1)  # mlflow; default: the experiment
    project: str | None = Field(default=None, min_length=1)  # wandb; default: the experiment
    entity: str | None = Field(default=None, min_length=1)  # wandb: the team or user
    mode: Literal["online", "offline"] | None = None  # wandb; default: WANDB_MODE, else online

    def problems(self) -> list[str]:
        """Options the backend does not take, and a backend whose package is not installed."""
        import importlib.util

        out = []
        for option in sorted(self.model_fields_set - {"backend"}):
            takers = TRACKING_OPTIONS[option]
            if self.backend not in takers and getattr(self, option) is not None:
                out.append(
                    f"tracking.{option}: is an option of backend {' or '.join(takers)}, not of "
                    f"{self.backend}; remove it or set `backend: {takers[0]}`"
                )
        package = TRACKING_PACKAGES.get(self.backend)
        if package and importlib.util.find_spec(package) is None:
            out.append(
                f"tracking.backend: {self.backend} needs the {package} package, which is not installed; "
                f"install it (pip install 'mdf-search[tracking]') or set `backend: none`"
            )
        return out


class SpecFile(_Model):
    """The top level of a search-space file; the parameter blocks stay raw mappings here."""

    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_EXPERIMENT_NAME)
    description: str = ""
    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]
    design: Literal["grid", "ofat", "tpe", "qmc", "gp"]
    seeds: list[int] = Field(default_factory=lambda: [RunConfig.seed], min_length=1)
    budget: Budget = Budget()
    scheduler: Scheduler = Scheduler()
    baseline: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    scientific: dict[str, Any]
    nuisance: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Resources()
    study: StudyStorage = StudyStorage()
    tracking: Tracking = Tracking()

    def cross_field_problems(self) -> list[str]:
        """Rules between top-level keys (the parameter blocks are checked in ``space.load_spec``)."""
        problems = self.tracking.problems()
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds: duplicate seeds in {short_repr(self.seeds)}; list each once")
        for i, seed in enumerate(self.seeds):
            if not 0 <= seed <= MAX_SEED:
                problems.append(
                    f"seeds[{i}]: must be an integer >= 0 and <= {MAX_SEED} (a 32-bit seed, as numpy and "
                    f"torch take it), but got {short_repr(seed)}; choose a smaller seed"
                )
        if self.design == "ofat" and self.reference is None:
            problems.append(
                "reference: design ofat varies each factor from a reference configuration; add "
                "`reference: {key: value, ...}` with a value for every scientific key"
            )
        if self.design != "ofat" and self.reference is not None:
            problems.append(f"reference: is used only by design ofat (design is {self.design}); remove it")
        if self.design in SAMPLER_DESIGNS and self.budget.trials is None:
            problems.append(f"budget.trials: design {self.design} samples until a budget; set budget.trials")
        if self.metric.startswith("test/"):
            problems.append(
                f"metric: {self.metric}: the study selects on validation only (the best epoch, the trial, "
                f"the sampler's next point and the scheduler's stops all follow it); use val/{self.metric[5:]}"
            )
        if self.scheduler.type == "asha" and self.scheduler.grace_period > self.budget.epochs:
            problems.append(
                f"scheduler.grace_period: {self.scheduler.grace_period} epochs exceeds budget.epochs="
                f"{self.budget.epochs}; lower it or raise budget.epochs"
            )
        return problems


class CategoricalIn(_Model):
    """A categorical parameter block: ``{choices: [...], when?, otherwise?, default?}``."""

    choices: list[Any] = Field(min_length=1)
    when: dict[str, Any] | None = None
    otherwise: Any = None
    default: Any = None


class RangeIn(_Model):
    """A numeric range block: ``{low, high, log?, step?, int?, when?, otherwise?, default?}``."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    integer: bool = Field(default=False, alias="int")
    when: dict[str, Any] | None = None
    otherwise: Any = None
    default: float | None = None
