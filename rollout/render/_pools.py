"""The running services' connection-pool figures for the stage's window, per pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._format import as_map, as_str, fmt_ms, fmt_num, number

POOLS = (("requests", "requests (served path)"), ("shadow", "shadow (background path)"))
NOTHING_RECORDED = "no running service recorded pool figures for this stage"


def pools_view(raw: Any) -> dict[str, Any] | None:
    """None for a report written before pool figures were added; else the window, a row per
    figure with a column per pool, a one-line summary per pool and whether any service
    recorded anything (``recorded``)."""
    if not isinstance(raw, Mapping):
        return None
    window = as_map(raw.get("window"))
    pools = [(name, label, as_map(raw.get(name))) for name, label in POOLS
             if isinstance(raw.get(name), Mapping)]
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
        cells = [fmt(p.get(key)) for _, _, p in pools]
        rows.append({"metric": metric, "cells": cells,
                     "worse": bad and any((number(p.get(key)) or 0) > 0 for _, _, p in pools)})
    return {
        "recorded": bool(pools),
        "empty_text": NOTHING_RECORDED,
        "start": as_str(window.get("start"), "—"),
        "end": as_str(window.get("end"), "—"),
        "since": {"stage_entered": "when the flag entered this stage",
                  "first_observation": "the stage's first observation"}.get(
                      as_str(window.get("since")), ""),
        "pools": [label for _, label, _ in pools],
        "rows": rows,
        "lines": [f"{name} pool: {_line(p)}" for name, _, p in pools],
        "note": as_str(raw.get("note")),
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


def _line(p: Mapping[str, Any]) -> str:
    return (f"checkout wait {fmt_wait(p.get('wait_ms'))}, "
            f"{fmt_num(p.get('requests_queued'))} waited, "
            f"checkout errors {fmt_num(p.get('errors'))}, "
            f"broken returns {fmt_num(p.get('returns_bad'))}, "
            f"lost connections {fmt_num(p.get('connections_lost'))}, "
            f"{fmt_num(p.get('requests'))} requests, "
            f"peak size {fmt_num(p.get('peak_pool_size'))}")
