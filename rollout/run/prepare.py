"""A query prepared, never run: placeholders as ``$n``, its result columns and parameters."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import pq

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


def _message(res: pq.abc.PGresult) -> str:
    raw = res.error_message or b""
    return raw.decode(errors="replace").strip().removeprefix("ERROR:").strip()
