"""Always-valid sequential tests for watching a stage: the false-alarm rate stays at alpha
however often and however long the evidence is looked at.

A fixed-sample test looked at every minute for a day rejects a true hypothesis far more
often than its alpha (each look is another chance). A *mixture sequential probability ratio
test* (mSPRT; Robbins 1970, Johari, Koomen, Pekelis and Walsh, "Always valid inference",
Operations Research 2022) instead tracks a likelihood ratio Λ_n averaged over alternatives;
under the null hypothesis Λ_n is a non-negative supermartingale, so by Ville's inequality
P(Λ_n ≥ 1/α for some n) ≤ α. ``p_n = min(1, 1/Λ_n)``, kept as its running minimum, is an
always-valid p-value: rejecting when it falls to α is valid at any stopping time.

Two tests, both one-sided (only a regression rejects):

- ``latency_test``: the mean of paired log-latency differences ``d = ln new − ln legacy``
  (both paths timed one after the other on the shadow pool) against the gate's tolerance,
  H0: E[d] ≤ ln(1 + max_regression). A half-normal mixture over the excess δ ≥ 0 (scale
  ``TAU``) gives Λ in closed form; σ² is the sample variance, plugged in as Johari et al. do.
- ``mismatch_test``: the mismatch rate of the compared A/B pairs, H0: p ≤ p0 with
  p0 = ``max_mismatch_rate`` plus the A/A noise allowance. A discrete mixture of binomial
  likelihood ratios over alternatives p0 + δ (``MISMATCH_EXCESS``). Each term falls as p0
  rises, so a noise allowance that is an upper confidence bound (``noise_upper``, a
  beta-binomial confidence sequence) keeps the test valid: with probability 1 − α/2 the
  bound holds at every look, and then Λ(p0 + bound) ≤ Λ(p0 + true noise).

Pure functions of sufficient statistics (counts and sums), so the watcher aggregates in the
database and the simulation (tests/test_sequential.py) runs the same code on arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import betaln, log_ndtr

TAU = 0.2
"""Scale of the half-normal mixture over the latency excess, in ln units (about +22 %
beyond the tolerance): the regressions the watcher should catch fastest."""
MIN_PAIRS = 20
"""No latency decision on fewer paired executions: the plug-in variance needs some."""
VARIANCE_FLOOR = 1e-4
"""σ² of ln-differences never below (1 %)²: a run of identical timings is no certainty."""
MISMATCH_EXCESS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Alternatives of the mismatch mixture: p0 plus each of these, weighted equally."""
NOISE_PRIOR = (1.0, 100.0)
"""Beta(a, b) prior of the A/A confidence sequence: mean 1 %, tight for small rates."""


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of a stream of values: all a normal mSPRT needs."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        if self.n < 2:
            return None
        return max((self.squares - self.total * self.total / self.n) / (self.n - 1), 0.0)

    @classmethod
    def of(cls, values: Any) -> Moments:
        arr = np.asarray(values, dtype=float)
        return cls(int(arr.size), float(arr.sum()), float((arr * arr).sum()))


@dataclass(frozen=True)
class Test:
    """One look of a sequential test: the always-valid p-value of this look (the caller
    keeps the running minimum), the estimate and the null boundary it is tested against."""

    p_value: float
    estimate: float | None
    boundary: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"p_value": self.p_value, "estimate": self.estimate,
                "boundary": self.boundary, "n": self.n}


def log_lr_latency(n: Any, mean: Any, variance: Any, margin: float, tau: float = TAU) -> Any:
    """ln Λ of the half-normal mixture SPRT of H0: E[d] ≤ ``margin`` (elementwise on arrays).

    With S = n(x̄ − margin)/σ² and V = n/σ² + 1/τ²:
    Λ = 2 / (τ √V) · exp(S² / 2V) · Φ(S / √V).
    """
    n = np.asarray(n, dtype=float)
    var = np.maximum(np.asarray(variance, dtype=float), VARIANCE_FLOOR)
    s = n * (np.asarray(mean, dtype=float) - margin) / var
    v = n / var + 1.0 / (tau * tau)
    root = np.sqrt(v)
    return np.log(2.0) - np.log(tau * root) + s * s / (2.0 * v) + log_ndtr(s / root)


def latency_test(m: Moments, max_regression: float, tau: float = TAU) -> Test:
    """One look at the paired ln-latency differences against ``1 + max_regression``."""
    margin = math.log1p(max_regression)
    if m.n < MIN_PAIRS or m.mean is None or m.variance is None:
        return Test(1.0, m.mean, margin, m.n)
    log_lr = float(log_lr_latency(m.n, m.mean, m.variance, margin, tau))
    return Test(_p(log_lr), m.mean, margin, m.n)


def log_lr_mismatch(k: Any, n: Any, p0: Any) -> Any:
    """ln Λ of the discrete-mixture SPRT of H0: p ≤ ``p0`` after ``k`` mismatches in ``n``
    comparisons (elementwise). With p0 = 0 any mismatch makes Λ infinite."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    p0 = np.asarray(p0, dtype=float)
    terms = []
    for delta in MISMATCH_EXCESS:
        p1 = p0 + delta
        ok = p1 < 1.0
        safe1 = np.where(ok, p1, 0.5)
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(k > 0, k * (np.log(safe1) - np.log(p0)), 0.0)
            down = (n - k) * (np.log1p(-safe1) - np.log1p(-p0))
        terms.append(np.where(ok, up + down, -np.inf))
    stacked = np.stack(terms)
    top = np.max(stacked, axis=0)
    finite = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(invalid="ignore"):
        total = finite + np.log(np.sum(np.exp(stacked - finite), axis=0))
    total = np.where(np.isposinf(top), np.inf, total)
    return total - math.log(len(MISMATCH_EXCESS))


def noise_upper(k: int, n: int, alpha: float, prior: tuple[float, float] = NOISE_PRIOR
                ) -> float:
    """Upper end of a (1 − alpha) confidence sequence for a rate after ``k`` events in
    ``n`` trials: the largest q whose beta-binomial mixture ratio stays below 1/alpha.
    Valid at every look at once (Robbins' mixture bound)."""
    if n == 0:
        return 1.0
    a, b = prior
    log_mix = float(betaln(k + a, n - k + b) - betaln(a, b))
    bound = log_mix + math.log(alpha)  # q is inside while ln L(q) > bound

    def log_l(q: float) -> float:
        return (k * math.log(q) if k else 0.0) + (n - k) * math.log1p(-q)

    lo, hi = k / n, 1.0 - 1e-12
    if log_l(max(lo, 1e-300)) <= bound:
        return lo
    for _ in range(100):
        mid = (lo + hi) / 2
        if log_l(mid) > bound:
            lo = mid
        else:
            hi = mid
    return hi


def mismatch_test(mismatched: int, compared: int, limit: float, alpha: float,
                  noise: tuple[int, int] | None = None) -> tuple[Test, float]:
    """One look at the A/B mismatches against ``limit`` plus the A/A noise allowance.

    ``noise`` is (mismatched, compared) of the online A/A checks; with it, alpha is split
    in halves between the noise bound and the test. Returns the test and the alpha the
    p-value is to be compared with."""
    allowance, test_alpha = 0.0, alpha
    if noise is not None and noise[1] > 0:
        test_alpha = alpha / 2
        allowance = noise_upper(noise[0], noise[1], alpha / 2)
    p0 = min(limit + allowance, 1.0)
    estimate = mismatched / compared if compared else None
    if compared == 0 or p0 >= 1.0:
        return Test(1.0, estimate, p0, compared), test_alpha
    log_lr = float(log_lr_mismatch(mismatched, compared, p0))
    return Test(_p(log_lr), estimate, p0, compared), test_alpha


def _p(log_lr: float) -> float:
    """The p-value of one look: min(1, 1/Λ)."""
    if log_lr == math.inf:
        return 0.0
    return 1.0 if log_lr <= 0 else math.exp(-log_lr)
