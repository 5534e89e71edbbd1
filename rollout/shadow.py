"""Offline shadow run: draw parameter sets per tenant, run both paths in random order, record."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from .compare import compare
from .connection import redact
from .errors import InputError
from .execute import Limits, apply_limits, execute
from .flags import Flag
from .observations import Observation, PathResult
from .store import Store
from .targeting import Context

BATCH = 500
"""Observations per COPY batch."""

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


def target_tenants(flag: Flag, stage: str, conn: psycopg.Connection[Any]) -> list[str | None]:
    """Tenants the stage shadows or serves; ``"*"`` and percents resolve via ``params.tenants``."""
    current = flag.stage(stage)
    if current is None:
        raise _unknown_stage(flag, stage)
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
        rows = _fetch(conn, flag.tenants_sql, {}, flag, "params.tenants")
        candidates = sorted({str(r[0]) for r in rows if r and r[0] is not None})
    chosen: list[str | None] = [
        t for t in candidates if flag.decide(Context(tenant=t), stage).path != "legacy"]
    if not chosen:
        raise InputError(f"stage '{stage}' of flag '{flag.name}' targets no tenant; "
                         "name one with --tenant")
    return chosen


def draw_params(flag: Flag, conn: psycopg.Connection[Any], tenant: str | None, n: int,
                rng: random.Random) -> list[dict[str, Any]]:
    """``n`` parameter sets for one tenant from ``params.sample`` (cycled if it returns fewer)."""
    base: dict[str, Any] = {"tenant": tenant}
    if flag.sample_sql is None:
        return [dict(base) for _ in range(n)]
    with conn.cursor() as cur:
        rows = _fetch(conn, flag.sample_sql, {"tenant": tenant, "limit": n}, flag, "params.sample",
                      cur=cur)
        names = [d.name for d in cur.description or []]
    if not rows:
        return []
    drawn = [{**base, **dict(zip(names, row, strict=True))} for row in rows]
    while len(drawn) < n:
        drawn.append(dict(rng.choice(drawn[: len(rows)])))
    return drawn[:n]


def run_shadow(
    flag: Flag,
    target: psycopg.Connection[Any],
    store: Store,
    *,
    stage: str,
    tenants: Sequence[str | None],
    samples: int,
    dsn: str,
    limits: Limits | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Run ``samples`` paired executions spread over ``tenants`` and record every observation."""
    if flag.stage(stage) is None:
        raise _unknown_stage(flag, stage)
    if samples < 1:
        raise InputError("--samples must be at least 1")
    limits = limits or Limits()
    rng = random.Random(seed)
    per_tenant = _split(samples, len(tenants))
    plan: list[tuple[str | None, dict[str, Any]]] = []
    for tenant, n in zip(tenants, per_tenant, strict=True):
        plan.extend((tenant, p) for p in draw_params(flag, target, tenant, n, rng))
    if not plan:
        raise InputError(f"params.sample of flag '{flag.name}' returned no rows for "
                         f"tenant(s) {', '.join(str(t) for t in tenants)}")
    rng.shuffle(plan)
    server_version = str(target.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    run_id = store.start_run(flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
                             tenants=list(tenants), requested=samples, target=redact(dsn),
                             server_version=f"PostgreSQL {server_version}")
    summary = RunSummary(run_id, flag.name, stage, list(tenants))
    try:
        apply_limits(target, limits)
        _warm_up(flag, target, plan[0][1])
        batch: list[Observation] = []
        for done, (tenant, params) in enumerate(plan, 1):
            obs = run_pair(flag, target, stage, tenant, params, rng, run_id)
            batch.append(obs)
            summary.samples += 1
            summary.mismatches += obs.matched is False
            summary.legacy_failures += obs.legacy_failed
            summary.new_failures += obs.new_failed
            summary.by_tenant[tenant] = summary.by_tenant.get(tenant, 0) + 1
            if len(batch) >= BATCH:
                store.write_observations(batch)
                batch.clear()
            if progress is not None:
                progress(done, len(plan))
        store.write_observations(batch)
    except BaseException:
        store.finish_run(run_id, summary.samples, status="failed")
        raise
    store.finish_run(run_id, summary.samples)
    return summary


def run_pair(flag: Flag, conn: psycopg.Connection[Any], stage: str, tenant: str | None,
             params: dict[str, Any], rng: random.Random, run_id: uuid.UUID) -> Observation:
    """Both paths once, in random order, compared: one observation."""
    write = flag.kind == "write"
    first = rng.choice(("legacy", "new"))
    results = {}
    for path in (first, "new" if first == "legacy" else "legacy"):
        query = flag.legacy.sql if path == "legacy" else flag.new.sql
        results[path] = _run(flag, conn, query, params, write, path)
    (legacy, legacy_set), (new, new_set) = results["legacy"], results["new"]
    matched: bool | None = None
    diff = None
    if legacy_set is not None and new_set is not None:
        cmp = compare(legacy_set, new_set, flag.compare)
        matched = cmp.matched
        diff = None if matched else cmp.diffs
    return Observation(
        observed_at=datetime.now(UTC), flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
        tenant=tenant, decision="shadow", first_path=first,
        params={k: _jsonable(v) for k, v in params.items() if k != "tenant"},
        legacy_ns=legacy.ns, new_ns=new.ns, legacy_rows=legacy.row_count,
        new_rows=new.row_count, legacy_sqlstate=legacy.sqlstate, new_sqlstate=new.sqlstate,
        legacy_error=legacy.error, new_error=new.error, matched=matched, diff=diff,
        run_id=run_id,
    )


def _run(flag: Flag, conn: psycopg.Connection[Any], query: str, params: dict[str, Any],
         write: bool, path: str) -> tuple[PathResult, Any]:
    try:
        return execute(conn, query, params, write=write)
    except psycopg.Error as exc:
        raise InputError(f"{flag.file}: queries.{path}: {_first_line(exc)}") from None


def _warm_up(flag: Flag, conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """One discarded execution per path: caches and plans settle, bad SQL fails early."""
    for path, query in (("legacy", flag.legacy.sql), ("new", flag.new.sql)):
        result, _ = _run(flag, conn, query, params, flag.kind == "write", path)
        if result.sqlstate is not None and result.sqlstate.startswith("42"):
            # syntax error, undefined table or column, missing privilege: the SQL is wrong
            raise InputError(f"{flag.file}: queries.{path}: {result.error}")


def _fetch(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], flag: Flag,
           key: str, cur: psycopg.Cursor[Any] | None = None) -> list[tuple[Any, ...]]:
    own = cur is None
    cursor = cur if cur is not None else conn.cursor()
    try:
        with conn.transaction():
            cursor.execute(query.encode(), params)
            return cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as exc:
        raise InputError(f"{flag.file}: {key}: {_first_line(exc)}") from None
    finally:
        if own:
            cursor.close()


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _unknown_stage(flag: Flag, stage: str) -> InputError:
    names = ", ".join(s.name for s in flag.stages)
    return InputError(f"flag '{flag.name}' has no stage '{stage}' (stages: {names})")


def _jsonable(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
