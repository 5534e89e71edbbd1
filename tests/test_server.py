"""`rollout server`: the workspace's embedded PostgreSQL, seen and stopped from the CLI."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from rollout.store.connection import SHADOW_LOGIN, start_embedded, stop_embedded
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
    assert r.out.splitlines()[0] == "embedded PostgreSQL in .rollout/pgdata: running"
    r = run_cli(capsys, "server", "stop", "--workspace", ws)
    assert r.code == 0 and r.out.strip() == "embedded PostgreSQL stopped"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)
    r = run_cli(capsys, "server", "status", "--workspace", ws)
    assert r.out.strip() == "embedded PostgreSQL in .rollout/pgdata: stopped"


def _labelled(out: str, label: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(label)]
    assert len(lines) == 1, out
    return lines[0].rsplit(": ", 1)[1]


def test_status_prints_the_dsns_a_service_needs_and_never_a_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DSN was only in another command's stderr notice; now status prints it (and the
    least-privilege one, labelled), and ``--dsn-only`` prints the DSN alone for scripts. A
    password given to the CLI (``--dsn``, DATABASE_URL) is never what gets printed."""
    ws = tmp_path / "ws"
    (ws / "flags").mkdir(parents=True)
    data = ws / ".rollout" / "pgdata"
    secret = "hunter2-secret"
    monkeypatch.setenv("DATABASE_URL", f"postgresql://someone:{secret}@db.invalid/prod")
    hostile = ("server", "status", "--workspace", ws, "--dsn",
               f"postgresql://admin:{secret}@db.invalid/prod")
    start_embedded(data, keep_running=True)
    try:
        r = run_cli(capsys, *hostile)
        assert r.code == 0, r
        admin = _labelled(r.out, "dsn (administrator login")
        shadow = _labelled(r.out, f"shadow dsn (least-privilege login {SHADOW_LOGIN}")
        for dsn, user in ((admin, "postgres"), (shadow, SHADOW_LOGIN)):
            params = conninfo_to_dict(dsn)
            assert params["user"] == user and params["dbname"] == "rollout"
            assert "password" not in params and ":@" not in dsn
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                row = conn.execute("SELECT current_user, current_database()").fetchone()
            assert row == (user, "rollout")
        only = run_cli(capsys, *hostile, "--dsn-only")
        assert only.code == 0 and only.err == ""
        assert only.out == admin + "\n"
        assert secret not in r.out + r.err + only.out + only.err
    finally:
        stop_embedded(data)
    r = run_cli(capsys, "server", "status", "--dsn-only", "--workspace", ws)
    assert (r.code, r.out) == (1, "")
    assert r.err == "rollout: no embedded PostgreSQL runs in this workspace (.rollout/pgdata)\n"
    r = run_cli(capsys, "server", "stop", "--dsn-only", "--workspace", ws)
    assert r.code == 2
    assert r.err.strip() == "rollout: error: --dsn-only goes with `rollout server status`"


def test_dsn_only_without_any_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flags").mkdir()
    r = run_cli(capsys, "server", "status", "--dsn-only", "--workspace", tmp_path)
    assert (r.code, r.out) == (1, "")
    assert r.err.count("\n") == 1 and "no embedded PostgreSQL runs" in r.err
