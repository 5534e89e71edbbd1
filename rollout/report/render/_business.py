"""Business metrics around the stage change: each check's windows, change, interval, status."""

from __future__ import annotations

from typing import Any

from ...judge.model import StageImpact
from ...judge.model_record import JsonObject
from ._format import as_int, as_list, as_map, as_pair, as_str, clip, fmt_num, number
from ._md_escape import md_code, md_text

MAX_CHECKS = 20  # a flag has at most 20 (flagfile); a tampered body is cut here
MAX_VALUES = 12
MD_MAX_CHECKS = 4
MD_MAX_DISPLAY = 140
STATUSES = ("pass", "fail", "inconclusive")
ICONS = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def _side(raw: Any) -> dict[str, Any] | None:
    side = as_map(raw)
    if not side:
        return None
    values = [v for v in (number(x) for x in as_list(side.get("values"))) if v is not None]
    notes = []
    empty, waiting = as_int(side.get("empty")) or 0, as_int(side.get("not_elapsed")) or 0
    if empty:
        notes.append(f"{empty} without a value")
    if waiting:
        notes.append(f"{waiting} not elapsed yet")
    return {
        "mean": fmt_num(number(side.get("mean"))),
        "count": len(values),
        "series": ", ".join(fmt_num(v) for v in values[:MAX_VALUES])
        + (" …" if len(values) > MAX_VALUES else ""),
        "notes": ", ".join(notes),
        "start": as_str(side.get("start")),
        "end": as_str(side.get("end")),
    }


def business_view(raw: Any) -> dict[str, Any] | None:
    """``stage_impact.business`` (``business.business_impact``) as table rows; None when
    the body has no business checks."""
    checks = [as_map(c) for c in as_list(raw)]
    if not checks:
        return None
    rows = []
    for check in checks[:MAX_CHECKS]:
        status = as_str(check.get("status")).lower()
        status = status if status in STATUSES else "inconclusive"
        confidence = number(check.get("confidence"))
        change = number(check.get("change"))
        ci = as_pair(check.get("ci"))
        if ci is not None:
            interval = f"[{_pct(ci[0])}, {_pct(ci[1])}]"
        elif change is not None:
            interval = "unbounded (the baseline cannot be told from zero)"
        else:
            interval = ""
        direction = as_str(check.get("direction"))
        tolerance = number(check.get("tolerance"))
        rows.append({
            "name": as_str(check.get("name"), "(unnamed check)"),
            "better": f"{direction} is better" if direction in ("higher", "lower") else "",
            "gated": check.get("gate") is True,
            "tolerance": f"{tolerance:.1%}" if tolerance is not None else "—",
            "confidence": f"{confidence:.0%}" if confidence is not None else "",
            "before": _side(check.get("before")),
            "after": _side(check.get("after")),
            "change": _pct(change),
            "interval": interval,
            "status": status,
            "reason": as_str(check.get("reason")),
            "display": as_str(check.get("display")),
            "lacking": check.get("lacking") is True,
        })
    first = checks[0]
    minutes, sub = number(first.get("window_minutes")), number(first.get("sub_window_minutes"))
    same_window = all(number(c.get("window_minutes")) == minutes for c in checks)
    return {
        "rows": rows,
        "hidden": max(0, len(checks) - MAX_CHECKS),
        "window": f"{minutes:g} minutes" if minutes is not None and same_window else "",
        "sub_window": f"{sub:g} minutes" if sub is not None and same_window else "",
        "gated": sum(r["gated"] for r in rows),
        "failed": sum(r["status"] == "fail" for r in rows),
    }


def md_business(raw: Any) -> str:
    """One pre-escaped Markdown line: every check's status and figures, gated ones first
    marked; "" without business checks."""
    view = business_view(raw)
    if view is None:
        return ""
    parts = []
    for row in view["rows"][:MD_MAX_CHECKS]:
        role = "gated" if row["gated"] else "informational"
        figures = row["display"] or row["reason"]
        parts.append(f"{ICONS[row['status']]} {md_code(clip(row['name'], 60))} "
                     f"{row['status']} ({role}): {md_text(clip(figures, MD_MAX_DISPLAY))}")
    more = len(view["rows"]) + view["hidden"] - MD_MAX_CHECKS
    line = " · ".join(parts)
    if more > 0:
        line += f" · +{more} more in the HTML report"
    return line


def business_checks(impact: StageImpact | None) -> list[JsonObject] | None:
    """The business checks carried by a report's ``stage_impact`` (or None)."""
    return impact.business if impact is not None else None
