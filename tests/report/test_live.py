"""The live view in plain-line mode (not a terminal): one line per event with counts and the best; data
shown as text in both modes; no non-finite best; a set-aside part named."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import polars as pl
from rich.console import Console

from mdf_search.report.live import LiveLeaderboard
from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.results.store import ResultsStore
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


HOSTILE = "[/][link=https://example.invalid]x[/link]\x1b[2J"


def _spec(name: str = HOSTILE) -> SimpleNamespace:
    return SimpleNamespace(experiment=name, metric="val/macro_f1", mode="max", budget=SimpleNamespace())


def test_plain_lines_print_markup_and_escape_codes_in_data_as_text(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "h", seeds=(0,), only_arms=2, arm_names=(HOSTILE, "b"))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=400)
    with LiveLeaderboard(str(root), _spec(), console=console) as view:
        view.on_event("error", {"trial_id": HOSTILE, "arm": HOSTILE, "message": f"boom\n{HOSTILE}"})
    out = buf.getvalue()
    assert out.startswith("sweep [/][link=https://example.invalid]x[/link]\\x1b[2J: ")
    assert out.count("[/][link=https://example.invalid]x[/link]\\x1b[2J") >= 4  # name, id, arm, message
    assert "\x1b" not in out


def test_terminal_mode_prints_markup_in_data_as_text(tmp_path: Path) -> None:
    root = synthetic_experiment(
        tmp_path / "h", seeds=(0,), only_arms=2, arm_names=(HOSTILE, "[bold]b"), failures=False
    )
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=300)
    with LiveLeaderboard(str(root), _spec(), console=console) as view:
        view.on_event("completed", {"trial_id": "t00000", "arm": HOSTILE})
    out = buf.getvalue()
    assert "[/][link=https://example.invalid]x[/link]\\x1b[2J" in out and "[bold]b" in out
    assert "\x1b[2J" not in out and "\x1b]8;" not in out


def test_a_non_finite_metric_is_never_best_and_a_bad_part_is_named(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "n", seeds=(0, 1), only_arms=2, failures=False, predictions=False)
    store = ResultsStore(str(root))
    row = store.trials().filter(pl.col("trial_id") == "t00001").row(0, named=True)
    row.pop("written_at")
    store.write_trial({**row, "val/macro_f1": math.inf})
    (root / "trials" / "t00002-a1.parquet").write_bytes(b"")
    buf = io.StringIO()
    with LiveLeaderboard(str(root), _spec("n"), console=Console(file=buf, width=400)) as view:
        best = view.best()
    assert best is not None and math.isfinite(best[0])
    out = buf.getvalue()
    assert "1 with a non-finite val/macro_f1 left out" in out
    assert "warning: " in out and "t00002-a1.parquet" in out and "quarantine" in out
    assert (root / "quarantine" / "trials" / "t00002-a1.parquet").exists()
