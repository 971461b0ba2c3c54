"""Statistics on hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mdf_search.report import stats


def test_t_interval_matches_the_hand_computed_value() -> None:
    lo, hi = stats.t_interval([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert lo == pytest.approx(0.6 - half) and hi == pytest.approx(0.6 + half)
    assert all(math.isnan(v) for v in stats.t_interval([0.5]))


def test_bootstrap_ci_contains_the_mean_and_is_reproducible() -> None:
    x = np.random.default_rng(1).normal(0.6, 0.05, size=8)
    lo, hi = stats.bootstrap_ci(x)
    assert lo < x.mean() < hi and (lo, hi) == stats.bootstrap_ci(x)
    assert stats.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([1.0, 2.0, 3.0], 2 / 8),  # only all-plus and all-minus reach |mean| = 2
        ([0.1, 0.1], 2 / 4),
        ([1.0, -1.0], 1.0),  # every pattern's |mean| >= 0
        # |d| = 3, 1, 1, 2 (total 7); |sum| >= 5 iff the flipped magnitudes sum to <= 1 or >= 6:
        # {}, {1}, {1'} and their complements -> 6 of 16 patterns
        ([3.0, 1.0, -1.0, 2.0], 6 / 16),
        ([0.0, 0.0], 1.0),
    ],
)
def test_permutation_test_exact_p_values(diffs: list[float], expected: float) -> None:
    assert stats.paired_permutation_test(diffs) == pytest.approx(expected)


def test_min_attainable_p() -> None:
    assert stats.min_attainable_p(3) == 0.25 and stats.min_attainable_p(5) == 2 / 32


def test_holm_on_a_known_example() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.2, float("nan"), 0.9])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.9)


def test_effect_size_and_relative_change() -> None:
    assert stats.paired_effect_size([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert math.isnan(stats.paired_effect_size([1.0]))
    assert stats.relative_change(0.55, 0.5) == pytest.approx(0.1)
    summary = stats.summarize([0.5, 0.6, 0.7])
    assert summary.n == 3 and summary.sd == pytest.approx(0.1) and summary.t_lo < 0.6 < summary.t_hi


def test_paired_t_test_matches_scipy_and_is_undefined_without_spread() -> None:
    from scipy import stats as sps

    diffs = [0.02, 0.05, -0.01, 0.04]
    assert stats.paired_t_test(diffs) == pytest.approx(sps.ttest_1samp(diffs, 0.0).pvalue)
    # [1, 2, 3]: t = 2 / (1 / sqrt 3) = 3.4641 on 2 df -> two-sided p = 0.0742
    assert stats.paired_t_test([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-4)
    assert math.isnan(stats.paired_t_test([0.1]))
    assert math.isnan(stats.paired_t_test([0.1, 0.1, 0.1]))  # t = ±inf: reported, not tested


def test_ci_coverage_t_holds_its_level_and_the_bootstrap_undercovers() -> None:
    cover = stats.ci_coverage((2, 3), reps=2000, n_boot=400, seed=0)
    for n, (t_cov, _) in cover.items():
        assert abs(t_cov - 0.95) < 0.02, (n, t_cov)  # Monte Carlo sd ~0.005
    assert abs(cover[2][1] - 0.5) < 0.04  # percentile bootstrap of 2 values = [min, max]: P(0 inside) = 1/2
    assert cover[3][1] < 0.8
    assert stats.ci_coverage((2,), reps=200, n_boot=50, seed=3) == stats.ci_coverage(
        (2,), reps=200, n_boot=50, seed=3
    )
    with pytest.raises(ValueError, match="n >= 2"):
        stats.ci_coverage((1,))


def test_effect_size_is_undefined_when_every_difference_is_the_same() -> None:
    # 0.444... three times: sd is rounding noise, not a spread (it printed d_z = 6.5e15 before)
    diffs = [1.0 - 0.5555555555555556] * 3
    assert math.isnan(stats.paired_effect_size(diffs))
    assert stats.paired_effect_size([0.1, 0.2, 0.3]) == pytest.approx(2.0)
