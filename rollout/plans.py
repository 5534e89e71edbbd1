"""Plans of both paths: EXPLAIN (ANALYZE, BUFFERS) shapes and costs, and the generic-plan check.

Everything runs like any execution (``rollout.execute.transaction``): one statement with the
extended protocol, in a transaction that is rolled back (EXPLAIN ANALYZE executes the
statement), read-only for ``kind: read``, under SET LOCAL timeouts and the client deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .dbcheck import to_positional
from .execute import ExtendedCursor, Limits, Transaction, ours

STATEMENT = "rollout_plan_check"


@dataclass(frozen=True)
class PlanSample:
    path: str
    tenant: str | None
    params: dict[str, Any]
    shape: str
    plan: dict[str, Any]
    buffers: int
    plan_rows: float
    actual_rows: float
    exec_ms: float


@dataclass(frozen=True)
class GenericCheck:
    path: str
    tenant: str | None
    custom_ms: float
    generic_ms: float
    custom_buffers: int
    generic_buffers: int

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
                  limits: Limits | None = None) -> GenericCheck | None:
    """Run the statement prepared, as psycopg does after ``prepare_threshold``, once under
    ``force_custom_plan`` and once under ``force_generic_plan``; None when it fails."""
    positional, names = to_positional(query)
    args = pgsql.SQL(", ").join(pgsql.Literal(_plain(params.get(n))) for n in names)
    execute = pgsql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {}").format(
        pgsql.Identifier(STATEMENT))
    if names:
        execute = pgsql.SQL("{} ({})").format(execute, args)
    out: dict[str, tuple[float, int]] = {}
    if conn.closed:
        return None
    try:
        with Transaction(conn, limits or Limits(), write=write), ExtendedCursor(conn) as cur:
            cur.execute(pgsql.SQL("PREPARE {} AS ").format(pgsql.Identifier(STATEMENT))
                        + pgsql.SQL(positional))
            for mode in ("force_custom_plan", "force_generic_plan"):
                cur.execute(pgsql.SQL("SET LOCAL plan_cache_mode = {}").format(
                    pgsql.Literal(mode)))
                doc = _doc(cur.execute(execute).fetchone())
                out[mode] = (float(doc.get("Execution Time", 0.0)), buffers(doc["Plan"]))
            if not ours(conn):
                return None
    except psycopg.Error:
        return None
    # PREPARE is not transactional: the Transaction's end deallocates the statement.
    (c_ms, c_buf), (g_ms, g_buf) = out["force_custom_plan"], out["force_generic_plan"]
    return GenericCheck(path, tenant, c_ms, g_ms, c_buf, g_buf)


def shape(node: Mapping[str, Any]) -> str:
    """The plan's node tree without costs: node types, relations and indexes, nested."""
    label = str(node.get("Node Type", "?"))
    target = node.get("Index Name") or node.get("Relation Name")
    if target:
        label += f" on {target}"
    children = node.get("Plans") or []
    if not children:
        return label
    return f"{label} ({', '.join(shape(c) for c in children)})"


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


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)
