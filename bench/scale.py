"""scale: `rollout report` of stages of 10⁴ to 10⁷ online observations: time, peak RSS, growth."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from rollout.flags.model import Flag
from rollout.store.connection import connect
from rollout.store.store import Store

from .database import REPO, BenchDB, say

NAME = "scale"
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
"""Online observations per stage, one stage per size."""
SIZES_VAR = "ROLLOUT_BENCH_SCALE_SIZES"
"""Comma-separated sizes to run instead (e.g. ``1000000,10000000``): each keeps its stage."""
KEEP_VAR = "ROLLOUT_BENCH_SCALE_DSN"
"""A database to keep the synthetic stages in between runs (the flag's workspace tables are
not needed there, only the store): a stage already holding its size is not synthesised again.
Without it, the stages go into the benchmark's fresh database."""
FLAG = "orders-recent"
"""The example flag whose stages are filled (a read: its pairs are compared)."""
TENANTS = 50
RATE_PER_S = 100.0
"""Synthetic traffic: shadowed requests per second, so 10⁷ observations span 28 hours."""
TARGETS = {"10000000": {"seconds": 30.0, "rss_mb": 400.0, "vs_count": 4.0},
           "1000000": {"seconds": 5.0}}

SYNTHESISE = """
INSERT INTO rollout.observations (observed_at, flag, stage, sql_hash, tenant, decision,
    first_path, params, legacy_ns, new_ns, legacy_rows, new_rows, legacy_sqlstate,
    new_sqlstate, legacy_error, new_error, matched, diff, source, mode, served_ns)
SELECT %(start)s::timestamptz + (i / %(rate)s) * interval '1 second', %(flag)s, %(stage)s,
       %(sql_hash)s, 'tenant-' || (i %% %(tenants)s), 'legacy',
       CASE WHEN i %% 2 = 0 THEN 'legacy' ELSE 'new' END,
       jsonb_build_object('customer_id', i %% 5000), l, n, 10, 10,
       CASE WHEN lf THEN '40001' END, CASE WHEN nf THEN '57014' END,
       CASE WHEN lf THEN 'could not serialize access due to concurrent update' END,
       CASE WHEN nf THEN 'canceling statement due to statement timeout' END,
       CASE WHEN lf OR nf THEN NULL ELSE NOT mismatch END,
       CASE WHEN mismatch AND NOT (lf OR nf)
            THEN '[{"kind": "row_count", "legacy": 10, "new": 9}]'::jsonb END,
       'online', 'ab', l + 20000
  FROM (SELECT i,
               -- log-normal around 0.44 ms in whole 100 ns (ties), new 3 per cent slower
               (round(exp(13 + 0.5 * z1) / 100) * 100)::bigint AS l,
               (round(exp(13 + 0.5 * z1 + 0.03 + 0.1 * z2) / 100) * 100)::bigint AS n,
               random() < 0.0005 AS lf, random() < 0.001 AS nf, random() < 0.002 AS mismatch
          FROM (SELECT i, random_normal() AS z1, random_normal() AS z2
                  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i) AS g) AS s
"""
"""Online pairs measured on the shadow pool: 0.05 % legacy serialization failures, 0.1 %
new-path statement timeouts, 0.2 % mismatches, the served latency beside the pair."""
CHUNK = 1_000_000


def _synthesise(conn: psycopg.Connection[Any], flag: Flag, stage: str, n: int) -> float:
    """Insert ``n`` observations ending now; return the seconds it took."""
    started = time.perf_counter()
    start = datetime.now(UTC) - timedelta(seconds=n / RATE_PER_S)
    store = Store(conn)
    day, last_day = start.date(), datetime.now(UTC).date()
    days = set()
    while day <= last_day:
        days.add(day)
        day += timedelta(days=1)
    store.prepare_days(days)
    for first in range(0, n, CHUNK):
        conn.execute(SYNTHESISE, {
            "start": start, "rate": RATE_PER_S, "flag": flag.name, "stage": stage,
            "sql_hash": flag.sql_hash, "tenants": TENANTS, "first": first,
            "last": min(n, first + CHUNK) - 1})
    return time.perf_counter() - started


def _held(conn: psycopg.Connection[Any], flag: Flag, stage: str) -> int:
    """The stage's observations of the flag's SQL already in the store."""
    row = conn.execute("SELECT count(*) FROM rollout.observations WHERE flag = %s AND stage = %s"
                       " AND sql_hash = %s", [flag.name, stage, flag.sql_hash]).fetchone()
    return int(row[0]) if row else 0


def _sizes() -> tuple[int, ...]:
    raw = os.environ.get(SIZES_VAR, "").strip()
    if not raw:
        return SIZES
    try:
        sizes = tuple(int(part.replace("_", "")) for part in raw.split(","))
    except ValueError:
        raise SystemExit(f"bench: {SIZES_VAR} must be sizes separated by commas") from None
    if any(n not in SIZES for n in sizes):
        raise SystemExit(f"bench: {SIZES_VAR}: sizes are among {', '.join(map(str, SIZES))}")
    return sizes


def _count_floor(conn: psycopg.Connection[Any], flag: Flag, stage: str) -> float:
    """The fastest of three ``SELECT count(*)`` over the stage: the scan a report cannot beat."""
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        conn.execute("SELECT count(*) FROM rollout.observations WHERE flag = %s AND stage = %s"
                     " AND sql_hash = %s AND mode = 'ab'", [flag.name, stage, flag.sql_hash])
        best = min(best, time.perf_counter() - t0)
    return best


def _report(dsn: str, stage: str, out: Path) -> dict[str, Any]:
    """`rollout report` in a child process: wall time, its peak RSS (the child's own
    rusage, from wait4), verdict and samples."""
    env = {**os.environ, "DATABASE_URL": dsn}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "rollout.cli", "report", FLAG, "--workspace", str(REPO),
             "--stage", stage, "--format", "json", "--out", str(out)],
            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if child.returncode not in (0, 1, 3):
        raise RuntimeError(f"rollout report failed ({child.returncode}): "
                           f"{stderr.strip().splitlines()[-1:]}")
    body = json.loads((out / FLAG / f"{stage}.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024,  # kB on Linux
            "verdict": body["verdict"], "samples": body["samples"],
            "hl_ratio": body["latency"]["hl_ratio"], "stderr": stderr.strip()[-300:]}


def run(db: BenchDB) -> dict[str, Any]:
    flag = db.workspace.flags[FLAG]
    stages = [s.name for s in flag.stages]
    sizes: dict[str, dict[str, Any]] = {}
    chosen = _sizes()
    if len(SIZES) > len(stages):
        raise RuntimeError(f"{FLAG} has too few stages for {len(SIZES)} sizes")
    dsn = os.environ.get(KEEP_VAR) or db.dsn
    with connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as tmp:
        Store.open(conn)
        for n in chosen:
            stage = stages[SIZES.index(n)]  # a size always has the same stage
            made = None
            if _held(conn, flag, stage) != n:
                say(f"scale: synthesising {n:,} online observations ({stage})")
                conn.execute("DELETE FROM rollout.observations WHERE flag = %s AND stage = %s",
                             [flag.name, stage])
                made = _synthesise(conn, flag, stage, n)
            else:
                say(f"scale: {n:,} online observations kept from an earlier run ({stage})")
            # the state autovacuum keeps a table in (visibility map set, statistics fresh),
            # whether the stage was just made or kept: count(*) may then read the index only
            conn.execute("VACUUM (ANALYZE) rollout.observations")
            floor = _count_floor(conn, flag, stage)
            say(f"scale: reporting {n:,} observations (count(*) {floor:.2f} s)")
            rep = _report(dsn, stage, Path(tmp))
            sizes[str(n)] = {"stage": stage, "synthesise_s": made, "count_s": floor,
                             **rep, "vs_count": rep["seconds"] / floor if floor else math.nan}
            say(f"scale: {n:,}: {rep['seconds']:.2f} s, {rep['rss_mb']:.0f} MB, "
                f"{sizes[str(n)]['vs_count']:.1f}x count(*)")
    growth = [_exponent(sizes[str(lo)]["seconds"], sizes[str(hi)]["seconds"], hi / lo)
              for lo, hi in zip(chosen, chosen[1:], strict=False)]
    return {
        "name": NAME,
        "targets_met": _targets_met(sizes, growth),
        "description": "`rollout report FLAG --format json` of one stage of synthetic online "
                       f"pairs ({TENANTS} tenants, log-normal latencies, some failures and "
                       "mismatches), one child process per size, beside one SELECT count(*) "
                       "over the same stage",
        "unit": "seconds, MB",
        "method": "wall time of the child process (Python start-up included); its peak RSS "
                  "from wait4; the table vacuumed and analysed first (as autovacuum keeps "
                  "it); count(*) the fastest of 3; growth exponent = "
                  "log(time ratio) / log(size ratio), 1.0 is linear",
        "sizes": sizes,
        "growth_exponent": growth,
        "targets": TARGETS,
    }


def _targets_met(sizes: dict[str, dict[str, Any]], growth: list[float]) -> dict[str, bool]:
    """Each target of the sizes measured: met or not (growth: no exponent above 1.1)."""
    out = {f"{n} {what} <= {limit:g}": bool(sizes[n][what] <= limit)
           for n, limits in TARGETS.items() if n in sizes for what, limit in limits.items()}
    if growth:
        out["growth exponent <= 1.1"] = all(g <= 1.1 for g in growth)
    return out


def _exponent(t_small: float, t_large: float, ratio: float) -> float:
    return math.log(t_large / t_small) / math.log(ratio) if t_small > 0 < t_large else math.nan


def table(result: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    header = ["observations", "report s", "peak RSS MB", "count(*) s", "report/count",
              "growth", "verdict", "synthesis s"]
    rows = []
    growth = [math.nan, *result["growth_exponent"]]
    for (n, r), g in zip(result["sizes"].items(), growth, strict=True):
        rows.append([f"{int(n):,}", f"{r['seconds']:.2f}", f"{r['rss_mb']:.0f}",
                     f"{r['count_s']:.2f}", f"{r['vs_count']:.1f}×",
                     "" if math.isnan(g) else f"{g:.2f}", r["verdict"],
                     "kept" if r["synthesise_s"] is None else f"{r['synthesise_s']:.0f}"])
    targets = [[name, "met" if met else "MISSED"]
               for name, met in result.get("targets_met", {}).items()]
    return [(header, rows), (["target", "result"], targets)]
