"""ingest: 8 services recording at once against one process's bare COPY into the same table."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event
from operator import attrgetter
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from rollout.store.connection import connect
from rollout.store.observations import COLUMNS, Observation
from rollout.store.store import Store

from .database import BenchDB, say

NAME = "ingest"
PROCESSES = 8
ROWS_PER_PROCESS = 50_000
BATCH = 2000
"""The recorder's default ``batch_size``; the bare COPY uses the same batches."""
ROUNDS = 3
TARGET = 0.80
"""Aggregate rate of the 8 recording processes, as a share of one process's bare COPY."""
SEED = 20260214
TENANTS = tuple(f"tenant-{i:02d}" for i in range(50))

COPY_SQL = f"COPY rollout.observations ({', '.join(COLUMNS)}) FROM STDIN"
_values = attrgetter(*COLUMNS)
_JSON = tuple(COLUMNS.index(c) for c in ("params", "diff", "locks"))
_BATCH_ID = COLUMNS.index("batch_id")
CHECK_SQL = ("SELECT count(*), count(DISTINCT (params->>'p', params->>'i')),"
             " count(DISTINCT batch_id) FROM rollout.observations")


def run(db: BenchDB) -> dict[str, Any]:
    """Per round, into an emptied table: the 8 processes' recorders, and one process's bare
    COPY of the same rows (sides alternating first)."""
    total = PROCESSES * ROWS_PER_PROCESS
    say(f"{NAME}: {PROCESSES} processes x {ROWS_PER_PROCESS:,} observations (Recorder) "
        f"against one process's COPY of all {total:,}, {ROUNDS} rounds")
    ctx = mp.get_context("spawn")  # fresh interpreters, as separate services are
    rounds: list[dict[str, Any]] = []
    with connect(db.dsn, autocommit=True) as conn:
        Store.open(conn)
        rows = [r for p in range(PROCESSES) for r in observations(p)]
        _truncate(conn)
        _copy(conn, rows[:BATCH * 2])  # warm up
        for i in range(ROUNDS):
            r: dict[str, Any] = {}
            for side in (("copy", "recorders") if i % 2 == 0 else ("recorders", "copy")):
                _truncate(conn)
                if side == "copy":
                    ns = _copy(conn, rows)
                    r["copy"] = {"seconds": ns / 1e9}
                else:
                    r["recorders"] = _recorders(ctx, db.dsn)
                r[side]["rows_per_s"] = total / r[side]["seconds"]
                r[side]["check"] = _check(conn, total)
            r["ratio"] = r["recorders"]["rows_per_s"] / r["copy"]["rows_per_s"]
            rounds.append(r)
            say(f"{NAME}: round {i + 1}: recorders {r['recorders']['rows_per_s']:,.0f} rows/s, "
                f"copy {r['copy']['rows_per_s']:,.0f} rows/s, ratio {r['ratio']:.2f}")
        _truncate(conn)
    ratio = statistics.median(r["ratio"] for r in rounds)
    return {
        "name": NAME,
        "description": f"{PROCESSES} processes each recording {ROWS_PER_PROCESS:,} online "
                       "observations with rollout.online.recorder.Recorder into the partitioned "
                       "rollout.observations at once, against one process's bare COPY of the "
                       f"same {total:,} rows in batches of {BATCH}, in the same run",
        "method": "each side starts from an emptied table; the recorders' processes (spawned, "
                  "observations built before the start) wait on one event, and the side is "
                  "timed from that event to the last process's last committed batch "
                  "(Recorder.flush); the bare COPY converts each Observation as the recorder "
                  "does, one transaction per batch; sides alternate which goes first; after "
                  "each side the row count, distinct (process, index) markers and batch ids "
                  "are checked: nothing lost, nothing twice",
        "unit": "rows/s",
        "processes": PROCESSES,
        "rows": total,
        "batch": BATCH,
        "rounds": rounds,
        "recorders_rows_per_s": statistics.median(r["recorders"]["rows_per_s"] for r in rounds),
        "copy_rows_per_s": statistics.median(r["copy"]["rows_per_s"] for r in rounds),
        "ratio": ratio,
        "target": {"ratio_min": TARGET, "met": ratio >= TARGET},
    }


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["side", "rows/s", "seconds", "of bare COPY", "target", "met"]
    seconds = {side: statistics.median(r[side]["seconds"] for r in result["rounds"])
               for side in ("recorders", "copy")}
    lost = sum(r["recorders"]["check"]["lost"] + r["recorders"]["check"]["duplicated"]
               for r in result["rounds"])
    return header, [
        [f"{result['processes']} processes recording at once",
         f"{result['recorders_rows_per_s']:,.0f}", f"{seconds['recorders']:.2f}",
         f"{result['ratio']:.2f}", f"≥ {result['target']['ratio_min']:.2f}",
         "met" if result["target"]["met"] else "NOT met"],
        ["one process, bare COPY", f"{result['copy_rows_per_s']:,.0f}",
         f"{seconds['copy']:.2f}", "1.00", "", ""],
        ["rows lost or duplicated (all rounds)", str(lost), "", "", "0",
         "met" if lost == 0 else "NOT met"],
    ]


def observations(process: int) -> list[Observation]:
    """One service's online observations: params carry (process, index) to find doubles."""
    rng = random.Random(SEED + process)
    base = datetime.now(UTC) - timedelta(minutes=30)
    out = []
    for i in range(ROWS_PER_PROCESS):
        legacy_ns = rng.randint(150_000, 900_000)
        matched = rng.random() >= 0.01
        out.append(Observation(
            observed_at=base + timedelta(microseconds=29 * i + process), flag="orders-recent",
            stage="shadow-pilot", sql_hash="bench", tenant=rng.choice(TENANTS),
            decision="shadow", first_path="legacy", params={"p": process, "i": i},
            legacy_ns=legacy_ns, new_ns=int(legacy_ns * rng.uniform(0.2, 0.6)), legacy_rows=20,
            new_rows=20, legacy_sqlstate=None, new_sqlstate=None, legacy_error=None,
            new_error=None, matched=matched,
            diff=None if matched else [{"kind": "row", "index": rng.randrange(20)}],
            source="online", served_ns=legacy_ns + rng.randint(0, 50_000)))
    return out


def _recorders(ctx: Any, dsn: str) -> dict[str, Any]:
    start: Event = ctx.Event()
    results = ctx.Queue()
    # The DSN (with its password) travels through the pipe to each child, never argv.
    procs = [ctx.Process(target=_service, args=(dsn, p, start, results), daemon=True)
             for p in range(PROCESSES)]
    for p in procs:
        p.start()
    ready = [results.get(timeout=300) for _ in procs]
    assert all(r == "ready" for r in ready), ready
    t0 = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process of the machine
    start.set()
    done = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    failed = [d for d in done if "error" in d]
    if failed:
        raise RuntimeError(f"a recording process failed: {failed[0]['error']}")
    end = max(d["end_ns"] for d in done)
    stats = {k: sum(d["stats"][k] for d in done) for k in done[0]["stats"]}
    return {"seconds": (end - t0) / 1e9, "recorder_stats": stats}


def _service(dsn: str, process: int, start: Event, results: Any) -> None:
    """One service: its observations built, then recorded as fast as it can once started."""
    from rollout.online.recorder import Recorder

    try:
        rows = observations(process)
        recorder = Recorder(dsn, batch_size=BATCH, max_buffer=ROWS_PER_PROCESS)
        results.put("ready")
        start.wait()
        for obs in rows:
            recorder.record(obs)
        if not recorder.flush(timeout=600):
            raise RuntimeError("flush timed out")
        end = time.monotonic_ns()
        recorder.close()
        results.put({"end_ns": end, "stats": vars(recorder.stats)})
    except Exception as exc:  # reported to the parent, which fails the benchmark
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _copy(conn: psycopg.Connection[Any], rows: list[Observation]) -> int:
    """One COPY per batch, each its own transaction, rows converted as the recorder does."""
    start = time.perf_counter_ns()
    for i in range(0, len(rows), BATCH):
        batch_id = uuid.uuid4()
        with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for obs in rows[i:i + BATCH]:
                values = list(_values(obs))
                values[_BATCH_ID] = batch_id
                for j in _JSON:
                    if values[j] is not None:
                        values[j] = Jsonb(values[j])
                copy.write_row(values)
    return time.perf_counter_ns() - start


def _truncate(conn: psycopg.Connection[Any]) -> None:
    conn.execute("TRUNCATE rollout.observations")
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def _check(conn: psycopg.Connection[Any], total: int) -> dict[str, int]:
    row = conn.execute(CHECK_SQL).fetchone()
    assert row is not None
    count, distinct, batches = (int(x) for x in row)
    if count != total or distinct != total:
        raise RuntimeError(f"{count:,} rows, {distinct:,} distinct, expected {total:,}")
    return {"lost": total - distinct, "duplicated": count - distinct, "batches": batches}
