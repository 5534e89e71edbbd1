"""The online runners for SQLAlchemy 2 engines on psycopg 3 (extra ``sqlalchemy``).

``SQLAlchemyRollout(engine, workspace=...)`` serves requests from the application's own
engine and returns SQLAlchemy ``Row`` objects; ``AsyncSQLAlchemyRollout`` does the same for
an ``AsyncEngine``. Everything else is the psycopg runner's: they are ``Rollout`` and
``AsyncRollout`` with the served side replaced, so the login check, the decision, the
sampling limits and the shadow budget, the shadow pool (its own connections, reset on
return, no server-side prepared statements), every background execution (one statement by
the extended protocol, SET LOCAL timeouts, read-only reads, always rolled back, the client
deadline), the observations, the metrics and the reports are the same code.

Why wrap rather than re-implement: the safety of the background path lives in psycopg_pool's
configuration and in ``rollout.execute``; an SQLAlchemy pool configured to match would be a
second copy to keep in step. So a flag's SQL shadows on the runner's psycopg shadow pool as
it always does, and a ``run()`` callable gets an SQLAlchemy ``Connection`` over a connection
*lent* from that same pool: a shadow engine with ``NullPool`` whose ``creator`` is the pool's
``getconn`` (psycopg_pool's ``close_returns`` brings the connection back when SQLAlchemy
closes it, psycopg_pool's documented SQLAlchemy integration). The callable runs inside the
runner's own transaction on that connection (``force_rollback``): SQLAlchemy's
``commit()`` there is refused by psycopg, and the transaction is rolled back whatever the
callable does.

The served side runs on the application's engine: a flag's SQL goes through SQLAlchemy
(``exec_driver_sql``, so the application's engine events see it) with the runner's cursor
class on the connection for that one statement (extended protocol: one statement), is
committed with the session reset in the same round trip, and the rows come back as
SQLAlchemy ``Row`` objects. A callable gets an engine connection; what it leaves
uncommitted is rolled back, as SQLAlchemy's own ``engine.connect()`` block does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
import sqlalchemy
from psycopg.conninfo import make_conninfo
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ._observe import Ran, ShadowJob
from ._online import RunnerCore, background_limits
from .aio import AsyncRollout
from .execute import (
    AsyncExtendedCursor,
    ExtendedCursor,
    acommit_and_reset,
    commit_and_reset,
    failure,
)
from .flags import Flag
from .observations import PathResult
from .privileges import check_login_async
from .runner import Rollout
from .targeting import Context, Decision
from .workspace import Workspace

R = TypeVar("R")
AsyncFn = Callable[[AsyncConnection], Awaitable[R]]


def connect_args(engine: Engine) -> tuple[str, dict[str, Any]]:
    """The DSN of the engine's database and the connection arguments the shadow pool takes
    from it, as the engine's dialect translates its URL (its adapters ``context`` included:
    the shadow loads values as the served side does)."""
    args, params = engine.dialect.create_connect_args(engine.url)
    if engine.dialect.driver != "psycopg" or args:
        raise ValueError(f"rollout.sqlalchemy needs a postgresql+psycopg engine, not "
                         f"{engine.url.drivername}")
    extra = {k: params.pop(k) for k in ("context",) if k in params}
    dsn = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    return dsn, extra


class _EnginePool:
    """What the runner reads of its request pool (a name, psycopg_pool-style statistics),
    for the application's engine: its connections in use and idle."""

    def __init__(self, engine: Engine) -> None:
        self.name = "sqlalchemy"
        self._pool = engine.pool

    def get_stats(self) -> dict[str, int]:
        p: Any = self._pool
        try:
            idle, used = int(p.checkedin()), int(p.checkedout())
        except (AttributeError, NotImplementedError):  # NullPool and friends: no gauges
            return {}
        out = {"pool_size": idle + used, "pool_available": idle}
        with contextlib.suppress(AttributeError, TypeError):
            out["pool_max"] = int(p.size()) + max(0, int(p._max_overflow))
        return out

    def pop_stats(self) -> dict[str, int]:
        return self.get_stats()

    def close(self) -> None:  # the application's engine is the application's
        pass


class _Described:
    """A result's shape from a DB-API description (psycopg's: ``type_code`` is the OID), in
    the form ``RunnerCore._shape`` reads it from a psycopg result."""

    def __init__(self, description: Any) -> None:
        self.nfields = len(description)
        self._names = [c[0] for c in description]
        self._oids = [int(c[1]) for c in description]

    def fname(self, i: int) -> bytes:
        return str(self._names[i]).encode()

    def ftype(self, i: int) -> int:
        return self._oids[i]


def plain(value: Any) -> Any:
    """A callable's result for comparison: SQLAlchemy rows as tuples (so the comparison
    rules apply row by row), anything else as it is."""
    if isinstance(value, list | tuple) and value and all(isinstance(r, Row) for r in value):
        return [tuple(r) for r in value]
    return value


def database_error(exc: Exception) -> psycopg.Error | None:
    """The psycopg error behind an SQLAlchemy exception (or the psycopg error itself)."""
    if isinstance(exc, psycopg.Error):
        return exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and isinstance(exc.orig, psycopg.Error):
        return exc.orig
    return None


def _not_run(exc: Exception) -> PathResult:
    """The served side never ran: no connection from the application's engine."""
    db = database_error(exc)
    if db is not None:
        return failure(db)
    text = str(exc).strip().splitlines()
    return PathResult(None, None, "08000", text[0][:300] if text else type(exc).__name__)


def _served_error(runner: RunnerCore, f: Flag, d: Decision, ctx: Context,
                  args: dict[str, Any], exc: Exception, raw: Any, watch: Any,
                  attempt: int) -> None:
    """A served query through the engine failed: return when it is a read to retry (its
    connection was dropped, nothing ran); else record it and raise the caller's error (the
    request deadline's when that is what cut it)."""
    db = database_error(exc)
    invalidated = getattr(exc, "connection_invalidated", False)
    expired = watch is not None and watch.expired
    if (attempt == 1 and f.kind == "read" and not expired and raw is not None
            and (invalidated or raw.closed)):
        return
    runner._served_failed(f, d, ctx, args, failure(db, watch) if db is not None
                          else _not_run(exc), sql=None if raw is None else True)
    if expired:
        raise runner._timed_out(f, db or psycopg.OperationalError(str(exc)),
                                watch) or exc from exc
    raise exc


def _shape(result: Any) -> _Described | None:
    """The column names and types of a result that returns rows."""
    if result.returns_rows and result.cursor is not None and result.cursor.description:
        return _Described(result.cursor.description)
    return None


def _forget_notices(dbapi_connection: Any, record: Any) -> None:
    """SQLAlchemy's psycopg dialect adds a notice handler each time NullPool "connects";
    the shadow pool's connection is lent again and again, so take it off at check-in."""
    from sqlalchemy.dialects.postgresql import psycopg as dialect

    handler = getattr(dialect, "_log_notices", None)
    conn = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    with contextlib.suppress(ValueError, AttributeError):
        conn.remove_notice_handler(handler)


class SQLAlchemyRollout(Rollout):
    """``Rollout`` for a SQLAlchemy ``Engine`` (``postgresql+psycopg``): ``query()`` returns
    ``Row`` objects, ``run()`` callables take a ``Connection``. Options are ``Rollout``'s."""

    _shadow_close_returns = True

    def __init__(self, engine: Engine, workspace: str | Path | Workspace = ".",
                 **options: Any) -> None:
        dsn, extra = connect_args(engine)
        self.engine = engine
        options["connect_kwargs"] = {**extra, **(options.get("connect_kwargs") or {})}
        super().__init__(dsn, workspace, pool=cast(Any, _EnginePool(engine)), **options)
        # run() callables in the background: SQLAlchemy connections over connections lent
        # from the shadow pool (module docstring)
        self.shadow_engine = sqlalchemy.create_engine(
            "postgresql+psycopg://", creator=self.shadow_pool.getconn, poolclass=NullPool)
        event.listen(self.shadow_engine, "checkin", _forget_notices)

    @classmethod
    def connect(cls, engine: Engine,  # type: ignore[override]
                workspace: str | Path | Workspace = ".", **options: Any) -> SQLAlchemyRollout:
        return cls(engine, workspace, **options)

    # -- the caller's path ----------------------------------------------------------------
    def query(self, flag: str, ctx: Context,  # type: ignore[override]
              params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        """Run the flag file's SQL for the path the decision picks on the application's
        engine; return its rows. ``%(tenant)s`` is ``ctx.tenant`` (as ``Rollout.query``)."""
        f, d, args, sql = self._start(flag, ctx, params)
        text = sql.decode()
        until = time.monotonic() + self.request_timeout
        for attempt in (1, 2):
            raw = watch = None
            asked = time.perf_counter_ns()
            try:
                with self.engine.connect() as conn:
                    raw = conn.connection.driver_connection
                    assert isinstance(raw, psycopg.Connection)
                    with self._request_watch(raw, until) as watch:
                        start = time.perf_counter_ns()
                        own = raw.cursor_factory
                        raw.cursor_factory = ExtendedCursor  # one statement, this statement
                        try:
                            result = conn.exec_driver_sql(text, args)
                        finally:
                            raw.cursor_factory = own
                        shape = _shape(result)
                        rows = list(result.all()) if result.returns_rows else None
                        rowcount = result.rowcount
                        commit_and_reset(raw)
                        conn.commit()  # SQLAlchemy's bookkeeping: the server's is done
                        elapsed = time.perf_counter_ns() - start
                break
            except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
                _served_error(self, f, d, ctx, args, exc, raw, watch, attempt)
                continue  # a read on a connection the server dropped: nothing ran
        tuples = [tuple(r) for r in rows] if rows is not None else None
        self._served_rows(f, d, ctx, args, shape, tuples, rowcount, elapsed, None, None,
                          start - asked)
        return rows if rows is not None else []

    def run(self, flag: str, ctx: Context, *,  # type: ignore[override]
            legacy: Callable[[Connection], R], new: Callable[[Connection], R]) -> R:
        """Like ``query`` for code paths: ``fn(conn) -> result`` with an engine
        ``Connection``; rows are compared as tuples. Uncommitted work is rolled back; a
        ``kind: write`` callable that leaves it is an error (its write was lost)."""
        f = self._flag(flag)
        d = self.decide(flag, ctx)
        fn = new if d.path == "new" else legacy
        asked = time.perf_counter_ns()
        try:
            conn = self.engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self._served_failed(f, d, ctx, None, _not_run(exc), sql=None)
            raise
        with conn:
            start = time.perf_counter_ns()
            try:
                value = fn(conn)
            except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
                db = database_error(exc)
                self._served_failed(f, d, ctx, None, failure(db) if db is not None
                                    else _not_run(exc), sql=False)
                raise
            elapsed = time.perf_counter_ns() - start
            if conn.in_transaction():
                conn.rollback()
                if f.kind == "write":
                    raise self._left_open(f, d, ctx, fn is new)
        self._served_value(f, d, ctx, legacy if d.path == "new" else new, fn,
                           plain(value) if d.path != "legacy" else value, elapsed,
                           start - asked)
        return value

    # -- background -----------------------------------------------------------------------
    _database_error = staticmethod(database_error)

    def _run(self, job: ShadowJob, order: list[str]) -> Ran | None:
        """SQL as ``Rollout`` runs it; callables with an SQLAlchemy ``Connection`` over a
        shadow-pool connection, each in the runner's transaction on it (``Rollout._call``:
        always rolled back, read-only reads, SET LOCAL timeouts, the client deadline)."""
        if job.call is None:
            return super()._run(job, order)
        read = job.flag.kind == "read"
        limits = background_limits(job.flag, self.limits)
        asked = time.perf_counter_ns()
        try:
            with self.shadow_engine.connect() as conn:
                job.waited = time.perf_counter_ns() - asked
                if not self._still_wanted(job, starting=True):
                    return None
                raw = conn.connection.driver_connection
                assert isinstance(raw, psycopg.Connection)
                ran: dict[str, tuple[PathResult, Any]] = {}
                for path in order:
                    fn = job.callable_for(path)

                    def call(_: Any, fn: Any = fn) -> Any:
                        return plain(fn(conn))

                    ran[path] = self._call(raw, read, call, limits)
                    if conn.in_transaction():  # SQLAlchemy's bookkeeping; the server's
                        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                            conn.rollback()  # transaction was rolled back already
                return ran
        except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
            return {path: (_not_run(exc), None) for path in order}

    def close(self) -> None:
        super().close()
        self.shadow_engine.dispose()


class AsyncSQLAlchemyRollout(AsyncRollout):
    """``AsyncRollout`` for a SQLAlchemy ``AsyncEngine`` (``postgresql+psycopg``): create it
    with ``await AsyncSQLAlchemyRollout.connect(async_engine, workspace=...)``."""

    _shadow_close_returns = True

    def __init__(self, engine: AsyncEngine, workspace: str | Path | Workspace = ".",
                 **options: Any) -> None:
        dsn, extra = connect_args(engine.sync_engine)
        self.engine = engine
        options["connect_kwargs"] = {**extra, **(options.get("connect_kwargs") or {})}
        super().__init__(dsn, workspace, pool=cast(Any, _EnginePool(engine.sync_engine)),
                         **options)
        self.shadow_engine = create_async_engine(
            "postgresql+psycopg://", async_creator=self.shadow_pool.getconn, poolclass=NullPool)
        event.listen(self.shadow_engine.sync_engine, "checkin", _forget_notices)

    @classmethod
    async def connect(cls, engine: AsyncEngine,  # type: ignore[override]
                      workspace: str | Path | Workspace = ".", *,
                      allow_superuser: bool = False, **options: Any) -> AsyncSQLAlchemyRollout:
        """Check the login (as ``AsyncRollout.connect``), open the shadow pool, start the
        workers."""
        ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
        dsn, _ = connect_args(engine.sync_engine)
        await check_login_async(dsn, allow=allow_superuser or ws.settings.allow_superuser,
                                what="shadow flag SQL")
        ro = cls(engine, ws, **options)
        await ro._open()
        return ro

    async def query(self, flag: str, ctx: Context,  # type: ignore[override]
                    params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        """As ``SQLAlchemyRollout.query``, awaited."""
        f, d, args, sql = self._start(flag, ctx, params)
        text = sql.decode()
        until = time.monotonic() + self.request_timeout
        for attempt in (1, 2):
            raw = watch = None
            asked = time.perf_counter_ns()
            try:
                async with self.engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    assert isinstance(raw, psycopg.AsyncConnection)
                    with self._request_watch(raw, until) as watch:
                        start = time.perf_counter_ns()
                        own = raw.cursor_factory
                        raw.cursor_factory = AsyncExtendedCursor
                        try:
                            result = await conn.exec_driver_sql(text, args)
                        finally:
                            raw.cursor_factory = own
                        shape = _shape(result)
                        rows = list(result.all()) if result.returns_rows else None
                        rowcount = result.rowcount
                        await acommit_and_reset(raw)
                        await conn.commit()
                        elapsed = time.perf_counter_ns() - start
                break
            except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
                _served_error(self, f, d, ctx, args, exc, raw, watch, attempt)
                continue  # a read on a connection the server dropped: nothing ran
        tuples = [tuple(r) for r in rows] if rows is not None else None
        self._served_rows(f, d, ctx, args, shape, tuples, rowcount, elapsed, None, None,
                          start - asked)
        return rows if rows is not None else []

    async def run(self, flag: str, ctx: Context, *,  # type: ignore[override]
                  legacy: AsyncFn[R], new: AsyncFn[R]) -> R:
        """As ``SQLAlchemyRollout.run``, with ``async def fn(conn: AsyncConnection)``."""
        f = self._flag(flag)
        d = self.decide(flag, ctx)
        fn = new if d.path == "new" else legacy
        asked = time.perf_counter_ns()
        conn = self.engine.connect()
        try:
            await conn.start()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self._served_failed(f, d, ctx, None, _not_run(exc), sql=None)
            raise
        try:
            start = time.perf_counter_ns()
            try:
                value = await fn(conn)
            except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
                db = database_error(exc)
                self._served_failed(f, d, ctx, None, failure(db) if db is not None
                                    else _not_run(exc), sql=False)
                raise
            elapsed = time.perf_counter_ns() - start
            if conn.in_transaction():
                await conn.rollback()
                if f.kind == "write":
                    raise self._left_open(f, d, ctx, fn is new)
        finally:
            await conn.close()
        self._served_value(f, d, ctx, legacy if d.path == "new" else new, fn,
                           plain(value) if d.path != "legacy" else value, elapsed,
                           start - asked)
        return value

    _database_error = staticmethod(database_error)

    async def _run(self, job: ShadowJob, order: list[str]) -> Ran | None:
        """SQL as ``AsyncRollout`` runs it; callables with an ``AsyncConnection`` over a
        shadow-pool connection, in the runner's transaction on it."""
        if job.call is None:
            return await super()._run(job, order)
        read = job.flag.kind == "read"
        limits = background_limits(job.flag, self.limits)
        asked = time.perf_counter_ns()
        try:
            async with self.shadow_engine.connect() as conn:
                job.waited = time.perf_counter_ns() - asked
                if not self._still_wanted(job, starting=True):
                    return None
                raw = (await conn.get_raw_connection()).driver_connection
                assert isinstance(raw, psycopg.AsyncConnection)
                ran: dict[str, tuple[PathResult, Any]] = {}
                for path in order:
                    fn = job.callable_for(path)

                    async def call(_: Any, fn: Any = fn) -> Any:
                        return plain(await fn(conn))

                    ran[path] = await self._call(raw, read, call, limits)
                    if conn.in_transaction():
                        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                            await conn.rollback()
                return ran
        except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
            return {path: (_not_run(exc), None) for path in order}

    async def close(self) -> None:
        await super().close()
        await self.shadow_engine.dispose()
