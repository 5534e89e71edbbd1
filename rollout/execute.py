"""Run one path of a flag once, safely: timeouts, read-only or always-rolled-back transactions."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .compare import ResultSet
from .locks import LockWaitSampler, held_locks
from .observations import PathResult

ISOLATION_LEVELS = {
    "read committed": psycopg.IsolationLevel.READ_COMMITTED,
    "repeatable read": psycopg.IsolationLevel.REPEATABLE_READ,
    "serializable": psycopg.IsolationLevel.SERIALIZABLE,
}


@dataclass(frozen=True)
class Limits:
    """Bounds on every execution, set once per session by ``apply_limits``."""

    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 2_000


def apply_limits(conn: psycopg.Connection[Any], limits: Limits) -> None:
    """Set the timeouts for the session: every later execution on ``conn`` is bounded.

    Session-level (not SET LOCAL per execution) so no execution pays an extra round trip.
    """
    with conn.transaction():
        conn.execute(pgsql.SQL("SET statement_timeout = {}; SET lock_timeout = {}").format(
            limits.statement_timeout_ms, limits.lock_timeout_ms))


def set_local(limits: Limits) -> pgsql.Composed:
    """SET LOCAL statements for one transaction's timeouts."""
    return pgsql.SQL("SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}").format(
        limits.statement_timeout_ms, limits.lock_timeout_ms)


def result_set(pgresult: psycopg.pq.abc.PGresult | None, rows: list[tuple[Any, ...]] | None,
               rowcount: int) -> ResultSet:
    """A ResultSet from a libpq result: column names and types without building Columns."""
    if pgresult is None or rows is None:
        return ResultSet((), (), rows, rowcount)
    n = pgresult.nfields
    names = tuple((pgresult.fname(i) or b"").decode() for i in range(n))
    return ResultSet(names, tuple(pgresult.ftype(i) for i in range(n)), rows, rowcount)


def failure(exc: psycopg.Error) -> PathResult:
    """A failed execution: its SQLSTATE (08000 for a lost connection; none for a client-side
    error such as a missing parameter) and its first line."""
    text = str(exc).strip()
    state = exc.sqlstate or ("08000" if isinstance(exc, psycopg.OperationalError) else None)
    return PathResult(None, None, state, text.splitlines()[0] if text else type(exc).__name__)


def execute(
    conn: psycopg.Connection[Any],
    query: str,
    params: Mapping[str, Any],
    *,
    write: bool,
    local_limits: Limits | None = None,
    sampler: LockWaitSampler | None = None,
    execution: int = 0,
    capture_locks: bool = False,
    isolation: str = "read committed",
) -> tuple[PathResult, ResultSet | None]:
    """Execute ``query`` in its own transaction; never raises a database error.

    ``kind: read`` runs in a READ ONLY transaction; ``kind: write`` in a transaction that is
    always rolled back, so nothing persists. Latency covers execute plus fetching every row.
    Timeouts come from the session (``apply_limits``) unless ``local_limits`` overrides them
    for this one transaction. With a ``sampler`` the execution's lock waits are attributed to
    it; with ``capture_locks`` the locks it holds at the end are listed (outside the timing).
    """
    # Setting these costs a little even when unchanged: pooled connections keep them.
    if conn.read_only != (not write):
        conn.read_only = not write
    if conn.isolation_level != ISOLATION_LEVELS[isolation]:
        conn.isolation_level = ISOLATION_LEVELS[isolation]
    pid = conn.info.backend_pid
    held = None
    try:
        with conn.transaction(force_rollback=write), conn.cursor() as cur:
            if local_limits is not None:
                cur.execute(set_local(local_limits))
            if sampler is not None:
                sampler.begin(pid, execution)
            start = time.perf_counter_ns()
            cur.execute(query.encode(), params)
            rows = cur.fetchall() if cur.pgresult is not None and cur.pgresult.nfields else None
            elapsed = time.perf_counter_ns() - start
            rowcount = cur.rowcount
            result = result_set(cur.pgresult, rows, rowcount)
            if capture_locks:
                held = held_locks(conn)
    except psycopg.Error as exc:
        if exc.sqlstate is None and not isinstance(exc, psycopg.OperationalError):
            if sampler is not None:
                sampler.end(pid)
            raise  # a client-side problem (missing parameter...) is the caller's input error
        waited, waits = sampler.end(pid) if sampler is not None else (None, [])
        return replace(failure(exc), lock_wait_ns=waited, waits=tuple(waits) or None), None
    waited, waits = sampler.end(pid) if sampler is not None else (None, [])
    count = len(rows) if rows is not None else rowcount
    return PathResult(elapsed, count, lock_wait_ns=waited, locks=held,
                      waits=tuple(waits) or None), result
