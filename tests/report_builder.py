"""Reports for the render tests, built from model objects (rollout.judge.model), and the helpers
every report test shares: rendering a model or a stored body, the page's visible text, the
schema check, a real shadow run and its report.

``sample_report()`` is one typical report of the ``orders-recent`` flag at shadow-pilot; the
other reports are variations of it. ``make_report()`` is the same report as its JSON body,
for tests that edit a body the way a stored or tampered one could look."""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from rollout.judge.model import (
    Environment,
    Failures,
    GateResult,
    Latency,
    Locks,
    Mismatches,
    MismatchSample,
    Noise,
    PathFailures,
    PathLatency,
    PathLocks,
    Queries,
    Report,
    RollbackPlan,
    SampleCounts,
    Tenant,
    Timeline,
    TimelineStage,
)
from rollout.judge.model_json import read, report_from_json, to_json
from rollout.judge.model_record import Json
from rollout.report.model_index import IndexPage
from rollout.report.render import render_html, render_index, render_markdown
from tests.conftest import REPO
from tests.helpers import run_cli

XSS = "<script>alert(1)</script>"
XSS_PLAIN = "<script>alert`1`</script>"  # no brackets or commas: plan shapes still parse
QUOTES = 'it\'s "quoted"'

LEGACY_SQL = (
    "SELECT o.id, o.total FROM orders o\n"
    " WHERE o.customer_id = %(customer_id)s\n"
    " ORDER BY o.created_at DESC LIMIT 20\n"
)
NEW_SQL = (
    "-- keyset read through orders_customer_created_idx\n"
    "SELECT id, total FROM orders\n"
    " WHERE customer_id = %(customer_id)s AND total > 0\n"
    " ORDER BY created_at DESC, id DESC LIMIT 20\n"
)

CONTRACT_KEYS = {"verdict", "reasons", "flag", "stage", "samples", "gates", "mismatches",
                 "latency", "locks", "failures", "rollback"}


# -- rendering --------------------------------------------------------------------------------


def as_report(report: Report | Mapping[str, Any]) -> Report:
    """``report`` itself, or a body read the way every stored body is read."""
    return report if isinstance(report, Report) else report_from_json(report)


def html_page(report: Report | Mapping[str, Any]) -> str:
    """The HTML page of a report (a model, or a JSON body of any schema version)."""
    return render_html(as_report(report))


def markdown_comment(report: Report | Mapping[str, Any]) -> str:
    """The Markdown comment of a report (a model, or a JSON body of any schema version)."""
    return render_markdown(as_report(report))


def index_html(page: IndexPage | Mapping[str, Any]) -> str:
    """The workspace index page, of an ``IndexPage`` or of its parts as plain data (read
    like a report body: what is missing or malformed shows as such)."""
    return render_index(page if isinstance(page, IndexPage) else read(IndexPage, page))


def visible_text(page: str) -> str:
    """Tag-free, entity-decoded text of an HTML page (roughly what a reader sees)."""
    body = re.sub(r"<style.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def section(page: str, start: str, end: str) -> str:
    """Visible text between two section ids, whitespace collapsed, inline markup dropped."""
    html_part = page[page.index(f'id="{start}"') : page.index(f'id="{end}"')]
    html_part = re.sub(r"</?(code|strong|em)>", "", html_part)
    return " ".join(visible_text(html_part).split())


# -- the model builder ------------------------------------------------------------------------


def gate(name: str, status: str, figure: Json, threshold: Json, display: str | None,
         reason: str, *, confidence: float | None = None, passed: bool | None = None,
         details: dict[str, Json] | None = None) -> GateResult:
    """A gate; ``passed`` follows ``status`` unless given (info gates have none)."""
    if passed is None and status != "info":
        passed = status == "pass"
    return GateResult(name, status, passed, figure, threshold, confidence, display, reason,
                      details or {})


def path_latency(n: int, p50: float, p90: float, p95: float, p99: float, mean: float
                 ) -> PathLatency:
    return PathLatency(n, p50, p90, p95, p99, mean)


def lock(relation: str, mode: str) -> list[str]:
    return [relation, mode]


CHANGED_TOTAL: dict[str, Json] = {
    "kind": "changed", "position": 3, "key": {"id": "7"}, "columns": ["total"],
    "legacy": {"id": "7", "total": "1.50"}, "new": {"id": "7", "total": "1.60"}}


def sample_report() -> Report:
    """The typical report: GO in words, with a failed mismatch gate and a generic-plan
    regression to show, 200 samples, every section filled."""
    return Report(
        schema_version=2,
        report_id="5b0c1d2e-0000-4000-8000-000000000001",
        flag="orders-recent",
        description="keyset pagination for the recent-orders page",
        owner="team-orders",
        kind="read",
        stage="shadow-pilot",
        stages=["shadow-pilot", "canary", "ramp-25", "full"],
        sql_hash="0" * 16,
        generated_at="2026-11-28T10:00:00+00:00",
        toolkit_version="0.1.0",
        verdict="GO",
        reasons=["all 5 gates passed"],
        samples=200,
        gates=[
            gate("min_samples", "pass", 200, 200, "200 samples (need ≥ 200)",
                 "enough paired samples"),
            gate("max_mismatch_rate", "fail", 0.015, 0.0, "1.5% mismatching (allowed 0%)",
                 "3 results differ from legacy"),
            gate("latency", "pass", 1.03, 1.2, None, "no latency regression beyond 15% (+4.0%)",
                 confidence=0.98),
            gate("max_new_failures", "inconclusive", 2, 0, "2 > 0 (statement_timeout 2)",
                 "new path failed in 2 executions where legacy succeeded",
                 details={"by_class": {"statement_timeout": 2}}),
            gate("lock_wait", "pass", 1.1, 5.0,
                 "mean wait new 1.30 ms vs legacy 0.20 ms (+1.10 ms) ≤ 5 ms",
                 "no lock-wait regression"),
            gate("buffers", "info", 2.5, None, "median 30 vs 12 buffers (2.50×)",
                 "new path touches 2.50× the buffers of legacy (not gated)"),
            gate("generic_plan", "fail", 45.0, 5.0, "worst new generic/custom 45.0× (limit 5×)",
                 "new path's generic plan is far slower than its custom plan for globex"),
            gate("rollback", "pass", "rollback/orders-recent.sql", "script",
                 "rollback/orders-recent.sql", "rollback script present"),
        ],
        mismatches=Mismatches(
            count=3, compared=200, rate=0.015, noise_rate=0.01,
            by_kind={"changed": 2, "missing": 1},
            samples=[MismatchSample("acme", {"customer_id": 7}, [
                {"kind": "columns", "legacy": ["id", "total"], "new": ["id", "sum"]},
                {"kind": "row_count", "legacy": 20, "new": 19},
                {"kind": "missing", "row": {"id": "7", "total": "1.50"}},
                {"kind": "extra", "row": {"id": "8", "total": None}},
                copy.deepcopy(CHANGED_TOTAL),
            ], truncated=False)],
            samples_omitted=2,
        ),
        failures=Failures(
            legacy=PathFailures(1, {"40001": 1}, {"serialization_failure": 1}),
            new=PathFailures(3, {"57014": 2, "40P01": 1},
                             {"statement_timeout": 2, "deadlock": 1}),
            new_only=2,
            new_only_by_class={"statement_timeout": 2},
        ),
        locks=Locks(
            legacy=PathLocks(200, 3, 0.2, 0.5, 4.1, 0, [
                lock("customers", "AccessShareLock"), lock("order_items", "AccessShareLock"),
                lock("orders", "AccessShareLock")], {"RowExclusiveLock on orders": 3}),
            new=PathLocks(200, 9, 1.3, 3.5, 12.0, 1, [
                lock("order_items", "AccessShareLock"), lock("orders", "RowExclusiveLock")],
                {"RowExclusiveLock on orders": 7, "transactionid on None": 2}),
            only_new_holds=[lock("orders", "RowExclusiveLock")],
            only_legacy_holds=[lock("customers", "AccessShareLock"),
                               lock("orders", "AccessShareLock")],
            note="lock_timeout was 2s on both paths",
        ),
        tenants=[
            Tenant("acme", 100, 3, 0.4, 0.41, 0),
            Tenant("globex", 100, 0, 0.42, 0.44, 2, {"statement_timeout": 2}),
        ],
        noise=Noise(samples=100, compared=100, mismatch_rate=0.01, latency_ratio=1.05,
                    latency_ci=[0.97, 1.12]),
        latency=Latency(
            quantile=0.95, confidence=0.98, pairs=200,
            legacy=path_latency(200, 0.41, 0.6, 0.7, 1.2, 0.45),
            new=path_latency(200, 0.43, 0.62, 0.72, 1.4, 0.47),
            ratio=1.03, ratio_ci=[0.97, 1.08], hl_ratio=1.04, hl_ci=[0.991, 1.09],
            change_pct=4.0, mann_whitney_p=0.41, effective_tolerance=0.155,
        ),
        plans={
            "samples": 20,
            "buffers_ratio": 2.5,
            "legacy": {"samples": 10, "shapes": [
                {"shape": "Limit (Index Scan on orders_customer_created_idx)", "count": 10}],
                "median_buffers": 12.0, "median_exec_ms": 0.08, "rows_misestimate": 1.0},
            "new": {"samples": 10, "shapes": [
                {"shape": "Limit (Sort (Hash Join (Seq Scan on orders, "
                          "Hash (Seq Scan on customers))))", "count": 7},
                {"shape": "Limit (Index Scan on orders_pkey)", "count": 3}],
                "median_buffers": 30.0, "median_exec_ms": 0.2, "rows_misestimate": 4.0},
            "same_shape": False,
        },
        generic_plans={
            "checks": [
                generic_check("legacy", "acme", 0.1, 0.12, 8, 8, 1.2),
                generic_check("new", "acme", 0.09, 0.11, 8, 8, 1.2222),
                generic_check("legacy", "globex", 0.2, 0.25, 20, 21, 1.25),
                generic_check("new", "globex", 0.2, 9.0, 20, 4100, 45.0),
            ],
            "regressions": [generic_check("new", "globex", 0.2, 9.0, 20, 4100, 45.0)],
            "worst_new_ratio": 45.0,
        },
        queries=Queries(LEGACY_SQL, NEW_SQL, "inline", "queries/orders-recent.new.sql"),
        rollback=RollbackPlan(
            script_path="rollback/orders-recent.sql",
            script="DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx;\n",
            migration_path="rollback/orders-recent.deploy.sql",
            migration="CREATE INDEX CONCURRENTLY orders_customer_created_idx\n"
                      "  ON orders (customer_id, created_at DESC, id DESC);\n",
            verified=False,
            verification="not verified: run `rollout rollback verify orders-recent`",
            flag_command="rollout flag kill orders-recent --reason 'no-go at shadow-pilot'",
            steps=["Return serving to legacy: rollout flag kill orders-recent --reason "
                   "'no-go at shadow-pilot'",
                   'Undo the schema change: psql "$DATABASE_URL" -f rollback/orders-recent.sql'],
        ),
        timeline=Timeline(
            killed=False, version=0, started=False,
            stages=[TimelineStage("shadow-pilot", False, None, "tenants acme, globex"),
                    TimelineStage("canary", False, "tenants acme"),
                    TimelineStage("ramp-25", False, "25 % of slice keys"),
                    TimelineStage("full", False, "100 % of slice keys")],
        ),
        database_stats={"blks_hit": 28041, "blks_read": 105, "conflicts": 0, "deadlocks": 1,
                        "temp_files": 0, "xact_commit": 604, "xact_rollback": 2},
        environment=Environment(
            server_version="PostgreSQL 18.6",
            database="host=db.internal dbname=shop user=app",
            runs=["3f1c2a9e-0000-4000-8000-000000000001", "3f1c2a9e-0000-4000-8000-000000000002"],
            first_observation="2026-11-28T09:00:00+00:00",
            last_observation="2026-11-28T09:55:00+00:00",
            toolkit_version="0.1.0",
            samples=SampleCounts(ab=200, online=40, offline=160),
            run_seconds=191.5,
        ),
    )


def generic_check(path: str, tenant: str, custom_ms: float, generic_ms: float,
                  custom_buffers: int, generic_buffers: int, ratio: float) -> dict[str, Json]:
    """One custom-against-generic plan check, medians only (as before runs were repeated)."""
    return {"path": path, "tenant": tenant, "custom_ms": custom_ms, "generic_ms": generic_ms,
            "custom_buffers": custom_buffers, "generic_buffers": generic_buffers,
            "ratio": ratio}


def make_report(**overrides: Any) -> dict[str, Any]:
    """``sample_report()`` as its JSON body, top-level keys replaced by ``overrides``."""
    body = to_json(sample_report())
    assert isinstance(body, dict)
    return {**body, **overrides}


HAZARDS = [
    {
        "script": "rollback",
        "statement_number": 1,
        "line": 2,
        "statement": "DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx",
        "transactional": False,
        "why_not_transactional": "runs CONCURRENTLY, which cannot be in a transaction",
        "locks": [],
        "strongest_lock": None,
        "destroys_data": None,
        "sequences_not_rewound": False,
    },
    {
        "script": "rollback",
        "statement_number": 2,
        "line": 4,
        "statement": "ALTER TABLE orders DROP COLUMN note",
        "transactional": True,
        "why_not_transactional": None,
        "locks": [
            ["orders", "AccessExclusiveLock"],
            ["orders_pkey", "AccessShareLock"],
            ["customers", "ShareRowExclusiveLock"],
        ],
        "strongest_lock": ["orders", "AccessExclusiveLock"],
        "destroys_data": "drops a column and its data",
        "sequences_not_rewound": False,
    },
    {
        "script": "migration",
        "statement_number": 1,
        "line": 1,
        "statement": "CREATE INDEX orders_customer_created_idx ON orders (customer_id)",
        "transactional": True,
        "why_not_transactional": None,
        "locks": [["orders", "ShareLock"]],
        "strongest_lock": ["orders", "ShareLock"],
        "destroys_data": None,
        "sequences_not_rewound": True,
    },
]


def verified_report(**details: Any) -> dict[str, Any]:
    """make_report with a verification that ran (verified unless ``details`` say otherwise)."""
    report = make_report()
    rb = report["rollback"]
    body = {
        "verified": True,
        "status": "verified: the rollback restores the schema exactly; the migration "
        "re-applies cleanly",
        "differences": [],
        "migration_differences": [],
        "new_path_prepares": True,
        "resumable": True,
        "migration_was_applied": False,
        "hazards": copy.deepcopy(HAZARDS),
        "error": None,
        "verified_at": "2026-11-28T09:58:00+00:00",
        "reused": True,
    }
    body.update(details)
    rb.update(
        verified=body["verified"],
        verification=body["status"],
        verification_details=body,
        hazards=body["hazards"],
    )
    return report


def timeline_report(*, stage: str | None, killed: bool = False) -> dict[str, Any]:
    """make_report whose flag is live at ``stage`` (None: not started), with audit events."""
    report = make_report()
    tl = report["timeline"]
    tl.update(current_stage=stage, killed=killed, version=3 if stage else 0, started=bool(stage))
    for entry in tl["stages"]:
        entry["current"] = entry["name"] == stage
    if stage:
        tl["events"] = [
            {
                "at": "2026-11-28T11:00:00+00:00",
                "actor": "bob",
                "action": "kill" if killed else "set",
                "from_stage": stage,
                "to_stage": stage,
                "killed": killed,
                "reason": "p99 alarm on the dashboard" if killed else "canary looks fine",
                "forced": False,
                "report_id": None,
            },
            {
                "at": "2026-11-28T10:30:00+00:00",
                "actor": "alice",
                "action": "advance",
                "from_stage": "shadow-pilot",
                "to_stage": stage,
                "killed": False,
                "reason": "GO at shadow-pilot",
                "forced": True,
                "report_id": "5b0c1d2e-0000-4000-8000-000000000009",
            },
        ]
    return report


def canary_report() -> dict[str, Any]:
    """The second stage, entered from shadow-pilot, with online traffic on either side."""
    return make_report(
        stage="canary",
        stage_impact={
            "changed_at": "2026-11-28T08:00:00+00:00",
            "from_stage": "shadow-pilot",
            "by": "alice",
            "window_minutes": 60.0,
            "before": {
                "requests": 1_000,
                "served_new": 0,
                "p50_ms": 0.4,
                "p95_ms": 0.9,
                "p99_ms": 1.5,
                "mean_lock_wait_ms": 0.05,
                "failures_by_class": {},
            },
            "after": {
                "requests": 1_200,
                "served_new": 60,
                "p50_ms": 0.42,
                "p95_ms": 1.8,
                "p99_ms": 2.0,
                "mean_lock_wait_ms": None,
                "failures_by_class": {"deadlock": 2},
            },
            "note": "served path per request; pool checkout waits are not recorded yet",
        },
    )


def schema_v1_report() -> dict[str, Any]:
    """A body as schema 1 wrote it: no status on gates, no noise, plans, queries, ..."""
    report = make_report(schema_version=1)
    for key in (
        "noise",
        "plans",
        "generic_plans",
        "stage_impact",
        "database_stats",
        "queries",
        "timeline",
    ):
        del report[key]
    for key in ("none_reason", "verification_details", "hazards"):
        del report["rollback"][key]
    for key in ("samples", "run_seconds"):
        del report["environment"][key]
    for gate in report["gates"]:
        del gate["status"], gate["confidence"]
        gate.pop("details", None)
    report["gates"][3]["passed"] = None  # schema 1: not evaluated
    for key in ("compared", "noise_rate", "samples_omitted"):
        del report["mismatches"][key]
    for key in ("hl_ratio", "hl_ci", "effective_tolerance", "samples_needed", "pairs"):
        del report["latency"][key]
    for path in ("legacy", "new"):
        del report["failures"][path]["by_class"]
    del report["failures"]["new_only_by_class"]
    report["locks"] = {
        "legacy": {"lock_timeouts": 0},
        "new": {"lock_timeouts": 1},
        "note": "lock_timeout was 2s on both paths",
    }
    for tenant in report["tenants"]:
        del tenant["new_failures_by_class"]
    return report


def hostile_report() -> dict[str, Any]:
    """Every free-text field an attacker-influenced value could reach, poisoned."""
    report = make_report(description=f"{XSS} {QUOTES}", reasons=[f"reason {XSS}"])
    report["gates"][0]["reason"] = f"gate {XSS}"
    report["gates"][0]["display"] = f"display {XSS}"
    sample = report["mismatches"]["samples"][0]
    sample["tenant"] = f"tenant {XSS}"
    sample["params"] = {"q": XSS}
    changed = sample["diff"][4]
    changed["legacy"]["total"] = f"{XSS} {QUOTES}"
    sample["diff"][2]["row"]["total"] = XSS
    report["rollback"]["script"] = f"-- {XSS}\nSELECT '{QUOTES}';\n"
    report["rollback"]["migration"] = f"-- {XSS}\n"
    report["rollback"]["steps"] = [f"step {XSS}"]
    report["locks"]["note"] = XSS
    # relation names, lock modes and plan shapes come from the database catalog
    locks = report["locks"]
    locks["only_new_holds"] = [[f"rel {XSS}", "RowExclusiveLock"]]
    locks["only_legacy_holds"] = [[f"old {XSS}", f"mode {XSS}"]]
    locks["new"]["held"] = [[f"rel {XSS}", "RowExclusiveLock"]]
    locks["new"]["waited_on"] = {f"RowExclusiveLock on {XSS}": 1}
    report["plans"]["new"]["shapes"] = [
        {"shape": f"Limit (Seq Scan on {XSS_PLAIN}, Index Scan on {QUOTES})", "count": 10}
    ]
    report["plans"]["legacy"]["shapes"] = [{"shape": f"Seq Scan on weird({XSS}", "count": 10}]
    report["generic_plans"]["checks"][0]["tenant"] = f"tenant {XSS}"
    report["queries"]["legacy"] = f"SELECT '{XSS}' AS {QUOTES}"
    report["queries"]["new_source"] = f"queries/{XSS}.sql"
    report["gates"][3]["details"] = {"by_class": {f"class {XSS}": 1}}
    report["failures"]["new"]["by_sqlstate"] = {XSS: 1}
    report["tenants"][1]["new_failures_by_class"] = {XSS: 2}
    report["database_stats"][XSS] = 1
    # diff kinds beyond the row tables
    sample["diff"] += [
        {"kind": "column_types", "columns": [XSS]},
        {"kind": "duplicate_key", "side": XSS, "key": {XSS: XSS}},
        {"kind": "order", "rows": 3, "note": XSS},
        {"kind": "value", "legacy": XSS, "new": f"{QUOTES}"},
        {"kind": "columns", "legacy": [XSS], "new": ["x"], "note": XSS},
        {"kind": XSS, "payload": XSS},
    ]
    # rollback verification, hazards, timeline, environment
    hazard = copy.deepcopy(HAZARDS[1])
    hazard.update(
        statement=f"DROP TABLE {XSS}",
        locks=[[f"rel {XSS}", "AccessExclusiveLock"], [XSS, f"mode {XSS}"]],
        strongest_lock=[f"rel {XSS}", "AccessExclusiveLock"],
        why_not_transactional=XSS,
        destroys_data=XSS,
    )
    report["rollback"].update(
        verified=False,
        verification=f"not verified: {XSS}",
        none_reason=None,
        hazards=[hazard],
        verification_details={
            "verified": False,
            "status": f"not verified: {XSS}",
            "differences": [f"index {XSS} still exists"],
            "migration_differences": [XSS],
            "new_path_prepares": True,
            "resumable": False,
            "migration_was_applied": False,
            "hazards": [hazard],
            "error": XSS,
            "verified_at": XSS,
            "reused": False,
        },
    )
    report["timeline"].update(current_stage=f"stage {XSS}", killed=True, version=2, started=True)
    report["timeline"]["stages"][0].update(serve=XSS, shadow=XSS)
    report["timeline"]["events"] = [
        {
            "at": XSS,
            "actor": f"actor {XSS}",
            "action": XSS,
            "from_stage": XSS,
            "to_stage": f"to {XSS}",
            "killed": True,
            "reason": f"reason {XSS}",
            "forced": True,
            "report_id": XSS,
        }
    ]
    report["environment"].update(database=f"host='{XSS}' dbname={QUOTES!r}", server_version=XSS)
    report["environment_events"] = [
        {"at": XSS, "path": f"path {XSS}", "sqlstate": XSS, "count": 2, "counted": 1}
    ]
    return report


def many_samples_report(n: int = 80) -> dict[str, Any]:
    report = make_report(verdict="NO-GO", reasons=["mismatch rate 40% exceeds 0%"])
    base = report["mismatches"]["samples"][0]
    samples = []
    for i in range(n):
        sample = copy.deepcopy(base)
        sample["tenant"] = f"tenant-{i}"
        sample["params"] = {"customer_id": i, "note": "x" * 400}
        sample["diff"] = sample["diff"] * 10
        for entry in sample["diff"]:
            if entry["kind"] == "changed":
                entry["legacy"]["total"] = "9" * 500
        samples.append(sample)
    report["mismatches"]["samples"] = samples
    report["mismatches"]["count"] = n
    report["mismatches"]["samples_omitted"] = 0
    return report


def none_needed_report() -> dict[str, Any]:
    report = make_report()
    report["rollback"].update(
        script_path=None,
        script=None,
        migration_path=None,
        migration=None,
        none_reason="no schema change; the rewrite only uses the primary key",
        verified=True,
        verification="no rollback needed: no schema change; the rewrite only uses the primary key",
        verification_details={
            "verified": True,
            "status": "no rollback needed: no schema change",
            "differences": [],
            "migration_differences": [],
            "new_path_prepares": None,
            "resumable": None,
            "migration_was_applied": None,
            "hazards": [],
            "error": None,
        },
    )
    return report


def index_data() -> dict[str, Any]:
    return {
        "generated_at": "2026-11-28T12:00:00+00:00",
        "toolkit_version": "0.1.0",
        "flags": [
            {
                "name": "orders-recent",
                "description": f"keyset pagination {XSS}",
                "owner": "team-orders",
                "error": None,
                "state": {
                    "stage": "canary",
                    "killed": True,
                    "version": 4,
                    "updated_at": "2026-11-28T11:00:00+00:00",
                    "updated_by": f"bob {XSS}",
                },
                "stages": [
                    {
                        "name": "shadow-pilot",
                        "in_flag": True,
                        "verdict": "GO",
                        "samples": 200,
                        "created_at": "2026-11-28T10:00:00+00:00",
                        "href": "orders-recent/shadow-pilot.html",
                        "html_stale": False,
                    },
                    {
                        "name": "canary",
                        "in_flag": True,
                        "verdict": "NO-GO",
                        "samples": 1_200,
                        "created_at": "2026-11-28T10:50:00+00:00",
                        "href": "orders-recent/canary.html",
                        "html_stale": True,
                    },
                    {"name": "full", "in_flag": True, "verdict": None, "href": None},
                    {
                        "name": f"old {XSS}",
                        "in_flag": False,
                        "verdict": "INCONCLUSIVE",
                        "samples": 3,
                        "created_at": "2026-11-01T10:00:00+00:00",
                        "href": "javascript:alert(1)",
                    },
                ],
            },
            {
                "name": "orders-latest",
                "description": "",
                "owner": "",
                "state": None,
                "stages": [
                    {"name": "shadow-pilot", "verdict": "NO-GO", "href": "https://example.com/x"},
                    {"name": "canary", "verdict": "GO", "href": "//example.com/y"},
                ],
            },
            {"name": "broken", "error": f"flags/broken.yaml:3: stages: {XSS}", "stages": []},
        ],
    }


SCHEMA_PATH = REPO / "docs" / "report-schema.json"
DOCS_PATH = REPO / "docs" / "reports.md"


def report_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(body: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in report_validator().iter_errors(body)
    ]


def complete_report() -> dict[str, Any]:
    """verified_report as build_report writes it: every gate has a display string."""
    report = timeline_report(stage="canary")
    report["rollback"] = verified_report()["rollback"]
    for gate in report["gates"]:
        gate["display"] = gate["display"] or f"{gate['figure']}"
    return report


def shadow_and_report(capsys: pytest.CaptureFixture[str], root: Path, dsn: str, flag: str,
                      samples: int) -> tuple[int, dict[str, object], str]:
    """``rollout shadow`` then ``rollout report`` of stage ``pilot``: the exit code, the JSON
    body and what the commands printed."""
    r = run_cli(capsys, "shadow", flag, "--samples", str(samples), "--seed", "11",
                "--workspace", root, "--dsn", dsn)
    assert r.code == 0, r.err
    rep = run_cli(capsys, "report", flag, "--workspace", root, "--dsn", dsn)
    body = json.loads((root / "reports" / flag / "pilot.json").read_text())
    return rep.code, body, rep.out + rep.err


def schema_v1_body() -> dict[str, Any]:
    """``schema_v1_report``: a body as schema 1 wrote it."""
    return schema_v1_report()


def go_report() -> Report:
    """A complete report as the builder writes one (it validates against the schema):
    every gate with its display, latency from offline runs."""
    report = report_from_json(complete_report())
    assert report.latency is not None
    return replace(report, latency=replace(report.latency, pairs_measured=200,
                                           source="offline"))
