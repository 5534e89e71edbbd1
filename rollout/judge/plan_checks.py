"""Gates on plans that no single sample can flip: buffers, generic plans, plan perturbation.

Each summary keeps every run it judged (the report shows them) and each gate says in words
what decided it. The rules, and why one outlier cannot move them, are in docs/gates.md:

- **buffers**: each parameter set explained on both paths is one paired ratio (new ÷
  legacy shared buffers); the gate judges the median of the paired ratios and fails only
  when at least ``MIN_PAIRED`` pairs were explained (the median is then a majority).
- **generic_plan**: each check runs both modes ``plans.GENERIC_RUNS`` times; a path fails
  for a tenant only when the generic plan is *consistently* slower (its median beyond the
  limit and by ``GENERIC_MIN_MS``, and at least ``CONSISTENT_SHARE`` of its runs beyond the
  limit against the custom median) *and* it differs in shape or buffers. A check with fewer
  than ``MIN_RUNS`` runs per mode (recorded before store version 10) can only make the gate
  inconclusive.
- **plan_determinism**: a path whose result changes with the plan (``rollout.run.perturb``);
  NO-GO when new changes and legacy does not for the same parameters.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .gates import Gate

GENERIC_MIN_MS = 1.0
"""A generic plan must also be this much slower (absolute, medians) to count as far worse."""
MIN_RUNS = 3
"""Runs per mode below which a generic-plan check cannot fail (one outlier would decide)."""
CONSISTENT_SHARE = 0.8
"""Share of the generic runs that must each be beyond the limit: 4 of 5 by default."""
BUFFERS_SAME = 0.10
"""Median buffers within this fraction (or 2 blocks) count as the same buffers."""
MIN_PAIRED = 3
"""Paired EXPLAIN samples below which the buffers gate does not fail."""
SAMPLES_SHOWN = 5


# -- EXPLAIN samples and the buffers gate --------------------------------------------------------


def plans_summary(plans: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``summaries.plans_summary``'s figures, plus the paired view: for every parameter set
    explained on both paths, new ÷ legacy buffers (``paired``), their median and how many
    exceed 1; and every sample (``runs``)."""
    out: dict[str, Any] = {"samples": len(plans), "buffers_ratio": None}
    for path in ("legacy", "new"):
        mine = [p for p in plans if p["path"] == path]
        shapes = Counter(str(p["shape"]) for p in mine)
        out[path] = {
            "samples": len(mine),
            "shapes": [{"shape": s, "count": n} for s, n in shapes.most_common(3)],
            "median_buffers": _median([p["buffers"] for p in mine]),
            "median_exec_ms": _median([p["exec_ms"] for p in mine]),
            "rows_misestimate": _median([max(float(p["plan_rows"] or 0), 1.0)
                                         / max(float(p["actual_rows"] or 0), 1.0)
                                         for p in mine]),
        }
    if out["legacy"]["median_buffers"] and out["new"]["median_buffers"] is not None:
        out["buffers_ratio"] = out["new"]["median_buffers"] / out["legacy"]["median_buffers"]
    out["same_shape"] = bool(plans) and (
        {s["shape"] for s in out["legacy"]["shapes"]} == {s["shape"] for s in out["new"]["shapes"]})
    legacy: dict[tuple[Any, str], list[Mapping[str, Any]]] = {}
    for p in plans:
        if p["path"] == "legacy":
            legacy.setdefault(_sample_key(p), []).append(p)
    paired = []
    for p in plans:
        if p["path"] != "new":
            continue
        twins = legacy.get(_sample_key(p))
        if not twins:
            continue
        twin = twins.pop(0)
        base = max(int(twin["buffers"] or 0), 1)
        paired.append({"tenant": p["tenant"], "params": p.get("params"),
                       "legacy_buffers": twin["buffers"], "new_buffers": p["buffers"],
                       "ratio": int(p["buffers"] or 0) / base,
                       "legacy_ms": twin["exec_ms"], "new_ms": p["exec_ms"]})
    ratios = [r["ratio"] for r in paired]
    out["paired"] = paired
    out["paired_ratio_median"] = _median(ratios)
    out["paired_more"] = sum(r > 1.0 for r in ratios)
    out["runs"] = [{"path": p["path"], "tenant": p["tenant"], "shape": p["shape"],
                    "buffers": p["buffers"], "exec_ms": p["exec_ms"]} for p in plans]
    return out


def buffers_gate(plans: Mapping[str, Any], limit: float | None) -> Gate:
    """The buffers gate: the median of paired ratios decides, never one sample."""
    ratio = plans.get("paired_ratio_median")
    pairs = len(plans.get("paired") or ())
    if ratio is None:
        if plans.get("buffers_ratio") is None:
            return Gate("buffers", "info", None, limit, "no plan samples",
                        "no EXPLAIN samples for this stage")
        ratio = plans["buffers_ratio"]  # samples that pair with nothing (older runs)
    shown = (f"median paired ratio {ratio:.2f}× over {pairs} parameter set"
             f"{'' if pairs == 1 else 's'} (median {plans['new']['median_buffers'] or 0:.0f} "
             f"vs {plans['legacy']['median_buffers'] or 0:.0f} buffers)")
    details = {"pairs": pairs, "more_buffers": plans.get("paired_more", 0)}
    if limit is None:
        return Gate("buffers", "info", ratio, None, shown,
                    f"new path touches {ratio:.2f}× the buffers of legacy (not gated)",
                    details=details)
    if ratio > limit:
        if pairs < MIN_PAIRED:
            return Gate("buffers", "inconclusive", ratio, limit, f"{shown} > {limit:g}×",
                        f"new path touched {ratio:.2f}× the shared buffers of legacy, but in "
                        f"only {pairs} paired sample{'' if pairs == 1 else 's'} (need "
                        f"{MIN_PAIRED}); run `rollout shadow` again", details=details,
                        lacking=True)
        return Gate("buffers", "fail", ratio, limit, f"{shown} > {limit:g}×",
                    f"new path touches {ratio:.2f}× the shared buffers of legacy (median "
                    f"of {pairs} parameter sets explained on both paths)", details=details)
    return Gate("buffers", "pass", ratio, limit, f"{shown} ≤ {limit:g}×",
                f"buffers per execution {ratio:.2f}× legacy (median of {pairs} pairs)",
                details=details)


# -- generic plans -------------------------------------------------------------------------------


def generic_row(check: Mapping[str, Any], limit: float) -> dict[str, Any]:
    """One check, judged: medians, every run, whether the generic plan is consistently
    slower, whether it differs in shape or buffers, and whether that is a regression."""
    custom = [float(x) for x in check.get("custom_runs") or [check["custom_ms"]]]
    generic = [float(x) for x in check.get("generic_runs") or [check["generic_ms"]]]
    c_buf = [int(x or 0) for x in check.get("custom_buffer_runs")
             or [check.get("custom_buffers") or 0]]
    g_buf = [int(x or 0) for x in check.get("generic_buffer_runs")
             or [check.get("generic_buffers") or 0]]
    c_ms, g_ms = statistics.median(custom), statistics.median(generic)
    ratio = g_ms / c_ms if c_ms > 0 else 1.0
    beyond = [g for g in generic if g > limit * c_ms and g - c_ms > GENERIC_MIN_MS]
    runs = min(len(custom), len(generic))
    slower = (ratio > limit and g_ms - c_ms > GENERIC_MIN_MS
              and len(beyond) >= math.ceil(CONSISTENT_SHARE * len(generic)))
    c_shape, g_shape = check.get("custom_shape"), check.get("generic_shape")
    shape_differs = c_shape is not None and g_shape is not None and c_shape != g_shape
    cb, gb = statistics.median(c_buf), statistics.median(g_buf)
    buffers_differ = abs(gb - cb) > max(2.0, BUFFERS_SAME * cb)
    differs = shape_differs or buffers_differ
    return {
        "path": check["path"], "tenant": check["tenant"],
        "custom_ms": c_ms, "generic_ms": g_ms, "ratio": ratio,
        "custom_buffers": cb, "generic_buffers": gb,
        "custom_runs": custom, "generic_runs": generic,
        "custom_buffer_runs": c_buf, "generic_buffer_runs": g_buf,
        "custom_shape": c_shape, "generic_shape": g_shape,
        "runs": runs, "runs_beyond": len(beyond),
        "consistently_slower": slower and runs >= MIN_RUNS,
        "looks_slower": slower or (runs < MIN_RUNS and ratio > limit
                                   and g_ms - c_ms > GENERIC_MIN_MS),
        "shape_differs": shape_differs, "buffers_differ": buffers_differ,
        "differs": differs,
    }


def generic_summary(checks: Sequence[Mapping[str, Any]], limit: float) -> dict[str, Any]:
    """Replaces ``summaries.generic_summary`` (same keys: ``checks``, ``regressions``,
    ``worst_new_ratio``; plus ``unconfirmed``: new-path checks that look slower but on too
    few runs, or not consistently, or with the same plan and buffers)."""
    rows = [generic_row(c, limit) for c in checks]
    legacy_bad = {r["tenant"] for r in rows if r["path"] == "legacy" and r["looks_slower"]}
    regressions, unconfirmed = [], []
    for r in rows:
        if r["path"] != "new" or r["tenant"] in legacy_bad:
            continue
        if r["consistently_slower"] and r["differs"]:
            regressions.append(r)
        elif r["looks_slower"]:
            unconfirmed.append(r)
    new_ratios = [r["ratio"] for r in rows if r["path"] == "new"]
    return {"checks": rows, "regressions": regressions, "unconfirmed": unconfirmed,
            "worst_new_ratio": max(new_ratios) if new_ratios else None,
            "rule": (f"fails when the generic plan's median is beyond the limit (and "
                     f"{GENERIC_MIN_MS:g} ms slower), at least {CONSISTENT_SHARE:.0%} of its "
                     f"runs are, and it differs in shape or buffers; {MIN_RUNS}+ runs per "
                     "mode")}


def generic_gate(generic: Mapping[str, Any], limit: float) -> Gate:
    """The generic-plan gate: the new path's generic plan against its custom plans."""
    if not generic["checks"]:
        return Gate("generic_plan", "info", None, limit, "not checked",
                    "no generic-plan check for this stage")
    worst = generic["worst_new_ratio"]
    if worst is None:
        return Gate("generic_plan", "info", None, limit, "new path not checked",
                    "no generic-plan check of the new path succeeded (only legacy was "
                    "checked)")
    bad = generic["regressions"]
    runs = min(r["runs"] for r in generic["checks"])
    shown = f"worst new generic/custom {worst:.1f}× (median of {runs}+ runs, limit {limit:g}×)"
    if bad:
        parts = []
        for b in bad:
            why = ("another plan" if b["shape_differs"] else
                   f"{b['generic_buffers']:.0f} vs {b['custom_buffers']:.0f} buffers")
            parts.append(f"{b['tenant']} ({b['ratio']:.1f}×, {b['runs_beyond']} of "
                         f"{len(b['generic_runs'])} runs beyond the limit, {why})")
        return Gate("generic_plan", "fail", worst, limit, shown,
                    f"new path's generic plan is consistently far slower than its custom "
                    f"plan for {', '.join(parts)} (as psycopg runs it after 5 executions)",
                    details={"regressions": [_brief(b) for b in bad]})
    doubtful = [u for u in generic["unconfirmed"] if u["runs"] < MIN_RUNS]
    if doubtful:
        tenants = ", ".join(str(u["tenant"]) for u in doubtful)
        return Gate("generic_plan", "inconclusive", worst, limit, shown,
                    f"new path's generic plan looked slower for {tenants} in a single run "
                    "per mode (a check recorded before store version 10); one run decides "
                    "nothing: run `rollout shadow` again to repeat it", lacking=True)
    aside = ""
    if generic["unconfirmed"]:
        tenants = ", ".join(str(u["tenant"]) for u in generic["unconfirmed"])
        aside = (f"; slower runs for {tenants} were not consistent, or the plans and "
                 "buffers were the same (timing noise)")
    return Gate("generic_plan", "pass", worst, limit, shown,
                "generic plans of the new path hold up for every checked tenant" + aside)


def _brief(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("tenant", "ratio", "custom_runs", "generic_runs",
                                "custom_shape", "generic_shape", "custom_buffers",
                                "generic_buffers")}


# -- plan perturbation ---------------------------------------------------------------------------


def perturbation_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per parameter set (run and sample), whether each path's result changed under another
    plan (``rollout.run.perturb``): ``blamed`` where only new changed, ``both``, ``legacy_only``;
    ``volatile`` where a path changed even repeated under the same plan; ``order_only``
    where it changed only in ways the flag's compare rules ignore. Diff samples carry the
    settings that exposed them."""
    samples: dict[tuple[str, int], dict[str, Any]] = {}
    failed = 0
    elapsed_ns = 0
    for r in rows:
        key = (str(r.get("run_id") or ""), int(r["sample"]))
        s = samples.setdefault(key, {"tenant": r["tenant"], "params": r["params"],
                                     "legacy": [], "new": []})
        s[r["path"]].append(r)
        elapsed_ns += int(r.get("elapsed_ns") or 0)
        failed += r.get("sqlstate") is not None or r.get("error") is not None
    out: dict[str, Any] = {
        "samples": len(samples), "executions": len(rows), "failed": failed,
        "elapsed_ms": elapsed_ns / 1e6,
        "settings": sorted({str(r["setting"]) for r in rows}),
        "blamed": [], "both": [], "legacy_only": [], "order_only": [], "volatile": [],
        "compared": 0,
    }
    for s in samples.values():
        verdicts = {path: _path_changes(s[path]) for path in ("legacy", "new")}
        if all(v["compared"] for v in verdicts.values()):
            out["compared"] += 1
        entry = {"tenant": s["tenant"], "params": s["params"],
                 "legacy": verdicts["legacy"]["exposed"], "new": verdicts["new"]["exposed"]}
        changed = {p: bool(v["exposed"]) for p, v in verdicts.items()}
        for path, v in verdicts.items():
            if v["volatile"]:
                out["volatile"].append({**entry, "path": path})
        if changed["new"] and not changed["legacy"]:
            out["blamed"].append(entry)
        elif changed["new"] and changed["legacy"]:
            out["both"].append(entry)
        elif changed["legacy"]:
            out["legacy_only"].append(entry)
        if not changed["new"] and verdicts["new"]["strict_only"]:
            out["order_only"].append({**entry, "new": verdicts["new"]["strict_only"]})
    for kind in ("blamed", "both", "legacy_only", "order_only", "volatile"):
        out[f"{kind}_omitted"] = max(0, len(out[kind]) - SAMPLES_SHOWN)
        out[kind] = out[kind][:SAMPLES_SHOWN]
    out["counts"] = {k: len(out[k]) + out[f"{k}_omitted"]
                     for k in ("blamed", "both", "legacy_only", "order_only", "volatile")}
    return out


def _path_changes(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The settings under which one path's result changed (under the compare rules), and
    those where only the strict comparison saw a change."""
    exposed, strict_only = [], []
    volatile = False
    compared = False
    for r in rows:
        if r["changed"] is None:
            continue
        compared = True
        item = {"setting": r["setting"], "settings": _settings(r["settings"]),
                "diff": r.get("diff") or []}
        if r["changed"]:
            exposed.append(item)
            volatile |= r["setting"] == "same plan"
        elif r.get("strict_changed"):
            strict_only.append(item)
    return {"exposed": exposed[:3], "strict_only": strict_only[:3], "volatile": volatile,
            "compared": compared}


def _settings(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        value = json.loads(value)
    return {str(k): str(v) for k, v in (value or {}).items()}


def perturbation_gate(summary: Mapping[str, Any], hints: Sequence[str] = ()) -> Gate:
    """NO-GO when, for the same parameters, new's result changes with the plan and legacy's
    does not; INCONCLUSIVE when both change (the comparison then rests on today's plans);
    a pass otherwise, saying what legacy or row order did. ``hints`` are the static reasons
    (``determinism.hazards`` of the new query) named beside the evidence."""
    name = "plan_determinism"
    counts = summary.get("counts") or {}
    n = summary.get("samples", 0)
    if not n:
        return Gate(name, "info", None, 0, "not checked",
                    "no plan perturbation for this stage (an older run, an A/A run, or "
                    "large results compared by streaming or checksum)")
    if not summary.get("compared"):
        return Gate(name, "info", None, 0, "not compared",
                    f"plan perturbation ran for {n} parameter set{'s' if n != 1 else ''} but "
                    "no path ran under both plans (failures)")
    shown = (f"{counts.get('blamed', 0)} of {n} parameter sets: new alone changes with the "
             f"plan; both {counts.get('both', 0)}; legacy alone {counts.get('legacy_only', 0)}")
    details = {k: summary[k] for k in ("blamed", "both", "legacy_only", "order_only")
               if summary.get(k)}
    if counts.get("blamed"):
        first = summary["blamed"][0]
        exposed = first["new"][0]
        cause = _cause(exposed["diff"], hints, exposed["setting"])
        settings = "; ".join(f"SET LOCAL {k} = {v}" for k, v in exposed["settings"].items())
        where = f"tenant {first['tenant']}, " if first.get("tenant") is not None else ""
        how = (f"under {exposed['setting']} ({settings})" if settings
               else "when run again under the same plan")
        return Gate(name, "fail", counts["blamed"], 0, shown,
                    f"new returns different rows/order for the same parameters ({where}"
                    f"{_params(first['params'])}) {how}: {cause}; legacy returned the same "
                    "result under every plan tried", details=details)
    if counts.get("both"):
        return Gate(name, "inconclusive", counts["both"], 0, shown,
                    f"both paths return different results under another plan for "
                    f"{counts['both']} of {n} parameter sets: legacy is nondeterministic too, "
                    "so a match today rests on today's plans (fix legacy's ORDER BY, or "
                    "compare with rules that ignore the difference)", details=details)
    notes = []
    if counts.get("legacy_only"):
        notes.append(f"legacy's result changes with the plan for {counts['legacy_only']} "
                     "parameter sets and new's does not (new is the more deterministic)")
    if counts.get("order_only"):
        notes.append(f"new's row order changes with the plan for {counts['order_only']} "
                     "parameter sets, which the compare rules ignore")
    return Gate(name, "pass", 0, 0, shown,
                f"new returns the same result under every plan tried ({n} parameter sets, "
                f"{len(summary.get('settings') or ())} planner settings)"
                + (f"; {'; '.join(notes)}" if notes else ""), details=details)


def _cause(diff: Sequence[Mapping[str, Any]], hints: Sequence[str], setting: str) -> str:
    kinds = {str(d.get("kind")) for d in diff}
    if setting == "same plan":
        what = ("its result changes from one run to the next even under the same plan (a "
                "volatile function such as random() or clock_timestamp(), or data changing "
                "meanwhile)")
    elif kinds <= {"order"}:
        what = ("the same rows come in another order: its ORDER BY does not determine the "
                "order of ties")
    else:
        what = ("other rows are returned: the rows it keeps (LIMIT, DISTINCT ON, an "
                "aggregate's order) depend on an order its ORDER BY does not determine "
                "(ties)")
    return what + (f" ({'; '.join(hints)})" if hints else "")


def _params(params: Any) -> str:
    if not params:
        return "no parameters"
    return ", ".join(f"{k} = {v}" for k, v in dict(params).items())


def _sample_key(p: Mapping[str, Any]) -> tuple[Any, str]:
    return (p.get("tenant"), json.dumps(p.get("params"), sort_keys=True, default=str))


def _median(values: Sequence[Any]) -> float | None:
    clean = [float(v) for v in values if v is not None]
    return float(statistics.median(clean)) if clean else None
