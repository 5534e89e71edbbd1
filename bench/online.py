"""online_overhead: what ``Rollout.query()`` in shadow mode costs the caller over plain psycopg."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns, thread_time_ns
from typing import Any

from rollout import Context, Rollout
from rollout.commands import Session, flag_resume, flag_set
from rollout.flags.model import Flag
from rollout.flags.state import read_state
from rollout.online.recorder import Recorder, RecorderStats
from rollout.run.shadow import draw_plan
from rollout.store.connection import connect

from .database import BenchDB, say

NAME = "online_overhead"
FLAG = "orders-recent"
STAGE = "shadow-pilot"
"""Shadows tenants acme and megacorp: the caller is served legacy, new runs in the background."""
TENANTS: tuple[str, ...] = ("acme", "megacorp")
SAMPLES = 500
"""Parameter sets, split over ``TENANTS``; every round calls each side once per set."""
ROUNDS = 10
"""Timed rounds per variant."""
WARM_UP = 60
"""Parameter sets every side runs untimed first: statements prepared, caches warm."""
SEED = 20260101
QUEUE_SIZE = 100_000
BLOCK = 25
"""Calls per side in a row: the sides take turns block by block, so the background work
ours starts slows ours' own next calls, never another side's."""
SETTLE_S = 0.0002
"""Pause after a shadow job is recorded, for its worker to go back to sleep."""

TARGET_ADDED_MEDIAN_US = 30.0
TARGET_ADDED_P99_US = 200.0
TARGET_RATIO = 1.15
ISSUE_LABORATORY_RATIO = 1.62
"""The issue's figure for laboratory against direct, on a 0.28 ms query."""

SIDES = ("direct", "laboratory", "ours")


@dataclass(frozen=True)
class Variant:
    """How the calls are issued; every variant runs blocks of ``BLOCK`` calls per side."""

    name: str
    period_us: int
    """Start-to-start time of the calls in a block; 0: each starts as the last returns."""
    wait_for_jobs: bool
    """After each call of ours, wait (untimed) until its shadow job is recorded."""
    recorder_writes: bool
    """False: the recorder only buffers while measuring and writes after the variant."""
    meaning: str
    shadow_workers: int = 2
    """0: the shadow jobs are queued and never run."""


VARIANTS: tuple[Variant, ...] = (
    Variant("client-only", 0, False, False,
            "back to back with shadow_workers=0: every call of ours decides, serves and "
            "queues its shadow job, which never runs; nothing runs in the background: the "
            "caller path's own cost (the jobs pile up in the queue; no worker is woken)",
            shadow_workers=0),
    Variant("quiesced", 1000, True, False,
            "one call started every 1 ms; after each call of ours the benchmark waits, "
            "untimed, until its shadow job is recorded, and the recorder only buffers: no "
            "timed call runs beside background work, but each of ours follows one"),
    Variant("paced", 1000, False, True,
            "one call started every 1 ms (about 1,000 calls/s from one thread, 15-45 % "
            "duty), nothing waited for: a shadow job mostly runs in the gap before ours' "
            "next call, sometimes beside it; the recorder writes every 0.2 s: a service "
            "that is busy but not saturated"),
    Variant("back-to-back", 0, False, True,
            "each call starts as the last returns; ours' shadow jobs run on the shadow pool "
            "beside ours' next calls, the recorder writes every 0.2 s: a caller thread at "
            "100 % duty, the worst case, GIL and server CPU contention included (the "
            "database shares this VM's 2 cores)"),
)

Plan = list[tuple[str, dict[str, Any]]]
Side = Callable[[str, dict[str, Any]], object]


def run(db: BenchDB) -> dict[str, Any]:
    """Every variant, each with its own ``Rollout`` on the same database."""
    session = Session(db.workspace.root, dsn=db.dsn, say=lambda m: None)
    flag_set(session, FLAG, STAGE, actor="bench", reason="online overhead benchmark")
    with session.store() as store:
        if read_state(store.conn, FLAG).killed:
            flag_resume(session, FLAG, actor="bench", reason="online overhead benchmark")
    flag = db.workspace.flag(FLAG)
    plan = _draw_plan(flag, db.dsn)
    experiment = _laboratory()
    variants = {}
    for v in VARIANTS:
        say(f"{NAME}: {v.name}, {len(plan)} calls per side x {ROUNDS} rounds")
        variants[v.name] = {"meaning": v.meaning, "period_us": v.period_us,
                            **_variant(db, flag, plan, experiment, v)}
    return {
        "name": NAME,
        "description": f"per call, Rollout.query() on {FLAG} in stage {STAGE} (legacy served, "
                       "new shadowed) against running the legacy query directly with psycopg "
                       "on the same pool, and laboratory's Experiment running both in the "
                       "caller's thread",
        "unit": "us",
        "method": "rounds over the same parameter sets; within a round the three sides take "
                  "turns block by block (see variants), their order cycling through all six "
                  "permutations; after a block of ours, its shadow jobs are waited for, "
                  "untimed, so no other side runs beside them; per round "
                  "each side's median and p99 (linear interpolation) over its calls; added "
                  "time and ratios are taken within each round, every figure is the median "
                  "over rounds (pooled: over every timed call of all rounds); caller CPU is "
                  "the calling thread's CPU time per call (thread_time_ns, read outside the "
                  "wall-clock window): the client work without waits on the server, the GIL "
                  "or the hardware's other threads, median per round then over rounds",
        "flag": FLAG,
        "stage": STAGE,
        "tenants": list(TENANTS),
        "samples": len(plan),
        "rounds": ROUNDS,
        "warm_up": WARM_UP,
        "queue_size": QUEUE_SIZE,
        "variants": variants,
        "laboratory": experiment.describe(),  # its match counts are per variant
        "targets": {
            "added_median_us_max": TARGET_ADDED_MEDIAN_US,
            "added_p99_us_max": TARGET_ADDED_P99_US,
            "ratio_max": TARGET_RATIO,
            **{name: _judge(v) for name, v in variants.items()},
        },
        "issue_laboratory_ratio": ISSUE_LABORATORY_RATIO,
    }


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per variant and side, the background's counters, then the targets."""
    header = ["variant / side", "median us", "p99 us", "caller CPU us", "added median us",
              "added p99 us", "added CPU us", "ratio of medians"]
    rows = []
    for name, v in result["variants"].items():
        for side in SIDES:
            s = v["sides"].get(side)
            if s is None:
                rows.append([f"{name} / {side}", "n/a", "n/a", "n/a", "", "", "",
                             "unavailable"])
                continue
            added = side != "direct"
            rows.append([
                f"{name} / {side}", f"{s['median_us']:.1f}", f"{s['p99_us']:.1f}",
                f"{s['cpu_us']:.1f}",
                f"{s['added_median_us']:+.1f}" if added else "",
                f"{s['added_p99_us']:+.1f}" if added else "",
                f"{s['added_cpu_us']:+.1f}" if added else "",
                f"{s['ratio']:.2f}x" if added else "",
            ])
        st = v["stats"]
        done = (f"{v['observations_recorded']} recorded" if not v["never_run"]
                else f"{v['never_run']} never run")
        rows.append([f"{name} / background", "", "", "",
                     f"{st['dropped_queue_full']} dropped", done,
                     f"{v['mismatches']} mismatched",
                     f"{sum(st['background_failures'].values())} failed"])
    t = result["targets"]
    for name in result["variants"]:
        j = t[name]
        rows.append([
            f"targets, {name}", "", "", "",
            f"≤ {t['added_median_us_max']:.0f}: {_yes(j['added_median_met'])}",
            f"≤ {t['added_p99_us_max']:.0f}: {_yes(j['added_p99_met'])}", "",
            f"≤ {t['ratio_max']:.2f}x: {_yes(j['ratio_met'])}",
        ])
    return header, rows


def _yes(met: bool) -> str:
    return "met" if met else "NOT met"


def _judge(v: dict[str, Any]) -> dict[str, Any]:
    ours = v["sides"]["ours"]
    return {
        "added_median_met": ours["added_median_us"] <= TARGET_ADDED_MEDIAN_US,
        "added_p99_met": ours["added_p99_us"] <= TARGET_ADDED_P99_US,
        "ratio_met": ours["ratio"] <= TARGET_RATIO,
        "no_drops": v["stats"]["dropped_queue_full"] == 0,
    }


# -- the sides ----------------------------------------------------------------------------------
@dataclass
class _Laboratory:
    """laboratory's Experiment, imported lazily: the benchmark still runs without it."""

    cls: type | None = None
    version: str | None = None
    reason: str | None = None
    matched: int = 0
    mismatched: int = 0

    def describe(self) -> dict[str, Any]:
        if self.cls is None:
            return {"available": False, "reason": self.reason}
        return {"available": True, "version": self.version,
                "use": "a new Experiment per call: control = legacy, candidate = new, each "
                       "in its own transaction on the request pool, in the caller's thread, "
                       "order shuffled by conduct(); publish() only counts matches"}


def _laboratory() -> _Laboratory:
    try:
        from importlib.metadata import version

        from laboratory import Experiment  # type: ignore[import-untyped]
    except ImportError as exc:
        return _Laboratory(reason=f"laboratory is not installed ({exc}); "
                                  "pip install -e '.[bench]'")
    lab = _Laboratory(version=version("laboratory"))

    class Quiet(Experiment):  # type: ignore[misc]
        def publish(self, result: Any) -> None:  # a no-op, counted after the run
            if result.match:
                lab.matched += 1
            else:
                lab.mismatched += 1

    lab.cls = Quiet
    return lab


def _sides(ro: Rollout, flag: Flag, lab: _Laboratory) -> dict[str, Side]:
    pool, legacy, new = ro.pool, flag.legacy.sql, flag.new.sql

    def fetch(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with pool.connection() as conn, conn.transaction():
            return conn.execute(sql, params).fetchall()

    def direct(_tenant: str, params: dict[str, Any]) -> object:
        with pool.connection() as conn, conn.transaction():
            return conn.execute(legacy, params).fetchall()

    def ours(tenant: str, params: dict[str, Any]) -> object:
        return ro.query(FLAG, Context(tenant=tenant), params)

    sides: dict[str, Side] = {"direct": direct, "ours": ours}
    if lab.cls is not None:
        experiment_cls = lab.cls

        def laboratory(_tenant: str, params: dict[str, Any]) -> object:
            e = experiment_cls(name=FLAG)
            e.control(fetch, args=(legacy, params))
            e.candidate(fetch, args=(new, params))
            return e.conduct()

        sides["laboratory"] = laboratory
    return sides


# -- measuring --------------------------------------------------------------------------------
@dataclass
class _Round:
    """Every timed call of one round, per side, in ns: wall time and the caller's CPU time."""

    calls: dict[str, list[int]] = field(default_factory=dict)
    cpu: dict[str, list[int]] = field(default_factory=dict)


def _variant(db: BenchDB, flag: Flag, plan: Plan, lab: _Laboratory, v: Variant
             ) -> dict[str, Any]:
    recorder = None
    if not v.recorder_writes:  # record() only buffers: no COPY while measuring
        recorder = Recorder(db.dsn, batch_size=10**7, flush_interval=3600.0, max_buffer=10**7)
    # every call of ours shadowed (no shadow budget): the caller's cost of a shadowed call
    ro = Rollout.connect(db.dsn, workspace=db.workspace, queue_size=QUEUE_SIZE,
                         recorder=recorder, shadow_workers=v.shadow_workers,
                         shadow_budget=None)
    try:
        ctx = Context(tenant=TENANTS[0])
        d = ro.decide(FLAG, ctx)
        if d.path != "shadow":
            raise RuntimeError(f"{FLAG}: expected 'shadow' for {TENANTS[0]} in {STAGE}, "
                               f"got {d.path} ({d.reason})")
        sides = _sides(ro, flag, lab)
        calls = [(t, {k: x for k, x in p.items() if k != "tenant"}, p) for t, p in plan]
        orders = itertools.cycle(itertools.permutations(sides))
        before = _online_rows(db.dsn)
        _round(ro, sides, calls[:WARM_UP], orders, v)
        lab.matched = lab.mismatched = 0
        rounds = [_round(ro, sides, calls, orders, v) for _ in range(ROUNDS)]
        done = ro.drain(timeout=60) if v.shadow_workers else ro.recorder.flush(60)
        if not done:
            raise RuntimeError("shadow work or observations still pending after 60 s")
        stats = ro.get_stats()
    finally:
        ro.close()
    after = _online_rows(db.dsn)
    return {
        "sides": _summaries(rounds),
        "stats": {k: stats[k] for k in ("decisions", "shadowed", "dropped_queue_full",
                                         "dropped_rate_limited", "background_failures",
                                         "compare_errors", "internal_errors")},
        "recorder": stats["recorder"],
        "shadow_calls": WARM_UP + ROUNDS * len(calls),
        "never_run": stats["queue_size"],
        "observations_recorded": after[0] - before[0],
        "mismatches": after[1] - before[1],
        "laboratory_results": {"matched": lab.matched, "mismatched": lab.mismatched},
    }


def _round(ro: Rollout, sides: dict[str, Side],
           calls: list[tuple[str, dict[str, Any], dict[str, Any]]],
           orders: itertools.cycle[tuple[str, ...]], v: Variant) -> _Round:
    """One pass over ``calls``; the sides take turns block by block, in cycling order.

    After each block of ours the benchmark waits, untimed, until the block's shadow jobs are
    recorded, so none of them runs beside another side's calls.
    """
    r = _Round({name: [] for name in sides}, {name: [] for name in sides})
    stats = ro.recorder.stats
    period = v.period_us * 1000
    for i in range(0, len(calls), BLOCK):
        chunk = calls[i:i + BLOCK]
        for name in next(orders):
            side, wall, cpu = sides[name], r.calls[name], r.cpu[name]
            is_ours = name == "ours"
            expected = stats.recorded
            next_start = perf_counter_ns()
            for tenant, params, with_tenant in chunk:
                args = params if is_ours else with_tenant
                if period:  # untimed; sleeping lets the background take the GIL
                    left = next_start - perf_counter_ns()
                    if left > 0:
                        time.sleep(left / 1e9)
                    next_start += period
                cpu0 = thread_time_ns()  # read outside the wall-clock window
                start = perf_counter_ns()
                side(tenant, args)
                wall.append(perf_counter_ns() - start)
                cpu.append(thread_time_ns() - cpu0)
                if is_ours:
                    expected += RECORDED_PER_JOB
                    if v.wait_for_jobs and v.shadow_workers:
                        _settle(stats, expected, pause=False)
            if is_ours and v.shadow_workers:
                _settle(stats, expected)
    return r


RECORDED_PER_JOB = 2
"""A shadowed read leaves two observations: the pair and the online A/A check."""


def _settle(stats: RecorderStats, expected: int, *, pause: bool = True,
            timeout: float = 30.0) -> None:
    """Wait until ``expected`` observations were recorded, then for the workers to sleep."""
    deadline = time.monotonic() + timeout
    while stats.recorded < expected and time.monotonic() < deadline:
        time.sleep(0.00005)
    if pause:
        time.sleep(SETTLE_S)


def _summaries(rounds: list[_Round]) -> dict[str, Any]:
    """Per side: medians over rounds of per-round statistics; added time against direct."""
    per = {name: [_stats(r.calls[name]) for r in rounds] for name in rounds[0].calls}
    cpu = {name: [statistics.median(r.cpu[name]) / 1e3 for r in rounds] for name in per}
    out: dict[str, Any] = {}
    for name, stats in per.items():
        pooled = _stats([x for r in rounds for x in r.calls[name]])
        s: dict[str, Any] = {
            "median_us": statistics.median(x["median"] for x in stats),
            "p99_us": statistics.median(x["p99"] for x in stats),
            "mean_us": statistics.median(x["mean"] for x in stats),
            "cpu_us": statistics.median(cpu[name]),
            "pooled_median_us": pooled["median"],
            "pooled_p99_us": pooled["p99"],
            "pooled_max_us": pooled["max"],
            "rounds_median_us": [round(x["median"], 1) for x in stats],
            "rounds_p99_us": [round(x["p99"], 1) for x in stats],
        }
        if name != "direct":
            base = per["direct"]
            s["added_median_us"] = statistics.median(
                x["median"] - b["median"] for x, b in zip(stats, base, strict=True))
            s["added_p99_us"] = statistics.median(
                x["p99"] - b["p99"] for x, b in zip(stats, base, strict=True))
            s["added_cpu_us"] = statistics.median(
                x - b for x, b in zip(cpu[name], cpu["direct"], strict=True))
            s["ratio"] = statistics.median(
                x["median"] / b["median"] for x, b in zip(stats, base, strict=True))
            s["paired_added_median_us"] = statistics.median(
                (x - b) / 1e3 for r in rounds
                for x, b in zip(r.calls[name], r.calls["direct"], strict=True))
        out[name] = s
    return out


def _stats(ns: list[int]) -> dict[str, float]:
    ordered = sorted(ns)
    pos = (len(ordered) - 1) * 0.99
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return {
        "median": statistics.median(ordered) / 1e3,
        "p99": (ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)) / 1e3,
        "mean": statistics.fmean(ordered) / 1e3,
        "max": ordered[-1] / 1e3,
    }


def _online_rows(dsn: str) -> tuple[int, int]:
    """Online observations of the flag in the store, and how many of them mismatched."""
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE matched IS FALSE)"
            " FROM rollout.observations WHERE flag = %s AND source = 'online'",
            [FLAG]).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _draw_plan(flag: Flag, dsn: str) -> Plan:
    """``SAMPLES`` parameter sets over ``TENANTS``, shuffled, as ``run_shadow`` draws them."""
    with connect(dsn, autocommit=True) as conn:
        plan = draw_plan(flag, conn, TENANTS, SAMPLES, random.Random(SEED))
    if len(plan) != SAMPLES:
        raise RuntimeError(f"{flag.name}: params.sample returned no rows for a tenant")
    return [(str(tenant), params) for tenant, params in plan]  # every tenant here is named
