"""Statistics for latency judgement: Hodges-Lehmann shift with its CI, a one-sided
Mann-Whitney test against a tolerance, a bootstrap quantile ratio, and the sample size a
decision would need. Latencies are compared on a log scale, so shifts are ratios. Every
function works in memory linear in the sample sizes (or bounded), never in their product."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

SMALL_PAIRS = 1 << 14
"""Up to this many pairwise differences the exact matrix is the faster Hodges-Lehmann path."""
MAX_WINDOW = 1 << 19
"""Most candidate differences the selection ever holds at once (8 bytes each, a few arrays)."""
MAX_PIVOT_SAMPLE = 1 << 16
"""Most candidate differences drawn per round to place the selection's pivots."""
COUNT_CHUNK = 1 << 16
"""Rows counted at a time: bounds the selection's temporaries."""
MWU_EXACT_PAIRS = 10_000
"""scipy's exact Mann-Whitney distribution costs O((n·m)²) time: above this n·m it is not used."""
BOOTSTRAP_ROWS = 10_000
"""Most rows one bootstrap resample draws; larger samples get an m-out-of-n bootstrap."""
BOOTSTRAP_CELLS = 1 << 20
"""Most resampled values held at once (resamples × rows per batch)."""
MWU_SCIPY_VALUES = 100_000
"""Up to this many values in all, scipy's rank test; above, the merge count on sorted
samples (``_mann_whitney_sorted``), the same p-value in a fraction of the memory."""
HL_EXACT_VALUES = 400_000
"""Up to this many values in all, the exact Hodges-Lehmann selection; above, the log-grid
(``_hodges_lehmann_grid``): its time and memory grow with the samples' spread, not size."""
HL_GRID_STEP = 1e-5
"""Width of the grid on the log scale: every figure of the grid method is within this of the
exact one (a ratio within a factor exp(1e-5), 0.001 %)."""
MERGE_CHUNK = 1 << 20
"""Values handled at a time by the merge count: bounds its temporaries."""

_FloatArray = NDArray[np.float64]
_IntArray = NDArray[np.signedinteger[Any]]
_Task = tuple[list[int], _IntArray, _IntArray]
"""Ranks still to select, and per row the first and the past-last candidate column."""


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

    Above ``HL_EXACT_VALUES`` values in all (finite ones), the estimate and the interval
    come from a grid of step ``HL_GRID_STEP`` (``_hodges_lehmann_grid``): each is within
    that step of the exact figure.

    The n·m differences are never stored: the order statistics are selected exactly from the
    implicit sorted matrix (``_hodges_lehmann_select``), each round O((n+m) log(n+m)) time,
    a few rounds (their number grows as log(n·m), five or so per statistic at 10⁶ a side),
    in O(n+m) memory (about 20 bytes per value beyond the inputs). The result is the one
    the full matrix gives, bit for bit; small samples still take the matrix, which is
    faster there.
    """
    a, b = _samples(x, y)
    if len(a) * len(b) <= SMALL_PAIRS:
        return _hodges_lehmann_exact(a, b, confidence)
    if len(a) + len(b) > HL_EXACT_VALUES and np.isfinite(a).all() and np.isfinite(b).all():
        return _hodges_lehmann_grid(a, b, confidence)
    return _hodges_lehmann_select(a, b, confidence)


def _samples(x: ArrayLike, y: ArrayLike) -> tuple[_FloatArray, _FloatArray]:
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError("both samples must be one-dimensional")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both samples need at least one value")
    return a, b


def _moses_rank(n: int, m: int, confidence: float) -> int:
    """The 0-based rank of the interval's lower bound among the n·m sorted differences."""
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    c: int = math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12) - 0.5)
    return max(c, 0)


def _hodges_lehmann_exact(x: ArrayLike, y: ArrayLike, confidence: float = 0.95) -> Shift:
    """The definition, O(n·m) memory: sort every difference. The oracle the tests hold the
    selection to, and the faster path for small samples."""
    a, b = _samples(x, y)
    diffs = np.sort((b[None, :] - a[:, None]).ravel())
    estimate = float(np.median(diffs))
    c = _moses_rank(len(a), len(b), confidence)
    low, high = diffs[c], diffs[len(diffs) - 1 - c]
    return Shift(estimate, float(low), float(high), confidence)


def _hodges_lehmann_select(x: ArrayLike, y: ArrayLike, confidence: float = 0.95, *,
                           window: int | None = None, sample: int | None = None,
                           seed: int = 0) -> Shift:
    """``_hodges_lehmann_exact`` without the matrix: the same order statistics by selection.

    ``window`` and ``sample`` (defaults scale with n+m, capped by ``MAX_WINDOW`` and
    ``MAX_PIVOT_SAMPLE``) only trade rounds for memory; ``seed`` only changes the pivots. None
    of them changes the result. NaN and infinities give what sorting the matrix gives: a NaN
    difference sorts last and makes the median NaN, as ``np.median`` does.
    """
    a, b = _samples(x, y)
    size, total = len(a) + len(b), len(a) * len(b)
    diffs = _Differences(a, b, np.random.default_rng(seed),
                         window or min(max(2 * size, 4096), MAX_WINDOW),
                         sample or min(max(size // 2, 256), MAX_PIVOT_SAMPLE))
    c = _moses_rank(len(a), len(b), confidence)
    middle = total // 2
    middles = [middle] if total % 2 else [middle - 1, middle]
    with np.errstate(over="ignore", invalid="ignore"):
        # overflowing differences are ±inf in the matrix too
        at = diffs.order_statistics([c, total - 1 - c, *middles])
    if diffs.nan:
        estimate = math.nan  # np.median's answer whenever a NaN is among the values
    elif total % 2:
        estimate = at[middle]
    else:
        # np.median's mean of the two middle values, in the same float arithmetic
        estimate = (at[middle - 1] + at[middle]) / 2
    return Shift(estimate, at[c], at[total - 1 - c], confidence)


def _hodges_lehmann_grid(x: ArrayLike, y: ArrayLike, confidence: float = 0.95,
                         step: float = HL_GRID_STEP) -> Shift:
    """``_hodges_lehmann_exact`` on values rounded to a grid of ``step``; finite values only.

    Each value moves by at most step/2 to its grid point, so each difference ``y_j - x_i``
    moves by at most ``step``, and so does every order statistic of the differences (moving
    every element of a multiset by at most d moves each of its order statistics by at most
    d): the estimate, the mean of at most two of them, and both bounds of the interval are
    within ``step`` of the exact ones. On the grid the differences are integers, weighted by
    the product of the two histograms' counts; an order statistic is the smallest integer
    whose weighted count reaches its rank, found by bisection, each count one pass over the
    occupied cells of one histogram in exact integer arithmetic. Time O(n + m + B log B) and
    memory O(B), B the number of grid cells between the smallest and largest value.
    """
    a, b = _samples(x, y)
    origin = float(min(a.min(), b.min()))
    hx, hy = _grid_counts(a, origin, step), _grid_counts(b, origin, step)
    occupied = np.flatnonzero(hx)
    weights = hx[occupied]
    below_y = np.concatenate([[0], np.cumsum(hy)])  # below_y[k]: y cells < k
    total = len(a) * len(b)

    def at_most(t: int) -> int:
        # pairs with (y cell) - (x cell) <= t: y cells <= x cell + t
        upto = np.clip(occupied + t + 1, 0, len(hy))
        return int(np.dot(weights, below_y[upto]))

    def order_statistic(rank: int) -> int:
        low, high = -int(occupied[-1]), len(hy) - 1 - int(occupied[0])
        while low < high:
            mid = (low + high) // 2
            if at_most(mid) >= rank + 1:
                high = mid
            else:
                low = mid + 1
        return low

    c = _moses_rank(len(a), len(b), confidence)
    middle = total // 2
    if total % 2:
        estimate = order_statistic(middle) * step
    else:
        estimate = (order_statistic(middle - 1) + order_statistic(middle)) * step / 2
    return Shift(float(estimate), order_statistic(c) * step,
                 order_statistic(total - 1 - c) * step, confidence)


def _grid_counts(values: _FloatArray, origin: float, step: float) -> NDArray[np.int64]:
    """How many values fall on each grid point ``origin + k·step`` (rounded to the nearest),
    in chunks so that the temporaries stay small."""
    top = int(np.rint((float(values.max()) - origin) / step))
    out = np.zeros(top + 1, dtype=np.int64)
    for start in range(0, len(values), MERGE_CHUNK):
        cells = np.rint((values[start:start + MERGE_CHUNK] - origin) / step).astype(np.int64)
        out += np.bincount(np.clip(cells, 0, top), minlength=top + 1)
    return out


def _finite_sorted(values: _FloatArray) -> _FloatArray:
    """The finite values, sorted: one copy (np.sort puts -inf first, then +inf, then NaN)."""
    ordered = np.sort(values)
    # searchsorted orders NaN as sort does: after +inf
    first = int(np.searchsorted(ordered, -np.inf, side="right"))
    past = int(np.searchsorted(ordered, np.inf, side="left"))
    out: _FloatArray = ordered[first:past]
    return out


class _Differences:
    """The multiset of all ``y_j - x_i`` (float subtraction, as the matrix computes them),
    ordered as ``np.sort`` orders it: -inf, finite, +inf, NaN.

    Differences of two finite values form a matrix whose rows (x ascending) and columns
    (y ascending) are sorted, because rounding is monotone; that core is searched by
    selection. Differences with an infinite or NaN operand are a known value (±inf or NaN)
    and are only counted.
    """

    def __init__(self, x: _FloatArray, y: _FloatArray, rng: np.random.Generator,
                 window: int, sample: int) -> None:
        self.rows, self.cols = _finite_sorted(x), _finite_sorted(y)
        # column bounds are kept per row and task: half the memory in 32 bits (their sums
        # and midpoints are taken in 64 bits or stay below 2**31)
        self.index = np.int32 if len(self.cols) < 1 << 30 else np.int64
        self.rng, self.window, self.sample = rng, max(window, 1), max(sample, 64)
        xf, xp, xn = len(self.rows), int(np.sum(x == np.inf)), int(np.sum(x == -np.inf))
        yf, yp, yn = len(self.cols), int(np.sum(y == np.inf)), int(np.sum(y == -np.inf))
        # y - x is -inf for (finite, y=-inf), (x=+inf, finite) and (x=+inf, y=-inf); NaN for
        # equal infinities or a NaN operand; +inf for the mirror cases.
        self.below = xf * yn + xp * yf + xp * yn
        self.core = xf * yf
        self.above = xf * yp + xn * yf + xn * yp
        self.nan = len(x) * len(y) - self.below - self.core - self.above

    def order_statistics(self, ranks: list[int]) -> dict[int, float]:
        """The differences at the given 0-based ranks of the sorted multiset."""
        out: dict[int, float] = {}
        core: list[int] = []
        for rank in sorted(set(ranks)):
            if rank < self.below:
                out[rank] = -math.inf
            elif rank < self.below + self.core:
                core.append(rank - self.below)
            else:
                out[rank] = math.inf if rank < self.below + self.core + self.above else math.nan
        for rank, value in self._select(core).items():
            out[rank + self.below] = value
        return out

    def _select(self, ranks: list[int]) -> dict[int, float]:
        """The core differences at sorted ``ranks``: Floyd & Rivest's selection (CACM 18(3),
        1975) on the implicit sorted matrix, as Monahan (ACM TOMS 10(3), 1984) does for
        Hodges-Lehmann, for several ranks at once.

        A task is a group of ranks and, per row, its candidate columns
        ``low[i] <= j < high[i]``: everything left of ``low`` ranks below the group, everything
        from ``high`` on above it. Each round draws random candidates, takes two that bracket
        the group with high probability as pivots, and narrows the window with an O(n log m)
        count per pivot. A group too spread out to narrow together is split at a pivot between
        its ranks. Once a window holds at most ``self.window`` candidates they are listed and
        partitioned. A pivot whose run of equal values spans a rank answers it outright, so
        heavy ties shorten the search.
        """
        out: dict[int, float] = {}
        tasks = [(ranks, self._bounds(0), self._bounds(len(self.cols)))] if ranks else []
        while tasks:
            group, low, high = tasks.pop()
            width = high - low
            total, base = int(width.sum()), int(low.sum())
            if total <= self.window:
                listed = self._listed(low, width, total)
                kth = [r - base for r in group]
                listed.partition(kth)
                out.update((r, float(listed[k])) for r, k in zip(group, kth, strict=True))
                continue
            drawn = self._drawn(low, width, total)
            s = len(drawn)
            # The sample rank of the k-th candidate has standard deviation <= sqrt(s)/2:
            # pivots four deviations outside the group bracket it unless something rare happens
            # (and then the round still narrows the window, only less).
            spread = 2 * math.sqrt(s) + 1
            first = math.floor((group[0] - base) * s / total - spread)
            last = math.ceil((group[-1] - base) * s / total + spread)
            if last - first > s // 2 and len(group) > 1:
                gap = max(range(len(group) - 1), key=lambda i: group[i + 1] - group[i])
                split = ((group[gap] + group[gap + 1]) // 2 - base) * s // total
                above, below, answered = self._divide(group, low, high, drawn, min(split, s - 1))
                out.update(answered)
                tasks += [t for t in (above, below) if t is not None]
                continue
            for at in (first, last):
                if not 0 <= at < s:
                    continue
                above, below, answered = self._divide(group, low, high, drawn, at)
                out.update(answered)
                if above is not None and below is None:
                    group, low, high = above  # the whole group lies above: low moved up
                    continue
                tasks += [t for t in (above, below) if t is not None]
                break
            else:
                tasks.append((group, low, high))
        return out

    def _divide(self, group: list[int], low: _IntArray, high: _IntArray, drawn: _FloatArray,
                at: int) -> tuple[_Task | None, _Task | None, dict[int, float]]:
        """Count at the pivot ``drawn[at]``: the task for the group's ranks above it, the task
        for those below it, and the ranks it is the answer to. Its own run of equal values is
        counted only when the sample shows it tied: a value drawn once is too rare to slow
        the narrowing."""
        pivot = float(drawn[at])
        at_most = self._counts(pivot, low, high, strict=False)
        up_to = int(at_most.sum())
        above = [r for r in group if r >= up_to]
        below = [r for r in group if r < up_to]
        answered: dict[int, float] = {}
        upper = at_most
        tied = any(0 <= i < len(drawn) and drawn[i] == pivot for i in (at - 1, at + 1))
        if below and tied:
            upper = self._counts(pivot, low, at_most, strict=True)
            under = int(upper.sum())
            answered = {r: pivot for r in below if r >= under}
            below = [r for r in below if r < under]
        return ((above, at_most, high) if above else None,
                (below, low, upper) if below else None, answered)

    def _bounds(self, column: int) -> _IntArray:
        return np.full(len(self.rows), column, dtype=self.index)

    def _listed(self, low: _IntArray, width: _IntArray, total: int) -> _FloatArray:
        """Every candidate difference (at most ``self.window`` of them)."""
        row = np.repeat(np.arange(len(self.rows)), width)
        # column = low[row] + (position - first position of row)
        col = np.arange(total, dtype=np.int64)
        col += np.repeat(low - (np.cumsum(width) - width), width)
        out: _FloatArray = self.cols[col] - self.rows[row]
        return out

    def _drawn(self, low: _IntArray, width: _IntArray, total: int) -> _FloatArray:
        """A sorted sample, with replacement, of the candidate differences."""
        ends = np.cumsum(width)
        position = self.rng.integers(0, total, size=self.sample)
        row = np.searchsorted(ends, position, side="right")
        col = low[row] + position - (ends[row] - width[row])
        out: _FloatArray = np.sort(self.cols[col] - self.rows[row])
        return out

    def _counts(self, t: float, low: _IntArray, high: _IntArray, *,
                strict: bool) -> _IntArray:
        """Per row i, how many columns j have ``cols[j] - rows[i] <= t`` (``< t`` if strict),
        a count known to lie in ``[low[i], high[i]]``; rows in chunks, so that the
        temporaries stay small beside the bounds."""
        out: _IntArray = np.empty(len(self.rows), dtype=self.index)
        for start in range(0, len(self.rows), COUNT_CHUNK):
            part = slice(start, start + COUNT_CHUNK)
            out[part] = self._counted(self.rows[part], t, low[part], high[part], strict)
        return out

    def _counted(self, rows: _FloatArray, t: float, low: _IntArray, high: _IntArray,
                 strict: bool) -> _IntArray:
        """``_counts`` for some rows. ``searchsorted`` on ``rows[i] + t`` finds each count in
        C, but that sum is rounded, so each guess is checked against the exact predicate at
        its boundary; the rare rows where rounding moved it are bisected with the exact
        predicate."""
        cols = self.cols
        with np.errstate(over="ignore", invalid="ignore"):
            guess = np.searchsorted(cols, rows + t, side="left" if strict else "right")
        counts: _IntArray = np.clip(guess, low, high).astype(self.index, copy=False)
        last = len(cols) - 1
        inside_before = self._holds(cols[np.maximum(counts - 1, 0)] - rows, t, strict)
        inside_at = self._holds(cols[np.minimum(counts, last)] - rows, t, strict)
        wrong = ~(((counts == low) | inside_before) & ((counts == high) | ~inside_at))
        if wrong.any():
            counts[wrong] = self._bisected(rows[wrong], t, low[wrong], high[wrong], strict)
        return counts

    @staticmethod
    def _holds(diff: _FloatArray, t: float, strict: bool) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = diff < t if strict else diff <= t
        return out

    def _bisected(self, rows: _FloatArray, t: float, low: _IntArray, high: _IntArray,
                  strict: bool) -> _IntArray:
        """The exact counts by bisection, all given rows at once: O(len(rows) log m)."""
        low, high = low.copy(), high.copy()
        last = len(self.cols) - 1
        while (open_ := low < high).any():
            mid = (low + high) // 2
            inside = self._holds(self.cols[np.minimum(mid, last)] - rows, t, strict)
            low = np.where(open_ & inside, mid + 1, low)
            high = np.where(open_ & ~inside, mid, high)
        return low


def mann_whitney_greater(x: ArrayLike, y: ArrayLike, margin: float = 0.0, *,
                         presorted: bool = False) -> float:
    """One-sided p-value that ``y`` exceeds ``x + margin`` (scipy's Mann-Whitney U test).

    The method is chosen here, not by scipy's ``auto``: ``auto`` picks the exact null
    distribution whenever one sample has at most 8 values and nothing is tied, and that costs
    O((n·m)²) time, hours for 8 values against 10⁵. The exact method is kept only where
    ``auto`` would pick it and n·m <= ``MWU_EXACT_PAIRS``; otherwise the normal approximation
    with tie and continuity corrections, O((n+m) log(n+m)) time and O(n+m) memory. Above
    ``MWU_SCIPY_VALUES`` values in all, that approximation by merge counting
    (``_mann_whitney_sorted``); ``presorted`` says both samples are sorted already, so no
    sorted copy is made.
    """
    a = np.asarray(y, dtype=float)
    b = np.asarray(x, dtype=float)
    if len(a) + len(b) > MWU_SCIPY_VALUES and np.isfinite(a).all() and np.isfinite(b).all():
        if presorted:
            return _mann_whitney_sorted(a, b, margin)
        return _mann_whitney_sorted(np.sort(a), np.sort(b), margin)
    b = b + margin
    small = min(len(a), len(b)) <= 8 and len(a) * len(b) <= MWU_EXACT_PAIRS
    exact = small and len(np.unique(np.concatenate([a, b]))) == len(a) + len(b)
    return float(stats.mannwhitneyu(a, b, alternative="greater",
                                    method="exact" if exact else "asymptotic").pvalue)


def _mann_whitney_sorted(y: _FloatArray, x: _FloatArray, margin: float = 0.0) -> float:
    """``mann_whitney_greater``'s asymptotic p-value from sorted finite samples by merge
    counting, as scipy computes it (U of ``y`` with tie and continuity corrections,
    ``ndtr(-z)``) but without ranking the pooled sample: U = #{y > x + margin} + ½ #{y =
    x + margin}, each side counted by binary search of the other in chunks, and the ties
    counted from the runs of equal values. O((n+m) log(n+m)) time, memory a few chunks
    beyond the inputs (scipy's ranking holds about 60 bytes per value). The same p-value
    as scipy's to floating-point rounding (scipy sums float ranks; here U is exact)."""
    n1, n2 = len(y), len(x)
    greater = equal = 0
    tie_term = 0.0
    # runs of y alone: sum over its distinct values of c^3 - c
    for _, counts in _runs(y):
        c = counts.astype(float)
        tie_term += float(np.sum(c ** 3 - c))
    # runs of x + margin: their own term, and the cross terms with y's equal values
    for values, counts in _runs(x, margin):
        left = np.searchsorted(y, values, side="left")
        right = np.searchsorted(y, values, side="right")
        greater += int(np.dot(counts, n1 - right))
        same = right - left
        equal += int(np.dot(counts, same))
        cb, ca = counts.astype(float), same.astype(float)
        tie_term += float(np.sum(cb ** 3 - cb + 3 * ca * ca * cb + 3 * ca * cb * cb))
    u1 = greater + equal / 2
    n = n1 + n2
    s = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
    numerator = u1 - n1 * n2 / 2 - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.float64(numerator) / np.float64(s)
    return float(np.clip(special.ndtr(-z), 0, 1))


def _runs(values: _FloatArray, shift: float = 0.0
          ) -> Iterator[tuple[_FloatArray, NDArray[np.int64]]]:
    """The runs of equal values of sorted ``values + shift`` (the sum taken chunk by chunk,
    as the whole array would be): (value, count) arrays, a run never split between two."""
    carry_value: float | None = None
    carry_count = 0
    for start in range(0, len(values), MERGE_CHUNK):
        part = values[start:start + MERGE_CHUNK] + shift
        starts = np.flatnonzero(np.concatenate([[True], part[1:] != part[:-1]]))
        counts = np.diff(np.append(starts, len(part))).astype(np.int64)
        heads = part[starts]
        if carry_value is not None:
            if heads[0] == carry_value:
                counts[0] += carry_count
            else:
                yield np.array([carry_value]), np.array([carry_count], dtype=np.int64)
        carry_value, carry_count = float(heads[-1]), int(counts[-1])
        if len(heads) > 1:
            yield heads[:-1], counts[:-1]
    if carry_value is not None:
        yield np.array([carry_value]), np.array([carry_count], dtype=np.int64)


def quantile_ratio_ci(x: ArrayLike, y: ArrayLike, quantile: float,
                      confidence: float, *, paired: bool, seed: int = 0,
                      resamples: int = 2000) -> tuple[float, float, float]:
    """Ratio of the ``quantile`` of ``y`` to that of ``x`` with a percentile bootstrap CI.

    The ratio itself is one pass over the data (``np.quantile`` partitions). The interval's
    work is bounded independently of the row count:

    - up to ``BOOTSTRAP_ROWS`` rows per sample, scipy's percentile bootstrap as it always was,
      batched so that at most ``BOOTSTRAP_CELLS`` resampled values exist at once (batching
      draws the same resamples when paired, so paired intervals are unchanged);
    - above, an m-out-of-n bootstrap (Bickel, Götze & van Zwet, Statistica Sinica 7, 1997):
      ``resamples`` resamples of m = ``BOOTSTRAP_ROWS`` rows drawn from all rows (each sample
      drawn at the same fraction m/n when unpaired), whose log-ratio percentiles are pulled
      towards the full-sample log ratio by sqrt(m/n), the factor between the spread of a
      quantile estimated from m and from n rows. For a quantile where the latency density is
      positive (root-n asymptotics) this approximates the full bootstrap's interval; where the
      quantile sits on a run of tied values the spread is under-resolved as it is for the full
      bootstrap. Work: ``resamples`` × m draws however large n is.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    ratio = float(np.quantile(b, quantile) / np.quantile(a, quantile))
    rows = max(len(a), len(b))
    if rows > BOOTSTRAP_ROWS:
        low, high = _subsampled_ratio_ci(a, b, quantile, confidence, paired=paired,
                                         rng=np.random.default_rng(seed), resamples=resamples)
        return ratio, low, high

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        out: np.ndarray = np.quantile(v, quantile, axis=axis) / np.quantile(u, quantile,
                                                                             axis=axis)
        return out

    # Unpaired batches interleave the two samples' draws differently, so small unpaired
    # inputs keep scipy's single batch (and their old intervals).
    batch = max(1, BOOTSTRAP_CELLS // rows)
    boot = stats.bootstrap((a, b), stat, paired=paired, vectorized=True,
                           confidence_level=confidence, n_resamples=resamples,
                           batch=batch if paired or resamples > batch else None,
                           method="percentile", rng=np.random.default_rng(seed))
    return ratio, float(boot.confidence_interval.low), float(boot.confidence_interval.high)


def _subsampled_ratio_ci(a: _FloatArray, b: _FloatArray, quantile: float,
                         confidence: float, *, paired: bool, rng: np.random.Generator,
                         resamples: int) -> tuple[float, float]:
    """The m-out-of-n percentile interval described in ``quantile_ratio_ci``."""
    if paired and len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    fraction = BOOTSTRAP_ROWS / max(len(a), len(b))
    m_a = max(1, math.ceil(fraction * len(a)))
    m_b = max(1, math.ceil(fraction * len(b)))
    batch = max(1, BOOTSTRAP_CELLS // max(m_a, m_b))
    logs: list[_FloatArray] = []
    for done in range(0, resamples, batch):
        size = min(batch, resamples - done)
        i = rng.integers(0, len(a), size=(size, m_a))
        j = i if paired else rng.integers(0, len(b), size=(size, m_b))
        logs.append(np.log(np.quantile(b[j], quantile, axis=1))
                    - np.log(np.quantile(a[i], quantile, axis=1)))
    boot = np.concatenate(logs)
    centre = math.log(float(np.quantile(b, quantile))) - math.log(
        float(np.quantile(a, quantile)))
    alpha = (1 - confidence) / 2
    q_low, q_high = np.quantile(boot, [alpha, 1 - alpha])
    scale = math.sqrt(fraction)
    return (math.exp(centre + scale * (float(q_low) - centre)),
            math.exp(centre + scale * (float(q_high) - centre)))


def samples_needed(x: ArrayLike, y: ArrayLike, effect: float, alpha: float,
                   power: float = 0.8) -> int | None:
    """Per-path samples for a one-sided rank test to detect ``effect`` (on this scale) with
    ``power``: the normal-theory size divided by the Mann-Whitney efficiency 3/π.

    Two variances, one pass each over the data: O(n+m) time, nothing kept per row."""
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
