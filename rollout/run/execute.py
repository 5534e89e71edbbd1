"""Run one path of a flag once, safely: one statement, a transaction that always rolls back.

Every execution of flag SQL (both paths, ``params.sample``, ``params.tenants``, EXPLAIN and
plan checks, streams, checksums; offline and online) obeys the same rules, by mechanism:

- **One statement.** Flag SQL goes through ``ExtendedCursor``, which always uses the
  extended query protocol: the server itself refuses a second statement ("cannot insert
  multiple commands into a prepared statement"), so ``SELECT 1; COMMIT; INSERT ...`` never
  runs. psycopg would otherwise send a query without placeholders with the simple-query
  protocol, which runs every statement in the string.
- **Nothing persists.** Each execution is ``BEGIN [READ ONLY]; SET LOCAL statement_timeout;
  SET LOCAL lock_timeout`` (one round trip the toolkit writes), the statement, then
  ``ROLLBACK`` and ``pg_advisory_unlock_all()``: writes, session settings changed with
  ``set_config`` and transaction-level locks are rolled back, session advisory locks released.
  A statement that ends the toolkit's transaction itself (``COMMIT``) is a failure.
- **No prepared statement of flag SQL crosses executions.** ``PREPARE`` run by PL/pgSQL's
  ``EXECUTE`` survives a rollback, so flag SQL could leave statements, or replace psycopg's
  ``_pg3_N`` ones under their names. The runners' pools never prepare (psycopg
  ``prepare_threshold=None``) and drop every prepared statement at each execution's end and
  at every reset. Offline connections keep psycopg's preparing (runs measure what an
  application with psycopg's defaults sees, generic plans included): each execution's end
  reads the server's prepared statements in the same round trip, and anything that is not
  exactly psycopg's own drops them all (``prepared_intact``).
- **Bounded.** Beyond the server-side timeouts a client-side deadline (``rollout.run.deadline``)
  cancels, then cuts off, an execution whose server stops answering.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import generators, pq
from psycopg import sql as pgsql
from psycopg._cursor_base import BaseCursor
from psycopg._pipeline_base import BasePipeline
from psycopg._preparing import PrepareManager
from psycopg._queries import PostgresQuery
from psycopg.rows import Row

from ..store.observations import PathResult
from . import deadline
from .locks import LockWaitSampler, aheld_locks, held_locks
from .results import ResultSet

ISOLATION_LEVELS = {
    "read committed": psycopg.IsolationLevel.READ_COMMITTED,
    "repeatable read": psycopg.IsolationLevel.REPEATABLE_READ,
    "serializable": psycopg.IsolationLevel.SERIALIZABLE,
}

END = b"ROLLBACK; SELECT pg_advisory_unlock_all(); DEALLOCATE ALL"
"""How every execution ends: nothing it did persists, no session advisory lock stays held, no
prepared statement stays (``PREPARE`` is not transactional)."""
END_IN_TRANSACTION = b"SELECT pg_advisory_unlock_all(); DEALLOCATE ALL; ROLLBACK"
"""The same, for a transaction that is not aborted (one server transaction fewer)."""
END_CHECKED = (b"ROLLBACK; SELECT pg_advisory_unlock_all();"
               b" SELECT name, from_sql FROM pg_prepared_statements")
END_CHECKED_IN_TRANSACTION = (b"SELECT pg_advisory_unlock_all(); ROLLBACK;"
                              b" SELECT name, from_sql FROM pg_prepared_statements")
"""How an execution ends on a connection that keeps psycopg's prepared statements (offline
runs measure what an application with psycopg's defaults sees, generic plans included):
the server's prepared statements are read in the same round trip, and any that flag SQL
made, or any of psycopg's it removed or replaced, drop them all (``prepared_intact``)."""

RESET_SESSION = (b"CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *;"
                 b" SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;"
                 b" DEALLOCATE ALL")
"""``DISCARD ALL``, spelled out (``DISCARD ALL`` refuses to run in the implicit transaction of
a multi-statement query): session state and prepared statements go. Pools created by the
runners reset with it."""

ESCAPED = "25000"
"""SQLSTATE of a statement that ended the toolkit's transaction (invalid_transaction_state)."""
DEADLINE = "08006"
"""SQLSTATE of an execution the client-side deadline cut off (connection_failure)."""
ESCAPED_MESSAGE = ("the statement ended the toolkit's transaction (transaction control is not "
                   "allowed in flag SQL)")


class _PipelineProbe:
    """Enough of a connection to build a ``BasePipeline`` and look at it (``_check_psycopg``)."""

    pgconn = None


def _check_psycopg() -> None:
    """The extended-protocol guarantee rests on a private psycopg method; refuse to import
    with a psycopg whose method changed rather than silently lose the guarantee."""
    params = inspect.signature(BaseCursor._execute_send).parameters
    if "force_extended" not in params or "binary" not in params:
        raise ImportError(f"psycopg {psycopg.__version__}: BaseCursor._execute_send changed; "
                          "pg-rollout needs psycopg >=3.2,<3.4")
    for name in ("_enqueue_sync", "command_queue", "result_queue", "pgconn"):
        if not hasattr(BasePipeline(_PipelineProbe()), name):  # type: ignore[arg-type]
            raise ImportError(f"psycopg {psycopg.__version__}: BasePipeline changed; "
                              "pg-rollout needs psycopg >=3.2,<3.4")
    manager = PrepareManager()
    if not (callable(getattr(manager, "clear", None)) and hasattr(manager, "_to_flush")):
        raise ImportError(f"psycopg {psycopg.__version__}: PrepareManager changed; "
                          "pg-rollout needs psycopg >=3.2,<3.4")


_check_psycopg()

PIPELINE = psycopg.Pipeline.is_supported()
"""libpq has pipeline mode (14 and later): the served path's one round trip (``serve``)."""


class ExtendedCursor(psycopg.Cursor[Row]):
    """A cursor that always uses the extended query protocol: one statement per execute."""

    def _execute_send(self, query: PostgresQuery, *, force_extended: bool = False,
                      binary: bool | None = None) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


class ExtendedServerCursor(psycopg.ServerCursor[Row]):
    """A named (server-side) cursor whose DECLARE always uses the extended protocol."""

    def _execute_send(self, query: PostgresQuery, *, force_extended: bool = False,
                      binary: bool | None = None) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


class AsyncExtendedCursor(psycopg.AsyncCursor[Row]):
    """The asyncio twin of ``ExtendedCursor``."""

    def _execute_send(self, query: PostgresQuery, *, force_extended: bool = False,
                      binary: bool | None = None) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


def guard(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Make ``conn.execute`` and ``conn.cursor`` use the extended protocol; return ``conn``.
    psycopg may still prepare repeated statements (as an application's would): ``end``
    checks after every execution that flag SQL left them as psycopg made them."""
    conn.cursor_factory = ExtendedCursor
    conn.server_cursor_factory = ExtendedServerCursor
    return conn


def prepared_intact(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
                    rows: list[tuple[bytes, ...]]) -> bool:
    """Are the server's prepared statements (``name``, ``from_sql``) exactly psycopg's own?
    Flag SQL can only ``PREPARE`` through SQL (``from_sql``); replacing one of psycopg's
    (DEALLOCATE, then PREPARE under its name) or removing it shows as a missing name."""
    if any(from_sql == b"t" for _, from_sql in rows):
        return False
    on_server = {name for name, _ in rows}
    return set(conn._prepared._names.values()) <= on_server


def forget_prepared(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Empty psycopg's record of its prepared statements after the toolkit's own
    ``DEALLOCATE ALL``, which it sends past psycopg (``command``): psycopg would otherwise
    execute statements the server no longer has. psycopg empties it itself only when it sees
    ``DEALLOCATE ALL`` among its own results."""
    prepared = conn._prepared
    prepared.clear()
    prepared._to_flush.clear()  # nothing left to deallocate: the server has nothing


@dataclass(frozen=True)
class Limits:
    """Bounds on every execution: server-side timeouts set with ``SET LOCAL`` in its
    transaction, and the client-side deadline (statement timeout + ``margin_ms`` to cancel,
    + ``margin_ms`` again to cut the connection)."""

    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 2_000
    margin_ms: int = 2_000

    @property
    def deadline_s(self) -> float:
        return (self.statement_timeout_ms + self.margin_ms) / 1000

    @property
    def grace_s(self) -> float:
        return self.margin_ms / 1000


@functools.lru_cache(maxsize=64)
def begin_sql(limits: Limits, *, write: bool, isolation: str = "read committed") -> bytes:
    """The toolkit's opening round trip: BEGIN and the transaction's own timeouts."""
    if isolation not in ISOLATION_LEVELS:
        raise ValueError(f"unknown isolation level {isolation!r}")
    mode = "" if write else " READ ONLY"
    return (f"BEGIN ISOLATION LEVEL {isolation.upper()}{mode};"
            f" SET LOCAL statement_timeout = {int(limits.statement_timeout_ms)};"
            f" SET LOCAL lock_timeout = {int(limits.lock_timeout_ms)}").encode()


def set_local(limits: Limits) -> list[pgsql.Composed]:
    """SET LOCAL statements for one transaction's timeouts, one statement each."""
    return [pgsql.SQL("SET LOCAL statement_timeout = {}").format(limits.statement_timeout_ms),
            pgsql.SQL("SET LOCAL lock_timeout = {}").format(limits.lock_timeout_ms)]


PlannerSettings = tuple[tuple[str, str], ...]
"""(setting, value) pairs the toolkit sets with SET LOCAL (never text from a flag file)."""
_SETTING_NAME = re.compile(r"[a-z_]+")


@functools.lru_cache(maxsize=64)
def set_local_settings(settings: PlannerSettings) -> bytes:
    """One round trip of ``SET LOCAL name = 'value'``: rolled back with the transaction, so
    nothing outlives the execution. Names are checked as plain identifiers and values
    quoted as literals."""
    parts = []
    for name, value in settings:
        if not _SETTING_NAME.fullmatch(name) or "\\" in value:
            raise ValueError(f"not a planner setting: {name!r} = {value!r}")
        parts.append(f"SET LOCAL {name} = '{value.replace(chr(39), chr(39) * 2)}'")
    return "; ".join(parts).encode()


def command(conn: psycopg.Connection[Any], text: bytes
            ) -> list[tuple[bytes, ...]]:
    """Run the toolkit's own SQL (one or more statements, never flag SQL) with the simple
    protocol, outside psycopg's statement cache; the last result's rows, as raw text."""
    with conn.lock:
        conn.pgconn.send_query(text)
        results = conn.wait(generators.execute(conn.pgconn))
    _check(conn.info.encoding, results)
    return _last_rows(results)


async def acommand(conn: psycopg.AsyncConnection[Any], text: bytes
                   ) -> list[tuple[bytes, ...]]:
    """The asyncio twin of ``command``."""
    async with conn.lock:
        conn.pgconn.send_query(text)
        results = await conn.wait(generators.execute(conn.pgconn))
    _check(conn.info.encoding, results)
    return _last_rows(results)


def _last_rows(results: list[pq.abc.PGresult]) -> list[tuple[bytes, ...]]:
    last = results[-1] if results else None
    if last is None or last.status != pq.ExecStatus.TUPLES_OK:
        return []
    return [tuple(last.get_value(i, j) or b"" for j in range(last.nfields))
            for i in range(last.ntuples)]


def _check(encoding: str, results: list[pq.abc.PGresult]) -> None:
    for res in results:
        if res.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            raise psycopg.errors.error_from_result(res, encoding=encoding)


RESET_CHECKED = (RESET_SESSION.replace(b"; DEALLOCATE ALL", b"")
                 + b"; SELECT name, from_sql FROM pg_prepared_statements")
"""The session reset that keeps psycopg's prepared statements, reading them to check them."""
COMMIT_AND_RESET = b"COMMIT; " + RESET_CHECKED
"""How a served query ends on a connection outside autocommit (a pool passed in): its
transaction committed and the session reset in one round trip (``commit_and_reset``), so the
pool's reset has nothing left to do; in autocommit ``serve`` sends the same reset with the
statement itself.
psycopg's prepared statements stay (planning a query again on every request would cost more
than the query, a service's plans are psycopg's defaults): the server's list is read in the
same round trip, and anything not exactly psycopg's own drops them all (``prepared_intact``)."""

RESET_STATEMENTS = tuple(s.strip() for s in RESET_CHECKED.split(b";"))
"""``RESET_CHECKED`` one statement at a time: a pipeline sends each with the extended
protocol, which takes one statement per message."""

_RESET: weakref.WeakSet[Any] = weakref.WeakSet()
"""Connections whose session was reset by their last statement (``commit_and_reset``) and
that ran nothing since: the pool's reset skips its round trip for them, once."""


def commit_and_reset(conn: psycopg.Connection[Any]) -> None:
    """Commit the served query's transaction and reset the session in one round trip,
    keeping psycopg's prepared statements if they are intact (else a second round trip
    drops them all). If it fails, the connection is not marked and the pool's reset runs in
    full. The runners' request pool, in autocommit, sends all of it with the statement
    instead (``serve``); this is the path of a connection in a transaction (a pool passed in,
    ``rollout.sqlalchemy``'s engine), where it also commits."""
    rows = command(conn, _ending(conn))
    if not prepared_intact(conn, rows):
        command(conn, b"DEALLOCATE ALL")
        forget_prepared(conn)
    _RESET.add(conn)


async def acommit_and_reset(conn: psycopg.AsyncConnection[Any]) -> None:
    """The asyncio twin of ``commit_and_reset``."""
    rows = await acommand(conn, _ending(conn))
    if not prepared_intact(conn, rows):
        await acommand(conn, b"DEALLOCATE ALL")
        forget_prepared(conn)
    _RESET.add(conn)


def serve(conn: psycopg.Connection[Any], query: bytes, params: Mapping[str, Any]
          ) -> psycopg.Cursor[Any]:
    """Run the served statement (``ExtendedCursor``: one statement, extended protocol), then
    reset the session and check the prepared statements (``commit_and_reset``); return the
    cursor, its result complete. In autocommit (the runners' request pool) all of it goes in
    one round trip: a pipeline holding the statement and a Sync, so it is its own
    transaction, committed or failed before anything else runs (psycopg sends no Sync
    between statements of a pipeline, even in autocommit: without this one a failure would
    abort the reset and the reset's failure roll back the served write), then the reset and
    the check and their Sync. A failed statement raises as it would alone; the connection is
    then not marked reset, so the pool's full reset runs at its next checkout. Outside
    autocommit (a pool passed in): the statement, then ``commit_and_reset``."""
    if not (conn.autocommit and PIPELINE):
        cur = ExtendedCursor(conn).execute(query, params)
        commit_and_reset(conn)
        return cur
    with conn.pipeline() as pipeline:
        cur = ExtendedCursor(conn).execute(query, params)
        _queue_reset(pipeline)
        check = ExtendedCursor(conn).execute(CHECK_PREPARED, prepare=False)
    rows = _checked(conn, check)
    if rows is None:
        return cur  # not marked: the pool's full reset runs at the next checkout
    if not prepared_intact(conn, rows):
        command(conn, b"DEALLOCATE ALL")
        forget_prepared(conn)
    _RESET.add(conn)
    return cur


async def aserve(conn: psycopg.AsyncConnection[Any], query: bytes, params: Mapping[str, Any]
                 ) -> psycopg.AsyncCursor[Any]:
    """The asyncio twin of ``serve``."""
    if not (conn.autocommit and PIPELINE):
        cur = await AsyncExtendedCursor(conn).execute(query, params)
        await acommit_and_reset(conn)
        return cur
    async with conn.pipeline() as pipeline:
        cur = await AsyncExtendedCursor(conn).execute(query, params)
        _queue_reset(pipeline)
        check = await AsyncExtendedCursor(conn).execute(CHECK_PREPARED, prepare=False)
    rows = _checked(conn, check)
    if rows is None:
        return cur  # not marked: the pool's full reset runs at the next checkout
    if not prepared_intact(conn, rows):
        await acommand(conn, b"DEALLOCATE ALL")
        forget_prepared(conn)
    _RESET.add(conn)
    return cur


CHECK_PREPARED = RESET_STATEMENTS[-1]


def _queue_reset(pipeline: Any) -> None:
    """Queue a Sync (ending the served statement's transaction) and the reset statements
    but the check, as psycopg queues its own commands in a pipeline (``_exec_command``):
    a cursor each would cost more Python than the reset costs the server."""
    pipeline._enqueue_sync()
    send, commands, results = (pipeline.pgconn.send_query_params, pipeline.command_queue,
                               pipeline.result_queue)
    for statement in RESET_STATEMENTS[:-1]:
        commands.append(functools.partial(send, statement, None))
        results.append(None)


def _checked(conn: Any, check: Any) -> list[tuple[bytes, ...]] | None:
    """The server's prepared statements as the pipeline's check read them; None unless the
    pipeline completed (every result read, the session idle)."""
    res = check.pgresult
    if res is None or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return None
    return _last_rows([res])


def _ending(conn: Any) -> bytes:
    in_transaction = conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS
    return COMMIT_AND_RESET if in_transaction else RESET_CHECKED


def _already_reset(conn: Any) -> bool:
    """Whether ``commit_and_reset`` was the connection's last statement (and forget it:
    the mark is good for one return to the pool)."""
    if conn in _RESET and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        _RESET.discard(conn)
        return True
    _RESET.discard(conn)
    return False


def reset_session(conn: psycopg.Connection[Any]) -> None:
    """A pool's ``reset=``: drop session state and prepared statements a query may have
    left (see RESET_SESSION); psycopg's record of its statements is kept in step. A served
    query that ended with ``commit_and_reset`` already did it: no second round trip."""
    if _already_reset(conn):
        return
    command(conn, RESET_SESSION)
    if conn.prepare_threshold is not None:  # a pool that prepares (one passed in)
        forget_prepared(conn)


async def areset_session(conn: psycopg.AsyncConnection[Any]) -> None:
    """The asyncio twin of ``reset_session``."""
    if _already_reset(conn):
        return
    await acommand(conn, RESET_SESSION)
    if conn.prepare_threshold is not None:  # a pool that prepares (one passed in)
        forget_prepared(conn)


def _end_text(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bytes | None:
    """The round trip that ends an execution on ``conn`` (rollback, advisory locks released,
    prepared statements dropped or read to be checked); None when there is no way back (a
    command still running, its results never read)."""
    status = conn.pgconn.transaction_status
    if status == pq.TransactionStatus.ACTIVE:
        return None  # a command still running (its results never read): no way back
    aborted = status == pq.TransactionStatus.INERROR
    # Unlocking first, inside the open transaction, saves the implicit transaction a
    # statement after ROLLBACK would need; an aborted transaction must roll back first.
    if conn.prepare_threshold is None:  # nothing of psycopg's to keep: drop everything
        return END if aborted else END_IN_TRANSACTION
    return END_CHECKED if aborted else END_CHECKED_IN_TRANSACTION


def _keeps(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
           rows: list[tuple[bytes, ...]]) -> bool:
    """After the end's round trip: may psycopg's prepared statements stay?"""
    return conn.prepare_threshold is None or prepared_intact(conn, rows)


def end(conn: psycopg.Connection[Any]) -> bool:
    """Roll back and release advisory locks. True when the connection is left unusable and
    must be closed (by the caller, once its deadline is released: closing frees the socket's
    descriptor, which the watchdog must never touch after that)."""
    if conn.closed:
        return False
    text = _end_text(conn)
    if text is None:
        return True
    try:
        if not _keeps(conn, command(conn, text)):
            command(conn, b"DEALLOCATE ALL")
            forget_prepared(conn)
    except psycopg.Error:
        return True
    return False


async def aend(conn: psycopg.AsyncConnection[Any]) -> bool:
    """The asyncio twin of ``end``."""
    if conn.closed:
        return False
    text = _end_text(conn)
    if text is None:
        return True
    try:
        if not _keeps(conn, await acommand(conn, text)):
            await acommand(conn, b"DEALLOCATE ALL")
            forget_prepared(conn)
    except psycopg.Error:
        return True
    return False


def cancel_of(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
              grace: float) -> Callable[[], None]:
    """What the watchdog calls to cancel ``conn``'s statement (thread-safe, bounded)."""
    if isinstance(conn, psycopg.Connection):
        return lambda: conn.cancel_safe(timeout=grace)
    return conn.cancel  # the blocking variant: the watchdog is a thread, not a task


def bounded(conn: psycopg.Connection[Any], limits: Limits
            ) -> contextlib.AbstractContextManager[deadline.Watch]:
    """The client-side deadline of one round trip (or one execution) on ``conn``."""
    return deadline.watch(cancel_of(conn, limits.grace_s), conn.pgconn.socket,
                          limits.deadline_s, limits.grace_s, alive=lambda: not conn.closed)


class _Transaction:
    """What ``Transaction`` and ``ATransaction`` share: everything but the round trips."""

    __slots__ = ("conn", "limits", "write", "isolation", "whole", "watch")

    def __init__(self, conn: Any, limits: Limits, *, write: bool,
                 isolation: str = "read committed", whole: bool = True) -> None:
        self.conn = conn
        self.limits = limits
        self.write = write
        self.isolation = isolation
        self.whole = whole
        self.watch: deadline.Watch | None = None

    def _watch(self) -> bytes:
        """The opening round trip's text (an unknown isolation level raises here, before
        anything is registered); then the whole execution's deadline, registered before
        BEGIN is sent so ``watch`` tells a cut connection even when BEGIN is what blocked."""
        conn, limits = self.conn, self.limits
        opening = begin_sql(limits, write=self.write, isolation=self.isolation)
        if self.whole:
            self.watch = deadline.WATCHDOG.watch(cancel_of(conn, limits.grace_s),
                                                 conn.pgconn.socket, limits.deadline_s,
                                                 limits.grace_s, alive=lambda: not conn.closed)
        return opening

    def _release(self, unusable: bool) -> bool:
        """Release the deadline; whether the connection must now be closed (after the
        release: closing frees the descriptor the watchdog would otherwise touch)."""
        if self.watch is not None:
            deadline.WATCHDOG.release(self.watch)
        return unusable and not self.conn.closed


class Transaction(_Transaction):
    """One execution's transaction: BEGIN with SET LOCAL timeouts, always ROLLBACK (and
    advisory locks released). With ``whole`` all of it runs under one client-side deadline,
    registered before BEGIN is sent so ``watch`` tells a cut connection even when BEGIN is
    what blocked; else the caller bounds each round trip with ``bounded``. Flag SQL inside
    goes through ``ExtendedCursor(conn)``. A class, not a generator: it is on the hot path."""

    __slots__ = ()
    conn: psycopg.Connection[Any]

    def __enter__(self) -> Transaction:
        opening = self._watch()
        try:
            command(self.conn, opening)
        except BaseException:
            self._end()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()

    def _end(self) -> None:
        unusable = True
        try:
            unusable = end(self.conn)
        finally:
            if self._release(unusable):
                self.conn.close()


class ATransaction(_Transaction):
    """The asyncio twin of ``Transaction`` (``async with``); flag SQL inside goes through
    ``AsyncExtendedCursor(conn)``."""

    __slots__ = ()
    conn: psycopg.AsyncConnection[Any]

    async def __aenter__(self) -> ATransaction:
        opening = self._watch()
        try:
            await acommand(self.conn, opening)
        except BaseException:
            await self._end()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._end()

    async def _end(self) -> None:
        unusable = True
        try:
            unusable = await aend(self.conn)
        finally:
            if self._release(unusable):
                await self.conn.close()


def ours(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """The toolkit's transaction is still open: the statement did not end it."""
    return conn.pgconn.transaction_status in (pq.TransactionStatus.INTRANS,
                                              pq.TransactionStatus.INERROR)


def escaped() -> PathResult:
    return PathResult(None, None, ESCAPED, ESCAPED_MESSAGE)


def result_set(pgresult: psycopg.pq.abc.PGresult | None, rows: list[tuple[Any, ...]] | None,
               rowcount: int) -> ResultSet:
    """A ResultSet from a libpq result: column names and types without building Columns."""
    if pgresult is None or rows is None:
        return ResultSet((), (), rows, rowcount)
    n = pgresult.nfields
    names = tuple((pgresult.fname(i) or b"").decode() for i in range(n))
    return ResultSet(names, tuple(pgresult.ftype(i) for i in range(n)), rows, rowcount)


def failure(exc: psycopg.Error, watch: deadline.Watch | None = None) -> PathResult:
    """A failed execution: its SQLSTATE (08000 for a lost connection, 08006 when the deadline
    cut it; none for a client-side error such as a missing parameter) and its first line."""
    if watch is not None and watch.state == deadline.BROKEN:
        return PathResult(None, None, DEADLINE, f"no answer from the server within the "
                          f"deadline ({watch.seconds:g} s): connection closed")
    text = str(exc).strip()
    state = exc.sqlstate or ("08000" if isinstance(exc, psycopg.OperationalError) else None)
    if watch is not None and watch.expired and state == "57014":
        text = f"cancelled at the deadline ({watch.seconds:g} s)"
    return PathResult(None, None, state, text.splitlines()[0] if text else type(exc).__name__)


def closed() -> PathResult:
    return PathResult(None, None, "08003", "the connection is closed (an earlier execution "
                      "lost it)")


def _failed(exc: psycopg.Error, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
            watch: deadline.Watch | None, sampler: LockWaitSampler | None,
            pid: int) -> PathResult:
    """A database error as the execution's result; a client-side problem (missing
    parameter...) is the caller's input error and raises again."""
    if (exc.sqlstate is None and not isinstance(exc, psycopg.OperationalError)
            and not conn.closed):
        if sampler is not None:
            sampler.end(pid)
        raise exc
    waited, waits = sampler.end(pid) if sampler is not None else (None, [])
    return replace(failure(exc, watch), lock_wait_ns=waited, waits=tuple(waits) or None)


def _escaped(sampler: LockWaitSampler | None, pid: int) -> PathResult:
    if sampler is not None:
        sampler.end(pid)
    return escaped()


def _succeeded(elapsed: int, rows: list[tuple[Any, ...]] | None, rowcount: int,
               held: tuple[tuple[str, str], ...] | None, sampler: LockWaitSampler | None,
               pid: int) -> PathResult:
    waited, waits = sampler.end(pid) if sampler is not None else (None, [])
    count = len(rows) if rows is not None else rowcount
    return PathResult(elapsed, count, lock_wait_ns=waited, locks=held,
                      waits=tuple(waits) or None)


async def aexecute(
    conn: psycopg.AsyncConnection[Any],
    query: str,
    params: Mapping[str, Any],
    *,
    write: bool,
    limits: Limits | None = None,
    sampler: LockWaitSampler | None = None,
    execution: int = 0,
    capture_locks: bool = False,
    isolation: str = "read committed",
    settings: PlannerSettings = (),
    prepare: bool | None = None,
) -> tuple[PathResult, ResultSet | None]:
    """The asyncio twin of ``execute`` (the source ``tools/async_to_sync.py`` generates
    ``execute`` from: edit this one and run the script)."""
    if conn.closed:
        return closed(), None
    pid = conn.info.backend_pid
    held = None
    tx = ATransaction(conn, limits or Limits(), write=write, isolation=isolation)
    try:
        async with tx:
            if settings:
                await acommand(conn, set_local_settings(settings))
            cur = AsyncExtendedCursor(conn)
            if sampler is not None:
                sampler.begin(pid, execution)
            start = time.perf_counter_ns()
            await cur.execute(query.encode(), params, prepare=prepare)
            res = cur.pgresult
            rows = await cur.fetchall() if res is not None and res.nfields else None
            elapsed = time.perf_counter_ns() - start
            if not ours(conn):
                return _escaped(sampler, pid), None
            result = result_set(res, rows, cur.rowcount)
            if capture_locks:
                held = await aheld_locks(conn)
    except psycopg.Error as exc:
        return _failed(exc, conn, tx.watch, sampler, pid), None
    return _succeeded(elapsed, rows, cur.rowcount, held, sampler, pid), result


def execute(
    conn: psycopg.Connection[Any],
    query: str,
    params: Mapping[str, Any],
    *,
    write: bool,
    limits: Limits | None = None,
    sampler: LockWaitSampler | None = None,
    execution: int = 0,
    capture_locks: bool = False,
    isolation: str = "read committed",
    settings: PlannerSettings = (),
    prepare: bool | None = None,
) -> tuple[PathResult, ResultSet | None]:
    """Execute ``query`` once in its own transaction; never raises a database error.

    One statement (extended protocol); ``kind: read`` runs READ ONLY; reads and writes alike
    are rolled back; ``limits`` (default ``Limits()``) are set with SET LOCAL and enforce the
    client-side deadline. Latency covers execute plus fetching every row. With a
    ``sampler`` the execution's lock waits are attributed to it; with ``capture_locks`` the
    locks it holds at the end are listed (outside the timing). ``settings`` (the toolkit's
    own planner settings, ``set_local_settings``) are set with SET LOCAL in the same
    transaction before the statement, outside the timing (``rollout.run.perturb``).
    ``prepare=False`` keeps psycopg from preparing the statement (a cached plan would
    ignore planner settings). Generated from ``aexecute`` by ``tools/async_to_sync.py``
    (this docstring aside): edit that one and run the script.
    """
    if conn.closed:
        return closed(), None
    pid = conn.info.backend_pid
    held = None
    tx = Transaction(conn, limits or Limits(), write=write, isolation=isolation)
    try:
        with tx:
            if settings:
                command(conn, set_local_settings(settings))
            cur = ExtendedCursor(conn)
            if sampler is not None:
                sampler.begin(pid, execution)
            start = time.perf_counter_ns()
            cur.execute(query.encode(), params, prepare=prepare)
            res = cur.pgresult
            rows = cur.fetchall() if res is not None and res.nfields else None
            elapsed = time.perf_counter_ns() - start
            if not ours(conn):
                return _escaped(sampler, pid), None
            result = result_set(res, rows, cur.rowcount)
            if capture_locks:
                held = held_locks(conn)
    except psycopg.Error as exc:
        return _failed(exc, conn, tx.watch, sampler, pid), None
    return _succeeded(elapsed, rows, cur.rowcount, held, sampler, pid), result


def fetch(conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any],
          limits: Limits | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Rows of a read-only query (``params.sample``, ``params.tenants``) run like any
    execution: one statement, READ ONLY, rolled back, under timeouts and the deadline.
    Raises the database error (a deadline cut as OperationalError)."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    tx = Transaction(conn, limits or Limits(), write=False)
    try:
        with tx, ExtendedCursor(conn) as cur:
            cur.execute(query.encode(), params)
            rows = cur.fetchall() if cur.description is not None else []
            names = [d.name for d in cur.description or []]
            if not ours(conn):
                raise psycopg.errors.InvalidTransactionState(ESCAPED_MESSAGE)
    except psycopg.OperationalError as exc:
        if tx.watch is not None and tx.watch.state == deadline.BROKEN:
            raise psycopg.OperationalError(failure(exc, tx.watch).error or "") from None
        raise
    return names, rows
