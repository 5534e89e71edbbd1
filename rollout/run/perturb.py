"""Plan perturbation: each path run again under planner settings that force other plans.

A result that matches today only because of today's plan (ties broken by an index's order, a
``DISTINCT ON`` or ``LIMIT`` whose ``ORDER BY`` does not determine which row wins) passes any
number of shadow samples. For a handful of parameter sets the offline run executes each path
once more as it is (the repeat: a result that changes even under the same plan is volatile,
not plan-dependent), then once under each of ``SETTINGS``, with ``SET LOCAL`` inside the
execution's own transaction (``execute.execute``: one statement, read-only for reads, always
rolled back), and compares each path with itself: under the flag's compare rules (what the
gate judges) and strictly (what the report shows). Executions are timed apart and never mixed
into latency. Rows land in ``rollout.perturbations`` (migration 0010).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..flags.model import CompareRules, Flag
from .compare import MASK, compare
from .execute import Limits, PlannerSettings, execute

DEFAULT_SAMPLES = 5
"""Parameter sets per offline run that are perturbed (``RunOptions.perturb_samples``)."""

SAME_PLAN = "same plan"
"""The repeat under the session's own settings: tells a volatile result from a
plan-dependent one."""


@dataclass(frozen=True)
class Perturbation:
    """Planner settings that push the planner to another plan, and their name in words."""

    name: str
    settings: PlannerSettings

    @property
    def shown(self) -> str:
        return "; ".join(f"SET LOCAL {k} = {v}" for k, v in self.settings)


SETTINGS: tuple[Perturbation, ...] = (
    Perturbation("no index scans", (("enable_indexscan", "off"),
                                    ("enable_indexonlyscan", "off"))),
    Perturbation("parallel plans", (("max_parallel_workers_per_gather", "4"),
                                    ("parallel_setup_cost", "0"),
                                    ("parallel_tuple_cost", "0"),
                                    ("min_parallel_table_scan_size", "0"),
                                    ("min_parallel_index_scan_size", "0"))),
    Perturbation("no explicit sorts", (("enable_sort", "off"),
                                       ("enable_incremental_sort", "off"))),
    Perturbation("no hash aggregation or hash joins", (("enable_hashagg", "off"),
                                                       ("enable_hashjoin", "off"))),
    Perturbation("small work_mem", (("work_mem", "64kB"),)),
    Perturbation("no bitmap scans", (("enable_bitmapscan", "off"),)),
    Perturbation("no sequential scans", (("enable_seqscan", "off"),)),
)
"""What each perturbed execution sets, the most revealing first (a time budget keeps them).
Each is rolled back with its transaction."""

DEFAULT_BUDGET = 0.20
"""Perturbation time allowed per run, as a share of the run's timed pairs
(``RunOptions.perturb_budget``): beyond it no further setting starts. The first parameter
set always runs in full."""


@dataclass(frozen=True)
class Perturbed:
    """One path's result under one perturbation, compared with the same path's first run."""

    sample: int
    path: str
    tenant: str | None
    params: dict[str, Any]
    setting: str
    settings: dict[str, str]
    changed: bool | None
    """Differs from the first run under the flag's compare rules; None when a run failed."""
    strict_changed: bool | None
    """Differs in any way (row order included)."""
    diff: list[dict[str, Any]] | None
    rows: int | None
    sqlstate: str | None
    error: str | None
    elapsed_ns: int
    """Wall time of the perturbed execution (its SET LOCAL included)."""


def strict_rules(rules: CompareRules) -> CompareRules:
    """The flag's rules with row order strict: ``order: ignore`` or ``key`` still see a
    reordered result, and the report says whether the rules care."""
    return replace(rules, order="strict", key=())


def perturb_sample(flag: Flag, conn: psycopg.Connection[Any], sample: int, tenant: str | None,
                   params: dict[str, Any], *, limits: Limits | None = None,
                   settings: Sequence[Perturbation] = SETTINGS,
                   over: Callable[[], bool] | None = None) -> list[Perturbed]:
    """Both paths of one parameter set: a first run, the repeat, then each perturbation.
    Never raises a database error: a failed execution is recorded with its SQLSTATE (a
    forced plan may hit the statement timeout), and compared with nothing. ``over`` says
    when the time budget is spent: the sample stops before the next setting."""
    out: list[Perturbed] = []
    write = flag.kind == "write"
    rules = flag.compare
    shown = {k: MASK if k in rules.sensitive else _jsonable(v)
             for k, v in params.items() if k != "tenant"}
    runs = (Perturbation(SAME_PLAN, ()), *settings)
    paths = (("legacy", flag.legacy.sql), ("new", flag.new.sql))
    # prepare=False throughout: a statement psycopg prepared keeps its cached plan whatever
    # the planner settings say, so a perturbed run would not be replanned
    bases = {path: execute(conn, query, params, write=write, limits=limits,
                           isolation=flag.isolation, prepare=False) for path, query in paths}
    for p in runs:  # both paths under each setting: a sample cut short still pairs them
        if conn.closed or (over is not None and over()):
            return out
        for path, query in paths:
            base, base_set = bases[path]
            start = time.perf_counter_ns()
            result, got = execute(conn, query, params, write=write, limits=limits,
                                  isolation=flag.isolation, settings=p.settings,
                                  prepare=False)
            elapsed = time.perf_counter_ns() - start
            changed = strict = None
            diff = None
            if base_set is not None and got is not None:
                judged = compare(base_set, got, rules)
                exact = compare(base_set, got, strict_rules(rules))
                changed, strict = not judged.matched, not exact.matched
                shown_diff = judged if changed else exact
                diff = None if shown_diff.matched else shown_diff.diffs
            failed = base if base.failed else result
            out.append(Perturbed(
                sample, path, tenant, shown, p.name, dict(p.settings), changed, strict, diff,
                result.row_count, failed.sqlstate if failed.failed else None,
                failed.error if failed.failed else None, elapsed))
    return out


def choose(plan: Sequence[tuple[str | None, dict[str, Any]]], n: int
           ) -> list[tuple[str | None, dict[str, Any]]]:
    """``n`` parameter sets of a run's plan, spread over its tenants (round robin in the
    run's own shuffled order), so one tenant's data does not decide alone."""
    by_tenant: dict[str | None, list[dict[str, Any]]] = {}
    for tenant, params in plan:
        by_tenant.setdefault(tenant, []).append(params)
    out: list[tuple[str | None, dict[str, Any]]] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_tenant.values()):
        for tenant, sets in by_tenant.items():
            if depth < len(sets) and len(out) < n:
                out.append((tenant, sets[depth]))
        depth += 1
    return out


# -- the store ----------------------------------------------------------------------------------


def write(conn: psycopg.Connection[Any], run_id: uuid.UUID, rows: Sequence[Perturbed]) -> None:
    """Record a run's perturbed executions (``rollout.perturbations``, migration 0010)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rollout.perturbations (run_id, sample, path, tenant, params, setting,"
            " settings, changed, strict_changed, diff, rows, sqlstate, error, elapsed_ns)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(run_id, r.sample, r.path, r.tenant, Jsonb(r.params), r.setting, Jsonb(r.settings),
              r.changed, r.strict_changed, Jsonb(r.diff) if r.diff is not None else None,
              r.rows, r.sqlstate, (r.error or "")[:500] or None, r.elapsed_ns) for r in rows])


def read(conn: psycopg.Connection[Any], flag: str, stage: str, sql_hash: str
         ) -> list[dict[str, Any]]:
    """Every perturbed execution of a stage's A/B runs, as ``perturbation_summary`` reads
    them (``run_id`` as text)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT p.run_id::text AS run_id, p.sample, p.path, p.tenant, p.params, p.setting,"
            " p.settings, p.changed, p.strict_changed, p.diff, p.rows, p.sqlstate, p.error,"
            " p.elapsed_ns FROM rollout.perturbations p JOIN rollout.runs r USING (run_id)"
            " WHERE r.flag = %s AND r.stage = %s AND r.sql_hash = %s AND r.mode = 'ab'"
            " ORDER BY p.id", [flag, stage, sql_hash])
        return cur.fetchall()


def as_rows(perturbed: Sequence[Perturbed], run_id: str = "") -> list[dict[str, Any]]:
    """Perturbed executions as the store returns them (for a summary without a store)."""
    return [{"run_id": run_id, "sample": p.sample, "path": p.path, "tenant": p.tenant,
             "params": p.params, "setting": p.setting, "settings": p.settings,
             "changed": p.changed, "strict_changed": p.strict_changed, "diff": p.diff,
             "rows": p.rows, "sqlstate": p.sqlstate, "error": p.error,
             "elapsed_ns": p.elapsed_ns} for p in perturbed]


def _jsonable(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)
