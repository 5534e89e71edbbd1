"""Correctness: mismatch counts and sample diffs as tables for the HTML report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...judge.model import Mismatches, MismatchSample
from ._format import as_list, as_map, as_str, clip, fmt_num, fmt_value, json_text, number

HTML_MAX_SAMPLES = 10
HTML_MAX_ENTRIES = 25
HTML_MAX_VALUE = 300


@dataclass(frozen=True)
class Sides:
    """What the two results of a diff are called: legacy and new, or (plan determinism) one
    path's first run and its run under another plan."""

    left: str = "legacy"
    right: str = "new"
    left_result: str = "legacy result"
    right_result: str = "new result"
    left_only: str = "only in legacy"
    right_only: str = "only in new"

    def label(self, side: str) -> str:
        return {"legacy": self.left, "new": self.right}.get(side, side)


PATHS = Sides()


def mismatches_view(mismatches: Mismatches | None) -> dict[str, Any] | None:
    if mismatches is None:
        return None
    samples = mismatches.samples
    shown = samples[:HTML_MAX_SAMPLES]
    omitted = mismatches.samples_omitted or 0
    return {
        "count": mismatches.count,
        "compared": mismatches.compared,
        "rate": mismatches.rate,
        "noise_rate": number(mismatches.noise_rate),
        "by_kind": list(mismatches.by_kind.items()),
        "samples": [_html_sample(s) for s in shown],
        "samples_total": len(samples),
        "samples_omitted": omitted,
        # mismatching executions without a diff shown here: cut by the HTML bound or
        # left out of the report body altogether
        "samples_hidden": len(samples) - len(shown) + omitted,
    }


def _html_sample(sample: MismatchSample) -> dict[str, Any]:
    entries = sample.diff  # the comparison's own records (rollout.run.compare)
    return {
        "tenant": "—" if sample.tenant is None else sample.tenant,
        "params": params_text(sample.params),
        "entries": _group_rows([_html_entry(e) for e in entries[:HTML_MAX_ENTRIES]]),
        "hidden_entries": max(0, len(entries) - HTML_MAX_ENTRIES),
        "truncated": bool(sample.truncated),
    }


def _group_rows(entries: list[dict[str, Any]], sides: Sides = PATHS) -> list[dict[str, Any]]:
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
            only_legacy, only_new = labels.count(sides.left), labels.count(sides.right)
            if only_new == 0:
                last["title"] = f"Rows only in {sides.left_result} ({only_legacy})"
            elif only_legacy == 0:
                last["title"] = f"Rows only in {sides.right_result} ({only_new})"
            else:
                last["title"] = (
                    f"Rows only in one result ({only_legacy} {sides.left_only},"
                    f" {only_new} {sides.right_only})"
                )
            continue
        out.append(entry)
    return out


def params_text(params: Any) -> str:
    if params is None:
        return ""
    if isinstance(params, Mapping):
        return ", ".join(f"{k}={json_text(v)}" for k, v in params.items())
    return json_text(params)


def _cell(value: Any, changed: bool = False) -> dict[str, Any]:
    """A diff table cell; NULL, the empty string and absent columns are marked, not blank."""
    classes = ["chg"] if changed else []
    if value is None or value == "":
        classes.append("null")
    return {
        "text": "''" if value == "" else clip(fmt_value(value), HTML_MAX_VALUE),
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


def _html_entry(entry: Mapping[str, Any], sides: Sides = PATHS) -> dict[str, Any]:
    kind = as_str(entry.get("kind"), "unknown")
    if kind == "columns":
        legacy = [as_str(c) for c in as_list(entry.get("legacy"))]
        new = [as_str(c) for c in as_list(entry.get("new"))]
        return _entry(
            kind,
            "Column lists differ",
            columns={
                "legacy": [{"name": c, "odd": c not in new} for c in legacy],
                "new": [{"name": c, "odd": c not in legacy} for c in new],
            },
            note=as_str(entry.get("note")),
        )
    if kind == "column_types":
        return _entry(
            kind,
            "Column types differ",
            names=[as_str(c) for c in as_list(entry.get("columns"))],
            note="Same column names, different data types: values are not compared.",
        )
    if kind == "order":
        rows = entry.get("rows")
        return _entry(
            kind,
            "Same rows, different order",
            legacy=fmt_num(rows) if rows is not None else "",
            note=as_str(entry.get("note")),
        )
    if kind == "duplicate_key":
        key = as_map(entry.get("key"))
        side = as_str(entry.get("side"), "?")
        result = {"legacy": sides.left_result, "new": sides.right_result}.get(
            side, f"{side} result"
        )
        return _entry(
            kind,
            f"Duplicate key in the {result}",
            table={
                "columns": [as_str(c) for c in key],
                "changed": [True for _ in key],
                "rows": [{"label": sides.label(side), "cells": [_cell(v) for v in key.values()]}],
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
                    {"label": sides.left, "cells": [_cell(legacy_value, changed=True)]},
                    {"label": sides.right, "cells": [_cell(new_value, changed=True)]},
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
        row = as_map(entry.get("row"))
        title = f"Row only in {sides.left_result if kind == 'missing' else sides.right_result}"
        label = sides.left if kind == "missing" else sides.right
        return _entry(
            kind,
            title,
            table={
                "columns": [as_str(c) for c in row],
                "changed": [False for _ in row],
                "rows": [{"label": label, "cells": [_cell(v) for v in row.values()]}],
            },
        )
    if kind == "changed":
        legacy_row = as_map(entry.get("legacy"))
        new_row = as_map(entry.get("new"))
        changed = {as_str(c) for c in as_list(entry.get("columns"))}
        columns = list(dict.fromkeys([*legacy_row, *new_row]))
        where = []
        if entry.get("position") is not None:
            where.append(f"at position {fmt_num(entry.get('position'))}")
        key = as_map(entry.get("key"))
        if key:
            where.append("key " + ", ".join(f"{k}={fmt_value(v)}" for k, v in key.items()))
        return _entry(
            kind,
            "Row changed" + (f" ({'; '.join(where)})" if where else ""),
            table={
                "columns": [as_str(c) for c in columns],
                "changed": [as_str(c) in changed for c in columns],
                "rows": [
                    {
                        "label": label,
                        "cells": [
                            _cell(row.get(c), changed=as_str(c) in changed)
                            if c in row
                            else {"text": "(absent)", "css": "chg null"}
                            for c in columns
                        ],
                    }
                    for label, row in ((sides.left, legacy_row), (sides.right, new_row))
                ],
            },
        )
    return _entry(
        kind,
        f"Difference of kind {kind}",
        raw=clip(json_text(dict(entry)), HTML_MAX_VALUE * 4),
    )


def diff_entries(raw: Any, sides: Sides = PATHS, limit: int = HTML_MAX_ENTRIES
                 ) -> tuple[list[dict[str, Any]], int]:
    """A diff's first ``limit`` entries as tables (rows only on one side grouped), named by
    ``sides``; and how many entries were left out."""
    entries = [as_map(e) for e in as_list(raw)]
    shown = _group_rows([_html_entry(e, sides) for e in entries[:limit]], sides)
    return shown, max(0, len(entries) - limit)
