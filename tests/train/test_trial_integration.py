"""One trial end to end: real Ray Train, real DeepSpeed ZeRO-3 on 2 gloo workers, tiny preset, synthetic data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from mdf_search.config import TrialConfig
from mdf_search.metrics import metrics_for_tasks
from mdf_search.train import checkpoint, predictions
from mdf_search.train.builders import TrialData, prepare_trial_data
from mdf_search.train.checkpoint import export_checkpoint, load_exported
from mdf_search.train.faults import Faults
from mdf_search.train.phases import OTHER, PHASES
from mdf_search.train.selection import Selection
from mdf_search.train.trainer import EpochLog, make_trainer

pytestmark = pytest.mark.integration

SMALL = {"data.synthetic_images": 72, "data.synthetic_size": 128, "optim.micro_batch": 4, "optim.lr": 1e-3}


def _run(
    cfg: TrialConfig, data: TrialData, storage: Path, name: str, **kwargs: Any
) -> tuple[Any, list[dict]]:
    log = storage / name / "epochs.jsonl"
    trainer = make_trainer(
        cfg, data, name=name, storage_path=str(storage), callbacks=[EpochLog(str(log))], **kwargs
    )
    try:
        result = trainer.fit()
    except Exception as err:  # a killed run surfaces as TrainingFailedError
        result = err
    epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, epochs


@pytest.fixture(scope="module")
def data(ray_cluster: Any) -> TrialData:
    return prepare_trial_data(TrialConfig.from_flat(SMALL))


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (an AUROC of a class a split lacks)."""
    return bool(a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)))


def _checkpoint_predictions(result: Any) -> pl.DataFrame:
    with result.checkpoint.as_directory() as directory:
        table = predictions.load(Path(directory))
    assert table is not None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_selection_follows_a_min_metric_and_predictions_belong_to_the_selected_epoch(
    data: TrialData, tmp_path: Path
) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 3})
    selection = Selection("val/loss", "min")
    started = time.time()
    result, epochs = _run(cfg, data, tmp_path, "learn", selection=selection)
    assert result.error is None
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"]
    for e in epochs:
        assert e["train/loss"] == e["train_loss"] and 0.0 <= e["train/accuracy"] <= 1.0
        assert 0.0 <= e["val/auroc"] <= 1.0 and "val/auroc/inherited" in e
    # best_epoch is the running argmin of val/loss; test is evaluated exactly where it changes
    losses = [e["val/loss"] for e in epochs]
    for i, e in enumerate(epochs):
        best = int(np.argmin(losses[: i + 1])) + 1
        assert e["best_epoch"] == best and e["best_value"] == losses[best - 1]
        assert ("test/accuracy" in e) == (best == e["epoch"])
    final = epochs[-1]
    chosen = epochs[final["best_epoch"] - 1]
    for key, value in chosen.items():
        if key.startswith(("val/", "test/", "train/")):
            assert _same(final[f"selected/{key}"], value), key
    # the checkpoint's predictions: the selected epoch's val and test, recomputing the reported metrics
    frame = _checkpoint_predictions(result)
    assert set(frame["epoch"]) == {final["best_epoch"]} and set(frame["task"]) == {"type"}
    assert {"sample_id", "case_id", "source", "label", "pred", "prob/inherited"} <= set(frame.columns)
    for split in ("val", "test"):
        part = frame.filter(pl.col("split") == split).sort("manifest_row")
        assert part.height == chosen[f"{split}/n"] == part["sample_id"].n_unique()
        names = ("healthy", "acquired", "inherited")
        probs = part.select([f"prob/{c}" for c in names]).to_numpy()
        recomputed = metrics_for_tasks(
            {"type": np.array([names.index(v) for v in part["pred"]])},
            {"type": np.array([names.index(v) for v in part["label"]])},
            {"type": names},
            {"type": probs},
        )
        for key, value in recomputed.items():
            assert chosen[f"{split}/{key}"] == (
                pytest.approx(value, nan_ok=True) if not isinstance(value, list) else value
            )
    for key in ("samples_per_s", "step_time_s", "peak_mem_mb", "startup_s"):
        assert epochs[-1][key] > 0
    _check_phases(epochs, started=started, ended=time.time())


def _check_phases(epochs: list[dict[str, Any]], *, started: float, ended: float) -> None:
    """Every report says where the trial's time went so far (train/phases.py): the phases are totals
    that only grow, they add up to the time since the Train run was launched (within the test's own
    clock around the run), and the glue between them (other_s) is a small part of it."""
    previous = dict.fromkeys((*PHASES, OTHER), 0.0)
    for e in epochs:
        parts = {k: e[k] for k in (*PHASES, OTHER)}
        assert all(v >= previous[k] for k, v in parts.items()), parts
        assert sum(parts.values()) == pytest.approx(e["elapsed_s"])
        previous = parts
    last = epochs[-1]
    print("phases:", {k: round(last[k], 3) for k in (*PHASES, OTHER, "elapsed_s", "startup_s")})  # -rP
    assert all(last[k] > 0 for k in PHASES), last
    assert last[OTHER] < 0.1 * last["elapsed_s"], last  # the phases cover the time
    assert last["train_s"] >= sum(e["epoch_time_s"] for e in epochs)  # the steps are inside train_s
    assert last["launch_s"] + last["init_s"] <= last["startup_s"] <= last["elapsed_s"] <= ended - started
    assert started < last["loop_start_unix"] - last["launch_s"] < last["loop_start_unix"] < ended


def test_killed_run_resumes_and_matches_an_uninterrupted_run(data: TrialData, tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 3, "seed": 3})
    _, straight = _run(cfg, data, tmp_path, "straight")
    faults = Faults(
        kill_after_epoch=1,
        kill_marker=str(tmp_path / "kill-marker"),
        kill_wait_for=str(tmp_path / "killed" / "epochs.jsonl"),
    )
    _, before = _run(cfg, data, tmp_path, "killed", faults=faults)
    assert (tmp_path / "kill-marker").exists() and [e["epoch"] for e in before] == [1]
    _, after = _run(cfg, data, tmp_path, "killed", faults=faults)
    assert [e["epoch"] for e in after] == [1, 2, 3]  # same log: epoch 1 from the first run, then 2 and 3
    _same_results(after[-1], straight[-1])
    # run.checkpoint=last: epoch 1 left only a light checkpoint (its predictions), so the restarted run
    # starts over from epoch 0, and ends with the same results and a model checkpoint of its last epoch
    last = cfg.replace(**{"run.checkpoint": "last"})
    faults = Faults(
        kill_after_epoch=1,
        kill_marker=str(tmp_path / "kill-marker-last"),
        kill_wait_for=str(tmp_path / "killed-last" / "epochs.jsonl"),
    )
    _, before = _run(last, data, tmp_path, "killed-last", faults=faults)
    assert [e["epoch"] for e in before] == [1] and before[0]["checkpoint"] is not None
    assert not checkpoint.has_model(Path(before[0]["checkpoint"]))  # light: trial.json and predictions
    result, after = _run(last, data, tmp_path, "killed-last", faults=faults)
    assert [e["epoch"] for e in after] == [1, 1, 2, 3]  # epoch 1 again: nothing to resume it from
    for e in after[1:]:  # a light checkpoint where an epoch became the selected one, weights at the last
        assert (e["checkpoint"] is not None) == (e["best_epoch"] == e["epoch"] or e["epoch"] == 3), e
    _same_results(after[-1], straight[-1])
    with result.checkpoint.as_directory() as directory:
        assert checkpoint.has_model(Path(directory))


def _same_results(final: dict[str, Any], reference: dict[str, Any]) -> None:
    for key, value in reference.items():
        if key.startswith(("val/", "test/", "train/", "train_loss", "best_", "selected/")):
            assert _same(final[key], value), key  # bit for bit: same seed, config and world size


def test_export_reloads_without_deepspeed_with_identical_logits(data: TrialData, tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 1, "fusion.injection": "concat"})
    probe = tmp_path / "probe"
    result, _ = _run(cfg, data, tmp_path, "export", faults=Faults(save_logits=str(probe)))
    assert result.error is None
    with result.checkpoint.as_directory() as directory:
        export_checkpoint(directory, tmp_path / "exported")
    model = load_exported(tmp_path / "exported")
    saved = torch.load(probe / "batch.pt", weights_only=False)
    with torch.no_grad():
        logits = model(saved["batch"]).logits["type"]
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
    # A finished run started again (a sweep driver killed after the last report) re-reports its result.
    again, _ = _run(cfg, data, tmp_path, "export")
    assert again.metrics["status"] == "completed" and again.metrics["epoch"] == 1
    assert again.metrics["val/macro_f1"] == result.metrics["val/macro_f1"]


def test_the_control_knobs_train(data: TrialData, tmp_path: Path) -> None:
    """Balanced class weights, shuffled training text and a salted order run end to end; with
    run.checkpoint=none the trial keeps its metrics and predictions but no weights."""
    knobs = {"optim.class_weights": "balanced", "data.text": "shuffled", "data.order_salt": 5}
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 1, **knobs, "run.checkpoint": "none"})
    result, epochs = _run(cfg, data, tmp_path, "knobs")
    assert result.error is None, result.error
    assert epochs[-1]["status"] == "completed" and np.isfinite(epochs[-1]["train/loss"])
    with result.checkpoint.as_directory() as directory:
        assert not checkpoint.has_model(Path(directory))
        assert predictions.load(Path(directory)) is not None
        with pytest.raises(FileNotFoundError, match="kept no weights"):
            export_checkpoint(directory, tmp_path / "exported")
    # started again after its last report, it reports its result from the light checkpoint, untrained
    again, _ = _run(cfg, data, tmp_path, "knobs")
    assert again.metrics["status"] == "completed" and again.metrics["epoch"] == 1
    assert again.metrics["val/macro_f1"] == result.metrics["val/macro_f1"]


def test_injected_nan_ends_the_trial_as_diverged(data: TrialData, tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 2})
    result, epochs = _run(cfg, data, tmp_path, "nan", faults=Faults(nan_at_step=2))
    assert result.error is None  # a divergence is a result, not a crash
    assert epochs[-1]["status"] == "diverged" and "non-finite loss" in epochs[-1]["message"]


# Which parameters each strategy freezes is unit-tested (tests/model/test_freezing.py), and every other test
# here trains with everything trainable; these two runs show that ZeRO-3 trains with a frozen vision tower
# and frozen and trainable decoder layers side by side (mllm_except_xattn: of the Mllama only the
# cross-attention layers train), and with a frozen model plus new parameters (LoRA adapters).
@pytest.mark.parametrize("strategy", ["mllm_except_xattn", "lora"])
def test_freezing_trains_under_zero3(strategy: str, data: TrialData, tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "optim.epochs": 1, "freeze": strategy})
    result, epochs = _run(cfg, data, tmp_path, f"freeze-{strategy}")
    assert result.error is None, result.error
    assert epochs[-1]["status"] == "completed" and np.isfinite(epochs[-1]["train_loss"])
    # Both strategies freeze some parameters and train others.
    assert 0 < epochs[-1]["trainable_params"] < epochs[-1]["total_params"]
