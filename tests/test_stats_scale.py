"""The scalable statistics against their exact oracles, and their memory at scale."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from rollout.judge import stats
from rollout.judge.stats import (
    Shift,
    _hodges_lehmann_exact,
    _hodges_lehmann_select,
    hodges_lehmann,
    mann_whitney_greater,
    quantile_ratio_ci,
    samples_needed,
)

MEMORY_BUDGET_MB = 100.0
LARGE = 200_000
"""The old matrix for two samples of this size: 200,000² × 8 bytes = 320 GB."""

# Values that make the matrix hard: runs of ties, signed zeros, magnitudes whose differences
# round (1e16 + 2 - 1e16 is not what searchsorted on a rounded sum expects), overflow, and
# the non-finite values whose differences sort as -inf, +inf or NaN.
AWKWARD = [0.0, -0.0, 1.0, 2.0, 3.0, 1e-300, 1e16, 1e16 + 2, -1e16, 1.5e308, -1.5e308]
NON_FINITE = [math.inf, -math.inf, math.nan]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_same(got: Shift, want: Shift) -> None:
    for name in ("estimate", "low", "high"):
        assert _same(getattr(got, name), getattr(want, name)), (name, got, want)


tied = st.integers(0, 4).map(float)
logs = st.integers(1, 40).map(lambda k: math.log(k * 1000))  # log latencies of whole microseconds
spread = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
awkward = st.sampled_from(AWKWARD)
anything = st.sampled_from(AWKWARD + NON_FINITE) | spread
KINDS = (tied, logs, spread, awkward, anything)
samples = st.one_of(*(st.lists(kind, min_size=1, max_size=45)
                      for kind in (*KINDS, st.one_of(*KINDS))))
confidences = st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.98, 0.99])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=samples, y=samples, confidence=confidences, window=st.integers(1, 80),
       seed=st.integers(0, 2**32 - 1))
def test_selection_equals_the_matrix(x: list[float], y: list[float], confidence: float,
                                     window: int, seed: int) -> None:
    # A tiny window forces many rounds of pivots, splits and tie answers on samples small
    # enough for the oracle's matrix.
    with np.errstate(all="ignore"):
        want = _hodges_lehmann_exact(x, y, confidence)
        got = _hodges_lehmann_select(x, y, confidence, window=window, sample=64, seed=seed)
    _assert_same(got, want)


def test_selection_ends_when_everything_is_tied() -> None:
    # Every pivot equals every candidate: only the count of values below the pivot ends it.
    for window in (1, 7, 1000):
        _assert_same(_hodges_lehmann_select([1.0] * 300, [1.0] * 400, window=window, sample=64),
                     Shift(0.0, 0.0, 0.0, 0.95))
    x, y = [0.0] * 200 + [1.0] * 3, [0.0] * 150 + [5.0]
    _assert_same(_hodges_lehmann_select(x, y, 0.99, window=1, sample=64),
                 _hodges_lehmann_exact(x, y, 0.99))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), m=st.integers(1, 400), ties=st.booleans(),
       seed=st.integers(0, 2**32 - 1), confidence=confidences)
def test_public_function_equals_the_matrix_on_both_sides_of_the_switch(
        n: int, m: int, ties: bool, seed: int, confidence: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(12, 0.4, n)
    y = rng.lognormal(12.05, 0.4, m)
    if ties:  # latencies of whole 100 µs: long runs of equal log-differences
        x, y = np.ceil(x / 1e5) * 1e5, np.ceil(y / 1e5) * 1e5
    _assert_same(hodges_lehmann(np.log(x), np.log(y), confidence),
                 _hodges_lehmann_exact(np.log(x), np.log(y), confidence))


def test_agreement_on_a_stage_as_large_as_the_exact_method_allows() -> None:
    # 2,000 against 2,500 online observations of one path: 5 million differences, rounded to
    # whole microseconds like the recorder's nanoseconds often are, a 3 % slowdown.
    rng = np.random.default_rng(14)
    legacy = np.round(rng.lognormal(13, 0.5, 2_000), -3)
    new = np.round(rng.lognormal(13.03, 0.5, 2_500), -3)
    scaled = hodges_lehmann(np.log(legacy), np.log(new), 0.95)
    assert scaled == _hodges_lehmann_exact(np.log(legacy), np.log(new), 0.95)
    assert scaled.low < scaled.estimate < scaled.high


def test_rounding_of_the_searchsorted_guess_is_corrected() -> None:
    # rows + t rounds for rows near 1e16, so searchsorted's guess is off by a few columns;
    # only the exact check at the guessed boundary gives the matrix's order statistics.
    x = [1e16, 1e16 + 2, 1e16 + 4, -3.0, 5.0]
    y = [float(v) for v in range(-8, 9)] + [1e16 + 6, 2e16]
    for confidence in (0.5, 0.9, 0.99):
        _assert_same(_hodges_lehmann_select(x, y, confidence, window=1, sample=64),
                     _hodges_lehmann_exact(x, y, confidence))


def test_non_finite_values_sort_as_the_matrix_sorts_them() -> None:
    # NaN differences sort last and make the median NaN; equal infinities give NaN;
    # a latency of 0 ns is log(0) = -inf.
    cases: list[tuple[list[float], list[float]]] = [
        ([-math.inf, 1.0, 2.0], [-math.inf, 0.5, 3.0, 4.0]),
        ([math.inf] * 3, [1.0, 2.0]),
        ([1.0, math.nan], [2.0, 3.0, 4.0]),
        ([1.0, 2.0], [math.inf, -math.inf, 0.0]),
    ]
    for x, y in cases:
        with np.errstate(all="ignore"):
            want = _hodges_lehmann_exact(x, y, 0.5)
            _assert_same(_hodges_lehmann_select(x, y, 0.5, window=1, sample=64), want)
            _assert_same(hodges_lehmann(x, y, 0.5), want)


def test_bad_samples_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        hodges_lehmann([], [1.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        hodges_lehmann([[1.0, 2.0]], [1.0])


@pytest.fixture
def peak_mb() -> Iterator[Callable[[], float]]:
    """tracemalloc's peak (numpy reports its buffers to it) since the test started, in MB."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def _latencies(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out: np.ndarray = np.round(rng.lognormal(13 + shift, 0.5, n), -2)  # whole 100 ns: ties
    return out


def test_hodges_lehmann_of_200k_against_200k_stays_within_the_memory_budget(
        peak_mb: Callable[[], float]) -> None:
    legacy, new = np.log(_latencies(LARGE, 1)), np.log(_latencies(LARGE, 2, 0.02))
    before = peak_mb()
    shift = hodges_lehmann(legacy, new, 0.95)
    assert peak_mb() - before < MEMORY_BUDGET_MB
    # and it is the right answer: a 2 % shift of the log-latency location
    assert shift.low < 0.02 < shift.high
    assert shift.high - shift.low < 0.01


def test_the_other_figures_of_200k_pairs_stay_within_the_memory_budget(
        peak_mb: Callable[[], float]) -> None:
    # The old bootstrap drew all 2,000 resamples of every row at once: 3.2 GB of indices here.
    legacy = _latencies(LARGE, 3)
    new = legacy * np.exp(np.random.default_rng(4).normal(0.02, 0.05, LARGE))
    before = peak_mb()
    ratio, low, high = quantile_ratio_ci(legacy, new, 0.95, 0.95, paired=True, seed=0)
    p = mann_whitney_greater(np.log(legacy), np.log(new), math.log1p(0.10))
    needed = samples_needed(np.log(legacy), np.log(new), 0.01, 0.05)
    assert peak_mb() - before < MEMORY_BUDGET_MB
    assert low < ratio < high and low < math.exp(0.02) * 1.01
    assert p > 0.5 and needed is not None and needed > 1_000


def test_large_bootstrap_interval_agrees_with_the_full_bootstrap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # At ten times the resample cap, the m-out-of-n interval must match the full bootstrap's;
    # unscaled percentiles of resamples of m rows would be sqrt(10) ≈ 3.2 times too wide.
    monkeypatch.setattr(stats, "BOOTSTRAP_ROWS", 800)
    rng = np.random.default_rng(7)
    legacy = rng.lognormal(13, 0.5, 8_000)
    new = legacy * rng.lognormal(0.05, 0.1, 8_000)
    ratio, low, high = quantile_ratio_ci(legacy, new, 0.9, 0.95, paired=True, seed=1)

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        out: np.ndarray = np.quantile(v, 0.9, axis=axis) / np.quantile(u, 0.9, axis=axis)
        return out

    full = sps.bootstrap((legacy, new), stat, paired=True, vectorized=True, n_resamples=2000,
                         batch=100, method="percentile",
                         rng=np.random.default_rng(1)).confidence_interval
    width = full.high - full.low
    assert high - low == pytest.approx(width, rel=0.25)
    assert low == pytest.approx(full.low, abs=0.2 * width)
    assert high == pytest.approx(full.high, abs=0.2 * width)
    assert low < ratio < high


def test_small_paired_bootstrap_is_unchanged_by_batching() -> None:
    # Paired resamples drawn batch by batch are the ones drawn at once: intervals below the
    # cap (and the verdicts built on them) stay what they were.
    rng = np.random.default_rng(8)
    legacy = rng.lognormal(13, 0.5, 3_000)
    new = legacy * rng.lognormal(0.05, 0.1, 3_000)

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        out: np.ndarray = np.quantile(v, 0.95, axis=axis) / np.quantile(u, 0.95, axis=axis)
        return out

    once = sps.bootstrap((legacy, new), stat, paired=True, vectorized=True, n_resamples=2000,
                         method="percentile", rng=np.random.default_rng(3)).confidence_interval
    _, low, high = quantile_ratio_ci(legacy, new, 0.95, 0.95, paired=True, seed=3)
    assert (low, high) == (once.low, once.high)


def test_rank_test_never_picks_the_exact_method_for_a_large_sample() -> None:
    # scipy's "auto" takes the exact null distribution when one sample has <= 8 untied values,
    # O((n·m)²) time: hours for 8 values against 100,000. Here 8 against 2,000 (still quick
    # for the exact method) must already get the normal approximation.
    rng = np.random.default_rng(9)
    few, many = rng.normal(0, 1, 8), rng.normal(0.3, 1, 2_000)
    asymptotic = sps.mannwhitneyu(many, few, alternative="greater", method="asymptotic")
    exact = sps.mannwhitneyu(many, few, alternative="greater", method="exact")
    assert asymptotic.pvalue != exact.pvalue  # else this test could not tell them apart
    assert mann_whitney_greater(few, many) == asymptotic.pvalue
