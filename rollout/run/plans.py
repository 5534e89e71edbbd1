"""Plans of both paths: EXPLAIN (ANALYZE, BUFFERS) shapes and costs, and the generic-plan check.

Everything runs like any execution (``rollout.run.execute.transaction``): one statement with the
extended protocol, in a transaction that is rolled back (EXPLAIN ANALYZE executes the
statement), read-only for ``kind: read``, under SET LOCAL timeouts and the client deadline.
"""

from __future__ import annotations

import json
import statistics
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from ..store.observations import PlanSample
from .execute import ExtendedCursor, Limits, Transaction, ours
from .plan_shape import PlanShape
from .prepare import to_positional

STATEMENT = "rollout_plan_check"


GENERIC_RUNS = 5
"""Runs of each mode (custom, generic) per generic-plan check: the gate judges medians."""


@dataclass(frozen=True)
class GenericCheck:
    """One path's prepared statement for one tenant run under ``force_custom_plan`` and
    ``force_generic_plan``, ``runs`` times each, alternating which goes first. ``custom_ms``,
    ``generic_ms`` and the buffers are medians; every run is kept."""

    path: str
    tenant: str | None
    custom_ms: float
    generic_ms: float
    custom_buffers: int
    generic_buffers: int
    custom_runs: tuple[float, ...] = ()
    generic_runs: tuple[float, ...] = ()
    custom_buffer_runs: tuple[int, ...] = ()
    generic_buffer_runs: tuple[int, ...] = ()
    custom_shape: str | None = None
    generic_shape: str | None = None

    @property
    def ratio(self) -> float:
        return self.generic_ms / self.custom_ms if self.custom_ms > 0 else 1.0


def explain(conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any], *,
            write: bool, path: str, tenant: str | None,
            limits: Limits | None = None) -> PlanSample | None:
    """EXPLAIN ANALYZE one execution; None when the statement fails."""
    if conn.closed:
        return None
    try:
        with Transaction(conn, limits or Limits(), write=write), ExtendedCursor(conn) as cur:
            row = cur.execute(b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query.encode(),
                              params).fetchone()
            if not ours(conn):
                return None
    except psycopg.Error:
        return None
    doc = _doc(row)
    top = doc["Plan"]
    return PlanSample(path, tenant, {k: _plain(v) for k, v in params.items() if k != "tenant"},
                      shape(top), doc, buffers(top), float(top.get("Plan Rows", 0)),
                      float(top.get("Actual Rows", 0)), float(doc.get("Execution Time", 0.0)))


def generic_check(conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any], *,
                  write: bool, path: str, tenant: str | None,
                  limits: Limits | None = None, runs: int = GENERIC_RUNS) -> GenericCheck | None:
    """Run the statement prepared, as psycopg does after ``prepare_threshold``, under
    ``force_custom_plan`` and ``force_generic_plan``, ``runs`` times each; None when it fails.

    Each repetition is its own transaction (PREPARE, then both modes, the first alternating:
    custom first, then generic first, ...), so one transaction's deadline never covers more
    than two executions and neither mode always runs on caches the other warmed. Every run's
    execution time, buffers and plan shape are kept: one outlier moves no median."""
    positional, names = to_positional(query)
    args = pgsql.SQL(", ").join(pgsql.Literal(_plain(params.get(n))) for n in names)
    execute = pgsql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {}").format(
        pgsql.Identifier(STATEMENT))
    if names:
        execute = pgsql.SQL("{} ({})").format(execute, args)
    prepare = (pgsql.SQL("PREPARE {} AS ").format(pgsql.Identifier(STATEMENT))
               + pgsql.SQL(positional))
    out: dict[str, list[tuple[float, int, str]]] = {"force_custom_plan": [],
                                                    "force_generic_plan": []}
    modes = ("force_custom_plan", "force_generic_plan")
    for i in range(max(1, runs)):
        if conn.closed:
            return None
        try:
            with Transaction(conn, limits or Limits(), write=write), ExtendedCursor(conn) as cur:
                # prepare=False: repeated, these would become psycopg's own prepared
                # statements and outlive the check on the connection
                cur.execute(prepare, prepare=False)
                for mode in modes if i % 2 == 0 else tuple(reversed(modes)):
                    cur.execute(pgsql.SQL("SET LOCAL plan_cache_mode = {}").format(
                        pgsql.Literal(mode)), prepare=False)
                    doc = _doc(cur.execute(execute, prepare=False).fetchone())
                    out[mode].append((float(doc.get("Execution Time", 0.0)),
                                      buffers(doc["Plan"]), shape(doc["Plan"])))
                if not ours(conn):
                    return None
        except psycopg.Error:
            return None
        # PREPARE is not transactional: the Transaction's end deallocates the statement.
    custom, generic = out["force_custom_plan"], out["force_generic_plan"]
    return GenericCheck(
        path, tenant, _median([r[0] for r in custom]), _median([r[0] for r in generic]),
        round(_median([r[1] for r in custom])), round(_median([r[1] for r in generic])),
        tuple(r[0] for r in custom), tuple(r[0] for r in generic),
        tuple(r[1] for r in custom), tuple(r[1] for r in generic),
        _most_common([r[2] for r in custom]), _most_common([r[2] for r in generic]))


def write_generic_checks(conn: psycopg.Connection[Any], run_id: uuid.UUID,
                         checks: Sequence[GenericCheck]) -> None:
    """Record a run's generic-plan checks with every run (``rollout.generic_checks``; the
    columns of migration 0010 beside the medians)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rollout.generic_checks (run_id, path, tenant, custom_ms, generic_ms,"
            " custom_buffers, generic_buffers, custom_runs, generic_runs, custom_buffer_runs,"
            " generic_buffer_runs, custom_shape, generic_shape)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(run_id, c.path, c.tenant, c.custom_ms, c.generic_ms, c.custom_buffers,
              c.generic_buffers, list(c.custom_runs), list(c.generic_runs),
              list(c.custom_buffer_runs), list(c.generic_buffer_runs), c.custom_shape,
              c.generic_shape) for c in checks])


def read_generic_checks(conn: psycopg.Connection[Any], flag: str, stage: str, sql_hash: str
                        ) -> list[dict[str, Any]]:
    """A stage's generic-plan checks with every run; a check recorded before migration 0010
    has one run per mode (its only figures)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT g.path, g.tenant, g.custom_ms, g.generic_ms, g.custom_buffers,"
            " g.generic_buffers,"
            " coalesce(g.custom_runs, ARRAY[g.custom_ms]) AS custom_runs,"
            " coalesce(g.generic_runs, ARRAY[g.generic_ms]) AS generic_runs,"
            " coalesce(g.custom_buffer_runs, ARRAY[g.custom_buffers]) AS custom_buffer_runs,"
            " coalesce(g.generic_buffer_runs, ARRAY[g.generic_buffers])"
            " AS generic_buffer_runs, g.custom_shape, g.generic_shape"
            " FROM rollout.generic_checks g JOIN rollout.runs r USING (run_id)"
            " WHERE r.flag = %s AND r.stage = %s AND r.sql_hash = %s"
            " ORDER BY g.id", [flag, stage, sql_hash])
        return cur.fetchall()


def shape(node: Mapping[str, Any]) -> str:
    """The plan's node tree without costs, as the text it is stored and reported as."""
    return PlanShape.of(node).text


def buffers(node: Mapping[str, Any]) -> int:
    """Shared buffers hit plus read, for the whole tree (the top node's totals)."""
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


def walk(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans") or []:
        yield from walk(child)


def _doc(row: Any) -> dict[str, Any]:
    value = row[0]
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value[0])


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _most_common(values: Sequence[str]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)
