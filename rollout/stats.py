"""Statistics for latency judgement: Hodges-Lehmann shift with its CI, a one-sided
Mann-Whitney test against a tolerance, a bootstrap quantile ratio, and the sample size a
decision would need. Latencies are compared on a log scale, so shifts are ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


@dataclass(frozen=True)
class Shift:
    """Hodges-Lehmann estimate of ``y - x`` and its distribution-free confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float


def hodges_lehmann(x: ArrayLike, y: ArrayLike, confidence: float = 0.95) -> Shift:
    """Two-sample Hodges-Lehmann shift of ``y`` over ``x`` with Moses' confidence interval.

    The estimate is the median of all ``y_j - x_i``; the interval takes the order statistics
    of those differences at the ranks given by the Mann-Whitney U distribution (normal
    approximation with continuity correction), as in Hollander & Wolfe, ch. 4.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("both samples need at least one value")
    diffs = np.sort((b[None, :] - a[:, None]).ravel())
    estimate = float(np.median(diffs))
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    c = math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12) - 0.5)
    c = max(c, 0)
    low, high = diffs[c], diffs[len(diffs) - 1 - c]
    return Shift(estimate, float(low), float(high), confidence)


def mann_whitney_greater(x: ArrayLike, y: ArrayLike, margin: float = 0.0) -> float:
    """One-sided p-value that ``y`` exceeds ``x + margin`` (scipy's Mann-Whitney U test)."""
    shifted = np.asarray(x, dtype=float) + margin
    return float(stats.mannwhitneyu(np.asarray(y, dtype=float), shifted,
                                    alternative="greater").pvalue)


def quantile_ratio_ci(x: ArrayLike, y: ArrayLike, quantile: float,
                      confidence: float, *, paired: bool, seed: int = 0,
                      resamples: int = 2000) -> tuple[float, float, float]:
    """Ratio of the ``quantile`` of ``y`` to that of ``x`` with a percentile bootstrap CI."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    ratio = float(np.quantile(b, quantile) / np.quantile(a, quantile))

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        out: np.ndarray = np.quantile(v, quantile, axis=axis) / np.quantile(u, quantile,
                                                                             axis=axis)
        return out

    boot = stats.bootstrap((a, b), stat, paired=paired, vectorized=True,
                           confidence_level=confidence, n_resamples=resamples,
                           method="percentile", rng=np.random.default_rng(seed))
    return ratio, float(boot.confidence_interval.low), float(boot.confidence_interval.high)


def samples_needed(x: ArrayLike, y: ArrayLike, effect: float, alpha: float,
                   power: float = 0.8) -> int | None:
    """Per-path samples for a one-sided rank test to detect ``effect`` (on this scale) with
    ``power``: the normal-theory size divided by the Mann-Whitney efficiency 3/π."""
    if effect == 0:
        return None
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    sd = float(np.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)) if min(
        len(a), len(b)) > 1 else 0.0
    if sd == 0:
        return None
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    n = 2 * (z * sd / effect) ** 2 / (3 / math.pi)
    return max(2, math.ceil(float(n)))
