"""The benchmark database: a fresh database with the demo data and every flag's migration."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rollout.demo_data import load_demo
from rollout.flags.workspace import Workspace
from rollout.store.connection import connect, start_embedded

REPO = Path(__file__).resolve().parent.parent
"""The repository root: its ``flags/`` are the example flags the benchmarks run."""

SCALE = 0.2
"""Demo data scale (about 50,000 orders)."""

DSN_VAR = "ROLLOUT_BENCH_DSN"
LOGIN = "rollout_bench"


@dataclass(frozen=True)
class BenchDB:
    """Where the benchmarks run; ``source`` is safe to print (never a DSN or a path)."""

    dsn: str
    source: str
    server_version: str
    workspace: Workspace
    scale: float
    setup_s: float


@contextmanager
def bench_database() -> Iterator[BenchDB]:
    """A fresh database on ``ROLLOUT_BENCH_DSN``'s server (else an embedded one), dropped after.

    The demo tables are loaded, each example flag's forward migration applied, then ANALYZE.
    """
    started = time.perf_counter()
    admin = os.environ.get(DSN_VAR)
    source = DSN_VAR
    if not admin:
        data = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
        # registered before the server's own exit hook, so it runs after the server has stopped
        atexit.register(shutil.rmtree, data, ignore_errors=True)
        say("starting an embedded PostgreSQL")
        admin = start_embedded(data / "data", database="postgres", keep_running=False)
        source = "embedded"
    name = f"rollout_bench_{uuid.uuid4().hex[:12]}"
    password = secrets.token_hex(12)
    with psycopg.connect(admin, autocommit=True) as conn:
        # The benchmarks run the toolkit as a careful user would: a login that owns its
        # database and nothing beyond it (the runners refuse a superuser).
        login = sql.Identifier(LOGIN)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [LOGIN]).fetchone()
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}" if exists else
                             "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                             ).format(login, password))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), login))
    params = conninfo_to_dict(admin)
    params.update(dbname=name, user=LOGIN, password=password)
    dsn = make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
    try:
        workspace = Workspace.load(REPO)
        with connect(dsn, autocommit=True) as conn:
            say(f"loading the demo data (scale {SCALE})")
            load_demo(conn, scale=SCALE)
            for flag in workspace.flags.values():
                if flag.rollback.migration:
                    conn.execute(flag.rollback.migration.encode())
            conn.execute("ANALYZE")
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        yield BenchDB(dsn, source, version, workspace, SCALE, time.perf_counter() - started)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
