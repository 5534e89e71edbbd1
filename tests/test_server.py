"""`rollout server`: the workspace's embedded PostgreSQL, seen and stopped from the CLI."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from rollout.connection import start_embedded
from tests.helpers import run_cli


def test_status_and_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    (ws / "flags").mkdir(parents=True)
    r = run_cli(capsys, "server", "status", "--workspace", ws)
    assert r.code == 0 and "no embedded PostgreSQL" in r.out
    dsn = start_embedded(ws / ".rollout" / "pgdata", keep_running=True)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    r = run_cli(capsys, "server", "status", "--workspace", ws)
    assert r.out.strip() == "embedded PostgreSQL in .rollout/pgdata: running"
    r = run_cli(capsys, "server", "stop", "--workspace", ws)
    assert r.code == 0 and r.out.strip() == "embedded PostgreSQL stopped"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)
    r = run_cli(capsys, "server", "status", "--workspace", ws)
    assert r.out.strip() == "embedded PostgreSQL in .rollout/pgdata: stopped"
