"""The search benchmark's counting (trial-epochs to within 1 point of the grid's best arm), its table and
its replay spec (benchmarks/bench_search.py). Unit tier: no Ray, no training."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml

from benchmarks.bench_search import (
    EXTRA_METRICS,
    GRID_SPEC,
    Report,
    Table,
    arm_index,
    epochs_to_target,
    grid_arm_of,
    outcome,
    read_table,
    replay_spec,
    synthetic_table,
    within,
    write_table,
)
from mdf_search.search.designs import arms, trial_params
from mdf_search.search.space import load_spec


def test_epochs_to_target_counts_the_report_that_gets_within_the_tolerance() -> None:
    assert epochs_to_target([0.5, 0.7, 0.985, 0.2], target=1.0, mode="max", tolerance=0.01) is None
    assert epochs_to_target([0.5, 0.7, 0.99, 0.2], target=1.0, mode="max", tolerance=0.01) == 3
    assert epochs_to_target([0.995], target=1.0, mode="max", tolerance=0.01) == 1
    assert epochs_to_target([], target=1.0, mode="max", tolerance=0.01) is None


def test_epochs_to_target_keeps_the_best_so_far_and_skips_nan() -> None:
    # A worse report after the best does not undo it; a NaN report costs its epoch but is no value.
    assert epochs_to_target([0.3, math.nan, 0.95, 0.1], target=0.96, mode="max", tolerance=0.01) == 3
    assert epochs_to_target([math.nan, 0.96], target=0.96, mode="max", tolerance=0.0) == 2


def test_epochs_to_target_under_min() -> None:
    assert epochs_to_target([0.9, 0.5, 0.31, 0.2], target=0.3, mode="min", tolerance=0.01) == 3
    assert epochs_to_target([0.9, 0.5], target=0.3, mode="min", tolerance=0.01) is None


def test_within_is_inclusive_at_the_tolerance() -> None:
    assert within(0.99, 1.0, "max", 0.01)  # 1.0 - 0.99 is 0.010000000000000009 in floating point
    assert not within(0.9899, 1.0, "max", 0.01)
    assert within(1.2, 1.0, "max", 0.0)
    assert within(0.31, 0.3, "min", 0.01) and not within(0.3101, 0.3, "min", 0.01)


def _table() -> Table:
    return Table(
        "val/macro_f1",
        "max",
        {
            ("a", 0): (0.5, 0.6, 0.55),
            ("a", 1): (0.5, 0.7, 0.6),
            ("b", 0): (0.8, 0.9, 0.95),
            ("b", 1): (0.4, 0.5, 0.6),
            ("c", 0): (0.5, 0.5, 0.5),
            ("c", 1): (0.76, 0.77, 0.775),
        },
    )


def test_table_selects_the_best_epoch_and_means_over_seeds() -> None:
    table = _table()
    assert table.grid_cost() == 18
    assert table.epochs == 3 and table.seeds == [0, 1] and table.arms == ["a", "b", "c"]
    assert table.selected("b", 0) == 0.95
    assert table.arm_value("a") == pytest.approx(0.65)
    assert table.best() == ("b", pytest.approx(0.775))
    assert table.arms_within(0.01) == ["b"]
    assert table.arms_within(0.2) == ["a", "b", "c"]


def test_random_order_cost_is_the_mean_over_every_order() -> None:
    """The closed form equals the average, over every order of the six trials, of the trial-epochs each
    order spends (each trial to its last epoch) until a report is within the tolerance."""
    table = _table()
    _, target = table.best()  # 0.775: b/0 at its 1st epoch and c/1 at its 2nd get within 0.01
    costs = []
    for order in itertools.permutations(table.curves.values()):
        reports = [v for curve in order for v in curve]
        cost = epochs_to_target(reports, target, "max", 0.01)
        assert cost is not None
        costs.append(cost)
    expected = table.random_order_cost(0.01)
    assert expected is not None
    assert expected == pytest.approx(sum(costs) / len(costs))
    assert Table("m", "max", {("a", 0): (0.1,)}).random_order_cost(0.0) == 1.0


def test_outcome_counts_trials_arms_and_the_cost() -> None:
    reports = [
        Report("t1", "a", 0, 1, 0.5),
        Report("t2", "b", 0, 1, 0.7),
        Report("t2", "b", 0, 2, 0.9),
        Report("t3", "b", 0, 1, 0.7),
    ]
    result = outcome("tpe", 0, reports, target=0.9, mode="max", tolerance=0.01)
    assert (result.cost, result.trials, result.trial_epochs, result.arms_tried) == (3, 3, 4, 2)
    assert result.best == 0.9


def test_table_round_trips_through_csv(tmp_path: Path) -> None:
    table = _table()
    loss = Table("val/loss", "min", {k: tuple(1 - v for v in c) for k, c in table.curves.items()})
    path = tmp_path / "t.csv"
    write_table([table, loss], path, {"a": {"fusion.levels": "23"}})
    assert read_table(path, "val/macro_f1", "max") == table
    assert read_table(path, "val/loss", "min") == loss
    assert path.read_text().splitlines()[0] == "arm,seed,epoch,val/macro_f1,val/loss,fusion.levels"
    with pytest.raises(ValueError, match="different trials"):
        write_table([table, Table("x", "max", {("a", 0): (0.1,)})], path, {})


def test_read_table_refuses_a_gap_in_the_epochs(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arm,seed,epoch,val/macro_f1\na,0,1,0.5\na,0,3,0.6\n")
    with pytest.raises(ValueError, match="epochs"):
        read_table(path, "val/macro_f1", "max")


def test_the_shipped_table_matches_the_grid_spec() -> None:
    grid = load_spec(GRID_SPEC)
    table_path = GRID_SPEC.parent / "data" / "search_grid.csv"
    read_table(table_path, grid.metric, grid.mode).check_design(grid)
    for metric, mode in EXTRA_METRICS.items():
        read_table(table_path, metric, mode).check_design(grid)
    synthetic_table(grid).check_design(grid)
    short = Table(grid.metric, grid.mode, dict(list(synthetic_table(grid).curves.items())[1:]))
    with pytest.raises(ValueError, match="missing"):
        short.check_design(grid)


def test_every_grid_arm_is_one_point_of_the_replay_space(tmp_path: Path) -> None:
    """The replay's one arm, with the grid's factor values as nuisance values, maps back to exactly the
    grid arm they came from (so the stand-in trainable reports that arm's curve)."""
    grid = load_spec(GRID_SPEC)
    index = arm_index(grid)
    for design in ("tpe", "qmc"):
        spec = replay_spec(GRID_SPEC, design, tmp_path)
        assert spec.design == design and spec.scheduler.type == "asha"
        assert len(arms(spec)) == 1
        assert list(spec.nuisance) == [*grid.scientific, *grid.nuisance]
        assert spec.budget.trials == len(arms(grid)) * len(grid.seeds)
        (only,) = arms(spec)
        for arm in arms(grid):
            params = trial_params(spec, only, 0, dict(arm.params))
            assert grid_arm_of(index, params) == arm.id
    loss = replay_spec(GRID_SPEC, "tpe", tmp_path, objective=("val/loss", "min"))
    assert (loss.metric, loss.mode) == ("val/loss", "min")
    with pytest.raises(KeyError):
        grid_arm_of(index, {"fusion.levels": "1234", "fusion.scale_init": 1.0, "optim.lr": 1e-3})


def test_replay_refuses_a_grid_with_a_tuned_nuisance_range(tmp_path: Path) -> None:
    raw = yaml.safe_load(GRID_SPEC.read_text())
    raw["nuisance"]["optim.lr_fusion_mult"] = {"low": 1.0, "high": 10.0}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="pin it"):
        replay_spec(path, "tpe", tmp_path)
