"""Database checks of a flag without running it: both paths prepare and return the same columns."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import pq

from .flags import Flag
from .statements import UNORDERED_LIMIT, unordered_limit

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def to_positional(query: str) -> tuple[str, list[str]]:
    """Rewrite psycopg ``%(name)s`` placeholders as ``$n``; return the SQL and the names."""
    names: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        name = m.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(sub, query), names


def describe(conn: psycopg.Connection[Any], query: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Prepare ``query`` (nothing executes) and return its (column, type OID) list and params."""
    sql, names = to_positional(query)
    pgconn = conn.pgconn
    res = pgconn.prepare(b"", sql.encode(), None)
    if res.status != pq.ExecStatus.COMMAND_OK:
        state = res.error_field(pq.DiagnosticField.SQLSTATE)
        error = psycopg.errors.lookup(state.decode()) if state else psycopg.DatabaseError
        raise error(_message(res))
    desc = pgconn.describe_prepared(b"")
    cols = [((desc.fname(i) or b"").decode(), desc.ftype(i)) for i in range(desc.nfields)]
    return cols, names


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


def _message(res: pq.abc.PGresult) -> str:
    raw = res.error_message or b""
    return raw.decode(errors="replace").strip().removeprefix("ERROR:").strip()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
