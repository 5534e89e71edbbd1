"""The store's rollback verifications: one row per run, looked up by (flag, scripts, schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def latest_verification(conn: psycopg.Connection[Any], flag: str, script_hash: str,
                        schema_hash: str) -> tuple[dict[str, Any], datetime] | None:
    """The newest stored verification body of these scripts on this schema, and when it ran."""
    row = conn.execute(
        "SELECT body, created_at FROM rollout.rollback_verifications WHERE flag = %s"
        " AND script_hash = %s AND schema_hash = %s ORDER BY created_at DESC LIMIT 1",
        [flag, script_hash, schema_hash]).fetchone()
    return None if row is None else (dict(row[0]), row[1])


def save_verification(conn: psycopg.Connection[Any], flag: str, script_hash: str,
                      schema_hash: str, verified: bool, body: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO rollout.rollback_verifications (flag, script_hash, schema_hash,"
        " verified, body) VALUES (%s, %s, %s, %s, %s)",
        [flag, script_hash, schema_hash, verified, Jsonb(body)])
