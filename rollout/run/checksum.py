"""Very large results: compare counts and order-independent checksums on the server, and only
where they differ drill down by key ranges (as data-diff does), fetching just those rows.

Each step is one scan per side that groups the key range into ``FANOUT`` buckets and returns
each bucket's row count and the sum of a 64-bit hash per row (``hash_record_extended``,
PostgreSQL 14+, which hashes each column with its type's own hash function; text of the row
for types without one). Sums ignore order and count duplicates. Buckets that differ are split
again until they are small enough to fetch and compare row by row, so one difference costs a
full scan plus a few index range scans. The checksum compares exact values, not the
type-aware rules of the row comparison. Drilling down needs one integer or numeric key
column; an index on it keeps the range scans cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql

from ..errors import InputError
from ..flags.model import CompareRules
from .compare import Comparison, compare
from .execute import ExtendedCursor, Limits, Transaction, bounded
from .prepare import describe
from .results import ResultSet

INTEGER_OIDS = {20, 21, 23, 1700}
LEAF_ROWS = 2000
"""Buckets at most this large (on both sides) are fetched and compared row by row."""
FANOUT = 64
"""Buckets per scan."""

T = TypeVar("T")


@dataclass(frozen=True)
class Checksum:
    rows: int
    total: Decimal


@dataclass
class ChecksumResult:
    comparison: Comparison
    queries: int
    ranges_compared: int
    legacy: Checksum
    new: Checksum


class _Side:
    """One path: its query wrapped for bucketed checksums and key ranges."""

    def __init__(self, conn: psycopg.Connection[Any], query: str, rules: CompareRules,
                 params: Mapping[str, Any], by_type: bool, limits: Limits) -> None:
        self.conn = conn
        self.limits = limits
        self.params = dict(params)
        with bounded(conn, limits):
            columns, _ = describe(conn, query)
        names = [c for c, _ in columns if c not in rules.ignore_columns]
        self.key_oid = dict(columns).get(rules.key[0])
        key = pgsql.Identifier(rules.key[0]).as_string(conn)
        cols = ", ".join(f"s.{pgsql.Identifier(c).as_string(conn)}" for c in names)
        row_hash = (f"hash_record_extended(ROW({cols}), 0)" if by_type
                    else f"hashtextextended(ROW({cols})::text, 0)")
        body = query.strip().rstrip(";")
        self.bucket_sql = (
            f"SELECT floor((s.{key} - %(_lo)s)::numeric * {FANOUT} / (%(_hi)s - %(_lo)s))::int"
            f" AS b, count(*), coalesce(sum({row_hash}), 0) FROM ({body}) AS s"
            f" WHERE s.{key} >= %(_lo)s AND s.{key} < %(_hi)s GROUP BY 1")
        self.bounds_sql = f"SELECT min(s.{key}), max(s.{key}) FROM ({body}) AS s"
        self.rows_sql = (f"SELECT s.* FROM ({body}) AS s"
                         f" WHERE s.{key} >= %(_lo)s AND s.{key} < %(_hi)s")

    def _query(self, query: str, args: Mapping[str, Any]
               ) -> tuple[list[tuple[Any, ...]], list[Any]]:
        """One query of this side: extended protocol (one statement), under the deadline."""
        with bounded(self.conn, self.limits), ExtendedCursor(self.conn) as cur:
            cur.execute(query.encode(), args)
            return cur.fetchall(), list(cur.description or [])

    def bounds(self) -> tuple[Any, Any]:
        rows, _ = self._query(self.bounds_sql, self.params)
        return rows[0][0], rows[0][1]

    def buckets(self, lo: Any, hi: Any) -> dict[int, Checksum]:
        rows, _ = self._query(self.bucket_sql, {**self.params, "_lo": lo, "_hi": hi})
        return {int(b): Checksum(int(n), Decimal(total)) for b, n, total in rows}

    def rows(self, lo: Any, hi: Any) -> ResultSet:
        rows, desc = self._query(self.rows_sql, {**self.params, "_lo": lo, "_hi": hi})
        return ResultSet(tuple(d.name for d in desc), tuple(d.type_code for d in desc), rows,
                         len(rows))


def checksum_compare(legacy_conn: psycopg.Connection[Any], new_conn: psycopg.Connection[Any],
                     legacy_sql: str, new_sql: str, params: Mapping[str, Any], *,
                     rules: CompareRules, limits: Limits | None = None) -> ChecksumResult:
    """Compare by bucketed checksums, drilling into differing buckets; each side runs in its
    own REPEATABLE READ READ ONLY transaction (one snapshot for every step), always rolled
    back, with SET LOCAL timeouts and each query under the client deadline, concurrently."""
    limits = limits or Limits()
    with Transaction(legacy_conn, limits, write=False, isolation="repeatable read",
                     whole=False), \
            Transaction(new_conn, limits, write=False, isolation="repeatable read",
                        whole=False):
        by_type = legacy_conn.info.server_version >= 140000
        try:
            with legacy_conn.transaction(), new_conn.transaction():
                return _compare(legacy_conn, new_conn, legacy_sql, new_sql, params, rules,
                                by_type, limits)
        except psycopg.errors.UndefinedFunction:
            # a column type without a hash function: hash the row's text instead
            return _compare(legacy_conn, new_conn, legacy_sql, new_sql, params, rules, False,
                            limits)


def _compare(legacy_conn: psycopg.Connection[Any], new_conn: psycopg.Connection[Any],
             legacy_sql: str, new_sql: str, params: Mapping[str, Any], rules: CompareRules,
             by_type: bool, limits: Limits) -> ChecksumResult:
    legacy = _Side(legacy_conn, legacy_sql, rules, params, by_type, limits)
    new = _Side(new_conn, new_sql, rules, params, by_type, limits)
    if legacy.key_oid not in INTEGER_OIDS:
        raise InputError(f"compare.key: checksum drill-down needs an integer or numeric key; "
                         f"'{rules.key[0]}' is not")
    keyed = replace(rules, order="key")
    out = Comparison(rules.max_diffs)
    calls = 0
    ranges = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        def both(fn_l: Callable[[], T], fn_n: Callable[[], T]) -> tuple[T, T]:
            nonlocal calls
            calls += 2
            f_l, f_n = pool.submit(fn_l), pool.submit(fn_n)
            return f_l.result(), f_n.result()

        (lo_l, hi_l), (lo_n, hi_n) = both(legacy.bounds, new.bounds)
        lows = [v for v in (lo_l, lo_n) if v is not None]
        if not lows:
            empty = Checksum(0, Decimal(0))
            return ChecksumResult(out, calls, 0, empty, empty)
        lo, hi = min(lows), max(v for v in (hi_l, hi_n) if v is not None) + 1
        top: tuple[Checksum, Checksum] | None = None
        pending = [(lo, hi)]
        while pending:
            a, b = pending.pop()
            got_l, got_n = both(partial(legacy.buckets, a, b), partial(new.buckets, a, b))
            if top is None:
                top = (_total(got_l), _total(got_n))
            width = (b - a) / FANOUT
            for i in sorted(set(got_l) | set(got_n)):
                c_l, c_n = got_l.get(i), got_n.get(i)
                if c_l == c_n:
                    continue
                # a superset of the bucket's keys: floor the start, ceil the end
                s_lo = a + _edge(width * i, a, math.floor)
                s_hi = min(b, a + _edge(width * (i + 1), a, math.ceil))
                biggest = max(c.rows if c else 0 for c in (c_l, c_n))
                if biggest > LEAF_ROWS and s_hi - s_lo > 1:
                    pending.append((s_lo, s_hi))
                    continue
                ranges += 1
                set_l, set_n = both(partial(legacy.rows, s_lo, s_hi),
                                    partial(new.rows, s_lo, s_hi))
                _merge_into(out, compare(set_l, set_n, keyed))
    assert top is not None
    if top[0].rows != top[1].rows:
        out.add("row_count", legacy=top[0].rows, new=top[1].rows)
    return ChecksumResult(out, calls, ranges, top[0], top[1])


def _total(buckets: Mapping[int, Checksum]) -> Checksum:
    return Checksum(sum(c.rows for c in buckets.values()),
                    sum((c.total for c in buckets.values()), Decimal(0)))


def _edge(x: Any, like: Any, rounding: Callable[[Any], int]) -> Any:
    """Bucket edges in the key's type: integer keys get integer edges."""
    return rounding(x) if isinstance(like, int) else Decimal(x)


def _merge_into(out: Comparison, part: Comparison) -> None:
    for kind, n in part.counts.items():
        if kind == "row_count":
            continue  # reported once, for the whole result
        entries = [d for d in part.diffs if d["kind"] == kind]
        for entry in entries:
            out.add(**entry)
        out.counts[kind] += n - len(entries)
