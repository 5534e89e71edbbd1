"""Rendering tests for rollout.render on hand-built report dicts, the report's JSON schema,
and (with the test database) real reports and the workspace index they refresh."""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from rollout.render import render_html, render_index, render_markdown
from rollout.render._md_escape import md_code, md_fence
from rollout.render._sql import highlight_sql
from tests.conftest import REPO, WorkspaceMaker
from tests.helpers import run_cli
from tests.test_report import CONTRACT_KEYS, shadow_and_report
from tests.test_shadow import DIFFERENT, EQUIVALENT

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


def make_report(**overrides: Any) -> dict[str, Any]:
    """A schema 2 report body as rollout.report.build_report writes it."""
    report: dict[str, Any] = {
        "schema_version": 2,
        "flag": "orders-recent",
        "description": "keyset pagination for the recent-orders page",
        "owner": "team-orders",
        "kind": "read",
        "stage": "shadow-pilot",
        "stages": ["shadow-pilot", "canary", "ramp-25", "full"],
        "verdict": "GO",
        "reasons": ["all 5 gates passed"],
        "generated_at": "2026-11-28T10:00:00+00:00",
        "toolkit_version": "0.1.0",
        "samples": 200,
        "gates": [
            {
                "name": "min_samples",
                "status": "pass",
                "passed": True,
                "figure": 200,
                "threshold": 200,
                "confidence": None,
                "display": "200 samples (need ≥ 200)",
                "reason": "enough paired samples",
            },
            {
                "name": "max_mismatch_rate",
                "status": "fail",
                "passed": False,
                "figure": 0.015,
                "threshold": 0.0,
                "confidence": None,
                "display": "1.5% mismatching (allowed 0%)",
                "reason": "3 results differ from legacy",
            },
            {
                "name": "latency",
                "status": "pass",
                "passed": True,
                "figure": 1.03,
                "threshold": 1.2,
                "confidence": 0.98,
                "display": None,
                "reason": "no latency regression beyond 15% (+4.0%)",
            },
            {
                "name": "max_new_failures",
                "status": "inconclusive",
                "passed": False,
                "figure": 2,
                "threshold": 0,
                "confidence": None,
                "display": "2 > 0 (statement_timeout 2)",
                "reason": "new path failed in 2 executions where legacy succeeded",
                "details": {"by_class": {"statement_timeout": 2}},
            },
            {
                "name": "lock_wait",
                "status": "pass",
                "passed": True,
                "figure": 1.1,
                "threshold": 5.0,
                "confidence": None,
                "display": "mean wait new 1.30 ms vs legacy 0.20 ms (+1.10 ms) ≤ 5 ms",
                "reason": "no lock-wait regression",
            },
            {
                "name": "buffers",
                "status": "info",
                "passed": None,
                "figure": 2.5,
                "threshold": None,
                "confidence": None,
                "display": "median 30 vs 12 buffers (2.50×)",
                "reason": "new path touches 2.50× the buffers of legacy (not gated)",
            },
            {
                "name": "generic_plan",
                "status": "fail",
                "passed": False,
                "figure": 45.0,
                "threshold": 5.0,
                "confidence": None,
                "display": "worst new generic/custom 45.0× (limit 5×)",
                "reason": "new path's generic plan is far slower than its custom plan for globex",
            },
            {
                "name": "rollback",
                "status": "pass",
                "passed": True,
                "figure": "rollback/orders-recent.sql",
                "threshold": "script",
                "confidence": None,
                "display": "rollback/orders-recent.sql",
                "reason": "rollback script present",
            },
        ],
        "mismatches": {
            "count": 3,
            "compared": 200,
            "rate": 0.015,
            "noise_rate": 0.01,
            "by_kind": {"changed": 2, "missing": 1},
            "samples": [
                {
                    "tenant": "acme",
                    "params": {"customer_id": 7},
                    "diff": [
                        {"kind": "columns", "legacy": ["id", "total"], "new": ["id", "sum"]},
                        {"kind": "row_count", "legacy": 20, "new": 19},
                        {"kind": "missing", "row": {"id": "7", "total": "1.50"}},
                        {"kind": "extra", "row": {"id": "8", "total": None}},
                        {
                            "kind": "changed",
                            "position": 3,
                            "key": {"id": "7"},
                            "columns": ["total"],
                            "legacy": {"id": "7", "total": "1.50"},
                            "new": {"id": "7", "total": "1.60"},
                        },
                    ],
                    "truncated": False,
                }
            ],
            "samples_omitted": 2,
        },
        "latency": {
            "quantile": 0.95,
            "confidence": 0.98,
            "pairs": 200,
            "legacy": {
                "p50_ms": 0.41,
                "p90_ms": 0.6,
                "p95_ms": 0.7,
                "p99_ms": 1.2,
                "mean_ms": 0.45,
                "n": 200,
            },
            "new": {
                "p50_ms": 0.43,
                "p90_ms": 0.62,
                "p95_ms": 0.72,
                "p99_ms": 1.4,
                "mean_ms": 0.47,
                "n": 200,
            },
            "ratio": 1.03,
            "ratio_ci": [0.97, 1.08],
            "hl_ratio": 1.04,
            "hl_ci": [0.991, 1.09],
            "change_pct": 4.0,
            "mann_whitney_p": 0.41,
            "effective_tolerance": 0.155,
            "samples_needed": None,
        },
        "noise": {
            "samples": 100,
            "compared": 100,
            "mismatch_rate": 0.01,
            "latency_ratio": 1.05,
            "latency_ci": [0.97, 1.12],
        },
        "failures": {
            "legacy": {
                "count": 1,
                "by_sqlstate": {"40001": 1},
                "by_class": {"serialization_failure": 1},
            },
            "new": {
                "count": 3,
                "by_sqlstate": {"57014": 2, "40P01": 1},
                "by_class": {"statement_timeout": 2, "deadlock": 1},
            },
            "new_only": 2,
            "new_only_by_class": {"statement_timeout": 2},
        },
        "locks": {
            "legacy": {
                "measured": 200,
                "waited": 3,
                "mean_wait_ms": 0.2,
                "p95_wait_ms": 0.5,
                "max_wait_ms": 4.1,
                "lock_timeouts": 0,
                "held": [
                    ["customers", "AccessShareLock"],
                    ["order_items", "AccessShareLock"],
                    ["orders", "AccessShareLock"],
                ],
                "waited_on": {"RowExclusiveLock on orders": 3},
            },
            "new": {
                "measured": 200,
                "waited": 9,
                "mean_wait_ms": 1.3,
                "p95_wait_ms": 3.5,
                "max_wait_ms": 12.0,
                "lock_timeouts": 1,
                "held": [
                    ["order_items", "AccessShareLock"],
                    ["orders", "RowExclusiveLock"],
                ],
                "waited_on": {"RowExclusiveLock on orders": 7, "transactionid on None": 2},
            },
            "only_new_holds": [["orders", "RowExclusiveLock"]],
            "only_legacy_holds": [["customers", "AccessShareLock"], ["orders", "AccessShareLock"]],
            "note": "lock_timeout was 2s on both paths",
        },
        "plans": {
            "samples": 20,
            "buffers_ratio": 2.5,
            "legacy": {
                "samples": 10,
                "shapes": [
                    {"shape": "Limit (Index Scan on orders_customer_created_idx)", "count": 10}
                ],
                "median_buffers": 12.0,
                "median_exec_ms": 0.08,
                "rows_misestimate": 1.0,
            },
            "new": {
                "samples": 10,
                "shapes": [
                    {
                        "shape": "Limit (Sort (Hash Join (Seq Scan on orders, "
                        "Hash (Seq Scan on customers))))",
                        "count": 7,
                    },
                    {"shape": "Limit (Index Scan on orders_pkey)", "count": 3},
                ],
                "median_buffers": 30.0,
                "median_exec_ms": 0.2,
                "rows_misestimate": 4.0,
            },
            "same_shape": False,
        },
        "generic_plans": {
            "checks": [
                {
                    "path": "legacy",
                    "tenant": "acme",
                    "custom_ms": 0.1,
                    "generic_ms": 0.12,
                    "custom_buffers": 8,
                    "generic_buffers": 8,
                    "ratio": 1.2,
                },
                {
                    "path": "new",
                    "tenant": "acme",
                    "custom_ms": 0.09,
                    "generic_ms": 0.11,
                    "custom_buffers": 8,
                    "generic_buffers": 8,
                    "ratio": 1.2222,
                },
                {
                    "path": "legacy",
                    "tenant": "globex",
                    "custom_ms": 0.2,
                    "generic_ms": 0.25,
                    "custom_buffers": 20,
                    "generic_buffers": 21,
                    "ratio": 1.25,
                },
                {
                    "path": "new",
                    "tenant": "globex",
                    "custom_ms": 0.2,
                    "generic_ms": 9.0,
                    "custom_buffers": 20,
                    "generic_buffers": 4_100,
                    "ratio": 45.0,
                },
            ],
            "regressions": [
                {
                    "path": "new",
                    "tenant": "globex",
                    "custom_ms": 0.2,
                    "generic_ms": 9.0,
                    "custom_buffers": 20,
                    "generic_buffers": 4_100,
                    "ratio": 45.0,
                }
            ],
            "worst_new_ratio": 45.0,
        },
        "tenants": [
            {
                "tenant": "acme",
                "samples": 100,
                "mismatches": 3,
                "legacy_p50_ms": 0.4,
                "new_p50_ms": 0.41,
                "new_failures": 0,
                "new_failures_by_class": {},
            },
            {
                "tenant": "globex",
                "samples": 100,
                "mismatches": 0,
                "legacy_p50_ms": 0.42,
                "new_p50_ms": 0.44,
                "new_failures": 2,
                "new_failures_by_class": {"statement_timeout": 2},
            },
        ],
        "queries": {
            "legacy": LEGACY_SQL,
            "new": NEW_SQL,
            "legacy_source": "inline",
            "new_source": "queries/orders-recent.new.sql",
        },
        "rollback": {
            "script_path": "rollback/orders-recent.sql",
            "script": "DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx;\n",
            "migration_path": "rollback/orders-recent.deploy.sql",
            "migration": "CREATE INDEX CONCURRENTLY orders_customer_created_idx\n"
            "  ON orders (customer_id, created_at DESC, id DESC);\n",
            "none_reason": None,
            "verified": False,
            "verification": "not verified: run `rollout rollback verify orders-recent`",
            "verification_details": None,
            "hazards": [],
            "flag_command": "rollout flag kill orders-recent --reason 'no-go at shadow-pilot'",
            "steps": [
                "Return serving to legacy: rollout flag kill orders-recent --reason "
                "'no-go at shadow-pilot'",
                'Undo the schema change: psql "$DATABASE_URL" -f rollback/orders-recent.sql',
            ],
        },
        "stage_impact": None,
        "database_stats": {
            "blks_hit": 28_041,
            "blks_read": 105,
            "conflicts": 0,
            "deadlocks": 1,
            "temp_files": 0,
            "xact_commit": 604,
            "xact_rollback": 2,
        },
        "environment": {
            "server_version": "PostgreSQL 18.6",
            "database": "host=db.internal dbname=shop user=app",
            "runs": [
                "3f1c2a9e-0000-4000-8000-000000000001",
                "3f1c2a9e-0000-4000-8000-000000000002",
            ],
            "first_observation": "2026-11-28T09:00:00+00:00",
            "last_observation": "2026-11-28T09:55:00+00:00",
            "toolkit_version": "0.1.0",
            "samples": {"ab": 200, "online": 40, "offline": 160},
            "run_seconds": 191.5,
        },
        "timeline": {
            "current_stage": None,
            "killed": False,
            "version": 0,
            "started": False,
            "stages": [
                {
                    "name": "shadow-pilot",
                    "current": False,
                    "serve": None,
                    "shadow": "tenants acme, globex",
                },
                {"name": "canary", "current": False, "serve": "tenants acme", "shadow": None},
                {
                    "name": "ramp-25",
                    "current": False,
                    "serve": "25 % of slice keys",
                    "shadow": None,
                },
                {"name": "full", "current": False, "serve": "100 % of slice keys", "shadow": None},
            ],
            "events": [],
        },
    }
    report.update(overrides)
    return report


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


def visible_text(page: str) -> str:
    """Tag-free, entity-decoded text of an HTML page (roughly what a reader sees)."""
    body = re.sub(r"<style.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


# --------------------------------------------------------------------------- HTML


@pytest.mark.parametrize(
    ("verdict", "css_class"), [("GO", "go"), ("NO-GO", "nogo"), ("INCONCLUSIVE", "inconclusive")]
)
def test_html_verdict_badge(verdict: str, css_class: str) -> None:
    page = render_html(make_report(verdict=verdict))
    assert f'<div class="badge {css_class}"' in page
    assert f">{verdict}</div>" in page
    assert f"<title>{verdict} · orders-recent · shadow-pilot" in page


def test_html_headline_comes_first() -> None:
    page = render_html(make_report(reasons=["mismatch rate 1.5% exceeds 0%", "p99 regressed"]))
    header = page[: page.index("</header>")]
    for text in (
        "badge",
        "orders-recent",
        "shadow-pilot",
        "canary",
        "mismatch rate 1.5% exceeds 0%",
        "p99 regressed",
    ):
        assert text in header
    assert page.index("badge") < page.index('id="gates"')


def gate_row(page: str, name: str) -> str:
    start = page.index(f"<td><code>{name}</code></td>")
    return page[page.rindex("<tr", 0, start) : page.index("</tr>", start)]


def test_html_gates_table() -> None:
    page = render_html(make_report())
    text = visible_text(page)
    assert "200 samples (need ≥ 200)" in text
    assert "enough paired samples" in text
    assert "1.5% mismatching (allowed 0%)" in text
    assert "✗ fail" in text and "✓ pass" in text and "? inconclusive" in text
    # no display string: the raw figure and threshold are shown instead
    assert "1.03" in text and "1.2" in text
    assert "at 98% confidence" in visible_text(gate_row(page, "latency"))
    # details the display string already carries are not repeated
    assert "by class" not in visible_text(gate_row(page, "max_new_failures"))
    report = make_report()
    report["gates"][3]["display"] = "2 > 0"
    row = visible_text(gate_row(render_html(report), "max_new_failures"))
    assert "by class: statement_timeout 2" in row
    assert 'class="open"' in gate_row(page, "max_new_failures")
    assert 'class="failed"' in gate_row(page, "generic_plan")
    # headline: info gates are not counted as judged
    header = visible_text(page[: page.index("</header>")])
    assert "4 / 7" in header and "1 informational" in header


def test_html_info_gate_shown_as_info() -> None:
    page = render_html(make_report())
    row = gate_row(page, "buffers")
    assert '<span class="pill info">info</span>' in row
    assert "pass" not in visible_text(row) and "fail" not in visible_text(row)
    assert 'class="info"' in row
    assert "do not affect the verdict" in page


def test_html_schema_v1_gates() -> None:
    """Without ``status``, ``passed`` decides; None is shown as n/a, not as info."""
    page = render_html(schema_v1_report())
    assert '<span class="pill na">n/a</span>' in gate_row(page, "max_new_failures")
    assert '<span class="pill info">' not in page


def test_html_latency_section_and_chart() -> None:
    page = render_html(make_report())
    section = page[page.index('id="latency"') : page.index('id="correctness"')]
    text = " ".join(visible_text(section).split())
    # leads with the Hodges-Lehmann ratio the gate judges, then the quantile ratio
    assert "Typical latency, new ÷ legacy: 1.04× (98% confidence interval 0.991–1.09)" in text
    assert "change +4.0%" in text
    assert "p95: new ÷ legacy = 1.03× (bootstrap 98% confidence interval 0.97–1.08)" in text
    assert text.index("1.04×") < text.index("1.03×")
    # the p-value says what it tests, against the noise-widened tolerance
    assert "Mann–Whitney p = 0.41" in text
    assert (
        "a one-sided test of whether the new path is slower than legacy × 1.155 "
        "(the 15.5% tolerance, widened by A/A noise); the gate fails when p is below 0.02."
    ) in text
    assert "0.41 ms" in text and "1.4 ms" in text
    assert "would be needed" not in text
    header = visible_text(page[: page.index("</header>")])
    assert "1.04×" in header and "CI 0.991–1.09" in header
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count('class="bar-legacy"') == 5  # 4 quantiles + legend
    assert svg.count('class="bar-new"') == 5
    for q in ("p50", "p90", "p95", "p99"):
        assert f">{q}</text>" in svg


def test_html_latency_without_samples() -> None:
    empty_path = {
        "p50_ms": None,
        "p90_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "mean_ms": None,
        "n": 0,
    }
    report = make_report(
        verdict="INCONCLUSIVE",
        latency={
            "quantile": 0.95,
            "legacy": empty_path,
            "new": dict(empty_path),
            "ratio": None,
            "ratio_ci": None,
            "confidence": None,
            "change_pct": None,
            "mann_whitney_p": None,
            "hl_ratio": None,
            "hl_ci": None,
            "effective_tolerance": 0.1,
            "samples_needed": None,
        },
    )
    page = render_html(report)
    assert "<svg" not in page
    assert "No latency samples to chart." in page
    assert "no confidence interval" in page
    assert "not estimated — too few timed executions (0 legacy, 0 new)" in page


def test_html_latency_undecided_and_too_few() -> None:
    report = make_report()
    report["latency"].update(samples_needed=1_840, mann_whitney_p=0.2, hl_ratio=1.2)
    text = " ".join(visible_text(render_html(report)).split())
    assert "Undecided: about 1,840 samples per path would be needed" in text

    report["latency"].update(hl_ratio=None, hl_ci=None, mann_whitney_p=None, samples_needed=None)
    report["latency"]["legacy"]["n"] = 12
    text = " ".join(visible_text(render_html(report)).split())
    assert "not estimated — too few timed executions (12 legacy, 200 new)" in text
    assert "Mann–Whitney" not in text


def test_html_noise_present() -> None:
    page = render_html(make_report())
    latency = visible_text(page[page.index('id="latency"') : page.index('id="correctness"')])
    latency = " ".join(latency.split())
    assert "Noise from the A/A calibration (legacy against itself, 100 samples)" in latency
    assert "legacy ÷ legacy = 1.05× (CI 0.97–1.12)" in latency
    correctness = page[page.index('id="correctness"') : page.index('id="failures"')]
    correctness = " ".join(visible_text(correctness).split())
    assert "Noise from the A/A calibration: 1% of 100 legacy-against-legacy pairs" in correctness
    assert "No A/A calibration run" not in page


def test_html_noise_absent() -> None:
    report = make_report()
    report["noise"] = {
        "samples": 0,
        "compared": 0,
        "mismatch_rate": None,
        "latency_ratio": None,
        "latency_ci": None,
    }
    report["mismatches"]["noise_rate"] = None
    page = render_html(report)
    command = "rollout shadow orders-recent --stage shadow-pilot --aa"
    hint = f"No A/A calibration run — <code>{command}</code>"
    assert page.count(hint) == 2  # latency and correctness
    assert "widened by A/A noise" not in page
    # schema 1 bodies predate the calibration: no claim either way
    assert "A/A" not in render_html(schema_v1_report())


def test_html_correctness_diffs() -> None:
    page = render_html(make_report())
    text = visible_text(page)
    assert "3 mismatching results" in " ".join(text.split())
    assert "changed 2, missing 1" in text
    for title in (
        "Column lists differ",
        "Row counts differ",
        # a row only in legacy next to one only in new: one table, labelled per row
        "Rows only in one result (1 only in legacy, 1 only in new)",
        "Row changed (at position 3; key id=7)",
    ):
        assert title in text
    assert '<td class="chg">1.60</td>' in page
    assert '<span class="col odd">sum</span>' in page
    assert '<td class="null">NULL</td>' in page
    assert "<td>7</td>" in page


def test_html_marks_empty_and_absent_values() -> None:
    report = make_report()
    changed = report["mismatches"]["samples"][0]["diff"][4]
    changed["legacy"] = {"id": 12345, "total": "", "note": "x"}
    changed["new"] = {"id": 12345, "total": None}
    changed["columns"] = ["total", "note"]
    page = render_html(report)
    assert "<td>12345</td>" in page  # identifiers keep their digits, no thousands separator
    assert '<td class="chg null">&#39;&#39;</td>' in page
    assert '<td class="chg null">NULL</td>' in page
    assert '<td class="chg null">(absent)</td>' in page


def test_html_bounds_diff_samples() -> None:
    page = render_html(many_samples_report(40))
    assert page.count('<div class="sample">') == 10
    assert "(10 shown; 30 more mismatching executions not shown)" in page
    assert "more differences in this sample are not shown" in page


def test_html_failures_locks_tenants_environment() -> None:
    text = " ".join(visible_text(render_html(make_report())).split())
    assert "57014" in text and "query_canceled" in text
    assert "2 failed only on the new path (statement_timeout 2)" in text
    assert "lock timeouts" in text and "lock_timeout was 2s on both paths" in text
    assert "globex" in text
    assert "2 statement_timeout 2" in text  # tenant's new failures with their class
    assert "PostgreSQL 18.6" in text
    assert "host=db.internal dbname=shop user=app" in text
    assert "3f1c2a9e-0000-4000-8000-000000000002" in text
    assert "2026-11-28T09:00:00+00:00 → 2026-11-28T09:55:00+00:00" in text


def test_html_rollback_section() -> None:
    page = render_html(make_report())
    section = page[page.index('id="rollback"') : page.index('id="environment"')]
    # both scripts highlighted server-side: keywords wrapped, names left plain
    kw = '<span class="k">{}</span>'.format
    drop = " ".join(kw(w) for w in ("DROP", "INDEX", "CONCURRENTLY", "IF", "EXISTS"))
    assert f'<pre class="sql"><code>{drop} orders_customer_created_idx;' in section
    assert f'<pre class="sql"><code>{kw("CREATE")} {kw("INDEX")} {kw("CONCURRENTLY")}' in section
    command = "rollout flag kill orders-recent --reason &#39;no-go at shadow-pilot&#39;"
    assert f"<pre><code>{command}</code></pre>" in section
    # the plan is ordered: flag first, then the schema script
    assert section.index("Return serving to legacy") < section.index("Undo the schema change")
    assert '<span class="pill na">not verified</span> run `rollout rollback verify' in section


def test_html_rollback_script_missing() -> None:
    report = make_report()
    report["rollback"]["script"] = None
    report["rollback"]["migration"] = None
    page = render_html(report)
    assert (
        '<span class="pill fail">not verified</span> <strong>No rollback script.</strong>' in page
    )
    assert "Expected at <code>rollback/orders-recent.sql</code>" in page
    assert "was not found" in page
    assert "<b>not verified</b><span>rollback: no script</span>" in page


def test_html_escapes_everything() -> None:
    page = render_html(hostile_report())
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "it&#39;s &#34;quoted&#34;" in page
    assert QUOTES not in page
    # escaped values still read correctly once decoded
    assert XSS in visible_text(page)


def test_html_is_self_contained() -> None:
    page = render_html(many_samples_report(5))
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|srcset)\s*=", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page
    # every href is an in-page anchor
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


def test_html_tolerates_missing_sections() -> None:
    minimal = {"flag": "f", "verdict": "INCONCLUSIVE", "reasons": ["no samples yet"]}
    page = render_html(minimal)
    assert "INCONCLUSIVE" in page and "no samples yet" in page
    assert "Latency was not reported." in page
    assert "No rollback plan was reported." in page


def test_unknown_verdict_renders_amber() -> None:
    page = render_html(make_report(verdict="maybe"))
    assert '<div class="badge inconclusive"' in page
    assert ">MAYBE</div>" in page


def section(page: str, start: str, end: str) -> str:
    """Visible text between two section ids, whitespace collapsed, inline markup dropped."""
    html_part = page[page.index(f'id="{start}"') : page.index(f'id="{end}"')]
    html_part = re.sub(r"</?(code|strong|em)>", "", html_part)
    return " ".join(visible_text(html_part).split())


def test_html_failures_by_class() -> None:
    page = render_html(make_report())
    table = page[page.index("<th>Failure class</th>") : page.index('id="locks"')]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, flags=re.S)
    texts = [" ".join(visible_text(r).split()) for r in rows]
    # classes in a fixed reading order; legacy, new, only-new, then the SQLSTATEs
    assert texts == [
        "serialization_failure 1 0 0 40001 serialization_failure (legacy 1, new 0)",
        "deadlock 0 1 0 40P01 deadlock_detected (legacy 0, new 1)",
        "statement_timeout 0 2 2 57014 query_canceled (legacy 0, new 2)",
    ]
    assert rows[2].startswith('<tr class="failed">')  # only the new path failed this way


def test_html_failures_schema_v1_classified_from_sqlstates() -> None:
    text = section(render_html(schema_v1_report()), "failures", "locks")
    assert "statement_timeout 0 2 — 57014 query_canceled" in text
    assert "serialization_failure 1 0 —" in text


def test_html_lock_holds_difference_sentence() -> None:
    page = render_html(make_report())
    text = section(page, "locks", "plans")
    assert (
        "The new path takes RowExclusiveLock on orders where legacy took AccessShareLock." in text
    )
    assert "Legacy took AccessShareLock on customers; the new path does not lock it." in text
    # the stronger lock on the new path comes first and is marked
    assert text.index("RowExclusiveLock on orders where") < text.index("on customers;")
    assert '<li class="stronger">The new path takes <code>RowExclusiveLock</code>' in page


def test_html_lock_difference_grouping_and_fallback() -> None:
    report = make_report()
    locks = report["locks"]
    locks["only_new_holds"] = [["a", "AccessExclusiveLock"], ["b", "AccessExclusiveLock"]]
    locks["only_legacy_holds"] = []
    for path in ("legacy", "new"):
        del locks[path]["held"]  # only the difference lists: still a sentence
    text = section(render_html(report), "locks", "plans")
    assert "The new path takes AccessExclusiveLock on a and b, which legacy did not lock." in text
    assert "Locks held by each path" not in text


def test_html_lock_waits_and_same_locks() -> None:
    page = render_html(make_report())
    text = section(page, "locks", "plans")
    assert "mean wait per execution 0.2 ms 1.3 ms" in text
    assert "longest wait 4.1 ms 12.0 ms" in text
    assert "lock timeouts (55P03) 0 1" in text
    assert "RowExclusiveLock on orders 3 7" in text  # waited on, legacy and new
    assert "Locks held by each path (3 relations)" in text
    assert "orders AccessShareLock RowExclusiveLock" in text

    report = make_report()
    same = [["orders", "AccessShareLock"]]
    report["locks"].update(only_new_holds=[], only_legacy_holds=[])
    report["locks"]["legacy"]["held"] = report["locks"]["new"]["held"] = same
    text = section(render_html(report), "locks", "plans")
    assert "Both paths take the same locks (1 relation)." in text


def test_html_plan_shapes() -> None:
    page = render_html(make_report())
    plans = page[page.index('id="plans"') : page.index('id="generic-plans"')]
    tree = (
        "Limit\n"
        "└─ Sort\n"
        "   └─ Hash Join\n"
        "      ├─ Seq Scan on orders\n"
        "      └─ Hash\n"
        "         └─ Seq Scan on customers"
    )
    assert f'<pre class="tree"><code>{tree}</code></pre>' in plans
    assert "<code>Limit\n└─ Index Scan on orders_customer_created_idx</code>" in plans
    # side by side: legacy column before new column
    assert plans.index("<h3>Legacy</h3>") < plans.index("<h3>New</h3>") < plans.index("Hash Join")
    text = " ".join(visible_text(plans).split())
    assert "The plans differ in shape." in text
    assert "touches 2.5× the shared buffers of legacy" in text
    assert "7 of 10 samples" in text and "3 of 10 samples" in text
    assert "shared buffers per execution (median) 12 30 2.5×" in text
    assert "execution time (median, EXPLAIN ANALYZE) 0.08 ms 0.2 ms 2.5×" in text


def test_html_plan_shape_that_does_not_parse_is_shown_verbatim() -> None:
    report = make_report()
    odd = "Seq Scan on weird(name, Limit)"  # brackets in a relation name
    report["plans"]["legacy"]["shapes"] = [{"shape": odd, "count": 10}]
    page = render_html(report)
    assert f'<pre class="tree"><code>{odd}</code></pre>' in page


def test_html_no_plan_samples() -> None:
    report = make_report()
    report["plans"] = {
        "samples": 0,
        "buffers_ratio": None,
        "same_shape": False,
        "legacy": {"samples": 0, "shapes": []},
        "new": {"samples": 0, "shapes": []},
    }
    report["generic_plans"] = {"checks": [], "regressions": [], "worst_new_ratio": None}
    text = section(render_html(report), "plans", "stage-impact")
    assert "No EXPLAIN samples for this stage." in text
    assert "No generic-plan check for this stage." in text


def test_html_generic_regression_highlighted() -> None:
    page = render_html(make_report())
    part = page[page.index('id="generic-plans"') : page.index('id="stage-impact"')]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", part, flags=re.S)
    assert len(rows) == 2
    regressed, fine = rows  # regressions sort first
    assert regressed.startswith('<tr class="regressed">') and "globex" in regressed
    assert '<span class="pill fail">regression</span>' in regressed
    assert "<strong>45×</strong>" in regressed
    assert " ".join(visible_text(regressed).split()).startswith(
        "globex 0.2 ms 20 buffers 0.25 ms 21 buffers 1.25× 0.2 ms 20 buffers 9 ms 4,100 buffers"
    )
    assert fine.startswith('<tr class="">') and "acme" in fine and "regression" not in fine
    text = " ".join(visible_text(part).split())
    assert "Worst new-path generic ÷ custom: 45× (limit 5×)" in text
    assert "far slower than its custom plan for globex" in text


def test_html_stage_impact_table() -> None:
    page = render_html(canary_report())
    text = section(page, "stage-impact", "tenants")
    assert (
        "Serving moved from stage shadow-pilot to canary at 2026-11-28T08:00:00+00:00 by alice."
        in text
    )
    assert "Online traffic in the 60 minutes before against the 60 minutes after" in text
    assert "Before (shadow-pilot) After (canary) After ÷ before" in text
    assert "requests 1,000 1,200" in text
    assert "served by the new path 0 (0%) 60 (5%)" in text
    assert "p95 latency 0.9 ms 1.8 ms 2×" in text
    assert "mean lock wait 0.05 ms — " in text
    assert "failures: deadlock 0 2" in text
    assert "pool checkout waits are not recorded yet" in text
    part = page[page.index('id="stage-impact"') : page.index('id="tenants"')]
    assert '<tr class="worse"><td>failures: deadlock</td>' in part


def test_html_stage_impact_absent() -> None:
    text = section(render_html(make_report()), "stage-impact", "tenants")
    assert "No stage change with online traffic to compare yet" in text


def test_html_queries_and_database_stats() -> None:
    page = render_html(make_report())
    part = page[page.index('id="queries"') : page.index('id="rollback"')]
    assert part.count("<details>") == 2
    assert html.escape(NEW_SQL, quote=True) in part
    text = " ".join(visible_text(part).split())
    assert "Legacy query · inline · 3 lines" in text
    assert "New query · queries/orders-recent.new.sql · 4 lines" in text
    env = page[
        page.index('id="database-stats"') : page.index(
            "</section>", page.index('id="database-stats"')
        )
    ]
    env = " ".join(visible_text(env).split())
    assert "deadlocks 1" in env and "transactions committed xact_commit 604" in env
    assert "buffer cache hit ratio 99.6%" in env
    assert '<tr class="worse"><td>deadlocks' in page  # a deadlock deserves a second look
    assert '<tr class=""><td>transactions rolled back' in page


def test_html_escapes_new_sections() -> None:
    page = render_html(hostile_report())
    assert "<script" not in page
    esc = "&lt;script&gt;alert(1)&lt;/script&gt;"
    locks = page[page.index('id="locks"') : page.index('id="plans"')]
    assert f"<code>rel {esc}</code>" in locks  # relation name in the difference sentence
    assert f"<code>mode {esc}</code>" in locks
    assert f"<code>RowExclusiveLock on {esc}</code>" in locks  # waited on
    plans = page[page.index('id="plans"') : page.index('id="stage-impact"')]
    assert "├─ Seq Scan on &lt;script&gt;alert`1`&lt;/script&gt;" in plans
    assert "└─ Index Scan on it&#39;s &#34;quoted&#34;" in plans
    assert f"Seq Scan on weird({esc}" in plans  # unparseable, verbatim and escaped
    assert f"tenant {esc}" in plans
    queries = page[page.index('id="queries"') : page.index('id="rollback"')]
    assert f"SELECT &#39;{esc}&#39; AS it&#39;s &#34;quoted&#34;" in queries
    assert f"queries/{esc}.sql" in queries
    assert f"class {esc} 1" in page  # gate details
    assert f"<code>{esc}</code>" in page  # SQLSTATE
    assert XSS in visible_text(page)


def rollback_part(page: str) -> str:
    return page[page.index('id="rollback"') : page.index('id="environment"')]


def header_text(page: str) -> str:
    return " ".join(visible_text(page[: page.index("</header>")]).split())


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


@pytest.mark.parametrize(
    ("report", "card"),
    [
        (make_report(), "<b>not verified</b><span>rollback script</span>"),
        (
            verified_report(),
            "<b>verified</b><span>rollback script; takes AccessExclusiveLock</span>",
        ),
        (none_needed_report(), "<b>none needed</b><span>rollback: no schema change</span>"),
    ],
    ids=["not-verified", "verified", "none-needed"],
)
def test_html_rollback_kpi_card(report: dict[str, Any], card: str) -> None:
    page = render_html(report)
    assert card in page[: page.index("</header>")]
    assert ">missing<" not in page


def test_html_rollback_none_needed() -> None:
    section = rollback_part(render_html(none_needed_report()))
    assert '<span class="pill pass">none needed</span> No schema rollback: no schema change;' in (
        section
    )
    assert "No rollback script" not in section and "not verified" not in section


def test_html_rollback_hazards_table() -> None:
    page = render_html(verified_report())
    section = rollback_part(page)
    assert '<span class="pill pass">verified</span> the rollback restores the schema' in section
    text = " ".join(visible_text(section).split())
    assert "Verification reused from 2026-11-28T09:58:00+00:00" in text
    assert "✓ the new path's query prepares on the migrated schema" in text
    assert "✓ the migration applies again after the rollback" in text
    assert "it was applied in the scratch copy first" in text  # a fact, no tick
    assert "Why it is not verified" not in text
    table = section[section.index('id="hazards"') :]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, flags=re.S)
    texts = [" ".join(visible_text(r).split()) for r in rows]
    assert texts == [
        "rollback 1 2 DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx none measured"
        " runs CONCURRENTLY, which cannot be in a transaction — —",
        "rollback 2 4 ALTER TABLE orders DROP COLUMN note AccessExclusiveLock on orders"
        " also ShareRowExclusiveLock on customers +1 weaker lock — drops a column and its data —",
        "migration 1 1 CREATE INDEX orders_customer_created_idx ON orders (customer_id)"
        " ShareLock on orders — — not rewound",
    ]
    # not transactional, or blocking every read, or destroying data: highlighted
    assert [r.startswith('<tr class="severe">') for r in rows] == [True, True, False]
    # the hazards sit between the rollback script and the migration it undoes
    assert section.index("Rollback script (step 2)") < section.index('id="hazards"')
    assert section.index('id="hazards"') < section.index("Migration it undoes")


def test_html_rollback_differences_when_not_verified() -> None:
    report = verified_report(
        verified=False,
        status="not verified: index orders_customer_created_idx still exists",
        differences=["index orders_customer_created_idx still exists"],
        migration_differences=["column orders.note differs"],
        resumable=False,
    )
    text = " ".join(visible_text(rollback_part(render_html(report))).split())
    assert "not verified index orders_customer_created_idx still exists" in text
    assert "Why it is not verified" in text
    assert (
        "the schema still differs from before the migration: index orders_customer_created_idx"
        in (text)
    )
    assert "does not recreate the target's schema: column orders.note differs" in text
    assert "✗ the migration does not apply again after the rollback" in text


def test_html_sql_highlighting_escapes() -> None:
    report = make_report()
    script = (
        "-- </pre><script>alert(1)</script>\n"
        'SELECT \'<b>x</b>\', "we""ird" FROM t WHERE a = 1.5 AND b = $1;\n'
        "DO $fn$ BEGIN PERFORM '<i>'; END $fn$;\n"
    )
    report["rollback"]["script"] = script
    section = rollback_part(render_html(report))
    assert "<script" not in section and "<b>" not in section and "<i>" not in section
    assert '<span class="c">-- &lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;</span>' in section
    assert '<span class="s">&#39;&lt;b&gt;x&lt;/b&gt;&#39;</span>' in section
    assert '<span class="s">$fn$ BEGIN PERFORM &#39;&lt;i&gt;&#39;; END $fn$</span>' in section
    assert '<span class="n">1.5</span>' in section and '<span class="p">$1</span>' in section
    assert "&#34;we&#34;&#34;ird&#34;" in section  # a quoted identifier stays plain text
    start = section.index('<pre class="sql">')
    block = section[start : section.index("</pre>", start)]
    assert html.unescape(re.sub(r"<[^>]+>", "", block)) == script


@given(st.text())
def test_highlight_sql_keeps_every_character(sql: str) -> None:
    runs = highlight_sql(sql)
    assert "".join(text for _, text in runs) == sql
    assert {css for css, _ in runs} <= {"", "k", "s", "c", "n", "p"}
    assert all(text for _, text in runs)


def test_html_diff_kinds_are_tables_not_json() -> None:
    report = make_report()
    report["mismatches"]["samples"][0]["diff"] = [
        {"kind": "columns", "legacy": ["id"], "new": ["id"], "note": "key column(s) sku not in"},
        {"kind": "column_types", "columns": ["total", "created_at"]},
        {"kind": "order", "rows": 20, "note": "the same rows in another order"},
        {"kind": "duplicate_key", "side": "new", "key": {"id": "7", "tenant": "acme"}},
        {"kind": "value", "legacy": "'shipped'", "new": "None"},
        {"kind": "missing", "row": {"id": "1", "total": "2"}},
        {"kind": "missing", "row": {"id": "3", "total": None}},
        {"kind": "extra", "row": {"id": "9"}},
        {"kind": "brand_new_kind", "detail": 1},
    ]
    page = render_html(report)
    part = page[page.index('id="correctness"') : page.index('id="failures"')]
    text = " ".join(visible_text(part).split())
    assert "Column lists differ" in text and "key column(s) sku not in" in text
    assert "Column types differ total created_at" in text
    assert "Same rows, different order Both results hold the same 20 rows" in text
    assert "Duplicate key in the new result id tenant new 7 acme" in text
    assert "Values differ value legacy 'shipped' new None" in text
    # consecutive rows only in legacy share one table; the new-only row has other columns
    assert "Rows only in legacy result (2) id total legacy 1 2 legacy 3 NULL" in text
    assert "Row only in new result id new 9" in text
    # only a kind the renderer does not know is shown as raw JSON
    raw = re.findall(r"<pre><code>(.*?)</code></pre>", part, flags=re.S)
    assert raw == ["{&#34;kind&#34;: &#34;brand_new_kind&#34;, &#34;detail&#34;: 1}"]


def test_html_latency_distribution_chart() -> None:
    page = render_html(make_report())
    part = page[page.index('id="latency-distribution"') : page.index('id="correctness"')]
    svg = part[part.index("<svg") : part.index("</svg>")]
    assert svg.count('class="dot-legacy"') == 4 and svg.count('class="dot-new"') == 4
    assert svg.count("<polyline") == 2
    for label in ("50%", "90%", "95%", "99%"):
        assert f">{label}</text>" in svg
    assert "<title>new p99: 1.4 ms</title>" in svg
    assert "latency, ms</text>" in svg  # 0.41–1.4 ms: a linear axis
    assert "the dashed lines merely join them" in part  # says what is measured and what not

    report = make_report()
    report["latency"]["new"].update(p90_ms=30.0, p95_ms=35.0, p99_ms=80.0)
    wide = render_html(report)
    assert "latency, ms (log scale)</text>" in wide

    report = make_report()
    report["latency"]["new"] = {k: None for k in report["latency"]["new"]}
    one = render_html(report)
    svg = one[one.index('<svg class="chart ecdf"') :]
    svg = svg[: svg.index("</svg>")]
    assert svg.count('class="dot-new"') == 0 and svg.count("<polyline") == 1


def test_html_timeline_not_started() -> None:
    page = render_html(make_report())
    assert "Not started: every runner serves legacy." in header_text(page)
    text = section(page, "timeline", "tenants")
    assert "Not started: every runner serves legacy until the flag is set to a stage." in text
    assert "shadow-pilot this report serves new: nobody shadows: tenants acme, globex" in text
    assert "canary serves new: tenants acme shadows: nobody" in text
    assert "No audit events" in text


def test_html_timeline_live_elsewhere() -> None:
    page = render_html(timeline_report(stage="canary"))
    assert "Live now at stage canary — this report judges stage shadow-pilot." in header_text(page)
    assert '<li class="todo live-here">canary</li>' in page
    text = section(page, "timeline", "tenants")
    assert "canary live serves new: tenants acme" in text
    assert "Audit events (newest first)" in text
    assert "2026-11-28T11:00:00+00:00 bob set canary canary looks fine —" in text
    assert (
        "2026-11-28T10:30:00+00:00 alice advance forced shadow-pilot → canary GO at shadow-pilot"
        " 5b0c1d2e-0000-4000-8000-000000000009"
    ) in text


def test_html_timeline_killed_is_prominent() -> None:
    page = render_html(timeline_report(stage="canary", killed=True))
    header = page[: page.index("</header>")]
    assert '<span class="killed-banner">KILLED</span> all traffic is served by legacy' in header
    assert '<li class="todo killed-here">canary</li>' in header
    part = page[page.index('id="timeline"') : page.index('id="tenants"')]
    assert '<div class="callout bad"><span class="killed-banner">KILLED</span>' in part
    assert '<span class="pill fail">killed here</span>' in part
    assert '<tr class="kill">' in part


def test_html_environment_details() -> None:
    text = section(render_html(make_report()), "environment", "database-stats")
    assert "Host db.internal" in text
    assert "Database shop as app" in text
    assert "Connection host=db.internal dbname=shop user=app" in text
    assert "Samples 200 paired (160 offline shadow, 40 online)" in text
    assert "Run time 3 min 12 s" in text
    report = make_report()
    report["environment"]["database"] = "user=postgres dbname=rollout host=/run/pg"
    text = section(render_html(report), "environment", "database-stats")
    assert "Host Unix socket in /run/pg" in text


# --------------------------------------------------------------------------- Markdown


def test_markdown_core_content() -> None:
    md = render_markdown(make_report(verdict="NO-GO", reasons=["mismatch rate 1.5% exceeds 0%"]))
    assert md.startswith("## 🔴 NO-GO — `orders-recent` at stage `shadow-pilot`")
    assert "- mismatch rate 1.5% exceeds 0%" in md
    assert "| Gate | Result | Figure | Reason |" in md
    assert "| `min_samples` | ✅ pass | 200 samples (need ≥ 200) | enough paired samples |" in md
    assert "1.03 (threshold 1.2)" in md
    assert "```sh\nrollout flag kill orders-recent --reason 'no-go at shadow-pilot'\n```" in md
    assert "```sql\nDROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx;\n```" in md
    assert md.index("1. Return serving to legacy") < md.index("2. Undo the schema change")
    assert "`total` `1.50` → `1.60`" not in md  # column names are prose, values are code
    assert "total `1.50` → `1.60`" in md
    assert "row count: legacy 20, new 19" in md


def test_markdown_gates_latency_failures_locks() -> None:
    md = render_markdown(make_report())
    assert "| `buffers` | ℹ️ info | median 30 vs 12 buffers (2.50×) |" in md
    assert "| `max_new_failures` | ⚠️ inconclusive |" in md
    assert "| `generic_plan` | ❌ fail |" in md
    latency = [line for line in md.splitlines() if line.startswith("**Latency:**")]
    assert latency == [
        "**Latency:** new ÷ legacy 1.04× (Hodges–Lehmann, 98% CI 0.991–1.09) · "
        "p95 1.03× (CI 0.97–1.08) · Mann–Whitney p = 0.41 that new is slower than "
        "legacy × 1.155 · A/A noise 1.05×"
    ]
    assert (
        "**Failures:** legacy 1 (serialization\\_failure 1), new 3 (statement\\_timeout 2, "
        "deadlock 1) · only new failed: 2 (statement\\_timeout 2) · SQLSTATE `40001` "
        "serialization\\_failure ×1, `40P01` deadlock\\_detected ×1, `57014` query\\_canceled ×2"
    ) in md
    assert (
        "**Locks:** The new path takes `RowExclusiveLock` on `orders` where legacy took "
        "`AccessShareLock`. Legacy took `AccessShareLock` on `customers`; the new path "
        "does not lock it."
    ) in md
    assert "0 mismatches" not in md and "3 mismatches (1.5%)" in md
    assert "· A/A noise 1%" in md
    # each summary line is its own paragraph
    for head in ("**Latency:**", "**Failures:**", "**Locks:**"):
        before = md[: md.index(head)]
        assert before.endswith("\n\n")


def test_markdown_latency_samples_needed_and_no_noise() -> None:
    report = make_report()
    report["latency"]["samples_needed"] = 1_840
    report["noise"] = {
        "samples": 0,
        "compared": 0,
        "mismatch_rate": None,
        "latency_ratio": None,
        "latency_ci": None,
    }
    md = render_markdown(report)
    assert "· about 1,840 samples per path would decide · no A/A calibration run" in md


OUTAGE = [
    {"at": "2026-03-02T10:14+00:00", "path": "legacy", "sqlstate": "57P01", "count": 3,
     "counted": 0},
    {"at": "2026-03-02T10:14+00:00", "path": "new", "sqlstate": "08000", "count": 4,
     "counted": 0},
    {"at": "2026-03-02T10:31+00:00", "path": "new", "sqlstate": "53300", "count": 2,
     "counted": 2},
]


def test_html_environment_events_after_the_failures() -> None:
    page = render_html(make_report(environment_events=OUTAGE))
    text = section(page, "failures", "locks")
    assert text.index("Failure class") < text.index("Environment events")
    assert ("9 environment failures (connection lost, server shut down or restarting, too many "
            "connections): 7 not counted against a gate") in text
    assert "2 counted, because they hit one path alone" in text
    table = page[page.index('id="environment-events"') : page.index('id="locks"')]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, flags=re.S)
    assert [" ".join(visible_text(r).split()) for r in rows] == [
        "2026-03-02T10:14+00:00 legacy 57P01 admin_shutdown 3 0",
        "2026-03-02T10:14+00:00 new 08000 connection_exception 4 0",
        "2026-03-02T10:31+00:00 new 53300 too_many_connections 2 2",
    ]
    assert rows[2].startswith('<tr class="failed">') and not rows[1].startswith(
        '<tr class="failed">')
    assert "Environment events" not in render_html(make_report())  # none: no section


def test_markdown_environment_events() -> None:
    md = render_markdown(make_report(environment_events=OUTAGE))
    line = next(x for x in md.splitlines() if x.startswith("**Environment events:**"))
    assert line == (
        "**Environment events:** 7 not counted, 2 counted (counted: one path alone while the "
        "other ran fine) · 2026-03-02T10:14+00:00 legacy `57P01` admin\\_shutdown ×3; "
        "2026-03-02T10:14+00:00 new `08000` connection\\_exception ×4; "
        "2026-03-02T10:31+00:00 new `53300` too\\_many\\_connections ×2 (2 counted)")
    assert md.index("**Failures:**") < md.index("**Environment events:**")
    assert "Environment events" not in render_markdown(make_report(environment_events=[]))


def test_environment_events_validate_against_the_schema() -> None:
    body = complete_report()
    body["environment_events"] = copy.deepcopy(OUTAGE)
    body["failures"]["environment"] = {"legacy": {"count": 3, "counted": 0},
                                       "new": {"count": 6, "counted": 2}}
    assert schema_errors(body) == []
    body["environment_events"][0]["path"] = "both"
    del body["environment_events"][1]["counted"]
    assert len(schema_errors(body)) == 2


def test_markdown_no_failures() -> None:
    report = make_report()
    empty = {"count": 0, "by_sqlstate": {}, "by_class": {}}
    report["failures"] = {
        "legacy": empty,
        "new": dict(empty),
        "new_only": 0,
        "new_only_by_class": {},
    }
    assert "**Failures:** none on either path" in render_markdown(report)


def test_markdown_schema_v1() -> None:
    md = render_markdown(schema_v1_report())
    assert "| `max_new_failures` | ⚠️ n/a |" in md
    assert (
        "**Latency:** p95 legacy 0.7 ms, new 0.72 ms · new ÷ legacy 1.03× (98% CI 0.97–1.08)" in md
    )
    assert "Hodges" not in md and "A/A" not in md
    assert "**Failures:** legacy 1 (serialization\\_failure 1), new 3" in md
    assert "**Locks:**" not in md


def test_markdown_short_with_many_lock_differences() -> None:
    report = many_samples_report(200)
    locks = report["locks"]
    long_name = "x" * 200
    locks["only_new_holds"] = [[f"{long_name}{i}", f"Mode{i % 9}"] for i in range(300)]
    locks["only_legacy_holds"] = [[f"rel{i}", "AccessShareLock"] for i in range(300)]
    locks["legacy"]["held"] = locks["only_legacy_holds"]
    locks["new"]["held"] = locks["only_new_holds"]
    md = render_markdown(report)
    assert len(md) < 12_000
    line = next(line for line in md.splitlines() if line.startswith("**Locks:**"))
    assert "(+7 more in the HTML report)" in line  # 9 new-only groups + 1 legacy-only group
    assert "and 295 more; the new path does not lock them." in render_html(report)


def test_markdown_short_with_many_samples() -> None:
    md = render_markdown(many_samples_report(200))
    assert len(md) < 12_000
    assert md.count("tenant **tenant-") == 3
    assert "Showing 3 of 200 mismatching samples; the HTML report shows 10." in md


def test_markdown_long_script_is_clipped() -> None:
    report = make_report()
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2000
    md = render_markdown(report)
    assert len(md) < 12_000
    assert "(first part)" in md


def test_markdown_table_cells_escape_pipes_and_newlines() -> None:
    report = make_report()
    report["gates"][0]["reason"] = "a | b\nc"
    report["gates"][0]["name"] = "x|y"
    md = render_markdown(report)
    row = next(line for line in md.splitlines() if "x\\|y" in line)
    assert "a \\| b<br>c" in row
    # every table row has exactly the header's number of unescaped pipes
    for line in md.splitlines():
        if line.startswith("|"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5


def test_markdown_escapes_outside_code() -> None:
    md = render_markdown(hostile_report())
    assert "`rel <script>alert(1)</script>`" in md  # relation names are code spans
    outside_code = re.sub(r"(`{3,}).*?\n\1", "", md, flags=re.S)  # drop fenced blocks
    outside_code = re.sub(r"(`+).+?\1", "", outside_code)  # drop code spans
    assert "<script>" not in outside_code
    assert "\\<script\\>alert(1)\\</script\\>" in md  # description, reasons, tenant
    assert f"```sql\n-- {XSS}\nSELECT '{QUOTES}';\n```" in md  # SQL stays verbatim in a fence


def test_markdown_fence_outgrows_backticks_in_sql() -> None:
    report = make_report()
    report["rollback"]["script"] = "SELECT 1; -- ```` not a fence end\n"
    md = render_markdown(report)
    assert "`````sql\nSELECT 1; -- ```` not a fence end\n`````" in md


def test_markdown_helpers() -> None:
    assert md_fence("a ``` b", "sql") == "````sql\na ``` b\n````"
    assert md_fence("plain") == "```\nplain\n```"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x`") == "`` `x` ``"
    assert md_code("a|b", in_table=True) == "`a\\|b`"


def test_markdown_tolerates_missing_sections() -> None:
    md = render_markdown({"flag": "f", "verdict": "INCONCLUSIVE", "reasons": []})
    assert "INCONCLUSIVE" in md
    assert "no reasons were recorded" in md
    assert "No rollback plan was reported." in md


def test_markdown_rollback_status_and_hazards() -> None:
    md = render_markdown(verified_report())
    assert (
        "✅ **Rollback: verified** — the rollback restores the schema exactly; the migration "
        "re-applies cleanly"
    ) in md
    assert (
        "**Hazards:**\n\n"
        "- rollback script: strongest lock `AccessExclusiveLock` on `orders` (statement 2, "
        "line 4) · 1 statement not transactional, 1 statement destroying data\n"
        "- migration script: strongest lock `ShareLock` on `orders` (statement 1, line 1) · "
        "1 statement leaving sequences advanced\n"
    ) in md
    assert "Differences after the rollback" not in md
    assert md.index("**Rollback: verified**") < md.index("**Hazards:**") < md.index("1. Return")


def test_markdown_rollback_not_verified_and_none_needed() -> None:
    report = verified_report(
        verified=False,
        status="not verified: index i0 still exists",
        differences=[f"index i{i} still exists" for i in range(5)],
        migration_differences=["column orders.note differs"],
    )
    md = render_markdown(report)
    assert "⚠️ **Rollback: not verified** — index i0 still exists" in md
    assert (
        "Differences after the rollback: index i0 still exists; index i1 still exists; "
        "index i2 still exists (+3 more in the HTML report)"
    ) in md
    md = render_markdown(make_report())
    assert "⚠️ **Rollback: not verified** — run \\`rollout rollback verify orders-recent\\`" in md
    assert "**Hazards:**" not in md  # never verified: nothing measured
    md = render_markdown(none_needed_report())
    assert "✅ **Rollback: none needed** — no schema change; the rewrite only uses" in md
    assert "No rollback script" not in md
    report = make_report()
    report["rollback"].update(script=None, verification="no rollback script")
    md = render_markdown(report)
    assert (
        "❌ **Rollback: not verified** — no rollback script (expected at "
        "`rollback/orders-recent.sql`)."
    ) in md


def test_markdown_diff_kinds() -> None:
    report = make_report()
    report["mismatches"]["samples"][0]["diff"] = [
        {"kind": "order", "rows": 20, "note": "n"},
        {"kind": "duplicate_key", "side": "new", "key": {"id": "7"}},
        {"kind": "value", "legacy": "'shipped'", "new": "None"},
        {"kind": "column_types", "columns": ["total", "created_at"]},
    ]
    lines = [line.strip() for line in render_markdown(report).splitlines()]
    assert lines[lines.index("1. tenant **acme** · `customer_id=7`") + 1 :][:4] == [
        "- column types differ: `total, created_at`",
        "- value: `'shipped'` → `None`",
        "- duplicate key in the new result: `id=7`",
        "- same 20 rows in a different order",
    ]


def test_markdown_short_with_many_hazards_and_differences() -> None:
    hazards = []
    for i in range(400):
        hazard = copy.deepcopy(HAZARDS[i % 3])
        hazard["statement"] = f"ALTER TABLE t{i} " + "x" * 300
        hazard["strongest_lock"] = [f"t{i}" + "y" * 200, "AccessExclusiveLock"]
        hazards.append(hazard)
    report = many_samples_report(200)
    details = verified_report(
        verified=False,
        status="not verified: " + "z" * 3000,
        differences=[f"index {'i' * 300}{n} still exists" for n in range(300)],
        hazards=hazards,
    )["rollback"]
    report["rollback"] = details
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2000
    md = render_markdown(report)
    assert len(md) < 12_000
    assert md.count("- rollback script: strongest lock") == 1
    assert md.count("- migration script: strongest lock") == 1


# --------------------------------------------------------------------------- workspace index


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


def test_index_lists_flags_state_and_verdicts() -> None:
    page = render_index(index_data())
    text = " ".join(visible_text(page).split())
    assert "3 flags 0 live 1 killed 2 not started 1 invalid flag file" in text
    assert "orders-recent keyset pagination" in text
    assert "killed stage canary; all traffic on legacy since 2026-11-28T11:00:00+00:00" in text
    assert "shadow-pilot GO 200 samples · 2026-11-28T10:00:00+00:00" in text
    assert "canary (killed) NO-GO 1,200 samples" in text
    assert "the HTML page is from an earlier report" in text
    assert "full no report yet" in text
    assert "(no longer a stage)" in text
    assert "orders-latest not started" in text
    assert "invalid flag file flags/broken.yaml:3" in text
    start = page.index('id="flag-orders-recent"')
    row = page[start : page.index("</tr>", start)]
    assert row.startswith('id="flag-orders-recent"') and 'class="killed"' in page
    assert '<li class="nogo current">' in row


def test_index_links_are_relative_and_everything_is_escaped() -> None:
    page = render_index(index_data())
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs == ["orders-recent/shadow-pilot.html", "orders-recent/canary.html"]
    assert "javascript:" not in page and "example.com" not in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|srcset)\s*=", page)


def test_index_tolerates_missing_parts() -> None:
    page = render_index({})
    assert "No flags in this workspace yet." in page
    page = render_index({"flags": [{"name": "x"}]})
    assert "no stages" in page and "not started" in page


# --------------------------------------------------------------------------- JSON schema

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


def test_schema_requires_the_contract_keys_and_is_documented() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == CONTRACT_KEYS | {"schema_version"}
    assert schema["properties"]["schema_version"] == {"const": 2}
    docs = DOCS_PATH.read_text(encoding="utf-8")
    for key in schema["properties"]:
        assert f"`{key}`" in docs, f"docs/reports.md does not describe {key}"


def test_hand_built_reports_validate() -> None:
    for body in (complete_report(), timeline_report(stage=None), canary_report()):
        for gate in body["gates"]:
            gate["display"] = gate["display"] or "shown"
        assert schema_errors(body) == []


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "no verdict": _drop("verdict"),
    "no rollback": _drop("rollback"),
    "no schema_version": _drop("schema_version"),
    "unknown verdict": lambda b: b.update(verdict="MAYBE"),
    "schema 3": lambda b: b.update(schema_version=3),
    "reasons not a list": lambda b: b.update(reasons="because"),
    "negative samples": lambda b: b.update(samples=-1),
    "gate without status": lambda b: b["gates"][0].pop("status"),
    "unknown gate status": lambda b: b["gates"][0].update(status="maybe"),
    "changed row without position or key": lambda b: [
        e.pop(k, None)
        for e in b["mismatches"]["samples"][0]["diff"]
        if e["kind"] == "changed"
        for k in ("position", "key")
    ],
    "row_count as text": lambda b: b["mismatches"]["samples"][0]["diff"][1].update(new="19"),
    "quantile as text": lambda b: b["latency"]["legacy"].update(p95_ms="0.7 ms"),
    "hazard lock not a pair": lambda b: b["rollback"]["hazards"][1].update(
        strongest_lock=["orders"]
    ),
    "hazard of another script": lambda b: b["rollback"]["hazards"][0].update(script="deploy"),
    "one rollback step": lambda b: b["rollback"].update(steps=["kill it"]),
    "verified as text": lambda b: b["rollback"].update(verified="yes"),
    "killed as text": lambda b: b["timeline"].update(killed="no"),
    "event without actor": lambda b: b["timeline"]["events"][0].pop("actor"),
    "sample counts missing": lambda b: b["environment"]["samples"].pop("online"),
}


@pytest.mark.parametrize("mutate", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_bodies_fail_validation(mutate: Callable[[dict[str, Any]], None]) -> None:
    body = complete_report()
    assert schema_errors(body) == []
    mutate(body)
    assert schema_errors(body)


def test_real_reports_validate_and_the_index_lists_them(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT, "diff": DIFFERENT})
    reports = root / "reports"
    for flag, expected in (("eq", 0), ("diff", 1)):
        code, body, out = shadow_and_report(capsys, root, shop, flag, 60)
        assert code == expected, out
        assert schema_errors(body) == []
        assert len((reports / flag / "pilot.md").read_text(encoding="utf-8")) < 12_000
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert sorted(re.findall(r'href="([^"]*)"', index)) == ["diff/pilot.html", "eq/pilot.html"]
    assert all((reports / href).is_file() for href in re.findall(r'href="([^"]*)"', index))
    text = " ".join(visible_text(index).split())
    assert "2 flags 0 live 0 killed 2 not started" in text
    assert "pilot GO 60 samples" in text and "pilot NO-GO 60 samples" in text
    assert "everyone no report yet" in text
    assert not list(reports.glob(".index.html*"))  # no temporary file left behind

    # the kill switch shows up in the next report's timeline and in the index
    r = run_cli(
        capsys,
        "flag",
        "kill",
        "eq",
        "--reason",
        "alarm",
        "--actor",
        "tester",
        "--workspace",
        root,
        "--dsn",
        shop,
    )
    assert r.code == 0, r.err
    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 0, rep.err
    body = json.loads((reports / "eq" / "pilot.json").read_text(encoding="utf-8"))
    assert schema_errors(body) == []
    assert body["timeline"]["killed"] is True
    assert [e["actor"] for e in body["timeline"]["events"]] == ["tester"]
    page = (reports / "eq" / "pilot.html").read_text(encoding="utf-8")
    assert '<span class="killed-banner">KILLED</span>' in page[: page.index("</header>")]
    text = " ".join(visible_text((reports / "index.html").read_text(encoding="utf-8")).split())
    assert "2 flags 0 live 1 killed 1 not started" in text
    assert "killed stage pilot; all traffic on legacy" in text

    # --out outside the workspace: that folder gets an index of what was reported there
    elsewhere = root.parent / "elsewhere"
    rep = run_cli(capsys, "report", "diff", "--workspace", root, "--dsn", shop, "--out", elsewhere)
    assert rep.code == 1, rep.err
    index = (elsewhere / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'href="([^"]*)"', index) == ["diff/pilot.html"]
    assert "1 flag 0 live" in " ".join(visible_text(index).split())


def test_markdown_short_with_long_texts() -> None:
    report = many_samples_report(200)
    report["description"] = "d" * 50_000
    report["reasons"] = [f"reason {i} " + "r" * 5_000 for i in range(8)]
    for gate in report["gates"]:
        gate["reason"] = "g" * 5_000
        gate["display"] = "f" * 5_000
    report["rollback"]["steps"] = ["s" * 5_000, "t" * 5_000]
    report["rollback"]["verification"] = "not verified: " + "v" * 5_000
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2_000
    report["rollback"]["hazards"] = copy.deepcopy(HAZARDS) * 100
    report["locks"]["only_new_holds"] = [[f"{'x' * 200}{i}", f"Mode{i}"] for i in range(30)]
    md = render_markdown(report)
    assert len(md) < 12_000
    assert "reason 7 rrr" in md  # every reason is there, clipped
    assert "(first part)" in md  # the script gave way to the rest
