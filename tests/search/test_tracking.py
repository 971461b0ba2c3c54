"""The ``tracking:`` block: what the space file accepts and refuses (file, field, fix), and the Ray logger
callbacks it turns into, without a Ray cluster (the sweeps are in ``test_integrations.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from mdf_search.search.space import SpecError
from mdf_search.search.spec_schema import Tracking
from mdf_search.search.tracking import epoch_metrics, flat_config, tracking_callbacks
from tests.search.designs_helpers import grid_spec
from tests.search.test_callbacks import StandInTrial


def _problems(tmp_path: Path, **fields: Any) -> list[str]:
    with pytest.raises(SpecError) as err:
        grid_spec(tmp_path, **fields)
    return err.value.problems


@pytest.mark.parametrize(
    ("tracking", "expected"),
    [
        ({"backend": "mlflw"}, r"tracking\.backend: must be one of mlflow, wandb, tensorboard, none.*did you mean 'mlflow'"),
        ({"backend": "mlflow", "project": "p"}, r"tracking\.project: is an option of backend wandb, not of mlflow; remove it or set `backend: wandb`"),
        ({"backend": "wandb", "tracking_uri": "file:/x"}, r"tracking\.tracking_uri: is an option of backend mlflow, not of wandb"),
        ({"backend": "wandb", "grup": "g"}, r"tracking\.grup: unknown key; did you mean 'group'|tracking\.grup: unknown key"),
        ({"backend": "wandb", "mode": "shared"}, r"tracking\.mode: must be one of online, offline"),
        ({"backend": "mlflow", "tracking_uri": ""}, r"tracking\.tracking_uri: must not be empty, but got .*; give a value or remove the key"),
        ("mlflow", r"tracking: must be a mapping of keys to values, but got 'mlflow'"),
    ],
    ids=["typo", "wandb-option-on-mlflow", "mlflow-option-on-wandb", "unknown-key", "mode", "empty-uri", "not-a-block"],
)  # fmt: skip
def test_a_wrong_tracking_block_names_the_file_the_field_and_the_fix(
    tracking: Any, expected: str, tmp_path: Path
) -> None:
    problems = _problems(tmp_path, tracking=tracking)
    assert any(p.startswith(str(tmp_path / "d.yaml")) for p in problems), problems
    assert any(__import__("re").search(expected, p) for p in problems), problems


def test_a_backend_whose_package_is_missing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    problems = _problems(tmp_path, tracking={"backend": "wandb"})
    assert any(
        "tracking.backend: wandb needs the wandb package, which is not installed; install it" in p
        for p in problems
    ), problems


def test_the_default_is_no_tracking_and_a_block_loads(tmp_path: Path) -> None:
    assert grid_spec(tmp_path).tracking == Tracking()
    spec = grid_spec(tmp_path, tracking={"backend": "mlflow", "tracking_uri": "sqlite:///m.db"})
    assert spec.tracking.backend == "mlflow" and spec.tracking.tracking_uri == "sqlite:///m.db"
    assert tracking_callbacks(grid_spec(tmp_path).tracking, "d") == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"resources": {"max_failures": -2}}, r"resources\.max_failures: must be an integer >= -1, but got -2"),
        ({"resources": {"placement": "strict"}}, r"resources\.placement: must be one of auto, pack, strict_pack, spread"),
        ({"budget": {"price_per_gpu_hour": -1}}, r"budget\.price_per_gpu_hour: must be a number >= 0"),
        ({"budget": {"price_per_gpu_hour": ".nan"}}, r"budget\.price_per_gpu_hour: must be a (finite )?number"),
    ],
    ids=["max-failures", "placement", "negative-price", "nan-price"],
)  # fmt: skip
def test_cost_and_failure_settings_are_checked(fields: dict[str, Any], expected: str, tmp_path: Path) -> None:
    problems = _problems(tmp_path, **fields)
    assert any(__import__("re").search(expected, p) for p in problems), problems


def test_the_callbacks_of_each_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ray.tune.logger import TBXLoggerCallback

    from mdf_search.search.trackers import ArmMLflowLoggerCallback, ArmWandbLoggerCallback

    (mlflow,) = tracking_callbacks(Tracking(backend="mlflow", tracking_uri="sqlite:///x.db"), "exp")
    assert isinstance(mlflow, ArmMLflowLoggerCallback)
    assert (mlflow.tracking_uri, mlflow.experiment_name, mlflow.tags) == (
        "sqlite:///x.db",
        "exp",
        {"experiment": "exp"},
    )
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    (wandb,) = tracking_callbacks(Tracking(backend="wandb", entity="team"), "exp")
    assert isinstance(wandb, ArmWandbLoggerCallback) and wandb.project == "exp"
    assert wandb.kwargs == {"entity": "team", "mode": "offline", "dir": str(tmp_path), "tags": ["exp"]}
    (tensorboard,) = tracking_callbacks(Tracking(backend="tensorboard"), "exp")
    assert isinstance(tensorboard, TBXLoggerCallback)


def test_wandb_mode_offline_needs_no_key_and_leaves_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", "/nonexistent-wandb-config")  # no login on this machine
    (callback,) = tracking_callbacks(Tracking(backend="wandb", mode="offline"), "exp")
    callback.setup()
    import os

    assert "WANDB_MODE" not in os.environ


def test_a_run_records_the_flat_params_the_arm_and_the_epochs_own_metrics() -> None:
    trial = StandInTrial("t1", config={"params": {"optim.lr": 0.001, "seed": 1}, "arm": "fusion.levels=4"})
    assert flat_config(trial) == {"optim.lr": 0.001, "seed": 1, "arm": "fusion.levels=4"}
    report = {
        "epoch": 2,
        "val/loss": 0.5,
        "status": "running",
        "selected/val/loss": 0.4,
        "training_iteration": 2,
        "done": False,
        "config": {"params": {}},
        "ok": True,
    }
    assert epoch_metrics(report) == {"epoch": 2.0, "val/loss": 0.5}
