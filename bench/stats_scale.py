"""stats_scale: time and peak memory of each latency figure per path at 10⁴, 10⁵, 10⁶ pairs."""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from rollout.judge import stats

from .database import BenchDB, say

NAME = "stats_scale"
SIZES = (10_000, 100_000, 1_000_000)
"""Observations per path: that many legacy and that many new latencies."""
EXACT_SIZE = 3_000
"""The exact matrix method beside the selection: 9 million differences, 72 MB each copy."""
ROUNDS = 3
"""Timed calls per figure and size; the fastest counts (the machine is shared)."""
TOLERANCE = 0.10
CONFIDENCE = 0.95
QUANTILE = 0.95
SEED = 14

Figure = Callable[[np.ndarray, np.ndarray], object]


def _figures() -> dict[str, Figure]:
    """Each figure as ``summaries.latency_summary`` calls it, on legacy and new nanoseconds."""
    margin = math.log1p(TOLERANCE)
    return {
        "hodges_lehmann": lambda a, b: stats.hodges_lehmann(np.log(a), np.log(b), CONFIDENCE),
        "mann_whitney": lambda a, b: stats.mann_whitney_greater(np.log(a), np.log(b), margin),
        "bootstrap": lambda a, b: stats.quantile_ratio_ci(a, b, QUANTILE, CONFIDENCE,
                                                          paired=True, seed=0),
        "samples_needed": lambda a, b: stats.samples_needed(np.log(a), np.log(b), 0.01,
                                                            1 - CONFIDENCE),
    }


def _latencies(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired online latencies: log-normal around 0.44 ms in whole 100 ns (so with ties),
    the new path 3 % slower with its own noise."""
    rng = np.random.default_rng(SEED + n)
    legacy = np.round(rng.lognormal(13, 0.5, n), -2)
    new = np.round(legacy * rng.lognormal(0.03, 0.1, n), -2)
    return legacy, new


def _measure(figure: Figure, a: np.ndarray, b: np.ndarray, rounds: int) -> dict[str, float]:
    """Fastest of ``rounds`` untraced calls, then one call under tracemalloc for the peak."""
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        figure(a, b)
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    try:
        figure(a, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"seconds": best, "peak_mb": peak / 1e6}


def run(db: BenchDB) -> dict[str, Any]:
    """Pure CPU: the benchmark database is not used."""
    del db
    figures = _figures()
    sizes: dict[str, dict[str, dict[str, float]]] = {}
    for n in SIZES:
        say(f"stats_scale: {n:,} pairs per path")
        a, b = _latencies(n)
        per = {name: _measure(f, a, b, ROUNDS if n < SIZES[-1] else 1)
               for name, f in figures.items()}
        per["all"] = {"seconds": sum(v["seconds"] for v in per.values()),
                      "peak_mb": max(v["peak_mb"] for v in per.values())}
        sizes[str(n)] = per
    growth = {name: [_exponent(sizes[str(lo)][name]["seconds"], sizes[str(hi)][name]["seconds"],
                               hi / lo) for lo, hi in zip(SIZES, SIZES[1:], strict=False)]
              for name in [*figures, "all"]}
    return {
        "name": NAME,
        "description": "the latency figures of one path (Hodges-Lehmann shift and CI, rank "
                       "test, p95 bootstrap, samples needed) on paired online latencies, "
                       f"{', '.join(f'{n:,}' for n in SIZES)} per side",
        "unit": "seconds, MB",
        "method": f"fastest of {ROUNDS} calls per figure (one at {SIZES[-1]:,}); peak of one "
                  "more call under tracemalloc (numpy reports its buffers to it); growth "
                  "exponent = log(time ratio) / log(size ratio) between successive sizes, "
                  "1.0 is linear",
        "sizes": sizes,
        "growth_exponent": growth,
        "exact": _exact(),
        "old_matrix_gb": {str(n): 2 * 8 * n * n / 1e9 for n in SIZES},
    }


def _exponent(t_small: float, t_large: float, ratio: float) -> float:
    return math.log(t_large / t_small) / math.log(ratio) if t_small > 0 < t_large else math.nan


def _exact() -> dict[str, Any]:
    """The matrix method (the tests' oracle) beside the selection at ``EXACT_SIZE``."""
    a, b = (np.log(v) for v in _latencies(EXACT_SIZE))
    exact = _measure(lambda u, v: stats._hodges_lehmann_exact(u, v, CONFIDENCE), a, b, 1)
    select = _measure(lambda u, v: stats._hodges_lehmann_select(u, v, CONFIDENCE), a, b, 1)
    same = stats._hodges_lehmann_exact(a, b, CONFIDENCE) == stats._hodges_lehmann_select(
        a, b, CONFIDENCE)
    return {"pairs": EXACT_SIZE, "matrix": exact, "selection": select, "identical": same}


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Seconds and peak MB per figure and size, the growth exponent from the size before."""
    header = ["figure", *(f"{n:,} s" for n in SIZES), *(f"{n:,} MB" for n in SIZES),
              *(f"growth to {hi:,}" for hi in SIZES[1:])]
    rows = []
    for name, exps in result["growth_exponent"].items():
        per = [result["sizes"][str(n)][name] for n in SIZES]
        rows.append([name, *(f"{p['seconds']:.3f}" for p in per),
                     *(f"{p['peak_mb']:.1f}" for p in per), *(f"{e:.2f}" for e in exps)])
    ex = result["exact"]
    blank = [""] * (len(header) - 3)
    rows.append([f"HL matrix at {ex['pairs']:,} (oracle)", f"{ex['matrix']['seconds']:.3f}",
                 f"{ex['matrix']['peak_mb']:.1f} MB", *blank])
    rows.append([f"HL selection at {ex['pairs']:,}", f"{ex['selection']['seconds']:.3f}",
                 f"{ex['selection']['peak_mb']:.1f} MB",
                 "identical" if ex["identical"] else "DIFFERENT", *blank[1:]])
    return header, rows
