"""EXPLAIN samples (plan shapes as trees, buffers, misestimates) and generic plans."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._format import as_list, as_map, as_str, fmt_ms, fmt_num, fmt_ratio, number

SHAPE_MAX_DEPTH = 64


@dataclass
class _ShapeNode:
    label: str
    children: list[_ShapeNode] = field(default_factory=list)


def _shape_parse(text: str) -> _ShapeNode | None:
    """Parse plans.shape() text, "Node on rel (child, child)", into a tree; None when the
    text does not parse (a relation name with brackets or commas), so it is shown verbatim."""
    pos = 0

    def node(depth: int) -> _ShapeNode:
        nonlocal pos
        if depth > SHAPE_MAX_DEPTH:
            raise ValueError("too deep")
        ends = [
            i for i in (text.find(" (", pos), text.find(", ", pos), text.find(")", pos)) if i >= 0
        ]
        end = min(ends, default=len(text))
        label = text[pos:end]
        if not label.strip():
            raise ValueError("empty node")
        pos = end
        result = _ShapeNode(label)
        if text.startswith(" (", pos):
            pos += 2
            result.children.append(node(depth + 1))
            while text.startswith(", ", pos):
                pos += 2
                result.children.append(node(depth + 1))
            if not text.startswith(")", pos):
                raise ValueError("unbalanced")
            pos += 1
        return result

    try:
        root = node(0)
    except ValueError:
        return None
    return root if pos == len(text) else None


def _shape_lines(shape: str) -> list[str]:
    """A plan shape as an indented tree, one node per line."""
    root = _shape_parse(shape)
    if root is None:
        return [shape]
    lines = [root.label]

    def walk(node: _ShapeNode, prefix: str) -> None:
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{child.label}")
            walk(child, prefix + ("   " if last else "│  "))

    walk(root, "")
    return lines


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
    return {
        "rows": rows,
        "regressions": len(regressed),
        "regressed_tenants": sorted(regressed),
        "worst_new_ratio": number(raw.get("worst_new_ratio")),
        "limit": number(limit),
    }
