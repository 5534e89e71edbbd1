"""compare: streaming comparison against just fetching both result sets, memory, checksums."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from rollout.flags.model import CompareRules
from rollout.run.checksum import checksum_compare
from rollout.run.streaming import stream_pair

from .database import BenchDB, say

NAME = "compare"
ROWS = 1_000_000
SMALL = 100_000
CHECKSUM_ROWS = 5_000_000
DIFFS = 100
ROUNDS = 3
BATCH = 10_000
TARGET_RATIO = 1.3
TARGET_RSS_MB = 64.0
TARGET_CHECKSUM_SPEEDUP = 5.0

LEGACY = "SELECT id, grp, label, amount, at FROM {table} WHERE id <= {n}"


def _setup(dsn: str, rows: int, suffix: str) -> None:
    """Tables ``cmp_a{suffix}`` and ``cmp_b{suffix}``: equal but for DIFFS scattered rows."""
    step = rows // DIFFS
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            DROP TABLE IF EXISTS cmp_a{suffix}, cmp_b{suffix};
            CREATE TABLE cmp_a{suffix} (id bigint PRIMARY KEY, grp int, label text,
                                        amount numeric(12,2), at timestamptz);
            INSERT INTO cmp_a{suffix} SELECT n, n % 1000, 'item ' || n, n * 0.25,
                   '2026-01-01'::timestamptz + n * interval '1 second'
              FROM generate_series(1, {rows}) n;
            CREATE TABLE cmp_b{suffix} AS SELECT * FROM cmp_a{suffix};
            ALTER TABLE cmp_b{suffix} ADD PRIMARY KEY (id);
            UPDATE cmp_b{suffix} SET label = label || ' (changed)' WHERE id % {step} = 7;
        """.encode())
        for table in (f"cmp_a{suffix}", f"cmp_b{suffix}"):
            conn.execute(f"VACUUM ANALYZE {table}".encode())


def fetch_both(dsn: str, legacy: str, new: str) -> tuple[int, int]:
    """The floor: stream both result sets with psycopg, batch by batch, and drop them."""
    with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b:
        ca, cb = a.cursor(name="fa"), b.cursor(name="fb")
        ca.execute(legacy.encode())
        cb.execute(new.encode())
        n_a = n_b = 0
        done_a = done_b = False
        while not (done_a and done_b):
            if not done_a:
                rows = ca.fetchmany(BATCH)
                n_a += len(rows)
                done_a = len(rows) < BATCH
            if not done_b:
                rows = cb.fetchmany(BATCH)
                n_b += len(rows)
                done_b = len(rows) < BATCH
        return n_a, n_b


def ours(dsn: str, legacy: str, new: str, rules: CompareRules) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        _, _, out = stream_pair(a, b, legacy, new, {}, rules=rules, write=False)
    return dict(out.counts)


def run(db: BenchDB) -> dict[str, Any]:
    say(f"{NAME}: building {ROWS:,}-row tables with {DIFFS} scattered differences")
    _setup(db.dsn, ROWS, "")
    cases = []
    for mode in ("strict", "key"):
        rules = CompareRules(order=mode, key=("id",) if mode == "key" else (),  # type: ignore[arg-type]
                             batch_size=BATCH)
        order = " ORDER BY id" if mode == "strict" else ""
        legacy = LEGACY.format(table="cmp_a", n=ROWS) + order
        for label, new in (("identical", legacy),
                           ("100 differences", legacy.replace("cmp_a", "cmp_b"))):
            base_s: list[float] = []
            our_s: list[float] = []
            counts: dict[str, int] = {}
            for r in range(ROUNDS):  # alternate which side goes first: drift cancels
                for name in ("base", "ours") if r % 2 == 0 else ("ours", "base"):
                    start = time.perf_counter()
                    if name == "ours":
                        counts = ours(db.dsn, legacy, new, rules)
                        our_s.append(time.perf_counter() - start)
                    else:
                        fetch_both(db.dsn, legacy, new)
                        base_s.append(time.perf_counter() - start)
            base, mine = statistics.median(base_s), statistics.median(our_s)
            say(f"{NAME}: {mode} / {label}: fetch {base:.2f} s, compare {mine:.2f} s")
            cases.append({"mode": mode, "case": label, "rows": ROWS, "fetch_s": base,
                          "compare_s": mine, "ratio": mine / base, "differences": counts,
                          "target_met": mine / base <= TARGET_RATIO})
    rss = {n: _peak_rss(db.dsn, n) for n in (SMALL, ROWS)}
    growth = (rss[ROWS] - rss[SMALL]) / 1024
    say(f"{NAME}: building {CHECKSUM_ROWS:,}-row tables for the checksum mode")
    _setup(db.dsn, CHECKSUM_ROWS, "_5m")
    checksum = _checksum(db.dsn)
    return {
        "description": "streaming comparison (fetch included) against just fetching both "
                       "result sets with psycopg; peak memory; server-side checksum",
        "cases": cases,
        "target_ratio": TARGET_RATIO,
        "peak_rss_kb": {str(k): v for k, v in rss.items()},
        "rss_growth_mb": growth, "target_rss_mb": TARGET_RSS_MB,
        "rss_target_met": growth <= TARGET_RSS_MB,
        "checksum": checksum,
    }


def _peak_rss(dsn: str, rows: int) -> int:
    """Peak RSS (KiB) of a fresh process comparing ``rows`` rows in key mode."""
    out = subprocess.run([sys.executable, "-m", "bench.compare", dsn, str(rows)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return int(json.loads(out.stdout)["peak_rss_kb"])


def _checksum(dsn: str) -> dict[str, Any]:
    one_diff = "SELECT id, grp, label, amount, at FROM cmp_b_5m"
    legacy = "SELECT id, grp, label, amount, at FROM cmp_a_5m"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # keep exactly one difference out of the scattered ones
        conn.execute("UPDATE cmp_b_5m b SET label = a.label FROM cmp_a_5m a"
                     " WHERE a.id = b.id AND b.label <> a.label AND b.id <> 2500007")
        conn.execute("VACUUM ANALYZE cmp_b_5m")
    rules = CompareRules(order="key", key=("id",), checksum=True, batch_size=BATCH)
    start = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        result = checksum_compare(a, b, legacy, one_diff, {}, rules=rules)
    checksum_s = time.perf_counter() - start
    start = time.perf_counter()
    streamed = ours(dsn, legacy, one_diff, CompareRules(order="key", key=("id",),
                                                          batch_size=BATCH))
    stream_s = time.perf_counter() - start
    found = [d["key"]["id"] for d in result.comparison.diffs if d["kind"] == "changed"]
    return {"rows": CHECKSUM_ROWS, "checksum_s": checksum_s, "stream_s": stream_s,
            "speedup": stream_s / checksum_s, "found": found, "queries": result.queries,
            "ranges_compared": result.ranges_compared, "streamed_counts": streamed,
            "target_speedup": TARGET_CHECKSUM_SPEEDUP,
            "target_met": stream_s / checksum_s >= TARGET_CHECKSUM_SPEEDUP and found == [
                "2500007"]}


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[c["mode"], c["case"], f"{c['rows']:,}", f"{c['fetch_s']:.2f}",
             f"{c['compare_s']:.2f}", f"{c['ratio']:.2f}",
             "yes" if c["target_met"] else "NO"] for c in result["cases"]]
    rows.append(["memory", "peak RSS growth 100k → 1M rows", "", "", "",
                 f"{result['rss_growth_mb']:.1f} MB",
                 "yes" if result["rss_target_met"] else "NO"])
    cs = result["checksum"]
    rows.append(["checksum", f"1 difference, found {cs['found']}", f"{cs['rows']:,}",
                 f"{cs['stream_s']:.2f}", f"{cs['checksum_s']:.2f}",
                 f"{cs['speedup']:.1f}× faster", "yes" if cs["target_met"] else "NO"])
    return (["mode", "case", "rows", "fetch/stream s", "compare/checksum s", "ratio",
             "target met"], rows)


def _child(dsn: str, rows: int) -> None:
    import resource

    legacy = LEGACY.format(table="cmp_a", n=rows)
    counts = ours(dsn, legacy, legacy.replace("cmp_a", "cmp_b"),
                  CompareRules(order="key", key=("id",), batch_size=BATCH))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_kb": peak, "counts": counts}))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
