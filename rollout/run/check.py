"""Database checks of a flag without running it: both paths prepare and return the same columns."""

from __future__ import annotations

from typing import Any

import psycopg

from ..flags.determinism import Keys, dropped_order, fully_ordered, hazards
from ..flags.model import Flag
from ..flags.statements import UNORDERED_LIMIT, SqlError, parse, to_parseable, unordered_limit
from .execute import fetch
from .prepare import describe


def check_flag(conn: psycopg.Connection[Any], flag: Flag) -> list[str]:
    """Problems found by preparing the flag's queries on the server; empty when all is well."""
    problems: list[str] = []
    shapes: dict[str, list[tuple[str, int]]] = {}
    available = {"tenant"}
    if flag.sample_sql:
        try:
            cols, _ = describe(conn, flag.sample_sql)
            available |= {c for c, _ in cols}
        except psycopg.Error as exc:
            problems.append(f"{flag.file}: params.sample: {_first(exc)}")
    for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql)):
        try:
            shapes[path], names = describe(conn, query)
        except psycopg.Error as exc:
            problems.append(f"{flag.file}: queries.{path}: {_first(exc)}")
            continue
        missing = [n for n in names if n not in available]
        if missing and (flag.sample_sql or missing != ["tenant"]):
            problems.append(f"{flag.file}: queries.{path}: parameter(s) "
                            f"{', '.join(missing)} not provided by params.sample")
    if len(shapes) == 2:
        ignore = flag.compare.ignore_columns
        legacy = [c for c in shapes["legacy"] if c[0] not in ignore]
        new = [c for c in shapes["new"] if c[0] not in ignore]
        if [c for c, _ in legacy] != [c for c, _ in new]:
            problems.append(f"{flag.file}: queries: columns differ: legacy "
                            f"({', '.join(c for c, _ in legacy)}) vs new "
                            f"({', '.join(c for c, _ in new)})")
        elif legacy != new:
            changed = [a[0] for a, b in zip(legacy, new, strict=True) if a[1] != b[1]]
            problems.append(f"{flag.file}: queries: column types differ: {', '.join(changed)}")
    return problems


def order_problems(flag: Flag) -> list[str]:
    """Strict comparison of a query that limits rows without ordering them compares
    whichever rows the plan happens to return. Loading a flag file already refuses this
    (``flagfile``), so every command sees it; this re-check serves flags built in code."""
    if flag.compare.order != "strict":
        return []
    return [f"{flag.file}: queries.{path}: {UNORDERED_LIMIT}"
            for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql))
            if unordered_limit(query)]


UNIQUE_KEYS = """
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass(%(relation)s) AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid, i.indnullsnotdistinct
HAVING bool_and(k.attnum > 0) AND (i.indnullsnotdistinct OR bool_and(a.attnotnull))
"""
"""Unique keys of a table that hold for every row: unique, not partial, no expression
columns, and NULLs impossible (NOT NULL) or not distinct."""
IS_TABLE = "SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%(relation)s)"


def unique_keys(conn: psycopg.Connection[Any]) -> Keys:
    """A ``determinism.Keys`` reading the catalog through ``conn`` (read-only, rolled back,
    under timeouts like every execution), once per relation name. Names that are not a
    table or partitioned table (views, CTEs, unknown names) have no known keys (None)."""
    cache: dict[str, list[frozenset[str]] | None] = {}

    def keys(relation: str) -> list[frozenset[str]] | None:
        if relation not in cache:
            try:
                kind = fetch(conn, IS_TABLE, {"relation": relation})[1]
                if not kind or kind[0][0] not in ("r", "p"):
                    cache[relation] = None
                else:
                    rows = fetch(conn, UNIQUE_KEYS, {"relation": relation})[1]
                    cache[relation] = [frozenset(r[0]) for r in rows if r[0]]
            except psycopg.Error:
                cache[relation] = None  # a name the server refuses: nothing to say
        return cache[relation]

    return keys


def determinism_warnings(flag: Flag, conn: psycopg.Connection[Any] | None = None) -> list[str]:
    """`rollout check` warnings (they never change its exit code): constructs of either
    path whose result depends on how ties are broken (``determinism.hazards``; unique keys
    from the catalog through ``conn``, else only what needs none), ORDER BY items legacy
    had and new dropped, and queries this parser cannot read (the server may be newer: the
    server-side checks still apply)."""
    keys = unique_keys(conn) if conn is not None else None
    out: list[str] = []
    for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql)):
        where = f"{flag.file}: queries.{path}: warning"
        try:
            parse(to_parseable(query))
        except SqlError as exc:
            out.append(f"{where}: this toolkit's SQL parser (PostgreSQL 18 grammar) cannot "
                       f"read it ({exc.message}); static checks skipped, the server's "
                       "checks apply")
            continue
        for h in hazards(query, keys):
            out.append(f"{where}: {h.what}")
    dropped = dropped_order(flag.legacy.sql, flag.new.sql)
    if dropped and not (keys is not None and fully_ordered(flag.new.sql, keys)):
        out.append(f"{flag.file}: queries.new: warning: drops ORDER BY "
                   f"{', '.join(dropped)} that legacy has: ties legacy broke may now come "
                   "in the plan's order")
    return out


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
