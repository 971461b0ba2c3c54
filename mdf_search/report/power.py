"""What a design can detect, said before it runs (``mdf-search validate``: ``search.validate.spec_power``)
and again in the report.

A comparison of an arm with the baseline can only be significant if its test can produce a p below α
after Holm's correction across the arms compared. That depends on the design alone:

- **sign-flip** (exact, over shared seeds): the smallest two-sided p with ``n`` pairs is ``2 / 2**n``;
  Holm multiplies the smallest p by the number of arms ``m``, so the best reachable is
  ``min(1, m * 2 / 2**n)``. Three seeds and three arms: 0.75, never significant.
- **paired t-test** (over shared seeds): its p goes to 0 as the differences agree, so it can reach α
  with ``n >= 2`` pairs. It buys that with an assumption (normal differences) that 2-5 seeds cannot
  check; a claim that rests on it alone says so.
- **test images** (paired, over cases, from the predictions table): the criterion used here is the
  exact one for the simplest image-level test, McNemar's sign test on discordant cases: it needs at
  least ``k`` cases on which the two arms disagree, all in the same direction, with
  ``m * 2 / 2**k <= α``. That is a floor, not a promise: a real effect needs many more discordant
  cases than ``k``. The paired bootstrap the report runs has a floor of ``1 / (B + 1)`` from its
  resamples and is no more powerful than the exact test on so few cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05


@dataclass(frozen=True)
class Power:
    """Reachability of α for each test, for ``n_seeds`` shared seeds and ``n_arms`` arms vs the baseline."""

    n_seeds: int
    n_arms: int
    alpha: float
    sign_flip_min_p: float  # the smallest Holm-adjusted p the exact sign-flip test can give (nan: no test)
    t_test_reaches: bool  # n >= 2: the paired t-test's p can go below any α
    image_min_cases: int  # discordant test cases (all one way) an image-level test needs to reach α

    @property
    def sign_flip_reaches(self) -> bool:
        return self.n_arms > 0 and math.isfinite(self.sign_flip_min_p) and self.sign_flip_min_p <= self.alpha

    @property
    def seed_level_reaches(self) -> bool:
        return self.n_arms > 0 and (self.sign_flip_reaches or self.t_test_reaches)

    def describe(self) -> list[str]:
        """A heading, then one line per test saying whether it can reach α."""
        if self.n_arms == 0:
            return ["no baseline arm to compare with: no test is run"]
        head = f"{self.n_seeds} shared seed(s), {self.n_arms} arm(s) vs the baseline, α={self.alpha:g}"
        if self.n_seeds < 1:
            sign = "sign-flip (exact, over seeds): no pairs"
        else:
            verdict = "can reach α" if self.sign_flip_reaches else "cannot reach α"
            sign = (
                f"sign-flip (exact, over seeds): smallest p after Holm {self.sign_flip_min_p:.3g}, {verdict}"
            )
        t_text = (
            "paired t-test (over seeds): can reach α, assuming normal differences"
            if self.t_test_reaches
            else "paired t-test (over seeds): needs >= 2 shared seeds, cannot reach α"
        )
        images = (
            f"test images (paired over cases): can reach α only with >= {self.image_min_cases} test cases "
            "on which an arm and the baseline disagree, all one way"
        )
        return [head, sign, t_text, images]

    def warnings(self) -> list[str]:
        """What a reviewer should hear before the study runs (empty when a seed-level test can reach α
        without an assumption)."""
        if self.n_arms == 0:
            return []
        if not self.seed_level_reaches:
            return [
                f"no seed-level comparison can reach α={self.alpha:g} with {self.n_seeds} shared seed(s): "
                "add seeds; until then only the image-level test (predictions on the test images) can "
                f"support a claim, given >= {self.image_min_cases} disagreeing test cases"
            ]
        if not self.sign_flip_reaches:
            needed = min_pairs(self.n_arms, self.alpha)
            return [
                f"the exact sign-flip test cannot reach α={self.alpha:g} with {self.n_seeds} shared seed(s) "
                f"and {self.n_arms} arm(s) (smallest p after Holm {self.sign_flip_min_p:.3g}; it needs "
                f"{needed} seeds): a seed-level claim rests on the paired t-test alone, whose normality "
                f"{self.n_seeds} seeds cannot check"
            ]
        return []


def min_pairs(n_arms: int, alpha: float = ALPHA) -> int:
    """The fewest pairs with which an exact sign test can reach ``alpha`` after Holm over ``n_arms``: the
    smallest k with ``n_arms * 2 / 2**k <= alpha`` (shared seeds for the sign-flip test, discordant
    cases for McNemar's)."""
    k = 1
    while max(n_arms, 1) * 2.0 / 2**k > alpha:
        k += 1
    return k


def design_power(n_seeds: int, n_arms: int, alpha: float = ALPHA) -> Power:
    """Reachability of α for ``n_seeds`` shared seeds and ``n_arms`` arms compared with the baseline."""
    if n_seeds < 0 or n_arms < 0:
        raise ValueError(f"n_seeds >= 0 and n_arms >= 0 must hold, but got ({n_seeds}, {n_arms})")
    sign = min(1.0, n_arms * 2.0 / 2**n_seeds) if n_seeds > 0 and n_arms > 0 else math.nan
    return Power(n_seeds, n_arms, alpha, sign, n_seeds >= 2, min_pairs(n_arms, alpha))
