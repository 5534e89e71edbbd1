"""The ASGI service bench/service.py loads: one flag's SQL on a bare pool and through AsyncRollout.

Run as ``python -m bench.service_app`` with ``ROLLOUT_BENCH_SERVICE_DSN`` (the connection
string, never in argv) and ``ROLLOUT_BENCH_SERVICE_WORKSPACE`` in the environment: it binds
a free loopback port, prints ``port N`` on stdout and serves with uvicorn, one worker.

- ``GET /bare?tenant=&customer_id=``: the flag's legacy SQL on a bare
  ``AsyncConnectionPool`` (psycopg's defaults, the runner's request pool size);
- ``GET /bare_safe?...``: the same on a bare pool configured as docs/online.md asks of a
  pool passed to the runner (the session reset on every return, no server-side prepared
  statements): what the runner's own pool configuration costs, apart from its code;
- ``GET /rollout?...``: ``AsyncRollout.query`` with the runner's default settings;
- ``GET /serve_only?...``: ``AsyncRollout.query`` on a runner with no shadow workers (the
  caller's path of the runner alone: decide, serve, hand off; nothing runs in the background);
- ``GET /stats/{runner}``: ``get_stats().as_dict()``, ``killed_at``, ``last_started`` and
  the service's ``time.monotonic()`` (the same clock as the benchmark's on one machine).

Rows are built with ``dict_row`` on every route and sent as JSON. A database error is a 503
(a 504 for the runner's ``RequestTimeout``) whose body names the error class and SQLSTATE,
never the message (it could name the server).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import uvicorn
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rollout import AsyncRollout, Context, RequestTimeout, Workspace
from rollout.run.execute import areset_session

DSN_VAR = "ROLLOUT_BENCH_SERVICE_DSN"
WORKSPACE_VAR = "ROLLOUT_BENCH_SERVICE_WORKSPACE"
FLAG = "orders-recent"
POOL_SIZE = 10
"""The bare pool's size: AsyncRollout's default request pool (``pool_size=10``)."""


class Service:
    """What the routes share, opened by the app's lifespan."""

    pools: dict[str, AsyncConnectionPool[psycopg.AsyncConnection[Any]]]
    runners: dict[str, AsyncRollout]
    legacy_sql: str


service = Service()


@asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    dsn = os.environ[DSN_VAR]
    ws = Workspace.load(os.environ[WORKSPACE_VAR])
    service.legacy_sql = ws.flag(FLAG).legacy.sql
    # The baseline a service had before the toolkit: psycopg_pool's defaults (30 s checkout
    # timeout, psycopg's statement preparing) at the runner's pool size; min_size as the
    # runner's request pool, which grows on demand.
    service.pools = {
        "bare": AsyncConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, open=False,
                                    name="bare"),
        "bare_safe": AsyncConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, open=False,
                                         name="bare-safe", reset=areset_session,
                                         kwargs={"prepare_threshold": None}),
    }
    for pool in service.pools.values():
        await pool.open(wait=True)
    service.runners = {
        "rollout": await AsyncRollout.connect(dsn, ws),  # every default: no tuning
        "serve_only": await AsyncRollout.connect(dsn, ws, shadow_workers=0),
    }
    try:
        yield
    finally:
        for ro in service.runners.values():
            await ro.close()
        for pool in service.pools.values():
            await pool.close()


def _args(request: Request) -> tuple[str, dict[str, Any]]:
    q = request.query_params
    return q["tenant"], {"customer_id": int(q["customer_id"])}


def _json(body: object, status: int = 200) -> Response:
    # default=str: the rows hold Decimal and datetime values
    return Response(json.dumps(body, default=str), status, media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(fn: Callable[[Request], Awaitable[object]]) -> Handler:
    """The route's result as JSON; a database or pool error as 503/504 naming its class."""
    async def route(request: Request) -> Response:
        try:
            return _json(await fn(request))
        except RequestTimeout as exc:
            return _json({"error": type(exc).__name__, "sqlstate": None}, 504)
        except (psycopg.Error, PoolTimeout) as exc:
            return _json({"error": type(exc).__name__,
                          "sqlstate": getattr(exc, "sqlstate", None)}, 503)
    return route


def _bare(pool: str) -> Callable[[Request], Awaitable[object]]:
    async def route(request: Request) -> object:
        tenant, params = _args(request)
        async with service.pools[pool].connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(service.legacy_sql, {"tenant": tenant, **params})
            return await cur.fetchall()
    return route


def _through(runner: str) -> Callable[[Request], Awaitable[object]]:
    async def route(request: Request) -> object:
        tenant, params = _args(request)
        return await service.runners[runner].query(FLAG, Context(tenant=tenant), params,
                                                   row_factory=dict_row)
    return route


async def stats(request: Request) -> Response:
    ro = service.runners[request.path_params["runner"]]
    return _json({"stats": ro.get_stats().as_dict(), "killed_at": ro.killed_at,
                  "last_started": ro.last_started, "now": time.monotonic()})


async def health(_request: Request) -> Response:
    return _json({"ok": True})


app = Starlette(routes=[
    Route("/bare", _guarded(_bare("bare"))),
    Route("/bare_safe", _guarded(_bare("bare_safe"))),
    Route("/rollout", _guarded(_through("rollout"))),
    Route("/serve_only", _guarded(_through("serve_only"))),
    Route("/stats/{runner}", stats),
    Route("/health", health),
], lifespan=lifespan)


def main() -> int:
    # Bound here and handed to uvicorn: the port is free by construction, no race.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, workers=1, log_level="warning", access_log=False,
                            lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
