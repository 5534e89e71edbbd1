"""The HTML renderers: the self-contained report page and the workspace index."""

from __future__ import annotations

import re
from typing import Any

from ...judge.model import Report
from ..model_index import IndexPage, LiveState
from ._context import VERDICT_CLASS, report_context
from ._env import HTML_TEMPLATE, INDEX_TEMPLATE, html_env
from ._format import clip

INDEX_MAX_DESCRIPTION = 160


def render_html(report: Report) -> str:
    """Render ``report`` to one self-contained HTML page (inline CSS and SVG, no network)."""
    return html_env().get_template(HTML_TEMPLATE).render(r=report_context(report))


def render_index(page: IndexPage) -> str:
    """Render the workspace index (``reports/index.html``): every flag, its live stage, the
    latest verdict per stage and relative links to the HTML reports (``page`` is what
    ``rollout.report.build.write_index`` collects); missing parts are shown as such."""
    return html_env().get_template(INDEX_TEMPLATE).render(ix=_index_context(page))


def _index_context(page: IndexPage) -> dict[str, Any]:
    flags = []
    for raw in page.flags:
        state = raw.state or LiveState()
        stage = state.stage or ""
        killed = state.killed is True
        started = (state.version or 0) > 0
        status = "killed" if killed else "live" if started else "not started"
        stages = []
        for st in raw.stages:
            name = "—" if st.name is None else st.name
            verdict = (st.verdict or "").upper()
            href = st.href or ""
            stages.append(
                {
                    "name": name,
                    "current": started and name == stage,
                    "in_flag": st.in_flag is not False,
                    "verdict": verdict,
                    "verdict_class": VERDICT_CLASS.get(verdict, "inconclusive")
                    if verdict
                    else "none",
                    "samples": st.samples,
                    "created_at": st.created_at or "",
                    "href": href if _relative_href(href) else "",
                    "html_stale": st.html_stale is True,
                    "judged_by": st.judged_by or "",
                }
            )
        current = next((s for s in stages if s["current"]), None)
        description = raw.description or ""
        flags.append(
            {
                "name": "(unnamed flag)" if raw.name is None else raw.name,
                "description": clip(" ".join(description.split()), INDEX_MAX_DESCRIPTION),
                "description_full": description,
                "owner": raw.owner or "",
                "error": raw.error or "",
                "status": status,
                "stage": stage,
                "killed": killed,
                "updated_at": state.updated_at or "",
                "updated_by": state.updated_by or "",
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
        "generated_at": page.generated_at or "",
        "toolkit_version": page.toolkit_version or "",
        "flags": flags,
        "counts": counts,
    }


def _relative_href(href: str) -> bool:
    """Only links relative to the index are written: no scheme, no absolute or network path."""
    return bool(href) and not re.match(r"^([a-z][a-z0-9+.-]*:|/|\\)", href, re.I)
