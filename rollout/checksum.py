"""Very large results: compare a count and an order-independent checksum on the server, and
only where they differ drill down by key ranges (bisection, as data-diff does).

The checksum is the sum of a 64-bit hash of each row's text (``hashtextextended``), so it
ignores order and counts duplicates; it compares exact text, not the type-aware rules of the
row comparison. Drilling down needs one numeric key column; each range becomes a
``WHERE key >= lo AND key < hi`` around the query, which PostgreSQL pushes into simple
queries, so an index on the key keeps every step cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .compare import Comparison, ResultSet, compare
from .dbcheck import describe
from .errors import InputError
from .flags import CompareRules

INTEGER_OIDS = {20, 21, 23, 1700}
LEAF_ROWS = 2000
"""Ranges at most this large (on both sides) are fetched and compared row by row."""


@dataclass(frozen=True)
class Checksum:
    rows: int
    total: Decimal

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checksum) and (self.rows, self.total) == (other.rows,
                                                                          other.total)

    def __hash__(self) -> int:
        return hash((self.rows, self.total))


@dataclass
class ChecksumResult:
    comparison: Comparison
    queries: int
    ranges_compared: int
    legacy: Checksum
    new: Checksum


class _Side:
    """One path: its query wrapped for checksums and ranges, on its own connection."""

    def __init__(self, conn: psycopg.Connection[Any], query: str, rules: CompareRules,
                 params: Mapping[str, Any]) -> None:
        self.conn = conn
        self.params = dict(params)
        columns, _ = describe(conn, query)
        self.names = [c for c, _ in columns if c not in rules.ignore_columns]
        self.key_oid = dict(columns).get(rules.key[0])
        self.key = pgsql.Identifier(rules.key[0]).as_string(conn)
        cols = ", ".join(f"s.{pgsql.Identifier(c).as_string(conn)}" for c in self.names)
        body = query.strip().rstrip(";")
        self.sum_sql = (f"SELECT count(*), coalesce(sum(hashtextextended(ROW({cols})::text, 0)"
                        f"::numeric), 0) FROM ({body}) AS s")
        self.rows_sql = f"SELECT s.* FROM ({body}) AS s"
        self.bounds_sql = f"SELECT min(s.{self.key}), max(s.{self.key}) FROM ({body}) AS s"

    def checksum(self, lo: Any = None, hi: Any = None) -> Checksum:
        where, args = self._range(lo, hi)
        row = self.conn.execute((self.sum_sql + where).encode(), args).fetchone()
        assert row is not None
        return Checksum(int(row[0]), Decimal(row[1]))

    def bounds(self) -> tuple[Any, Any]:
        row = self.conn.execute(self.bounds_sql.encode(), self.params).fetchone()
        assert row is not None
        return row[0], row[1]

    def rows(self, lo: Any, hi: Any) -> ResultSet:
        where, args = self._range(lo, hi)
        cur = self.conn.execute((self.rows_sql + where).encode(), args)
        desc = cur.description or []
        rows = cur.fetchall()
        return ResultSet(tuple(d.name for d in desc), tuple(d.type_code for d in desc), rows,
                         len(rows))

    def _range(self, lo: Any, hi: Any) -> tuple[str, dict[str, Any]]:
        if lo is None:
            return "", self.params
        args = {**self.params, "_rollout_lo": lo, "_rollout_hi": hi}
        return (f" WHERE s.{self.key} >= %(_rollout_lo)s AND s.{self.key} < %(_rollout_hi)s",
                args)


def checksum_compare(legacy_conn: psycopg.Connection[Any], new_conn: psycopg.Connection[Any],
                     legacy_sql: str, new_sql: str, params: Mapping[str, Any], *,
                     rules: CompareRules) -> ChecksumResult:
    """Compare by checksum; on a difference, bisect the key range down to small ranges and
    compare those row by row (by key). Both sides run concurrently, each on its connection."""
    with legacy_conn.transaction(), new_conn.transaction():
        # One snapshot per side for every step of the drill-down.
        for conn in (legacy_conn, new_conn):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _checksum_compare(legacy_conn, new_conn, legacy_sql, new_sql, params, rules)


def _checksum_compare(legacy_conn: psycopg.Connection[Any], new_conn: psycopg.Connection[Any],
                      legacy_sql: str, new_sql: str, params: Mapping[str, Any],
                      rules: CompareRules) -> ChecksumResult:
    legacy = _Side(legacy_conn, legacy_sql, rules, params)
    new = _Side(new_conn, new_sql, rules, params)
    if legacy.key_oid not in INTEGER_OIDS:
        raise InputError(f"compare.key: checksum drill-down needs an integer or numeric key; "
                         f"'{rules.key[0]}' is not")
    keyed = CompareRules(**{**rules.__dict__, "order": "key"})
    out = Comparison(rules.max_diffs)
    queries = 0
    ranges = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        def both(fn_l: Any, fn_n: Any) -> tuple[Any, Any]:
            nonlocal queries
            queries += 2
            f_l, f_n = pool.submit(fn_l), pool.submit(fn_n)
            return f_l.result(), f_n.result()

        top_l, top_n = both(legacy.checksum, new.checksum)
        if top_l == top_n:
            return ChecksumResult(out, queries, ranges, top_l, top_n)
        (lo_l, hi_l), (lo_n, hi_n) = both(legacy.bounds, new.bounds)
        lows = [v for v in (lo_l, lo_n) if v is not None]
        highs = [v for v in (hi_l, hi_n) if v is not None]
        if not lows:
            return ChecksumResult(out, queries, ranges, top_l, top_n)
        stack = [(min(lows), max(highs) + 1)]
        sizes = {(min(lows), max(highs) + 1): (top_l.rows, top_n.rows)}
        while stack:
            lo, hi = stack.pop()
            rows_l, rows_n = sizes[(lo, hi)]
            if max(rows_l, rows_n) <= LEAF_ROWS or hi - lo <= 1:
                ranges += 1
                set_l, set_n = both(lambda lo=lo, hi=hi: legacy.rows(lo, hi),
                                    lambda lo=lo, hi=hi: new.rows(lo, hi))
                part = compare(set_l, set_n, keyed)
                for kind, n in part.counts.items():
                    if kind == "row_count":
                        continue  # reported once, for the whole result, below
                    entries = [d for d in part.diffs if d["kind"] == kind]
                    for entry in entries:
                        out.add(**entry)
                    out.counts[kind] += n - len(entries)
                continue
            mid = lo + (hi - lo) // 2
            for a, b in ((lo, mid), (mid, hi)):
                c_l, c_n = both(lambda a=a, b=b: legacy.checksum(a, b),
                                lambda a=a, b=b: new.checksum(a, b))
                if c_l != c_n:
                    sizes[(a, b)] = (c_l.rows, c_n.rows)
                    stack.append((a, b))
    if top_l.rows != top_n.rows:
        out.add("row_count", legacy=top_l.rows, new=top_n.rows)
    return ChecksumResult(out, queries, ranges, top_l, top_n)
