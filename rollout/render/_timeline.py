"""The flag's timeline (stages, audit events) and the impact of its last stage change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._failures import ordered_classes
from ._format import as_int, as_list, as_map, as_str, fmt_ms, fmt_num, fmt_pct, fmt_ratio, number

TIMELINE_MAX_EVENTS = 20


def stage_impact_view(raw: Any, stage: str) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    before, after = as_map(raw.get("before")), as_map(raw.get("after"))

    def served(window: Mapping[str, Any]) -> str:
        n, total = number(window.get("served_new")), number(window.get("requests"))
        text = fmt_num(window.get("served_new"))
        return f"{text} ({fmt_pct(n / total)})" if n is not None and total else text

    rows = [
        {
            "metric": "requests",
            "before": fmt_num(before.get("requests")),
            "after": fmt_num(after.get("requests")),
            "change": "",
            "worse": False,
        },
        {
            "metric": "served by the new path",
            "before": served(before),
            "after": served(after),
            "change": "",
            "worse": False,
        },
    ]
    for key, label in (
        ("p50_ms", "p50 latency"),
        ("p95_ms", "p95 latency"),
        ("p99_ms", "p99 latency"),
        ("mean_lock_wait_ms", "mean lock wait"),
    ):
        b, a = number(before.get(key)), number(after.get(key))
        rows.append(
            {
                "metric": label,
                "before": fmt_ms(b),
                "after": fmt_ms(a),
                "change": fmt_ratio(a / b) if b and a is not None else "",
                "worse": False,
            }
        )
    fb, fa = as_map(before.get("failures_by_class")), as_map(after.get("failures_by_class"))
    classes = ordered_classes(as_str(c) for c in (*fb, *fa))
    for cls in classes:
        b, a = number(fb.get(cls)) or 0, number(fa.get(cls)) or 0
        rows.append(
            {
                "metric": f"failures: {cls}",
                "before": fmt_num(fb.get(cls, 0)),
                "after": fmt_num(fa.get(cls, 0)),
                "change": "",
                "worse": a > b,
            }
        )
    if not classes:
        rows.append(
            {"metric": "failures", "before": "0", "after": "0", "change": "", "worse": False}
        )
    minutes = number(raw.get("window_minutes"))
    return {
        "changed_at": as_str(raw.get("changed_at"), "—"),
        "from_stage": as_str(raw.get("from_stage"), "—"),
        "to_stage": stage,
        "by": as_str(raw.get("by")),
        "window": f"{minutes:g} minutes" if minutes is not None else "",
        "rows": rows,
        "note": as_str(raw.get("note")),
    }


def timeline_view(raw: Any, report_stage: str) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    current = as_str(raw.get("current_stage"))
    killed = raw.get("killed") is True
    started = raw.get("started") is True or (as_int(raw.get("version")) or 0) > 0
    stages = []
    for item in as_list(raw.get("stages")):
        st = as_map(item)
        name = as_str(st.get("name"), "—")
        stages.append(
            {
                "name": name,
                "current": st.get("current") is True or (bool(current) and name == current),
                "reported": name == report_stage,
                "serve": as_str(st.get("serve")),
                "shadow": as_str(st.get("shadow")),
            }
        )
    events = []
    for item in as_list(raw.get("events"))[:TIMELINE_MAX_EVENTS]:
        ev = as_map(item)
        from_stage, to_stage = as_str(ev.get("from_stage")), as_str(ev.get("to_stage"))
        if from_stage and to_stage and from_stage != to_stage:
            change = f"{from_stage} → {to_stage}"
        else:
            change = to_stage or from_stage or "—"
        events.append(
            {
                "at": as_str(ev.get("at"), "—"),
                "actor": as_str(ev.get("actor"), "—"),
                "action": as_str(ev.get("action"), "—"),
                "change": change,
                "killed": ev.get("killed") is True,
                "reason": as_str(ev.get("reason")),
                "forced": ev.get("forced") is True,
                "report_id": as_str(ev.get("report_id")),
            }
        )
    if killed:
        status = "killed"
    elif not started:
        status = "not started"
    else:
        status = "live"
    return {
        "status": status,
        "current_stage": current,
        "killed": killed,
        "started": started,
        "version": as_int(raw.get("version")),
        # the report judges one stage; the flag may be serving another right now
        "elsewhere": bool(current) and current != report_stage,
        "stages": stages,
        "events": events,
        "events_total": len(as_list(raw.get("events"))),
    }
