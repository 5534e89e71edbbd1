"""Run the benchmarks, print their tables and write ``bench/results/<name>.json``.

``python -m bench`` runs them all; ``python -m bench NAME ...`` only those named.
"""

from __future__ import annotations

import json
import platform
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

import rollout

from . import (
    compare,
    decision,
    ingest,
    kill_switch,
    online,
    overhead,
    perturb,
    recorder,
    scale,
    served_path,
    service,
    stats_scale,
)
from .database import BenchDB, bench_database, say

RESULTS = Path(__file__).resolve().parent / "results"

Run = Callable[[BenchDB], dict[str, Any]]
Rows = tuple[list[str], list[list[str]]]
"""A table: its header and its rows."""
Table = Callable[[dict[str, Any]], Rows | list[Rows]]
"""One table, or several (printed one after the other)."""

BENCHMARKS: tuple[tuple[str, Run, Table], ...] = (
    (overhead.NAME, overhead.run, overhead.table),
    (kill_switch.NAME, kill_switch.run, kill_switch.table),
    (online.NAME, online.run, online.table),
    (recorder.NAME, recorder.run, recorder.table),
    (compare.NAME, compare.run, compare.table),
    (stats_scale.NAME, stats_scale.run, stats_scale.table),
    (ingest.NAME, ingest.run, ingest.table),
    (perturb.NAME, perturb.run, perturb.table),
    (scale.NAME, scale.run, scale.table),
    (served_path.NAME, served_path.run, served_path.table),
    # last: it stops and starts the benchmark's database server
    (service.NAME, service.run, service.table),
)


def main(argv: list[str]) -> int:
    known = [decision.NAME, *(name for name, _, _ in BENCHMARKS)]
    unknown = [a for a in argv if a not in known]
    if unknown:
        print(f"bench: unknown benchmark {unknown[0]!r} (known: {', '.join(known)})",
              file=sys.stderr)
        return 2
    wanted = set(argv or known)
    started = time.perf_counter()
    if decision.NAME in wanted:
        # Pure CPU first, on a quiet machine: no server running yet.
        say("decision: ours against UnleashClient (its own virtualenv)")
        decision.run(RESULTS)
    chosen = [b for b in BENCHMARKS if b[0] in wanted]
    if chosen:
        with bench_database() as db:
            say(f"database ready in {db.setup_s:.1f} s "
                f"(PostgreSQL {db.server_version}, {db.source})")
            for name, run, table in chosen:
                t0 = time.perf_counter()
                result = run(db)
                result["environment"] = _environment(db, time.perf_counter() - t0)
                tables = table(result)
                print("\n" + textwrap.fill(f"{name}: {result.get('description', '')}",
                                           width=100))
                print("\n\n".join(_format(h, r)
                                   for h, r in (tables if isinstance(tables, list) else [tables])))
                out = _write(name, result)
                print(f"results: {out.relative_to(RESULTS.parent.parent)}")
    say(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _environment(db: BenchDB, seconds: float) -> dict[str, Any]:
    """Context for comparing result files; no paths, hosts or connection strings."""
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(seconds, 2),
        "database": db.source,
        "server_version": db.server_version,
        "demo_scale": db.scale,
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "pg_rollout": rollout.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
    }


def _format(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _write(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
