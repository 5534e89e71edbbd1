"""`make demo`'s path, small: the real console script loads the shop, shadow-runs, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.helpers import run_cli

ROLLOUT = Path(sys.executable).parent / "rollout"
EXPECTED = {"orders-recent": "GO", "products-never-ordered": "NO-GO", "order-ship": "GO",
            "orders-latest": "NO-GO"}
SAMPLES = {"orders-latest": "150"}


def test_demo_end_to_end(db: str, demo_workspace: Path) -> None:
    with psycopg.connect(db) as conn:
        before = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'orders'").fetchone()
    assert before == (0,)
    proc = subprocess.run(
        [str(ROLLOUT), "demo", "--scale", "0.02", "--dsn", db, "--workspace", str(demo_workspace)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["flag", "stage", "samples", "mismatches", "latency", "verdict",
                                "report"]
    table = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(table) == set(EXPECTED)
    for flag, verdict in EXPECTED.items():
        row = table[flag]
        assert row[1] == "shadow-pilot"
        assert row[2] == SAMPLES.get(flag, "200")
        assert verdict in row, row
        report = demo_workspace / "reports" / flag / "shadow-pilot.json"
        body = json.loads(report.read_text())
        assert body["verdict"] == verdict, body["reasons"]
        assert (demo_workspace / row[-1]).is_file()
    assert int(table["products-never-ordered"][3]) > 0
    assert table["orders-recent"][3] == "0"
    latest = json.loads((demo_workspace / "reports" / "orders-latest" / "shadow-pilot.json")
                        .read_text())
    bluth = next(c for c in latest["generic_plans"]["checks"]
                 if c["path"] == "new" and c["tenant"] == "bluth")
    assert bluth["ratio"] > 5  # the churned tenant's generic plan scans the whole primary key
    with psycopg.connect(db) as conn:
        tenants = conn.execute("SELECT count(*) FROM tenants").fetchone()
        skew = conn.execute(
            "SELECT max(n)::float / sum(n) FROM (SELECT count(*) AS n FROM orders"
            " GROUP BY tenant_id) s").fetchone()
        shipped = conn.execute("SELECT count(*) FROM orders WHERE status = 'shipped'"
                               " AND shipped_at = created_at + interval '2 days'").fetchone()
    assert tenants == (21,)
    assert skew is not None and skew[0] > 0.4  # one tenant holds a large share
    assert shipped == (0,)  # the write flag was shadowed without persisting anything


def test_demo_refuses_a_database_with_other_tables(
    shop: str, demo_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run_cli(capsys, "demo", "--scale", "0.02", "--dsn", shop, "--workspace", demo_workspace)
    assert r.code == 2
    assert "holds other tables (items" in r.err
    with psycopg.connect(shop) as conn:
        assert conn.execute("SELECT to_regclass('orders')").fetchone() == (None,)
