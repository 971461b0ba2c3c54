"""The paired bootstrap over test cases, stratified by seed, on cases whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mdf_search.report.ablation import write_report
from mdf_search.report.compare import compare
from mdf_search.report.experiment import load_experiment
from mdf_search.report.images import paired_case_bootstrap
from mdf_search.report.synthetic import synthetic_experiment


def _pairs(n: int, seeds: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed = np.repeat(np.arange(seeds), n)
    case = np.array([f"c{i // 2}" for i in range(n)] * seeds, dtype=object)
    label = np.array(["a", "b"] * (n * seeds // 2), dtype=object)
    return seed, case, label


def test_identical_predictions_differ_by_nothing() -> None:
    seed, case, label = _pairs(40, seeds=2)
    acc, f1 = paired_case_bootstrap(seed, case, label, label, label, n_boot=300)
    assert (acc.diff, acc.lo, acc.hi, acc.p) == (0.0, 0.0, 0.0, 1.0) and f1.p == 1.0


def test_an_arm_right_where_the_baseline_is_wrong_is_detected() -> None:
    seed, case, label = _pairs(40, seeds=2)
    wrong = np.where(label == "a", "b", "a").astype(object)
    acc, f1 = paired_case_bootstrap(seed, case, label, label, wrong, n_boot=500)
    assert acc.diff == 1.0 and (acc.lo, acc.hi) == (1.0, 1.0) and acc.p == pytest.approx(1 / 501)
    assert f1.diff == 1.0 and f1.p == pytest.approx(1 / 501)


def test_interval_and_p_on_a_moderate_difference_are_reproducible() -> None:
    rng = np.random.default_rng(0)
    seed, case, label = _pairs(200, seeds=3)
    flip = np.where(label == "a", "b", "a").astype(object)
    base = np.where(rng.random(label.size) < 0.30, flip, label)
    arm = np.where(rng.random(label.size) < 0.22, flip, label)
    acc, _ = paired_case_bootstrap(seed, case, label, arm, base, n_boot=1000)
    observed = np.mean(
        [
            (arm[seed == s] == label[seed == s]).mean() - (base[seed == s] == label[seed == s]).mean()
            for s in range(3)
        ]
    )
    assert acc.diff == pytest.approx(observed) and acc.lo < acc.diff < acc.hi
    assert 0 < acc.p < 1 and paired_case_bootstrap(seed, case, label, arm, base, n_boot=1000)[0] == acc
    with pytest.raises(ValueError, match="at least one pair"):
        paired_case_bootstrap([], [], [], [], [])


def test_old_experiments_without_predictions_skip_the_image_test(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "old", predictions=False, failures=False)
    cmp = compare(load_experiment(str(root)))
    assert cmp.images == {} and "predates per-sample predictions" in cmp.image_notes[0]
    write_report(str(root), str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "this section failed" not in md and "comparison over test images is skipped" in md
    assert not (tmp_path / "out" / "tables" / "compare_images.csv").exists()


def test_new_experiments_compare_on_test_images_with_holm(tmp_path: Path) -> None:
    cmp = compare(load_experiment(str(synthetic_experiment(tmp_path / "new", failures=False))), n_boot=300)
    assert len(cmp.images) == 3
    for c in cmp.images.values():
        assert c.seeds == 3 and c.cases == 30 and c.pairs == 180
        assert c.accuracy_p_holm >= c.accuracy.p and not math.isnan(c.macro_f1_p_holm)
