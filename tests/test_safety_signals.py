"""Runs that end badly say so: SIGTERM during `rollout shadow` is handled like Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .conftest import REPO, WorkspaceMaker, flag_yaml
from .helpers import run_cli, table_checksums, wait_for

SLOW = "WITH pause AS MATERIALIZED (SELECT pg_sleep(0.002)) SELECT id, val FROM items, pause" \
       " WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"




def _run_rows(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('rollout.runs')").fetchone() == (None,):
            return []
        return conn.execute("SELECT status, reason, samples FROM rollout.runs").fetchall()


def _observed(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('rollout.observations')").fetchone() == (None,):
            return False
        return bool(conn.execute("SELECT count(*) FROM rollout.observations").fetchone()[0])


def test_sigterm_marks_the_run_failed_and_the_report_says_so(
        shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]) -> None:
    root: Path = make_workspace({"slow": flag_yaml("slow", SLOW, SLOW, min_samples=20)})
    before = table_checksums(shop)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "shadow", "slow", "--samples", "5000",
         "--seed", "3", "--workspace", str(root), "--dsn", shop],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the run is under way once the first batch of observations has landed
        assert wait_for(lambda: _observed(shop) or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "rollout: terminated (SIGTERM)"
    assert "Traceback" not in err
    [(status, reason, samples)] = _run_rows(shop)
    assert status == "failed" and reason == "terminated (SIGTERM)"
    assert isinstance(samples, int) and 0 < samples < 5000
    assert table_checksums(shop) == before
    # the report judges what was observed, and says in its first lines that the run was cut
    r = run_cli(capsys, "report", "slow", "--workspace", root, "--dsn", shop, "--format",
                "json,md")
    assert r.code in (1, 3), r.out + r.err
    body = json.loads((root / "reports" / "slow" / "pilot.json").read_text())
    assert body["verdict"] != "GO"
    [cut] = body["incomplete_runs"]
    assert cut["status"] == "failed" and cut["reason"] == "terminated (SIGTERM)"
    head = "\n".join((root / "reports" / "slow" / "pilot.md").read_text().splitlines()[:12])
    assert "terminated (SIGTERM)" in head
