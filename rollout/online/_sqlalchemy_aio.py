# <async>
"""``AsyncSQLAlchemyRollout``: ``AsyncRollout`` serving from a SQLAlchemy ``AsyncEngine``.

The source of both SQLAlchemy runners: ``rollout/online/_sqlalchemy_sync.py``
(``SQLAlchemyRollout``) is generated from it by ``tools/async_to_sync.py``; the design is in
``rollout.sqlalchemy``, which exports both.
"""
# <sync>
# """``SQLAlchemyRollout``: ``Rollout`` serving from a SQLAlchemy ``Engine``.
#
# Generated from ``rollout/online/_sqlalchemy_aio.py`` by ``tools/async_to_sync.py``: edit that file
# and run the script, never this one. The design is in ``rollout.sqlalchemy``.
# """
# </sync>

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Row

# <async>
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# <sync>
# from sqlalchemy.engine import Connection, Engine
# </sync>
from sqlalchemy.pool import NullPool

from ..flags.targeting import Context
from ..flags.workspace import Workspace
from ..run.execute import AsyncExtendedCursor, acommit_and_reset, failure
from ..run.privileges import check_login_async
from ..store.observations import PathResult
from ._observe import Ran, ShadowJob
from ._sqlalchemy_common import (
    _EnginePool,
    connect_args,
    database_error,
    forget_notices,
    not_run,
    plain,
    served_error,
    shape_of,
)
from .aio import AsyncRollout
from .core import background_limits

R = TypeVar("R")


class AsyncSQLAlchemyRollout(AsyncRollout):
    """The runner for a SQLAlchemy engine (``postgresql+psycopg``): ``query()`` returns
    ``Row`` objects, ``run()`` callables take an engine connection. Options are the psycopg
    runner's; ``await AsyncSQLAlchemyRollout.connect(async_engine, workspace=...)``, or
    ``SQLAlchemyRollout.connect(engine, workspace=...)``."""

    _shadow_close_returns = True

    def __init__(self, engine: AsyncEngine, workspace: str | Path | Workspace = ".",
                 **options: Any) -> None:
        # <async>
        sync_engine = engine.sync_engine
        # <sync>
        # sync_engine = engine
        # </sync>
        dsn, extra = connect_args(sync_engine)
        self.engine = engine
        options["connect_kwargs"] = {**extra, **(options.get("connect_kwargs") or {})}
        super().__init__(dsn, workspace, pool=cast(Any, _EnginePool(sync_engine)), **options)
        # run() callables in the background: SQLAlchemy connections over connections lent
        # from the shadow pool (rollout.sqlalchemy's docstring)
        # <async>
        self.shadow_engine = create_async_engine(
            "postgresql+psycopg://", async_creator=self.shadow_pool.getconn, poolclass=NullPool)
        event.listen(self.shadow_engine.sync_engine, "checkin", forget_notices)
        # <sync>
        # self.shadow_engine = sqlalchemy.create_engine(
        #     "postgresql+psycopg://", creator=self.shadow_pool.getconn, poolclass=NullPool)
        # event.listen(self.shadow_engine, "checkin", forget_notices)
        # </sync>

    # <async>
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
    # <sync>
    # @classmethod
    # def connect(cls, engine: Engine,  # type: ignore[override]
    #             workspace: str | Path | Workspace = ".", **options: Any) -> SQLAlchemyRollout:
    #     """``SQLAlchemyRollout(engine, workspace, **options)``: the login is checked there."""
    #     return cls(engine, workspace, **options)
    # </sync>

    # -- the caller's path ----------------------------------------------------------------
    async def query(self, flag: str, ctx: Context,  # type: ignore[override]
                    params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        """Run the flag file's SQL for the path the decision picks on the application's
        engine; return its rows. ``%(tenant)s`` is ``ctx.tenant`` (as the runner's
        ``query``)."""
        f, d, args, sql = self._start(flag, ctx, params)
        text = sql.decode()
        until = time.monotonic() + self.request_timeout
        for attempt in (1, 2):
            raw = watch = None
            asked = time.perf_counter_ns()
            try:
                async with self.engine.connect() as conn:
                    # <async>
                    raw = (await conn.get_raw_connection()).driver_connection
                    # <sync>
                    # raw = conn.connection.driver_connection
                    # </sync>
                    assert isinstance(raw, psycopg.AsyncConnection)
                    with self._request_watch(raw, until) as watch:
                        start = time.perf_counter_ns()
                        own = raw.cursor_factory
                        raw.cursor_factory = AsyncExtendedCursor  # one statement, this one
                        try:
                            result = await conn.exec_driver_sql(text, args)
                        finally:
                            raw.cursor_factory = own
                        shape = shape_of(result)
                        rows = list(result.all()) if result.returns_rows else None
                        rowcount = result.rowcount
                        await acommit_and_reset(raw)
                        await conn.commit()  # SQLAlchemy's bookkeeping: the server's is done
                        elapsed = time.perf_counter_ns() - start
                break
            except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
                served_error(self, f, d, ctx, args, exc, raw, watch, attempt)
                continue  # a read on a connection the server dropped: nothing ran
        tuples = [tuple(r) for r in rows] if rows is not None else None
        self._served_rows(f, d, ctx, args, shape, tuples, rowcount, elapsed, None, None,
                          start - asked)
        return rows if rows is not None else []

    async def run(self, flag: str, ctx: Context, *,  # type: ignore[override]
                  legacy: Callable[[AsyncConnection], Awaitable[R]],
                  new: Callable[[AsyncConnection], Awaitable[R]]) -> R:
        """Like ``query`` for code paths: ``fn(conn) -> result`` with an engine
        connection; rows are compared as tuples. Uncommitted work is rolled back; a
        ``kind: write`` callable that leaves it is an error (its write was lost)."""
        f = self._flag(flag)
        d = self.decide(flag, ctx)
        fn = new if d.path == "new" else legacy
        asked = time.perf_counter_ns()
        try:
            # <async>
            conn = self.engine.connect()
            await conn.start()
            # <sync>
            # conn = self.engine.connect()
            # </sync>
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self._served_failed(f, d, ctx, None, not_run(exc), sql=None)
            raise
        try:
            start = time.perf_counter_ns()
            try:
                value = await fn(conn)
            except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
                db = database_error(exc)
                self._served_failed(f, d, ctx, None, failure(db) if db is not None
                                    else not_run(exc), sql=False)
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

    # -- background -----------------------------------------------------------------------
    _database_error = staticmethod(database_error)

    async def _run(self, job: ShadowJob, order: list[str]) -> Ran | None:
        """SQL as the psycopg runner runs it; callables with an engine connection over a
        shadow-pool connection, each in the runner's transaction on it (``_call``: always
        rolled back, read-only reads, SET LOCAL timeouts, the client deadline)."""
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
                # <async>
                raw = (await conn.get_raw_connection()).driver_connection
                # <sync>
                # raw = conn.connection.driver_connection
                # </sync>
                assert isinstance(raw, psycopg.AsyncConnection)
                ran: dict[str, tuple[PathResult, Any]] = {}
                for path in order:
                    fn = job.callable_for(path)

                    async def call(_: Any, fn: Any = fn) -> Any:
                        return plain(await fn(conn))

                    ran[path] = await self._call(raw, read, call, limits)
                    if conn.in_transaction():  # SQLAlchemy's bookkeeping; the server's
                        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                            await conn.rollback()  # transaction was rolled back already
                return ran
        except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error) as exc:
            return {path: (not_run(exc), None) for path in order}

    async def close(self) -> None:
        await super().close()
        await self.shadow_engine.dispose()
