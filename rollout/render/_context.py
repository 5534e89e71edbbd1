"""A report body as the view model the templates render: the header and every section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._analysis import analysis_view
from ._business import business_checks, business_view
from ._diffs import mismatches_view
from ._environment import database_stats_view, environment_view
from ._failures import environment_events_view, failures_view
from ._format import as_list, as_map, as_str, counts_text, number
from ._gates import gates_view, noise_view
from ._latency import latency_view
from ._locks import locks_view
from ._perturbation import perturbation_view
from ._plans import generic_plans_view, plans_view
from ._pools import pools_view
from ._rollback import rollback_view
from ._runs import incomplete_runs_view
from ._sources import latency_source_view, sources_view
from ._timeline import stage_impact_view, timeline_view

VERDICT_CLASS = {"GO": "go", "NO-GO": "nogo", "INCONCLUSIVE": "inconclusive"}
VERDICT_ICON = {"GO": "\U0001f7e2", "NO-GO": "\U0001f534", "INCONCLUSIVE": "\U0001f7e1"}


def report_context(report: Mapping[str, Any]) -> dict[str, Any]:
    verdict = as_str(report.get("verdict"), "INCONCLUSIVE").upper()
    flag = as_str(report.get("flag"), "(unnamed flag)")
    stage = _stage_context(report)
    gates = gates_view(report.get("gates"))
    gate_limits = {g["name"]: g["threshold_value"] for g in gates}
    return {
        "schema_version": report.get("schema_version"),
        "flag": flag,
        "description": as_str(report.get("description")),
        "owner": as_str(report.get("owner")),
        "kind": as_str(report.get("kind")),
        "verdict": verdict,
        "verdict_class": VERDICT_CLASS.get(verdict, "inconclusive"),
        "verdict_icon": VERDICT_ICON.get(verdict, VERDICT_ICON["INCONCLUSIVE"]),
        "reasons": [as_str(r) for r in _reasons(report.get("reasons"))],
        "generated_at": as_str(report.get("generated_at")),
        "toolkit_version": as_str(report.get("toolkit_version")),
        "samples": report.get("samples"),
        "incomplete_runs": incomplete_runs_view(report.get("incomplete_runs")),
        **stage,
        "gates": gates,
        "gates_passed": sum(g["result"] == "pass" for g in gates),
        "gates_judged": sum(g["result"] != "info" for g in gates),
        "gates_info": sum(g["result"] == "info" for g in gates),
        "noise": noise_view(report.get("noise"), flag, stage["stage"]),
        "mismatches": mismatches_view(report.get("mismatches")),
        "latency": latency_view(report.get("latency")),
        "latency_source": latency_source_view(report.get("latency"), report.get("gates")),
        "sources": sources_view(report.get("sources"), report.get("gates")),
        "failures": failures_view(report.get("failures")),
        "environment_events": environment_events_view(report.get("environment_events")),
        "locks": locks_view(report.get("locks")),
        "plans": plans_view(report.get("plans")),
        "generic_plans": generic_plans_view(
            report.get("generic_plans"), gate_limits.get("generic_plan")
        ),
        "perturbation": perturbation_view(report.get("perturbation"), report.get("gates")),
        "pools": pools_view(report.get("pools")),
        "stage_impact": stage_impact_view(report.get("stage_impact"), stage["stage"]),
        "business": business_view(business_checks(report.get("stage_impact"))),
        "tenants": _tenants(report.get("tenants")),
        "queries": _queries(report.get("queries")),
        "rollback": rollback_view(report.get("rollback")),
        "timeline": timeline_view(report.get("timeline"), stage["stage"]),
        "analysis": analysis_view(as_map(report.get("timeline")).get("analysis")),
        "database_stats": database_stats_view(report.get("database_stats")),
        "environment": environment_view(report.get("environment")),
    }


def _reasons(raw: Any) -> list[Any]:
    return [raw] if isinstance(raw, str) and raw else as_list(raw)


def _stage_context(report: Mapping[str, Any]) -> dict[str, Any]:
    stage = as_str(report.get("stage"), "—")
    names = [as_str(s) for s in as_list(report.get("stages"))]
    track: list[dict[str, str]] = []
    next_stage = ""
    if stage in names:
        current = names.index(stage)
        for i, name in enumerate(names):
            state = "done" if i < current else "current" if i == current else "todo"
            track.append({"name": name, "state": state})
        if current + 1 < len(names):
            next_stage = names[current + 1]
    return {"stage": stage, "stage_track": track, "next_stage": next_stage}


def _tenants(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    tenants = []
    for item in as_list(raw):
        t = as_map(item)
        mismatches, failures = number(t.get("mismatches")), number(t.get("new_failures"))
        tenants.append(
            {
                "tenant": as_str(t.get("tenant"), "—"),
                "samples": t.get("samples"),
                "mismatches": t.get("mismatches"),
                "legacy_p50_ms": t.get("legacy_p50_ms"),
                "new_p50_ms": t.get("new_p50_ms"),
                "new_failures": t.get("new_failures"),
                "new_failures_by_class": counts_text(t.get("new_failures_by_class")),
                "flagged": bool(mismatches) or bool(failures),
            }
        )
    return tenants


def _queries(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    out = {}
    for path in ("legacy", "new"):
        sql = raw.get(path)
        out[path] = {
            "sql": sql if isinstance(sql, str) else None,
            "source": as_str(raw.get(f"{path}_source")),
            "lines": len(sql.splitlines()) if isinstance(sql, str) else 0,
        }
    return out
