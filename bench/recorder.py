"""recorder: observations per second from ``Recorder.record()`` to committed rows, beside COPY."""

from __future__ import annotations

import contextlib
import itertools
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from time import perf_counter_ns
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from rollout.online.recorder import Recorder
from rollout.store.connection import connect
from rollout.store.observations import COLUMNS, Observation
from rollout.store.store import Store

from .database import BenchDB, say

NAME = "recorder"
ROWS = 200_000
"""Observations written per side and round."""
BATCH = 2000
"""The recorder's default ``batch_size``; COPY and executemany use the same batch."""
ROUNDS = 4
"""Rounds; the order of the sides cycles through their permutations."""
MISMATCH_RATE = 0.01
"""Share of observations that carry a diff (the rest: matched, diff None)."""
SEED = 20260101
FLAG = "orders-recent"
TENANTS: tuple[str, ...] = (
    "acme", "globex", "initech", "umbrella", "hooli", "megacorp", "wayne", "stark", "wonka",
    "cyberdyne", "soylent", "tyrell", "aperture", "oscorp", "vandelay", "dunder-mifflin",
    "pied-piper", "massive-dynamic", "gringotts", "monarch",
)
POLL_S = 0.0005
"""How often the recorder side checks whether everything was written."""

TARGET_OF_COPY = 0.70
TARGET_OVER_EXECUTEMANY = 2.0
TARGET_RECORD_US = 2.0

SIDES = ("recorder", "copy", "executemany")
COLS = ", ".join(COLUMNS)
COPY_SQL = f"COPY rollout.observations ({COLS}) FROM STDIN"
INSERT_SQL = (f"INSERT INTO rollout.observations ({COLS}) "
              f"VALUES ({', '.join(['%s'] * len(COLUMNS))})")
CHECK_SQL = ("SELECT count(*), coalesce(sum(legacy_ns), 0), count(diff), count(params),"
             " count(DISTINCT batch_id) FROM rollout.observations")

Batches = list[list[Observation]]


def run(db: BenchDB) -> dict[str, Any]:
    """Each side writes the same ``ROWS`` observations into an emptied table, per round."""
    observations = _observations(db)
    batches = [observations[i:i + BATCH] for i in range(0, ROWS, BATCH)]
    expected = _expected(observations)
    say(f"{NAME}: {ROWS:,} observations x {len(SIDES)} sides x {ROUNDS} rounds "
        "(rollout.observations is truncated before each side)")
    with connect(db.dsn, autocommit=True) as admin, connect(db.dsn, autocommit=True) as conn:
        Store.open(admin)
        recorder = Recorder(db.dsn, batch_size=BATCH, max_buffer=ROWS)
        try:
            sides: dict[str, Callable[[Batches], dict[str, Any]]] = {
                "recorder": lambda b: _recorder(recorder, b),
                "copy": lambda b: _copy(conn, b),
                "executemany": lambda b: _executemany(conn, b),
            }
            for side in sides.values():  # warm up: connections, prepared plans, caches
                _truncate(admin)
                side(batches[:2])
            quiet = _record_only(db.dsn, batches)
            rounds: list[dict[str, dict[str, Any]]] = []
            orders = itertools.cycle(itertools.permutations(SIDES))
            for _ in range(ROUNDS):
                r: dict[str, dict[str, Any]] = {}
                for name in next(orders):
                    _truncate(admin)
                    r[name] = sides[name](batches)
                    r[name]["batches"] = _check(admin, expected)
                rounds.append(r)
            _truncate(admin)
            stats = vars(recorder.stats).copy()
        finally:
            recorder.close()
    return _result(rounds, quiet, stats)


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows per second per side, the recorder's ratios, the caller's cost per record()."""
    s, t = result["sides"], result["targets"]
    header = ["side", "rows/s", "s per 200k", "recorder / side", "target", "met"]
    rows = [
        ["recorder (record() to committed)", f"{s['recorder']['rows_per_s']:,.0f}",
         f"{s['recorder']['seconds']:.2f}", "", "", ""],
        ["bare COPY, write_row", f"{s['copy']['rows_per_s']:,.0f}",
         f"{s['copy']['seconds']:.2f}", f"{result['recorder_of_copy']:.2f}",
         f"≥ {t['of_copy_min']:.2f}", _yes(t["of_copy_met"])],
        ["executemany INSERT (pipelined)", f"{s['executemany']['rows_per_s']:,.0f}",
         f"{s['executemany']['seconds']:.2f}", f"{result['recorder_over_executemany']:.2f}",
         f"≥ {t['over_executemany_min']:.1f}", _yes(t["over_executemany_met"])],
        ["record() per call, writer running", f"{result['record_us']:.2f} us", "", "",
         f"≤ {t['record_us_max']:.1f} us", _yes(t["record_us_met"])],
        ["record() per call, writer idle", f"{result['record_us_writer_idle']:.2f} us", "", "",
         "", ""],
        ["recorder drops / store errors",
         f"{result['recorder_stats']['dropped']} / {result['recorder_stats']['store_errors']}",
         "", "", "", ""],
    ]
    return header, rows


def _yes(met: bool) -> str:
    return "met" if met else "NOT met"


# -- the sides --------------------------------------------------------------------------------
def _recorder(recorder: Recorder, batches: Batches) -> dict[str, Any]:
    """``record()`` every observation as fast as possible; stop when all are committed.

    ``stats.written`` grows after each batch's COPY transaction committed.
    """
    record, stats = recorder.record, recorder.stats
    target = stats.written + sum(len(b) for b in batches)
    per_call: list[float] = []
    start = perf_counter_ns()
    for batch in batches:
        t0 = perf_counter_ns()
        for obs in batch:
            record(obs)
        per_call.append((perf_counter_ns() - t0) / len(batch) / 1e3)
    pushed = perf_counter_ns()
    deadline = time.monotonic() + 300
    while stats.written < target and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if stats.written < target:
        raise RuntimeError(f"the recorder wrote {target - stats.written} rows too few in 300 s")
    end = perf_counter_ns()
    return {"ns": end - start, "push_ns": pushed - start, "record_us": per_call}


_values = attrgetter(*COLUMNS)
_BATCH_ID = COLUMNS.index("batch_id")
_JSON = tuple(COLUMNS.index(c) for c in ("params", "diff", "locks") if c in COLUMNS)
"""The jsonb columns, as ``Store.write_observations`` adapts them."""


def _row(obs: Observation, batch_id: uuid.UUID) -> list[Any]:
    """The observation as the recorder writes it: its batch id, JSON columns as jsonb."""
    values = list(_values(obs))
    values[_BATCH_ID] = batch_id
    for i in _JSON:
        if values[i] is not None:
            values[i] = Jsonb(values[i])
    return values


def _copy(conn: psycopg.Connection[Any], batches: Batches) -> dict[str, Any]:
    """One COPY per batch, each in its own transaction, rows built from the observations."""
    start = perf_counter_ns()
    for batch in batches:
        batch_id = uuid.uuid4()
        with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for obs in batch:
                copy.write_row(_row(obs, batch_id))
    return {"ns": perf_counter_ns() - start}


def _executemany(conn: psycopg.Connection[Any], batches: Batches) -> dict[str, Any]:
    """One executemany per batch, each in its own transaction (psycopg pipelines it)."""
    start = perf_counter_ns()
    for batch in batches:
        batch_id = uuid.uuid4()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(INSERT_SQL, [_row(obs, batch_id) for obs in batch])
    return {"ns": perf_counter_ns() - start}


def _record_only(dsn: str, batches: Batches) -> list[float]:
    """``record()`` per call with the writer asleep (it never reaches its batch size).

    The rows are written when the recorder closes, untimed, and truncated before the next side.
    """
    recorder = Recorder(dsn, batch_size=10 * ROWS, flush_interval=3600.0, max_buffer=10 * ROWS)
    try:
        per_call: list[float] = []
        for batch in batches:
            t0 = perf_counter_ns()
            for obs in batch:
                recorder.record(obs)
            per_call.append((perf_counter_ns() - t0) / len(batch) / 1e3)
        return per_call
    finally:
        recorder.close(timeout=120)


# -- checks and results -----------------------------------------------------------------------
def _truncate(conn: psycopg.Connection[Any]) -> None:
    """Empty the table, then CHECKPOINT (where allowed) so no side pays for another's WAL."""
    conn.execute("TRUNCATE rollout.observations")
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def _expected(observations: list[Observation]) -> tuple[int, ...]:
    return (len(observations), sum(o.legacy_ns or 0 for o in observations),
            sum(o.diff is not None for o in observations),
            sum(o.params is not None for o in observations))


def _check(conn: psycopg.Connection[Any], expected: tuple[int, ...]) -> int:
    """Every side must have written the same rows (count, sum, JSON columns); its batches."""
    row = conn.execute(CHECK_SQL).fetchone()
    assert row is not None
    got = tuple(int(x) for x in row)
    if got[:-1] != expected:
        raise RuntimeError(f"rows written differ: got {got[:-1]}, expected {expected}")
    return got[-1]


def _result(rounds: list[dict[str, dict[str, Any]]], quiet: list[float],
            stats: dict[str, Any]) -> dict[str, Any]:
    rate = {name: [ROWS / (r[name]["ns"] / 1e9) for r in rounds] for name in SIDES}
    sides = {name: {"rows_per_s": statistics.median(v),
                    "seconds": statistics.median(r[name]["ns"] / 1e9 for r in rounds),
                    "rounds_rows_per_s": [round(x) for x in v]} for name, v in rate.items()}
    sides["recorder"]["push_seconds"] = statistics.median(
        r["recorder"]["push_ns"] / 1e9 for r in rounds)
    for name in SIDES:
        sides[name]["transactions"] = [r[name]["batches"] for r in rounds]
    of_copy = statistics.median(
        a / b for a, b in zip(rate["recorder"], rate["copy"], strict=True))
    over_em = statistics.median(
        a / b for a, b in zip(rate["recorder"], rate["executemany"], strict=True))
    per_call = [x for r in rounds for x in r["recorder"]["record_us"]]
    record_us = statistics.median(per_call)
    return {
        "name": NAME,
        "description": f"{ROWS:,} online observations into rollout.observations: "
                       "Recorder.record() (its thread batches and COPYs) until every row is "
                       f"committed, against a bare COPY and psycopg's pipelined executemany "
                       f"INSERT of the same rows in batches of {BATCH}, one transaction each",
        "unit": "rows/s",
        "method": "each side starts from an emptied table (TRUNCATE, then CHECKPOINT when "
                  "the role may) and writes the same "
                  "prebuilt Observation objects; the recorder side is timed from the first "
                  "record() until its stats.written reached them all (rows committed), "
                  "polled every 0.5 ms; COPY and executemany convert each Observation as "
                  "the recorder does (batch id, params/diff as jsonb) inside their timing; "
                  "sides interleaved round by round, order cycling; figures are medians "
                  "over rounds, ratios taken within each round; record() cost is the "
                  "per-call mean of each batch of 2,000 calls, median over batches",
        "rows": ROWS,
        "batch": BATCH,
        "rounds": ROUNDS,
        "mismatch_rate": MISMATCH_RATE,
        "recorder_settings": {"batch_size": BATCH, "flush_interval_s": 0.2,
                              "max_buffer": ROWS,
                              "note": "max_buffer raised from 100,000 to the burst size so "
                                      "nothing is dropped: this measures throughput"},
        "sides": sides,
        "recorder_of_copy": of_copy,
        "recorder_over_executemany": over_em,
        "record_us": record_us,
        "record_us_p99_over_batches": _p99(per_call),
        "record_us_writer_idle": statistics.median(quiet),
        "recorder_stats": stats,
        "checks": "row count, sum(legacy_ns), count(diff) and count(params) equal after "
                  "every side; transactions = distinct batch ids",
        "targets": {
            "of_copy_min": TARGET_OF_COPY, "of_copy_met": of_copy >= TARGET_OF_COPY,
            "over_executemany_min": TARGET_OVER_EXECUTEMANY,
            "over_executemany_met": over_em >= TARGET_OVER_EXECUTEMANY,
            "record_us_max": TARGET_RECORD_US, "record_us_met": record_us <= TARGET_RECORD_US,
        },
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _observations(db: BenchDB) -> list[Observation]:
    """Online observations as the runner makes them: params a dict, diff mostly None."""
    flag = db.workspace.flag(FLAG)
    rng = random.Random(SEED)
    base = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(ROWS):
        legacy_ns = rng.randint(150_000, 900_000)
        matched = rng.random() >= MISMATCH_RATE
        diff = None if matched else [{
            "kind": "row", "index": rng.randrange(20),
            "legacy": [rng.randrange(10**6), "shipped", "129.90"],
            "new": [rng.randrange(10**6), "pending", "129.90"]}]
        out.append(Observation(
            observed_at=base + timedelta(microseconds=17 * i), flag=flag.name,
            stage="shadow-pilot", sql_hash=flag.sql_hash, tenant=rng.choice(TENANTS),
            decision="shadow", first_path="legacy",
            params={"customer_id": rng.randrange(1, 40_000)}, legacy_ns=legacy_ns,
            new_ns=int(legacy_ns * rng.uniform(0.2, 0.6)), legacy_rows=20, new_rows=20,
            legacy_sqlstate=None, new_sqlstate=None, legacy_error=None, new_error=None,
            matched=matched, diff=diff, source="online"))
    return out
