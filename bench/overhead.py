"""shadow_overhead: what the offline runner adds per paired execution over bare psycopg."""

from __future__ import annotations

import random
import statistics
import uuid
from time import perf_counter_ns, process_time_ns
from typing import Any

import psycopg

from rollout.connection import connect
from rollout.execute import Limits
from rollout.flags import Flag
from rollout.observations import Observation
from rollout.shadow import BATCH, RunSummary, _pair, _split, draw_params
from rollout.store import Store

from .database import BenchDB, say

NAME = "shadow_overhead"
FLAGS = ("orders-recent", "order-ship")
TENANTS: tuple[str, ...] = ("acme", "megacorp")
SAMPLES = 400
"""Parameter sets per flag (split over ``TENANTS`` as ``run_shadow`` splits them)."""
ROUNDS = 6
"""Timed rounds; even, so baseline-first and runner-first rounds balance exactly."""
WARM_UP = 50
"""Parameter sets run untimed by both sides first: plans prepared, caches warm."""
SEED = 20260101
PATHS = ("legacy", "new")

Plan = list[tuple[str | None, dict[str, Any]]]


def run(db: BenchDB) -> dict[str, Any]:
    """Time the baseline and the runner for each flag, interleaved in rounds."""
    cases = []
    with connect(db.dsn, autocommit=True) as target, connect(db.dsn, autocommit=True) as sconn:
        store = Store.open(sconn)
        for name in FLAGS:
            flag = db.workspace.flag(name)
            say(f"{NAME}: {name} ({flag.kind}), {SAMPLES} pairs x {ROUNDS} rounds")
            cases.append(_case(flag, target, store))
    return {
        "name": NAME,
        "description": "per paired execution: run_shadow's per-pair work (SET LOCAL timeouts, "
                       "both executions, comparison, Observation, COPY to the store) vs. the "
                       "two queries run directly with psycopg, each in its own transaction",
        "unit": "us",
        "samples": SAMPLES,
        "rounds": ROUNDS,
        "tenants": list(TENANTS),
        "cases": cases,
    }


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


def _case(flag: Flag, target: psycopg.Connection[Any], store: Store) -> dict[str, Any]:
    stage = flag.first_stage
    limits = Limits()
    plan = _draw_plan(flag, target)
    run_id = store.start_run(flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
                             tenants=list(TENANTS), requested=SAMPLES, target="bench",
                             server_version="")
    warm = plan[:WARM_UP]
    _baseline(flag, target, warm, SEED)
    _runner(flag, target, store, stage, warm, limits, SEED, run_id)

    base_rounds: list[dict[str, Any]] = []
    runner_rounds: list[dict[str, Any]] = []
    recorded = len(warm)
    for r in range(ROUNDS):
        seed = SEED + r + 1  # both sides of a round draw the same first paths
        if r % 2 == 0:
            base_rounds.append(_baseline(flag, target, plan, seed))
            runner_rounds.append(_runner(flag, target, store, stage, plan, limits, seed, run_id))
        else:
            runner_rounds.append(_runner(flag, target, store, stage, plan, limits, seed, run_id))
            base_rounds.append(_baseline(flag, target, plan, seed))
        recorded += len(plan)
    store.finish_run(run_id, recorded)

    n = len(plan)
    base, runner = _summary(base_rounds, n), _summary(runner_rounds, n)
    runner["copy_us_per_pair"] = statistics.median(r["copy_ns"] / n / 1e3 for r in runner_rounds)
    runner["mismatches"] = sum(r["mismatches"] for r in runner_rounds)
    runner["failures"] = sum(r["failures"] for r in runner_rounds)
    # both sides of a round ran back to back: compare within rounds, then take the median
    pairs = list(zip(runner["rounds_per_pair_us"], base["rounds_per_pair_us"], strict=True))
    cpu = list(zip(runner["rounds_cpu_us"], base["rounds_cpu_us"], strict=True))
    return {
        "flag": flag.name,
        "kind": flag.kind,
        "samples": n,
        "rounds": ROUNDS,
        "baseline": base,
        "runner": runner,
        "ratio": statistics.median(r / b for r, b in pairs),
        "added_us_per_pair": statistics.median(r - b for r, b in pairs),
        "cpu_added_us_per_pair": statistics.median(r - b for r, b in cpu),
    }


def _summary(rounds: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Per-pair figures of one side: medians over rounds, and each round's value."""
    per_pair = [r["total_ns"] / n / 1e3 for r in rounds]
    cpu = [r["cpu_ns"] / n / 1e3 for r in rounds]
    return {
        "per_pair_us": statistics.median(per_pair),
        "pair_p50_us": statistics.median(r["pair_p50_ns"] / 1e3 for r in rounds),
        "cpu_us_per_pair": statistics.median(cpu),
        "rounds_per_pair_us": [round(x, 2) for x in per_pair],
        "rounds_cpu_us": [round(x, 2) for x in cpu],
    }


def _draw_plan(flag: Flag, conn: psycopg.Connection[Any]) -> Plan:
    """``SAMPLES`` parameter sets over ``TENANTS``, shuffled once, as ``run_shadow`` draws them."""
    rng = random.Random(SEED)
    plan: Plan = []
    for tenant, n in zip(TENANTS, _split(SAMPLES, len(TENANTS)), strict=True):
        drawn = draw_params(flag, conn, tenant, n, rng)
        if not drawn:
            raise RuntimeError(f"{flag.name}: params.sample returned no rows for {tenant}")
        plan.extend((tenant, p) for p in drawn)
    rng.shuffle(plan)
    return plan


def _baseline(flag: Flag, conn: psycopg.Connection[Any], plan: Plan,
              seed: int) -> dict[str, Any]:
    """(a) Both queries per parameter set straight through psycopg, same order as the runner.

    Each execution gets its own transaction, READ ONLY for reads and rolled back for writes,
    and every row is fetched: the database work the runner cannot avoid.
    """
    write = flag.kind == "write"
    sql = {"legacy": flag.legacy.sql, "new": flag.new.sql}
    rng = random.Random(seed)
    conn.read_only = not write
    pairs: list[int] = []
    cpu = process_time_ns()
    start = perf_counter_ns()
    for _tenant, params in plan:
        t0 = perf_counter_ns()
        first = rng.choice(PATHS)
        for path in (first, "new" if first == "legacy" else "legacy"):
            with conn.transaction(force_rollback=write), conn.cursor() as cur:
                cur.execute(sql[path], params)
                if cur.description is not None:
                    cur.fetchall()
        pairs.append(perf_counter_ns() - t0)
    total = perf_counter_ns() - start
    return {"total_ns": total, "cpu_ns": process_time_ns() - cpu,
            "pair_p50_ns": statistics.median(pairs)}


def _runner(flag: Flag, conn: psycopg.Connection[Any], store: Store, stage: str, plan: Plan,
            limits: Limits, seed: int, run_id: uuid.UUID) -> dict[str, Any]:
    """(b) ``run_shadow``'s per-pair loop over pre-drawn parameters, COPY to the store included.

    ``run_shadow`` draws its own parameters, so its loop body is mirrored here: ``_pair``
    (SET LOCAL timeouts, both executions, comparison, the Observation), the summary counters,
    and ``Store.write_observations`` every ``BATCH`` pairs and once at the end. Keep this in
    step with ``rollout.shadow.run_shadow``.
    """
    rng = random.Random(seed)
    summary = RunSummary(run_id, flag.name, stage, list(TENANTS))
    batch: list[Observation] = []
    pairs: list[int] = []
    copy_ns = 0
    cpu = process_time_ns()
    start = perf_counter_ns()
    for tenant, params in plan:
        t0 = perf_counter_ns()
        obs = _pair(flag, conn, stage, tenant, params, limits, rng, run_id)
        batch.append(obs)
        summary.samples += 1
        summary.mismatches += obs.matched is False
        summary.legacy_failures += obs.legacy_failed
        summary.new_failures += obs.new_failed
        summary.by_tenant[tenant] = summary.by_tenant.get(tenant, 0) + 1
        if len(batch) >= BATCH:
            c0 = perf_counter_ns()
            store.write_observations(batch)
            copy_ns += perf_counter_ns() - c0
            batch.clear()
        pairs.append(perf_counter_ns() - t0)
    c0 = perf_counter_ns()
    store.write_observations(batch)
    copy_ns += perf_counter_ns() - c0
    total = perf_counter_ns() - start
    return {
        "total_ns": total,
        "cpu_ns": process_time_ns() - cpu,
        "pair_p50_ns": statistics.median(pairs),
        "copy_ns": copy_ns,
        "mismatches": summary.mismatches,
        "failures": summary.legacy_failures + summary.new_failures,
    }
