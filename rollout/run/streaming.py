"""Large result sets: stream both paths from server-side cursors and compare as rows arrive.

Each path runs on its own connection in its own transaction (read-only for reads, rolled back
always, SET LOCAL timeouts, each round trip under the client deadline) through a named cursor
declared with the extended protocol (one statement), ``batch_size`` rows at a time, so memory
stays flat however large the results. Key and ignore modes need both streams in one order:
the query is wrapped in ``ORDER BY`` the key (or every column), with ``COLLATE "C"`` on text
so the server's order is Python's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg import sql as pgsql

from ..flags.model import CompareRules
from ..store.observations import PathResult
from .compare import Comparison, StreamComparer
from .execute import ExtendedServerCursor, Limits, Transaction, bounded, failure
from .prepare import describe
from .results import ResultSet

TEXT_OIDS = {25, 1043, 1042, 19}
"""text, varchar, bpchar, name: ordered with COLLATE "C" (byte order = Python's str order)."""


def ordered(conn: psycopg.Connection[Any], query: str, rules: CompareRules) -> str:
    """The query wrapped to deliver rows in the order the comparison walks them."""
    if rules.order == "strict":
        return query
    columns, _ = describe(conn, query)
    names = [c for c, _ in columns]
    wanted = list(rules.key) if rules.order == "key" else [
        c for c in names if c not in rules.ignore_columns]
    oid = dict(columns)
    terms = []
    for name in wanted:
        ident = pgsql.Identifier(name).as_string(conn)
        collate = ' COLLATE "C"' if oid.get(name) in TEXT_OIDS else ""
        terms.append(f"s.{ident}{collate} NULLS LAST")
    body = query.strip().rstrip(";")
    return f"SELECT s.* FROM ({body}) AS s ORDER BY {', '.join(terms)}"


def stream_pair(legacy_conn: psycopg.Connection[Any], new_conn: psycopg.Connection[Any],
                legacy_sql: str, new_sql: str, params: Mapping[str, Any], *,
                rules: CompareRules, write: bool, limits: Limits | None = None
                ) -> tuple[PathResult, PathResult, Comparison]:
    """Compare two large result sets without holding either.

    Latency per path is the time spent waiting for that path's rows (both run at once, on
    two backends). A failing path ends the comparison; its failure is returned.
    """
    limits = limits or Limits()
    sides = {"legacy": (legacy_conn, legacy_sql), "new": (new_conn, new_sql)}
    waited = {"legacy": 0, "new": 0}
    counts = {"legacy": 0, "new": 0}
    with ExitStack() as stack:
        cursors: dict[str, ExtendedServerCursor[Any]] = {}
        batches: dict[str, list[tuple[Any, ...]]] = {}
        failed: dict[str, PathResult] = {}
        for side, (conn, query) in sides.items():
            try:
                stack.enter_context(Transaction(conn, limits, write=write, whole=False))
                # plan for reading everything, not for the first rows (the cursor default)
                conn.execute("SET LOCAL cursor_tuple_fraction = 1")
            except psycopg.Error as exc:
                failed[side] = failure(exc)
                continue
            cur = stack.enter_context(ExtendedServerCursor(conn, f"rollout_stream_{side}"))
            if rules.binary:
                cur.format = psycopg.pq.Format.BINARY
            start = time.perf_counter_ns()
            with bounded(conn, limits) as watch:
                try:
                    cur.execute(ordered(conn, query, rules).encode(), params)
                    batches[side] = cur.fetchmany(rules.batch_size)
                except psycopg.Error as exc:
                    failed[side] = failure(exc, watch)
            if side in failed:
                continue
            waited[side] += time.perf_counter_ns() - start
            cursors[side] = cur
        if failed:
            none = PathResult(None, None)
            return failed.get("legacy", none), failed.get("new", none), Comparison()
        cmp = StreamComparer(rules, _shape(cursors["legacy"]), _shape(cursors["new"]))
        done = {side: len(b) < rules.batch_size for side, b in batches.items()}
        while True:
            counts["legacy"] += len(batches["legacy"])
            counts["new"] += len(batches["new"])
            cmp.feed(batches["legacy"], batches["new"], done["legacy"], done["new"])
            if done["legacy"] and done["new"]:
                break
            for side, cur in cursors.items():
                batches[side] = []
                if done[side]:
                    continue
                start = time.perf_counter_ns()
                with bounded(cur.connection, limits) as watch:
                    try:
                        batches[side] = cur.fetchmany(rules.batch_size)
                    except psycopg.Error as exc:
                        none = PathResult(None, None)
                        bad = failure(exc, watch)
                        return ((bad, none, Comparison()) if side == "legacy"
                                else (none, bad, Comparison()))
                waited[side] += time.perf_counter_ns() - start
                done[side] = len(batches[side]) < rules.batch_size
        return (PathResult(waited["legacy"], counts["legacy"]),
                PathResult(waited["new"], counts["new"]), cmp.finish())


def _shape(cur: psycopg.ServerCursor[Any]) -> ResultSet:
    desc = cur.description or []
    return ResultSet(tuple(d.name for d in desc), tuple(d.type_code for d in desc), [], 0)
