"""Outages blame nobody: environment failures (08…, 57P01–57P03, 53300) hitting both paths
are environment events, never a failed gate; hitting the new path alone, they count."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from rollout import Context, Rollout
from rollout.commands import Session, flag_set
from rollout.store.observations import Observation
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import EQUIVALENT, restart_server, run_cli, shadowed, table_checksums

SHUTDOWN = "terminating connection due to administrator command"
LOST = "consuming input failed: server closed the connection unexpectedly"


def failed(template: Observation, at: datetime, *, legacy: str | None, new: str | None
           ) -> Observation:
    """``template`` at ``at`` with each path failed with that SQLSTATE (None: it succeeded)."""
    def path(state: str | None, ns: int | None) -> dict[str, object]:
        return {"ns": None if state else ns, "sqlstate": state,
                "error": (SHUTDOWN if state == "57P01" else LOST) if state else None}

    lg, nw = path(legacy, template.legacy_ns), path(new, template.new_ns)
    return dataclasses.replace(
        template, observed_at=at, run_id=None, batch_id=None,
        legacy_ns=lg["ns"], legacy_sqlstate=lg["sqlstate"], legacy_error=lg["error"],
        new_ns=nw["ns"], new_sqlstate=nw["sqlstate"], new_error=nw["error"],
        legacy_rows=None if legacy else template.legacy_rows,
        new_rows=None if new else template.new_rows,
        matched=None if legacy or new else template.matched, diff=None)


def insert(dsn: str, rows: list[Observation]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).write_observations(rows)


def report(capsys: pytest.CaptureFixture[str], root: Path, dsn: str
           ) -> tuple[int, dict[str, object], str, str]:
    r = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", dsn)
    folder = root / "reports" / "eq"
    body = json.loads((folder / "pilot.json").read_text())
    return r.code, body, (folder / "pilot.md").read_text(), (folder / "pilot.html").read_text()


def gate(body: dict[str, object], name: str) -> dict[str, object]:
    gates = body["gates"]
    assert isinstance(gates, list)
    return next(g for g in gates if g["name"] == name)


def test_an_outage_on_both_paths_leaves_a_go_stage_go(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    template = shadowed(capsys, root, shop)
    at = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)
    # a restart: both paths lose their connections around one moment, then the new path's
    # pooled connections fail on first use while legacy (already reconnected) succeeds
    burst = [failed(template, at + timedelta(milliseconds=10 * i), legacy="57P01", new="57P01")
             for i in range(3)]
    burst += [failed(template, at + timedelta(seconds=2, milliseconds=10 * i), legacy=None,
                     new="08000") for i in range(4)]
    burst += [failed(template, at + timedelta(seconds=3), legacy="08000", new=None)]
    insert(shop, burst)
    before = table_checksums(shop)
    code, body, md, html = report(capsys, root, shop)
    assert code == 0, body["reasons"]
    assert body["verdict"] == "GO"
    g = gate(body, "max_new_failures")
    assert g["status"] == "pass" and g["figure"] == 0
    assert "4 environment failures of the new path not counted" in str(g["reason"])
    events = body["environment_events"]
    minute = at.isoformat(timespec="minutes")
    assert events == [
        {"at": minute, "path": "legacy", "sqlstate": "08000", "count": 1, "counted": 0},
        {"at": minute, "path": "legacy", "sqlstate": "57P01", "count": 3, "counted": 0},
        {"at": minute, "path": "new", "sqlstate": "08000", "count": 4, "counted": 0},
        {"at": minute, "path": "new", "sqlstate": "57P01", "count": 3, "counted": 0},
    ]
    failures = body["failures"]
    assert isinstance(failures, dict)
    assert failures["new_only"] == 0
    assert failures["environment"] == {"legacy": {"count": 4, "counted": 0},
                                       "new": {"count": 7, "counted": 0}}
    tenants = body["tenants"]
    assert isinstance(tenants, list)
    assert all(t["new_failures"] == 0 for t in tenants)
    for text in (md.replace("\\_", "_"), html):
        assert "Environment events" in text
        assert "57P01" in text and "admin_shutdown" in text
        assert "not counted" in text
    assert table_checksums(shop) == before  # a report reads the target, never writes it


def test_environment_failures_of_the_new_path_alone_count(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    template = shadowed(capsys, root, shop)
    at = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)
    # the same failures, but legacy ran fine at every one of those moments: a new query that
    # gets its backend terminated (or exhausts connections) is the query's fault
    rows = [failed(template, at + timedelta(milliseconds=500 * i), legacy=None,
                   new="57P01" if i % 2 else "08000") for i in range(6)]
    rows += [failed(template, at + timedelta(seconds=1, milliseconds=500 * i), legacy=None,
                    new=None) for i in range(4)]
    insert(shop, rows)
    code, body, md, html = report(capsys, root, shop)
    assert code == 1
    assert body["verdict"] == "NO-GO"
    g = gate(body, "max_new_failures")
    assert g["status"] == "fail" and g["figure"] == 6
    assert "new path failed in 6 executions where legacy succeeded" in str(g["reason"])
    minute = at.isoformat(timespec="minutes")
    assert body["environment_events"] == [
        {"at": minute, "path": "new", "sqlstate": "08000", "count": 3, "counted": 3},
        {"at": minute, "path": "new", "sqlstate": "57P01", "count": 3, "counted": 3},
    ]
    for text in (md, html):
        assert "Environment events" in text
        assert "counted" in text


def test_a_lone_failure_far_from_the_outage_still_counts(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outage does not excuse the new path's lost connections minutes later."""
    root = make_workspace({"eq": EQUIVALENT})
    template = shadowed(capsys, root, shop)
    at = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)
    later = at + timedelta(minutes=10)
    insert(shop, [failed(template, at, legacy="57P01", new="57P01"),
                  failed(template, later, legacy=None, new="08000"),
                  failed(template, later + timedelta(seconds=1), legacy=None, new=None)])
    code, body, _, _ = report(capsys, root, shop)
    assert code == 1 and body["verdict"] == "NO-GO"
    assert gate(body, "max_new_failures")["figure"] == 1
    events = body["environment_events"]
    assert isinstance(events, list)
    assert [(e["path"], e["sqlstate"], e["counted"]) for e in events] == [
        ("legacy", "57P01", 0), ("new", "57P01", 0), ("new", "08000", 1)]


def test_a_real_restart_during_an_online_run_leaves_the_stage_go(
    shop: str, server_dsn: str, make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": flag_yaml(
        "eq", "SELECT id, val, note FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
        " ORDER BY id", "SELECT i.id, i.val, i.note FROM items i WHERE i.grp = %(grp)s"
        " AND i.id IN (SELECT id FROM items WHERE tenant = %(tenant)s) ORDER BY i.id",
        min_samples=40)})
    session = Session(root, dsn=shop, say=lambda m: None)
    flag_set(session, "eq", "pilot", actor="test", reason="online run")
    acme = Context(tenant="acme")
    with Rollout.connect(shop, workspace=root, shadow_budget=None, pool_size=4) as ro:
        # every pooled connection in use once, so the restart kills them all
        threads = [threading.Thread(target=ro.query, args=("eq", acme, {"grp": g}))
                   for g in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(30):
            ro.query("eq", acme, {"grp": i % 10})
        assert ro.drain(timeout=30)
        restart_server(server_dsn)
        for i in range(30):
            ro.query("eq", acme, {"grp": i % 10})
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
    lost = sum(stats["background_failures"].values())
    assert lost > 0, "the restart hit no shadow execution: nothing was tested"
    code, body, md, _ = report(capsys, root, shop)
    assert body["verdict"] == "GO", body["reasons"]
    assert code == 0
    events = body["environment_events"]
    assert isinstance(events, list)
    assert sum(e["count"] for e in events) == lost  # both paths of a pair ran on the shadow pool
    assert all(e["counted"] == 0 for e in events)
    assert "Environment events" in md
