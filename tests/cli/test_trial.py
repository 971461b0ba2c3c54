"""One trial's commands: ``plan``, ``model-summary``, ``export`` and ``train``'s option checks, and
``train``'s closing table (the metrics of the epoch validation selected, not the last one's)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from mdf_search.cli import trial
from tests.cli.helpers import invoke, plain

ROOT = Path(__file__).resolve().parents[2]


def _printed(metrics: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(trial, "console", Console(file=buf, width=300, force_terminal=False))
    trial._print_trial_metrics(metrics)
    return buf.getvalue()


def test_prints_the_selected_epoch_s_validation_and_test_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    # the last report of a 3-epoch trial whose epoch 2 validation selected: the last epoch's own val/
    # values (and no test/ values) sit beside the selected epoch's under selected/
    report: dict[str, object] = {
        "status": "completed",
        "epoch": 3,
        "val/macro_f1": 0.41,
        "val/accuracy": 0.52,
        "train_loss": 0.11,
        "best_epoch": 2,
        "best_value": 0.63,
        "selected/val/macro_f1": 0.63,
        "selected/val/accuracy": 0.71,
        "selected/test/macro_f1": 0.58,
        "selected/test/accuracy": 0.66,
        "selected/train_loss": 0.27,
        "selected/val/confusion": [[1, 0], [0, 1]],
        "samples_per_s": 12.5,
    }
    out = _printed(report, monkeypatch)
    assert "epoch 2 of 3 was selected on validation by val/macro_f1 (max, marked *)" in out
    cells = [[c.strip() for c in line.split("│")[1:3]] for line in out.splitlines() if line.startswith("│")]
    rows = dict(cells)
    assert rows["val/macro_f1 *"] == "0.6300"  # the study metric, marked, at the selected epoch
    assert rows["val/accuracy"] == "0.7100" and rows["test/accuracy"] == "0.6600"
    assert rows["test/macro_f1"] == "0.5800" and rows["train_loss"] == "0.2700"
    assert "0.4100" not in out and "0.5200" not in out  # the last epoch's own values are not shown
    assert rows["samples_per_s"] == "12.5000" and "val/confusion" not in rows
    assert [k for k, _ in cells][:4] == ["val/macro_f1 *", "val/accuracy", "test/macro_f1", "test/accuracy"]

    named = _printed({**report, "selection_metric": "val/accuracy", "selection_mode": "min"}, monkeypatch)
    assert "by val/accuracy (min, marked *)" in named and "│ val/accuracy *" in named


def test_a_trial_without_a_selected_epoch_shows_no_validation_or_test_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _printed({"status": "diverged", "epoch": 1, "message": "non-finite loss"}, monkeypatch)
    assert "no epoch was selected (1 epoch(s))" in out and "│ val/" not in out and "│ test/" not in out


def test_plan_of_a_shipped_space_fits_and_of_a_tiny_gpu_does_not() -> None:
    result = invoke("plan", str(ROOT / "search_spaces/smoke.yaml"))
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "tiny: 1 GPU(s) x 80 GiB" in out and "fits on 1 x 80 GiB" in out and result.stderr == ""
    result = invoke("plan", "--gpu-mem", "1", "--set", "optim.micro_batch=64")
    assert result.exit_code == 1 and plain(result.stderr).startswith("error: does not fit: needs")


def test_plan_of_the_11b_preset_needs_no_weights_and_lists_the_gpus_each_strategy_needs() -> None:
    result = invoke("plan", "--set", "model.preset=11b", "--set", "freeze=mllm", "--gpus", "2")
    out = plain(result.stdout)
    assert "GPUs of 80 GiB needed (11b, ZeRO-" in out
    assert "full fine-tune" in out and "frozen LLM" in out and "LoRA" in out
    assert result.exit_code in (0, 1) and "model.weights" not in result.output


def test_model_summary_of_the_tiny_preset() -> None:
    result = invoke("model-summary", "--fusion", "13", "--film", "none")
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "MDF-MLLM [tiny]" in out and "fusion wiring" in out and "FiLM: none" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("plan", "--set", "oops"), "--set expects KEY=VALUE, but got 'oops'"),
        (("plan", "--set", "model.preset=huge"), "model.preset: must be one of"),
        (("train", "missing.yaml"), "file not found: missing.yaml"),
    ],
)
def test_a_bad_option_or_config_exits_2_with_one_error(args: tuple[str, ...], says: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert err.startswith("error: ") and err.count("error:") == 1 and says in err
    assert "Traceback" not in result.output and result.stdout == ""


def test_plan_reads_a_trial_yaml(tmp_path: Path) -> None:
    (tmp_path / "trial.yaml").write_text('fusion.levels: "13"\noptim.zero_stage: 2\n')
    result = invoke("plan", str(tmp_path / "trial.yaml"), "--gpus", "2")
    assert result.exit_code == 0, result.output
    assert "2 GPU(s) x 80 GiB, ZeRO-2" in plain(result.stdout)
    (tmp_path / "nested.yaml").write_text("fusion: {levels: 13}\n")
    result = invoke("plan", str(tmp_path / "nested.yaml"))
    assert result.exit_code == 2 and "trial files use flat keys" in plain(result.stderr)
