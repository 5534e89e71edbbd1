"""A report as the view model the templates render: the header and every section."""

from __future__ import annotations

from typing import Any

from ...judge.model import Queries, Report, Tenant
from ._analysis import analysis_view
from ._business import business_checks, business_view
from ._diffs import mismatches_view
from ._environment import database_stats_view, environment_view
from ._failures import environment_events_view, failures_view
from ._format import counts_text, number
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


def report_context(report: Report) -> dict[str, Any]:
    verdict = _or(report.verdict, "INCONCLUSIVE").upper()
    flag = _or(report.flag, "(unnamed flag)")
    stage = _stage_context(report)
    gates = gates_view(report.gates)
    gate_limits = {g["name"]: g["threshold_value"] for g in gates}
    return {
        "schema_version": report.schema_version,
        "flag": flag,
        "description": _or(report.description),
        "owner": _or(report.owner),
        "kind": _or(report.kind),
        "verdict": verdict,
        "verdict_class": VERDICT_CLASS.get(verdict, "inconclusive"),
        "verdict_icon": VERDICT_ICON.get(verdict, VERDICT_ICON["INCONCLUSIVE"]),
        "reasons": list(report.reasons),
        "generated_at": _or(report.generated_at),
        "toolkit_version": _or(report.toolkit_version),
        "samples": report.samples,
        "incomplete_runs": incomplete_runs_view(report.incomplete_runs or []),
        **stage,
        "gates": gates,
        "gates_passed": sum(g["result"] == "pass" for g in gates),
        "gates_judged": sum(g["result"] != "info" for g in gates),
        "gates_info": sum(g["result"] == "info" for g in gates),
        "noise": noise_view(report.noise, flag, stage["stage"]),
        "mismatches": mismatches_view(report.mismatches),
        "latency": latency_view(report.latency),
        "latency_source": latency_source_view(report.latency, report.gates),
        "sources": sources_view(report.sources, report.gates),
        "failures": failures_view(report.failures),
        "environment_events": environment_events_view(report.environment_events),
        "locks": locks_view(report.locks),
        "plans": plans_view(report.plans),
        "generic_plans": generic_plans_view(
            report.generic_plans, gate_limits.get("generic_plan")
        ),
        "perturbation": perturbation_view(report.perturbation, report.gates),
        "pools": pools_view(report.pools),
        "stage_impact": stage_impact_view(report.stage_impact, stage["stage"]),
        "business": business_view(business_checks(report.stage_impact)),
        "tenants": _tenants(report.tenants),
        "queries": _queries(report.queries),
        "rollback": rollback_view(report.rollback),
        "timeline": timeline_view(report.timeline, stage["stage"]),
        "analysis": analysis_view(report.timeline.analysis if report.timeline else None),
        "database_stats": database_stats_view(report.database_stats),
        "environment": environment_view(report.environment),
    }


def _or(text: str | None, default: str = "") -> str:
    return default if text is None else text


def _stage_context(report: Report) -> dict[str, Any]:
    stage = _or(report.stage, "—")
    names = report.stages
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


def _tenants(tenants: list[Tenant] | None) -> list[dict[str, Any]] | None:
    if tenants is None:
        return None
    return [
        {
            "tenant": _or(t.tenant, "—"),
            "samples": t.samples,
            "mismatches": t.mismatches,
            "legacy_p50_ms": t.legacy_p50_ms,
            "new_p50_ms": t.new_p50_ms,
            "new_failures": t.new_failures,
            "new_failures_by_class": counts_text(t.new_failures_by_class),
            "flagged": bool(number(t.mismatches)) or bool(number(t.new_failures)),
        }
        for t in tenants
    ]


def _queries(queries: Queries | None) -> dict[str, Any] | None:
    if queries is None:
        return None
    out = {}
    for path, sql, source in (("legacy", queries.legacy, queries.legacy_source),
                              ("new", queries.new, queries.new_source)):
        out[path] = {"sql": sql, "source": _or(source), "lines": len(sql.splitlines()) if sql
                     else 0}
    return out
