"""Pool figures in every report: the running services' checkout waits, errors and lost
connections for the stage's window, per pool, whether or not the stage changed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.commands import Session, flag_set
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker
from tests.helpers import EQUIVALENT, run_cli, shadowed, table_checksums
from tests.report_builder import schema_errors

NOTHING = "no running service recorded pool figures for this stage"


def snapshot(at: datetime, runner: uuid.UUID, flags: list[str], pool: str, *, requests: int,
             queued: int = 0, wait_ms: int = 0, errors: int = 0, returns_bad: int = 0,
             lost: int = 0, size: int | None = None) -> tuple[Any, ...]:
    """A row as rollout/online/core.py ``_snapshot_pools`` builds it from ``pop_stats``."""
    return (at, runner, sorted(flags), pool, requests, queued, wait_ms, errors, returns_bad,
            lost, size)


def write(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store(conn).write_pool_stats(rows)


def report(capsys: pytest.CaptureFixture[str], root: Path, dsn: str, stage: str = "pilot"
           ) -> tuple[dict[str, Any], str, str]:
    r = run_cli(capsys, "report", "eq", "--stage", stage, "--workspace", root, "--dsn", dsn)
    assert r.code in (0, 1, 3), r.err
    folder = root / "reports" / "eq"
    body = json.loads((folder / f"{stage}.json").read_text())
    return body, (folder / f"{stage}.md").read_text(), (folder / f"{stage}.html").read_text()


def html_section(page: str, start: str, end: str) -> str:
    return page[page.index(f'<section id="{start}">'):page.index(f'<section id="{end}">')]


def md_line(md: str, label: str) -> str:
    return next(line for line in md.replace("\\_", "_").splitlines()
                if line.startswith(f"**{label}:**"))


def test_every_report_shows_the_stage_pools_without_a_stage_change(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    flag_set(Session(root, dsn=shop, say=lambda m: None), "eq", "pilot", actor="test",
             reason="serve the pilot")
    now = datetime.now(UTC)
    service, other_service = uuid.uuid4(), uuid.uuid4()
    write(shop, [
        # the stage's window: a service serving eq (and another flag)
        snapshot(now, service, ["eq", "zz"], "requests", requests=100, queued=7,
                 wait_ms=1_000_000, returns_bad=1, lost=4, size=10),
        snapshot(now, service, ["eq", "zz"], "shadow", requests=40, queued=2, wait_ms=120,
                 errors=2, size=2),
        snapshot(now, other_service, ["eq"], "requests", requests=50, queued=3,
                 wait_ms=457_000, lost=3, size=8),
        # not counted: a service that does not serve eq, before the flag entered the
        # stage, after the report's time
        snapshot(now, uuid.uuid4(), ["zz"], "requests", requests=9_999, queued=999,
                 wait_ms=9_999_999, errors=99, returns_bad=99, lost=99, size=99),
        snapshot(now - timedelta(hours=1), service, ["eq"], "requests", requests=9_999,
                 queued=999, wait_ms=9_999_999, errors=99, lost=99, size=99),
        snapshot(now + timedelta(hours=1), service, ["eq"], "shadow", requests=9_999,
                 queued=999, wait_ms=9_999_999, errors=99, lost=99, size=99),
    ])
    before = table_checksums(shop)
    body, md, html = report(capsys, root, shop)
    assert body["stage_impact"] is None  # no stage change: only the pools section knows
    pools = body["pools"]
    assert pools["recorded"] is True
    assert pools["window"]["since"] == "stage_entered"
    assert pools["requests"] == {
        "requests": 150, "requests_queued": 10, "wait_ms": 1_457_000,
        "mean_wait_ms": 1_457_000 / 150, "errors": 0, "returns_bad": 1,
        "connections_lost": 7, "peak_pool_size": 10, "snapshots": 2, "runners": 2}
    assert pools["shadow"] == {
        "requests": 40, "requests_queued": 2, "wait_ms": 120, "mean_wait_ms": 3.0,
        "errors": 2, "returns_bad": 0, "connections_lost": 0, "peak_pool_size": 2,
        "snapshots": 1, "runners": 1}
    attention = [r for r in body["reasons"] if r.startswith("attention:")]
    assert len(attention) == 1
    assert "requests pool (served path): 7 lost connections" in attention[0]
    assert "shadow pool (background path): 2 checkout errors" in attention[0]
    assert schema_errors(body) == []

    line = md_line(md, "Pools")
    assert "requests pool: checkout wait 1,457 s, 10 waited, checkout errors 0" in line
    assert "broken returns 1, lost connections 7, 150 requests, peak size 10" in line
    assert "shadow pool: checkout wait 120 ms, 2 waited, checkout errors 2" in line
    assert "9,999" not in md and "attention:" in md
    section = html_section(html, "pools", "stage-impact")
    assert "1,457 s" in section and "requests (served path)" in section
    assert '<tr class="worse"><td>connections lost</td><td class="num">7</td>' in section
    assert '<td>checkout errors</td><td class="num">0</td><td class="num">2</td>' in section
    assert "9,999" not in section and NOTHING not in html.lower()
    assert table_checksums(shop) == before  # a report reads the target, never writes it


def test_the_window_ends_when_the_flag_left_the_stage(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    session = Session(root, dsn=shop, say=lambda m: None)
    flag_set(session, "eq", "pilot", actor="test", reason="pilot")
    service = uuid.uuid4()
    write(shop, [snapshot(datetime.now(UTC), service, ["eq"], "requests", requests=5,
                          wait_ms=30, size=3)])
    flag_set(session, "eq", "everyone", actor="test", reason="everyone")
    write(shop, [snapshot(datetime.now(UTC), service, ["eq"], "requests", requests=70,
                          wait_ms=900, lost=1, size=6)])
    pilot, _, _ = report(capsys, root, shop, "pilot")
    assert pilot["pools"]["requests"]["requests"] == 5
    assert pilot["pools"]["requests"]["connections_lost"] == 0
    assert not any(r.startswith("attention:") for r in pilot["reasons"])
    everyone, _, _ = report(capsys, root, shop, "everyone")
    assert everyone["pools"]["requests"]["requests"] == 70
    assert everyone["pools"]["requests"]["peak_pool_size"] == 6
    assert everyone["pools"]["shadow"] is None
    assert any("1 lost connection" in r for r in everyone["reasons"])
    assert schema_errors(pilot) == [] and schema_errors(everyone) == []


def test_an_offline_only_stage_says_no_service_recorded_pool_figures(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    shadowed(capsys, root, shop)  # offline observations only; the flag was never set
    # a service serving another flag records figures meanwhile: not this stage's
    write(shop, [snapshot(datetime.now(UTC), uuid.uuid4(), ["zz"], "requests",
                          requests=10, wait_ms=5, lost=3, size=2)])
    body, md, html = report(capsys, root, shop)
    pools = body["pools"]
    assert pools["recorded"] is False
    assert pools["requests"] is None and pools["shadow"] is None
    assert pools["window"]["since"] == "first_observation"
    assert pools["window"]["start"] == body["environment"]["first_observation"]
    assert not any(r.startswith("attention:") for r in body["reasons"])
    assert schema_errors(body) == []
    assert md_line(md, "Pools") == f"**Pools:** {NOTHING}"
    section = html_section(html, "pools", "stage-impact")
    assert NOTHING in section.lower() and "<table" not in section
