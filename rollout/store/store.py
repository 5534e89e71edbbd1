"""The toolkit's own state in schema ``rollout``: migrations, runs, observations, reports."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from operator import attrgetter
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .._version import __version__
from ..errors import StoreError
from .observations import COLUMNS, Observation, PlanSample

MIGRATION_LOCK = 0x726F6C6C  # advisory lock key: concurrent first runs migrate once
_ROW = attrgetter(*COLUMNS)
_JSONB = tuple(COLUMNS.index(c) for c in ("params", "diff", "locks"))
_BATCH = COLUMNS.index("batch_id")
_COLS = ", ".join(COLUMNS)

PARTITION_LOCK = 0x726F6C70
"""Advisory lock key: one process at a time creates or drops partitions of observations."""
DAYS_AHEAD = 7
"""Daily partitions are kept ready from today to this many days ahead (UTC)."""
DAYS_BEHIND = 7
"""A late batch gets its own partition back to this many days; older rows go to the default."""
PARTITION_LOCK_TIMEOUT = "2s"
"""How long creating a partition may wait for its locks; a miss is retried a minute later."""
RETRY_AFTER_S = 60.0
DEFAULT_PARTITION = "observations_default"

OBSERVATIONS_SQL = (
    f"SELECT {_COLS} FROM rollout.observations WHERE flag = %s AND stage = %s"
    " AND sql_hash = %s AND mode = %s ORDER BY observed_at, id")
"""The report's read of a stage (index observations_report_idx on every partition)."""
ONLINE_WINDOW_SQL = (
    f"SELECT {_COLS} FROM rollout.observations WHERE flag = %s AND stage = %s"
    " AND source = 'online' AND observed_at >= %s AND observed_at < %s ORDER BY observed_at")
"""Online observations in a time window: only the window's partitions are read."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every packaged migration, in order."""
    out = []
    for entry in resources.files("rollout.store.migrations").iterdir():
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


# -- daily partitions of rollout.observations ------------------------------------------------
def partition_name(day: date) -> str:
    """The table holding one UTC day of observations."""
    return f"observations_{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _bound(day: date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


def daily_partitions(conn: psycopg.Connection[Any]) -> dict[date, str]:
    """The attached daily partitions of observations, by day.

    A partition counts only when its name and its bounds are both this module's for one
    day, so a table someone attached by hand is never mistaken for one (nor pruned).
    """
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")  # the bounds as text, in UTC
        rows = conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'rollout.observations'::regclass").fetchall()
    out: dict[date, str] = {}
    for name, bound in rows:
        try:
            day = datetime.strptime(name, "observations_%Y%m%d").date()
        except ValueError:
            continue
        if bound == (f"FOR VALUES FROM ('{day} 00:00:00+00') "
                     f"TO ('{day + timedelta(days=1)} 00:00:00+00')"):
            out[day] = name
    return out


def create_partition(conn: psycopg.Connection[Any], day: date) -> bool:
    """Attach the partition of ``day``, moving its rows out of the default partition.

    Safe when many processes do it at once: under the partition lock, and only if the day
    has no partition yet. The table is created apart and attached (ATTACH locks the parent
    SHARE UPDATE EXCLUSIVE: reads and writes go on; CREATE ... PARTITION OF would lock it
    ACCESS EXCLUSIVE). Rows of the day already in the default partition would make ATTACH
    fail, so they move into the new table first, in the same transaction, with the default
    partition locked so none arrives in between. True when the day has a partition now;
    False when the locks were not free within ``PARTITION_LOCK_TIMEOUT`` or the login may
    not (the day's rows then land in the default partition, nothing is lost).
    """
    name = sql.Identifier(partition_name(day))
    lo, hi = _bound(day), _bound(day + timedelta(days=1))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(PARTITION_LOCK_TIMEOUT)))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
            if day in daily_partitions(conn):
                return True
            conn.execute(sql.SQL("CREATE TABLE rollout.{} (LIKE rollout.observations"
                                 " INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(name))
            conn.execute(sql.SQL("LOCK TABLE rollout.{} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(DEFAULT_PARTITION)))
            cols = sql.SQL(", ").join(map(sql.Identifier, ("id", *COLUMNS)))
            conn.execute(sql.SQL(
                "WITH moved AS (DELETE FROM rollout.{default} WHERE observed_at >= %s"
                " AND observed_at < %s RETURNING {cols}) INSERT INTO rollout.{name} ({cols})"
                " SELECT {cols} FROM moved").format(
                    default=sql.Identifier(DEFAULT_PARTITION), name=name, cols=cols),
                [lo, hi])
            conn.execute(sql.SQL("ALTER TABLE rollout.observations ATTACH PARTITION"
                                 " rollout.{} FOR VALUES FROM ({}) TO ({})").format(
                name, sql.Literal(lo), sql.Literal(hi)))
    except psycopg.DatabaseError:
        if conn.closed or conn.broken:
            raise  # the store's own trouble: the caller retries with a new connection
        # Locks not free in time, no right to create tables, a stray table of that name:
        # the day's rows go to the default partition meanwhile.
        return False
    return True


def _partition_moved(exc: psycopg.errors.CheckViolation) -> bool:
    """A row routed to the default partition while another process attached its day's
    partition: the default's new bound refuses it (no constraint name: not one of ours)."""
    return exc.diag.constraint_name is None and "partition constraint" in str(exc)


def _utc_day(moment: datetime) -> date:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()


class Store:
    """Reads and writes the rollout schema over one connection (autocommit)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._days: set[date] = set()  # days known to have their partition
        self._retry_at = 0.0  # after a failed creation, the next attempt waits until then

    def prepare_days(self, days: Collection[date] = (), today: date | None = None) -> set[date]:
        """Make sure today, the ``DAYS_AHEAD`` next days and each of ``days`` within
        ``DAYS_BEHIND`` of today have a partition; return the days that have one.

        Cheap when they do (a set lookup; one catalog query otherwise). Days further out
        are left to the default partition, so a wrong clock cannot create partitions
        without end. Never raises for want of locks or rights: the default partition
        catches the rows meanwhile, and the next attempt comes ``RETRY_AFTER_S`` later.
        """
        today = today or datetime.now(UTC).date()
        wanted = {today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)}
        wanted |= {d for d in days if -DAYS_BEHIND <= (d - today).days <= DAYS_AHEAD}
        if wanted <= self._days or time.monotonic() < self._retry_at:
            return self._days & wanted
        self._days = set(daily_partitions(self.conn))
        for day in sorted(wanted - self._days):
            if create_partition(self.conn, day):
                self._days.add(day)
            else:
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                break
        return self._days & wanted

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

    def plans(self, flag: str, stage: str, sql_hash: str) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT p.path, p.tenant, p.params, p.shape, p.buffers, p.plan_rows,"
                " p.actual_rows, p.exec_ms FROM rollout.plans p JOIN rollout.runs r USING"
                " (run_id) WHERE r.flag = %s AND r.stage = %s AND r.sql_hash = %s"
                " ORDER BY p.id", [flag, stage, sql_hash])
            return cur.fetchall()

    # -- observations ---------------------------------------------------------------------
    def write_observations(self, rows: Iterable[Observation],
                           batch_id: uuid.UUID | None = None) -> int:
        """Write observations with COPY in one transaction; return how many.

        With ``batch_id`` every row carries it, so a retried batch can be recognised. The
        rows' days get their partitions first (``prepare_days``).
        """
        batch = list(rows)
        self.prepare_days({_utc_day(o.observed_at) for o in batch})
        try:
            return self._copy(batch, batch_id)
        except psycopg.errors.CheckViolation as exc:
            if not _partition_moved(exc):
                raise
            # Another process attached the day while this COPY routed rows to the default
            # partition; nothing committed, and a new statement sees the new partition.
            return self._copy(batch, batch_id)

    def _copy(self, rows: Sequence[Observation], batch_id: uuid.UUID | None) -> int:
        n = 0
        with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(
            f"COPY rollout.observations ({_COLS}) FROM STDIN"
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
        with self.conn.cursor() as cur:
            cur.execute(ONLINE_WINDOW_SQL, [flag, stage, start, end])
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

    def has_batch(self, batch_id: uuid.UUID, first: datetime | None = None,
                  last: datetime | None = None) -> bool:
        """Did a batch with this id commit? ``first`` and ``last``, the batch's earliest and
        latest ``observed_at``, limit the look-up to the partitions of those days."""
        if first is None or last is None:
            row = self.conn.execute(
                "SELECT 1 FROM rollout.observations WHERE batch_id = %s LIMIT 1",
                [batch_id]).fetchone()
        else:
            row = self.conn.execute(
                "SELECT 1 FROM rollout.observations WHERE batch_id = %s"
                " AND observed_at >= %s AND observed_at <= %s LIMIT 1",
                [batch_id, first, last]).fetchone()
        return row is not None

    def observations(self, flag: str, stage: str, sql_hash: str, mode: str = "ab"
                     ) -> list[Observation]:
        """Every observation of a flag's stage for the current SQL, offline and online;
        ``mode='aa'`` gives the noise calibration runs instead."""
        with self.conn.cursor() as cur:
            cur.execute(OBSERVATIONS_SQL, [flag, stage, sql_hash, mode])
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
        created_at, and whether ``rollout watch`` judged it (over its window)."""
        return self.conn.execute(
            "SELECT DISTINCT ON (flag, stage) flag, stage, verdict, samples, files, created_at,"
            " coalesce(body->>'kind' = 'watch', false)"
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
