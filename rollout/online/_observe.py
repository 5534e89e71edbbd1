"""Online observations from a served request and its background job: the pair, the online
A/A check, and what a request that ran alone leaves behind. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from ..flags.model import Flag
from ..flags.targeting import Context, Decision
from ..run.compare import MASK, compare
from ..run.results import ResultSet
from ..store.observations import Observation, PathResult

Ran = Mapping[str, tuple[PathResult, Any]]
"""What a background job ran, per path ("legacy", "new"): its result and value."""
Callable_ = Any
"""A run() callable: ``fn(conn) -> value``, sync or async."""


@dataclass
class ShadowJob:
    """Work handed from a request to the shadow workers: run ``background`` (and, pairing,
    the served path again) and compare."""

    flag: Flag
    decision: Decision
    tenant: str | None
    params: Mapping[str, Any] | None
    call: Callable_ | None  # run(..., legacy=, new=): the background path's callable
    again: Callable_ | None  # run(): the served path's callable, run again when pairing
    served: PathResult
    served_result: Any  # a ResultSet for SQL, the callable's value otherwise
    background: str  # the path to run in the background: "new" (shadow) or "legacy" (verify)
    ctx: Context  # to re-check the live decision right before the job starts
    requested_at: float  # time.monotonic() at hand-off: older than online.max_lag_ms, dropped
    charged: float = 0.0  # the shadow budget's charge at admission (Budget.spend/refund)
    settled: bool = False  # the charge was settled (RunnerCore._settle)
    waited: int | None = None  # ns the shadow pool's checkout took (the metrics)

    @property
    def served_path(self) -> str:
        return "legacy" if self.background == "new" else "new"

    def callable_for(self, path: str) -> Callable_:
        """The run() callable of ``path``: the background path's, or the served path's."""
        fn = self.call if path == self.background else self.again
        if fn is None:
            raise ValueError(f"no callable for the {path} path")
        return fn

    @property
    def paired(self) -> bool:
        """Latency is judged online: the served path runs again beside the background path
        on the shadow pool, so the pair is measured under the same conditions."""
        return self.flag.online.pair_latency


def observe(job: ShadowJob, ran: Ran, order: Sequence[str], compare_failed: Callable[[], None]
            ) -> list[Observation]:
    """The observations of one background job: the pair (``mode='ab'``) and, when the served
    path ran again beside it, the online A/A check of the served result against its re-run
    (``mode='aa'``: noise such as non-deterministic order or data that changed between).

    Paired, both ``legacy_ns`` and ``new_ns`` were measured on the shadow pool, one after the
    other in ``order`` (``first_path``), and the comparison reads those two results; the
    served latency goes to ``served_ns`` (stage impact). Unpaired, the served execution is
    one side of the pair and ``first_path`` is None: its latency came from another pool under
    other load, so the report never judges latency from it. ``compare_failed()`` counts a
    comparison that raised."""
    served = job.served_path
    pair = {job.background: ran[job.background]}
    pair[served] = ran.get(served, (job.served, job.served_result))
    (legacy, legacy_value), (new, new_value) = pair["legacy"], pair["new"]
    matched, diff = _matched(job.flag, legacy, legacy_value, new, new_value, compare_failed)
    pair_observation = Observation(
        observed_at=datetime.now(UTC), flag=job.flag.name, stage=job.decision.stage or "",
        sql_hash=job.flag.sql_hash, tenant=job.tenant, decision=job.decision.path,
        first_path=order[0] if served in ran else None,
        params=_params(job.params, job.flag.compare.sensitive),
        legacy_ns=legacy.ns, new_ns=new.ns, legacy_rows=legacy.row_count,
        new_rows=new.row_count, legacy_sqlstate=legacy.sqlstate, new_sqlstate=new.sqlstate,
        legacy_error=legacy.error, new_error=new.error, matched=matched, diff=diff,
        source="online", served_ns=job.served.ns)
    out = [pair_observation]
    if served in ran:
        again, again_value = ran[served]
        same, same_diff = _matched(job.flag, job.served, job.served_result, again,
                                   again_value, compare_failed)
        if same is not None:
            # latency stays out of it: the served run and its re-run ran on different pools
            out.append(replace(
                pair_observation, first_path=None, legacy_ns=None, new_ns=None,
                legacy_rows=job.served.row_count, new_rows=again.row_count,
                legacy_sqlstate=None, new_sqlstate=None, legacy_error=None, new_error=None,
                matched=same, diff=same_diff, mode="aa"))
    return out


def _matched(flag: Flag, a: PathResult, a_value: Any, b: PathResult, b_value: Any,
             compare_failed: Callable[[], None]) -> tuple[bool | None, list[dict[str, Any]] | None]:
    # Online writes are not compared: the background path runs after the served path
    # committed, against a different state (docs/online.md).
    if flag.kind != "read" or a.failed or b.failed:
        return None, None
    try:
        return _compare(flag, a_value, b_value)
    except Exception:
        compare_failed()
        return None, None


def served_observation(flag: Flag, decision: Decision, tenant: str | None,
                       params: Mapping[str, Any] | None, result: PathResult) -> Observation:
    """An observation of the served path alone: its failure, or (serving new without
    verification) its latency — nothing to compare."""
    legacy = result if decision.path != "new" else PathResult(None, None)
    new = result if decision.path == "new" else PathResult(None, None)
    return Observation(
        observed_at=datetime.now(UTC), flag=flag.name, stage=decision.stage or "",
        sql_hash=flag.sql_hash, tenant=tenant, decision=decision.path, first_path=None,
        params=_params(params, flag.compare.sensitive), legacy_ns=legacy.ns, new_ns=new.ns,
        legacy_rows=legacy.row_count, new_rows=new.row_count, legacy_sqlstate=legacy.sqlstate,
        new_sqlstate=new.sqlstate, legacy_error=legacy.error, new_error=new.error,
        matched=None, diff=None, source="online", served_ns=result.ns,
    )


def _compare(flag: Flag, legacy: Any, new: Any) -> tuple[bool, list[dict[str, Any]] | None]:
    if isinstance(legacy, ResultSet) and isinstance(new, ResultSet):
        cmp = compare(legacy, new, flag.compare)
        return cmp.matched, (None if cmp.matched else cmp.diffs)
    rows_l, rows_n = _as_rows(legacy), _as_rows(new)
    if rows_l is not None and rows_n is not None:
        width = max((len(r) for r in rows_l + rows_n), default=0)
        cols = tuple(f"c{i}" for i in range(width))
        untyped = (0,) * width  # callables return plain rows: no type OIDs to compare
        cmp = compare(ResultSet(cols, untyped, rows_l, len(rows_l)),
                      ResultSet(cols, untyped, rows_n, len(rows_n)), flag.compare)
        return cmp.matched, (None if cmp.matched else cmp.diffs)
    if legacy == new:
        return True, None
    return False, [{"kind": "value", "legacy": repr(legacy)[:200], "new": repr(new)[:200]}]


def _as_rows(value: Any) -> list[tuple[Any, ...]] | None:
    if isinstance(value, list) and all(isinstance(r, tuple) for r in value):
        return value
    return None


def _params(params: Mapping[str, Any] | None, sensitive: frozenset[str]
            ) -> dict[str, Any] | None:
    """Parameters as JSON, sensitive ones masked, the tenant (its own column) left out."""
    if params is None:
        return None
    return {k: MASK if k in sensitive else
            v if v is None or isinstance(v, bool | int | float | str) else str(v)
            for k, v in params.items() if k != "tenant"}
