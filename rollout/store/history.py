"""The watcher's judged intervals as the store keeps them, read back for reports and tests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


def analysis_history(conn: psycopg.Connection[Any], flag: str, limit: int = 50
                     ) -> list[dict[str, Any]]:
    """The flag's latest analysis intervals, newest first, JSON-ready (the report's
    timeline): when, which stage, verdict, decision, the figures and who acted."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT analysis_id, at, stage, state_version, window_start, window_end, verdict,"
            " decision, failed_intervals, go_streak, inconclusive_streak, latency_p,"
            " mismatch_p, figures, reasons, watcher, acted_by, report_id"
            " FROM rollout.watch_intervals WHERE flag = %s ORDER BY at DESC LIMIT %s",
            [flag, limit])
        rows = cur.fetchall()
    out = []
    for r in rows:
        item = {k: v for k, v in r.items()}
        for key in ("at", "window_start", "window_end"):
            item[key] = r[key].isoformat(timespec="seconds")
        for key in ("analysis_id", "report_id"):
            item[key] = str(r[key]) if r[key] is not None else None
        item["reasons"] = list(r["reasons"] or [])
        out.append(item)
    return out
