"""The running services' connection-pool figures for the stage's window, per pool."""

from __future__ import annotations

from typing import Any

from ...judge.model import PoolFigures, Pools, PoolWindow
from ._format import fmt_ms, fmt_num, number

POOLS = (("requests", "requests (served path)"), ("shadow", "shadow (background path)"))
NOTHING_RECORDED = "no running service recorded pool figures for this stage"


def pools_view(pools: Pools | None) -> dict[str, Any] | None:
    """None for a report written before pool figures were added; else the window, a row per
    figure with a column per pool, a one-line summary per pool and whether any service
    recorded anything (``recorded``)."""
    if pools is None:
        return None
    window = pools.window or PoolWindow()
    recorded = [(name, label, figures) for name, label in POOLS
                if (figures := getattr(pools, name)) is not None]
    rows = []
    for key, metric, fmt, bad in (
        ("wait_ms", "checkout wait (total)", fmt_wait, False),
        ("requests_queued", "requests that waited", fmt_num, False),
        ("errors", "checkout errors", fmt_num, True),
        ("returns_bad", "broken returns", fmt_num, True),
        ("connections_lost", "connections lost", fmt_num, True),
        ("requests", "requests", fmt_num, False),
        ("peak_pool_size", "peak pool size", fmt_num, False),
    ):
        cells = [fmt(getattr(p, key)) for _, _, p in recorded]
        rows.append({"metric": metric, "cells": cells,
                     "worse": bad and any((getattr(p, key) or 0) > 0 for _, _, p in recorded)})
    return {
        "recorded": bool(recorded),
        "empty_text": NOTHING_RECORDED,
        "start": "—" if window.start is None else window.start,
        "end": "—" if window.end is None else window.end,
        "since": {"stage_entered": "when the flag entered this stage",
                  "first_observation": "the stage's first observation"}.get(
                      window.since or "", ""),
        "pools": [label for _, label, _ in recorded],
        "rows": rows,
        "lines": [f"{name} pool: {_line(p)}" for name, _, p in recorded],
        "note": pools.note or "",
    }


def fmt_wait(value: Any) -> str:
    """A total checkout wait (whole milliseconds, as psycopg_pool counts them): milliseconds
    while short, whole seconds beyond ten."""
    x = number(value)
    if x is not None and x >= 10_000:
        return f"{x / 1000:,.0f} s"
    if x is not None and x.is_integer():
        return f"{x:,.0f} ms"
    return fmt_ms(value)


def _line(p: PoolFigures) -> str:
    return (f"checkout wait {fmt_wait(p.wait_ms)}, "
            f"{fmt_num(p.requests_queued)} waited, "
            f"checkout errors {fmt_num(p.errors)}, "
            f"broken returns {fmt_num(p.returns_bad)}, "
            f"lost connections {fmt_num(p.connections_lost)}, "
            f"{fmt_num(p.requests)} requests, "
            f"peak size {fmt_num(p.peak_pool_size)}")
