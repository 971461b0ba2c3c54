"""The live view in plain-line mode (not a terminal): one line per event with counts and the best."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from mdf_search.report.live import LiveLeaderboard
from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.search.space import load_spec


def test_plain_lines_show_status_counts_budget_and_best(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "live", seeds=(0, 1), running=1)
    spec = load_spec(root / "spec.yaml")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=400)
    with LiveLeaderboard(str(root), spec, console=console) as view:
        view.on_event("result", {"trial_id": "t00007", "arm": "a", "epoch": 1, "val/macro_f1": 0.5})
        view.on_event("error", {"trial_id": "t00001", "arm": "b", "message": "Traceback\nValueError: boom"})
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("sweep live: 8 trials")
    assert "t00007 result epoch 1 a val/macro_f1=0.5000" in lines[1]
    assert "t00001 error b ValueError: boom" in lines[2]
    for part in (
        "7/8 trials, 1 left",
        "running 1",
        "completed",
        "diverged 1",
        "error 1",
        "best val/macro_f1=",
    ):
        assert part in lines[-1]
    assert view.best() is not None and view.counts()["running"] == 1


def test_terminal_mode_renders_a_table(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "live2", seeds=(0,))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    with LiveLeaderboard(str(root), load_spec(root / "spec.yaml"), console=console) as view:
        view.on_event("completed", {"trial_id": "t00000", "arm": "x"})
    assert "top 10 by val/macro_f1" in buf.getvalue()
