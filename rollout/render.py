"""Render a go/no-go rollout report to a self-contained HTML page or to Markdown."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["render_html", "render_markdown"]

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"

HTML_MAX_SAMPLES = 10
HTML_MAX_ENTRIES = 25
HTML_MAX_VALUE = 300
MD_MAX_SAMPLES = 3
MD_MAX_ENTRIES = 4
MD_MAX_COLUMNS = 3
MD_MAX_VALUE = 60
MD_MAX_SCRIPT = 4000
# A PR comment shows only a few entries per sample; the most telling kinds go first.
MD_ENTRY_ORDER = {"columns": 0, "row_count": 1, "changed": 2, "missing": 3, "extra": 4}

QUANTILES = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))
VERDICT_CLASS = {"GO": "go", "NO-GO": "nogo", "INCONCLUSIVE": "inconclusive"}
VERDICT_ICON = {"GO": "\U0001f7e2", "NO-GO": "\U0001f534", "INCONCLUSIVE": "\U0001f7e1"}

# Condition names for the SQLSTATEs a shadow run is most likely to meet.
SQLSTATE_NAMES = {
    "08003": "connection_does_not_exist",
    "08006": "connection_failure",
    "22003": "numeric_value_out_of_range",
    "22012": "division_by_zero",
    "22P02": "invalid_text_representation",
    "23502": "not_null_violation",
    "23503": "foreign_key_violation",
    "23505": "unique_violation",
    "25P02": "in_failed_sql_transaction",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "42501": "insufficient_privilege",
    "42703": "undefined_column",
    "42883": "undefined_function",
    "42P01": "undefined_table",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "57P01": "admin_shutdown",
}

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&])")
_BACKTICKS = re.compile(r"`+")


# --------------------------------------------------------------------------- public API


def render_html(report: Mapping[str, Any]) -> str:
    """Render ``report`` to one self-contained HTML page (inline CSS and SVG, no network)."""
    return _html_env().get_template(HTML_TEMPLATE).render(r=_context(report))


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render ``report`` to Markdown short enough for a pull-request comment."""
    ctx = _context(report)
    ctx["md"] = _markdown_extras(report)
    return _markdown_env().get_template(MARKDOWN_TEMPLATE).render(r=ctx)


# --------------------------------------------------------------------------- environments


@lru_cache(maxsize=1)
def _html_env() -> Environment:
    env = Environment(
        loader=PackageLoader("rollout", "templates/report"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(_common_filters())
    return env


@lru_cache(maxsize=1)
def _markdown_env() -> Environment:
    env = Environment(
        loader=PackageLoader("rollout", "templates/report"),
        autoescape=False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(_common_filters())
    env.filters.update(
        text=md_text,
        cell=md_cell,
        code=md_code,
        code_cell=lambda value: md_code(value, in_table=True),
        fence=md_fence,
    )
    return env


def _common_filters() -> dict[str, Any]:
    return {
        "ms": fmt_ms,
        "num": fmt_num,
        "pct": fmt_pct,
        "ratio": fmt_ratio,
        "pvalue": fmt_pvalue,
        "signed_pct": fmt_signed_pct,
        "value": fmt_value,
    }


# --------------------------------------------------------------------------- number formatting


def _number(value: Any) -> float | None:
    """Return ``value`` as a finite-or-infinite float, or None for missing/non-numeric/NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return None if math.isnan(result) else result


def fmt_ms(value: Any) -> str:
    """Milliseconds with precision that suits the magnitude: 0.412 ms, 12.3 ms, 1,204 ms."""
    x = _number(value)
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞ ms"
    magnitude = abs(x)
    if magnitude >= 1000:
        text = f"{x:,.0f}"
    elif magnitude >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.3g}"
    return f"{text} ms"


def fmt_num(value: Any) -> str:
    """A gate figure or threshold of any type, as a short human string."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return _json(value)


def fmt_pct(rate: Any) -> str:
    """A fraction (0.015) as a percentage (1.5%)."""
    x = _number(rate)
    if x is None:
        return "—"
    return f"{x * 100:.3g}%"


def fmt_signed_pct(value: Any) -> str:
    """A percentage change (3.0) with an explicit sign (+3.0%)."""
    x = _number(value)
    if x is None:
        return "—"
    return f"{x:+.1f}%"


def fmt_ratio(value: Any) -> str:
    """A latency ratio (1.034) as 1.03×."""
    x = _number(value)
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞×"
    return f"{x:.3g}×"


def fmt_pvalue(value: Any) -> str:
    """A p-value, with tiny values shown as a bound."""
    x = _number(value)
    if x is None:
        return "—"
    if x < 0.001:
        return "< 0.001"
    return f"{x:.2g}"


def fmt_value(value: Any) -> str:
    """A result-set value: strings verbatim, SQL NULL as NULL, anything else as JSON."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _json(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- markdown escaping


def md_text(value: Any) -> str:
    """Escape text for Markdown prose: no HTML, no emphasis/links/code, one line."""
    text = value if isinstance(value, str) else fmt_num(value)
    text = " ".join(text.splitlines())
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_cell(value: Any) -> str:
    """Escape text for a Markdown table cell: as prose, newlines become <br>."""
    text = value if isinstance(value, str) else fmt_num(value)
    return "<br>".join(md_text(line) for line in text.splitlines()) if text else ""


def md_code(value: Any, in_table: bool = False) -> str:
    """Inline code span whose delimiter is longer than any backtick run in the value."""
    text = value if isinstance(value, str) else fmt_value(value)
    text = " ".join(text.splitlines())
    if in_table:
        text = text.replace("|", "\\|")
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    ticks = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or not text.strip():
        text = f" {text} "
    return f"{ticks}{text}{ticks}"


def md_fence(value: Any, lang: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run in the content."""
    text = value if isinstance(value, str) else fmt_value(value)
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


# --------------------------------------------------------------------------- view model


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _str(value: Any, default: str = "") -> str:
    """An identifier or free text as a string (numbers verbatim, no thousands separators)."""
    if value is None:
        return default
    return value if isinstance(value, str) else fmt_value(value)


def _context(report: Mapping[str, Any]) -> dict[str, Any]:
    verdict = _str(report.get("verdict"), "INCONCLUSIVE").upper()
    return {
        "flag": _str(report.get("flag"), "(unnamed flag)"),
        "description": _str(report.get("description")),
        "owner": _str(report.get("owner")),
        "kind": _str(report.get("kind")),
        "verdict": verdict,
        "verdict_class": VERDICT_CLASS.get(verdict, "inconclusive"),
        "verdict_icon": VERDICT_ICON.get(verdict, VERDICT_ICON["INCONCLUSIVE"]),
        "reasons": [_str(r) for r in _reasons(report.get("reasons"))],
        "generated_at": _str(report.get("generated_at")),
        "toolkit_version": _str(report.get("toolkit_version")),
        "samples": report.get("samples"),
        **_stage_context(report),
        "gates": _gates(report.get("gates")),
        "mismatches": _mismatches(report.get("mismatches")),
        "latency": _latency(report.get("latency")),
        "failures": _failures(report.get("failures")),
        "locks": _locks(report.get("locks")),
        "tenants": _tenants(report.get("tenants")),
        "rollback": _rollback(report.get("rollback")),
        "environment": _environment(report.get("environment")),
    }


def _reasons(raw: Any) -> list[Any]:
    return [raw] if isinstance(raw, str) and raw else _list(raw)


def _stage_context(report: Mapping[str, Any]) -> dict[str, Any]:
    stage = _str(report.get("stage"), "—")
    names = [_str(s) for s in _list(report.get("stages"))]
    track: list[dict[str, str]] = []
    next_stage = ""
    if stage in names:
        current = names.index(stage)
        for i, name in enumerate(names):
            state = "done" if i < current else "current" if i == current else "todo"
            track.append({"name": name, "state": state})
        if current + 1 < len(names):
            next_stage = names[current + 1]
    return {"stage": stage, "stage_track": track, "next_stage": next_stage}


def _gates(raw: Any) -> list[dict[str, Any]]:
    gates = []
    for item in _list(raw):
        gate = _map(item)
        passed = gate.get("passed")
        result = "pass" if passed is True else "fail" if passed is False else "n/a"
        display = _str(gate.get("display"))
        figure, threshold = fmt_num(gate.get("figure")), fmt_num(gate.get("threshold"))
        gates.append(
            {
                "name": _str(gate.get("name"), "(unnamed gate)"),
                "figure": display or figure,
                "threshold": threshold,
                "summary": display or f"{figure} (threshold {threshold})",
                "result": result,
                "reason": _str(gate.get("reason")),
            }
        )
    return gates


def _mismatches(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    samples = [_map(s) for s in _list(raw.get("samples"))]
    return {
        "count": raw.get("count"),
        "rate": raw.get("rate"),
        "by_kind": [(_str(k), v) for k, v in _map(raw.get("by_kind")).items()],
        "samples": [_html_sample(s) for s in samples[:HTML_MAX_SAMPLES]],
        "samples_total": len(samples),
    }


def _html_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    entries = [_map(e) for e in _list(sample.get("diff"))]
    return {
        "tenant": _str(sample.get("tenant"), "—"),
        "params": _params_text(sample.get("params")),
        "entries": [_html_entry(e) for e in entries[:HTML_MAX_ENTRIES]],
        "hidden_entries": max(0, len(entries) - HTML_MAX_ENTRIES),
        "truncated": bool(sample.get("truncated")),
    }


def _params_text(params: Any) -> str:
    if params is None:
        return ""
    if isinstance(params, Mapping):
        return ", ".join(f"{k}={_json(v)}" for k, v in params.items())
    return _json(params)


def _cell(value: Any, changed: bool = False) -> dict[str, Any]:
    """A diff table cell; NULL, the empty string and absent columns are marked, not blank."""
    classes = ["chg"] if changed else []
    if value is None or value == "":
        classes.append("null")
    return {
        "text": "''" if value == "" else _clip(fmt_value(value), HTML_MAX_VALUE),
        "css": " ".join(classes),
    }


def _entry(kind: str, title: str, **fields: Any) -> dict[str, Any]:
    """A diff entry view; every key is present so templates need no ``is defined`` tests."""
    view: dict[str, Any] = {
        "columns": None,
        "legacy": None,
        "new": None,
        "table": None,
        "raw": None,
    }
    view.update(fields, kind=kind, title=title)
    return view


def _html_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    kind = _str(entry.get("kind"), "unknown")
    if kind == "columns":
        legacy = [_str(c) for c in _list(entry.get("legacy"))]
        new = [_str(c) for c in _list(entry.get("new"))]
        return _entry(
            kind,
            "Column lists differ",
            columns={
                "legacy": [{"name": c, "odd": c not in new} for c in legacy],
                "new": [{"name": c, "odd": c not in legacy} for c in new],
            },
        )
    if kind == "row_count":
        return _entry(
            kind,
            "Row counts differ",
            legacy=fmt_num(entry.get("legacy")),
            new=fmt_num(entry.get("new")),
        )
    if kind in ("missing", "extra"):
        row = _map(entry.get("row"))
        title = "Row only in legacy result" if kind == "missing" else "Row only in new result"
        label = "legacy" if kind == "missing" else "new"
        return _entry(
            kind,
            title,
            table={
                "columns": [_str(c) for c in row],
                "changed": [False for _ in row],
                "rows": [{"label": label, "cells": [_cell(v) for v in row.values()]}],
            },
        )
    if kind == "changed":
        legacy_row = _map(entry.get("legacy"))
        new_row = _map(entry.get("new"))
        changed = {_str(c) for c in _list(entry.get("columns"))}
        columns = list(dict.fromkeys([*legacy_row, *new_row]))
        where = []
        if entry.get("position") is not None:
            where.append(f"at position {fmt_num(entry.get('position'))}")
        key = _map(entry.get("key"))
        if key:
            where.append("key " + ", ".join(f"{k}={fmt_value(v)}" for k, v in key.items()))
        return _entry(
            kind,
            "Row changed" + (f" ({'; '.join(where)})" if where else ""),
            table={
                "columns": [_str(c) for c in columns],
                "changed": [_str(c) in changed for c in columns],
                "rows": [
                    {
                        "label": label,
                        "cells": [
                            _cell(row.get(c), changed=_str(c) in changed)
                            if c in row
                            else {"text": "(absent)", "css": "chg null"}
                            for c in columns
                        ],
                    }
                    for label, row in (("legacy", legacy_row), ("new", new_row))
                ],
            },
        )
    return _entry(
        kind,
        f"Difference of kind {kind}",
        raw=_clip(_json(dict(entry)), HTML_MAX_VALUE * 4),
    )


def _path_quantiles(raw: Any) -> dict[str, Any]:
    path = _map(raw)
    return {
        **{label: path.get(key) for label, key in QUANTILES},
        "mean": path.get("mean_ms"),
        "n": path.get("n"),
    }


def _latency(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy = _path_quantiles(raw.get("legacy"))
    new = _path_quantiles(raw.get("new"))
    quantile = _number(raw.get("quantile"))
    gated = f"p{quantile * 100:g}" if quantile is not None else ""
    rows = []
    for label in [*(q for q, _ in QUANTILES), "mean"]:
        lv, nv = _number(legacy[label]), _number(new[label])
        ratio = nv / lv if lv and nv is not None else None
        rows.append(
            {
                "label": label,
                "legacy": lv,
                "new": nv,
                "ratio": ratio,
                "gated": label == gated,
            }
        )
    ci = _list(raw.get("ratio_ci"))
    ci_pair = (ci[0], ci[1]) if len(ci) == 2 else None
    if ci_pair and (_number(ci_pair[0]) is None or _number(ci_pair[1]) is None):
        ci_pair = None
    return {
        "gated": gated or "chosen quantile",
        "rows": rows,
        "n_legacy": legacy["n"],
        "n_new": new["n"],
        "ratio": raw.get("ratio"),
        "ci": ci_pair,
        "confidence": raw.get("confidence"),
        "change_pct": raw.get("change_pct"),
        "mann_whitney_p": raw.get("mann_whitney_p"),
        "chart": _latency_chart(legacy, new, gated),
    }


def _latency_chart(
    legacy: Mapping[str, Any], new: Mapping[str, Any], gated: str
) -> dict[str, Any] | None:
    """Geometry for a horizontal grouped bar chart of both paths' quantiles."""
    values = [_number(p[q]) for q, _ in QUANTILES for p in (legacy, new)]
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not finite:
        return None
    scale_max = max(finite)
    width, label_w, value_w, top = 640, 64, 96, 30
    bar_h, bar_gap, group_gap = 14, 3, 14
    area = width - label_w - value_w
    groups = []
    y = top
    for q, _ in QUANTILES:
        bars = []
        for i, (path, data) in enumerate((("legacy", legacy), ("new", new))):
            v = _number(data[q])
            bar_y = y + i * (bar_h + bar_gap)
            if v is None or not math.isfinite(v) or v <= 0:
                length = 0.0
            else:
                length = max(1.0, v / scale_max * area)
            bars.append(
                {
                    "path": path,
                    "x": label_w,
                    "y": bar_y,
                    "w": round(length, 1),
                    "h": bar_h,
                    "text": fmt_ms(v),
                    "text_x": round(label_w + length + 6, 1),
                    "text_y": bar_y + bar_h - 3,
                }
            )
        groups.append({"label": q, "gated": q == gated, "y": y + bar_h + 4, "bars": bars})
        y += 2 * bar_h + bar_gap + group_gap
    return {"width": width, "height": y - group_gap + 6, "groups": groups}


def _failures(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy, new = _map(raw.get("legacy")), _map(raw.get("new"))
    by_legacy, by_new = _map(legacy.get("by_sqlstate")), _map(new.get("by_sqlstate"))
    codes = sorted({_str(c) for c in (*by_legacy, *by_new)})
    return {
        "legacy": legacy.get("count"),
        "new": new.get("count"),
        "new_only": raw.get("new_only"),
        "rows": [
            {
                "code": code,
                "name": SQLSTATE_NAMES.get(code, ""),
                "legacy": by_legacy.get(code, 0),
                "new": by_new.get(code, 0),
            }
            for code in codes
        ],
    }


def _locks(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy, new = _map(raw.get("legacy")), _map(raw.get("new"))
    metrics = list(dict.fromkeys([*legacy, *new]))
    return {
        "rows": [
            {
                "metric": _str(m).replace("_", " "),
                "legacy": legacy.get(m),
                "new": new.get(m),
            }
            for m in metrics
        ],
        "note": _str(raw.get("note")),
    }


def _tenants(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    tenants = []
    for item in _list(raw):
        t = _map(item)
        mismatches, failures = _number(t.get("mismatches")), _number(t.get("new_failures"))
        tenants.append(
            {
                "tenant": _str(t.get("tenant"), "—"),
                "samples": t.get("samples"),
                "mismatches": t.get("mismatches"),
                "legacy_p50_ms": t.get("legacy_p50_ms"),
                "new_p50_ms": t.get("new_p50_ms"),
                "new_failures": t.get("new_failures"),
                "flagged": bool(mismatches) or bool(failures),
            }
        )
    return tenants


def _rollback(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    script, migration = raw.get("script"), raw.get("migration")
    return {
        "steps": [_str(s) for s in _list(raw.get("steps"))],
        "flag_command": _str(raw.get("flag_command")),
        "script_path": _str(raw.get("script_path")),
        "script": script if isinstance(script, str) else None,
        "migration_path": _str(raw.get("migration_path")),
        "migration": migration if isinstance(migration, str) else None,
        "verified": raw.get("verified") is True,
        "verification": _str(raw.get("verification")),
    }


def _environment(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    return {
        "server_version": _str(raw.get("server_version"), "—"),
        "database": _str(raw.get("database"), "—"),
        "toolkit_version": _str(raw.get("toolkit_version"), "—"),
        "runs": [_str(r) for r in _list(raw.get("runs"))],
        "first_observation": _str(raw.get("first_observation"), "—"),
        "last_observation": _str(raw.get("last_observation"), "—"),
    }


# --------------------------------------------------------------------------- markdown extras


def _markdown_extras(report: Mapping[str, Any]) -> dict[str, Any]:
    mismatches = _map(report.get("mismatches"))
    samples = [_map(s) for s in _list(mismatches.get("samples"))]
    rollback = _map(report.get("rollback"))
    script = rollback.get("script")
    script_clipped = False
    if isinstance(script, str) and len(script) > MD_MAX_SCRIPT:
        script = script[:MD_MAX_SCRIPT].rstrip("\n") + "\n-- … (truncated; see the full script)"
        script_clipped = True
    return {
        "samples": [_md_sample(s) for s in samples[:MD_MAX_SAMPLES]],
        "samples_total": len(samples),
        "script": script if isinstance(script, str) else None,
        "script_clipped": script_clipped,
    }


def _md_value(value: Any) -> str:
    return md_code(_clip(fmt_value(value), MD_MAX_VALUE))


def _md_row(row: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={fmt_value(v)}" for k, v in row.items())
    return md_code(_clip(text, MD_MAX_VALUE * 2))


def _md_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    entries = sorted(
        (_map(e) for e in _list(sample.get("diff"))),
        key=lambda e: MD_ENTRY_ORDER.get(_str(e.get("kind")), len(MD_ENTRY_ORDER)),
    )
    lines = [_md_entry(e) for e in entries[:MD_MAX_ENTRIES]]
    hidden = len(entries) - MD_MAX_ENTRIES
    if hidden > 0:
        lines.append(f"… {hidden} more difference{'s' if hidden != 1 else ''}")
    if sample.get("truncated"):
        lines.append("… diff truncated by the collector")
    params = _params_text(sample.get("params"))
    return {
        "tenant": md_text(_clip(_str(sample.get("tenant"), "—"), MD_MAX_VALUE)),
        "params": md_code(_clip(params, MD_MAX_VALUE * 2)) if params else "",
        "lines": lines,
    }


def _md_entry(entry: Mapping[str, Any]) -> str:
    kind = _str(entry.get("kind"), "unknown")
    if kind == "columns":
        legacy = ", ".join(_str(c) for c in _list(entry.get("legacy")))
        new = ", ".join(_str(c) for c in _list(entry.get("new")))
        return (
            f"columns differ: legacy {md_code(_clip(legacy, MD_MAX_VALUE * 2))}"
            f" vs new {md_code(_clip(new, MD_MAX_VALUE * 2))}"
        )
    if kind == "row_count":
        return (
            f"row count: legacy {md_text(fmt_num(entry.get('legacy')))},"
            f" new {md_text(fmt_num(entry.get('new')))}"
        )
    if kind == "missing":
        return f"row only in legacy: {_md_row(_map(entry.get('row')))}"
    if kind == "extra":
        return f"row only in new: {_md_row(_map(entry.get('row')))}"
    if kind == "changed":
        legacy_row, new_row = _map(entry.get("legacy")), _map(entry.get("new"))
        columns = [_str(c) for c in _list(entry.get("columns"))]
        where = []
        if entry.get("position") is not None:
            where.append(f"position {md_text(fmt_num(entry.get('position')))}")
        key = _map(entry.get("key"))
        if key:
            where.append("key " + _md_row(key))
        changes = [
            f"{md_text(c)} {_md_value(legacy_row.get(c))} → {_md_value(new_row.get(c))}"
            for c in columns[:MD_MAX_COLUMNS]
        ]
        if len(columns) > MD_MAX_COLUMNS:
            changes.append(f"+{len(columns) - MD_MAX_COLUMNS} more columns")
        head = "changed row" + (f" ({', '.join(where)})" if where else "")
        return f"{head}: {'; '.join(changes) or 'values differ'}"
    return f"{md_text(kind)}: {md_code(_clip(_json(dict(entry)), MD_MAX_VALUE * 2))}"
