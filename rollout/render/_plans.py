"""EXPLAIN samples (plan shapes as trees, buffers, misestimates) and generic plans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..plans import PlanShape
from ._diffs import params_text
from ._format import as_int, as_list, as_map, as_str, clip, fmt_ms, fmt_num, fmt_ratio, number

MAX_PAIRED = 20  # parameter sets shown in the paired buffers table
MAX_CHECKS = 40  # generic-plan checks shown run by run
MAX_RUNS = 20  # runs shown per mode and check
MAX_SHAPE = 300


def _shape_lines(shape: str) -> list[str]:
    """A plan shape as an indented tree, one node per line (as its text when it does not
    read back as a tree)."""
    tree = PlanShape.parse(shape)
    return [shape] if tree is None else tree.lines()


def _plan_path(raw: Any) -> dict[str, Any]:
    path = as_map(raw)
    shapes = []
    for item in as_list(path.get("shapes")):
        shape = as_map(item)
        text = as_str(shape.get("shape"))
        shapes.append(
            {"text": text, "tree": "\n".join(_shape_lines(text)), "count": shape.get("count")}
        )
    return {
        "samples": path.get("samples"),
        "shapes": shapes,
        "median_buffers": number(path.get("median_buffers")),
        "median_exec_ms": number(path.get("median_exec_ms")),
        "rows_misestimate": number(path.get("rows_misestimate")),
    }


def plans_view(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy, new = _plan_path(raw.get("legacy")), _plan_path(raw.get("new"))
    buffers_ratio = number(raw.get("buffers_ratio"))
    lb, nb = legacy["median_buffers"], new["median_buffers"]
    if buffers_ratio is None and lb and nb is not None:
        buffers_ratio = nb / lb
    le, ne = legacy["median_exec_ms"], new["median_exec_ms"]
    return {
        "samples": number(raw.get("samples")) or 0,
        "same_shape": raw.get("same_shape"),
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
        "paired": _paired(raw),
    }


def _paired(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """Buffers paired by parameter set (``plan_checks.plans_summary``): each set explained
    on both paths, new ÷ legacy; None for bodies that predate it."""
    if "paired" not in raw:
        return None
    pairs = [as_map(p) for p in as_list(raw.get("paired"))]
    rows = [
        {
            "tenant": as_str(p.get("tenant"), "—"),
            "params": params_text(p.get("params")),
            "legacy_buffers": fmt_num(p.get("legacy_buffers")),
            "new_buffers": fmt_num(p.get("new_buffers")),
            "ratio": fmt_ratio(p.get("ratio")),
            "more": (number(p.get("ratio")) or 0) > 1,
            "legacy_ms": fmt_ms(p.get("legacy_ms")),
            "new_ms": fmt_ms(p.get("new_ms")),
        }
        for p in pairs[:MAX_PAIRED]
    ]
    return {
        "rows": rows,
        "total": len(pairs),
        "hidden": max(0, len(pairs) - MAX_PAIRED),
        "median": number(raw.get("paired_ratio_median")),
        "more": as_int(raw.get("paired_more")),
    }


def _generic_side(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    custom, generic = number(row.get("custom_ms")), number(row.get("generic_ms"))
    ratio = number(row.get("ratio"))
    if ratio is None and custom and generic is not None:
        ratio = generic / custom
    return {
        "custom_ms": custom,
        "generic_ms": generic,
        "custom_buffers": row.get("custom_buffers"),
        "generic_buffers": row.get("generic_buffers"),
        "ratio": ratio,
    }


def generic_plans_view(raw: Any, limit: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    by_tenant: dict[str, dict[str, Mapping[str, Any]]] = {}
    for item in as_list(raw.get("checks")):
        check = as_map(item)
        tenant = as_str(check.get("tenant"), "(no tenant)")
        by_tenant.setdefault(tenant, {})[as_str(check.get("path"))] = check
    regressed = {
        as_str(as_map(r).get("tenant"), "(no tenant)") for r in as_list(raw.get("regressions"))
    }
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
    checks = [as_map(c) for c in as_list(raw.get("checks"))]
    # every run of each check: bodies written since checks repeat each mode
    repeated = any("generic_runs" in c for c in checks)
    legacy_slower = {
        as_str(c.get("tenant"), "(no tenant)")
        for c in checks
        if c.get("path") == "legacy" and c.get("looks_slower") is True
    }
    unconfirmed = sorted(
        {as_str(as_map(u).get("tenant"), "(no tenant)") for u in as_list(raw.get("unconfirmed"))}
    )
    return {
        "rows": rows,
        "regressions": len(regressed),
        "regressed_tenants": sorted(regressed),
        "worst_new_ratio": number(raw.get("worst_new_ratio")),
        "limit": number(limit),
        "repeated": repeated,
        "runs_per_mode": max((as_int(c.get("runs")) or 0 for c in checks), default=0),
        "checks": [_check_runs(c, regressed, legacy_slower) for c in checks[:MAX_CHECKS]]
        if repeated
        else [],
        "checks_hidden": max(0, len(checks) - MAX_CHECKS) if repeated else 0,
        "unconfirmed": unconfirmed,
        "rule": as_str(raw.get("rule")),
    }


def _runs_text(raw: Any) -> str:
    items = as_list(raw)
    runs = [number(x) for x in items[:MAX_RUNS]]
    text = ", ".join(f"{x:.3g}" if x is not None else "—" for x in runs)
    return text + (f" … (+{len(items) - MAX_RUNS})" if len(items) > MAX_RUNS else "")


def _check_runs(
    check: Mapping[str, Any], regressed: set[str], legacy_slower: set[str]
) -> dict[str, Any]:
    """One generic-plan check, run by run, and what it came to in words
    (``plan_checks.generic_row``'s judgement)."""
    tenant = as_str(check.get("tenant"), "(no tenant)")
    path = as_str(check.get("path"), "?")
    generic_runs = as_list(check.get("generic_runs"))
    runs = as_int(check.get("runs")) or min(
        len(as_list(check.get("custom_runs"))), len(generic_runs)
    )
    beyond = as_int(check.get("runs_beyond"))
    differs = check.get("differs") is True
    consistent = check.get("consistently_slower") is True
    looks = check.get("looks_slower") is True or consistent
    why = "another plan" if check.get("shape_differs") is True else "other buffers"
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
    c_shape, g_shape = as_str(check.get("custom_shape")), as_str(check.get("generic_shape"))
    return {
        "tenant": tenant,
        "path": path,
        "custom_runs": _runs_text(check.get("custom_runs")),
        "generic_runs": _runs_text(generic_runs),
        "custom_ms": number(check.get("custom_ms")),
        "generic_ms": number(check.get("generic_ms")),
        "ratio": number(check.get("ratio")),
        "buffers": f"{fmt_num(check.get('custom_buffers'))} vs "
        f"{fmt_num(check.get('generic_buffers'))}",
        "same_shape": bool(c_shape) and c_shape == g_shape,
        "custom_shape": clip(c_shape, MAX_SHAPE),
        "generic_shape": clip(g_shape, MAX_SHAPE),
        "status": status,
        "words": words,
    }
