"""shadow_overhead: what the offline runner adds per paired execution over bare psycopg."""

from __future__ import annotations

import random
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns, process_time_ns
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from rollout.flags.model import Flag
from rollout.run.deadline import WATCHDOG
from rollout.run.execute import guard
from rollout.run.locks import LockWaitSampler
from rollout.run.shadow import BATCH, RunOptions, RunSummary, draw_plan, run_pair
from rollout.store.connection import connect
from rollout.store.observations import Observation
from rollout.store.store import Store

from .database import BenchDB, say

NAME = "shadow_overhead"
FLAGS = ("orders-recent", "order-ship")
TENANTS: tuple[str, ...] = ("acme", "megacorp")
SAMPLES = 400
"""Parameter sets per flag, split over ``TENANTS`` as ``run_shadow`` splits them."""
ROUNDS = 6
"""Timed rounds over all parameter sets; even, so each side goes first equally often."""
WARM_UP = 50
"""Parameter sets both sides run untimed first: statements prepared, caches warm."""
SEED = 20260101
PATHS = ("legacy", "new")

Plan = list[tuple[str | None, dict[str, Any]]]
Side = Callable[[str | None, dict[str, Any]], None]


def run(db: BenchDB) -> dict[str, Any]:
    """Time the baseline and the runner for each flag, interleaved pair by pair in rounds."""
    cases = []
    with connect(db.dsn, autocommit=True) as target, connect(db.dsn, autocommit=True) as sconn, \
            connect(db.dsn, autocommit=True) as direct:
        store = Store.open(sconn)  # the store on its own connection, as `rollout shadow` does
        for name in FLAGS:
            flag = db.workspace.flag(name)
            say(f"{NAME}: {name} ({flag.kind}), {SAMPLES} pairs x {ROUNDS} rounds")
            cases.append(_case(flag, target, store, direct))
    watch_us = _deadline_cost()
    say(f"{NAME}: registering and releasing a client-side deadline: {watch_us:.2f} us")
    return {
        "name": NAME,
        "deadline_watch_us": watch_us,
        "description": "per paired execution, the offline runner (SET LOCAL timeouts, "
                       "client-side deadline, advisory-lock release and the prepared-statement "
                       "check in the closing round trip, comparison, Observation, COPY to the "
                       "store) against running both queries directly with psycopg's defaults "
                       "(both sides prepared server-side after 5 executions)",
        "unit": "us",
        "method": "rounds over the same parameter sets; within a round baseline and runner "
                  "alternate pair by pair (the side going first alternates too); a round's "
                  "per-pair time is its total over the pairs (COPY included) / pairs; figures "
                  "are medians over rounds, ratio and added time are taken within each round",
        "samples": SAMPLES,
        "rounds": ROUNDS,
        "tenants": list(TENANTS),
        "cases": cases,
    }


def _deadline_cost(n: int = 100_000) -> float:
    """Median cost of one ``watch`` + ``release`` on the process watchdog, in microseconds:
    what the client-side deadline adds to each execution besides its round trips."""
    rounds = []
    for _ in range(5):
        start = perf_counter_ns()
        for _ in range(n):
            WATCHDOG.release(WATCHDOG.watch(_no_cancel, -1, 3600.0, 1.0))
        rounds.append((perf_counter_ns() - start) / n / 1e3)
    return statistics.median(rounds)


def _no_cancel() -> None:
    pass


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for the console table (times per paired execution)."""
    header = ["flag", "kind", "pairs x rounds", "baseline us", "runner us", "ratio", "added us",
              "of which COPY us", "client CPU added us"]
    rows = []
    for c in result["cases"]:
        b, r = c["baseline"], c["runner"]
        rows.append([
            c["flag"], c["kind"], f"{c['samples']} x {c['rounds']}",
            f"{b['per_pair_us']:.1f}", f"{r['per_pair_us']:.1f}", f"{c['ratio']:.2f}",
            f"{c['added_us_per_pair']:.1f}", f"{r['copy_us_per_pair']:.1f}",
            f"{c['cpu_added_us_per_pair']:.1f}",
        ])
    return header, rows


@dataclass
class _Clock:
    """Wall and client CPU time of one side in one round, and every pair's wall time."""

    wall_ns: int = 0
    cpu_ns: int = 0
    pairs: list[int] = field(default_factory=list)

    def time(self, side: Side, tenant: str | None, params: dict[str, Any]) -> None:
        cpu = process_time_ns()  # read outside the wall-clock window: it costs ~0.5 us
        start = perf_counter_ns()
        side(tenant, params)
        elapsed = perf_counter_ns() - start
        self.cpu_ns += process_time_ns() - cpu
        self.wall_ns += elapsed
        self.pairs.append(elapsed)


class _Baseline:
    """(a) Both queries straight through psycopg, in the runner's order.

    Each execution in its own transaction, READ ONLY for reads and rolled back for writes,
    every row fetched, on a connection of its own with psycopg's defaults: statements are
    prepared server-side after ``prepare_threshold`` (5) executions, as an application's
    would be. The runner prepares the same way and checks, in each execution's closing
    round trip, that flag SQL left psycopg's statements as they were.
    """

    def __init__(self, flag: Flag, conn: psycopg.Connection[Any], seed: int) -> None:
        self.conn = conn
        self.write = flag.kind == "write"
        self.sql = {"legacy": flag.legacy.sql, "new": flag.new.sql}
        self.index = 0  # the runner's ABBA order: legacy first on even pairs
        conn.read_only = not self.write

    def pair(self, _tenant: str | None, params: dict[str, Any]) -> None:
        first = PATHS[self.index % 2]
        self.index += 1
        for path in (first, "new" if first == "legacy" else "legacy"):
            with self.conn.transaction(force_rollback=self.write), self.conn.cursor() as cur:
                cur.execute(self.sql[path], params)
                if cur.description is not None:
                    cur.fetchall()


class _Runner:
    """(b) ``run_shadow``'s loop body over pre-drawn parameters.

    ``run_shadow`` draws its own parameters, so its per-pair work is mirrored here: ``run_pair``
    (both executions with lock-wait sampling, comparison, the Observation; held locks listed
    for the first pairs), the summary counters,
    and ``Store.write_observations`` every ``BATCH`` pairs and for the rest at the end.
    Keep this in step with ``rollout.run.shadow.run_shadow``.
    """

    def __init__(self, flag: Flag, conn: psycopg.Connection[Any], store: Store, seed: int,
                 run_id: uuid.UUID) -> None:
        self.flag, self.conn, self.store, self.run_id = flag, conn, store, run_id
        self.stage = flag.first_stage
        guard(conn)  # as run_shadow does: flag SQL on the extended protocol
        self.index = 0
        dsn = make_conninfo(conn.info.dsn, password=conn.info.password)
        self.sampler = LockWaitSampler(dsn, RunOptions().lock_interval or 0.01).start()
        self.summary = RunSummary(run_id, flag.name, self.stage, list(TENANTS))
        self.batch: list[Observation] = []
        self.copy_ns = 0

    def pair(self, tenant: str | None, params: dict[str, Any]) -> None:
        obs = run_pair(self.flag, self.conn, self.stage, tenant, params, self.index,
                       self.run_id, sampler=self.sampler,
                       capture_locks=self.index < RunOptions().lock_captures)
        self.index += 1
        self.batch.append(obs)
        self.summary.add(obs)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        start = perf_counter_ns()
        self.store.write_observations(self.batch)
        self.copy_ns += perf_counter_ns() - start
        self.batch.clear()


def _case(flag: Flag, target: psycopg.Connection[Any], store: Store,
          direct: psycopg.Connection[Any]) -> dict[str, Any]:
    plan = _draw_plan(flag, target)
    run_id = store.start_run(flag=flag.name, stage=flag.first_stage, sql_hash=flag.sql_hash,
                             tenants=list(TENANTS), requested=SAMPLES, target="bench",
                             server_version="")
    _round(flag, target, store, direct, run_id, plan[:WARM_UP], SEED, baseline_first=True)
    rounds = [_round(flag, target, store, direct, run_id, plan, SEED + r + 1,
                     baseline_first=r % 2 == 0) for r in range(ROUNDS)]
    store.finish_run(run_id, min(WARM_UP, len(plan)) + ROUNDS * len(plan))

    n = len(plan)
    base = _summary([b for b, _, _ in rounds], n)
    runner = _summary([r for _, r, _ in rounds], n)
    runner["copy_us_per_pair"] = statistics.median(x.copy_ns / n / 1e3 for _, _, x in rounds)
    runner["mismatches"] = sum(x.summary.mismatches for _, _, x in rounds)
    runner["failures"] = sum(x.summary.legacy_failures + x.summary.new_failures
                             for _, _, x in rounds)
    wall = list(zip(runner["rounds_per_pair_us"], base["rounds_per_pair_us"], strict=True))
    cpu = list(zip(runner["rounds_cpu_us"], base["rounds_cpu_us"], strict=True))
    return {
        "flag": flag.name,
        "kind": flag.kind,
        "samples": n,
        "rounds": ROUNDS,
        "baseline": base,
        "runner": runner,
        "ratio": statistics.median(r / b for r, b in wall),
        "added_us_per_pair": statistics.median(r - b for r, b in wall),
        "cpu_added_us_per_pair": statistics.median(r - b for r, b in cpu),
    }


def _round(flag: Flag, target: psycopg.Connection[Any], store: Store,
           direct: psycopg.Connection[Any], run_id: uuid.UUID, plan: Plan, seed: int, *,
           baseline_first: bool) -> tuple[_Clock, _Clock, _Runner]:
    """One pass over ``plan``; the sides alternate pair by pair, cancelling drift between them.

    The runner's last, partial batch is written at the end, as ``run_shadow`` does, and its
    time is added to the runner's.
    """
    base, runner = _Baseline(flag, direct, seed), _Runner(flag, target, store, seed, run_id)
    base_clock, runner_clock = _Clock(), _Clock()
    for i, (tenant, params) in enumerate(plan):
        if (i % 2 == 0) == baseline_first:
            base_clock.time(base.pair, tenant, params)
            runner_clock.time(runner.pair, tenant, params)
        else:
            runner_clock.time(runner.pair, tenant, params)
            base_clock.time(base.pair, tenant, params)
    cpu = process_time_ns()
    start = perf_counter_ns()
    runner.flush()
    runner.sampler.close()
    runner_clock.wall_ns += perf_counter_ns() - start
    runner_clock.cpu_ns += process_time_ns() - cpu
    return base_clock, runner_clock, runner


def _summary(clocks: list[_Clock], n: int) -> dict[str, Any]:
    """One side's per-pair figures: medians over rounds, and each round's value."""
    per_pair = [c.wall_ns / n / 1e3 for c in clocks]
    cpu = [c.cpu_ns / n / 1e3 for c in clocks]
    return {
        "per_pair_us": statistics.median(per_pair),
        "pair_p50_us": statistics.median(statistics.median(c.pairs) / 1e3 for c in clocks),
        "cpu_us_per_pair": statistics.median(cpu),
        "rounds_per_pair_us": [round(x, 2) for x in per_pair],
        "rounds_cpu_us": [round(x, 2) for x in cpu],
    }


def _draw_plan(flag: Flag, conn: psycopg.Connection[Any]) -> Plan:
    """``SAMPLES`` parameter sets over ``TENANTS``, shuffled, as ``run_shadow`` draws them."""
    plan = draw_plan(flag, conn, TENANTS, SAMPLES, random.Random(SEED))
    if len(plan) != SAMPLES:
        raise RuntimeError(f"{flag.name}: params.sample returned no rows for a tenant")
    return plan
