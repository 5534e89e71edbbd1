"""Result-set comparison under a flag's ``compare`` rules: strict order, multiset, or by key.

Comparison never cries wolf on representation (1.50 = 1.5, timestamptz as instants, json by
value, a float tolerance) and never misses a real difference. Whole result sets compare with
``compare``; large ones stream through ``StreamComparer`` batch by batch, in memory bounded by
the batch size. Values of ``sensitive`` columns are masked in every diff.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..flags.model import CompareRules
from .results import ResultSet, Row

MASK = "***"
FLOAT_OIDS = {700, 701}
NUMERIC_OID = 1700
TIMESTAMP_OIDS = {1114, 1184}

Equal = Callable[[Any, Any], bool]


@dataclass
class Comparison:
    """What differed: counts per kind, and the first ``limit`` entries of each kind."""

    limit: int = 5
    counts: Counter[str] = field(default_factory=Counter)
    diffs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return not self.counts

    def add(self, kind: str, **entry: Any) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.limit:
            self.diffs.append({"kind": kind, **entry})


class Columns:
    """The compared columns of both sides and a comparator per column."""

    def __init__(self, rules: CompareRules, legacy: ResultSet, new: ResultSet) -> None:
        self.rules = rules
        self.keep_l = [i for i, c in enumerate(legacy.columns) if c not in rules.ignore_columns]
        self.keep_n = [i for i, c in enumerate(new.columns) if c not in rules.ignore_columns]
        self.names = tuple(legacy.columns[i] for i in self.keep_l)
        self.new_names = tuple(new.columns[i] for i in self.keep_n)
        types_l = [legacy.type_oids[i] if i < len(legacy.type_oids) else 0 for i in self.keep_l]
        types_n = [new.type_oids[i] if i < len(new.type_oids) else 0 for i in self.keep_n]
        self.changed_types = [c for c, a, b in zip(self.names, types_l, types_n, strict=False)
                              if a != b]
        self.equal: list[Equal] = [comparator(rules, name, oid)
                                   for name, oid in zip(self.names, types_l, strict=True)]
        self.exact = rules.numeric_scale == "ignore" or NUMERIC_OID not in types_l
        """Python ``==`` on whole rows may short-cut: true equality implies a match."""
        self.identity = self.keep_l == list(range(len(legacy.columns))) and \
            self.keep_n == list(range(len(new.columns)))

    def project(self, rows: Iterable[Row], side: str) -> list[Row]:
        if self.identity:
            return rows if isinstance(rows, list) else list(rows)
        keep = self.keep_l if side == "legacy" else self.keep_n
        return [tuple(r[i] for i in keep) for r in rows]

    def differing(self, a: Row, b: Row) -> list[str]:
        return [c for c, eq, x, y in zip(self.names, self.equal, a, b, strict=True)
                if not eq(x, y)]

    def same(self, a: Row, b: Row) -> bool:
        if self.exact and a == b:
            return True
        return all(eq(x, y) for eq, x, y in zip(self.equal, a, b, strict=True))

    def show(self, row: Row, names: Sequence[str] | None = None) -> dict[str, Any]:
        """A JSON-safe rendering of a row for diff samples, sensitive values masked."""
        cols = names or self.names
        return {c: MASK if c in self.rules.sensitive else (None if v is None else _text(v))
                for c, v in zip(cols, row, strict=True)}


def comparator(rules: CompareRules, column: str, oid: int) -> Equal:
    """The equality rule of one column, chosen once per comparison from its type."""
    unit = rules.round_timestamps.get(column)
    if unit is not None:
        return lambda a, b: _none_or(a, b) if a is None or b is None else (
            _truncate(a, unit) == _truncate(b, unit))
    if oid == NUMERIC_OID and rules.numeric_scale == "strict":
        return lambda a, b: _none_or(a, b) if a is None or b is None else (
            a == b and _scale(a) == _scale(b))
    return lambda a, b: values_equal(a, b, rules.float_tolerance, rules.float_abs_tolerance)


def values_equal(a: Any, b: Any, tol: float, abs_tol: float = 0.0) -> bool:
    """Equality with NULL = NULL, numeric scale ignored, a float tolerance (relative and
    absolute), timestamptz as instants, json by value, arrays element by element."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            return False
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return fa == fb or abs(fa - fb) <= max(abs_tol, tol * max(abs(fa), abs(fb)))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(values_equal(x, y, tol, abs_tol)
                                        for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k], tol, abs_tol) for k in a)
    return bool(a == b)


def compare(legacy: ResultSet, new: ResultSet, rules: CompareRules) -> Comparison:
    """Compare two whole result sets; an empty Comparison means they match."""
    out = Comparison(rules.max_diffs)
    if legacy.rows is None or new.rows is None:
        if legacy.rows is None and new.rows is None:
            if legacy.rowcount != new.rowcount:
                out.add("row_count", legacy=legacy.rowcount, new=new.rowcount)
        else:
            out.add("columns", legacy=list(legacy.columns), new=list(new.columns))
        return out
    cols = Columns(rules, legacy, new)
    if not _same_shape(cols, rules, out):
        return out
    if rules.order == "strict" and cols.exact and cols.identity and legacy.rows == new.rows:
        return out  # Python equality implies every column's rule holds
    rows_l, rows_n = cols.project(legacy.rows, "legacy"), cols.project(new.rows, "new")
    if len(rows_l) != len(rows_n):
        out.add("row_count", legacy=len(rows_l), new=len(rows_n))
    if rules.order == "strict":
        _strict(rows_l, rows_n, cols, out)
        if not out.matched and len(rows_l) == len(rows_n):
            _order_only(rows_l, rows_n, cols, out)
    elif rules.order == "ignore":
        _merge(sorted(rows_l, key=_sort_key), sorted(rows_n, key=_sort_key), cols, out,
               _sort_key)
    else:
        _keyed(rows_l, rows_n, cols, [cols.names.index(k) for k in rules.key], out)
    return out


def _same_shape(cols: Columns, rules: CompareRules, out: Comparison) -> bool:
    if cols.names != cols.new_names:
        out.add("columns", legacy=list(cols.names), new=list(cols.new_names))
        return False
    if cols.changed_types:
        out.add("column_types", columns=cols.changed_types)
        return False
    missing_key = [k for k in rules.key if k not in cols.names] if rules.order == "key" else []
    if missing_key:
        out.add("columns", legacy=list(cols.names), new=list(cols.names),
                note=f"key column(s) {', '.join(missing_key)} not in the result")
        return False
    return True


def _strict(rows_l: list[Row], rows_n: list[Row], cols: Columns, out: Comparison,
            offset: int = 0) -> None:
    for pos, (a, b) in enumerate(zip(rows_l, rows_n, strict=False), start=offset):
        if not cols.same(a, b):
            out.add("changed", position=pos, columns=cols.differing(a, b), legacy=cols.show(a),
                    new=cols.show(b))
    for a in rows_l[len(rows_n):]:
        out.add("missing", row=cols.show(a))
    for b in rows_n[len(rows_l):]:
        out.add("extra", row=cols.show(b))


def _order_only(rows_l: list[Row], rows_n: list[Row], cols: Columns, out: Comparison) -> None:
    """Same rows, other order: say so instead of listing every shifted row."""
    probe = Comparison(1)
    _merge(sorted(rows_l, key=_sort_key), sorted(rows_n, key=_sort_key), cols, probe, _sort_key)
    if probe.matched:
        out.counts.clear()
        out.diffs.clear()
        out.add("order", rows=len(rows_l),
                note="the same rows in another order; if the query's ORDER BY is not total "
                     "(or it has none), this is noise: calibrate with `rollout shadow --aa`")


def _merge(left: Sequence[Row], right: Sequence[Row], cols: Columns, out: Comparison,
           key: Callable[[Row], Any]) -> None:
    """Walk two sorted row lists: equal rows pair off, the smaller unmatched row is missing
    (legacy only) or extra (new only). Duplicates count."""
    i = j = 0
    while i < len(left) and j < len(right):
        if cols.same(left[i], right[j]):
            i += 1
            j += 1
        elif key(left[i]) < key(right[j]):
            out.add("missing", row=cols.show(left[i]))
            i += 1
        else:
            out.add("extra", row=cols.show(right[j]))
            j += 1
    for a in left[i:]:
        out.add("missing", row=cols.show(a))
    for b in right[j:]:
        out.add("extra", row=cols.show(b))


def _keyed(rows_l: list[Row], rows_n: list[Row], cols: Columns, key_idx: list[int],
           out: Comparison) -> None:
    key_cols = [cols.names[i] for i in key_idx]

    def index(rows: list[Row], side: str) -> dict[Row, Row]:
        seen: dict[Row, Row] = {}
        for r in rows:
            k = tuple(r[i] for i in key_idx)
            if k in seen:
                out.add("duplicate_key", side=side, key=cols.show(k, key_cols))
            seen[k] = r
        return seen

    left, right = index(rows_l, "legacy"), index(rows_n, "new")
    for k, a in left.items():
        b = right.get(k)
        if b is None:
            out.add("missing", row=cols.show(a))
        elif not cols.same(a, b):
            out.add("changed", key=cols.show(k, key_cols), columns=cols.differing(a, b),
                    legacy=cols.show(a), new=cols.show(b))
    for k, b in right.items():
        if k not in left:
            out.add("extra", row=cols.show(b))


class StreamComparer:
    """Compare two result streams batch by batch, holding at most a batch or two per side.

    Strict mode pairs rows by position. Key and ignore modes need both streams sorted — by
    the key, or by every compared column — which the runner asks the server for. Runs of
    equal rows are skipped with list comparisons in C; only differing rows cost Python.
    """

    def __init__(self, rules: CompareRules, legacy: ResultSet, new: ResultSet) -> None:
        self.rules = rules
        self.cols = Columns(rules, legacy, new)
        self.out = Comparison(rules.max_diffs)
        self.ok = _same_shape(self.cols, rules, self.out)
        self.left: list[Row] = []
        self.right: list[Row] = []
        self.li = self.ri = 0
        self.position = 0
        self.rows_l = self.rows_n = 0
        self.keyed = rules.order == "key"
        if self.keyed:
            idx = [self.cols.names.index(k) for k in rules.key]
            self.key: Callable[[Row], Any] = lambda r: _sort_key(tuple(r[i] for i in idx))
            self.key_idx = idx
        else:
            self.key = _sort_key

    def feed(self, legacy: Sequence[Row], new: Sequence[Row], done_l: bool = False,
             done_n: bool = False) -> None:
        """Add the next rows of either side; ``done_*`` marks a side's end."""
        if not self.ok:
            return
        self.rows_l += len(legacy)
        self.rows_n += len(new)
        self.left = self.left[self.li:] + self.cols.project(legacy, "legacy")
        self.right = self.right[self.ri:] + self.cols.project(new, "new")
        self.li = self.ri = 0
        self._walk(strict=self.rules.order == "strict")
        if done_l and done_n:
            for a in self.left[self.li:]:
                self.out.add("missing", row=self.cols.show(a))
            for b in self.right[self.ri:]:
                self.out.add("extra", row=self.cols.show(b))
            self.li, self.ri = len(self.left), len(self.right)

    def finish(self) -> Comparison:
        if self.ok and self.rows_l != self.rows_n:
            self.out.add("row_count", legacy=self.rows_l, new=self.rows_n)
        return self.out

    def _walk(self, strict: bool) -> None:
        left, right, cols = self.left, self.right, self.cols
        while self.li < len(left) and self.ri < len(right):
            n = min(len(left) - self.li, len(right) - self.ri)
            skip = _equal_prefix(left, self.li, right, self.ri, n) if cols.exact else 0
            self.li += skip
            self.ri += skip
            self.position += skip
            if skip == n:
                continue
            a, b = left[self.li], right[self.ri]
            if strict:
                if not cols.same(a, b):
                    self.out.add("changed", position=self.position,
                                 columns=cols.differing(a, b), legacy=cols.show(a),
                                 new=cols.show(b))
                self.li += 1
                self.ri += 1
                self.position += 1
                continue
            ka, kb = self.key(a), self.key(b)
            if (self.keyed and ka == kb) or (not self.keyed and cols.same(a, b)):
                if self.keyed and not cols.same(a, b):
                    key_names = [cols.names[i] for i in self.key_idx]
                    self.out.add("changed", key=cols.show(tuple(a[i] for i in self.key_idx),
                                                          key_names),
                                 columns=cols.differing(a, b), legacy=cols.show(a),
                                 new=cols.show(b))
                self.li += 1
                self.ri += 1
            elif ka < kb:
                self.out.add("missing", row=cols.show(a))
                self.li += 1
            else:
                self.out.add("extra", row=cols.show(b))
                self.ri += 1


def _equal_prefix(a: list[Row], i: int, b: list[Row], j: int, n: int) -> int:
    """How many rows from ``a[i]`` and ``b[j]`` on are equal, up to ``n`` — by bisection on
    slice equality, so long equal runs cost C, not Python."""
    if a[i:i + n] == b[j:j + n]:
        return n
    lo, hi = 0, n  # the first difference lies in [lo, hi)
    while hi - lo > 8:
        mid = (lo + hi) // 2
        if a[i + lo:i + mid] == b[j + lo:j + mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[i + lo] == b[j + lo]:
        lo += 1
    return lo


def _sort_key(row: Row) -> tuple[tuple[int, str, Any], ...]:
    return tuple(_sortable(v) for v in row)


def _sortable(v: Any) -> tuple[int, str, Any]:
    if v is None:
        return (1, "", "")
    if isinstance(v, bool):
        return (0, "bool", v)
    if isinstance(v, int | Decimal):
        return (0, "number", v)  # exact: int8 keys beyond 2**53 keep their order
    if isinstance(v, float):
        return (0, "number", v)
    if isinstance(v, str | bytes):
        return (0, type(v).__name__, v)
    if isinstance(v, datetime) and v.tzinfo is not None:
        return (0, "instant", v.timestamp())  # timestamptz: instants, whatever the zone
    if isinstance(v, date):
        return (0, type(v).__name__, v)
    try:
        v < v  # noqa: B015 - probe orderability (UUIDs, intervals)
        return (0, type(v).__name__, v)
    except TypeError:
        return (0, type(v).__name__, repr(v))


def _truncate(v: Any, unit: timedelta) -> Any:
    if not isinstance(v, datetime):
        return v
    epoch = datetime(1970, 1, 1, tzinfo=v.tzinfo)
    step = int(unit.total_seconds() * 1_000_000)
    micros = (v - epoch) // timedelta(microseconds=1)
    return epoch + timedelta(microseconds=micros - micros % step)


def _scale(v: Any) -> int | None:
    if not isinstance(v, Decimal):
        return None
    exponent = v.as_tuple().exponent
    return exponent if isinstance(exponent, int) else None  # NaN and infinities have none


def _none_or(a: Any, b: Any) -> bool:
    return a is None and b is None


def _text(v: Any) -> str:
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)
