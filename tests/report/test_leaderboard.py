"""The static leaderboard: formats, filters, group-by numbers checked by hand, and exit codes."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from mdf_search.cli.results import leaderboard_command
from mdf_search.report.experiment import load_experiment
from mdf_search.report.leaderboard import leaderboard_frame, render_text, rich_table
from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.results.schema import PHASE_COLUMNS

VALUES = {
    "fusion.levels=none": [(0, "completed", 0.5), (1, "completed", 0.6), (2, "completed", 0.7)],
    "fusion.levels=4": [
        (0, "completed", 0.8),
        (1, "completed", 0.9),
        (2, "diverged", 0.1),
        (3, "error", None),
    ],
}


def test_top_sorted_by_the_spec_metric_with_params(hand_experiment: Callable[..., Path]) -> None:
    exp = load_experiment(str(hand_experiment(VALUES)))
    board = leaderboard_frame(exp, top=3)
    assert board.frame["val/macro_f1"].to_list() == [0.9, 0.8, 0.7]
    assert board.frame["rank"].to_list() == [1, 2, 3] and "val/accuracy" in board.frame.columns
    by_acc = leaderboard_frame(exp, top=10, by="val/accuracy").frame
    assert by_acc["val/accuracy"].to_list()[:2] == pytest.approx([0.91, 0.81])


def test_group_by_arm_collapses_completed_seeds_into_mean_and_t_interval(
    hand_experiment: Callable[..., Path],
) -> None:
    exp = load_experiment(str(hand_experiment(VALUES)))
    frame = leaderboard_frame(exp, group_by="arm").frame
    rows = {r["arm"]: r for r in frame.iter_rows(named=True)}
    none = rows["fusion.levels=none"]
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert (
        none["n"] == none["trials"] == 3
        and none["mean"] == pytest.approx(0.6)
        and none["sd"] == pytest.approx(0.1)
    )
    assert none["t_ci95_lo"] == pytest.approx(0.6 - half) and none["t_ci95_hi"] == pytest.approx(0.6 + half)
    four = rows["fusion.levels=4"]  # the diverged value (0.1) and the error are not seeds' results
    assert four["n"] == 2 and four["mean"] == pytest.approx(0.85) and four["best"] == pytest.approx(0.9)
    assert frame["arm"].to_list() == ["fusion.levels=4", "fusion.levels=none"]


def test_where_filters_before_ranking(hand_experiment: Callable[..., Path]) -> None:
    exp = load_experiment(str(hand_experiment(VALUES)))
    board = leaderboard_frame(exp, where='status == "completed" and fusion.levels == "none"')
    assert board.frame["val/macro_f1"].to_list() == [0.7, 0.6, 0.5]


@pytest.mark.parametrize("fmt", ["csv", "json", "markdown", "table"])
def test_formats(hand_experiment: Callable[..., Path], capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    root = hand_experiment(VALUES)
    assert (
        leaderboard_command(str(root), top=2, by=None, where=None, group_by=None, fmt=fmt, watch=False) == 0
    )
    out = capsys.readouterr().out
    if fmt == "csv":
        assert out.splitlines()[0].startswith("rank,trial_id,arm,status,seed,val/macro_f1")
        assert len(out.splitlines()) == 3
    elif fmt == "json":
        rows = json.loads(out)
        assert [r["val/macro_f1"] for r in rows] == [0.9, 0.8]
    elif fmt == "markdown":
        assert "| rank | trial\\_id | arm |" in out and "fusion.levels=4" in out  # data escaped: `_` too
    else:
        assert "val/macro_f1" in out and "0.9000" in out


def test_errors_exit_2(
    hand_experiment: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = hand_experiment(VALUES)
    assert leaderboard_command(str(tmp_path / "missing"), 5, None, None, None, "table", False) == 2
    assert "no such experiment directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert leaderboard_command(str(tmp_path / "empty"), 5, None, None, None, "table", False) == 2
    assert "no trial results yet" in capsys.readouterr().err
    assert leaderboard_command(str(root), 5, None, "fusion.level == 1", None, "table", False) == 2
    assert "did you mean 'fusion.levels'" in capsys.readouterr().err
    assert leaderboard_command(str(root), 5, "val/nope", None, None, "table", False) == 2
    assert leaderboard_command(str(root), 5, None, None, None, "xml", False) == 2
    assert leaderboard_command(str(root), 5, None, None, "nope", "table", False) == 2


def test_group_by_arm_averages_the_validation_selected_trial_of_each_seed(
    hand_experiment: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sampler design: two trials per (arm, seed) at different nuisance points. The mean is over seeds,
    each entering with the trial that validation selected, never over every trial."""
    arm = "fusion.levels=4"
    values = {
        arm: [
            (0, "completed", 0.80, {"test/accuracy": 0.50}),  # t000: selected for seed 0
            (0, "completed", 0.60, {"test/accuracy": 0.90}),  # t001
            (1, "completed", 0.70, {"test/accuracy": 0.60}),  # t002
            (1, "completed", 0.90, {"test/accuracy": 0.40}),  # t003: selected for seed 1
            (1, "stopped_early", 0.99, {"test/accuracy": 0.99}),  # t004: not a seed's result
        ]
    }
    root = hand_experiment(values)
    exp = load_experiment(str(root))
    board = leaderboard_frame(exp, group_by="arm")
    row = board.frame.row(0, named=True)
    half = 12.706204736174707 * math.sqrt(0.005) / math.sqrt(2)
    assert row["n"] == 2 and row["trials"] == 4  # n counts seeds, not the four completed trials
    assert row["mean"] == pytest.approx(0.85)  # (0.80 + 0.90) / 2; over every trial it would be 0.75
    assert row["t_ci95_lo"] == pytest.approx(0.85 - half) and row["best"] == pytest.approx(0.90)
    assert any(n.startswith("n = seeds: each (arm, seed) enters once") for n in board.notes)

    test = leaderboard_frame(exp, by="test/accuracy", group_by="arm").frame.row(0, named=True)
    assert test["mean"] == pytest.approx(0.45)  # the selected trials' 0.50 and 0.40, not 0.60 over all
    assert test["best"] == pytest.approx(0.40)  # seed 1's selected trial has the best validation score

    # where filters the candidates before validation selects: without t003, seed 1 selects t002
    narrowed = leaderboard_frame(exp, where='trial_id != "t003"', group_by="arm").frame.row(0, named=True)
    assert narrowed["n"] == 2 and narrowed["mean"] == pytest.approx(0.75)

    assert leaderboard_command(str(root), 5, None, None, "arm", "table", False) == 0
    assert "n = seeds" in capsys.readouterr().out


def test_by_phases_shows_the_median_phase_times_per_arm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synthetic_experiment(tmp_path / "exp", failures=True)
    exp = load_experiment(str(root))
    board = leaderboard_frame(exp, by="phases")
    frame = board.frame
    assert frame.columns == ["rank", "arm", "trials", "wall_s", *PHASE_COLUMNS, "startup_s", "train_share"]
    trials = exp.trials
    for row in frame.iter_rows(named=True):
        part = trials.filter(trials["arm"] == row["arm"])
        assert row["trials"] == part.height  # every status: a failed trial's time was spent too
        for column in ("wall_s", *PHASE_COLUMNS):
            assert row[column] == pytest.approx(part[column].median())
        shares = part.select(pl.col("train_s").sum() / pl.col("wall_s").sum()).item()
        assert row["train_share"] == pytest.approx(shares)
    assert frame["wall_s"].is_sorted()  # the fastest arm first
    # each trial's phases add up to its wall time (the synthetic writer keeps the rule the writer keeps)
    gap = trials.select((pl.sum_horizontal(*PHASE_COLUMNS) - pl.col("wall_s")).abs().max()).item()
    assert gap < 1e-9
    # grouped by another column, filtered first
    seeds = leaderboard_frame(exp, by="phases", group_by="seed", where='status == "completed"').frame
    assert sorted(seeds["seed"].to_list()) == [0, 1, 2]
    assert seeds["trials"].sum() == trials.filter(trials["status"] == "completed").height
    assert leaderboard_command(str(root), 20, "phases", None, None, "table", False) == 0
    assert "where the time goes" in capsys.readouterr().out


def test_ranking_by_a_cost_puts_the_cheapest_first_with_the_phases(tmp_path: Path) -> None:
    exp = load_experiment(str(synthetic_experiment(tmp_path / "exp")))
    board = leaderboard_frame(exp, top=5, by="train_s")
    assert board.frame["train_s"].is_sorted() and board.frame["train_s"][0] == exp.trials["train_s"].min()
    assert {"wall_s", "launch_s", "ckpt_s", "other_s", exp.metric} <= set(board.frame.columns)
    assert "cheapest first" in board.title


def test_by_phases_on_an_experiment_without_phase_times(hand_experiment: Callable[..., Path]) -> None:
    board = leaderboard_frame(load_experiment(str(hand_experiment(VALUES))), by="phases")
    assert board.frame["trials"].to_list() == [0, 0] and board.frame["wall_s"].null_count() == 2
    assert any("no phase times recorded" in n for n in board.notes)


def test_a_non_finite_metric_ranks_last_is_counted_and_never_selected(
    hand_experiment: Callable[..., Path],
) -> None:
    values = {
        "fusion.levels=none": [(0, "completed", math.inf), (1, "completed", 0.6)],
        "fusion.levels=4": [(0, "completed", 0.8), (1, "completed", -math.inf), (2, "completed", math.nan)],
    }
    exp = load_experiment(str(hand_experiment(values)))
    board = leaderboard_frame(exp, top=10)
    assert board.frame["trial_id"].to_list()[:2] == ["t002", "t001"]  # 0.8, 0.6; then the three invalid
    assert sorted(board.frame["trial_id"].to_list()[2:]) == ["t000", "t003", "t004"]
    [note] = [n for n in board.notes if "non-finite" in n]
    assert note.startswith("3 trials with a non-finite val/macro_f1") and "ranked last" in note
    assert set(exp.selected()["trial_id"].to_list()) == {"t001", "t002"}
    grouped = leaderboard_frame(exp, group_by="arm").frame
    assert grouped["n"].to_list() == [1, 1] and grouped["mean"].to_list() == [0.8, 0.6]
    assert exp.ok()["trial_id"].to_list() == ["t001", "t002"]


def test_markup_and_escape_codes_in_data_print_as_text(tmp_path: Path) -> None:
    hostile = "[/][link=https://example.invalid]x[/link]\x1b[2J"
    root = synthetic_experiment(
        tmp_path / "h", seeds=(0,), only_arms=2, epochs=1, predictions=False, arm_names=(hostile, "[bold]b")
    )
    board = leaderboard_frame(load_experiment(str(root)))
    board.notes.append(f"note on {hostile}")
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=300).print(rich_table(board))
    out = buf.getvalue()
    assert "[/][link=https://example.invalid]x[/link]\\x1b[2J" in out and "[bold]b" in out
    assert "\x1b[2J" not in out and "\x1b]8;" not in out  # no screen clear, no hyperlink escape
    markdown = render_text(board, "markdown")
    assert "\\[/\\]\\[link=https://example.invalid\\]x\\[/link\\]\\\\x1b\\[2J" in markdown
    csv = render_text(replace(board, frame=board.frame.with_columns(pl.lit("=1+1").alias("arm"))), "csv")
    assert ",'=1+1," in csv


@dataclass(frozen=True)
class _PricedBudget:
    """A recorded budget with ``price_per_gpu_hour`` (what arms.json records once it carries the price)."""

    price_per_gpu_hour: float
    epochs: int | None = 2
    trials: int | None = None
    trials_per_arm: int | None = None
    max_wall_time_s: float | None = None
    max_gpu_hours: float | None = None


def _priced(tmp_path: Path, price: float) -> Any:
    exp = load_experiment(str(synthetic_experiment(tmp_path / "exp")))
    assert exp.spec is not None
    trials = exp.trials.with_columns(pl.lit(0.5).alias("gpu_hours"))
    return replace(exp, spec=replace(exp.spec, budget=_PricedBudget(price)), trials=trials, _cache={})


def test_a_price_per_gpu_hour_adds_a_cost_column_and_a_total(tmp_path: Path) -> None:
    exp = _priced(tmp_path, 2.0)
    board = leaderboard_frame(exp, top=3)
    assert board.frame["cost"].to_list() == [1.0, 1.0, 1.0]  # 0.5 GPU-hours x 2.0
    total = 0.5 * exp.trials.height
    (note,) = [n for n in board.notes if n.startswith("cost = gpu_hours")]
    assert f"{total:.3f} GPU-hours, cost {2 * total:.2f}" in note and "2 per GPU-hour" in note
    for grouped in (leaderboard_frame(exp, group_by="arm"), leaderboard_frame(exp, by="phases")):
        assert any(n.startswith("cost = gpu_hours") for n in grouped.notes)
        assert "cost" not in grouped.frame.columns
    assert "cost" in render_text(board, "csv").splitlines()[0]


def test_without_a_price_there_is_no_cost(tmp_path: Path) -> None:
    exp = load_experiment(str(synthetic_experiment(tmp_path / "exp")))
    board = leaderboard_frame(exp, top=3)
    assert "cost" not in board.frame.columns and not any("price_per_gpu_hour" in n for n in board.notes)


def test_the_reports_cost_section_prices_each_arm(tmp_path: Path) -> None:
    from mdf_search.report.document import Section, TableBlock, d
    from mdf_search.report.review import price_block

    exp = _priced(tmp_path, 3.0)
    sec = Section("cost", anchor="cost")
    price_block(exp, sec)
    (table,) = [b for b in sec.blocks if isinstance(b, TableBlock)]
    assert table.rows[-1][0] == "all" and table.rows[-1][3] == f"{0.5 * exp.trials.height * 3:.2f}"
    assert {r[0] for r in table.rows[:-1]} == {d(a) for a in exp.trials["arm"]}  # cells are marked data
    empty = Section("cost", anchor="cost")
    price_block(replace(exp, spec=None, _cache={}), empty)  # no price: no table
    assert empty.blocks == []
