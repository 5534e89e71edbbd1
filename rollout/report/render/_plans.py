"""EXPLAIN samples (plan shapes as trees, buffers, misestimates) and generic plans."""

from __future__ import annotations

from typing import Any

from ...judge.model_plans import GenericPlanCheck, GenericPlans, PlanPath, Plans
from ._diffs import params_text
from ._format import clip, fmt_ms, fmt_num, fmt_ratio, number

MAX_PAIRED = 20  # parameter sets shown in the paired buffers table
MAX_CHECKS = 40  # generic-plan checks shown run by run
MAX_RUNS = 20  # runs shown per mode and check
MAX_SHAPE = 300


def _plan_path(path: PlanPath | None) -> dict[str, Any]:
    path = path or PlanPath()
    return {
        "samples": path.samples,
        "shapes": [{"text": s.shape.text if s.shape else "",
                    "tree": "\n".join(s.shape.lines()) if s.shape else "",
                    "count": s.count} for s in path.shapes],
        "median_buffers": number(path.median_buffers),
        "median_exec_ms": number(path.median_exec_ms),
        "rows_misestimate": number(path.rows_misestimate),
    }


def plans_view(plans: Plans | None) -> dict[str, Any] | None:
    if plans is None:
        return None
    legacy, new = _plan_path(plans.legacy), _plan_path(plans.new)
    buffers_ratio = number(plans.buffers_ratio)
    lb, nb = legacy["median_buffers"], new["median_buffers"]
    if buffers_ratio is None and lb and nb is not None:
        buffers_ratio = nb / lb
    le, ne = legacy["median_exec_ms"], new["median_exec_ms"]
    return {
        "samples": number(plans.samples) or 0,
        "same_shape": plans.same_shape,
        "legacy": legacy,
        "new": new,
        "rows": [
            {
                "metric": "EXPLAIN samples",
                "legacy": fmt_num(legacy["samples"]),
                "new": fmt_num(new["samples"]),
                "ratio": "",
            },
            {
                "metric": "shared buffers per execution (median)",
                "legacy": fmt_num(lb),
                "new": fmt_num(nb),
                "ratio": fmt_ratio(buffers_ratio),
            },
            {
                "metric": "execution time (median, EXPLAIN ANALYZE)",
                "legacy": fmt_ms(le),
                "new": fmt_ms(ne),
                "ratio": fmt_ratio(ne / le if le and ne is not None else None),
            },
            {
                "metric": "planned ÷ actual rows at the top node (median)",
                "legacy": fmt_ratio(legacy["rows_misestimate"]),
                "new": fmt_ratio(new["rows_misestimate"]),
                "ratio": "",
            },
        ],
        "buffers_ratio": buffers_ratio,
        "paired": _paired(plans),
    }


def _paired(plans: Plans) -> dict[str, Any] | None:
    """Buffers paired by parameter set (``plan_checks.plans_summary``): each set explained
    on both paths, new ÷ legacy; None for bodies that predate it."""
    if "paired" in plans.absent:
        return None
    pairs = plans.paired
    rows = [
        {
            "tenant": "—" if p.tenant is None else p.tenant,
            "params": params_text(p.params),
            "legacy_buffers": fmt_num(p.legacy_buffers),
            "new_buffers": fmt_num(p.new_buffers),
            "ratio": fmt_ratio(p.ratio),
            "more": (number(p.ratio) or 0) > 1,
            "legacy_ms": fmt_ms(p.legacy_ms),
            "new_ms": fmt_ms(p.new_ms),
        }
        for p in pairs[:MAX_PAIRED]
    ]
    return {
        "rows": rows,
        "total": len(pairs),
        "hidden": max(0, len(pairs) - MAX_PAIRED),
        "median": number(plans.paired_ratio_median),
        "more": plans.paired_more,
    }


def _generic_side(check: GenericPlanCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    custom, generic = number(check.custom_ms), number(check.generic_ms)
    ratio = number(check.ratio)
    if ratio is None and custom and generic is not None:
        ratio = generic / custom
    return {
        "custom_ms": custom,
        "generic_ms": generic,
        "custom_buffers": check.custom_buffers,
        "generic_buffers": check.generic_buffers,
        "ratio": ratio,
    }


def _tenant(check: GenericPlanCheck) -> str:
    return "(no tenant)" if check.tenant is None else check.tenant


def generic_plans_view(generic: GenericPlans | None, limit: Any) -> dict[str, Any] | None:
    if generic is None:
        return None
    checks = generic.checks
    by_tenant: dict[str, dict[str, GenericPlanCheck]] = {}
    for check in checks:
        by_tenant.setdefault(_tenant(check), {})[check.path or ""] = check
    regressed = {_tenant(r) for r in generic.regressions}
    rows = [
        {
            "tenant": tenant,
            "legacy": _generic_side(paths.get("legacy")),
            "new": _generic_side(paths.get("new")),
            "regressed": tenant in regressed,
        }
        for tenant, paths in by_tenant.items()
    ]
    rows.sort(key=lambda r: (not r["regressed"], r["tenant"]))
    # every run of each check: bodies written since checks repeat each mode
    repeated = any("generic_runs" not in c.absent for c in checks)
    legacy_slower = {_tenant(c) for c in checks
                     if c.path == "legacy" and c.looks_slower is True}
    unconfirmed = sorted({_tenant(u) for u in generic.unconfirmed})
    return {
        "rows": rows,
        "regressions": len(regressed),
        "regressed_tenants": sorted(regressed),
        "worst_new_ratio": number(generic.worst_new_ratio),
        "limit": number(limit),
        "repeated": repeated,
        "runs_per_mode": max((c.runs or 0 for c in checks), default=0),
        "checks": [_check_runs(c, regressed, legacy_slower) for c in checks[:MAX_CHECKS]]
        if repeated
        else [],
        "checks_hidden": max(0, len(checks) - MAX_CHECKS) if repeated else 0,
        "unconfirmed": unconfirmed,
        "rule": generic.rule or "",
    }


def _runs_text(runs: list[float] | list[int]) -> str:
    shown = [number(x) for x in runs[:MAX_RUNS]]
    text = ", ".join(f"{x:.3g}" if x is not None else "—" for x in shown)
    return text + (f" … (+{len(runs) - MAX_RUNS})" if len(runs) > MAX_RUNS else "")


def _check_runs(check: GenericPlanCheck, regressed: set[str], legacy_slower: set[str]
                ) -> dict[str, Any]:
    """One generic-plan check, run by run, and what it came to in words
    (``plan_checks.generic_row``'s judgement)."""
    tenant = _tenant(check)
    path = "?" if check.path is None else check.path
    generic_runs = check.generic_runs
    runs = check.runs or min(len(check.custom_runs), len(generic_runs))
    beyond = check.runs_beyond
    differs = check.differs is True
    consistent = check.consistently_slower is True
    looks = check.looks_slower is True or consistent
    why = "another plan" if check.shape_differs is True else "other buffers"
    if path == "new" and tenant in regressed:
        status, words = "regression", f"consistently slower, {why}: a regression"
    elif looks and runs < 3:
        status = "few"
        words = f"{runs} run{'' if runs == 1 else 's'} per mode: too few to decide"
    elif looks and not differs:
        status, words = "noise", "timing noise: same plan and buffers"
    elif consistent:
        status, words = "slower", f"consistently slower, {why}"
    elif looks:
        status = "inconsistent"
        words = (
            f"not consistent: {fmt_num(beyond)} of {len(generic_runs)} generic runs beyond "
            "the limit"
        )
    else:
        status, words = "ok", "holds up"
    if path == "new" and tenant in legacy_slower and status != "ok":
        words += " (legacy's generic plan is slower too: not blamed on new)"
    c_shape = check.custom_shape.text if check.custom_shape else ""
    g_shape = check.generic_shape.text if check.generic_shape else ""
    return {
        "tenant": tenant,
        "path": path,
        "custom_runs": _runs_text(check.custom_runs),
        "generic_runs": _runs_text(generic_runs),
        "custom_ms": number(check.custom_ms),
        "generic_ms": number(check.generic_ms),
        "ratio": number(check.ratio),
        "buffers": f"{fmt_num(check.custom_buffers)} vs {fmt_num(check.generic_buffers)}",
        "same_shape": bool(c_shape) and c_shape == g_shape,
        "custom_shape": clip(c_shape, MAX_SHAPE),
        "generic_shape": clip(g_shape, MAX_SHAPE),
        "status": status,
        "words": words,
    }
