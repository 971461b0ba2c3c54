"""Validation selects, test only reports: one trial per (arm, seed), and every number shown for it is
that trial's. Also: ties at the majority-class floor, the overfitting warning, AUROC columns, and no
machine path in a report."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mdf_search.model.arch import TYPE_CLASSES
from mdf_search.report.ablation import write_report
from mdf_search.report.compare import compare
from mdf_search.report.document import plain
from mdf_search.report.experiment import load_experiment
from mdf_search.report.leaderboard import leaderboard_frame
from mdf_search.report.review import gap_warnings
from mdf_search.report.synthetic import prediction_table
from mdf_search.results.store import ResultsStore

BASE = "fusion.levels=none"
FOUR = "fusion.levels=4"
# Seed 0 of FOUR ran twice (a sampler design's nuisance points): A has the best validation score and the
# worse test score, B the reverse. Trials are numbered in order: t000, t001 (baseline), t002 = A, t003 = B,
# t004 = C (seed 1).
A = {
    "val/accuracy": 0.70,
    "test/accuracy": 0.60,
    "test/macro_f1": 0.55,
    "val/auroc": 0.81,
    "test/auroc": 0.71,
}
B = {
    "val/accuracy": 0.90,
    "test/accuracy": 0.95,
    "test/macro_f1": 0.93,
    "val/auroc": 0.97,
    "test/auroc": 0.99,
}
C = {"test/accuracy": 0.70, "test/macro_f1": 0.66, "val/auroc": 0.80, "test/auroc": 0.75}
BASE_TEST = {"test/accuracy": 0.50, "test/macro_f1": 0.45, "val/auroc": 0.6, "test/auroc": 0.55}
VALUES: dict[str, list[tuple[Any, ...]]] = {
    BASE: [(0, "completed", 0.50, BASE_TEST), (1, "completed", 0.60, BASE_TEST)],
    FOUR: [(0, "completed", 0.80, A), (0, "completed", 0.70, B), (1, "completed", 0.75, C)],
}


def _rendered(md: str) -> str:
    """report.md as a reader sees it: the backslash escapes that make data inert resolved."""
    return re.sub(r"\\(.)", r"\1", md)


def _table(out: Path, name: str) -> list[dict[str, str]]:
    with (out / "tables" / f"{name}.csv").open() as handle:
        return list(csv.DictReader(handle))


def _predictions(root: Path, trial_id: str, right: int, seed: int = 0, n: int = 40) -> None:
    """Test predictions with ``right`` of ``n`` images correct (and val rows that use every class)."""
    y = np.arange(n) % len(TYPE_CLASSES)
    test = np.where(np.arange(n) < right, y, (y + 1) % len(TYPE_CLASSES))
    rng = np.random.default_rng(seed)
    table = prediction_table("val", 2, y, rng.permutation(y))
    import pyarrow as pa

    ResultsStore(str(root)).write_predictions(
        trial_id, 1, pa.concat_tables([table, prediction_table("test", 2, y, test)])
    )


def test_every_column_of_an_arm_seed_comes_from_the_trial_validation_selected(
    hand_experiment: Callable[..., Path], tmp_path: Path
) -> None:
    root = hand_experiment(VALUES)
    for trial_id, right in (("t000", 20), ("t001", 20), ("t002", 24), ("t003", 40), ("t004", 28)):
        _predictions(root, trial_id, right)
    exp = load_experiment(str(root))
    chosen = exp.selected()
    assert chosen.filter(chosen["arm"] == FOUR)["trial_id"].to_list() == ["t002", "t004"]
    per_seed = {
        (r["arm"], r["seed"]): r["value"] for r in exp.per_seed("test/accuracy").iter_rows(named=True)
    }
    assert per_seed[(FOUR, 0)] == pytest.approx(0.60)  # trial A's test score, not B's 0.95

    out = tmp_path / "out"
    write_report(str(root), str(out))
    md = (out / "report.md").read_text()
    assert "this section failed" not in md
    paper = {row["model"]: row for row in _table(out, "paper")}
    four = paper[f"MDF: {FOUR}"]
    assert four["accuracy"].startswith("0.650 ")  # mean of A (0.60) and C (0.70); B's 0.95 never enters
    assert four["macro f1"].startswith("0.605 ") and four["auroc"].startswith("0.730 ")
    main = {row["arm"]: row for row in _table(out, "main")}
    assert main[FOUR]["val/accuracy mean ± sd"].startswith("0.730 ")  # A's 0.70 and C's 0.76, not B's 0.90
    assert main[FOUR]["val/auroc mean ± sd"].startswith("0.805 ")
    assert "val/accuracy 95 % Student-t CI" in main[FOUR]

    images = compare(exp, n_boot=200).images[FOUR]  # A's predictions (24 of 40 right), not B's (40)
    assert images.accuracy.diff == pytest.approx(((24 - 20) / 40 + (28 - 20) / 40) / 2)
    assert images.pairs == 80 and images.seeds == 2

    grouped = leaderboard_frame(exp, by="test/accuracy", group_by="arm").frame
    best = {r["arm"]: r["best"] for r in grouped.iter_rows(named=True)}
    assert best[FOUR] == pytest.approx(0.60)  # the validation-best trial's test score
    notes = leaderboard_frame(exp, by="test/accuracy").notes
    assert any("a test metric: for reading only" in n for n in notes)


def test_ties_and_single_class_predictions_measure_nothing_and_are_not_ranked(
    hand_experiment: Callable[..., Path], tmp_path: Path
) -> None:
    tied = {
        BASE: [(0, "completed", 0.4), (1, "completed", 0.4)],
        FOUR: [(0, "completed", 0.4), (1, "completed", 0.4)],
    }
    out = tmp_path / "tied_report"  # beside the experiment: a report never goes into the results
    write_report(str(hand_experiment(tied, name="tied")), str(out))
    md = _rendered((out / "report.md").read_text())
    assert "every (arm, seed) has the same val/macro_f1 = 0.4000: the study measured nothing" in md
    assert "design order, not ranked" in md and "no path:" in md and "best arm =" not in md
    assert [r["arm"] for r in _table(out, "main")] == [f"★ {BASE}", FOUR]

    floor = {"val/confusion": "[[0, 5, 0], [0, 9, 0], [0, 4, 0]]"}  # every image predicted "acquired"
    flat = {
        BASE: [(0, "completed", 0.30, floor), (1, "completed", 0.31, floor)],
        FOUR: [(0, "completed", 0.33, floor), (1, "completed", 0.32, floor)],
    }
    exp = load_experiment(str(hand_experiment(flat, name="flat")))
    cmp = compare(exp)
    assert cmp.floor is not None and "single class on validation" in cmp.floor
    assert cmp.ranked == [BASE, FOUR] and cmp.floor_arms == [BASE, FOUR]
    assert compare(load_experiment(str(hand_experiment(VALUES, name="fine")))).floor is None


def test_the_overfitting_warning_reads_train_metrics_of_the_kept_epoch(
    hand_experiment: Callable[..., Path],
) -> None:
    root = hand_experiment({BASE: [(0, "completed", 0.62, {"best_epoch": 2})], FOUR: [(0, "completed", 0.5)]})
    store = ResultsStore(str(root))
    base = {"experiment": "hand", "trial_id": "t000", "attempt": 1, "arm": BASE, "status": "running"}
    for epoch, train_acc, val_acc, val_f1 in (
        (1, 0.70, 0.55, 0.50),
        (2, 0.99, 0.63, 0.62),
        (3, 1.0, 0.58, 0.56),
    ):
        store.write_epoch(
            {**base, "epoch": epoch, "train/loss": 1.0 / epoch, "train/accuracy": train_acc,
             "val/accuracy": val_acc, "val/macro_f1": val_f1}
        )  # fmt: skip
    (warning,) = map(plain, gap_warnings(load_experiment(str(root))))  # the text without its data marks
    assert "best trial (t000) at epoch 2: train/accuracy=0.990 vs val/accuracy=0.630" in warning
    assert "train/loss 0.500" in warning

    calm = hand_experiment({BASE: [(0, "completed", 0.62)]}, name="calm")
    ResultsStore(str(calm)).write_epoch(
        {
            **base,
            "epoch": 1,
            "train/loss": 0.4,
            "train/accuracy": 0.66,
            "val/accuracy": 0.63,
            "val/macro_f1": 0.62,
        }
    )
    assert gap_warnings(load_experiment(str(calm))) == []


def test_reports_hold_no_machine_path_and_quote_their_commands(
    hand_experiment: Callable[..., Path], tmp_path: Path
) -> None:
    root = hand_experiment(VALUES, name="paths")
    (root / "optuna.db").write_bytes(b"")
    out = tmp_path / "reports dir" / "paths"
    write_report(str(root), str(out))
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and str(root) not in text, name
    md = (out / "report.md").read_text()
    assert "mdf-search sweep spec.yaml --storage ../rerun --fresh" in md
    assert "mdf-search resume .\n" in md and "mdf-search report . --out '../reports dir/paths'" in md
    assert "optuna-dashboard sqlite:///optuna.db" in md
