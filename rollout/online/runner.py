# generated from rollout/online/aio.py by tools/async_to_sync.py: do not edit
"""``Rollout``: the online runner for threaded services (psycopg ``Connection`` pools).

The caller's path is: decide (no I/O), run the served path on the request pool, hand a
shadow job to a bounded queue (dropped and counted when full), return. Shadow workers run
the other path on their own pool, under timeouts, read-only or always rolled back, compare,
and record. Nothing from the background can raise into, block, or starve the caller. The
logic the runners share lives in ``rollout.online.core``; this module is I/O. Flag state and
recording run in their own threads, so an asyncio service never awaits the store.

Generated from ``rollout/online/aio.py`` (the asyncio runner, the source of both) by
``tools/async_to_sync.py``: edit that file and run the script, never this one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from queue import Full as QueueFull
from queue import Queue
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg.rows import BaseRowFactory
from psycopg_pool import ConnectionPool

from ..flags.runtime import FlagStates
from ..flags.targeting import Context
from ..flags.workspace import Workspace
from ..run import deadline
from ..run.execute import (
    ExtendedCursor,
    Limits,
    cancel_of,
    command,
    execute,
    failure,
    reset_session,
    serve,
    set_local,
)
from ..run.privileges import check_login, with_role
from ..store.observations import PathResult
from ._admission import SHADOW_BUDGET
from ._observe import Ran, ShadowJob
from .core import (
    REQUEST_TIMEOUT_S,
    SHADOW_LIMITS,
    RunnerCore,
    RunnerStats,
    background_limits,
    callable_failure,
    count,
    pool_configs,
    regrow,
)
from .recorder import Recorder

R = TypeVar("R")
Row = TypeVar("Row")
Conn = psycopg.Connection[Any]


def _autocommit_again(conn: Conn) -> None:
    """Back to the request pool's autocommit after a ``run()`` callable; a connection left in
    a failed transaction keeps it off (the pool rolls it back; ``query()`` then commits)."""
    with contextlib.suppress(psycopg.Error):
        conn.set_autocommit(True)


class Rollout(RunnerCore):
    """Decide, serve, shadow, record: the library entry point (``AsyncRollout`` for asyncio
    code, ``Rollout`` for sync code).

    ``await AsyncRollout.connect(...)`` checks the login, opens the pools and starts the
    worker tasks; ``Rollout.connect(...)`` (or ``Rollout(...)``) the same with threads.
    """

    _shadow_close_returns = False
    """psycopg_pool's ``close_returns`` for the shadow pool: a subclass that lends its
    connections to another library's pool (``rollout.sqlalchemy``) sets it."""

    def __init__(self, dsn: str, workspace: str | Path | Workspace = ".", *,
                 store_dsn: str | None = None, pool: ConnectionPool[Conn] | None = None,
                 pool_size: int = 10, shadow_pool_size: int = 2, shadow_workers: int = 2,
                 queue_size: int = 1000, shadow_limits: Limits | None = None,
                 states: FlagStates | None = None, recorder: Recorder | None = None,
                 pool_stats_interval: float | None = 10.0,
                 allow_superuser: bool = False,
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
        # Shadows run flag SQL as this login: refuse one that reaches past the database
        # (docs/safety.md) before anything starts.
        check_login(dsn, allow=allow_superuser or ws.settings.allow_superuser,
                    what="shadow flag SQL")
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
            cursor_factory=ExtendedCursor, reset=reset_session, regrow=regrow,
            open=True,
            pool_options=pool_options, connect_kwargs=connect_kwargs,
            timeout=request_timeout)
        self.pool: ConnectionPool[Conn] = pool or ConnectionPool(dsn, **requests)
        self.shadow_pool: ConnectionPool[Conn] = ConnectionPool(
            shadow_dsn, close_returns=self._shadow_close_returns, **shadow)
        self._queue: Queue[ShadowJob | None] = Queue(maxsize=queue_size)
        self._workers = [threading.Thread(target=self._work, name=f"rollout-shadow-{i}",
                                          daemon=True) for i in range(shadow_workers)]
        for w in self._workers:
            w.start()
        self._start_pool_stats({"requests": self.pool, "shadow": self.shadow_pool})
        if pool_stats_interval:
            threading.Thread(target=self._pool_stats_loop, args=(pool_stats_interval,),
                             name="rollout-pool-stats", daemon=True).start()
        self._start_metrics(meter_provider, dsn, metric_tenants)

    @classmethod
    def connect(cls, dsn: str, workspace: str | Path | Workspace = ".", **options: Any
                ) -> Rollout:
        """``Rollout(dsn, workspace, **options)``: the same entry point as the asyncio
        runner's."""
        return cls(dsn, workspace, **options)

    # -- the caller's path ----------------------------------------------------------------
    @overload
    def query(self, flag: str, ctx: Context, params: Mapping[str, Any] | None = None
              ) -> list[tuple[Any, ...]]: ...

    @overload
    def query(self, flag: str, ctx: Context, params: Mapping[str, Any] | None = None,
              *, row_factory: BaseRowFactory[Row]) -> list[Row]: ...

    def query(self, flag: str, ctx: Context, params: Mapping[str, Any] | None = None,
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
                with self.pool.connection(timeout=self._left(until)) as conn:
                    waited = time.perf_counter_ns() - asked  # the checkout (metrics)
                    with self._request_watch(conn, until) as watch:
                        start = time.perf_counter_ns()
                        # our cursor, whatever the pool: one statement, extended protocol;
                        # on the runner's pool in autocommit (its own transaction) and in
                        # one round trip with the session reset (a pipeline), else
                        # committed with the reset in a second one (an error leaves it to
                        # the pool's rollback and full reset)
                        cur = serve(conn, sql, args)
                        res = cur.pgresult
                        rows = (cur.fetchall() if res is not None and res.nfields
                                else None)
                        elapsed = time.perf_counter_ns() - start
                break
            except psycopg.Error as exc:
                if self._dead(exc, conn) and not (watch is not None and watch.expired):
                    # a pooled connection the server dropped (restart, failover): the others
                    # are likely dead too; let the pool test and replace them (not when the
                    # deadline cut it: a hung server would hang the check too)
                    self.pool.check()
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

    def run(self, flag: str, ctx: Context, *, legacy: Callable[[Conn], R],
            new: Callable[[Conn], R]) -> R:
        """Like ``query`` for code paths: ``fn(conn) -> result``, compared by value.

        The callable owns its transactions (``with conn.transaction():``); one that returns
        with a transaction still open is rolled back, counted and recorded as failed.
        """
        f = self._flag(flag)
        d = self.decide(flag, ctx)
        fn = new if d.path == "new" else legacy
        with contextlib.ExitStack() as stack:
            asked = time.perf_counter_ns()
            try:
                conn = stack.enter_context(
                    self.pool.connection(timeout=self.request_timeout))
            except psycopg.Error as exc:
                raise self._checkout_failed(f, d, ctx, exc) from exc
            if conn.autocommit:  # the request pool's: callables own their transactions
                conn.set_autocommit(False)
                stack.callback(_autocommit_again, conn)
            start = time.perf_counter_ns()
            try:
                value = fn(conn)
            except psycopg.Error as exc:
                self._served_failed(f, d, ctx, None, failure(exc), sql=False)
                raise
            elapsed = time.perf_counter_ns() - start
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.rollback()
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

    def _purge(self, flag: str) -> None:
        """Drop the queued jobs of a killed flag (watcher thread), under the queue's lock."""
        q = self._queue
        with q.mutex:
            kept = [j for j in q.queue if j is None or j.flag.name != flag]
            gone = [j for j in q.queue if j is not None and j.flag.name == flag]
            n = len(gone)
            if n:
                q.queue.clear()
                q.queue.extend(kept)
                q.unfinished_tasks -= n
                if not q.unfinished_tasks:
                    q.all_tasks_done.notify_all()
                q.not_full.notify(n)
        self._purged(gone)

    # -- background -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._shadow(job)
            except Exception:  # never let one job stop a worker
                if job is not None:
                    self._internal_error(job)
            finally:
                self._queue.task_done()

    def _shadow(self, job: ShadowJob) -> None:
        if not self._still_wanted(job, starting=False):
            return  # dropped before taking a connection (its return costs a reset)
        order = self._order(job)
        started = time.perf_counter()
        ran = self._run(job, order)
        if ran is not None:
            self._finish(job, ran, order, started)

    def _run(self, job: ShadowJob, order: list[str]) -> Ran | None:
        """The paths of ``order`` one after the other on one shadow connection, each in its
        own transaction always rolled back (``execute`` for SQL, ``_call`` for callables);
        None when the live re-check dropped the job."""
        f = job.flag
        limits = background_limits(f, self.limits)
        if job.call is None:
            self._served_rows_as_result(job)
        asked = time.perf_counter_ns()
        try:
            with self.shadow_pool.connection() as conn:
                job.waited = time.perf_counter_ns() - asked
                if not self._still_wanted(job, starting=True):
                    return None
                ran: dict[str, tuple[PathResult, Any]] = {}
                for path in order:
                    if job.call is None:
                        ran[path] = execute(conn, self._sql(job, path),
                                            job.params or {}, write=f.kind == "write",
                                            limits=limits, isolation=f.isolation)
                    else:
                        ran[path] = self._call(conn, f.kind == "read",
                                               job.callable_for(path), limits)
                return ran
        except psycopg.Error as exc:  # the pool itself failed (server gone, timeout)
            return {path: (failure(exc), None) for path in order}

    def _call(self, conn: Conn, read: bool, fn: Callable[[Conn], Any],
              limits: Limits) -> tuple[PathResult, Any]:
        """A callable in a transaction always rolled back (psycopg's: it forbids commit()
        inside), read-only for reads, with SET LOCAL timeouts and the client deadline."""
        watch = None
        try:
            with deadline.watch(cancel_of(conn, limits.grace_s), conn.pgconn.socket,
                                limits.deadline_s, limits.grace_s,
                                alive=lambda: not conn.closed) as watch:
                conn.set_read_only(read)
                start = time.perf_counter_ns()
                with conn.transaction(force_rollback=True):
                    command(conn, b"; ".join(q.as_bytes(conn)
                                             for q in set_local(limits)))
                    value = fn(conn)
                elapsed = time.perf_counter_ns() - start
        except Exception as exc:
            db = self._database_error(exc)
            return (callable_failure(exc) if db is None else failure(db, watch)), None
        return PathResult(elapsed, count(value)), value

    # -- housekeeping ---------------------------------------------------------------------
    def get_stats(self) -> RunnerStats:
        """Counters of this runner since it started, its queue, pools and recorder."""
        return self._stats(self._queue.qsize())

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued shadow job ran and its observation was written."""
        until = time.monotonic() + timeout
        q = self._queue
        with q.all_tasks_done:
            if not q.all_tasks_done.wait_for(lambda: not q.unfinished_tasks, timeout):
                return False
        return self.recorder.flush(max(0.0, until - time.monotonic()))

    def close(self) -> None:
        """Finish queued shadow work, flush observations, close pools and listeners."""
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join(timeout=5)
        self._stop_pool_stats()
        self._stop_metrics()
        self.states.unsubscribe(self._state_changed)
        self.recorder.close()
        self.states.close()
        self.shadow_pool.close()
        if self._own_pool:
            self.pool.close()

    def __enter__(self) -> Rollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
