"""The watcher's history: every analysis interval `rollout watch` judged, and who acted."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from ...judge.model import AnalysisInterval
from ._format import (
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


def analysis_view(items: list[AnalysisInterval] | None) -> dict[str, Any] | None:
    """``timeline.analysis`` (``store.history.analysis_history``, newest first): the latest
    ``MAX_SHOWN`` intervals as rows, how many more the body holds, and the counts of each
    decision. None for bodies that predate it or a flag no watcher judged."""
    if not items:
        return None
    decisions = Counter("?" if i.decision is None else i.decision for i in items)
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


def _interval(item: AnalysisInterval) -> dict[str, Any]:
    # the figures are the watcher's own record: read as it wrote them
    figures = item.figures
    window = as_map(figures.get("window"))
    stage_figures = as_map(figures.get("stage"))
    sequential = as_map(figures.get("sequential"))
    verdict = (item.verdict or "").upper()
    decision = "?" if item.decision is None else item.decision
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
    reasons = item.reasons
    gates = [as_map(g) for g in as_list(figures.get("gates"))][:10]
    open_gates = [g for g in gates if as_str(g.get("status")) in ("fail", "inconclusive")]
    return {
        "at": _or_dash(item.at),
        "stage": _or_dash(item.stage),
        "version": item.state_version,
        "window_start": item.window_start or "",
        "window_end": item.window_end or "",
        "verdict": verdict or "—",
        "verdict_class": VERDICT_CLASS.get(verdict, "muted"),
        "decision": decision,
        "decision_text": DECISIONS.get(decision, decision),
        "acting": decision in ("abort", "promote"),
        "latency_p": fmt_p(item.latency_p) if number(item.latency_p) is not None else "—",
        "latency_alpha": fmt_num(lat_alpha) if lat_alpha is not None else "",
        "mismatch_p": fmt_p(item.mismatch_p) if number(item.mismatch_p) is not None else "—",
        "mismatch_alpha": fmt_num(mis_alpha) if mis_alpha is not None else "",
        "window": ", ".join(window_parts),
        "window_span": _span(item.window_start or "", item.window_end or ""),
        "stage_pairs": stage_figures.get("pairs_timed"),
        "stage_compared": stage_figures.get("compared"),
        "failed_intervals": item.failed_intervals,
        "go_streak": item.go_streak,
        "inconclusive_streak": item.inconclusive_streak,
        "gates": [{"name": as_str(g.get("name"), "?"),
                   "mark": GATE_MARK.get(as_str(g.get("status")), "–"),
                   "status": as_str(g.get("status"))} for g in open_gates],
        "gates_passed": bool(gates) and not open_gates,
        "reasons": [{"text": clip(r, MAX_REASON), "full": r} for r in reasons[:MAX_REASONS]],
        "reasons_more": max(0, len(reasons) - MAX_REASONS),
        "watcher": item.watcher or "",
        "acted_by": item.acted_by or "",
        "report_id": item.report_id or "",
    }


def _or_dash(text: str | None) -> str:
    return "—" if text is None else text


def _span(start: str, end: str) -> str:
    """How long a window was, from its two ISO times ("" when either is missing)."""
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return ""
    return fmt_seconds(seconds)


def md_watch(items: list[AnalysisInterval] | None) -> str:
    """One pre-escaped Markdown line: the watcher's latest decision, its sequential
    p-values, who acted, and the decisions so far; "" when no watcher judged the flag."""
    view = analysis_view(items)
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
