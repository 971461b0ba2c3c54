"""Small, exact statistics for comparing arms over a handful of seeds (numpy + scipy, no state).

- ``t_interval``: the mean's 95 % Student-t interval: every interval over seeds the reports show.
- ``bootstrap_ci``: percentile bootstrap of the mean. Kept for comparison only: over 2-5 values it
  undercovers (about 50 % at n = 2 against a nominal 95 %); ``ci_coverage`` measures by how much.
- ``paired_permutation_test``: the exact two-sided sign-flip test of paired differences (all ``2**n``
  sign patterns for n <= 16; a seeded Monte Carlo beyond). With 2-5 seeds the smallest attainable p is
  ``2 / 2**n``, which the report says, instead of a normal approximation that would pretend otherwise.
- ``paired_t_test``: the two-sided paired t-test of the same differences (assumes they are normal).
- ``holm``: Holm's step-down adjustment across arms.
- ``paired_effect_size``: mean difference / sd of the differences (paired Cohen's d, "d_z").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

EXACT_MAX_N = 16
NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    """Mean ± sd of one sample with its 95 % Student-t interval."""

    n: int
    mean: float
    sd: float
    t_lo: float
    t_hi: float


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; (nan, nan) with fewer than 2 values."""
    x = _array(values)
    if x.size < 2:
        return NAN, NAN
    mean, sem = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(sps.t.ppf(0.5 + level / 2, df=x.size - 1)) * sem
    return mean - half, mean + half


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) with fewer than 2 values."""
    x = _array(values)
    if x.size < 2:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    x = _array(values)
    if x.size == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    sd = float(x.std(ddof=1)) if x.size > 1 else NAN
    t_lo, t_hi = t_interval(x)
    return Summary(int(x.size), float(x.mean()), sd, t_lo, t_hi)


def paired_permutation_test(
    differences: Sequence[float] | np.ndarray, n_resamples: int = 100_000, seed: int = 0
) -> float:
    """Two-sided p-value of H0 "the paired differences are symmetric about 0" (sign-flip test).

    Exact over all ``2**n`` sign patterns for ``n <= 16``: p = #{patterns with |mean| >= |observed|} /
    2**n. nan with no differences; 1.0 when every difference is 0.
    """
    d = _array(differences)
    if d.size == 0:
        return NAN
    observed = abs(float(d.mean()))
    tol = 1e-12 * max(1.0, observed)
    if d.size <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(n_resamples, d.size))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= observed - tol))


def paired_t_test(differences: Sequence[float] | np.ndarray) -> float:
    """Two-sided p of the paired t-test (H0: mean difference 0); nan with fewer than 2 differences, and
    nan when they do not vary (t is undefined: 0/0 or ±inf; such a comparison is reported, not tested)."""
    d = _array(differences)
    if d.size < 2:
        return NAN
    sd = float(d.std(ddof=1))
    if not sd > 1e-12 * max(1.0, float(np.abs(d).max())):
        return NAN
    t = float(d.mean()) / (sd / math.sqrt(d.size))
    return float(2 * sps.t.sf(abs(t), df=d.size - 1))


def min_attainable_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with ``n`` pairs."""
    return 2.0 / 2**n if n > 0 else NAN


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given; nan stays nan and does not count as a test)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, NAN)
    idx = [i for i in range(p.size) if np.isfinite(p[i])]
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def paired_effect_size(differences: Sequence[float] | np.ndarray) -> float:
    """Paired Cohen's d (d_z): mean difference / sd of differences; nan when undefined."""
    d = _array(differences)
    if d.size < 2:
        return NAN
    sd = float(d.std(ddof=1))
    # Identical differences leave only rounding noise in sd (1e-17): the ratio would be meaningless.
    return float(d.mean()) / sd if sd > 1e-12 * max(1.0, abs(float(d.mean()))) else NAN


def relative_change(variant: float, baseline: float) -> float:
    """(variant − baseline) / baseline, as the paper states improvements; nan for a zero baseline."""
    return (variant - baseline) / baseline if baseline else NAN


def ci_coverage(
    ns: Sequence[int] = (2, 3, 5, 10),
    reps: int = 2000,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[int, tuple[float, float]]:
    """Simulated coverage of the mean's Student-t interval and percentile-bootstrap interval.

    For each ``n``: ``reps`` samples of ``n`` standard-normal values (true mean 0); returns
    ``{n: (t coverage, bootstrap coverage)}``, the fraction of intervals that contain 0. Seeded numpy,
    so the numbers are reproducible; the Monte Carlo error of each is about sqrt(p (1 - p) / reps).
    """
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    out: dict[int, tuple[float, float]] = {}
    for n in ns:
        if n < 2:
            raise ValueError(f"coverage needs n >= 2 values per sample, but got n={n}")
        x = rng.normal(0.0, 1.0, size=(reps, n))
        mean, sem = x.mean(axis=1), x.std(axis=1, ddof=1) / math.sqrt(n)
        half = float(sps.t.ppf(1 - alpha, df=n - 1)) * sem
        t_hits = np.abs(mean) <= half
        boot_hits = np.empty(reps, dtype=bool)
        chunk = max(1, 2_000_000 // (n_boot * n))
        for start in range(0, reps, chunk):
            part = x[start : start + chunk]
            idx = rng.integers(0, n, size=(part.shape[0], n_boot, n))
            means = np.take_along_axis(part[:, None, :], idx, axis=2).mean(axis=2)
            lo, hi = np.quantile(means, alpha, axis=1), np.quantile(means, 1 - alpha, axis=1)
            boot_hits[start : start + chunk] = (lo <= 0.0) & (hi >= 0.0)
        out[int(n)] = (float(t_hits.mean()), float(boot_hits.mean()))
    return out
