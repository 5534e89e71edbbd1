"""The toolkit's own state in schema ``rollout``: migrations, runs, observations, reports."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from importlib import resources
from operator import attrgetter
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from . import __version__
from .errors import StoreError
from .observations import COLUMNS, Observation
from .plans import GenericCheck, PlanSample

MIGRATION_LOCK = 0x726F6C6C  # advisory lock key: concurrent first runs migrate once
_ROW = attrgetter(*COLUMNS)
_JSONB = tuple(COLUMNS.index(c) for c in ("params", "diff", "locks"))
_BATCH = COLUMNS.index("batch_id")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every packaged migration, in order."""
    out = []
    for entry in resources.files("rollout.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Bring schema ``rollout`` up to date, idempotently; return the names applied now."""
    applied: list[str] = []
    known = migrations()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute("CREATE SCHEMA IF NOT EXISTS rollout")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS rollout.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM rollout.schema_migrations")}
        newest = max((v for v, _, _ in known), default=0)
        if done and max(done) > newest:
            raise StoreError(
                f"schema rollout is at version {max(done)}, newer than this toolkit knows "
                f"({newest}); upgrade pg-rollout")
        for version, name, sql in known:
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO rollout.schema_migrations (version, name) VALUES (%s, %s)",
                         [version, name])
            applied.append(name)
    return applied


class Store:
    """Reads and writes the rollout schema over one connection (autocommit)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @classmethod
    def open(cls, conn: psycopg.Connection[Any]) -> Store:
        conn.autocommit = True
        try:
            migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot prepare schema rollout: {_first_line(exc)}") from None
        return cls(conn)

    # -- runs -----------------------------------------------------------------------------
    def start_run(self, *, flag: str, stage: str, sql_hash: str, tenants: Sequence[str | None],
                  requested: int | None, target: str, server_version: str,
                  mode: str = "ab") -> uuid.UUID:
        run_id = uuid.uuid4()
        self.conn.execute(
            "INSERT INTO rollout.runs (run_id, flag, stage, source, sql_hash, tenants,"
            " requested_samples, target, server_version, toolkit_version, mode)"
            " VALUES (%s, %s, %s, 'offline', %s, %s, %s, %s, %s, %s, %s)",
            [run_id, flag, stage, sql_hash, [t or "" for t in tenants], requested, target,
             server_version, __version__, mode],
        )
        return run_id

    def finish_run(self, run_id: uuid.UUID, samples: int, status: str = "finished",
                   db_stats: dict[str, Any] | None = None, reason: str | None = None) -> None:
        """Close a run: ``finished``, or ``failed`` with the ``reason`` it was cut short."""
        self.conn.execute(
            "UPDATE rollout.runs SET samples = %s, status = %s, finished_at = now(),"
            " db_stats = %s, reason = %s WHERE run_id = %s",
            [samples, status, Jsonb(db_stats) if db_stats else None,
             reason[:500] if reason else None, run_id])

    def write_plans(self, run_id: uuid.UUID, plans: Sequence[PlanSample]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rollout.plans (run_id, path, tenant, params, shape, plan, buffers,"
                " plan_rows, actual_rows, exec_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s)", [(run_id, p.path, p.tenant, Jsonb(p.params), p.shape, Jsonb(p.plan),
                          p.buffers, p.plan_rows, p.actual_rows, p.exec_ms) for p in plans])

    def write_generic_checks(self, run_id: uuid.UUID, checks: Sequence[GenericCheck]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rollout.generic_checks (run_id, path, tenant, custom_ms,"
                " generic_ms, custom_buffers, generic_buffers)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(run_id, c.path, c.tenant, c.custom_ms, c.generic_ms, c.custom_buffers,
                  c.generic_buffers) for c in checks])

    def plans(self, flag: str, stage: str, sql_hash: str) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT p.path, p.tenant, p.params, p.shape, p.buffers, p.plan_rows,"
                " p.actual_rows, p.exec_ms FROM rollout.plans p JOIN rollout.runs r USING"
                " (run_id) WHERE r.flag = %s AND r.stage = %s AND r.sql_hash = %s"
                " ORDER BY p.id", [flag, stage, sql_hash])
            return cur.fetchall()

    def generic_checks(self, flag: str, stage: str, sql_hash: str) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT g.path, g.tenant, g.custom_ms, g.generic_ms, g.custom_buffers,"
                " g.generic_buffers FROM rollout.generic_checks g JOIN rollout.runs r USING"
                " (run_id) WHERE r.flag = %s AND r.stage = %s AND r.sql_hash = %s"
                " ORDER BY g.id", [flag, stage, sql_hash])
            return cur.fetchall()

    # -- observations ---------------------------------------------------------------------
    def write_observations(self, rows: Iterable[Observation],
                           batch_id: uuid.UUID | None = None) -> int:
        """Write observations with COPY in one transaction; return how many.

        With ``batch_id`` every row carries it, so a retried batch can be recognised.
        """
        cols = ", ".join(COLUMNS)
        n = 0
        with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(
            f"COPY rollout.observations ({cols}) FROM STDIN"
        ) as copy:
            for obs in rows:
                values = list(_ROW(obs))
                if batch_id is not None:
                    values[_BATCH] = batch_id
                for i in _JSONB:
                    if values[i] is not None:
                        values[i] = Jsonb(values[i])
                copy.write_row(values)
                n += 1
        return n

    def online_window(self, flag: str, stage: str, start: datetime, end: datetime
                      ) -> list[Observation]:
        """Online observations of a flag's stage in ``[start, end)``, any SQL version."""
        cols = ", ".join(COLUMNS)
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT {cols} FROM rollout.observations WHERE flag = %s AND stage = %s"
                " AND source = 'online' AND observed_at >= %s AND observed_at < %s"
                " ORDER BY observed_at", [flag, stage, start, end])
            return [Observation(*row) for row in cur]

    def stage_entered(self, flag: str, stage: str) -> dict[str, Any] | None:
        """The latest change that moved ``flag`` into ``stage`` from another stage."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT at, from_stage, actor, action FROM rollout.flag_events"
                " WHERE flag = %s AND to_stage = %s AND from_stage IS DISTINCT FROM to_stage"
                " ORDER BY id DESC LIMIT 1", [flag, stage])
            return cur.fetchone()

    def stage_left(self, flag: str, stage: str, after: datetime) -> datetime | None:
        """When ``flag`` first moved out of ``stage`` to another stage after ``after``."""
        row = self.conn.execute(
            "SELECT at FROM rollout.flag_events WHERE flag = %s AND from_stage = %s"
            " AND to_stage IS DISTINCT FROM from_stage AND at > %s ORDER BY at, id LIMIT 1",
            [flag, stage, after]).fetchone()
        return row[0] if row else None

    def write_pool_stats(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows of (at, runner, flags, pool, requests, requests_queued, wait_ms, errors,
        returns_bad, connections_lost, pool_size)."""
        with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(
            "COPY rollout.pool_stats (at, runner, flags, pool, requests, requests_queued,"
            " wait_ms, errors, returns_bad, connections_lost, pool_size) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def pool_window(self, flag: str, start: datetime, end: datetime) -> dict[str, Any]:
        """Pool statistics of the runners serving ``flag`` in ``[start, end)``, per pool:
        the sums of every counter, the peak pool size, how many snapshots and runners, and
        the first and last snapshot's time. One aggregate query: the rows stay in the
        database, however many intervals the services recorded."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT pool, sum(requests)::bigint AS requests,"
                " sum(requests_queued)::bigint AS requests_queued,"
                " sum(wait_ms)::bigint AS wait_ms,"
                " sum(errors)::bigint AS errors, sum(returns_bad)::bigint AS returns_bad,"
                " sum(connections_lost)::bigint AS connections_lost,"
                " max(pool_size) AS peak_pool_size, count(*) AS snapshots,"
                " count(DISTINCT runner) AS runners, min(at) AS first_at, max(at) AS last_at"
                " FROM rollout.pool_stats WHERE %s = ANY(flags) AND at >= %s AND at < %s"
                " GROUP BY pool ORDER BY pool", [flag, start, end])
            return {r["pool"]: r for r in cur.fetchall()}

    def has_batch(self, batch_id: uuid.UUID) -> bool:
        row = self.conn.execute("SELECT 1 FROM rollout.observations WHERE batch_id = %s LIMIT 1",
                                [batch_id]).fetchone()
        return row is not None

    def observations(self, flag: str, stage: str, sql_hash: str, mode: str = "ab"
                     ) -> list[Observation]:
        """Every observation of a flag's stage for the current SQL, offline and online;
        ``mode='aa'`` gives the noise calibration runs instead."""
        cols = ", ".join(COLUMNS)
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT {cols} FROM rollout.observations WHERE flag = %s AND stage = %s"
                " AND sql_hash = %s AND mode = %s ORDER BY observed_at, id",
                [flag, stage, sql_hash, mode])
            return [Observation(*row) for row in cur]

    def runs(self, flag: str, stage: str, sql_hash: str) -> list[dict[str, Any]]:
        """The stage's runs of the current SQL, in start order, with ``status`` and the
        ``reason`` a run ended badly."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT run_id, tenants, samples, requested_samples AS requested, status,"
                " reason, target, server_version, started_at, finished_at, mode, db_stats"
                " FROM rollout.runs"
                " WHERE flag = %s AND stage = %s AND sql_hash = %s ORDER BY started_at",
                [flag, stage, sql_hash])
            return cur.fetchall()

    # -- reports --------------------------------------------------------------------------
    def save_report(self, *, flag: str, stage: str, sql_hash: str, verdict: str, samples: int,
                    body: dict[str, Any], files: Sequence[str]) -> uuid.UUID:
        report_id = uuid.UUID(body["report_id"]) if "report_id" in body else uuid.uuid4()
        self.conn.execute(
            "INSERT INTO rollout.reports (report_id, flag, stage, sql_hash, verdict, samples,"
            " body, files) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [report_id, flag, stage, sql_hash, verdict, samples, Jsonb(body), list(files)])
        return report_id

    def latest_reports(self, flags: Sequence[str]) -> list[tuple[Any, ...]]:
        """The newest report of every (flag, stage): flag, stage, verdict, samples, files,
        created_at."""
        return self.conn.execute(
            "SELECT DISTINCT ON (flag, stage) flag, stage, verdict, samples, files, created_at"
            " FROM rollout.reports WHERE flag = ANY(%s) ORDER BY flag, stage, created_at DESC",
            [list(flags)]).fetchall()

    def latest_report(self, flag: str, stage: str) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT report_id, verdict, sql_hash, samples, created_at FROM rollout.reports"
                " WHERE flag = %s AND stage = %s ORDER BY created_at DESC LIMIT 1",
                [flag, stage])
            return cur.fetchone()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
