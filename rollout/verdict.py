"""Judge a stage's observations against the flag's gates: GO, NO-GO or INCONCLUSIVE."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from .flags import Flag
from .observations import Observation

GO, NO_GO, INCONCLUSIVE = "GO", "NO-GO", "INCONCLUSIVE"
EXIT_CODES = {GO: 0, NO_GO: 1, INCONCLUSIVE: 3}
MIN_LATENCY_PAIRS = 20
"""Below this many paired timings the latency gate does not judge."""
BOOTSTRAP_RESAMPLES = 2000
LOCK_TIMEOUT = "55P03"


@dataclass(frozen=True)
class Gate:
    name: str
    status: str  # "pass" | "fail" | "inconclusive"
    figure: Any
    threshold: Any
    display: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "passed": self.status == "pass",
                "figure": self.figure, "threshold": self.threshold, "display": self.display,
                "reason": self.reason}


def judge(flag: Flag, observations: Sequence[Observation], *, seed: int = 0) -> dict[str, Any]:
    """The verdict and every figure behind it, as the JSON-ready core of a report."""
    g = flag.gates
    n = len(observations)
    compared = [o for o in observations if o.matched is not None]
    mismatched = [o for o in compared if o.matched is False]
    new_only = [o for o in observations if o.new_failed and not o.legacy_failed]
    latency = latency_summary(observations, g.latency.quantile, g.latency.confidence, seed)

    gates = [
        _min_samples(n, g.min_samples),
        _mismatch(len(mismatched), len(compared), g.max_mismatch_rate),
        _latency(latency, g.latency.max_regression),
        _new_failures(len(new_only), g.max_new_failures),
        _rollback(flag),
    ]
    failed = [x for x in gates if x.status == "fail"]
    open_ = [x for x in gates if x.status == "inconclusive"]
    if failed:
        verdict, reasons = NO_GO, [x.reason for x in failed]
    elif open_:
        verdict, reasons = INCONCLUSIVE, [x.reason for x in open_]
    else:
        verdict, reasons = GO, [f"all {len(gates)} gates passed"]

    kinds: Counter[str] = Counter()
    for o in mismatched:
        kinds.update({d["kind"] for d in o.diff or []})
    return {
        "verdict": verdict,
        "reasons": reasons,
        "samples": n,
        "gates": [x.as_dict() for x in gates],
        "mismatches": {
            "count": len(mismatched),
            "compared": len(compared),
            "rate": len(mismatched) / len(compared) if compared else None,
            "by_kind": dict(kinds),
            "samples": [{"tenant": o.tenant, "params": o.params, "diff": o.diff or [],
                         "truncated": False} for o in mismatched[:5]],
        },
        "latency": latency,
        "failures": {
            "legacy": _failures(o.legacy_sqlstate for o in observations),
            "new": _failures(o.new_sqlstate for o in observations),
            "new_only": len(new_only),
        },
        "locks": {
            "legacy": {"lock_timeouts": sum(o.legacy_sqlstate == LOCK_TIMEOUT
                                            for o in observations)},
            "new": {"lock_timeouts": sum(o.new_sqlstate == LOCK_TIMEOUT for o in observations)},
            "note": "lock_timeout failures (55P03) per path; lock-wait sampling is not "
                    "measured by this version",
        },
        "tenants": _tenants(observations),
    }


def verdict_exit_code(verdict: str) -> int:
    return EXIT_CODES[verdict]


def latency_summary(observations: Sequence[Observation], quantile: float, confidence: float,
                    seed: int = 0) -> dict[str, Any]:
    """Quantiles per path, the new/legacy ratio of ``quantile`` with a paired bootstrap CI,
    and a one-sided Mann-Whitney p-value for "new is slower"."""
    pairs = [(o.legacy_ns, o.new_ns) for o in observations
             if o.legacy_ns is not None and o.new_ns is not None]
    out: dict[str, Any] = {
        "quantile": quantile, "confidence": confidence, "pairs": len(pairs),
        "legacy": _quantiles([o.legacy_ns for o in observations if o.legacy_ns is not None]),
        "new": _quantiles([o.new_ns for o in observations if o.new_ns is not None]),
        "ratio": None, "ratio_ci": None, "change_pct": None, "mann_whitney_p": None,
    }
    if not pairs:
        return out
    legacy = np.array([p[0] for p in pairs], dtype=float) / 1e6
    new = np.array([p[1] for p in pairs], dtype=float) / 1e6
    ratio = float(np.quantile(new, quantile) / np.quantile(legacy, quantile))
    out["ratio"] = ratio
    out["change_pct"] = (ratio - 1) * 100
    if len(pairs) >= MIN_LATENCY_PAIRS:
        def q_ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
            ratio: np.ndarray = np.quantile(b, quantile, axis=axis) / np.quantile(
                a, quantile, axis=axis)
            return ratio

        boot = stats.bootstrap((legacy, new), q_ratio, paired=True, vectorized=True,
                               confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                               method="percentile", rng=np.random.default_rng(seed))
        out["ratio_ci"] = [float(boot.confidence_interval.low),
                           float(boot.confidence_interval.high)]
        out["mann_whitney_p"] = float(stats.mannwhitneyu(new, legacy,
                                                         alternative="greater").pvalue)
    return out


def _quantiles(values_ns: Sequence[int]) -> dict[str, Any]:
    if not values_ns:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p95_ms": None, "p99_ms": None,
                "mean_ms": None}
    ms = np.array(values_ns, dtype=float) / 1e6
    q = np.quantile(ms, [0.5, 0.9, 0.95, 0.99])
    return {"n": len(ms), "p50_ms": float(q[0]), "p90_ms": float(q[1]), "p95_ms": float(q[2]),
            "p99_ms": float(q[3]), "mean_ms": float(ms.mean())}


def _min_samples(n: int, need: int) -> Gate:
    if n >= need:
        return Gate("min_samples", "pass", n, need, f"{n} samples (need ≥ {need})",
                    f"{n} paired samples, enough to judge")
    return Gate("min_samples", "inconclusive", n, need, f"{n} samples (need ≥ {need})",
                f"only {n} of the {need} samples needed; run `rollout shadow` for more")


def _mismatch(bad: int, compared: int, limit: float) -> Gate:
    rate = bad / compared if compared else None
    shown = f"{bad} of {compared} ({(rate or 0) * 100:.2f} %)"
    if compared == 0:
        return Gate("max_mismatch_rate", "inconclusive", None, limit, "no comparable pairs",
                    "no pair where both paths succeeded, nothing compared")
    if rate is not None and rate > limit:
        return Gate("max_mismatch_rate", "fail", rate, limit, f"{shown} > {limit:.2%}",
                    f"result sets differ in {shown} of compared executions")
    return Gate("max_mismatch_rate", "pass", rate, limit, f"{shown} ≤ {limit:.2%}",
                f"result sets match in {compared - bad} of {compared} executions")


def _latency(lat: dict[str, Any], tolerance: float) -> Gate:
    q = lat["quantile"]
    name = "latency"
    label = f"p{q * 100:g}"
    limit = 1 + tolerance
    ci = lat["ratio_ci"]
    if ci is None:
        return Gate(name, "inconclusive", lat["ratio"], limit, f"{lat['pairs']} timed pairs",
                    f"too few timed pairs ({lat['pairs']}) to judge latency "
                    f"(need {MIN_LATENCY_PAIRS})")
    shown = (f"{label} ratio {lat['ratio']:.3f} "
             f"[{ci[0]:.3f}, {ci[1]:.3f}] at {lat['confidence']:.0%}")
    if ci[0] > limit:
        return Gate(name, "fail", lat["ratio"], limit, f"{shown}; limit {limit:.2f}",
                    f"new path is slower at {label}: {(lat['ratio'] - 1):+.1%}, "
                    f"confidently beyond the {tolerance:.0%} tolerance")
    return Gate(name, "pass", lat["ratio"], limit, f"{shown}; limit {limit:.2f}",
                f"no {label} regression beyond {tolerance:.0%} ({(lat['ratio'] - 1):+.1%})")


def _new_failures(count: int, limit: int) -> Gate:
    if count > limit:
        return Gate("max_new_failures", "fail", count, limit, f"{count} > {limit}",
                    f"new path failed in {count} executions where legacy succeeded")
    return Gate("max_new_failures", "pass", count, limit, f"{count} ≤ {limit}",
                "no new failures" if count == 0 else f"{count} new failures, within limit")


def _rollback(flag: Flag) -> Gate:
    rb = flag.rollback
    if rb.none_reason:
        return Gate("rollback", "pass", "none", "script or reason", "no schema change",
                    f"no rollback script needed: {rb.none_reason}")
    if rb.script is None:
        return Gate("rollback", "inconclusive", None, "script", "missing",
                    "no rollback script: the flag names none (rollback.script)")
    return Gate("rollback", "pass", rb.script_path, "script", rb.script_path or "",
                f"rollback script {rb.script_path} present (not verified by this version)")


def _failures(states: Any) -> dict[str, Any]:
    counts = Counter(s for s in states if s is not None)
    return {"count": sum(counts.values()), "by_sqlstate": dict(counts)}


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
        })
    return rows
