"""The Markdown renderer: a go/no-go report short enough for a pull-request comment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...judge.model import MismatchSample, Report
from ._analysis import md_watch
from ._business import business_checks, md_business
from ._context import report_context
from ._diffs import HTML_MAX_SAMPLES, params_text
from ._env import MARKDOWN_TEMPLATE, markdown_env
from ._format import as_list, as_map, as_str, clip, fmt_num, fmt_value, json_text
from ._locks import locks_view
from ._md_escape import md_code, md_text
from ._perturbation import md_determinism
from ._rollback import rollback_view

MD_MAX_SAMPLES = 3
MD_MAX_ENTRIES = 4
MD_MAX_COLUMNS = 3
MD_MAX_VALUE = 60
MD_MAX_SCRIPT = 4000
MD_MIN_SCRIPT = 200  # below this, the comment points to the HTML report instead
MD_BUDGET = 11_500  # characters: a comment stays under 12,000 with room to spare

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
MD_MAX_LOCK_LINES = 3


def render_markdown(report: Report) -> str:
    """Render ``report`` to Markdown short enough for a pull-request comment."""
    ctx = report_context(report)
    ctx["md"] = _markdown_extras(report)
    template = markdown_env().get_template(MARKDOWN_TEMPLATE)
    text = template.render(r=ctx)
    script = report.rollback.script if report.rollback else None
    excess = len(text) - MD_BUDGET
    if excess > 0 and script is not None and ctx["md"]["script"] is not None:
        # everything else is bounded; the script gives way to stay within a comment
        keep = len(ctx["md"]["script"]) - excess - 100
        ctx["md"].update(_md_script(script, keep))
        text = template.render(r=ctx)
    return text


def _markdown_extras(report: Report) -> dict[str, Any]:
    samples = report.mismatches.samples if report.mismatches else []
    script = report.rollback.script if report.rollback else None
    locks = locks_view(report.locks)
    differences = locks["differences"] if locks else []
    rb = rollback_view(report.rollback)
    rb_differences = (
        [*rb["differences"], *rb["migration_differences"]] if rb and not rb["verified"] else []
    )
    return {
        "hazard_lines": _md_hazard_lines(rb["hazard_summary"]) if rb else [],
        "rb_differences": [
            md_text(clip(d, MD_MAX_VALUE * 2)) for d in rb_differences[:MD_MAX_DIFFERENCES]
        ],
        "rb_differences_more": max(0, len(rb_differences) - MD_MAX_DIFFERENCES),
        "lock_lines": [_md_sentence(d["parts"]) for d in differences[:MD_MAX_LOCK_LINES]],
        "locks_more": max(0, len(differences) - MD_MAX_LOCK_LINES),
        "samples": [_md_sample(s) for s in samples[:MD_MAX_SAMPLES]],
        "samples_total": len(samples),
        "html_samples": min(len(samples), HTML_MAX_SAMPLES),
        "determinism_line": md_determinism(report.perturbation, report.gates),
        "business_line": md_business(business_checks(report.stage_impact)),
        "watch_line": md_watch(report.timeline.analysis if report.timeline else None),
        **_md_script(script, MD_MAX_SCRIPT),
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
                f"strongest lock {md_code(clip(mode, MD_MAX_VALUE))} on "
                f"{md_code(clip(relation, MD_MAX_VALUE))}"
                + (f" ({', '.join(where)})" if where else "")
            )
        else:
            text = "no table locks measured"
        extra = []
        for key, what in (
            ("not_transactional", "not transactional"),
            ("destroys", "destroying data"),
            ("beyond", "reaching beyond the database"),
            ("sequences", "leaving sequences advanced"),
        ):
            if item[key]:
                extra.append(f"{item[key]} statement{'' if item[key] == 1 else 's'} {what}")
                if key == "beyond":
                    extra[-1] += f" ({md_text(clip(item['beyond_first'], MD_MAX_VALUE * 2))})"
        lines.append(f"{head}: {text}" + (f" · {', '.join(extra)}" if extra else ""))
    return lines


def _md_sentence(parts: list[dict[str, Any]]) -> str:
    return "".join(
        md_code(clip(p["text"], MD_MAX_VALUE)) if p["code"] else md_text(p["text"]) for p in parts
    )


def _md_value(value: Any) -> str:
    return md_code(clip(fmt_value(value), MD_MAX_VALUE))


def _md_row(row: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={fmt_value(v)}" for k, v in row.items())
    return md_code(clip(text, MD_MAX_VALUE * 2))


def _md_sample(sample: MismatchSample) -> dict[str, Any]:
    entries = sorted(
        sample.diff,
        key=lambda e: MD_ENTRY_ORDER.get(as_str(e.get("kind")), len(MD_ENTRY_ORDER)),
    )
    lines = [_md_entry(e) for e in entries[:MD_MAX_ENTRIES]]
    hidden = len(entries) - MD_MAX_ENTRIES
    if hidden > 0:
        lines.append(f"… {hidden} more difference{'s' if hidden != 1 else ''}")
    if sample.truncated:
        lines.append("… diff truncated by the collector")
    params = params_text(sample.params)
    return {
        "tenant": md_text(clip("—" if sample.tenant is None else sample.tenant, MD_MAX_VALUE)),
        "params": md_code(clip(params, MD_MAX_VALUE * 2)) if params else "",
        "lines": lines,
    }


def _md_entry(entry: Mapping[str, Any]) -> str:
    kind = as_str(entry.get("kind"), "unknown")
    if kind == "columns":
        legacy = ", ".join(as_str(c) for c in as_list(entry.get("legacy")))
        new = ", ".join(as_str(c) for c in as_list(entry.get("new")))
        note = as_str(entry.get("note"))
        return (
            f"columns differ: legacy {md_code(clip(legacy, MD_MAX_VALUE * 2))}"
            f" vs new {md_code(clip(new, MD_MAX_VALUE * 2))}"
            + (f" ({md_text(clip(note, MD_MAX_VALUE * 2))})" if note else "")
        )
    if kind == "column_types":
        names = ", ".join(as_str(c) for c in as_list(entry.get("columns")))
        return f"column types differ: {md_code(clip(names, MD_MAX_VALUE * 2))}"
    if kind == "order":
        return f"same {md_text(fmt_num(entry.get('rows')))} rows in a different order"
    if kind == "duplicate_key":
        side = md_text(clip(as_str(entry.get("side"), "?"), MD_MAX_VALUE))
        return f"duplicate key in the {side} result: {_md_row(as_map(entry.get('key')))}"
    if kind == "value":
        return f"value: {_md_value(entry.get('legacy'))} → {_md_value(entry.get('new'))}"
    if kind == "row_count":
        return (
            f"row count: legacy {md_text(fmt_num(entry.get('legacy')))},"
            f" new {md_text(fmt_num(entry.get('new')))}"
        )
    if kind == "missing":
        return f"row only in legacy: {_md_row(as_map(entry.get('row')))}"
    if kind == "extra":
        return f"row only in new: {_md_row(as_map(entry.get('row')))}"
    if kind == "changed":
        legacy_row, new_row = as_map(entry.get("legacy")), as_map(entry.get("new"))
        columns = [as_str(c) for c in as_list(entry.get("columns"))]
        where = []
        if entry.get("position") is not None:
            where.append(f"position {md_text(fmt_num(entry.get('position')))}")
        key = as_map(entry.get("key"))
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
    return f"{md_text(kind)}: {md_code(clip(json_text(dict(entry)), MD_MAX_VALUE * 2))}"
