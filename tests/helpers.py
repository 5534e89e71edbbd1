"""Shared helpers for tests: run the real CLI entry point in-process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def table_checksums(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent checksum of every user table (schema ``rollout``
    excluded): equal before and after means nothing persisted."""
    import psycopg
    from psycopg import sql

    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN"
            " ('pg_catalog', 'information_schema', 'rollout') AND n.nspname NOT LIKE 'pg_%'"
            " ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            row = conn.execute(sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))),"
                " '') FROM {}.{} AS t").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    return out


def one_line(capsys: pytest.CaptureFixture[str], root: Path) -> str:
    """`rollout check --offline`: exit 2 and exactly one line, no traceback."""
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err
    return lines[0]
