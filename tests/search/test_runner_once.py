"""What a sweep does once instead of per trial: ``concurrent_trials: auto`` resolution, the study's data
artefacts prepared in the driver and handed to every trial, and parameter counts per architecture."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from mdf_search.config import TrialConfig
from mdf_search.search import runner
from mdf_search.search import trial as trial_module
from mdf_search.search.runner import (
    SHARED_GPU_TRIALS,
    TrialResources,
    TrialSettings,
    design_configs,
    prepare_study,
    resolve_resources,
    trial_data,
)
from mdf_search.search.space import SpecError
from mdf_search.search.spec_schema import Resources
from mdf_search.train import memory
from mdf_search.train.builders import TrialData, data_key
from mdf_search.train.selection import Selection
from tests.search.designs_helpers import grid_spec


def _res(**fields: Any) -> Resources:
    return Resources(**fields)


# ---------------------------------------------------------------------------------------------------
# concurrent_trials: auto
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "cpus", "expected"),
    [
        ({"workers": 2, "concurrent_trials": "auto"}, 2, TrialResources(1, 1.0, 0.0)),  # this 2-core box
        ({"workers": 2, "concurrent_trials": "auto"}, 16, TrialResources(8, 1.0, 0.0)),
        ({"workers": 2, "concurrent_trials": "auto"}, 17, TrialResources(8, 1.0, 0.0)),
        # smaller than one trial: one trial, its workers sharing the CPUs (else Ray never starts it)
        ({"workers": 2, "concurrent_trials": "auto"}, 1, TrialResources(1, 0.5, 0.0)),
        ({"workers": 1, "concurrent_trials": "auto", "cpus_per_worker": 2}, 7, TrialResources(3, 2.0, 0.0)),
        ({"workers": 2, "concurrent_trials": 3}, 16, TrialResources(3, 1.0, 0.0)),  # a number is kept
    ],
)
def test_auto_on_cpus_fits_the_cpus(fields: dict[str, Any], cpus: float, expected: TrialResources) -> None:
    got = resolve_resources(_res(**fields), presets={"tiny"}, on_gpu=False, cpus=cpus, gpus=0)
    assert got == expected


@pytest.mark.parametrize(
    ("workers", "presets", "gpus", "cpus", "expected"),
    [
        (1, {"tiny"}, 1, 16, TrialResources(4, 1.0, 1 / SHARED_GPU_TRIALS["tiny"])),  # 4 tiny trials/GPU
        (1, {"small"}, 1, 16, TrialResources(2, 1.0, 0.5)),
        (1, {"tiny", "small"}, 2, 16, TrialResources(4, 1.0, 0.5)),  # a mixed study takes the larger share
        (1, {"tiny"}, 8, 16, TrialResources(16, 1.0, 0.25)),  # then the CPUs bound it
        (1, {"1b"}, 2, 16, TrialResources(2, 1.0, 1.0)),  # larger presets hold whole GPUs
        (1, {"tiny", "1b"}, 1, 16, TrialResources(1, 1.0, 1.0)),
        (2, {"tiny"}, 1, 16, TrialResources(1, 1.0, 1.0)),  # two ranks never share a GPU (NCCL)
        (2, {"tiny"}, 4, 16, TrialResources(2, 1.0, 1.0)),
    ],
)
def test_auto_on_gpus_shares_them_for_one_worker_tiny_and_small(
    workers: int, presets: set[str], gpus: float, cpus: float, expected: TrialResources
) -> None:
    res = _res(workers=workers, concurrent_trials="auto")
    assert resolve_resources(res, presets=presets, on_gpu=True, cpus=cpus, gpus=gpus) == expected


def test_auto_keeps_a_declared_gpu_share() -> None:
    res = _res(workers=1, concurrent_trials="auto", gpus_per_worker=0.5)
    got = resolve_resources(res, presets={"tiny"}, on_gpu=True, cpus=16, gpus=2)
    assert got == TrialResources(4, 1.0, 0.5)


def test_auto_ignores_gpus_the_trials_do_not_use() -> None:
    res = _res(workers=2, concurrent_trials="auto")
    got = resolve_resources(res, presets={"tiny"}, on_gpu=False, cpus=4, gpus=8)
    assert got == TrialResources(2, 1.0, 0.0)


@pytest.mark.parametrize("value", ["many", 0, -1, 1.5, True])
def test_concurrent_trials_refuses_what_is_neither_a_count_nor_auto(tmp_path: Path, value: Any) -> None:
    with pytest.raises(SpecError, match=r"resources\.concurrent_trials: must be an integer >= 1 or 'auto'"):
        grid_spec(tmp_path, resources={"concurrent_trials": value})


def test_concurrent_trials_auto_loads(tmp_path: Path) -> None:
    assert grid_spec(tmp_path, resources={"concurrent_trials": "auto"}).resources.concurrent_trials == "auto"


# ---------------------------------------------------------------------------------------------------
# data artefacts and parameter counts: once per study
# ---------------------------------------------------------------------------------------------------
def _fake_data(tag: str) -> TrialData:
    return TrialData(f"{tag}/m", f"{tag}/s", tag, f"{tag}/c", f"{tag}/t", "{}")


def test_data_key_covers_what_prepare_reads_and_nothing_else() -> None:
    base = TrialConfig.from_flat({"model.preset": "tiny"})
    same: list[dict[str, Any]] = [
        {"data.augment": False},
        {"data.order_salt": 1},
        {"optim.lr": 0.1},
        {"fusion.levels": "4", "fusion.injection": "parallel"},
    ]
    other: list[dict[str, Any]] = [
        {"data.synthetic_images": 96},
        {"data.split_seed": 3},
        {"data.val_frac": 0.3},
        {"data.vision_tiles": 4},
        {"model.preset": "small"},
    ]
    for flat in same:
        assert data_key(TrialConfig.from_flat({"model.preset": "tiny", **flat})) == data_key(base), flat
    for flat in other:
        assert data_key(TrialConfig.from_flat({"model.preset": "tiny", **flat})) != data_key(base), flat


def test_prepare_study_prepares_each_data_key_and_counts_each_architecture_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[tuple[Any, ...]] = []
    counted: list[Any] = []

    def prepare(cfg: TrialConfig) -> TrialData:
        prepared.append(data_key(cfg))
        return _fake_data("x")

    def count(arch: Any) -> str:
        counted.append(arch)
        return "counts"

    monkeypatch.setattr(trial_module, "prepare_trial_data", prepare)
    monkeypatch.setattr(trial_module, "count_parameters", count)
    spec = grid_spec(tmp_path, seeds=[0, 1, 2])  # every arm x 3 seeds: one data key, an arch per arm
    configs = design_configs(spec)
    archs = {cfg.arch for cfg in configs}
    assert len(configs) == 3 * len(archs) and len(archs) > 1
    data, counts = prepare_study(configs, plan_memory=True)
    assert len(prepared) == 1 and list(data) == prepared
    assert len(counted) == len(archs) and set(counts) == archs
    prepared.clear()
    counted.clear()
    _, counts = prepare_study(configs, plan_memory=False)  # CPU workers: no memory plan, nothing counted
    assert counted == [] and counts == {} and len(prepared) == 1


def test_a_trial_takes_the_prepared_data_and_prepares_only_an_unknown_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[TrialConfig] = []

    def prepare(cfg: TrialConfig, root: str) -> TrialData:  # prepared, then published to the study
        calls.append(cfg)
        assert root == "/x"
        return _fake_data("own")

    monkeypatch.setattr(trial_module, "study_trial_data", prepare)
    cfg = TrialConfig.from_flat({"model.preset": "tiny"})
    settings = TrialSettings("/x", Selection(), 0.0, 80.0, data={data_key(cfg): _fake_data("study")})
    assert trial_data(cfg, settings) == _fake_data("study") and calls == []
    other = cfg.replace(**{"data.synthetic_images": 96})
    assert trial_data(other, settings) == _fake_data("own") and calls == [other]


class _FakeTrainer:
    def __init__(self, cfg: TrialConfig, data: TrialData, **kwargs: Any) -> None:
        self.cfg, self.data, self.kwargs = cfg, data, kwargs
        _FakeTrainer.made.append(self)

    def fit(self) -> None:
        return None

    made: ClassVar[list[_FakeTrainer]] = []


def _patch_trial_side(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import ray.tune
    import ray.tune.integration.ray_train as tune_train

    from mdf_search.train import trainer

    reports: list[dict[str, Any]] = []
    _FakeTrainer.made.clear()
    monkeypatch.setattr(trainer, "make_trainer", _FakeTrainer)
    monkeypatch.setattr(tune_train, "TuneReportCallback", lambda: "tune-callback")
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(ray.tune, "report", reports.append)
    monkeypatch.setattr(
        trial_module, "study_trial_data", lambda cfg, root: pytest.fail("the trial prepared its data")
    )
    return reports


def test_the_trial_driver_runs_on_the_study_data_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    reports = _patch_trial_side(monkeypatch)
    monkeypatch.setattr(memory, "count_parameters", lambda arch: pytest.fail("the trial counted parameters"))
    cfg = TrialConfig.from_flat({"model.preset": "tiny", "run.workers": 1})
    counts = memory.ParamCounts(total=1000, trainable=1000, largest_layer=10, roles={"llm": (1000, 1000)})
    settings = TrialSettings(
        "/runs/e",
        Selection(),
        gpus_per_worker=0.25,
        gpu_mem_gb=80.0,
        cpus_per_worker=2.0,
        data={data_key(cfg): _fake_data("study")},
        param_counts={cfg.arch: counts},
    )
    runner.trial_driver({"params": cfg.to_flat(), "arm": "a"}, settings)
    (made,) = _FakeTrainer.made
    assert made.data == _fake_data("study") and reports == []
    assert made.kwargs["name"] == "t1" and made.kwargs["storage_path"] == "/runs/e/train"
    assert (made.kwargs["cpus_per_worker"], made.kwargs["gpus_per_worker"]) == (2.0, 0.25)


def test_the_trial_driver_refuses_what_the_counted_architecture_cannot_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reports = _patch_trial_side(monkeypatch)
    cfg = TrialConfig.from_flat({"model.preset": "tiny", "run.workers": 1})
    huge = 10**12  # the counts given, not the tiny preset's: the trial plans with the study's counts
    counts = memory.ParamCounts(total=huge, trainable=huge, largest_layer=10, roles={"llm": (huge, huge)})
    settings = TrialSettings("/r", Selection(), 1.0, 80.0, param_counts={cfg.arch: counts})
    runner.trial_driver({"params": cfg.to_flat(), "arm": "a"}, settings)
    assert _FakeTrainer.made == [] and [r["status"] for r in reports] == ["infeasible"]


def test_plan_trial_uses_given_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrialConfig.from_flat({"model.preset": "tiny"})
    real = memory.count_parameters(cfg.arch)
    monkeypatch.setattr(memory, "count_parameters", lambda arch: pytest.fail("counted again"))
    assert memory.plan_trial(cfg, 1, 80.0, counts=real).total_params == real.total


@pytest.mark.parametrize(("workers", "share", "refused"), [(2, 0.5, True), (1, 0.5, False), (2, 1, False)])
def test_validate_refuses_a_gpu_share_two_ranks_of_a_trial_would_split(
    tmp_path: Path, workers: int, share: float, refused: bool
) -> None:
    from mdf_search.search.validate import validate_spec

    spec = grid_spec(tmp_path, resources={"workers": workers, "gpus_per_worker": share})
    problems = [p for p in validate_spec(spec) if "NCCL refuses two ranks" in p]
    assert bool(problems) == refused


def test_data_that_cannot_be_prepared_is_left_to_its_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing key (a missing manifest) does not stop the sweep: its trials prepare, fail and are
    recorded as errors, the other keys are prepared once."""

    def prepare(cfg: TrialConfig) -> TrialData:
        if cfg.data.manifest:
            raise FileNotFoundError(cfg.data.manifest)
        return _fake_data("ok")

    monkeypatch.setattr(trial_module, "prepare_trial_data", prepare)  # the study's, once per key
    monkeypatch.setattr(trial_module, "study_trial_data", lambda cfg, root: prepare(cfg))  # a trial's own
    good = TrialConfig.from_flat({"model.preset": "tiny"})
    bad = good.replace(**{"data.manifest": str(tmp_path / "missing.parquet")})
    data, _ = prepare_study([good, bad, bad], plan_memory=False)
    assert data == {data_key(good): _fake_data("ok")}
    settings = TrialSettings("/x", Selection(), 0.0, 80.0, data=data)
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet"):
        trial_data(bad, settings)


def test_a_finished_study_closes_a_row_left_running_as_lost(tmp_path: Path) -> None:
    """A driver killed just after a trial's first row, before Tune saved it: the trial is unknown to
    the restored Tune, its arm and seed run again, and its row is closed as lost when the study ends."""
    from mdf_search.results.store import ResultsStore
    from mdf_search.search.runner import LOST, _close_lost

    store = ResultsStore(str(tmp_path / "exp"))
    store.write_trial({"experiment": "e", "trial_id": "t1", "attempt": 1, "status": "completed"})
    store.write_trial({"experiment": "e", "trial_id": "t2", "attempt": 1, "status": "running"})
    _close_lost(store)
    rows = {r["trial_id"]: r for r in store.trials().iter_rows(named=True)}
    assert rows["t1"]["status"] == "completed" and rows["t1"]["message"] is None
    assert rows["t2"]["status"] == "error" and rows["t2"]["message"] == LOST
