"""The figures behind a verdict: latency statistics, noise, failures by class, locks, plans,
generic-plan checks and tenants, each summarised from observations into JSON-ready dicts."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..store.observations import Observation
from .stats import hodges_lehmann, mann_whitney_greater, quantile_ratio_ci, samples_needed

FloatArray = NDArray[np.float64]

MIN_LATENCY_PAIRS = 20
"""Below this many timed executions per path the latency gate does not judge."""
ENVIRONMENT_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
"""Admin shutdown, crash shutdown, cannot connect now, too many connections; with every
connection exception (class 08: the runners record a lost connection or a pool timeout as
08000 and their client-side deadline as 08006) these are environment failures."""
ENVIRONMENT_WINDOW = timedelta(seconds=60)
"""How close to an environment failure of one path the other path's executions must be to
count as "at the same moment": wide enough to span a restart and a runner's pool-statistics
interval (10 s by default)."""


def failure_class(sqlstate: str | None, error: str | None = None) -> str | None:
    """The failure class of an execution: None when it succeeded."""
    if sqlstate is None:
        return "client" if error else None
    named = {"40001": "serialization_failure", "40P01": "deadlock", "55P03": "lock_timeout",
             "57014": "statement_timeout"}
    if sqlstate in named:
        return named[sqlstate]
    if sqlstate.startswith("23"):
        return "constraint_violation"
    if is_environment_failure(sqlstate):
        return "connection"
    return "other"


def is_environment_failure(sqlstate: str | None) -> bool:
    """A failure of the server or the network, not of the query: see ENVIRONMENT_STATES."""
    return sqlstate is not None and (sqlstate.startswith("08") or sqlstate in ENVIRONMENT_STATES)


@dataclass(frozen=True)
class PoolSignal:
    """A runner's pool-statistics snapshot that saw connections lost, returned broken or
    checkouts fail: the outage hit the path that pool serves."""

    at: datetime
    pool: str  # "requests" (the served path) or "shadow" (the background path)
    count: int


@dataclass(frozen=True)
class EnvironmentVerdict:
    """Which environment failures count against their path and which are excused."""

    counted: frozenset[tuple[int, str]]
    """(observation index, path) of environment failures that hit the path alone."""
    excused: frozenset[tuple[int, str]]
    events: list[dict[str, Any]]


def environment_failures(observations: Sequence[Observation],
                         pool_signals: Sequence[PoolSignal] = (),
                         window: timedelta = ENVIRONMENT_WINDOW) -> EnvironmentVerdict:
    """Sort the environment failures of ``observations`` into counted and excused.

    The rule: an environment failure of one path at time t counts against that path only
    when, within t ± ``window``, (1) the other path succeeded at least once (the same
    observation included: an online observation's served and background executions are one
    moment), (2) the other path had no environment failure, and (3) for online
    observations, the pool that ran the other path recorded no lost connection, broken
    return or checkout error (a read retried on a fresh connection hides the outage from
    the observation, not from its pool). Otherwise the outage hit both paths, or nothing
    ran beside it to say otherwise, and the failure is excused: an environment event.

    ``events`` group every environment failure by minute, path and SQLSTATE:
    ``{at, path, sqlstate, count, counted}``, ``counted`` being how many of them count."""
    ok: dict[str, list[datetime]] = {"legacy": [], "new": []}
    env: dict[str, list[datetime]] = {"legacy": [], "new": []}
    hits: list[tuple[int, str, datetime, str]] = []
    for i, o in enumerate(observations):
        for path in ("legacy", "new"):
            state = getattr(o, f"{path}_sqlstate")
            if is_environment_failure(state):
                env[path].append(o.observed_at)
                hits.append((i, path, o.observed_at, state))
            elif not getattr(o, f"{path}_failed") and getattr(o, f"{path}_ns") is not None:
                ok[path].append(o.observed_at)
    for times in (*ok.values(), *env.values()):
        times.sort()
    signals: dict[str, list[datetime]] = {"requests": [], "shadow": []}
    for s in pool_signals:
        if s.count > 0:
            signals.setdefault(s.pool, []).append(s.at)
    for times in signals.values():
        times.sort()

    def near(times: list[datetime], at: datetime) -> bool:
        return bisect_right(times, at + window) > bisect_left(times, at - window)

    counted: set[tuple[int, str]] = set()
    excused: set[tuple[int, str]] = set()
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, path, at, state in hits:
        o = observations[i]
        other = "new" if path == "legacy" else "legacy"
        # online, the served path ran on the request pool and the other on the shadow pool,
        # or both on the shadow pool (a pair: Observation.online_pool)
        other_pool = o.online_pool(other)
        alone = (near(ok[other], at) and not near(env[other], at)
                 and not (o.source == "online" and near(signals.get(other_pool, []), at)))
        (counted if alone else excused).add((i, path))
        minute = at.replace(second=0, microsecond=0).isoformat(timespec="minutes")
        groups.setdefault((minute, path, state), [0, 0])
        groups[(minute, path, state)][0] += 1
        groups[(minute, path, state)][1] += int(alone)
    events = [{"at": m, "path": p, "sqlstate": s, "count": n, "counted": c}
              for (m, p, s), (n, c) in sorted(groups.items())]
    return EnvironmentVerdict(frozenset(counted), frozenset(excused), events)


def latency_summary(observations: Sequence[Observation], quantile: float, confidence: float,
                    tolerance: float = 0.10, noise: Mapping[str, Any] | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """``latency_figures`` of observations held in memory."""
    legacy_ns = np.array([o.legacy_ns for o in observations if o.legacy_ns is not None],
                         dtype=float)
    new_ns = np.array([o.new_ns for o in observations if o.new_ns is not None], dtype=float)
    pairs = np.array([(o.legacy_ns, o.new_ns) for o in observations
                      if o.legacy_ns is not None and o.new_ns is not None],
                     dtype=float).reshape(-1, 2)
    return latency_figures(legacy_ns, new_ns, pairs[:, 0], pairs[:, 1], quantile, confidence,
                           tolerance, noise, seed)


def latency_figures(legacy_ns: FloatArray, new_ns: FloatArray, pair_legacy: FloatArray,
                    pair_new: FloatArray, quantile: float, confidence: float,
                    tolerance: float = 0.10, noise: Mapping[str, Any] | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """Quantiles per path; the Hodges-Lehmann ratio new/legacy with its CI; the one-sided
    Mann-Whitney p-value against the (noise-widened) tolerance; the bootstrap CI of the
    quantile ratio; and, when undecided, the samples a decision would need.

    ``legacy_ns`` and ``new_ns`` are every timed execution per path (float64 nanoseconds),
    ``pair_*`` the executions where both paths were timed, in observation order (they may
    be the same arrays). The path arrays are overwritten (their logarithms, then sorted):
    the caller hands them over, so that a stage of millions holds each value once."""
    noise_shift = abs(math.log(noise["latency_ratio"])) if noise and noise.get(
        "latency_ratio") else 0.0
    margin = math.log1p(tolerance) + noise_shift
    out: dict[str, Any] = {
        "quantile": quantile, "confidence": confidence, "pairs": len(pair_legacy),
        "legacy": quantiles_summary(legacy_ns), "new": quantiles_summary(new_ns),
        "ratio": None, "ratio_ci": None, "hl_ratio": None, "hl_ci": None, "change_pct": None,
        "mann_whitney_p": None, "effective_tolerance": math.expm1(margin),
        "samples_needed": None,
    }
    if not len(legacy_ns) or not len(new_ns):
        return out
    out["ratio"] = float(np.quantile(new_ns, quantile) / np.quantile(legacy_ns, quantile))
    if min(len(legacy_ns), len(new_ns)) < MIN_LATENCY_PAIRS:
        out["change_pct"] = (out["ratio"] - 1) * 100
        return out
    if len(pair_legacy):
        # before the path arrays become logarithms: the pairs may be the same arrays
        ratio, low, high = quantile_ratio_ci(pair_legacy, pair_new, quantile, confidence,
                                             paired=True, seed=seed)
        out["ratio"], out["ratio_ci"] = ratio, [low, high]
    log_l = np.log(legacy_ns, out=legacy_ns)
    log_n = np.log(new_ns, out=new_ns)
    shift = hodges_lehmann(log_l, log_n, confidence)
    out["hl_ratio"] = math.exp(shift.estimate)
    out["hl_ci"] = [math.exp(shift.low), math.exp(shift.high)]
    out["change_pct"] = (out["hl_ratio"] - 1) * 100
    alpha = 1 - confidence
    # in observation order, before the sort below (the variances' rounding depends on it)
    needed = (samples_needed(log_l, log_n, shift.estimate - margin, alpha)
              if shift.estimate > margin else None)
    log_l.sort()
    log_n.sort()
    out["mann_whitney_p"] = mann_whitney_greater(log_l, log_n, margin, presorted=True)
    if out["mann_whitney_p"] >= alpha and shift.estimate > margin:
        out["samples_needed"] = needed
    return out


def noise_summary(noise: Sequence[Observation], confidence: float) -> dict[str, Any]:
    compared = [o for o in noise if o.matched is not None]
    out: dict[str, Any] = {"samples": len(noise), "compared": len(compared),
                           "mismatch_rate": (sum(o.matched is False for o in compared)
                                             / len(compared)) if compared else None,
                           "latency_ratio": None, "latency_ci": None}
    a = [o.legacy_ns for o in noise if o.legacy_ns is not None]
    b = [o.new_ns for o in noise if o.new_ns is not None]
    if min(len(a), len(b)) >= MIN_LATENCY_PAIRS:
        shift = hodges_lehmann(np.log(a), np.log(b), confidence)
        out["latency_ratio"] = math.exp(shift.estimate)
        out["latency_ci"] = [math.exp(shift.low), math.exp(shift.high)]
    return out


def quantiles_summary(values_ns: Sequence[int] | FloatArray) -> dict[str, Any]:
    if not len(values_ns):
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p95_ms": None, "p99_ms": None,
                "mean_ms": None}
    ms = np.array(values_ns, dtype=float) / 1e6
    mean = float(ms.mean())  # before the quantiles reorder ``ms`` in place
    q = np.quantile(ms, [0.5, 0.9, 0.95, 0.99], overwrite_input=True)
    return {"n": len(ms), "p50_ms": float(q[0]), "p90_ms": float(q[1]), "p95_ms": float(q[2]),
            "p99_ms": float(q[3]), "mean_ms": mean}


def failures_summary(results: Iterable[tuple[str | None, str | None]]) -> dict[str, Any]:
    states: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    for state, error in results:
        cls = failure_class(state, error)
        if cls is None:
            continue
        states[state or "client"] += 1
        classes[cls] += 1
    return {"count": sum(states.values()), "by_sqlstate": dict(states),
            "by_class": dict(classes)}


def locks_summary(observations: Sequence[Observation]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in ("legacy", "new"):
        waits = [getattr(o, f"{path}_lock_wait_ns") for o in observations]
        measured = [w for w in waits if w is not None]
        waited = [w for w in measured if w > 0]
        held: set[tuple[str, str]] = set()
        episodes: Counter[str] = Counter()
        for o in observations:
            info = (o.locks or {}).get(path) or {}
            held.update((str(r), str(m)) for r, m in info.get("held", []))
            for w in info.get("waits", []):
                episodes[f"{w.get('mode')} on {w.get('relation') or w.get('locktype')}"] += 1
        out[path] = {
            "measured": len(measured), "waited": len(waited),
            "mean_wait_ms": (sum(measured) / len(measured) / 1e6) if measured else 0.0,
            "p95_wait_ms": float(np.quantile(measured, 0.95)) / 1e6 if measured else 0.0,
            "max_wait_ms": max(measured) / 1e6 if measured else 0.0,
            "lock_timeouts": sum(getattr(o, f"{path}_sqlstate") == "55P03"
                                 for o in observations),
            "held": sorted([list(x) for x in held]),
            "waited_on": dict(episodes),
        }
    legacy_held = {tuple(x) for x in out["legacy"]["held"]}
    new_held = {tuple(x) for x in out["new"]["held"]}
    # pairs whose held locks were listed; a path that failed in all of them took no locks
    # we saw, which says nothing about the locks it takes when it works
    pairs = [o for o in observations
             if any(((o.locks or {}).get(p) or {}).get("held") for p in ("legacy", "new"))]
    compared = all(any(not getattr(o, f"{p}_failed") for o in pairs) for p in ("legacy", "new"))
    out["only_new_holds"] = sorted([list(x) for x in new_held - legacy_held]) if compared else []
    out["only_legacy_holds"] = (sorted([list(x) for x in legacy_held - new_held])
                                if compared else [])
    out["note"] = ("waits sampled from pg_locks every 10 ms; a wait shorter than that may be "
                   "missed; lock_timeout failures (55P03) count as failures")
    return out


def tenants_summary(observations: Sequence[Observation],
                    excused: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Per tenant; ``excused`` are indices of observations whose new-path failure was an
    environment failure that does not count (``environment_failures``)."""
    groups: dict[str | None, list[Observation]] = {}
    failed: dict[str | None, list[Observation]] = {}
    for i, o in enumerate(observations):
        groups.setdefault(o.tenant, []).append(o)
        if o.new_failed and not o.legacy_failed and i not in excused:
            failed.setdefault(o.tenant, []).append(o)
    rows = []
    for tenant, obs in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        bad = failed.get(tenant, [])
        leg = [o.legacy_ns for o in obs if o.legacy_ns is not None]
        new = [o.new_ns for o in obs if o.new_ns is not None]
        rows.append({
            "tenant": tenant, "samples": len(obs),
            "mismatches": sum(o.matched is False for o in obs),
            "legacy_p50_ms": float(np.median(leg)) / 1e6 if leg else None,
            "new_p50_ms": float(np.median(new)) / 1e6 if new else None,
            "new_failures": len(bad),
            "new_failures_by_class": dict(Counter(
                failure_class(o.new_sqlstate, o.new_error) or "other" for o in bad)),
        })
    return rows
