"""Latency: both paths' quantiles, the ratio and its interval, and the quantile bar chart."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...judge.model import Latency, PathLatency
from ._ecdf import latency_ecdf
from ._format import as_pair, fmt_ms, number

QUANTILES = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))


def _path_quantiles(path: PathLatency | None) -> dict[str, Any]:
    path = path or PathLatency()
    return {
        **{label: getattr(path, key) for label, key in QUANTILES},
        "mean": path.mean_ms,
        "n": path.n,
    }


def latency_view(lat: Latency | None) -> dict[str, Any] | None:
    if lat is None:
        return None
    legacy = _path_quantiles(lat.legacy)
    new = _path_quantiles(lat.new)
    quantile = number(lat.quantile)
    gated = f"p{quantile * 100:g}" if quantile is not None else ""
    rows = []
    for label in [*(q for q, _ in QUANTILES), "mean"]:
        lv, nv = number(legacy[label]), number(new[label])
        ratio = nv / lv if lv and nv is not None else None
        rows.append(
            {
                "label": label,
                "legacy": lv,
                "new": nv,
                "ratio": ratio,
                "gated": label == gated,
            }
        )
    tolerance = number(lat.effective_tolerance)
    confidence = number(lat.confidence)
    return {
        "gated": gated or "chosen quantile",
        "rows": rows,
        "n_legacy": legacy["n"],
        "n_new": new["n"],
        # schema 1 bodies have no Hodges-Lehmann estimate at all: say nothing about it
        "hl_reported": "hl_ratio" not in lat.absent,
        "hl_ratio": number(lat.hl_ratio),
        "hl_ci": as_pair(lat.hl_ci),
        "ratio": number(lat.ratio),
        "ci": as_pair(lat.ratio_ci),
        "confidence": confidence,
        "alpha": 1 - confidence if confidence is not None else None,
        "change_pct": lat.change_pct,
        "mann_whitney_p": number(lat.mann_whitney_p),
        "tolerance": tolerance,
        "limit": 1 + tolerance if tolerance is not None else None,
        "samples_needed": lat.samples_needed,
        "chart": _latency_chart(legacy, new, gated),
        "ecdf": latency_ecdf(legacy, new),
    }


def _latency_chart(
    legacy: Mapping[str, Any], new: Mapping[str, Any], gated: str
) -> dict[str, Any] | None:
    """Geometry for a horizontal grouped bar chart of both paths' quantiles."""
    values = [number(p[q]) for q, _ in QUANTILES for p in (legacy, new)]
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not finite:
        return None
    scale_max = max(finite)
    width, label_w, value_w, top = 640, 64, 96, 30
    bar_h, bar_gap, group_gap = 14, 3, 14
    area = width - label_w - value_w
    groups = []
    y = top
    for q, _ in QUANTILES:
        bars = []
        for i, (path, data) in enumerate((("legacy", legacy), ("new", new))):
            v = number(data[q])
            bar_y = y + i * (bar_h + bar_gap)
            if v is None or not math.isfinite(v) or v <= 0:
                length = 0.0
            else:
                length = max(1.0, v / scale_max * area)
            bars.append(
                {
                    "path": path,
                    "x": label_w,
                    "y": bar_y,
                    "w": round(length, 1),
                    "h": bar_h,
                    "text": fmt_ms(v),
                    "text_x": round(label_w + length + 6, 1),
                    "text_y": bar_y + bar_h - 3,
                }
            )
        groups.append({"label": q, "gated": q == gated, "y": y + bar_h + 4, "bars": bars})
        y += 2 * bar_h + bar_gap + group_gap
    return {"width": width, "height": y - group_gap + 6, "groups": groups}
