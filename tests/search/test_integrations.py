"""What users of Optuna, MLflow and W&B expect of a sweep, on function-trial sweeps (``tests/chaos/trials.py``)
on the session's embedded Ray: the Optuna study a dashboard reads (metric name, user attributes joinable
to Parquet, the factors as parameters, importances), runs in an MLflow file store and offline W&B runs
grouped by arm, and a failing trial's retries (``resources.max_failures``) and its error in the trials
table and the driver's log."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import pytest

from mdf_search.results.store import ResultsStore
from mdf_search.search.runner import run_sweep
from mdf_search.search.space import load_spec
from tests.chaos.trials import quick_trial
from tests.search.test_sweep_integration import _spec

pytestmark = pytest.mark.integration
FACTORS = {"fusion.levels": ["none", "4"], "fusion.injection": ["parallel", "none"]}


def _sweep(tmp_path: Path, name: str, trial: Any = quick_trial, **overrides: Any) -> str:
    body: dict[str, Any] = {"seeds": [0, 1], "budget": {"trials": 4, "epochs": 2}}
    body["resources"] = {"workers": 1, "concurrent_trials": 2, **overrides.pop("resources", {})}
    spec = load_spec(_spec(tmp_path, name, **{**body, **overrides}))
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"), trial=trial)
    return outcome.experiment_root


def test_the_optuna_study_is_what_the_dashboard_reads(ray_cluster: Any, tmp_path: Path) -> None:
    root = _sweep(tmp_path, "dash")
    study = optuna.load_study(study_name="dash", storage=f"sqlite:///{root}/optuna.db")
    assert study.metric_names == ["val/loss"]
    trials = ResultsStore(root).trials()
    assert trials.height == 4 and set(trials["status"]) == {"completed"}
    # user attributes: one study trial per Parquet trial, joined on trial_id, agreeing on arm and hash
    frame = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    joined = pl.from_pandas(frame).join(trials, left_on="user_attrs_trial_id", right_on="trial_id")
    assert joined.height == 4
    assert joined["user_attrs_arm"].to_list() == joined["arm"].to_list()
    assert joined["user_attrs_config_hash"].to_list() == joined["config_hash"].to_list()
    assert set(joined["user_attrs_status"]) == {"completed"}
    # each scientific factor is its own categorical, over every level it takes in some arm
    for t in study.trials:
        for factor, levels in FACTORS.items():
            assert factor in t.params, t.params
            assert set(t.distributions[factor].choices) == set(levels)  # type: ignore[attr-defined]
        arm = dict(part.split("=") for part in t.user_attrs["arm"].split("|"))
        assert str(t.params["fusion.levels"]) == arm["fusion.levels"]
    # optuna-dashboard's importance view calls this
    importances = optuna.importance.get_param_importances(study)
    assert {"fusion.levels", "seed"} <= set(importances), importances


def test_mlflow_runs_per_trial_grouped_by_arm(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a file store
    uri = (tmp_path / "mlruns").as_uri()
    root = _sweep(tmp_path, "mlf", tracking={"backend": "mlflow", "tracking_uri": uri})
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mlf")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trials = ResultsStore(root).trials()
    assert {r.data.tags["trial_id"] for r in runs} == set(trials["trial_id"])
    by_arm = {r.data.tags["arm"] for r in runs}
    assert by_arm == set(trials["arm"]) and len(by_arm) == 2
    for run in runs:
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        assert run.data.params["arm"] == run.data.tags["arm"] and "optim.lr" in run.data.params
        history = client.get_metric_history(run.info.run_id, "val/loss")
        assert sorted(m.step for m in history) == [1, 2]
        assert not any(k.startswith("selected/") for k in run.data.metrics)


def test_wandb_offline_runs_per_trial_grouped_by_arm(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    root = _sweep(tmp_path, "wb", tracking={"backend": "wandb", "project": "p"})
    trials = ResultsStore(root).trials()
    runs = _offline_runs(tmp_path / "wandb")
    assert set(runs) == set(trials["trial_id"]), sorted(runs)
    arms = dict(zip(trials["trial_id"], trials["arm"], strict=True))
    assert len(set(arms.values())) == 2
    for trial_id, meta in runs.items():
        assert meta["group"] == arms[trial_id] and meta["project"] == "p"
        assert meta["config"]["arm"] == arms[trial_id] and "optim.lr" in meta["config"]
        assert meta["steps"] == [1, 2] and "val/loss" in meta["keys"], meta
        assert not any(k.startswith("selected/") for k in meta["keys"])


def _records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of chunks, each
    with a 7-byte header of checksum, length and type; W&B's own 7-byte file header first)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _offline_runs(folder: Path) -> dict[str, dict[str, Any]]:
    """Every offline W&B run under ``folder``: run id → its group, project, config and history steps."""
    out: dict[str, dict[str, Any]] = {}
    for path in folder.rglob("offline-run-*/run-*.wandb"):
        meta: dict[str, Any] = {"steps": [], "keys": set(), "config": {}}
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                meta.update(id=record.run.run_id, group=record.run.run_group, project=record.run.project)
                meta["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                meta["steps"].append(record.history.step.num)
                meta["keys"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        out[meta["id"]] = meta
    return out


def failing_trial(config: dict[str, Any], settings: Any) -> None:
    """A function trial that reports an epoch, then raises as a worker's bug would."""
    from ray import tune

    tune.report({"epoch": 1, "status": "running", "val/loss": 1.0})
    raise ValueError(f"bad batch 7 in seed {config['params']['seed']}")


def test_a_failing_trial_is_retried_max_failures_times_and_its_error_is_kept(
    ray_cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mdf_search.search.callbacks")
    root = _sweep(
        tmp_path,
        "fails",
        trial=failing_trial,
        seeds=[0],
        scientific={"fusion.levels": ["4"]},
        baseline={"fusion.levels": "4"},
        resources={"max_failures": 2},
    )
    rows = ResultsStore(root).trials(latest_attempt=False).sort("attempt")
    assert rows["attempt"].to_list() == [1, 2, 3]  # the first try and max_failures=2 retries
    assert rows["status"].to_list() == ["error"] * 3
    cause = "ValueError: bad batch 7 in seed 0"
    assert rows["message"].to_list() == [f"retried: {cause}", f"retried: {cause}", cause]
    failed = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert (
        failed
        and 'in failing_trial\n    raise ValueError(f"bad batch 7' in failed[-1]
        and cause in failed[-1]
    )
