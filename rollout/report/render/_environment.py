"""Where the evidence comes from: server, connection, runs and database statistics."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...judge.model import Environment
from ._format import fmt_num, number

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
    return {k: str(parsed[k]) for k in ("host", "port", "dbname", "user") if parsed.get(k)}


def environment_view(env: Environment | None) -> dict[str, Any] | None:
    if env is None:
        return None
    database = _or_dash(env.database)
    parts = _connection_parts(database)
    samples = env.samples
    return {
        "server_version": _or_dash(env.server_version),
        "database": database,
        "host": parts.get("host", ""),
        "socket": parts.get("host", "").startswith("/"),
        "port": parts.get("port", ""),
        "dbname": parts.get("dbname", ""),
        "user": parts.get("user", ""),
        "toolkit_version": _or_dash(env.toolkit_version),
        "runs": list(env.runs),
        "first_observation": _or_dash(env.first_observation),
        "last_observation": _or_dash(env.last_observation),
        "run_seconds": number(env.run_seconds),
        "samples": ({"ab": samples.ab, "online": samples.online, "offline": samples.offline}
                    if samples is not None else None),
    }


def _or_dash(text: str | None) -> str:
    return "—" if text is None else text


def database_stats_view(stats: dict[str, int]) -> dict[str, Any] | None:
    if not stats:
        return None
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
