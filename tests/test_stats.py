"""Statistical functions against published and independently computed values."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from rollout.judge.stats import (
    hodges_lehmann,
    mann_whitney_greater,
    quantile_ratio_ci,
    samples_needed,
)

# Hollander & Wolfe (1973), p. 69: permeability constants of the human chorioamnion, the
# example of R's wilcox.test documentation: W = 35, one-sided p-value 0.1272.
AT_TERM = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
EARLY = [1.15, 0.88, 0.90, 0.74, 1.21]


def test_mann_whitney_matches_the_published_example() -> None:
    assert mann_whitney_greater(EARLY, AT_TERM) == pytest.approx(0.1272, abs=5e-5)


def test_margin_shifts_the_null() -> None:
    x = list(np.linspace(1, 2, 50))
    assert mann_whitney_greater(x, [v + 0.5 for v in x]) < 0.01
    assert mann_whitney_greater(x, [v + 0.5 for v in x], margin=0.5) > 0.4


def test_hodges_lehmann_estimate_is_the_median_of_pairwise_differences() -> None:
    shift = hodges_lehmann(EARLY, AT_TERM, 0.95)
    brute = statistics.median(b - a for a, b in itertools.product(EARLY, AT_TERM))
    assert shift.estimate == pytest.approx(brute) == pytest.approx(0.305)


def test_hodges_lehmann_interval_uses_mann_whitney_ranks() -> None:
    # Independently: the interval is the set of shifts d not rejected by a two-sided
    # Mann-Whitney test of (at_term - d) against early at 5 % (normal approximation).
    shift = hodges_lehmann(EARLY, AT_TERM, 0.95)
    grid = np.round(np.arange(-1.5, 1.5, 0.005), 3)
    kept = [d for d in grid if sps.mannwhitneyu([v - d for v in AT_TERM], EARLY,
                                                 method="asymptotic",
                                                 use_continuity=True).pvalue >= 0.05]
    assert shift.low == pytest.approx(min(kept), abs=0.06)
    assert shift.high == pytest.approx(max(kept), abs=0.06)
    assert shift.low < shift.estimate < shift.high


def test_hodges_lehmann_recovers_a_known_shift() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 0.2, 300)
    y = x * 1.15 * rng.lognormal(0, 0.01, 300)
    shift = hodges_lehmann(np.log(x), np.log(y), 0.98)
    assert math.exp(shift.low) < 1.15 < math.exp(shift.high)
    assert math.exp(shift.estimate) == pytest.approx(1.15, rel=0.05)


def test_quantile_ratio_bootstrap_covers_the_truth() -> None:
    rng = np.random.default_rng(2)
    x = rng.exponential(1.0, 400)
    ratio, low, high = quantile_ratio_ci(x, x * 2, 0.95, 0.95, paired=True, seed=3)
    assert ratio == pytest.approx(2.0)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)  # paired: exact
    y = rng.exponential(2.0, 400)
    ratio, low, high = quantile_ratio_ci(x, y, 0.5, 0.95, paired=False, seed=3)
    assert low < 2.0 < high


def test_samples_needed_follows_the_normal_theory_size() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 1000)
    y = rng.normal(0, 1, 1000)
    # n = 2 (z_0.98 + z_0.8)^2 / 0.25^2 / (3/π) for sd 1, effect 0.25
    z = sps.norm.ppf(0.98) + sps.norm.ppf(0.8)
    expected = 2 * z**2 / 0.25**2 / (3 / math.pi)
    assert samples_needed(x, y, 0.25, 0.02) == pytest.approx(expected, rel=0.1)
    assert samples_needed(x, y, 0.0, 0.02) is None
