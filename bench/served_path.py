"""served_path: the runner's served query on one connection, two round trips against one."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from typing import Any

import psycopg

from rollout.run.execute import (
    AsyncExtendedCursor,
    acommit_and_reset,
    areset_session,
    aserve,
)

from .database import BenchDB, say

NAME = "served_path"
FLAG = "orders-recent"
TENANTS = ("acme", "megacorp")
CALLS = 2000
"""Calls per mode and round."""
ROUNDS = 8
"""Timed rounds; the modes' order rotates each round."""
WARM_UP = 200
"""Calls per mode first, untimed: statements prepared, caches warm."""
SEED = 20260101

Call = Callable[[psycopg.AsyncConnection[Any], bytes, dict[str, Any]], Awaitable[Any]]


async def _bare(conn: psycopg.AsyncConnection[Any], sql: bytes, args: dict[str, Any]) -> Any:
    """A bare psycopg pool's served query: the statement, nothing after it."""
    cur = await conn.execute(sql, args)
    return await cur.fetchall()


async def _two_round_trips(conn: psycopg.AsyncConnection[Any], sql: bytes,
                           args: dict[str, Any]) -> Any:
    """The runner before pipelining: the statement, then the reset and check."""
    cur = await AsyncExtendedCursor(conn).execute(sql, args)
    rows = await cur.fetchall()
    await acommit_and_reset(conn)
    await areset_session(conn)  # the request pool's check at the next checkout: skipped
    return rows


async def _pipelined(conn: psycopg.AsyncConnection[Any], sql: bytes,
                     args: dict[str, Any]) -> Any:
    """The runner now: the statement, the reset and the check in one pipeline."""
    cur = await aserve(conn, sql, args)
    rows = await cur.fetchall()
    await areset_session(conn)
    return rows


MODES: dict[str, Call] = {"bare": _bare, "two_round_trips": _two_round_trips,
                          "pipelined": _pipelined}


def run(db: BenchDB) -> dict[str, Any]:
    return asyncio.run(_run(db))


async def _run(db: BenchDB) -> dict[str, Any]:
    sql = db.workspace.flag(FLAG).legacy.sql.encode()
    rng = random.Random(SEED)
    conns: dict[str, psycopg.AsyncConnection[Any]] = {}
    try:
        plan = []
        async with await psycopg.AsyncConnection.connect(db.dsn, autocommit=True) as c:
            for tenant in TENANTS:
                cur = await c.execute(
                    "SELECT DISTINCT o.customer_id FROM orders o JOIN tenants t"
                    " ON t.id = o.tenant_id WHERE t.slug = %s LIMIT 200", [tenant])
                plan += [(tenant, r[0]) for r in await cur.fetchall()]
        rng.shuffle(plan)
        args = [{"tenant": t, "customer_id": c} for t, c in plan]
        for mode in MODES:
            # the runner's request pool: autocommit, our cursor, psycopg's preparing
            conns[mode] = await psycopg.AsyncConnection.connect(
                db.dsn, autocommit=True,
                cursor_factory=AsyncExtendedCursor if mode != "bare" else psycopg.AsyncCursor)
        for mode, call in MODES.items():
            for i in range(WARM_UP):
                await call(conns[mode], sql, args[i % len(args)])
        per_call: dict[str, list[float]] = {m: [] for m in MODES}
        order = list(MODES)
        say(f"{NAME}: {FLAG}, {CALLS} calls per mode x {ROUNDS} rounds, one connection each")
        for r in range(ROUNDS):
            for mode in order[r % len(order):] + order[:r % len(order)]:
                call, conn = MODES[mode], conns[mode]
                start = perf_counter_ns()
                for i in range(CALLS):
                    await call(conn, sql, args[i % len(args)])
                per_call[mode].append((perf_counter_ns() - start) / CALLS / 1000)
    finally:
        for conn in conns.values():
            await conn.close()
    median = {m: statistics.median(v) for m, v in per_call.items()}
    ratios = {m: [a / b for a, b in zip(v, per_call["bare"], strict=True)]
              for m, v in per_call.items()}
    return {
        "name": NAME,
        "description": f"per call, {FLAG}'s legacy SQL served on one autocommit connection "
                       "(asyncio): a bare psycopg connection (the statement alone), the runner's "
                       "path before (statement, then session reset and prepared-statement check "
                       "in a second round trip) and now (one pipeline); per-round mean per "
                       "call, median over rounds, ratios per round against bare",
        "calls": CALLS,
        "rounds": ROUNDS,
        "per_call_us": per_call,
        "median_us": median,
        "ratio_to_bare": {m: statistics.median(v) for m, v in ratios.items()},
        "ratio_range": {m: [min(v), max(v)] for m, v in ratios.items()},
        "pipelined_to_two_round_trips": statistics.median(
            a / b for a, b in zip(per_call["pipelined"], per_call["two_round_trips"],
                                  strict=True)),
    }


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[m, f"{result['median_us'][m]:.1f}", f"{result['ratio_to_bare'][m]:.2f}",
             "{:.2f}-{:.2f}".format(*result["ratio_range"][m])] for m in MODES]
    rows.append(["pipelined / two_round_trips", "",
                 f"{result['pipelined_to_two_round_trips']:.2f}", ""])
    return ["mode", "us per call (median of rounds)", "ratio to bare", "range over rounds"], rows
