# <async>
"""``AsyncRollout``: the online runner for asyncio services (psycopg ``AsyncConnection``).

The caller's path is: decide (no I/O), run the served path on the request pool, hand a
shadow job to a bounded queue (dropped and counted when full), return. Shadow workers run
the other path on their own pool, under timeouts, read-only or always rolled back, compare,
and record. Nothing from the background can raise into, block, or starve the caller. The
logic the runners share lives in ``rollout.online.core``; this module is I/O. Flag state and
recording run in their own threads, so an asyncio service never awaits the store.

This module is the source of both runners: ``rollout/online/runner.py`` (``Rollout``, for threaded
services) is generated from it by ``tools/async_to_sync.py`` (``await`` and ``async``
dropped, async names mapped to their sync twins, the few places that truly differ between
``# <async>`` and ``# <sync>`` markers). Edit this file, then run the script; a test fails
when the generated file is stale.
"""
# <sync>
# """``Rollout``: the online runner for threaded services (psycopg ``Connection`` pools).
#
# The caller's path is: decide (no I/O), run the served path on the request pool, hand a
# shadow job to a bounded queue (dropped and counted when full), return. Shadow workers run
# the other path on their own pool, under timeouts, read-only or always rolled back, compare,
# and record. Nothing from the background can raise into, block, or starve the caller. The
# logic the runners share lives in ``rollout.online.core``; this module is I/O. Flag state and
# recording run in their own threads, so an asyncio service never awaits the store.
#
# Generated from ``rollout/online/aio.py`` (the asyncio runner, the source of both) by
# ``tools/async_to_sync.py``: edit that file and run the script, never this one.
# """
# </sync>

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

# <async>
from asyncio import Queue, QueueEmpty, QueueFull

# <sync>
# from queue import Empty as QueueEmpty
# from queue import Full as QueueFull
# from queue import Queue
# </sync>
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg.rows import BaseRowFactory
from psycopg_pool import AsyncConnectionPool

from ..flags.runtime import FlagStates
from ..flags.targeting import Context
from ..flags.workspace import Workspace
from ..run import deadline
from ..run.execute import (
    AsyncExtendedCursor,
    Limits,
    acommand,
    aexecute,
    areset_session,
    aserve,
    cancel_of,
    failure,
    set_local,
)
from ..run.privileges import check_login_async, with_role
from ..store.observations import PathResult
from ._admission import SHADOW_BUDGET
from ._observe import Ran, ShadowJob
from .core import (
    REQUEST_TIMEOUT_S,
    SHADOW_LIMITS,
    RunnerCore,
    RunnerStats,
    aregrow,
    background_limits,
    callable_failure,
    count,
    pool_configs,
)
from .recorder import Recorder

R = TypeVar("R")
Row = TypeVar("Row")
AConn = psycopg.AsyncConnection[Any]


async def _autocommit_again(conn: AConn) -> None:
    """Back to the request pool's autocommit after a ``run()`` callable; a connection left in
    a failed transaction keeps it off (the pool rolls it back; ``query()`` then commits)."""
    with contextlib.suppress(psycopg.Error):
        await conn.set_autocommit(True)


class AsyncRollout(RunnerCore):
    """Decide, serve, shadow, record: the library entry point (``AsyncRollout`` for asyncio
    code, ``Rollout`` for sync code).

    ``await AsyncRollout.connect(...)`` checks the login, opens the pools and starts the
    worker tasks; ``Rollout.connect(...)`` (or ``Rollout(...)``) the same with threads.
    """

    _shadow_close_returns = False
    """psycopg_pool's ``close_returns`` for the shadow pool: a subclass that lends its
    connections to another library's pool (``rollout.sqlalchemy``) sets it."""

    def __init__(self, dsn: str, workspace: str | Path | Workspace = ".", *,
                 store_dsn: str | None = None, pool: AsyncConnectionPool[AConn] | None = None,
                 pool_size: int = 10, shadow_pool_size: int = 2, shadow_workers: int = 2,
                 queue_size: int = 1000, shadow_limits: Limits | None = None,
                 states: FlagStates | None = None, recorder: Recorder | None = None,
                 pool_stats_interval: float | None = 10.0,
                 # <sync>
                 # allow_superuser: bool = False,
                 # </sync>
                 request_timeout: float = REQUEST_TIMEOUT_S,
                 pool_options: Mapping[str, Any] | None = None,
                 connect_kwargs: Mapping[str, Any] | None = None,
                 shadow_budget: float | None = SHADOW_BUDGET,
                 meter_provider: Any = None, metric_tenants: bool = False) -> None:
        """``request_timeout`` bounds each ``query()`` (pool checkout and served query) and
        each ``run()``'s checkout; ``pool_options`` are psycopg_pool options of the request
        pool (``timeout``, ``max_waiting``, ``reconnect_timeout``, ``check`` ...);
        ``connect_kwargs`` extra connection arguments of both pools; ``shadow_budget`` the
        share of wall time background work may take (default 0.02, None: no budget;
        docs/online.md); ``meter_provider`` the OpenTelemetry provider of its metrics
        (default the global one, False none; ``metric_tenants`` adds the tenant as an
        attribute; docs/observability.md). A ``pool`` passed in serves requests as it is,
        and is not opened or closed by the runner."""
        ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
        # <sync>
        # # Shadows run flag SQL as this login: refuse one that reaches past the database
        # # (docs/safety.md) before anything starts.
        # check_login(dsn, allow=allow_superuser or ws.settings.allow_superuser,
        #             what="shadow flag SQL")
        # </sync>
        shadow_dsn = with_role(dsn, ws.settings.shadow_role)
        store = store_dsn or dsn
        self._init_core(ws.flags, states or FlagStates(store).start(),
                        recorder or Recorder(store), shadow_budget)
        self.limits = shadow_limits or SHADOW_LIMITS
        self.request_timeout = request_timeout
        self._own_pool = pool is None
        # The request pool resets a connection at checkout, the shadow pool on return
        # (pool_configs); a pool passed in keeps its own reset (docs/online.md).
        requests, shadow = pool_configs(
            pool_size=pool_size, shadow_pool_size=shadow_pool_size,
            cursor_factory=AsyncExtendedCursor, reset=areset_session, regrow=aregrow,
            # <async>
            open=False,
            # <sync>
            # open=True,
            # </sync>
            pool_options=pool_options, connect_kwargs=connect_kwargs,
            timeout=request_timeout)
        self.pool: AsyncConnectionPool[AConn] = pool or AsyncConnectionPool(dsn, **requests)
        self.shadow_pool: AsyncConnectionPool[AConn] = AsyncConnectionPool(
            shadow_dsn, close_returns=self._shadow_close_returns, **shadow)
        self._queue: Queue[ShadowJob | None] = Queue(maxsize=queue_size)
        # <async>
        self._n_workers = shadow_workers
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # <sync>
        # self._workers = [threading.Thread(target=self._work, name=f"rollout-shadow-{i}",
        #                                   daemon=True) for i in range(shadow_workers)]
        # for w in self._workers:
        #     w.start()
        # </sync>
        self._start_pool_stats({"requests": self.pool, "shadow": self.shadow_pool})
        if pool_stats_interval:
            threading.Thread(target=self._pool_stats_loop, args=(pool_stats_interval,),
                             name="rollout-pool-stats", daemon=True).start()
        self._start_metrics(meter_provider, dsn, metric_tenants)

    # <async>
    @classmethod
    async def connect(cls, dsn: str, workspace: str | Path | Workspace = ".", *,
                      allow_superuser: bool = False, **options: Any) -> AsyncRollout:
        """Check the login (a login that reaches past the database is refused,
        docs/safety.md), then open the pools and start the workers."""
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
    # <sync>
    # @classmethod
    # def connect(cls, dsn: str, workspace: str | Path | Workspace = ".", **options: Any
    #             ) -> Rollout:
    #     """``Rollout(dsn, workspace, **options)``: the same entry point as the asyncio
    #     runner's."""
    #     return cls(dsn, workspace, **options)
    # </sync>

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

        ``%(tenant)s`` is ``ctx.tenant`` (a differing ``tenant`` in ``params`` is an
        InputError). ``row_factory`` (psycopg's ``dict_row``, ``namedtuple_row``,
        ``class_row(...)``) builds the rows returned; the shadow compares plain tuples.
        """
        f, d, args, sql = self._start(flag, ctx, params)
        until = time.monotonic() + self.request_timeout
        for attempt in (1, 2):
            conn = watch = None
            try:
                # the request deadline: the checkout's timeout, then the served query is
                # cancelled at it and its connection cut REQUEST_GRACE_S later
                asked = time.perf_counter_ns()
                async with self.pool.connection(timeout=self._left(until)) as conn:
                    waited = time.perf_counter_ns() - asked  # the checkout (metrics)
                    with self._request_watch(conn, until) as watch:
                        start = time.perf_counter_ns()
                        # our cursor, whatever the pool: one statement, extended protocol;
                        # on the runner's pool in autocommit (its own transaction) and in
                        # one round trip with the session reset (a pipeline), else
                        # committed with the reset in a second one (an error leaves it to
                        # the pool's rollback and full reset)
                        cur = await aserve(conn, sql, args)
                        res = cur.pgresult
                        rows = (await cur.fetchall() if res is not None and res.nfields
                                else None)
                        elapsed = time.perf_counter_ns() - start
                break
            except psycopg.Error as exc:
                if self._dead(exc, conn) and not (watch is not None and watch.expired):
                    # a pooled connection the server dropped (restart, failover): the others
                    # are likely dead too; let the pool test and replace them (not when the
                    # deadline cut it: a hung server would hang the check too)
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
                                 row_factory, waited)

    async def run(self, flag: str, ctx: Context, *, legacy: Callable[[AConn], Awaitable[R]],
                  new: Callable[[AConn], Awaitable[R]]) -> R:
        """Like ``query`` for code paths: ``fn(conn) -> result``, compared by value.

        The callable owns its transactions (``with conn.transaction():``); one that returns
        with a transaction still open is rolled back, counted and recorded as failed.
        """
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
        except QueueFull:
            self._dropped(job)

    # <async>
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
            except QueueEmpty:
                break
        kept = [j for j in items if j is None or j.flag.name != flag]
        for j in kept:
            q.put_nowait(j)
        for _ in items:
            q.task_done()
        self._purged([j for j in items if j is not None and j.flag.name == flag])
    # <sync>
    # def _purge(self, flag: str) -> None:
    #     """Drop the queued jobs of a killed flag (watcher thread), under the queue's lock."""
    #     q = self._queue
    #     with q.mutex:
    #         kept = [j for j in q.queue if j is None or j.flag.name != flag]
    #         gone = [j for j in q.queue if j is not None and j.flag.name == flag]
    #         n = len(gone)
    #         if n:
    #             q.queue.clear()
    #             q.queue.extend(kept)
    #             q.unfinished_tasks -= n
    #             if not q.unfinished_tasks:
    #                 q.all_tasks_done.notify_all()
    #             q.not_full.notify(n)
    #     self._purged(gone)
    # </sync>

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
        own transaction always rolled back (``execute`` for SQL, ``_call`` for callables);
        None when the live re-check dropped the job."""
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
                        ran[path] = await aexecute(conn, self._sql(job, path),
                                                   job.params or {}, write=f.kind == "write",
                                                   limits=limits, isolation=f.isolation)
                    else:
                        ran[path] = await self._call(conn, f.kind == "read",
                                                     job.callable_for(path), limits)
                return ran
        except psycopg.Error as exc:  # the pool itself failed (server gone, timeout)
            return {path: (failure(exc), None) for path in order}

    async def _call(self, conn: AConn, read: bool, fn: Callable[[AConn], Awaitable[Any]],
                    limits: Limits) -> tuple[PathResult, Any]:
        """A callable in a transaction always rolled back (psycopg's: it forbids commit()
        inside), read-only for reads, with SET LOCAL timeouts and the client deadline."""
        watch = None
        try:
            with deadline.watch(cancel_of(conn, limits.grace_s), conn.pgconn.socket,
                                limits.deadline_s, limits.grace_s,
                                alive=lambda: not conn.closed) as watch:
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
        until = time.monotonic() + timeout
        # <async>
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        # <sync>
        # q = self._queue
        # with q.all_tasks_done:
        #     if not q.all_tasks_done.wait_for(lambda: not q.unfinished_tasks, timeout):
        #         return False
        # </sync>
        return await asyncio.to_thread(self.recorder.flush, max(0.0, until - time.monotonic()))

    async def close(self) -> None:
        """Finish queued shadow work, flush observations, close pools and listeners."""
        for _ in self._workers:
            await self._queue.put(None)
        # <async>
        await asyncio.gather(*self._workers, return_exceptions=True)
        # <sync>
        # for w in self._workers:
        #     w.join(timeout=5)
        # </sync>
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
