"""Where the evidence comes from: server, connection, runs and database statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ._format import as_list, as_map, as_str, fmt_num, number

DATABASE_STATS = (
    ("xact_commit", "transactions committed"),
    ("xact_rollback", "transactions rolled back"),
    ("deadlocks", "deadlocks"),
    ("conflicts", "recovery conflicts"),
    ("temp_files", "temporary files written"),
    ("blks_read", "blocks read from disk or OS cache"),
    ("blks_hit", "blocks found in shared buffers"),
)
# Any of these above zero deserves a second look.
DATABASE_STATS_WARN = {"deadlocks", "conflicts", "temp_files"}


def _connection_parts(text: str) -> dict[str, str]:
    """host, port, dbname and user of a libpq connection string or URL ({} when it does
    not parse). The report's string never carries a password."""
    if not text or text == "—":
        return {}
    try:
        parsed = conninfo_to_dict(text)
    except psycopg.Error:  # not a connection string: it is still shown verbatim
        return {}
    return {k: as_str(parsed[k]) for k in ("host", "port", "dbname", "user") if parsed.get(k)}


def environment_view(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    database = as_str(raw.get("database"), "—")
    parts = _connection_parts(database)
    samples = as_map(raw.get("samples"))
    return {
        "server_version": as_str(raw.get("server_version"), "—"),
        "database": database,
        "host": parts.get("host", ""),
        "socket": parts.get("host", "").startswith("/"),
        "port": parts.get("port", ""),
        "dbname": parts.get("dbname", ""),
        "user": parts.get("user", ""),
        "toolkit_version": as_str(raw.get("toolkit_version"), "—"),
        "runs": [as_str(r) for r in as_list(raw.get("runs"))],
        "first_observation": as_str(raw.get("first_observation"), "—"),
        "last_observation": as_str(raw.get("last_observation"), "—"),
        "run_seconds": number(raw.get("run_seconds")),
        "samples": ({k: samples.get(k) for k in ("ab", "online", "offline")} if samples else None),
    }


def database_stats_view(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    stats = {as_str(k): v for k, v in raw.items()}
    rows = [
        {
            "key": key,
            "label": label,
            "value": fmt_num(stats[key]),
            "warn": key in DATABASE_STATS_WARN and (number(stats[key]) or 0) > 0,
        }
        for key, label in DATABASE_STATS
        if key in stats
    ]
    known = {key for key, _ in DATABASE_STATS}
    rows += [
        {"key": key, "label": key.replace("_", " "), "value": fmt_num(value), "warn": False}
        for key, value in stats.items()
        if key not in known
    ]
    hit, read = number(stats.get("blks_hit")), number(stats.get("blks_read"))
    hit_ratio = hit / (hit + read) if hit is not None and read is not None and hit + read else None
    return {"rows": rows, "hit_ratio": hit_ratio}
