"""Judge a stage's observations against the flag's gates: GO, NO-GO or INCONCLUSIVE.

Latency is judged on a log scale, so shifts are ratios: a regression counts only when a
one-sided Mann-Whitney test says new is slower than legacy × (1 + tolerance) at the gate's
confidence (significant *and* larger than the tolerance). Not significant but estimated
beyond the tolerance is INCONCLUSIVE, with the samples a decision would need. A/A runs
(legacy against itself) measure noise: their mismatch rate is subtracted and their latency
shift widens the tolerance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .flags import Flag
from .observations import Observation
from .stats import hodges_lehmann, mann_whitney_greater, quantile_ratio_ci, samples_needed

GO, NO_GO, INCONCLUSIVE = "GO", "NO-GO", "INCONCLUSIVE"
EXIT_CODES = {GO: 0, NO_GO: 1, INCONCLUSIVE: 3}
MIN_LATENCY_PAIRS = 20
"""Below this many timed executions per path the latency gate does not judge."""
GENERIC_MIN_MS = 1.0
"""A generic plan must also be this much slower (absolute) to count as far worse."""


def failure_class(sqlstate: str | None, error: str | None = None) -> str | None:
    """The failure class of an execution: None when it succeeded."""
    if sqlstate is None:
        return "client" if error else None
    named = {"40001": "serialization_failure", "40P01": "deadlock", "55P03": "lock_timeout",
             "57014": "statement_timeout", "57P01": "connection"}
    if sqlstate in named:
        return named[sqlstate]
    if sqlstate.startswith("23"):
        return "constraint_violation"
    if sqlstate.startswith("08"):
        return "connection"
    return "other"


@dataclass(frozen=True)
class Gate:
    name: str
    status: str  # "pass" | "fail" | "inconclusive" | "info"
    figure: Any
    threshold: Any
    display: str
    reason: str
    confidence: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status,
                "passed": None if self.status == "info" else self.status == "pass",
                "figure": self.figure, "threshold": self.threshold,
                "confidence": self.confidence, "display": self.display, "reason": self.reason,
                **({"details": self.details} if self.details else {})}


def judge(flag: Flag, observations: Sequence[Observation], *,
          noise: Sequence[Observation] = (), plans: Sequence[Mapping[str, Any]] = (),
          generic: Sequence[Mapping[str, Any]] = (),
          rollback: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The verdict and every figure behind it, as the JSON-ready core of a report."""
    g = flag.gates
    compared = [o for o in observations if o.matched is not None]
    mismatched = [o for o in compared if o.matched is False]
    new_only = [o for o in observations if o.new_failed and not o.legacy_failed]
    noise_summary = _noise(noise, g.latency.confidence)
    latency = latency_summary(observations, g.latency.quantile, g.latency.confidence,
                              g.latency.max_regression, noise_summary, seed)
    plan_summary = _plans(plans)
    generic_summary = _generic(generic, g.generic_plan_max_ratio)
    locks = _locks(observations)
    gates = [
        _min_samples(len(observations), g.min_samples),
        _mismatch(len(mismatched), len(compared), g.max_mismatch_rate, noise_summary,
                  g.latency.confidence),
        _latency(latency, g.latency.max_regression),
        _new_failures(new_only, g.max_new_failures, g.max_new_failures_by_class),
        _lock_wait(locks, g.max_lock_wait_regression_ms),
        _buffers(plan_summary, g.max_buffers_ratio),
        _generic_gate(generic_summary, g.generic_plan_max_ratio),
        _rollback(flag, rollback),
    ]
    failed = [x for x in gates if x.status == "fail"]
    open_ = [x for x in gates if x.status == "inconclusive"]
    judged = [x for x in gates if x.status != "info"]
    if failed:
        verdict, reasons = NO_GO, [x.reason for x in failed]
    elif open_:
        verdict, reasons = INCONCLUSIVE, [x.reason for x in open_]
    else:
        verdict, reasons = GO, [f"all {len(judged)} gates passed"]

    kinds: Counter[str] = Counter()
    for o in mismatched:
        kinds.update({d["kind"] for d in o.diff or []})
    return {
        "verdict": verdict,
        "reasons": reasons,
        "samples": len(observations),
        "gates": [x.as_dict() for x in gates],
        "mismatches": {
            "count": len(mismatched),
            "compared": len(compared),
            "rate": len(mismatched) / len(compared) if compared else None,
            "noise_rate": noise_summary["mismatch_rate"],
            "by_kind": dict(kinds),
            "samples": [{"tenant": o.tenant, "params": o.params, "diff": o.diff or [],
                         "truncated": False} for o in mismatched[:5]],
            "samples_omitted": max(0, len(mismatched) - 5),
        },
        "latency": latency,
        "noise": noise_summary,
        "failures": {
            "legacy": _failures((o.legacy_sqlstate, o.legacy_error) for o in observations),
            "new": _failures((o.new_sqlstate, o.new_error) for o in observations),
            "new_only": len(new_only),
            "new_only_by_class": dict(Counter(
                failure_class(o.new_sqlstate, o.new_error) or "other" for o in new_only)),
        },
        "locks": locks,
        "plans": plan_summary,
        "generic_plans": generic_summary,
        "tenants": _tenants(observations),
    }


def verdict_exit_code(verdict: str) -> int:
    return EXIT_CODES[verdict]


# -- latency --------------------------------------------------------------------------------


def latency_summary(observations: Sequence[Observation], quantile: float, confidence: float,
                    tolerance: float = 0.10, noise: Mapping[str, Any] | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """Quantiles per path; the Hodges-Lehmann ratio new/legacy with its CI; the one-sided
    Mann-Whitney p-value against the (noise-widened) tolerance; the bootstrap CI of the
    quantile ratio; and, when undecided, the samples a decision would need."""
    legacy_ns = [o.legacy_ns for o in observations if o.legacy_ns is not None]
    new_ns = [o.new_ns for o in observations if o.new_ns is not None]
    pairs = [(o.legacy_ns, o.new_ns) for o in observations
             if o.legacy_ns is not None and o.new_ns is not None]
    noise_shift = abs(math.log(noise["latency_ratio"])) if noise and noise.get(
        "latency_ratio") else 0.0
    margin = math.log1p(tolerance) + noise_shift
    out: dict[str, Any] = {
        "quantile": quantile, "confidence": confidence, "pairs": len(pairs),
        "legacy": _quantiles(legacy_ns), "new": _quantiles(new_ns),
        "ratio": None, "ratio_ci": None, "hl_ratio": None, "hl_ci": None, "change_pct": None,
        "mann_whitney_p": None, "effective_tolerance": math.expm1(margin),
        "samples_needed": None,
    }
    if not legacy_ns or not new_ns:
        return out
    log_l = np.log(np.asarray(legacy_ns, dtype=float))
    log_n = np.log(np.asarray(new_ns, dtype=float))
    out["ratio"] = float(np.quantile(new_ns, quantile) / np.quantile(legacy_ns, quantile))
    if min(len(legacy_ns), len(new_ns)) < MIN_LATENCY_PAIRS:
        out["change_pct"] = (out["ratio"] - 1) * 100
        return out
    shift = hodges_lehmann(log_l, log_n, confidence)
    out["hl_ratio"] = math.exp(shift.estimate)
    out["hl_ci"] = [math.exp(shift.low), math.exp(shift.high)]
    out["change_pct"] = (out["hl_ratio"] - 1) * 100
    out["mann_whitney_p"] = mann_whitney_greater(log_l, log_n, margin)
    if pairs:
        a = [p[0] for p in pairs]
        b = [p[1] for p in pairs]
        ratio, low, high = quantile_ratio_ci(a, b, quantile, confidence, paired=True, seed=seed)
        out["ratio"], out["ratio_ci"] = ratio, [low, high]
    alpha = 1 - confidence
    if out["mann_whitney_p"] >= alpha and shift.estimate > margin:
        needed = samples_needed(log_l, log_n, shift.estimate - margin, alpha)
        out["samples_needed"] = needed
    return out


def _latency(lat: Mapping[str, Any], tolerance: float) -> Gate:
    name = "latency"
    limit = 1 + lat["effective_tolerance"]
    conf = lat["confidence"]
    if lat["hl_ratio"] is None:
        n = min(lat["legacy"]["n"], lat["new"]["n"])
        return Gate(name, "inconclusive", lat["ratio"], limit, f"{n} timed executions",
                    f"too few timed executions ({n}) to judge latency "
                    f"(need {MIN_LATENCY_PAIRS} per path)", conf)
    ci = lat["hl_ci"]
    p = lat["mann_whitney_p"]
    shown = (f"new/legacy {lat['hl_ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], "
             f"p = {p:.3g} vs limit {limit:.3f}")
    change = f"{lat['hl_ratio'] - 1:+.1%}"
    if p < 1 - conf:
        return Gate(name, "fail", lat["hl_ratio"], limit, shown,
                    f"new path is slower: {change}, significantly beyond the "
                    f"{lat['effective_tolerance']:.0%} tolerance (p = {p:.2g})", conf)
    if lat["hl_ratio"] > limit:
        needed = lat["samples_needed"]
        more = f"; about {needed} samples per path would decide" if needed else ""
        return Gate(name, "inconclusive", lat["hl_ratio"], limit, shown,
                    f"new path looks slower ({change}) but not significantly beyond the "
                    f"{lat['effective_tolerance']:.0%} tolerance{more}", conf)
    return Gate(name, "pass", lat["hl_ratio"], limit, shown,
                f"no latency regression beyond {lat['effective_tolerance']:.0%} ({change})",
                conf)


# -- other gates ----------------------------------------------------------------------------


def _min_samples(n: int, need: int) -> Gate:
    if n >= need:
        return Gate("min_samples", "pass", n, need, f"{n} samples (need ≥ {need})",
                    f"{n} paired samples, enough to judge")
    return Gate("min_samples", "inconclusive", n, need, f"{n} samples (need ≥ {need})",
                f"only {n} of the {need} samples needed; run `rollout shadow` for more")


def _mismatch(bad: int, compared: int, limit: float, noise: Mapping[str, Any],
              confidence: float) -> Gate:
    """Fails when the mismatch rate exceeds ``limit`` beyond what A/A noise explains: the
    upper end of the noise rate's Clopper-Pearson interval."""
    rate = bad / compared if compared else None
    noise_rate = noise.get("mismatch_rate")
    noise_upper = 0.0
    if noise_rate:
        n = noise["compared"]
        ci = stats.binomtest(round(noise_rate * n), n).proportion_ci(confidence)
        noise_upper = float(ci.high)
    shown = f"{bad} of {compared} ({(rate or 0) * 100:.2f} %)"
    if noise_rate:
        shown += f", A/A noise {noise_rate * 100:.2f} % (up to {noise_upper * 100:.2f} %)"
    if compared == 0 or rate is None:
        return Gate("max_mismatch_rate", "inconclusive", None, limit, "no comparable pairs",
                    "no pair where both paths succeeded, nothing compared")
    excess = rate - noise_upper
    if excess > limit:
        return Gate("max_mismatch_rate", "fail", rate, limit, f"{shown} > {limit:.2%}",
                    f"result sets differ in {shown} of compared executions")
    return Gate("max_mismatch_rate", "pass", rate, limit, f"{shown} ≤ {limit:.2%}",
                f"result sets match in {compared - bad} of {compared} executions"
                + (" (differences within A/A noise)" if bad else ""))


def _new_failures(new_only: Sequence[Observation], limit: int,
                  by_class_limits: Mapping[str, int]) -> Gate:
    count = len(new_only)
    classes = Counter(failure_class(o.new_sqlstate, o.new_error) or "other" for o in new_only)
    over = {c: n for c, n in classes.items()
            if c in by_class_limits and n > by_class_limits[c]}
    detail = ", ".join(f"{c} {n}" for c, n in sorted(classes.items()))
    if count > limit or over:
        what = detail or str(count)
        return Gate("max_new_failures", "fail", count, limit, f"{count} > {limit} ({what})",
                    f"new path failed in {count} executions where legacy succeeded ({what})",
                    details={"by_class": dict(classes)})
    return Gate("max_new_failures", "pass", count, limit, f"{count} ≤ {limit}",
                "no new failures" if count == 0 else f"{count} new failures ({detail}), "
                "within limit", details={"by_class": dict(classes)})


def _lock_wait(locks: Mapping[str, Any], limit_ms: float) -> Gate:
    legacy, new = locks["legacy"], locks["new"]
    if legacy["measured"] == 0 or new["measured"] == 0:
        return Gate("lock_wait", "info", None, limit_ms, "not measured",
                    "lock waits were not sampled for these observations")
    extra = new["mean_wait_ms"] - legacy["mean_wait_ms"]
    shown = (f"mean wait new {new['mean_wait_ms']:.2f} ms vs legacy "
             f"{legacy['mean_wait_ms']:.2f} ms ({extra:+.2f} ms)")
    if extra > limit_ms:
        return Gate("lock_wait", "fail", extra, limit_ms, f"{shown} > {limit_ms:g} ms",
                    f"new path waits {extra:.1f} ms longer for locks per execution")
    return Gate("lock_wait", "pass", extra, limit_ms, f"{shown} ≤ {limit_ms:g} ms",
                "no lock-wait regression")


def _buffers(plans: Mapping[str, Any], limit: float | None) -> Gate:
    ratio = plans.get("buffers_ratio")
    if ratio is None:
        return Gate("buffers", "info", None, limit, "no plan samples",
                    "no EXPLAIN samples for this stage")
    shown = (f"median {plans['new']['median_buffers']:.0f} vs "
             f"{plans['legacy']['median_buffers']:.0f} buffers ({ratio:.2f}×)")
    if limit is None:
        return Gate("buffers", "info", ratio, None, shown,
                    f"new path touches {ratio:.2f}× the buffers of legacy (not gated)")
    if ratio > limit:
        return Gate("buffers", "fail", ratio, limit, f"{shown} > {limit:g}×",
                    f"new path touches {ratio:.2f}× the shared buffers of legacy")
    return Gate("buffers", "pass", ratio, limit, f"{shown} ≤ {limit:g}×",
                f"buffers per execution {ratio:.2f}× legacy")


def _generic_gate(generic: Mapping[str, Any], limit: float) -> Gate:
    if not generic["checks"]:
        return Gate("generic_plan", "info", None, limit, "not checked",
                    "no generic-plan check for this stage")
    bad = generic["regressions"]
    worst = generic["worst_new_ratio"]
    shown = f"worst new generic/custom {worst:.1f}× (limit {limit:g}×)"
    if bad:
        tenants = ", ".join(str(b["tenant"]) for b in bad)
        return Gate("generic_plan", "fail", worst, limit, shown,
                    f"new path's generic plan is far slower than its custom plan for "
                    f"{tenants} (as psycopg runs it after 5 executions)")
    return Gate("generic_plan", "pass", worst, limit, shown,
                "generic plans of the new path hold up for every checked tenant")


def _rollback(flag: Flag, verification: Mapping[str, Any] | None) -> Gate:
    rb = flag.rollback
    if rb.none_reason:
        return Gate("rollback", "pass", "none", "verified script or reason",
                    "no schema change", f"no rollback script needed: {rb.none_reason}")
    if rb.script is None:
        return Gate("rollback", "inconclusive", None, "verified script", "missing",
                    "no rollback script: the flag names none (rollback.script, or "
                    "rollback.none with a reason)")
    if verification is None:
        return Gate("rollback", "inconclusive", rb.script_path, "verified script",
                    "not verified", f"rollback script {rb.script_path} has not been verified "
                    f"(`rollout rollback {flag.name} --verify`)")
    if not verification.get("verified"):
        return Gate("rollback", "inconclusive", rb.script_path, "verified script",
                    "verification failed",
                    f"rollback script {rb.script_path} is {verification.get('status')}",
                    details={"differences": list(verification.get("differences") or [])})
    return Gate("rollback", "pass", rb.script_path, "verified script", "verified",
                f"rollback script {rb.script_path} verified in a scratch copy of the schema")


# -- summaries ------------------------------------------------------------------------------


def _noise(noise: Sequence[Observation], confidence: float) -> dict[str, Any]:
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


def _quantiles(values_ns: Sequence[int]) -> dict[str, Any]:
    if not values_ns:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p95_ms": None, "p99_ms": None,
                "mean_ms": None}
    ms = np.array(values_ns, dtype=float) / 1e6
    q = np.quantile(ms, [0.5, 0.9, 0.95, 0.99])
    return {"n": len(ms), "p50_ms": float(q[0]), "p90_ms": float(q[1]), "p95_ms": float(q[2]),
            "p99_ms": float(q[3]), "mean_ms": float(ms.mean())}


def _failures(results: Iterable[tuple[str | None, str | None]]) -> dict[str, Any]:
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


def _locks(observations: Sequence[Observation]) -> dict[str, Any]:
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
    out["only_new_holds"] = sorted([list(x) for x in new_held - legacy_held])
    out["only_legacy_holds"] = sorted([list(x) for x in legacy_held - new_held])
    out["note"] = ("waits sampled from pg_locks every 10 ms; a wait shorter than that may be "
                   "missed; lock_timeout failures (55P03) count as failures")
    return out


def _plans(plans: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": len(plans), "buffers_ratio": None}
    for path in ("legacy", "new"):
        mine = [p for p in plans if p["path"] == path]
        shapes = Counter(str(p["shape"]) for p in mine)
        out[path] = {
            "samples": len(mine),
            "shapes": [{"shape": s, "count": n} for s, n in shapes.most_common(3)],
            "median_buffers": float(np.median([p["buffers"] for p in mine])) if mine else None,
            "median_exec_ms": float(np.median([p["exec_ms"] for p in mine])) if mine else None,
            "rows_misestimate": float(np.median([
                max(p["plan_rows"], 1.0) / max(p["actual_rows"], 1.0) for p in mine]))
            if mine else None,
        }
    if out["legacy"]["median_buffers"] and out["new"]["median_buffers"] is not None:
        out["buffers_ratio"] = out["new"]["median_buffers"] / out["legacy"]["median_buffers"]
    out["same_shape"] = bool(plans) and (
        {s["shape"] for s in out["legacy"]["shapes"]} == {s["shape"] for s in out["new"]["shapes"]})
    return out


def _generic(checks: Sequence[Mapping[str, Any]], limit: float) -> dict[str, Any]:
    rows = []
    for c in checks:
        ratio = c["generic_ms"] / c["custom_ms"] if c["custom_ms"] > 0 else 1.0
        rows.append({**c, "ratio": ratio})
    legacy_ratio = {r["tenant"]: r["ratio"] for r in rows if r["path"] == "legacy"}
    regressions = [r for r in rows if r["path"] == "new" and r["ratio"] > limit
                   and r["generic_ms"] - r["custom_ms"] > GENERIC_MIN_MS
                   and legacy_ratio.get(r["tenant"], 0.0) <= limit]
    new_ratios = [r["ratio"] for r in rows if r["path"] == "new"]
    return {"checks": rows, "regressions": regressions,
            "worst_new_ratio": max(new_ratios) if new_ratios else None}


def _tenants(observations: Sequence[Observation]) -> list[dict[str, Any]]:
    groups: dict[str | None, list[Observation]] = {}
    for o in observations:
        groups.setdefault(o.tenant, []).append(o)
    rows = []
    for tenant, obs in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        leg = [o.legacy_ns for o in obs if o.legacy_ns is not None]
        new = [o.new_ns for o in obs if o.new_ns is not None]
        rows.append({
            "tenant": tenant, "samples": len(obs),
            "mismatches": sum(o.matched is False for o in obs),
            "legacy_p50_ms": float(np.median(leg)) / 1e6 if leg else None,
            "new_p50_ms": float(np.median(new)) / 1e6 if new else None,
            "new_failures": sum(o.new_failed and not o.legacy_failed for o in obs),
            "new_failures_by_class": dict(Counter(
                failure_class(o.new_sqlstate, o.new_error) or "other"
                for o in obs if o.new_failed and not o.legacy_failed)),
        })
    return rows
