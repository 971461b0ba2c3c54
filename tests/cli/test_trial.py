"""``mdf-search train``'s closing table: the metrics of the epoch validation selected, not the last one's."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from mdf_search import cli


def _printed(metrics: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=300, force_terminal=False))
    cli._print_trial_metrics(metrics)
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
