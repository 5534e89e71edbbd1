"""Offline shadow run: draw parameter sets per tenant, run both paths in ABBA order, record."""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from ..errors import ConnectionFailed, InputError, StoreStalled, interruption
from ..flags.model import Flag
from ..flags.targeting import Context
from ..store.connection import connect, redact
from ..store.observations import Observation, PathResult, PlanSample
from ..store.store import Store
from . import deadline
from .checksum import checksum_compare
from .compare import MASK, Comparison, compare
from .execute import Limits, bounded, cancel_of, execute, fetch, guard
from .locks import LockWaitSampler
from .perturb import DEFAULT_BUDGET, DEFAULT_SAMPLES, choose, perturb_sample
from .perturb import write as write_perturbations
from .plans import explain, generic_check, write_generic_checks
from .streaming import stream_pair

BATCH = 500
"""Observations per COPY batch."""
STORE_TIMEOUT_S = 30.0
"""Default client-side deadline of each store write of a run (``RunOptions.store_timeout_s``)."""

Progress = Callable[[int, int], None]


@dataclass
class RunSummary:
    run_id: uuid.UUID
    flag: str
    stage: str
    tenants: list[str | None]
    samples: int = 0
    mismatches: int = 0
    legacy_failures: int = 0
    new_failures: int = 0
    by_tenant: dict[str | None, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per phase: ``pairs`` (the timed executions), ``plans`` (EXPLAIN and
    generic-plan checks), ``perturbation`` (apart from latency, never mixed into it)."""
    nondeterministic: dict[str, int] = field(default_factory=dict)
    """Parameter sets whose result changed under another plan, per path."""

    def add(self, obs: Observation) -> None:
        self.samples += 1
        self.mismatches += obs.matched is False
        self.legacy_failures += obs.legacy_failed
        self.new_failures += obs.new_failed
        self.by_tenant[obs.tenant] = self.by_tenant.get(obs.tenant, 0) + 1


def fetch_tenants(conn: psycopg.Connection[Any], flag: Flag, limits: Limits | None = None
                  ) -> list[str]:
    """Every tenant ``params.tenants`` lists, sorted, run like any execution (one statement,
    READ ONLY, rolled back, under timeouts and the deadline); [] without the query."""
    if flag.tenants_sql is None:
        return []
    rows = _fetch(conn, flag.tenants_sql, {}, flag, "params.tenants", limits)[1]
    return sorted({str(r[0]) for r in rows if r and r[0] is not None})


def target_tenants(flag: Flag, stage: str, conn: psycopg.Connection[Any],
                   limits: Limits | None = None) -> list[str | None]:
    """Tenants the stage shadows or serves; ``"*"`` and percents resolve via ``params.tenants``."""
    current = flag.stage(stage)
    if current is None:
        raise flag.unknown_stage(stage)
    targets = [t for t in (current.serve, current.shadow) if t is not None]
    listed: set[str] = set()
    open_ended = False
    for t in targets:
        if t.tenants is not None:
            listed |= t.tenants
        if t.all_tenants or (t.tenants is None and t.percent is not None):
            open_ended = True
    candidates: list[str] = sorted(listed)
    if open_ended:
        if flag.tenants_sql is None:
            return [None]
        candidates = fetch_tenants(conn, flag, limits)
    chosen: list[str | None] = [
        t for t in candidates if flag.decide(Context(tenant=t), stage).path != "legacy"]
    if not chosen:
        raise InputError(f"stage '{stage}' of flag '{flag.name}' targets no tenant; "
                         "name one with --tenant")
    return chosen


def draw_params(flag: Flag, conn: psycopg.Connection[Any], tenant: str | None, n: int,
                rng: random.Random, limits: Limits | None = None) -> list[dict[str, Any]]:
    """``n`` parameter sets for one tenant from ``params.sample`` (cycled if it returns fewer)."""
    base: dict[str, Any] = {"tenant": tenant}
    if flag.sample_sql is None:
        return [dict(base) for _ in range(n)]
    names, rows = _fetch(conn, flag.sample_sql, {"tenant": tenant, "limit": n}, flag,
                         "params.sample", limits)
    if not rows:
        return []
    drawn = [{**base, **dict(zip(names, row, strict=True))} for row in rows]
    while len(drawn) < n:
        drawn.append(dict(rng.choice(drawn[: len(rows)])))
    return drawn[:n]


@dataclass(frozen=True)
class RunOptions:
    """How an offline run measures, beside what it compares."""

    limits: Limits = field(default_factory=Limits)
    seed: int | None = None
    aa: bool = False
    """Noise calibration: run legacy against itself (Diffy's second legacy run)."""
    lock_interval: float | None = 0.01
    """Seconds between pg_locks samples; None turns lock-wait sampling off."""
    lock_captures: int = 5
    """Pairs per run whose held locks are listed (an extra query each, outside timing)."""
    plan_samples: int = 10
    """Parameter sets per path explained with EXPLAIN (ANALYZE, BUFFERS)."""
    generic_tenants: int = 3
    """Largest tenants (plus the smallest) checked under custom and generic plans."""
    generic_runs: int = 5
    """Runs of each mode per generic-plan check (the gate judges their medians)."""
    perturb_samples: int = DEFAULT_SAMPLES
    """Parameter sets run again under planner settings that force other plans
    (``rollout.run.perturb``); 0 turns plan perturbation off."""
    perturb_budget: float | None = DEFAULT_BUDGET
    """Perturbation time as a share of the timed pairs' time, beyond which no further
    planner setting starts (the first parameter set always runs in full); None: no budget."""
    store_timeout_s: float = STORE_TIMEOUT_S
    """Client-side deadline of each store write during the run (start, observation batches,
    plans, finish): past it the write is cancelled, ``limits.margin_ms`` later its connection
    is cut, and the run stops (``StoreStalled``)."""



@contextlib.contextmanager
def store_deadline(store: Store, opts: RunOptions, what: str) -> Iterator[None]:
    """Bound one store write by ``opts.store_timeout_s``; a write the deadline cut short
    raises ``StoreStalled`` naming ``what``."""
    conn = store.conn
    if conn.closed:
        yield  # the write fails on its own, at once
        return
    grace = opts.limits.grace_s
    with deadline.watch(cancel_of(conn, grace), conn.pgconn.socket, opts.store_timeout_s,
                        grace, alive=lambda: not conn.closed) as watch:
        try:
            yield
        except psycopg.Error:
            if watch.expired:
                raise StoreStalled(f"the store did not answer within {opts.store_timeout_s:g} s "
                                   f"({what})") from None
            raise


Plan = list[tuple[str | None, dict[str, Any]]]


def draw_plan(flag: Flag, conn: psycopg.Connection[Any], tenants: Sequence[str | None],
              samples: int, rng: random.Random, limits: Limits | None = None) -> Plan:
    """``samples`` (tenant, parameters) pairs spread evenly over ``tenants``, shuffled: the
    order a run executes them in. A tenant whose sample query returns nothing adds none."""
    plan: Plan = []
    for tenant, n in zip(tenants, _split(samples, len(tenants)), strict=True):
        plan.extend((tenant, p) for p in draw_params(flag, conn, tenant, n, rng, limits))
    rng.shuffle(plan)
    return plan


def run_shadow(
    flag: Flag,
    target: psycopg.Connection[Any],
    store: Store,
    *,
    stage: str,
    tenants: Sequence[str | None],
    samples: int,
    dsn: str,
    options: RunOptions | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Run ``samples`` paired executions spread over ``tenants`` and record every observation.

    Pairs run in counterbalanced order (legacy first, then new first, alternating: ABBA),
    after one discarded warm-up per path. Then a sample of both paths is explained and the
    generic-plan check runs. Everything lands in the store under one run id.
    """
    if flag.stage(stage) is None:
        raise flag.unknown_stage(stage)
    if samples < 1:
        raise InputError("--samples must be at least 1")
    opts = options or RunOptions()
    rng = random.Random(opts.seed)
    guard(target)  # any flag SQL on this connection: extended protocol, one statement
    plan = draw_plan(flag, target, tenants, samples, rng, opts.limits)
    if not plan:
        raise InputError(f"params.sample of flag '{flag.name}' returned no rows for "
                         f"tenant(s) {', '.join(str(t) for t in tenants)}")
    server_version = target.info.parameter_status("server_version") or "unknown"
    with store_deadline(store, opts, "starting the run"):
        run_id = store.start_run(flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
                                 tenants=list(tenants), requested=samples, target=redact(dsn),
                                 server_version=f"PostgreSQL {server_version}",
                                 mode="aa" if opts.aa else "ab")
    summary = RunSummary(run_id, flag.name, stage, list(tenants))
    large = flag.compare.stream or flag.compare.checksum
    sampler = None
    new_conn = None
    try:
        sampler = (LockWaitSampler(dsn, opts.lock_interval).start()
                   if opts.lock_interval and not large else None)
        new_conn = guard(connect(dsn, autocommit=True)) if large else None
        _warm_up(flag, target, plan[0][1], opts.limits)
        before = _stats(flag, target, opts.limits)
        started = time.perf_counter()
        batch: list[Observation] = []
        for i, (tenant, params) in enumerate(plan):
            obs = run_pair(flag, target, stage, tenant, params, i, run_id, aa=opts.aa,
                           sampler=sampler, capture_locks=i < opts.lock_captures and not large,
                           new_conn=new_conn, limits=opts.limits)
            batch.append(obs)
            summary.add(obs)
            if len(batch) >= BATCH or _lost(target, new_conn):
                with store_deadline(store, opts, "writing observations"):
                    store.write_observations(batch)
                batch.clear()
            if _lost(target, new_conn):
                # The target stopped answering (the deadline cut the connection): stop here
                # rather than wait a deadline per remaining execution.
                raise ConnectionFailed(
                    f"the target stopped answering during flag '{flag.name}' (execution "
                    f"{i + 1} of {len(plan)}: {obs.legacy_error or obs.new_error}); "
                    f"run {run_id} marked failed")
            if progress is not None:
                progress(i + 1, len(plan))
        with store_deadline(store, opts, "writing observations"):
            store.write_observations(batch)
        summary.timings["pairs"] = time.perf_counter() - started
        db_stats = database_delta(before, _stats(flag, target, opts.limits))
        if not opts.aa and not large:
            started = time.perf_counter()
            _plans(flag, target, store, run_id, plan, opts)
            summary.timings["plans"] = time.perf_counter() - started
            if opts.perturb_samples > 0:
                started = time.perf_counter()
                _perturb(flag, target, store, run_id, plan, opts, summary)
                summary.timings["perturbation"] = time.perf_counter() - started
        with store_deadline(store, opts, "finishing the run"):
            store.finish_run(run_id, summary.samples, db_stats=db_stats)
    except StoreStalled as exc:
        # The stalled thing is the store: one bounded attempt to mark the run, then say so.
        if _mark_failed(store, run_id, summary.samples, exc, opts):
            raise StoreStalled(f"{exc}; run {run_id} marked failed") from None
        raise StoreStalled(f"{exc}; run {run_id} could not be marked failed and stays "
                           f"'running' (reports show it incomplete)") from None
    except BaseException as exc:
        _mark_failed(store, run_id, summary.samples, exc, opts)
        raise
    finally:
        if sampler is not None:
            sampler.close()
        if new_conn is not None:
            new_conn.close()
    return summary


def _lost(target: psycopg.Connection[Any], other: psycopg.Connection[Any] | None) -> bool:
    return target.closed or (other is not None and other.closed)


def _mark_failed(store: Store, run_id: uuid.UUID, samples: int, exc: BaseException,
                 opts: RunOptions) -> bool:
    """Mark a run cut short ``failed`` with its reason, under the store deadline; True when
    it was. If the store itself is gone (its server stopped, its connection cut at the
    deadline) the original error is what the user must see: this one is dropped."""
    if store.conn.closed:
        return False
    with contextlib.suppress(Exception):  # the error being raised matters more than this one
        with store_deadline(store, opts, "marking the run failed"):
            if store.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                store.conn.rollback()  # an interrupted COPY or batch left its transaction open
            store.finish_run(run_id, samples, status="failed", reason=interruption(exc))
        return True
    return False


def run_pair(flag: Flag, conn: psycopg.Connection[Any], stage: str, tenant: str | None,
             params: dict[str, Any], index: int, run_id: uuid.UUID, *, aa: bool = False,
             sampler: LockWaitSampler | None = None, capture_locks: bool = False,
             new_conn: psycopg.Connection[Any] | None = None,
             limits: Limits | None = None) -> Observation:
    """Both paths once (legacy twice with ``aa``), ordered ABBA by ``index``, compared.

    With ``compare.stream`` or ``compare.checksum`` both paths run at once, the new one on
    ``new_conn``, and results are compared without being held in memory.
    """
    write = flag.kind == "write"
    first = "legacy" if index % 2 == 0 else "new"
    new_sql = flag.legacy.sql if aa else flag.new.sql
    matched: bool | None = None
    diff = None
    rules = flag.compare
    if (rules.stream or rules.checksum) and new_conn is not None:
        legacy, new, cmp = _large(flag, conn, new_conn, new_sql, params, limits or Limits())
        if not legacy.failed and not new.failed:
            matched, diff = cmp.matched, (None if cmp.matched else cmp.diffs)
    else:
        results = {}
        for path in (first, "new" if first == "legacy" else "legacy"):
            query = flag.legacy.sql if path == "legacy" else new_sql
            results[path] = _run(flag, conn, query, params, write, path, sampler=sampler,
                                 execution=2 * index + (path == "new"),
                                 capture_locks=capture_locks, limits=limits)
        (legacy, legacy_set), (new, new_set) = results["legacy"], results["new"]
        if legacy_set is not None and new_set is not None:
            cmp = compare(legacy_set, new_set, rules)
            matched = cmp.matched
            diff = None if matched else cmp.diffs
    locks = {path: {"held": [list(x) for x in r.locks or ()],
                    "waits": list(r.waits or ())}
             for path, r in (("legacy", legacy), ("new", new)) if r.locks or r.waits}
    return Observation(
        observed_at=datetime.now(UTC), flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
        tenant=tenant, decision="shadow", first_path=first,
        params={k: MASK if k in rules.sensitive else _jsonable(v)
                for k, v in params.items() if k != "tenant"},
        legacy_ns=legacy.ns, new_ns=new.ns, legacy_rows=legacy.row_count,
        new_rows=new.row_count, legacy_sqlstate=legacy.sqlstate, new_sqlstate=new.sqlstate,
        legacy_error=legacy.error, new_error=new.error, matched=matched, diff=diff,
        run_id=run_id, mode="aa" if aa else "ab", legacy_lock_wait_ns=legacy.lock_wait_ns,
        new_lock_wait_ns=new.lock_wait_ns, locks=locks or None,
    )


def _large(flag: Flag, conn: psycopg.Connection[Any], new_conn: psycopg.Connection[Any],
           new_sql: str, params: dict[str, Any], limits: Limits
           ) -> tuple[PathResult, PathResult, Comparison]:
    """Both paths of a large result at once: checksum first if asked, else streaming."""
    if flag.compare.checksum:
        start = time.perf_counter_ns()
        try:
            result = checksum_compare(conn, new_conn, flag.legacy.sql, new_sql, params,
                                      rules=flag.compare, limits=limits)
        except psycopg.Error as exc:
            raise InputError(f"{flag.file}: compare.checksum: {_first_line(exc)}") from None
        elapsed = time.perf_counter_ns() - start
        # Both sides were checksummed concurrently: each path's latency is the whole
        # comparison; row counts come from the checksums.
        return (PathResult(elapsed, result.legacy.rows), PathResult(elapsed, result.new.rows),
                result.comparison)
    return stream_pair(conn, new_conn, flag.legacy.sql, new_sql, params, rules=flag.compare,
                       write=flag.kind == "write", limits=limits)


def database_stats(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Counters of pg_stat_database for the current database (this session's own pending
    counters flushed first)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    with conn.transaction():
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, deadlocks, conflicts, temp_files, blks_read,"
            " blks_hit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    names = ("xact_commit", "xact_rollback", "deadlocks", "conflicts", "temp_files",
             "blks_read", "blks_hit")
    return dict(zip(names, (int(v or 0) for v in row or ()), strict=False))


def _stats(flag: Flag, target: psycopg.Connection[Any], limits: Limits) -> dict[str, int]:
    """``database_stats`` of the target under the client-side deadline."""
    with bounded(target, limits) as watch:
        try:
            return database_stats(target)
        except psycopg.Error as exc:
            if not watch.expired:
                raise
            raise ConnectionFailed(f"the target stopped answering during flag '{flag.name}' "
                                   f"(database statistics: {_first_line(exc)})") from None


def database_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """Deltas over a run: every session's counters, this run's among them."""
    return {"before": before, "after": after,
            "delta": {k: after.get(k, 0) - v for k, v in before.items()}}


def _plans(flag: Flag, conn: psycopg.Connection[Any], store: Store, run_id: uuid.UUID,
           plan: Plan, opts: RunOptions) -> None:
    write = flag.kind == "write"
    samples = []
    for tenant, params in plan[: opts.plan_samples]:
        for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql)):
            sample = explain(conn, query, params, write=write, path=path, tenant=tenant,
                             limits=opts.limits)
            if sample is not None:
                samples.append(sample)
    with store_deadline(store, opts, "writing plans"):
        store.write_plans(run_id, samples)
    checks = []
    for tenant, params in _generic_targets(plan, samples, opts.generic_tenants):
        for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql)):
            check = generic_check(conn, query, params, write=write, path=path, tenant=tenant,
                                  limits=opts.limits, runs=opts.generic_runs)
            if check is not None:
                checks.append(check)
    with store_deadline(store, opts, "writing generic-plan checks"):
        write_generic_checks(store.conn, run_id, checks)


def _perturb(flag: Flag, conn: psycopg.Connection[Any], store: Store, run_id: uuid.UUID,
             plan: Plan, opts: RunOptions, summary: RunSummary) -> None:
    """Plan perturbation (``rollout.run.perturb``) of ``opts.perturb_samples`` parameter sets,
    after the timed pairs: each path under other planner settings, compared with itself."""
    rows = []
    budget = (None if opts.perturb_budget is None
              else opts.perturb_budget * summary.timings.get("pairs", 0.0))
    start = time.perf_counter()

    def over() -> bool:
        return budget is not None and time.perf_counter() - start > budget

    for i, (tenant, params) in enumerate(choose(plan, opts.perturb_samples)):
        if i > 0 and over():
            break
        rows.extend(perturb_sample(flag, conn, i, tenant, params, limits=opts.limits,
                                   over=over if i > 0 else None))
        if conn.closed:
            raise ConnectionFailed(f"the target stopped answering during the plan "
                                   f"perturbation of flag '{flag.name}'")
    for path in ("legacy", "new"):
        summary.nondeterministic[path] = len({r.sample for r in rows
                                              if r.path == path and r.changed})
    with store_deadline(store, opts, "writing plan perturbations"):
        write_perturbations(store.conn, run_id, rows)


def _generic_targets(plan: list[tuple[str | None, dict[str, Any]]], samples: list[PlanSample],
                     largest: int) -> list[tuple[str | None, dict[str, Any]]]:
    """One parameter set for each of the largest tenants and the smallest, by the buffers
    the legacy path touched for them (the noise-free size figure at hand)."""
    size: dict[str | None, int] = {}
    for s in samples:
        if s.path == "legacy":
            size[s.tenant] = max(size.get(s.tenant, 0), s.buffers)
    first: dict[str | None, dict[str, Any]] = {}
    for tenant, params in plan:
        first.setdefault(tenant, params)
    ranked = sorted(first, key=lambda t: size.get(t, 0), reverse=True)
    chosen = ranked[:largest] + ([ranked[-1]] if len(ranked) > largest else [])
    return [(t, first[t]) for t in chosen]


def _run(flag: Flag, conn: psycopg.Connection[Any], query: str, params: dict[str, Any],
         write: bool, path: str, *, sampler: LockWaitSampler | None = None, execution: int = 0,
         capture_locks: bool = False, limits: Limits | None = None) -> tuple[PathResult, Any]:
    try:
        return execute(conn, query, params, write=write, sampler=sampler, execution=execution,
                       capture_locks=capture_locks, isolation=flag.isolation, limits=limits)
    except psycopg.Error as exc:
        raise InputError(f"{flag.file}: queries.{path}: {_first_line(exc)}") from None


def _warm_up(flag: Flag, conn: psycopg.Connection[Any], params: dict[str, Any],
             limits: Limits | None = None) -> None:
    """One discarded execution per path: caches and plans settle, bad SQL fails early."""
    for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql)):
        result, _ = _run(flag, conn, query, params, flag.kind == "write", path, limits=limits)
        if result.sqlstate is not None and result.sqlstate.startswith("42"):
            # syntax error, undefined table or column, missing privilege: the SQL is wrong
            raise InputError(f"{flag.file}: queries.{path}: {result.error}")
        if conn.closed:
            raise ConnectionFailed(f"the target stopped answering during the warm-up of flag "
                                   f"'{flag.name}': {result.error}")


def _fetch(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], flag: Flag,
           key: str, limits: Limits | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A ``params`` query: column names and rows; its failure is the flag file's error."""
    try:
        return fetch(conn, query, params, limits)
    except psycopg.Error as exc:
        raise InputError(f"{flag.file}: {key}: {_first_line(exc)}") from None


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _jsonable(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
