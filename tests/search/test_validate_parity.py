"""``validate`` and the sweep agree, both ways.

``sweep_problems`` walks the sweep's own path from a loaded spec to its first trial, without Ray: the
selection, the experiment directory, every (arm, seed) config (``runner.design_configs``), the resources
Ray would be asked for, Tune's time budget, the Optuna study on its storage, and the first trial the
sampler asks for, through ``TrialConfig.from_flat``. Its checks are the consumers' (Ray, Tune, Optuna,
the file system, ``TrialConfig``), not validate's.

- Every shipped space, and the catalogue's base spec: ``validate`` says ok, and the sweep path accepts.
- Every bad file of the catalogue (``tests/badinput/test_spec_yaml.py``) that ``validate`` refuses,
  ``sweep`` refuses too, with the same words, before Ray starts.
- Each finding of issue 13 (a seed past 2^31-1, a nan or infinite wall time, a name no directory can
  have, infinite resources, a storage that is no database, a test metric): injected into a loaded spec
  past the schema, the sweep path rejects it or would run it wrongly; written as a file, ``validate``
  rejects it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

import mdf_search.cli.study
from mdf_search.config import ConfigError, TrialConfig
from mdf_search.search.designs import arms, default_storage_url, define_by_run, study_name
from mdf_search.search.runner import design_configs, experiment_root, resolve_resources
from mdf_search.search.samplers import make_sampler
from mdf_search.search.space import SearchSpec, load_spec
from mdf_search.search.validate import validate_files
from mdf_search.train.selection import Selection
from tests.badinput.harness import Case, check, ids
from tests.badinput.test_spec_yaml import BASE, CASES, variant

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def sweep_problems(spec: SearchSpec, storage: Path) -> list[str]:
    """What the sweep's path from ``spec`` to its first trial refuses or would run wrongly."""
    problems: list[str] = []
    try:
        Selection(spec.metric, spec.mode)
    except ValueError as err:
        problems.append(f"selection: {err}")
    root = Path(experiment_root(str(storage), spec.experiment))
    try:
        root.mkdir(parents=True)
        if root.resolve().parent != storage.resolve() or root.name != spec.experiment:
            problems.append(f"experiment: {spec.experiment!r} is not one directory under the storage")
    except (OSError, ValueError) as err:
        problems.append(f"experiment directory: {err}")
        root = storage / "fallback"
        root.mkdir(parents=True, exist_ok=True)
    try:
        configs = design_configs(spec)
    except ConfigError as err:
        problems.append(f"design configs: {err}")
        configs = []
    for on_gpu, cpus, gpus in ((False, 2.0, 0.0), (True, 64.0, 8.0)):
        res = resolve_resources(
            spec.resources, presets={c.model.preset for c in configs}, on_gpu=on_gpu, cpus=cpus, gpus=gpus
        )
        asks = (res.cpus_per_worker, res.gpus_per_worker, spec.resources.gpu_mem_gb)
        if not all(math.isfinite(x) and x >= 0 for x in asks) or res.concurrent_trials < 1:
            problems.append(f"resources Ray would be asked for: {res}")
    budget = spec.budget.max_wall_time or None  # what the runner gives Tune's time_budget_s
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        problems.append(f"Tune's time budget: {budget} (no limit at all)")
    for value in (spec.budget.max_gpu_hours or 0, spec.scheduler.reduction_factor):
        if not math.isfinite(value):
            problems.append(f"budget or scheduler: {value}")
    try:
        url = spec.study.storage or default_storage_url(root)
        study = optuna.create_study(
            storage=optuna.storages.RDBStorage(url),
            study_name=study_name(spec),
            sampler=make_sampler(spec),
            direction="maximize" if spec.mode == "max" else "minimize",
        )
        first = define_by_run(spec)(study.ask())
        TrialConfig.from_flat(first["params"])
    except (ConfigError, ValueError, ImportError) as err:
        problems.append(f"first trial: {err}")
    except Exception as err:  # SQLAlchemy's own errors: a storage URL Optuna cannot open
        problems.append(f"study storage: {type(err).__name__}: {err}")
    return problems


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_a_shipped_space_validate_passes_and_the_sweep_accepts(path: Path, tmp_path: Path) -> None:
    code, lines = validate_files([path])
    assert code == 0, "\n".join(lines)
    assert sweep_problems(load_spec(path), tmp_path) == []


def _base(tmp: Path) -> SearchSpec:
    path = tmp / "base.yaml"
    path.write_text(BASE)
    return load_spec(path)


def test_the_catalogues_base_spec_is_valid_both_ways(tmp_path: Path) -> None:
    spec = _base(tmp_path)
    assert validate_files([spec.path])[0] == 0
    assert sweep_problems(spec, tmp_path / "runs") == []
    assert len(arms(spec)) == 2


def _budget(**update: object) -> Callable[[SearchSpec], SearchSpec]:
    return lambda s: dataclasses.replace(s, budget=s.budget.model_copy(update=update))


def _resources(**update: object) -> Callable[[SearchSpec], SearchSpec]:
    return lambda s: dataclasses.replace(s, resources=s.resources.model_copy(update=update))


# (id, the file's edit of BASE, the same value injected into a loaded spec past the schema)
FINDINGS: list[tuple[str, tuple[str, str], Callable[[SearchSpec], SearchSpec]]] = [
    (
        "seed-2^31",
        ("seeds: [0, 1]", "seeds: [0, 2147483648]"),
        lambda s: dataclasses.replace(s, seeds=(0, 2**31)),
    ),
    ("seed-negative", ("seeds: [0, 1]", "seeds: [0, -1]"), lambda s: dataclasses.replace(s, seeds=(0, -1))),
    ("wall-time-nan", ("max_wall_time: 10m", "max_wall_time: .nan"), _budget(max_wall_time=math.nan)),
    ("wall-time-inf", ("max_wall_time: 10m", "max_wall_time: .inf"), _budget(max_wall_time=math.inf)),
    ("wall-time-negative", ("max_wall_time: 10m", "max_wall_time: -60"), _budget(max_wall_time=-60.0)),
    (
        "gpu-hours-inf",
        ("max_wall_time: 10m", "max_wall_time: 10m, max_gpu_hours: .inf"),
        _budget(max_gpu_hours=math.inf),
    ),
    (
        "name-300-bytes",
        ("experiment: bad", "experiment: " + "x" * 300),
        lambda s: dataclasses.replace(s, experiment="x" * 300),
    ),
    (
        "name-separator",
        ("experiment: bad", "experiment: a/../b"),
        lambda s: dataclasses.replace(s, experiment="a/../b"),
    ),
    (
        "name-dot-dot",
        ("experiment: bad", "experiment: '..'"),
        lambda s: dataclasses.replace(s, experiment=".."),
    ),
    (
        "name-nul",
        ("experiment: bad", 'experiment: "a\\0b"'),
        lambda s: dataclasses.replace(s, experiment="a\0b"),
    ),
    ("gpus-inf", ("workers: 1,", "workers: 1, gpus_per_worker: .inf,"), _resources(gpus_per_worker=math.inf)),
    ("cpus-inf", ("workers: 1,", "workers: 1, cpus_per_worker: .inf,"), _resources(cpus_per_worker=math.inf)),
    ("gpu-mem-nan", ("workers: 1,", "workers: 1, gpu_mem_gb: .nan,"), _resources(gpu_mem_gb=math.nan)),
    (
        "storage-not-a-database",
        ("storage: null", "storage: not a database"),
        lambda s: dataclasses.replace(s, study=s.study.model_copy(update={"storage": "not a database"})),
    ),
    (
        "metric-on-test",
        ("metric: val/macro_f1", "metric: test/macro_f1"),
        lambda s: dataclasses.replace(s, metric="test/macro_f1"),
    ),
]


@pytest.mark.parametrize(("edit", "inject"), [f[1:] for f in FINDINGS], ids=[f[0] for f in FINDINGS])
def test_what_the_sweep_rejects_validate_rejects(
    edit: tuple[str, str], inject: Callable[[SearchSpec], SearchSpec], tmp_path: Path
) -> None:
    assert sweep_problems(inject(_base(tmp_path)), tmp_path / "runs"), "the sweep path takes it"
    path = tmp_path / "spec.yaml"
    path.write_text(variant(edit))
    code, lines = validate_files([path])
    assert code == 2 and lines[0].startswith(f"{path}: INVALID"), "\n".join(lines)


def test_a_duplicate_experiment_key_is_refused_by_the_reader_both_share(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(variant(("mode: max\n", "mode: max\nexperiment: renamed\n")))
    code, lines = validate_files([path])
    assert code == 2 and "duplicate key 'experiment'" in "\n".join(lines)
    with pytest.raises(ValueError, match="duplicate key 'experiment'"):
        load_spec(path)  # the sweep's own reading of the file


SINGLE = [c for c in CASES if c.args[0] == "validate" and len(c.args) == 2]


@pytest.mark.parametrize("case", SINGLE, ids=ids(SINGLE))
def test_every_spec_validate_refuses_the_sweep_refuses_before_ray(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalogue's bad files, given to ``sweep``: the same words, exit 2, before Ray, nothing written."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the sweep went on to start Ray")

    monkeypatch.setattr(mdf_search.cli.study, "connect", refuse)
    check(dataclasses.replace(case, args=("sweep", case.args[1], "--storage", "runs")), tmp_path, monkeypatch)
