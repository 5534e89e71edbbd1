"""``AsyncRollout``: the online runner for asyncio services (psycopg ``AsyncConnection``).

The same design as ``Rollout`` and the same logic (``rollout._online``), with an
``AsyncConnectionPool`` per role and shadow workers as tasks fed by a bounded queue. Flag
state and recording run in their own threads, so nothing here awaits the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg.rows import BaseRowFactory
from psycopg_pool import AsyncConnectionPool

from . import deadline
from ._admission import SHADOW_BUDGET
from ._observe import Ran, ShadowJob
from ._online import (
    REQUEST_TIMEOUT_S,
    RunnerCore,
    RunnerStats,
    aregrow,
    background_limits,
    callable_failure,
    count,
    pool_configs,
)
from .execute import (
    END,
    AsyncExtendedCursor,
    Limits,
    acommand,
    acommit_and_reset,
    areset_session,
    begin_sql,
    escaped,
    failure,
    ours,
    result_set,
    set_local,
)
from .observations import PathResult
from .privileges import check_login_async, with_role
from .recorder import Recorder
from .runner import SHADOW_LIMITS
from .runtime import FlagStates
from .targeting import Context
from .workspace import Workspace

R = TypeVar("R")
Row = TypeVar("Row")
AConn = psycopg.AsyncConnection[Any]


async def _autocommit_again(conn: AConn) -> None:
    """As ``runner._autocommit_again``."""
    with contextlib.suppress(psycopg.Error):
        await conn.set_autocommit(True)


class AsyncRollout(RunnerCore):
    """Decide, serve, shadow, record: the library entry point for asyncio code.

    Create it with ``await AsyncRollout.connect(...)``: pools open and workers start there.
    """

    _shadow_close_returns = False
    """As ``Rollout._shadow_close_returns``."""

    def __init__(self, dsn: str, workspace: str | Path | Workspace = ".", *,
                 store_dsn: str | None = None, pool: AsyncConnectionPool[AConn] | None = None,
                 pool_size: int = 10, shadow_pool_size: int = 2,
                 shadow_workers: int = 2, queue_size: int = 1000,
                 shadow_limits: Limits | None = None, states: FlagStates | None = None,
                 recorder: Recorder | None = None,
                 pool_stats_interval: float | None = 10.0,
                 request_timeout: float = REQUEST_TIMEOUT_S,
                 pool_options: Mapping[str, Any] | None = None,
                 connect_kwargs: Mapping[str, Any] | None = None,
                 shadow_budget: float | None = SHADOW_BUDGET,
                 meter_provider: Any = None, metric_tenants: bool = False) -> None:
        """Use ``await AsyncRollout.connect(...)``: it checks the login first. The options
        are ``Rollout``'s (``request_timeout``, ``pool_options``, ``connect_kwargs``,
        ``shadow_budget``, ``meter_provider``, ``metric_tenants``); a ``pool`` passed in
        serves requests as it is, and is not opened or closed by the runner."""
        ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
        shadow_dsn = with_role(dsn, ws.settings.shadow_role)
        store = store_dsn or dsn
        self._init_core(ws.flags, states or FlagStates(store).start(),
                        recorder or Recorder(store), shadow_budget)
        self.limits = shadow_limits or SHADOW_LIMITS
        self.request_timeout = request_timeout
        requests, shadow = pool_configs(
            pool_size=pool_size, shadow_pool_size=shadow_pool_size,
            cursor_factory=AsyncExtendedCursor, reset=areset_session, regrow=aregrow,
            open=False,
            pool_options=pool_options, connect_kwargs=connect_kwargs,
            timeout=request_timeout)
        self._own_pool = pool is None
        self.pool: AsyncConnectionPool[AConn] = pool or AsyncConnectionPool(dsn, **requests)
        self.shadow_pool: AsyncConnectionPool[AConn] = AsyncConnectionPool(
            shadow_dsn, close_returns=self._shadow_close_returns, **shadow)
        self._queue: asyncio.Queue[ShadowJob | None] = asyncio.Queue(maxsize=queue_size)
        self._n_workers = shadow_workers
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_pool_stats({"requests": self.pool, "shadow": self.shadow_pool},
                               pool_stats_interval)
        self._start_metrics(meter_provider, dsn, metric_tenants)

    @classmethod
    async def connect(cls, dsn: str, workspace: str | Path | Workspace = ".", *,
                      allow_superuser: bool = False, **options: Any) -> AsyncRollout:
        """Check the login (as ``Rollout`` does), then open the pools and start workers."""
        ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
        await check_login_async(dsn, allow=allow_superuser or ws.settings.allow_superuser,
                                what="shadow flag SQL")
        ro = cls(dsn, ws, **options)
        await ro._open()
        return ro

    async def _open(self) -> None:
        """Open the pools and start the shadow workers on the running loop."""
        if self._own_pool:
            await self.pool.open()
        await self.shadow_pool.open()
        self._loop = asyncio.get_running_loop()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._n_workers)]

    # -- the caller's path ----------------------------------------------------------------
    @overload
    async def query(self, flag: str, ctx: Context, params: Mapping[str, Any] | None = None
                    ) -> list[tuple[Any, ...]]: ...

    @overload
    async def query(self, flag: str, ctx: Context, params: Mapping[str, Any] | None = None,
                    *, row_factory: BaseRowFactory[Row]) -> list[Row]: ...

    async def query(self, flag: str, ctx: Context, params: Mapping[str, Any] | None = None,
                    *, row_factory: BaseRowFactory[Any] | None = None) -> list[Any]:
        """Run the flag file's SQL for the path the decision picks; return its rows.

        As ``Rollout.query``: ``%(tenant)s`` is ``ctx.tenant``; ``row_factory`` builds the
        rows returned, the shadow compares plain tuples.
        """
        f, d, args, sql = self._start(flag, ctx, params)
        until = time.monotonic() + self.request_timeout
        for attempt in (1, 2):
            conn = watch = None
            try:
                asked = time.perf_counter_ns()
                async with self.pool.connection(timeout=self._left(until)) as conn:
                    # the request deadline (the watchdog thread): cancel the served query
                    # at it, cut the connection REQUEST_GRACE_S later
                    with self._request_watch(conn, until) as watch:
                        start = time.perf_counter_ns()
                        # committed with the session reset in one round trip (as Rollout)
                        cur = await AsyncExtendedCursor(conn).execute(sql, args)
                        res = cur.pgresult
                        rows = (await cur.fetchall() if res is not None and res.nfields
                                else None)
                        await acommit_and_reset(conn)
                        elapsed = time.perf_counter_ns() - start
                break
            except psycopg.Error as exc:
                if self._dead(exc, conn) and not (watch is not None and watch.expired):
                    # a pooled connection the server dropped (restart, failover): the others
                    # are likely dead too; let the pool test and replace them
                    await self.pool.check()
                if self._retry(f, exc, conn, attempt, watch):
                    continue  # a read: nothing ran on the dead connection
                self._served_failed(f, d, ctx, args, failure(exc, watch),
                                    sql=None if conn is None else True)
                timed_out = self._timed_out(f, exc, watch)
                if timed_out is not None:
                    raise timed_out from exc
                raise
        return self._served_rows(f, d, ctx, args, res, rows, cur.rowcount, elapsed, cur,
                                 row_factory, start - asked)

    async def run(self, flag: str, ctx: Context, *, legacy: Callable[[AConn], Awaitable[R]],
                  new: Callable[[AConn], Awaitable[R]]) -> R:
        """Like ``query`` for code paths: ``await fn(conn) -> result``, compared by value."""
        f = self._flag(flag)
        d = self.decide(flag, ctx)
        fn = new if d.path == "new" else legacy
        async with contextlib.AsyncExitStack() as stack:
            asked = time.perf_counter_ns()
            try:
                conn = await stack.enter_async_context(
                    self.pool.connection(timeout=self.request_timeout))
            except psycopg.Error as exc:
                raise self._checkout_failed(f, d, ctx, exc) from exc
            if conn.autocommit:  # the request pool's: callables own their transactions
                await conn.set_autocommit(False)
                stack.push_async_callback(_autocommit_again, conn)
            start = time.perf_counter_ns()
            try:
                value = await fn(conn)
            except psycopg.Error as exc:
                self._served_failed(f, d, ctx, None, failure(exc), sql=False)
                raise
            elapsed = time.perf_counter_ns() - start
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                await conn.rollback()
                raise self._left_open(f, d, ctx, fn is new)
        self._served_value(f, d, ctx, legacy if d.path == "new" else new, fn, value, elapsed,
                           start - asked)
        return value

    def _hand_off(self, job: ShadowJob | None) -> None:
        if job is None:
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._dropped(job)

    def _purge(self, flag: str) -> None:
        """A kill (watcher thread): drop the flag's queued jobs on the queue's own loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing queued
                loop.call_soon_threadsafe(self._purge_now, flag)

    def _purge_now(self, flag: str) -> None:
        # On the loop, with no await in between: nothing else touches the queue meanwhile.
        # Kept jobs go back before any task_done, so join() never sees a false zero.
        q = self._queue
        items: list[ShadowJob | None] = []
        while True:
            try:
                items.append(q.get_nowait())
            except asyncio.QueueEmpty:
                break
        kept = [j for j in items if j is None or j.flag.name != flag]
        for j in kept:
            q.put_nowait(j)
        for _ in items:
            q.task_done()
        self._purged([j for j in items if j is not None and j.flag.name == flag])

    # -- background -----------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                if job is None:
                    return
                await self._shadow(job)
            except Exception:  # never let one job stop a worker
                if job is not None:
                    self._internal_error(job)
            finally:
                self._queue.task_done()

    async def _shadow(self, job: ShadowJob) -> None:
        if not self._still_wanted(job, starting=False):
            return  # dropped before taking a connection (its return costs a reset)
        order = self._order(job)
        started = time.perf_counter()
        ran = await self._run(job, order)
        if ran is not None:
            self._finish(job, ran, order, started)

    async def _run(self, job: ShadowJob, order: list[str]) -> Ran | None:
        """The paths of ``order`` one after the other on one shadow connection, each in its
        own transaction always rolled back; None when the live re-check dropped the job."""
        f = job.flag
        limits = background_limits(f, self.limits)
        if job.call is None:
            self._served_rows_as_result(job)
        asked = time.perf_counter_ns()
        try:
            async with self.shadow_pool.connection() as conn:
                job.waited = time.perf_counter_ns() - asked
                if not self._still_wanted(job, starting=True):
                    return None
                ran: dict[str, tuple[PathResult, Any]] = {}
                for path in order:
                    if job.call is None:
                        ran[path] = await self._execute(conn, self._sql(job, path),
                                                        job.params or {}, f.kind == "write",
                                                        limits, f.isolation)
                    else:
                        ran[path] = await self._call(conn, f.kind == "read",
                                                     job.callable_for(path), limits)
                return ran
        except psycopg.Error as exc:  # the pool itself failed (server gone, timeout)
            return {path: (failure(exc), None) for path in order}

    @staticmethod
    async def _execute(conn: AConn, sql: str, params: Mapping[str, Any], write: bool,
                       limits: Limits, isolation: str) -> tuple[PathResult, Any]:
        """The async twin of ``rollout.execute.execute``: one statement, always rolled
        back, SET LOCAL timeouts, under the client deadline."""
        watch = None
        try:
            with deadline.watch(conn.cancel, conn.pgconn.socket, limits.deadline_s,
                                limits.grace_s, alive=lambda: not conn.closed) as watch:
                await acommand(conn, begin_sql(limits, write=write, isolation=isolation))
                try:
                    start = time.perf_counter_ns()
                    cur = await AsyncExtendedCursor(conn).execute(sql.encode(), params)
                    res = cur.pgresult
                    rows = await cur.fetchall() if res is not None and res.nfields else None
                    elapsed = time.perf_counter_ns() - start
                    left = not ours(conn)
                finally:
                    if not conn.closed:
                        await acommand(conn, END)
        except psycopg.Error as exc:
            return failure(exc, watch), None
        if left:
            return escaped(), None
        rs = result_set(res, rows, cur.rowcount)
        return PathResult(elapsed, len(rows) if rows is not None else cur.rowcount), rs

    async def _call(self, conn: AConn, read: bool, fn: Callable[[AConn], Awaitable[Any]],
                    limits: Limits) -> tuple[PathResult, Any]:
        watch = None
        try:
            with deadline.watch(conn.cancel, conn.pgconn.socket, limits.deadline_s,
                                limits.grace_s, alive=lambda: not conn.closed) as watch:
                await conn.set_read_only(read)
                start = time.perf_counter_ns()
                async with conn.transaction(force_rollback=True):
                    await acommand(conn, b"; ".join(q.as_bytes(conn)
                                                    for q in set_local(limits)))
                    value = await fn(conn)
                elapsed = time.perf_counter_ns() - start
        except Exception as exc:
            db = self._database_error(exc)
            return (callable_failure(exc) if db is None else failure(db, watch)), None
        return PathResult(elapsed, count(value)), value

    # -- housekeeping ---------------------------------------------------------------------
    def get_stats(self) -> RunnerStats:
        """Counters of this runner since it started, its queue, pools and recorder."""
        return self._stats(self._queue.qsize())

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued shadow job ran and its observation was written."""
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return await asyncio.to_thread(self.recorder.flush,
                                       max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Finish queued shadow work, flush observations, close pools and listeners."""
        for _ in self._workers:
            await self._queue.put(None)
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._stop_pool_stats()
        self._stop_metrics()
        self.states.unsubscribe(self._state_changed)
        await asyncio.to_thread(self.recorder.close)
        await asyncio.to_thread(self.states.close)
        await self.shadow_pool.close()
        if self._own_pool:
            await self.pool.close()

    async def __aenter__(self) -> AsyncRollout:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
