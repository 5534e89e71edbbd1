"""``rollout demo``: load the demo shop, shadow-run every example flag, write the reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .commands import Session, report, shadow
from .demo_data import DEMO_TABLES, load_demo
from .errors import InputError
from .run.shadow import Progress


@dataclass(frozen=True)
class DemoRow:
    flag: str
    stage: str
    samples: int
    mismatches: int
    latency_change_pct: float | None
    verdict: str
    report: Path


def run_demo(session: Session, *, scale: float = 1.0, samples: int | None = None,
             progress: Callable[[str], Progress | None] | None = None) -> list[DemoRow]:
    """Load the data set, apply each flag's forward migration, shadow-run, report."""
    ws = session.load()
    if not ws.flags:
        raise InputError(f"{ws.root}/flags: no flag files; the demo needs the example flags")
    with session.target() as conn:
        _refuse_foreign_tables(conn)
        session.say(f"loading the demo shop (scale {scale:g}) ...")
        counts = load_demo(conn, scale=scale, progress=session.say)
        session.say("loaded " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
        for flag in ws.flags.values():
            if flag.rollback.migration:
                with conn.transaction():
                    conn.execute(flag.rollback.migration.encode())
            conn.execute("ANALYZE")
    with session.store() as store:
        # Observations of an earlier demo describe data that was just reloaded.
        store.conn.execute("DELETE FROM rollout.runs WHERE flag = ANY(%s)", [list(ws.flags)])
    rows = []
    for flag in ws.flags.values():
        stage = flag.first_stage
        bar = progress(f"{flag.name} / {stage}") if progress else None
        summary = shadow(session, flag.name, stage=stage, samples=samples, seed=7, progress=bar)
        written = report(session, flag.name, stage=stage)
        html = next(f for f in written.files if f.suffix == ".html")
        rows.append(DemoRow(flag.name, stage, summary.samples, summary.mismatches,
                            written.body["latency"]["change_pct"], written.verdict, html))
    return rows


def _refuse_foreign_tables(conn: psycopg.Connection[Any]) -> None:
    """The demo drops and reloads its tables: never in a database that holds other tables."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')").fetchall()
    foreign = sorted(r[0] for r in rows if r[0] not in DEMO_TABLES)
    if foreign:
        raise InputError(
            f"the target database holds other tables ({', '.join(foreign[:3])}...); the demo "
            "replaces its own tables and only runs in an empty or demo database")
