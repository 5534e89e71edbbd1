"""The HTML renderers: the self-contained report page and the workspace index."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..model import Report
from ._context import VERDICT_CLASS, report_context
from ._env import HTML_TEMPLATE, INDEX_TEMPLATE, html_env
from ._format import as_int, as_list, as_map, as_str, clip

INDEX_MAX_DESCRIPTION = 160


def render_html(report: Report) -> str:
    """Render ``report`` to one self-contained HTML page (inline CSS and SVG, no network)."""
    return html_env().get_template(HTML_TEMPLATE).render(r=report_context(report))


def render_index(data: Mapping[str, Any]) -> str:
    """Render the workspace index (``reports/index.html``): every flag, its live stage, the
    latest verdict per stage and relative links to the HTML reports. ``data`` is what
    ``rollout.report.write_index`` collects; missing or malformed parts are shown as such."""
    return html_env().get_template(INDEX_TEMPLATE).render(ix=_index_context(data))


def _index_context(data: Mapping[str, Any]) -> dict[str, Any]:
    flags = []
    for item in as_list(data.get("flags")):
        raw = as_map(item)
        state = as_map(raw.get("state"))
        stage = as_str(state.get("stage"))
        killed = state.get("killed") is True
        started = (as_int(state.get("version")) or 0) > 0
        status = "killed" if killed else "live" if started else "not started"
        stages = []
        for st_item in as_list(raw.get("stages")):
            st = as_map(st_item)
            name = as_str(st.get("name"), "—")
            verdict = as_str(st.get("verdict")).upper()
            href = as_str(st.get("href"))
            stages.append(
                {
                    "name": name,
                    "current": started and name == stage,
                    "in_flag": st.get("in_flag") is not False,
                    "verdict": verdict,
                    "verdict_class": VERDICT_CLASS.get(verdict, "inconclusive")
                    if verdict
                    else "none",
                    "samples": st.get("samples"),
                    "created_at": as_str(st.get("created_at")),
                    "href": href if _relative_href(href) else "",
                    "html_stale": st.get("html_stale") is True,
                    "judged_by": as_str(st.get("judged_by")),
                }
            )
        current = next((s for s in stages if s["current"]), None)
        description = as_str(raw.get("description"))
        flags.append(
            {
                "name": as_str(raw.get("name"), "(unnamed flag)"),
                "description": clip(" ".join(description.split()), INDEX_MAX_DESCRIPTION),
                "description_full": description,
                "owner": as_str(raw.get("owner")),
                "error": as_str(raw.get("error")),
                "status": status,
                "stage": stage,
                "killed": killed,
                "updated_at": as_str(state.get("updated_at")),
                "updated_by": as_str(state.get("updated_by")),
                "stages": stages,
                "current_verdict": current["verdict"] if current else "",
                "current_class": current["verdict_class"] if current else "none",
            }
        )
    statuses = [str(f["status"]) for f in flags]
    counts = {
        "flags": len(flags),
        "killed": statuses.count("killed"),
        "live": statuses.count("live"),
        "not_started": statuses.count("not started"),
        "invalid": sum(bool(f["error"]) for f in flags),
    }
    return {
        "generated_at": as_str(data.get("generated_at")),
        "toolkit_version": as_str(data.get("toolkit_version")),
        "flags": flags,
        "counts": counts,
    }


def _relative_href(href: str) -> bool:
    """Only links relative to the index are written: no scheme, no absolute or network path."""
    return bool(href) and not re.match(r"^([a-z][a-z0-9+.-]*:|/|\\)", href, re.I)
