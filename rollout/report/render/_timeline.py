"""The flag's timeline (stages, audit events) and the impact of its last stage change."""

from __future__ import annotations

from typing import Any

from ...judge.model import ServedWindow, StageImpact, Timeline
from ._failures import ordered_classes
from ._format import fmt_ms, fmt_num, fmt_pct, fmt_ratio, number

TIMELINE_MAX_EVENTS = 20


def stage_impact_view(impact: StageImpact | None, stage: str) -> dict[str, Any] | None:
    if impact is None:
        return None
    before, after = impact.before or ServedWindow(), impact.after or ServedWindow()

    def served(window: ServedWindow) -> str:
        n, total = number(window.served_new), number(window.requests)
        text = fmt_num(window.served_new)
        return f"{text} ({fmt_pct(n / total)})" if n is not None and total else text

    rows = [
        {
            "metric": "requests",
            "before": fmt_num(before.requests),
            "after": fmt_num(after.requests),
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
        b, a = number(getattr(before, key)), number(getattr(after, key))
        rows.append(
            {
                "metric": label,
                "before": fmt_ms(b),
                "after": fmt_ms(a),
                "change": fmt_ratio(a / b) if b and a is not None else "",
                "worse": False,
            }
        )
    fb, fa = before.failures_by_class, after.failures_by_class
    classes = ordered_classes([*fb, *fa])
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
    minutes = number(impact.window_minutes)
    return {
        "changed_at": _or_dash(impact.changed_at),
        "from_stage": _or_dash(impact.from_stage),
        "to_stage": stage,
        "by": impact.by or "",
        "window": f"{minutes:g} minutes" if minutes is not None else "",
        "rows": rows,
        "note": impact.note or "",
    }


def timeline_view(timeline: Timeline | None, report_stage: str) -> dict[str, Any] | None:
    if timeline is None:
        return None
    current = timeline.current_stage or ""
    killed = timeline.killed is True
    started = timeline.started is True or (timeline.version or 0) > 0
    stages = [
        {
            "name": _or_dash(st.name),
            "current": st.current is True or (bool(current) and _or_dash(st.name) == current),
            "reported": _or_dash(st.name) == report_stage,
            "serve": st.serve or "",
            "shadow": st.shadow or "",
        }
        for st in timeline.stages
    ]
    events = []
    for ev in timeline.events[:TIMELINE_MAX_EVENTS]:
        from_stage, to_stage = ev.from_stage or "", ev.to_stage or ""
        if from_stage and to_stage and from_stage != to_stage:
            change = f"{from_stage} → {to_stage}"
        else:
            change = to_stage or from_stage or "—"
        events.append(
            {
                "at": _or_dash(ev.at),
                "actor": _or_dash(ev.actor),
                "action": _or_dash(ev.action),
                "change": change,
                "killed": ev.killed is True,
                "reason": ev.reason or "",
                "forced": ev.forced is True,
                "report_id": ev.report_id or "",
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
        "version": timeline.version,
        # the report judges one stage; the flag may be serving another right now
        "elsewhere": bool(current) and current != report_stage,
        "stages": stages,
        "events": events,
        "events_total": len(timeline.events),
    }


def _or_dash(text: str | None) -> str:
    return "—" if text is None else text
