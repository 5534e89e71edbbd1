"""What the SQLAlchemy runners share (``rollout.sqlalchemy``): the engine's connection
arguments, its pool's statistics, a result's shape, errors behind SQLAlchemy's. No I/O."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
import sqlalchemy
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import Engine, Row

from ..flags.model import Flag
from ..flags.targeting import Context, Decision
from ..run.execute import failure
from ..store.observations import PathResult
from .core import RunnerCore


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


def not_run(exc: Exception) -> PathResult:
    """The served side never ran: no connection from the application's engine."""
    db = database_error(exc)
    if db is not None:
        return failure(db)
    text = str(exc).strip().splitlines()
    return PathResult(None, None, "08000", text[0][:300] if text else type(exc).__name__)


def served_error(runner: RunnerCore, f: Flag, d: Decision, ctx: Context,
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
                          else not_run(exc), sql=None if raw is None else True)
    if expired:
        raise runner._timed_out(f, db or psycopg.OperationalError(str(exc)),
                                watch) or exc from exc
    raise exc


def shape_of(result: Any) -> _Described | None:
    """The column names and types of a result that returns rows."""
    if result.returns_rows and result.cursor is not None and result.cursor.description:
        return _Described(result.cursor.description)
    return None


def forget_notices(dbapi_connection: Any, record: Any) -> None:
    """SQLAlchemy's psycopg dialect adds a notice handler each time NullPool "connects";
    the shadow pool's connection is lent again and again, so take it off at check-in."""
    from sqlalchemy.dialects.postgresql import psycopg as dialect

    handler = getattr(dialect, "_log_notices", None)
    conn = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    with contextlib.suppress(ValueError, AttributeError):
        conn.remove_notice_handler(handler)
