"""The watcher's history: every analysis interval `rollout watch` judged, and who acted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._format import (
    as_int,
    as_list,
    as_map,
    as_pair,
    as_str,
    clip,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_ratio,
    fmt_seconds,
    number,
)
from ._md_escape import md_code, md_text

MAX_SHOWN = 20
"""Intervals shown in the timeline (the body keeps the latest 50)."""
MAX_REASONS = 3
MAX_REASON = 160  # characters of a reason in the table; the whole one in its title
MD_MAX_TEXT = 160
DECISIONS = {
    "continue": "continue",
    "abort": "abort: killed the flag",
    "promote": "promote: advanced the flag",
    "stale": "stale: the flag changed meanwhile, nothing applied",
}
VERDICT_CLASS = {"GO": "pass", "NO-GO": "fail", "INCONCLUSIVE": "na"}
GATE_MARK = {"pass": "✓", "fail": "✗", "inconclusive": "?", "info": "i"}


def analysis_view(raw: Any) -> dict[str, Any] | None:
    """``timeline.analysis`` (``watch.analysis_history``, newest first): the latest
    ``MAX_SHOWN`` intervals as rows, how many more the body holds, and the counts of each
    decision. None for bodies that predate it or a flag no watcher judged."""
    items = [as_map(i) for i in as_list(raw)]
    if not items:
        return None
    decisions = Counter(as_str(i.get("decision"), "?") for i in items)
    rows = [_interval(i) for i in items[:MAX_SHOWN]]
    return {
        "rows": rows,
        "total": len(items),
        "hidden": max(0, len(items) - MAX_SHOWN),
        "latest": rows[0],
        "decisions": ", ".join(f"{n} {clip(d, 40)}" for d, n in decisions.most_common(5))
        + (", …" if len(decisions) > 5 else ""),
        "acted": [r for r in rows if r["acted_by"]],
    }


def _interval(item: Mapping[str, Any]) -> dict[str, Any]:
    figures = as_map(item.get("figures"))
    window = as_map(figures.get("window"))
    stage_figures = as_map(figures.get("stage"))
    sequential = as_map(figures.get("sequential"))
    verdict = as_str(item.get("verdict")).upper()
    decision = as_str(item.get("decision"), "?")
    lat_alpha = number(as_map(sequential.get("latency")).get("alpha"))
    mis_alpha = number(as_map(sequential.get("mismatch")).get("alpha"))
    window_parts = [f"{fmt_num(window.get('samples'))} pairs"]
    if number(window.get("hl_ratio")) is not None:
        ci = as_pair(window.get("hl_ci"))
        window_parts.append(f"latency {fmt_ratio(window.get('hl_ratio'))}"
                            + (f" (CI {fmt_ci(ci)})" if ci else ""))
    if window.get("compared") is not None:
        window_parts.append(f"{fmt_num(window.get('mismatches'))} of "
                            f"{fmt_num(window.get('compared'))} mismatched")
    if window.get("new_only_failures"):
        window_parts.append(f"{fmt_num(window.get('new_only_failures'))} failed only on new")
    if window.get("environment_events"):
        window_parts.append(f"{fmt_num(window.get('environment_events'))} environment "
                            "failures")
    reasons = [as_str(r) for r in as_list(item.get("reasons"))]
    gates = [as_map(g) for g in as_list(figures.get("gates"))][:10]
    open_gates = [g for g in gates if as_str(g.get("status")) in ("fail", "inconclusive")]
    return {
        "at": as_str(item.get("at"), "—"),
        "stage": as_str(item.get("stage"), "—"),
        "version": as_int(item.get("state_version")),
        "window_start": as_str(item.get("window_start")),
        "window_end": as_str(item.get("window_end")),
        "verdict": verdict or "—",
        "verdict_class": VERDICT_CLASS.get(verdict, "muted"),
        "decision": decision,
        "decision_text": DECISIONS.get(decision, decision),
        "acting": decision in ("abort", "promote"),
        "latency_p": fmt_p(item.get("latency_p")) if number(item.get("latency_p")) is not None
        else "—",
        "latency_alpha": fmt_num(lat_alpha) if lat_alpha is not None else "",
        "mismatch_p": fmt_p(item.get("mismatch_p"))
        if number(item.get("mismatch_p")) is not None else "—",
        "mismatch_alpha": fmt_num(mis_alpha) if mis_alpha is not None else "",
        "window": ", ".join(window_parts),
        "window_span": _span(item.get("window_start"), item.get("window_end")),
        "stage_pairs": stage_figures.get("pairs_timed"),
        "stage_compared": stage_figures.get("compared"),
        "failed_intervals": as_int(item.get("failed_intervals")),
        "go_streak": as_int(item.get("go_streak")),
        "inconclusive_streak": as_int(item.get("inconclusive_streak")),
        "gates": [{"name": as_str(g.get("name"), "?"),
                   "mark": GATE_MARK.get(as_str(g.get("status")), "–"),
                   "status": as_str(g.get("status"))} for g in open_gates],
        "gates_passed": bool(gates) and not open_gates,
        "reasons": [{"text": clip(r, MAX_REASON), "full": r} for r in reasons[:MAX_REASONS]],
        "reasons_more": max(0, len(reasons) - MAX_REASONS),
        "watcher": as_str(item.get("watcher")),
        "acted_by": as_str(item.get("acted_by")),
        "report_id": as_str(item.get("report_id")),
    }


def _span(start: Any, end: Any) -> str:
    """How long a window was, from its two ISO times ("" when either is missing)."""
    try:
        seconds = (datetime.fromisoformat(as_str(end)) - datetime.fromisoformat(as_str(start))
                   ).total_seconds()
    except (TypeError, ValueError):
        return ""
    return fmt_seconds(seconds)


def md_watch(raw: Any) -> str:
    """One pre-escaped Markdown line: the watcher's latest decision, its sequential
    p-values, who acted, and the decisions so far; "" when no watcher judged the flag."""
    view = analysis_view(raw)
    if view is None:
        return ""
    last = view["latest"]
    text = (f"latest interval {md_text(clip(last['at'], 40))}: "
            f"**{md_text(clip(last['decision'], 40))}** "
            f"({md_text(clip(last['verdict'], 20))}, stage {md_code(clip(last['stage'], 60))}; "
            f"latency {md_text(last['latency_p'])}, mismatches {md_text(last['mismatch_p'])})")
    if last["acted_by"]:
        text += f" · acted: {md_text(clip(last['acted_by'], 120))}"
        if last["report_id"]:
            text += f", report {md_code(clip(last['report_id'], 60))}"
    elif last["watcher"]:
        text += f" · by {md_text(clip(last['watcher'], 120))}"
    if last["reasons"] and last["verdict"] != "GO":
        text += f" · {md_text(clip(last['reasons'][0]['full'], MD_MAX_TEXT))}"
    text += f" · {view['total']} interval{'' if view['total'] == 1 else 's'}: "
    text += md_text(view["decisions"])
    return text
