"""Run one path of a flag once, safely: timeouts, read-only or always-rolled-back transactions."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .compare import ResultSet
from .observations import PathResult


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
) -> tuple[PathResult, ResultSet | None]:
    """Execute ``query`` in its own transaction; never raises a database error.

    ``kind: read`` runs in a READ ONLY transaction; ``kind: write`` in a transaction that is
    always rolled back, so nothing persists. Latency covers execute plus fetching every row.
    Timeouts come from the session (``apply_limits``) unless ``local_limits`` overrides them
    for this one transaction.
    """
    conn.read_only = not write
    try:
        with conn.transaction(force_rollback=write), conn.cursor() as cur:
            if local_limits is not None:
                cur.execute(set_local(local_limits))
            start = time.perf_counter_ns()
            cur.execute(query.encode(), params)
            rows = cur.fetchall() if cur.pgresult is not None and cur.pgresult.nfields else None
            elapsed = time.perf_counter_ns() - start
            desc = cur.description or []
            result = ResultSet(
                columns=tuple(d.name for d in desc),
                type_oids=tuple(d.type_code for d in desc),
                rows=rows,
                rowcount=cur.rowcount,
            )
    except psycopg.Error as exc:
        if exc.sqlstate is None and not isinstance(exc, psycopg.OperationalError):
            raise  # a client-side problem (missing parameter...) is the caller's input error
        return failure(exc), None
    return PathResult(elapsed, len(rows) if rows is not None else cur.rowcount), result
