"""What a design can detect: the Holm-adjusted floor of each test, checked by hand."""

from __future__ import annotations

import math

import pytest

from mdf_search.report.power import design_power, min_pairs


def test_sign_flip_floor_after_holm() -> None:
    three = design_power(3, 3)  # 3 * 2 / 2**3
    assert three.sign_flip_min_p == pytest.approx(0.75) and not three.sign_flip_reaches
    seven = design_power(7, 3)  # 3 * 2 / 128 = 0.047
    assert seven.sign_flip_min_p == pytest.approx(6 / 128) and seven.sign_flip_reaches
    assert design_power(2, 4).sign_flip_min_p == 1.0  # capped
    assert min_pairs(3) == 7 and min_pairs(1) == 6 and min_pairs(6) == 8


def test_t_test_needs_two_seeds_and_warnings_say_which_test_is_left() -> None:
    assert design_power(2, 3).t_test_reaches and not design_power(1, 3).t_test_reaches
    (only_t,) = design_power(3, 3).warnings()
    assert "sign-flip test cannot reach α=0.05" in only_t and "needs 7 seeds" in only_t
    assert "paired t-test alone" in only_t and "adequate" not in only_t
    (nothing,) = design_power(1, 2).warnings()
    assert (
        "no seed-level comparison can reach α=0.05" in nothing and ">= 7 disagreeing test cases" in nothing
    )  # 2 * 2 / 2**7 <= 0.05
    assert design_power(8, 3).warnings() == []
    assert design_power(5, 0).warnings() == [] and math.isnan(design_power(5, 0).sign_flip_min_p)
    assert design_power(5, 0).describe() == ["no baseline arm to compare with: no test is run"]
    with pytest.raises(ValueError, match="n_seeds >= 0"):
        design_power(-1, 2)
