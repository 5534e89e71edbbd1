"""Render a go/no-go rollout report to a self-contained HTML page or to Markdown."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import psycopg
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from psycopg.conninfo import conninfo_to_dict

from .verdict import failure_class

__all__ = ["highlight_sql", "render_html", "render_index", "render_markdown"]

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"
INDEX_TEMPLATE = "index.html.j2"

HTML_MAX_SAMPLES = 10
HTML_MAX_ENTRIES = 25
HTML_MAX_VALUE = 300
MD_MAX_SAMPLES = 3
MD_MAX_ENTRIES = 4
MD_MAX_COLUMNS = 3
MD_MAX_VALUE = 60
MD_MAX_SCRIPT = 4000
MD_MIN_SCRIPT = 200  # below this, the comment points to the HTML report instead
MD_BUDGET = 11_500  # characters: a comment stays under 12,000 with room to spare
MD_MAX_TEXT = 300  # a description, reason, plan step or verification status
MD_MAX_CELL = 160  # a gate's figure or reason in the gates table
# A PR comment shows only a few entries per sample; the most telling kinds go first.
MD_ENTRY_ORDER = {
    "columns": 0,
    "column_types": 1,
    "row_count": 2,
    "changed": 3,
    "value": 4,
    "missing": 5,
    "extra": 6,
    "duplicate_key": 7,
    "order": 8,
}
MD_MAX_DIFFERENCES = 3
HAZARD_MAX_STATEMENT = 300
TIMELINE_MAX_EVENTS = 20
INDEX_MAX_DESCRIPTION = 160

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
    # failures without a SQLSTATE are counted under this key
    "client": "client-side error, no SQLSTATE",
}

GATE_STATUSES = ("pass", "fail", "inconclusive", "info")

# Failure classes as rollout.verdict.failure_class names them, in reading order.
FAILURE_CLASSES = (
    "serialization_failure",
    "deadlock",
    "lock_timeout",
    "statement_timeout",
    "constraint_violation",
    "connection",
    "client",
    "other",
)

# Per-path lock-wait figures: key, label, unit.
LOCK_METRICS = (
    ("measured", "executions measured", "count"),
    ("waited", "executions that waited for a lock", "count"),
    ("mean_wait_ms", "mean wait per execution", "ms"),
    ("p95_wait_ms", "p95 wait", "ms"),
    ("max_wait_ms", "longest wait", "ms"),
    ("lock_timeouts", "lock timeouts (55P03)", "count"),
)
LOCK_LISTS = ("held", "waited_on")

# Table-level lock modes, weakest first (PostgreSQL's conflict table order).
LOCK_STRENGTH = {
    "AccessShareLock": 1,
    "RowShareLock": 2,
    "RowExclusiveLock": 3,
    "ShareUpdateExclusiveLock": 4,
    "ShareLock": 5,
    "ShareRowExclusiveLock": 6,
    "ExclusiveLock": 7,
    "AccessExclusiveLock": 8,
}

DATABASE_STATS = (
    ("xact_commit", "transactions committed"),
    ("xact_rollback", "transactions rolled back"),
    ("deadlocks", "deadlocks"),
    ("conflicts", "recovery conflicts"),
    ("temp_files", "temporary files written"),
    ("blks_read", "blocks read from disk or OS cache"),
    ("blks_hit", "blocks found in shared buffers"),
)
# Any of these above zero deserves a second look.
DATABASE_STATS_WARN = {"deadlocks", "conflicts", "temp_files"}

SHAPE_MAX_DEPTH = 64
MAX_SENTENCE_NAMES = 6
MD_MAX_LOCK_LINES = 3

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
    template = _markdown_env().get_template(MARKDOWN_TEMPLATE)
    text = template.render(r=ctx)
    script = _map(report.get("rollback")).get("script")
    excess = len(text) - MD_BUDGET
    if excess > 0 and isinstance(script, str) and ctx["md"]["script"] is not None:
        # everything else is bounded; the script gives way to stay within a comment
        keep = len(ctx["md"]["script"]) - excess - 100
        ctx["md"].update(_md_script(script, keep))
        text = template.render(r=ctx)
    return text


def render_index(data: Mapping[str, Any]) -> str:
    """Render the workspace index (``reports/index.html``): every flag, its live stage, the
    latest verdict per stage and relative links to the HTML reports. ``data`` is what
    ``rollout.report.write_index`` collects; missing or malformed parts are shown as such."""
    return _html_env().get_template(INDEX_TEMPLATE).render(ix=_index_context(data))


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
        clip=lambda value, limit: _clip(_str(value), limit),
    )
    env.globals.update(MD_MAX_TEXT=MD_MAX_TEXT, MD_MAX_CELL=MD_MAX_CELL)
    return env


def _common_filters() -> dict[str, Any]:
    return {
        "ms": fmt_ms,
        "num": fmt_num,
        "pct": fmt_pct,
        "ratio": fmt_ratio,
        "pvalue": fmt_pvalue,
        "p": fmt_p,
        "ci": fmt_ci,
        "signed_pct": fmt_signed_pct,
        "value": fmt_value,
        "seconds": fmt_seconds,
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
    if x > 0.999:
        return "> 0.999"
    return f"{x:.2g}"


def fmt_p(value: Any) -> str:
    """A p-value as a statement: p = 0.41, p < 0.001, p > 0.999."""
    text = fmt_pvalue(value)
    return f"p {text}" if text[0] in "<>" else f"p = {text}"


def fmt_ci(pair: Any) -> str:
    """A confidence interval of ratios ([0.836, 1.017]) as 0.836–1.02."""
    low, high = pair if isinstance(pair, list | tuple) and len(pair) == 2 else (None, None)
    lo, hi = _number(low), _number(high)
    if lo is None or hi is None:
        return "—"
    return f"{fmt_ratio(lo)[:-1]}–{fmt_ratio(hi)[:-1]}"


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


@dataclass
class _ShapeNode:
    label: str
    children: list[_ShapeNode] = field(default_factory=list)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _str(value: Any, default: str = "") -> str:
    """An identifier or free text as a string (numbers verbatim, no thousands separators)."""
    if value is None:
        return default
    return value if isinstance(value, str) else fmt_value(value)


def _pair(value: Any) -> tuple[float, float] | None:
    """A two-number interval, or None when absent or not numeric."""
    items = _list(value)
    if len(items) != 2:
        return None
    low, high = _number(items[0]), _number(items[1])
    return None if low is None or high is None else (low, high)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _counts(value: Any) -> list[tuple[str, Any]]:
    """A {name: count} mapping as pairs, largest count first, then by name."""
    pairs = [(_str(k), v) for k, v in _map(value).items()]
    return sorted(pairs, key=lambda kv: (-(_number(kv[1]) or 0), kv[0]))


def _counts_text(value: Any) -> str:
    """{"deadlock": 2, "other": 1} as "deadlock 2, other 1" ("" when empty)."""
    return ", ".join(f"{k} {fmt_num(v)}" for k, v in _counts(value))


def _context(report: Mapping[str, Any]) -> dict[str, Any]:
    verdict = _str(report.get("verdict"), "INCONCLUSIVE").upper()
    flag = _str(report.get("flag"), "(unnamed flag)")
    stage = _stage_context(report)
    gates = _gates(report.get("gates"))
    gate_limits = {g["name"]: g["threshold_value"] for g in gates}
    return {
        "schema_version": report.get("schema_version"),
        "flag": flag,
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
        **stage,
        "gates": gates,
        "gates_passed": sum(g["result"] == "pass" for g in gates),
        "gates_judged": sum(g["result"] != "info" for g in gates),
        "gates_info": sum(g["result"] == "info" for g in gates),
        "noise": _noise(report.get("noise"), flag, stage["stage"]),
        "mismatches": _mismatches(report.get("mismatches")),
        "latency": _latency(report.get("latency")),
        "failures": _failures(report.get("failures")),
        "locks": _locks(report.get("locks")),
        "plans": _plans(report.get("plans")),
        "generic_plans": _generic_plans(
            report.get("generic_plans"), gate_limits.get("generic_plan")
        ),
        "stage_impact": _stage_impact(report.get("stage_impact"), stage["stage"]),
        "tenants": _tenants(report.get("tenants")),
        "queries": _queries(report.get("queries")),
        "rollback": _rollback(report.get("rollback")),
        "timeline": _timeline(report.get("timeline"), stage["stage"]),
        "database_stats": _database_stats(report.get("database_stats")),
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


def _gate_status(gate: Mapping[str, Any]) -> str:
    """pass | fail | inconclusive | info; schema 1 bodies only carry ``passed`` (None: n/a)."""
    status = _str(gate.get("status")).lower()
    if status in GATE_STATUSES:
        return status
    passed = gate.get("passed")
    return "pass" if passed is True else "fail" if passed is False else "n/a"


def _details_text(raw: Any, display: str = "") -> str:
    """A gate's ``details`` as one short line; empty values, and values the gate's display
    already shows, are left out."""
    parts = []
    for key, value in _map(raw).items():
        if isinstance(value, Mapping):
            text = _counts_text(value)
        elif isinstance(value, list | tuple):
            text = ", ".join(fmt_num(v) for v in value)
        else:
            text = fmt_num(value)
        if text and text not in display:
            parts.append(f"{_str(key).replace('_', ' ')}: {text}")
    return "; ".join(parts)


def _gates(raw: Any) -> list[dict[str, Any]]:
    gates = []
    for item in _list(raw):
        gate = _map(item)
        result = _gate_status(gate)
        display = _str(gate.get("display"))
        figure, threshold = fmt_num(gate.get("figure")), fmt_num(gate.get("threshold"))
        if display:
            summary = display
        elif gate.get("threshold") is None:
            summary = figure
        else:
            summary = f"{figure} (threshold {threshold})"
        gates.append(
            {
                "name": _str(gate.get("name"), "(unnamed gate)"),
                "figure": display or figure,
                "threshold": threshold,
                "threshold_value": gate.get("threshold"),
                "summary": summary,
                "result": result,
                "confidence": _number(gate.get("confidence")),
                "details": _details_text(gate.get("details"), display),
                "reason": _str(gate.get("reason")),
            }
        )
    return gates


def _noise(raw: Any, flag: str, stage: str) -> dict[str, Any] | None:
    """The A/A calibration (legacy against itself); None for bodies that predate it."""
    if not isinstance(raw, Mapping):
        return None
    samples = _number(raw.get("samples")) or 0
    command = f"rollout shadow {shlex.quote(flag)}"
    if stage and stage != "—":
        command += f" --stage {shlex.quote(stage)}"
    return {
        "ran": samples > 0,
        "samples": raw.get("samples"),
        "compared": raw.get("compared"),
        "mismatch_rate": _number(raw.get("mismatch_rate")),
        "latency_ratio": _number(raw.get("latency_ratio")),
        "latency_ci": _pair(raw.get("latency_ci")),
        "command": command + " --aa",
    }


def _mismatches(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    samples = [_map(s) for s in _list(raw.get("samples"))]
    shown = samples[:HTML_MAX_SAMPLES]
    omitted = _int(raw.get("samples_omitted")) or 0
    return {
        "count": raw.get("count"),
        "compared": raw.get("compared"),
        "rate": raw.get("rate"),
        "noise_rate": _number(raw.get("noise_rate")),
        "by_kind": [(_str(k), v) for k, v in _map(raw.get("by_kind")).items()],
        "samples": [_html_sample(s) for s in shown],
        "samples_total": len(samples),
        "samples_omitted": omitted,
        # mismatching executions without a diff shown here: cut by the HTML bound or
        # left out of the report body altogether
        "samples_hidden": len(samples) - len(shown) + omitted,
    }


def _html_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    entries = [_map(e) for e in _list(sample.get("diff"))]
    return {
        "tenant": _str(sample.get("tenant"), "—"),
        "params": _params_text(sample.get("params")),
        "entries": _group_rows([_html_entry(e) for e in entries[:HTML_MAX_ENTRIES]]),
        "hidden_entries": max(0, len(entries) - HTML_MAX_ENTRIES),
        "truncated": bool(sample.get("truncated")),
    }


def _group_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive rows only in one result (missing, extra) with the same columns become one
    table: a block of lost rows reads as a table, not as a stack of one-row tables."""
    out: list[dict[str, Any]] = []
    for entry in entries:
        last = out[-1] if out else None
        if (
            entry["kind"] in ("missing", "extra")
            and last is not None
            and last["kind"] in ("missing", "extra", "rows")
            and last["table"]["columns"] == entry["table"]["columns"]
        ):
            last["table"]["rows"].extend(entry["table"]["rows"])
            last["kind"] = "rows"
            labels = [row["label"] for row in last["table"]["rows"]]
            only_legacy, only_new = labels.count("legacy"), labels.count("new")
            if only_new == 0:
                last["title"] = f"Rows only in legacy result ({only_legacy})"
            elif only_legacy == 0:
                last["title"] = f"Rows only in new result ({only_new})"
            else:
                last["title"] = (
                    f"Rows only in one result ({only_legacy} only in legacy,"
                    f" {only_new} only in new)"
                )
            continue
        out.append(entry)
    return out


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
        "names": None,
        "legacy": None,
        "new": None,
        "table": None,
        "note": "",
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
            note=_str(entry.get("note")),
        )
    if kind == "column_types":
        return _entry(
            kind,
            "Column types differ",
            names=[_str(c) for c in _list(entry.get("columns"))],
            note="Same column names, different data types: values are not compared.",
        )
    if kind == "order":
        rows = entry.get("rows")
        return _entry(
            kind,
            "Same rows, different order",
            legacy=fmt_num(rows) if rows is not None else "",
            note=_str(entry.get("note")),
        )
    if kind == "duplicate_key":
        key = _map(entry.get("key"))
        side = _str(entry.get("side"), "?")
        return _entry(
            kind,
            f"Duplicate key in the {side} result",
            table={
                "columns": [_str(c) for c in key],
                "changed": [True for _ in key],
                "rows": [{"label": side, "cells": [_cell(v) for v in key.values()]}],
            },
        )
    if kind == "value":
        legacy_value, new_value = entry.get("legacy"), entry.get("new")
        return _entry(
            kind,
            "Values differ",
            table={
                "columns": ["value"],
                "changed": [True],
                "rows": [
                    {"label": "legacy", "cells": [_cell(legacy_value, changed=True)]},
                    {"label": "new", "cells": [_cell(new_value, changed=True)]},
                ],
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
    tolerance = _number(raw.get("effective_tolerance"))
    confidence = _number(raw.get("confidence"))
    return {
        "gated": gated or "chosen quantile",
        "rows": rows,
        "n_legacy": legacy["n"],
        "n_new": new["n"],
        # schema 1 bodies have no Hodges-Lehmann estimate at all: say nothing about it
        "hl_reported": "hl_ratio" in raw,
        "hl_ratio": _number(raw.get("hl_ratio")),
        "hl_ci": _pair(raw.get("hl_ci")),
        "ratio": _number(raw.get("ratio")),
        "ci": _pair(raw.get("ratio_ci")),
        "confidence": confidence,
        "alpha": 1 - confidence if confidence is not None else None,
        "change_pct": raw.get("change_pct"),
        "mann_whitney_p": _number(raw.get("mann_whitney_p")),
        "tolerance": tolerance,
        "limit": 1 + tolerance if tolerance is not None else None,
        "samples_needed": _int(raw.get("samples_needed")),
        "chart": _latency_chart(legacy, new, gated),
        "ecdf": _latency_ecdf(legacy, new),
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


# The quantiles a report carries, as cumulative fractions, for the distribution chart.
ECDF_LEVELS = ((0.50, "p50"), (0.90, "p90"), (0.95, "p95"), (0.99, "p99"))


def _tail(p: float) -> float:
    """The chart's vertical scale: -log10(1 - p) spreads p50, p90, p95 and p99 evenly
    enough to read the tail (0.30, 1, 1.30, 2)."""
    return -math.log10(1 - p)


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * magnitude:
            return mult * magnitude
    return 10 * magnitude


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:g}" if value >= 0.001 else f"{value:.1e}"


def _latency_ecdf(legacy: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """Geometry for the latency distribution of both paths as an empirical CDF drawn from the
    four quantiles the report carries: a dot per measured quantile, straight lines between
    them (interpolation, not data), latency on a log axis when it spans a wide range."""
    paths = []
    for name, data in (("legacy", legacy), ("new", new)):
        points = []
        for p, label in ECDF_LEVELS:
            v = _number(data[label])
            if v is not None and math.isfinite(v) and v > 0:
                points.append((p, label, v))
        paths.append((name, points))
    values = [v for _, points in paths for _, _, v in points]
    if not values:
        return None
    lo, hi = min(values), max(values)
    log = hi / lo > 4
    if log:
        x_lo = lo / 1.3
        x_hi = hi * 1.3
        ticks = [
            m * 10.0**k
            for k in range(math.floor(math.log10(x_lo)), math.ceil(math.log10(x_hi)) + 1)
            for m in (1, 2, 5)
            if x_lo <= m * 10.0**k <= x_hi
        ]
        if len(ticks) > 8:  # many decades: label the powers of ten only
            ticks = [t for t in ticks if f"{t:.0e}".startswith("1")]

        def fx(v: float) -> float:
            return (math.log10(v) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))
    else:
        step = _nice_step(hi - lo if hi > lo else hi)
        x_lo = max(0.0, math.floor(lo * 0.95 / step) * step)
        x_hi = math.ceil(hi * 1.05 / step) * step
        if x_hi <= x_lo:
            x_hi = x_lo + step
        ticks = [x_lo + i * step for i in range(round((x_hi - x_lo) / step) + 1)]

        def fx(v: float) -> float:
            return (v - x_lo) / (x_hi - x_lo)

    width, height = 640, 270
    left, right, top, bottom = 58, 18, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    t_lo, t_hi = _tail(0.5) - 0.12, _tail(0.99) + 0.12

    def sx(v: float) -> float:
        return round(left + fx(v) * plot_w, 1)

    def sy(p: float) -> float:
        return round(top + plot_h - (_tail(p) - t_lo) / (t_hi - t_lo) * plot_h, 1)

    series = []
    for name, points in paths:
        dots = [
            {"x": sx(v), "y": sy(p), "title": f"{name} {label}: {fmt_ms(v)}"}
            for p, label, v in points
        ]
        series.append(
            {
                "path": name,
                "points": " ".join(f"{d['x']},{d['y']}" for d in dots),
                "dots": dots,
                "line": len(dots) > 1,
            }
        )
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": top + plot_h,
        "log": log,
        "x_ticks": [{"x": sx(t), "label": _tick_label(t)} for t in ticks],
        "y_ticks": [{"y": sy(p), "label": f"{p * 100:g}%"} for p, _ in ECDF_LEVELS],
        "axis_x": round(left + plot_w / 2, 1),
        "axis_y": height - 8,
        "series": series,
    }


def _total(*values: Any) -> int | float:
    total = sum(_number(v) or 0 for v in values)
    return int(total) if all(v is None or _int(v) is not None for v in values) else total


def _sqlstate_class(code: str) -> str:
    if code == "client":
        return "client"
    return failure_class(code) or "other"


def _class_counts(path: Mapping[str, Any]) -> dict[str, Any]:
    """A path's failures by class; schema 1 bodies only have SQLSTATEs, so classify those."""
    if isinstance(path.get("by_class"), Mapping):
        return {_str(k): v for k, v in _map(path.get("by_class")).items()}
    out: dict[str, Any] = {}
    for code, n in _map(path.get("by_sqlstate")).items():
        cls = _sqlstate_class(_str(code))
        out[cls] = out.get(cls, 0) + (_int(n) or 0)
    return out


def _ordered_classes(names: Iterable[str]) -> list[str]:
    present = set(names)
    known = [c for c in FAILURE_CLASSES if c in present]
    return known + sorted(present - set(FAILURE_CLASSES))


def _failures(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy, new = _map(raw.get("legacy")), _map(raw.get("new"))
    by_legacy, by_new = _map(legacy.get("by_sqlstate")), _map(new.get("by_sqlstate"))
    codes = sorted({_str(c) for c in (*by_legacy, *by_new)})
    class_legacy, class_new = _class_counts(legacy), _class_counts(new)
    new_only_by_class = raw.get("new_only_by_class")
    only = _map(new_only_by_class)
    classes = []
    code_classes = [_sqlstate_class(code) for code in codes]  # so no SQLSTATE goes unshown
    for cls in _ordered_classes([*class_legacy, *class_new, *only, *code_classes]):
        classes.append(
            {
                "name": cls,
                "legacy": class_legacy.get(cls, 0),
                "new": class_new.get(cls, 0),
                "new_only": only.get(cls, 0) if isinstance(new_only_by_class, Mapping) else None,
                "sqlstates": [
                    {
                        "code": code,
                        "name": SQLSTATE_NAMES.get(code, ""),
                        "legacy": by_legacy.get(code, 0),
                        "new": by_new.get(code, 0),
                    }
                    for code in codes
                    if _sqlstate_class(code) == cls
                ],
            }
        )
    return {
        "legacy": legacy.get("count"),
        "new": new.get("count"),
        "new_only": raw.get("new_only"),
        "new_only_text": _counts_text(only),
        "legacy_text": _counts_text(class_legacy),
        "new_text": _counts_text(class_new),
        "classes": classes,
        "rows": [
            {
                "code": code,
                "name": SQLSTATE_NAMES.get(code, ""),
                "legacy": by_legacy.get(code, 0),
                "new": by_new.get(code, 0),
                "total": _total(by_legacy.get(code), by_new.get(code)),
            }
            for code in codes
        ],
    }


def _lock_value(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    return fmt_ms(value) if unit == "ms" else fmt_num(value)


def _holds(raw: Any) -> list[tuple[str, str]]:
    """[[relation, mode], ...] as pairs; malformed items are skipped."""
    out = []
    for item in _list(raw):
        pair = _list(item)
        if len(pair) >= 2:
            out.append((_str(pair[0]), _str(pair[1])))
    return out


def _strength(mode: str) -> int:
    return LOCK_STRENGTH.get(mode, 0)


def _modes(holds: Iterable[tuple[str, str]], relation: str) -> list[str]:
    return sorted({m for r, m in holds if r == relation}, key=lambda m: (_strength(m), m))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(*parts: str | list[str]) -> list[dict[str, Any]]:
    """Segments of a sentence: plain strings are prose, lists are names shown as code
    (a long list is cut after a few names; the full lists are in the locks-held table)."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            out.append({"text": part, "code": False})
            continue
        names = part if len(part) <= MAX_SENTENCE_NAMES else part[: MAX_SENTENCE_NAMES - 1]
        for i, name in enumerate(names):
            if i:
                last = i == len(names) - 1 and len(names) == len(part)
                out.append({"text": " and " if last else ", ", "code": False})
            out.append({"text": name, "code": True})
        if len(names) < len(part):
            out.append({"text": f" and {len(part) - len(names)} more", "code": False})
    return out


def _lock_differences(
    raw: Mapping[str, Any], legacy: Mapping[str, Any], new: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Sentences for the locks one path takes and the other does not, grouped by relation
    (relations in the same situation share a sentence); stronger locks on the new path first."""
    only_new, only_legacy = _holds(raw.get("only_new_holds")), _holds(raw.get("only_legacy_holds"))
    full = isinstance(legacy.get("held"), list) and isinstance(new.get("held"), list)
    held_legacy = _holds(legacy.get("held")) if full else only_legacy
    held_new = _holds(new.get("held")) if full else only_new
    groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for relation in dict.fromkeys(r for r, _ in (*only_new, *only_legacy)):
        extra_new = _modes(only_new, relation)
        extra_legacy = _modes(only_legacy, relation)
        legacy_modes = _modes(held_legacy, relation)
        new_modes = _modes(held_new, relation)
        if extra_new:
            case = "new_also" if legacy_modes else "new_only"
            key = (case, tuple(extra_new), tuple(legacy_modes))
        else:
            case = "legacy_also" if new_modes else "legacy_only"
            key = (case, tuple(extra_legacy), tuple(new_modes))
        groups.setdefault(key, []).append(relation)
    out: list[dict[str, Any]] = []
    for (case, modes, other), relations in groups.items():
        rels, mode_list, other_list = sorted(relations), list(modes), list(other)
        many = len(rels) > 1
        if case == "new_also":
            parts = _sentence(
                "The new path takes ",
                mode_list,
                " on ",
                rels,
                " where legacy took ",
                other_list,
                ".",
            )
            stronger = max(map(_strength, modes)) > max(map(_strength, other))
        elif case == "new_only":
            parts = _sentence(
                "The new path takes ", mode_list, " on ", rels, ", which legacy did not lock."
            )
            stronger = True
        elif case == "legacy_also":
            parts = _sentence(
                "Legacy took ",
                mode_list,
                " on ",
                rels,
                " where the new path takes only ",
                other_list,
                ".",
            )
            stronger = False
        else:
            parts = _sentence(
                "Legacy took ",
                mode_list,
                " on ",
                rels,
                "; the new path does not " + ("lock them." if many else "lock it."),
            )
            stronger = False
        out.append({"parts": parts, "stronger": stronger, "strength": max(map(_strength, modes))})
    out.sort(key=lambda d: (not d["stronger"], -int(d["strength"])))
    return out


def _locks(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy, new = _map(raw.get("legacy")), _map(raw.get("new"))
    rows = []
    known = {key for key, _, _ in LOCK_METRICS}
    for key, label, unit in LOCK_METRICS:
        if key in legacy or key in new:
            lv, nv = _number(legacy.get(key)), _number(new.get(key))
            worse = key != "measured" and lv is not None and nv is not None and nv > lv
            rows.append(
                {
                    "metric": label,
                    "legacy": _lock_value(legacy.get(key), unit),
                    "new": _lock_value(new.get(key), unit),
                    "worse": worse,
                }
            )
    for key in dict.fromkeys([*legacy, *new]):
        if key in known or key in LOCK_LISTS:
            continue
        rows.append(
            {
                "metric": _str(key).replace("_", " "),
                "legacy": fmt_num(legacy.get(key)),
                "new": fmt_num(new.get(key)),
                "worse": False,
            }
        )
    waited_legacy, waited_new = _map(legacy.get("waited_on")), _map(new.get("waited_on"))
    waited = [
        {"lock": _str(k), "legacy": waited_legacy.get(k, 0), "new": waited_new.get(k, 0)}
        for k in dict.fromkeys([*waited_legacy, *waited_new])
    ]
    waited.sort(key=lambda w: (-(_number(w["legacy"]) or 0) - (_number(w["new"]) or 0), w["lock"]))
    held_legacy, held_new = _holds(legacy.get("held")), _holds(new.get("held"))
    relations = sorted({r for r, _ in (*held_legacy, *held_new)})
    held = []
    for rel in relations:
        modes_legacy, modes_new = _modes(held_legacy, rel), _modes(held_new, rel)
        held.append(
            {
                "relation": rel,
                "legacy": ", ".join(modes_legacy),
                "new": ", ".join(modes_new),
                "differs": modes_legacy != modes_new,
            }
        )
    return {
        "rows": rows,
        "waited_on": waited,
        "differences": _lock_differences(raw, legacy, new),
        "held": held,
        "held_known": isinstance(legacy.get("held"), list) or isinstance(new.get("held"), list),
        "note": _str(raw.get("note")),
    }


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
    path = _map(raw)
    shapes = []
    for item in _list(path.get("shapes")):
        shape = _map(item)
        text = _str(shape.get("shape"))
        shapes.append(
            {"text": text, "tree": "\n".join(_shape_lines(text)), "count": shape.get("count")}
        )
    return {
        "samples": path.get("samples"),
        "shapes": shapes,
        "median_buffers": _number(path.get("median_buffers")),
        "median_exec_ms": _number(path.get("median_exec_ms")),
        "rows_misestimate": _number(path.get("rows_misestimate")),
    }


def _plans(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    legacy, new = _plan_path(raw.get("legacy")), _plan_path(raw.get("new"))
    buffers_ratio = _number(raw.get("buffers_ratio"))
    lb, nb = legacy["median_buffers"], new["median_buffers"]
    if buffers_ratio is None and lb and nb is not None:
        buffers_ratio = nb / lb
    le, ne = legacy["median_exec_ms"], new["median_exec_ms"]
    return {
        "samples": _number(raw.get("samples")) or 0,
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
    custom, generic = _number(row.get("custom_ms")), _number(row.get("generic_ms"))
    ratio = _number(row.get("ratio"))
    if ratio is None and custom and generic is not None:
        ratio = generic / custom
    return {
        "custom_ms": custom,
        "generic_ms": generic,
        "custom_buffers": row.get("custom_buffers"),
        "generic_buffers": row.get("generic_buffers"),
        "ratio": ratio,
    }


def _generic_plans(raw: Any, limit: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    by_tenant: dict[str, dict[str, Mapping[str, Any]]] = {}
    for item in _list(raw.get("checks")):
        check = _map(item)
        tenant = _str(check.get("tenant"), "(no tenant)")
        by_tenant.setdefault(tenant, {})[_str(check.get("path"))] = check
    regressed = {_str(_map(r).get("tenant"), "(no tenant)") for r in _list(raw.get("regressions"))}
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
        "worst_new_ratio": _number(raw.get("worst_new_ratio")),
        "limit": _number(limit),
    }


def _stage_impact(raw: Any, stage: str) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    before, after = _map(raw.get("before")), _map(raw.get("after"))

    def served(window: Mapping[str, Any]) -> str:
        n, total = _number(window.get("served_new")), _number(window.get("requests"))
        text = fmt_num(window.get("served_new"))
        return f"{text} ({fmt_pct(n / total)})" if n is not None and total else text

    rows = [
        {
            "metric": "requests",
            "before": fmt_num(before.get("requests")),
            "after": fmt_num(after.get("requests")),
            "change": "",
            "worse": False,
        },
        {
            "metric": "served by the new path",
            "before": served(before),
            "after": served(after),
            "change": "",
            "worse": False,
        },
    ]
    for key, label in (
        ("p50_ms", "p50 latency"),
        ("p95_ms", "p95 latency"),
        ("p99_ms", "p99 latency"),
        ("mean_lock_wait_ms", "mean lock wait"),
    ):
        b, a = _number(before.get(key)), _number(after.get(key))
        rows.append(
            {
                "metric": label,
                "before": fmt_ms(b),
                "after": fmt_ms(a),
                "change": fmt_ratio(a / b) if b and a is not None else "",
                "worse": False,
            }
        )
    fb, fa = _map(before.get("failures_by_class")), _map(after.get("failures_by_class"))
    classes = _ordered_classes(_str(c) for c in (*fb, *fa))
    for cls in classes:
        b, a = _number(fb.get(cls)) or 0, _number(fa.get(cls)) or 0
        rows.append(
            {
                "metric": f"failures: {cls}",
                "before": fmt_num(fb.get(cls, 0)),
                "after": fmt_num(fa.get(cls, 0)),
                "change": "",
                "worse": a > b,
            }
        )
    if not classes:
        rows.append(
            {"metric": "failures", "before": "0", "after": "0", "change": "", "worse": False}
        )
    minutes = _number(raw.get("window_minutes"))
    return {
        "changed_at": _str(raw.get("changed_at"), "—"),
        "from_stage": _str(raw.get("from_stage"), "—"),
        "to_stage": stage,
        "by": _str(raw.get("by")),
        "window": f"{minutes:g} minutes" if minutes is not None else "",
        "rows": rows,
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
                "new_failures_by_class": _counts_text(t.get("new_failures_by_class")),
                "flagged": bool(mismatches) or bool(failures),
            }
        )
    return tenants


def _queries(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    out = {}
    for path in ("legacy", "new"):
        sql = raw.get(path)
        out[path] = {
            "sql": sql if isinstance(sql, str) else None,
            "source": _str(raw.get(f"{path}_source")),
            "lines": len(sql.splitlines()) if isinstance(sql, str) else 0,
        }
    return out


def _rollback(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    script, migration = raw.get("script"), raw.get("migration")
    script = script if isinstance(script, str) else None
    migration = migration if isinstance(migration, str) else None
    none_reason = _str(raw.get("none_reason"))
    details = _map(raw.get("verification_details"))
    verified = raw.get("verified") is True
    # "none needed" only when the flag says so; a missing script is "not verified"
    state = "none needed" if none_reason else "verified" if verified else "not verified"
    hazards_raw = raw.get("hazards") if "hazards" in raw else details.get("hazards")
    hazards = [_hazard(_map(h)) for h in _list(hazards_raw)]
    summary = _hazard_summary(hazards)
    if none_reason:
        kpi_label = "rollback: no schema change"
    elif script is None:
        kpi_label = "rollback: no script"
    else:
        kpi_label = "rollback script"
        worst = next((h["worst"] for h in summary if h["script"] == "rollback"), None)
        if worst:
            kpi_label += f"; takes {worst['strongest'][1]}"
    checks = []
    for key, yes, no, judged in ROLLBACK_CHECKS:
        value = details.get(key)
        if isinstance(value, bool):
            checks.append({"text": yes if value else no, "ok": value if judged else None})
    return {
        "steps": [_str(s) for s in _list(raw.get("steps"))],
        "flag_command": _str(raw.get("flag_command")),
        "script_path": _str(raw.get("script_path")),
        "script": script,
        "script_html": highlight_sql(script) if script is not None else [],
        "migration_path": _str(raw.get("migration_path")),
        "migration": migration,
        "migration_html": highlight_sql(migration) if migration is not None else [],
        "none_reason": none_reason,
        "verified": verified,
        "state": state,
        "verification": _str(raw.get("verification")),
        # the status without the verdict word the pill already shows
        "verification_text": re.sub(
            r"^\s*(not verified|verified|no rollback needed)\s*:\s*",
            "",
            _str(raw.get("verification")),
            flags=re.I,
        ),
        "has_details": bool(details),
        "differences": [_str(d) for d in _list(details.get("differences"))],
        "migration_differences": [_str(d) for d in _list(details.get("migration_differences"))],
        "checks": checks,
        "error": _str(details.get("error")),
        "verified_at": _str(details.get("verified_at")),
        "reused": details.get("reused") is True,
        "hazards": hazards,
        "hazards_reported": hazards_raw is not None,
        "hazard_summary": summary,
        "kpi_label": kpi_label,
    }


# What a verification found besides the schema fingerprint: key, text when true, text when
# false, and whether true is good (a check) or just a fact.
ROLLBACK_CHECKS = (
    (
        "new_path_prepares",
        "the new path's query prepares on the migrated schema",
        "the new path's query does not prepare on the migrated schema",
        True,
    ),
    (
        "resumable",
        "the migration applies again after the rollback, so the rollout can resume",
        "the migration does not apply again after the rollback",
        True,
    ),
    (
        "migration_was_applied",
        "the target already runs the migration: the rollback was proven first",
        "the target does not run the migration yet: it was applied in the scratch copy first",
        False,
    ),
)


def _lock_pair(value: Any) -> tuple[str, str] | None:
    items = _list(value)
    return (_str(items[0]), _str(items[1])) if len(items) >= 2 else None


def _hazard(raw: Mapping[str, Any]) -> dict[str, Any]:
    strongest = _lock_pair(raw.get("strongest_lock"))
    locks = _holds(raw.get("locks"))
    if strongest is None and locks:
        strongest = max(locks, key=lambda rl: _strength(rl[1]))
    why_not = _str(raw.get("why_not_transactional"))
    transactional = raw.get("transactional")
    if transactional is False and not why_not:
        why_not = "cannot run in a transaction"
    destroys = _str(raw.get("destroys_data"))
    sequences = raw.get("sequences_not_rewound") is True
    strength = _strength(strongest[1]) if strongest else 0
    others = [lock for lock in locks if lock != strongest]
    return {
        "script": _str(raw.get("script"), "—"),
        "number": _int(raw.get("statement_number")),
        "line": _int(raw.get("line")),
        "statement": _clip(_str(raw.get("statement")), HAZARD_MAX_STATEMENT),
        "strongest": strongest,
        "strength": strength,
        # other locks that block writes too; the many AccessShareLocks are only counted
        "other_locks": ", ".join(
            f"{mode} on {rel}"
            for rel, mode in others
            if _strength(mode) >= LOCK_STRENGTH["ShareUpdateExclusiveLock"]
        ),
        "weaker_locks": sum(
            _strength(mode) < LOCK_STRENGTH["ShareUpdateExclusiveLock"] for _, mode in others
        ),
        "why_not": why_not,
        "destroys": destroys,
        "sequences": sequences,
        # blocks every read and write of a table, destroys data or cannot be rolled back
        "severe": strength >= LOCK_STRENGTH["ExclusiveLock"] or bool(destroys) or bool(why_not),
    }


def _hazard_summary(hazards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per script (rollback first): its strongest lock and where, and how many statements
    are not transactional, destroy data or leave sequences advanced."""
    out = []
    scripts = sorted({h["script"] for h in hazards}, key=lambda s: (s != "rollback", s))
    for script in scripts:
        mine = [h for h in hazards if h["script"] == script]
        locking = [h for h in mine if h["strongest"]]
        worst = max(locking, key=lambda h: h["strength"]) if locking else None
        out.append(
            {
                "script": script,
                "statements": len(mine),
                "worst": worst,
                "not_transactional": sum(bool(h["why_not"]) for h in mine),
                "destroys": sum(bool(h["destroys"]) for h in mine),
                "sequences": sum(h["sequences"] for h in mine),
            }
        )
    return out


# --------------------------------------------------------------------------- SQL highlighting

# Enough of PostgreSQL's keywords to make a DDL or DML script scannable; other words stay
# plain. Matching is case-insensitive and never changes the text.
# fmt: off
SQL_KEYWORDS = frozenset(
    {
        "ADD", "ALL", "ALTER", "ALWAYS", "ANALYZE", "AND", "ANY", "AS", "ASC", "BEGIN", "BETWEEN",
        "BY", "CASCADE", "CASE", "CAST", "CHECK", "COLLATE", "COLUMN", "COMMENT", "COMMIT",
        "CONCURRENTLY", "CONSTRAINT", "COPY", "CREATE", "CROSS", "CURRENT_DATE",
        "CURRENT_TIMESTAMP", "DATA", "DEFAULT", "DEFERRABLE", "DELETE", "DESC", "DISABLE",
        "DISTINCT", "DO", "DOMAIN", "DROP", "ELSE", "ENABLE", "END", "EXCEPT", "EXCLUDE", "EXISTS",
        "EXTENSION", "FALSE", "FETCH", "FILTER", "FIRST", "FOR", "FOREIGN", "FROM", "FULL",
        "FUNCTION", "GENERATED", "GRANT", "GROUP", "HAVING", "IDENTITY", "IF", "ILIKE", "IN",
        "INCLUDE", "INDEX", "INHERITS", "INITIALLY", "INNER", "INSERT", "INTERSECT", "INTO", "IS",
        "JOIN", "KEY", "LANGUAGE", "LAST", "LATERAL", "LEFT", "LIKE", "LIMIT", "LOCK",
        "MATERIALIZED", "NATURAL", "NO", "NOT", "NOTHING", "NOWAIT", "NULL", "NULLS", "OF",
        "OFFSET", "ON", "ONLY", "OR", "ORDER", "OUTER", "OVER", "OWNER", "PARTITION", "POLICY",
        "PRIMARY", "PROCEDURE", "REFERENCES", "REFRESH", "REINDEX", "RENAME", "REPLACE", "RESTRICT",
        "RETURNING", "RETURNS", "REVOKE", "RIGHT", "ROLLBACK", "ROW", "ROWS", "SCHEMA", "SELECT",
        "SEQUENCE", "SET", "SHARE", "SOME", "TABLE", "TABLESPACE", "TEMP", "TEMPORARY", "THEN",
        "TO", "TRIGGER", "TRUE", "TRUNCATE", "TYPE", "UNION", "UNIQUE", "UNLOGGED", "UPDATE",
        "USING", "VACUUM", "VALID", "VALIDATE", "VALUE", "VALUES", "VIEW", "WHEN", "WHERE",
        "WINDOW", "WITH", "WITHOUT",
    }
)
# fmt: on

_SQL_TOKEN = re.compile(
    r"""
    (?P<c>--[^\n]*|/\*.*?(?:\*/|\Z))                           # comment
    | (?P<d>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?(?:\$(?P=tag)\$|\Z))  # dollar quote
    | (?P<s>(?:[EeBbXxNn]|[Uu]&)?'(?:[^']|'')*(?:'|\Z))            # string constant
    | (?P<q>"(?:[^"]|"")*(?:"|\Z))                               # quoted identifier
    | (?P<p>%\([^)\s]*\)s|%s|\$\d+)                              # query parameter
    | (?P<n>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)                # number
    | (?P<w>[A-Za-z_][A-Za-z_0-9$]*)                             # word
    """,
    re.S | re.X,
)
# token group -> CSS class ("" stays plain text)
_SQL_CLASS = {"c": "c", "d": "s", "s": "s", "q": "", "p": "p", "n": "n"}


def highlight_sql(sql: str) -> list[tuple[str, str]]:
    """``sql`` as (css class, text) runs for server-side highlighting: keywords ``k``,
    strings ``s``, comments ``c``, numbers ``n``, parameters ``p``, plain text ``""``.

    The texts concatenate to exactly ``sql``; the template escapes each one, so nothing in
    the script can become markup."""
    out: list[tuple[str, str]] = []

    def add(css: str, text: str) -> None:
        if not text:
            return
        if out and out[-1][0] == css:
            out[-1] = (css, out[-1][1] + text)
        else:
            out.append((css, text))

    pos = 0
    for m in _SQL_TOKEN.finditer(sql):
        add("", sql[pos : m.start()])
        group = m.lastgroup or ""
        if group == "tag":  # lastgroup names the innermost group that closed last
            group = "d"
        text = m.group(0)
        css = ("k" if text.upper() in SQL_KEYWORDS else "") if group == "w" else _SQL_CLASS[group]
        add(css, text)
        pos = m.end()
    add("", sql[pos:])
    return out


# --------------------------------------------------------------------------- timeline


def _timeline(raw: Any, report_stage: str) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    current = _str(raw.get("current_stage"))
    killed = raw.get("killed") is True
    started = raw.get("started") is True or (_int(raw.get("version")) or 0) > 0
    stages = []
    for item in _list(raw.get("stages")):
        st = _map(item)
        name = _str(st.get("name"), "—")
        stages.append(
            {
                "name": name,
                "current": st.get("current") is True or (bool(current) and name == current),
                "reported": name == report_stage,
                "serve": _str(st.get("serve")),
                "shadow": _str(st.get("shadow")),
            }
        )
    events = []
    for item in _list(raw.get("events"))[:TIMELINE_MAX_EVENTS]:
        ev = _map(item)
        from_stage, to_stage = _str(ev.get("from_stage")), _str(ev.get("to_stage"))
        if from_stage and to_stage and from_stage != to_stage:
            change = f"{from_stage} → {to_stage}"
        else:
            change = to_stage or from_stage or "—"
        events.append(
            {
                "at": _str(ev.get("at"), "—"),
                "actor": _str(ev.get("actor"), "—"),
                "action": _str(ev.get("action"), "—"),
                "change": change,
                "killed": ev.get("killed") is True,
                "reason": _str(ev.get("reason")),
                "forced": ev.get("forced") is True,
                "report_id": _str(ev.get("report_id")),
            }
        )
    if killed:
        status = "killed"
    elif not started:
        status = "not started"
    else:
        status = "live"
    return {
        "status": status,
        "current_stage": current,
        "killed": killed,
        "started": started,
        "version": _int(raw.get("version")),
        # the report judges one stage; the flag may be serving another right now
        "elsewhere": bool(current) and current != report_stage,
        "stages": stages,
        "events": events,
        "events_total": len(_list(raw.get("events"))),
    }


# --------------------------------------------------------------------------- environment


def _connection_parts(text: str) -> dict[str, str]:
    """host, port, dbname and user of a libpq connection string or URL ({} when it does
    not parse). The report's string never carries a password."""
    if not text or text == "—":
        return {}
    try:
        parsed = conninfo_to_dict(text)
    except psycopg.Error:  # not a connection string: it is still shown verbatim
        return {}
    return {k: _str(parsed[k]) for k in ("host", "port", "dbname", "user") if parsed.get(k)}


def fmt_seconds(value: Any) -> str:
    """A duration: 0.79 s, 12.4 s, 3 min 12 s, 2 h 05 min."""
    x = _number(value)
    if x is None or math.isinf(x) or x < 0:
        return "—"
    if x < 10:
        return f"{x:.2g} s" if x < 1 else f"{x:.3g} s"
    if x < 60:
        return f"{x:.1f} s"
    minutes, seconds = divmod(round(x), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _environment(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    database = _str(raw.get("database"), "—")
    parts = _connection_parts(database)
    samples = _map(raw.get("samples"))
    return {
        "server_version": _str(raw.get("server_version"), "—"),
        "database": database,
        "host": parts.get("host", ""),
        "socket": parts.get("host", "").startswith("/"),
        "port": parts.get("port", ""),
        "dbname": parts.get("dbname", ""),
        "user": parts.get("user", ""),
        "toolkit_version": _str(raw.get("toolkit_version"), "—"),
        "runs": [_str(r) for r in _list(raw.get("runs"))],
        "first_observation": _str(raw.get("first_observation"), "—"),
        "last_observation": _str(raw.get("last_observation"), "—"),
        "run_seconds": _number(raw.get("run_seconds")),
        "samples": ({k: samples.get(k) for k in ("ab", "online", "offline")} if samples else None),
    }


def _database_stats(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    stats = {_str(k): v for k, v in raw.items()}
    rows = [
        {
            "key": key,
            "label": label,
            "value": fmt_num(stats[key]),
            "warn": key in DATABASE_STATS_WARN and (_number(stats[key]) or 0) > 0,
        }
        for key, label in DATABASE_STATS
        if key in stats
    ]
    known = {key for key, _ in DATABASE_STATS}
    rows += [
        {"key": key, "label": key.replace("_", " "), "value": fmt_num(value), "warn": False}
        for key, value in stats.items()
        if key not in known
    ]
    hit, read = _number(stats.get("blks_hit")), _number(stats.get("blks_read"))
    hit_ratio = hit / (hit + read) if hit is not None and read is not None and hit + read else None
    return {"rows": rows, "hit_ratio": hit_ratio}


# --------------------------------------------------------------------------- markdown extras


def _markdown_extras(report: Mapping[str, Any]) -> dict[str, Any]:
    mismatches = _map(report.get("mismatches"))
    samples = [_map(s) for s in _list(mismatches.get("samples"))]
    rollback = _map(report.get("rollback"))
    script = rollback.get("script")
    locks = _locks(report.get("locks"))
    differences = locks["differences"] if locks else []
    rb = _rollback(rollback) if rollback else None
    rb_differences = (
        [*rb["differences"], *rb["migration_differences"]] if rb and not rb["verified"] else []
    )
    return {
        "hazard_lines": _md_hazard_lines(rb["hazard_summary"]) if rb else [],
        "rb_differences": [
            md_text(_clip(d, MD_MAX_VALUE * 2)) for d in rb_differences[:MD_MAX_DIFFERENCES]
        ],
        "rb_differences_more": max(0, len(rb_differences) - MD_MAX_DIFFERENCES),
        "lock_lines": [_md_sentence(d["parts"]) for d in differences[:MD_MAX_LOCK_LINES]],
        "locks_more": max(0, len(differences) - MD_MAX_LOCK_LINES),
        "samples": [_md_sample(s) for s in samples[:MD_MAX_SAMPLES]],
        "samples_total": len(samples),
        "html_samples": min(len(samples), HTML_MAX_SAMPLES),
        **_md_script(script if isinstance(script, str) else None, MD_MAX_SCRIPT),
    }


def _md_script(script: str | None, limit: int) -> dict[str, Any]:
    """The rollback script for the comment: whole, its first ``limit`` characters, or left out
    (None, with ``script_omitted``) when less than a few lines would fit."""
    if script is None or len(script) <= limit:
        return {"script": script, "script_clipped": False, "script_omitted": False}
    if limit < MD_MIN_SCRIPT:
        return {"script": None, "script_clipped": False, "script_omitted": True}
    clipped = script[:limit].rstrip("\n") + "\n-- … (truncated; see the full script)"
    return {"script": clipped, "script_clipped": True, "script_omitted": False}


def _md_hazard_lines(summary: list[dict[str, Any]]) -> list[str]:
    """One line per script: its strongest lock (where), then what else to know."""
    lines = []
    for item in summary:
        worst = item["worst"]
        head = f"{md_text(item['script'])} script"
        if worst:
            relation, mode = worst["strongest"]
            where = []
            if worst["number"] is not None:
                where.append(f"statement {worst['number']}")
            if worst["line"] is not None:
                where.append(f"line {worst['line']}")
            text = (
                f"strongest lock {md_code(_clip(mode, MD_MAX_VALUE))} on "
                f"{md_code(_clip(relation, MD_MAX_VALUE))}"
                + (f" ({', '.join(where)})" if where else "")
            )
        else:
            text = "no table locks measured"
        extra = []
        for key, what in (
            ("not_transactional", "not transactional"),
            ("destroys", "destroying data"),
            ("sequences", "leaving sequences advanced"),
        ):
            if item[key]:
                extra.append(f"{item[key]} statement{'' if item[key] == 1 else 's'} {what}")
        lines.append(f"{head}: {text}" + (f" · {', '.join(extra)}" if extra else ""))
    return lines


def _md_sentence(parts: list[dict[str, Any]]) -> str:
    return "".join(
        md_code(_clip(p["text"], MD_MAX_VALUE)) if p["code"] else md_text(p["text"]) for p in parts
    )


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
        note = _str(entry.get("note"))
        return (
            f"columns differ: legacy {md_code(_clip(legacy, MD_MAX_VALUE * 2))}"
            f" vs new {md_code(_clip(new, MD_MAX_VALUE * 2))}"
            + (f" ({md_text(_clip(note, MD_MAX_VALUE * 2))})" if note else "")
        )
    if kind == "column_types":
        names = ", ".join(_str(c) for c in _list(entry.get("columns")))
        return f"column types differ: {md_code(_clip(names, MD_MAX_VALUE * 2))}"
    if kind == "order":
        return f"same {md_text(fmt_num(entry.get('rows')))} rows in a different order"
    if kind == "duplicate_key":
        side = md_text(_clip(_str(entry.get("side"), "?"), MD_MAX_VALUE))
        return f"duplicate key in the {side} result: {_md_row(_map(entry.get('key')))}"
    if kind == "value":
        return f"value: {_md_value(entry.get('legacy'))} → {_md_value(entry.get('new'))}"
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


# --------------------------------------------------------------------------- workspace index


def _index_context(data: Mapping[str, Any]) -> dict[str, Any]:
    flags = []
    for item in _list(data.get("flags")):
        raw = _map(item)
        state = _map(raw.get("state"))
        stage = _str(state.get("stage"))
        killed = state.get("killed") is True
        started = (_int(state.get("version")) or 0) > 0
        status = "killed" if killed else "live" if started else "not started"
        stages = []
        for st_item in _list(raw.get("stages")):
            st = _map(st_item)
            name = _str(st.get("name"), "—")
            verdict = _str(st.get("verdict")).upper()
            href = _str(st.get("href"))
            stages.append(
                {
                    "name": name,
                    "current": started and name == stage,
                    "in_flag": st.get("in_flag") is not False,
                    "verdict": verdict,
                    "verdict_class": VERDICT_CLASS.get(verdict, "inconclusive")
                    if verdict
                    else "none",
                    "samples": st.get("samples"),
                    "created_at": _str(st.get("created_at")),
                    "href": href if _relative_href(href) else "",
                    "html_stale": st.get("html_stale") is True,
                }
            )
        current = next((s for s in stages if s["current"]), None)
        description = _str(raw.get("description"))
        flags.append(
            {
                "name": _str(raw.get("name"), "(unnamed flag)"),
                "description": _clip(" ".join(description.split()), INDEX_MAX_DESCRIPTION),
                "description_full": description,
                "owner": _str(raw.get("owner")),
                "error": _str(raw.get("error")),
                "status": status,
                "stage": stage,
                "killed": killed,
                "updated_at": _str(state.get("updated_at")),
                "updated_by": _str(state.get("updated_by")),
                "stages": stages,
                "current_verdict": current["verdict"] if current else "",
                "current_class": current["verdict_class"] if current else "none",
            }
        )
    statuses = [str(f["status"]) for f in flags]
    counts = {
        "flags": len(flags),
        "killed": statuses.count("killed"),
        "live": statuses.count("live"),
        "not_started": statuses.count("not started"),
        "invalid": sum(bool(f["error"]) for f in flags),
    }
    return {
        "generated_at": _str(data.get("generated_at")),
        "toolkit_version": _str(data.get("toolkit_version")),
        "flags": flags,
        "counts": counts,
    }


def _relative_href(href: str) -> bool:
    """Only links relative to the index are written: no scheme, no absolute or network path."""
    return bool(href) and not re.match(r"^([a-z][a-z0-9+.-]*:|/|\\)", href, re.I)
