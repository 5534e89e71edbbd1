"""The latency distribution chart: an empirical CDF drawn from the reported quantiles."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._format import fmt_ms, number

# The quantiles a report carries, as cumulative fractions, for the distribution chart.
ECDF_LEVELS = ((0.50, "p50"), (0.90, "p90"), (0.95, "p95"), (0.99, "p99"))


def _tail(p: float) -> float:
    """The chart's vertical scale: -log10(1 - p) spreads p50, p90, p95 and p99 evenly
    enough to read the tail (0.30, 1, 1.30, 2)."""
    return -math.log10(1 - p)


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * magnitude:
            return mult * magnitude
    return 10 * magnitude


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:g}" if value >= 0.001 else f"{value:.1e}"


def latency_ecdf(legacy: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """Geometry for the latency distribution of both paths as an empirical CDF drawn from the
    four quantiles the report carries: a dot per measured quantile, straight lines between
    them (interpolation, not data), latency on a log axis when it spans a wide range."""
    paths = []
    for name, data in (("legacy", legacy), ("new", new)):
        points = []
        for p, label in ECDF_LEVELS:
            v = number(data[label])
            if v is not None and math.isfinite(v) and v > 0:
                points.append((p, label, v))
        paths.append((name, points))
    values = [v for _, points in paths for _, _, v in points]
    if not values:
        return None
    lo, hi = min(values), max(values)
    log = hi / lo > 4
    if log:
        x_lo = lo / 1.3
        x_hi = hi * 1.3
        ticks = [
            m * 10.0**k
            for k in range(math.floor(math.log10(x_lo)), math.ceil(math.log10(x_hi)) + 1)
            for m in (1, 2, 5)
            if x_lo <= m * 10.0**k <= x_hi
        ]
        if len(ticks) > 8:  # many decades: label the powers of ten only
            ticks = [t for t in ticks if f"{t:.0e}".startswith("1")]

        def fx(v: float) -> float:
            return (math.log10(v) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))
    else:
        step = _nice_step(hi - lo if hi > lo else hi)
        x_lo = max(0.0, math.floor(lo * 0.95 / step) * step)
        x_hi = math.ceil(hi * 1.05 / step) * step
        if x_hi <= x_lo:
            x_hi = x_lo + step
        ticks = [x_lo + i * step for i in range(round((x_hi - x_lo) / step) + 1)]

        def fx(v: float) -> float:
            return (v - x_lo) / (x_hi - x_lo)

    width, height = 640, 270
    left, right, top, bottom = 58, 18, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    t_lo, t_hi = _tail(0.5) - 0.12, _tail(0.99) + 0.12

    def sx(v: float) -> float:
        return round(left + fx(v) * plot_w, 1)

    def sy(p: float) -> float:
        return round(top + plot_h - (_tail(p) - t_lo) / (t_hi - t_lo) * plot_h, 1)

    series = []
    for name, points in paths:
        dots = [
            {"x": sx(v), "y": sy(p), "title": f"{name} {label}: {fmt_ms(v)}"}
            for p, label, v in points
        ]
        series.append(
            {
                "path": name,
                "points": " ".join(f"{d['x']},{d['y']}" for d in dots),
                "dots": dots,
                "line": len(dots) > 1,
            }
        )
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": top + plot_h,
        "log": log,
        "x_ticks": [{"x": sx(t), "label": _tick_label(t)} for t in ticks],
        "y_ticks": [{"y": sy(p), "label": f"{p * 100:g}%"} for p, _ in ECDF_LEVELS],
        "axis_x": round(left + plot_w / 2, 1),
        "axis_y": height - 8,
        "series": series,
    }
