"""Result-set comparison under a flag's ``compare`` rules: strict order, multiset, or by key."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .flags import CompareRules

MAX_DIFFS = 5
"""Diff entries kept per comparison; counts cover everything."""


@dataclass(frozen=True)
class ResultSet:
    """Columns, their type OIDs and rows of one execution; ``rows`` is None for commands."""

    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    rows: list[tuple[Any, ...]] | None
    rowcount: int


@dataclass
class Comparison:
    counts: Counter[str] = field(default_factory=Counter)
    diffs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return not self.counts

    def add(self, kind: str, **entry: Any) -> None:
        self.counts[kind] += 1
        if len(self.diffs) < MAX_DIFFS:
            self.diffs.append({"kind": kind, **entry})


def compare(legacy: ResultSet, new: ResultSet, rules: CompareRules) -> Comparison:
    """Compare two result sets; an empty Comparison means they match."""
    out = Comparison()
    if legacy.rows is None or new.rows is None:
        if legacy.rows is None and new.rows is None:
            if legacy.rowcount != new.rowcount:
                out.add("row_count", legacy=legacy.rowcount, new=new.rowcount)
        else:
            out.add("columns", legacy=list(legacy.columns), new=list(new.columns))
        return out

    keep_l = [i for i, c in enumerate(legacy.columns) if c not in rules.ignore_columns]
    keep_n = [i for i, c in enumerate(new.columns) if c not in rules.ignore_columns]
    cols = tuple(legacy.columns[i] for i in keep_l)
    if cols != tuple(new.columns[i] for i in keep_n):
        out.add("columns", legacy=list(cols), new=[new.columns[i] for i in keep_n])
        return out
    types_l = [legacy.type_oids[i] for i in keep_l]
    types_n = [new.type_oids[i] for i in keep_n]
    if types_l != types_n:
        changed = [c for c, a, b in zip(cols, types_l, types_n, strict=True) if a != b]
        out.add("column_types", columns=changed)
        return out

    if rules.order == "strict" and not rules.ignore_columns and legacy.rows == new.rows:
        return out  # Python equality implies values_equal for every cell
    rows_l = [tuple(r[i] for i in keep_l) for r in legacy.rows]
    rows_n = [tuple(r[i] for i in keep_n) for r in new.rows]
    if len(rows_l) != len(rows_n):
        out.add("row_count", legacy=len(rows_l), new=len(rows_n))
    tol = rules.float_tolerance
    if rules.order == "strict":
        _strict(rows_l, rows_n, cols, tol, out)
    elif rules.order == "ignore":
        _multiset(rows_l, rows_n, cols, tol, out)
    else:
        missing_key = [k for k in rules.key if k not in cols]
        if missing_key:
            out.add("columns", legacy=list(cols), new=list(cols),
                    note=f"key column(s) {', '.join(missing_key)} not in the result")
            return out
        _keyed(rows_l, rows_n, cols, [cols.index(k) for k in rules.key], tol, out)
    return out


def values_equal(a: Any, b: Any, tol: float) -> bool:
    """Equality with NULL = NULL, numeric scale ignored and a float tolerance."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            return False
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return fa == fb or abs(fa - fb) <= tol * max(1.0, abs(fa), abs(fb))
    return bool(a == b)


def _changed(a: Sequence[Any], b: Sequence[Any], cols: Sequence[str], tol: float) -> list[str]:
    return [c for c, x, y in zip(cols, a, b, strict=True) if not values_equal(x, y, tol)]


def _strict(rows_l: list[tuple[Any, ...]], rows_n: list[tuple[Any, ...]], cols: tuple[str, ...],
            tol: float, out: Comparison) -> None:
    for pos, (a, b) in enumerate(zip(rows_l, rows_n, strict=False)):
        changed = _changed(a, b, cols, tol)
        if changed:
            out.add("changed", position=pos, columns=changed, legacy=_show(cols, a),
                    new=_show(cols, b))
    for a in rows_l[len(rows_n):]:
        out.add("missing", row=_show(cols, a))
    for b in rows_n[len(rows_l):]:
        out.add("extra", row=_show(cols, b))


def _multiset(rows_l: list[tuple[Any, ...]], rows_n: list[tuple[Any, ...]],
              cols: tuple[str, ...], tol: float, out: Comparison) -> None:
    # Sort both sides on a total order, then walk them like a merge: equal rows pair off,
    # the smaller unmatched row is missing (legacy) or extra (new).
    left = sorted(rows_l, key=_sort_key)
    right = sorted(rows_n, key=_sort_key)
    i = j = 0
    while i < len(left) and j < len(right):
        if not _changed(left[i], right[j], cols, tol):
            i += 1
            j += 1
        elif _sort_key(left[i]) < _sort_key(right[j]):
            out.add("missing", row=_show(cols, left[i]))
            i += 1
        else:
            out.add("extra", row=_show(cols, right[j]))
            j += 1
    for a in left[i:]:
        out.add("missing", row=_show(cols, a))
    for b in right[j:]:
        out.add("extra", row=_show(cols, b))


def _keyed(rows_l: list[tuple[Any, ...]], rows_n: list[tuple[Any, ...]], cols: tuple[str, ...],
           key_idx: list[int], tol: float, out: Comparison) -> None:
    def index(rows: list[tuple[Any, ...]], side: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for r in rows:
            k = tuple(r[i] for i in key_idx)
            if k in seen:
                out.add("duplicate_key", side=side, key=_show([cols[i] for i in key_idx], k))
            seen[k] = r
        return seen

    left, right = index(rows_l, "legacy"), index(rows_n, "new")
    key_cols = [cols[i] for i in key_idx]
    for k, a in left.items():
        b = right.get(k)
        if b is None:
            out.add("missing", row=_show(cols, a))
            continue
        changed = _changed(a, b, cols, tol)
        if changed:
            out.add("changed", key=_show(key_cols, k), columns=changed, legacy=_show(cols, a),
                    new=_show(cols, b))
    for k, b in right.items():
        if k not in left:
            out.add("extra", row=_show(cols, b))


def _sort_key(row: tuple[Any, ...]) -> tuple[tuple[int, str, Any], ...]:
    return tuple(_sortable(v) for v in row)


def _sortable(v: Any) -> tuple[int, str, Any]:
    if v is None:
        return (1, "", "")
    if isinstance(v, bool):
        return (0, "bool", v)
    if isinstance(v, int | float) or type(v).__name__ == "Decimal":
        return (0, "number", float(v))
    if isinstance(v, str | bytes):
        return (0, type(v).__name__, v)
    try:
        v < v  # noqa: B015 - probe orderability (datetimes, UUIDs, dates)
        return (0, type(v).__name__, v)
    except TypeError:
        return (0, type(v).__name__, repr(v))


def _show(cols: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A JSON-safe rendering of a row for diff samples."""
    return {c: (None if v is None else str(v)) for c, v in zip(cols, row, strict=True)}
