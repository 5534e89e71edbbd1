"""Result-set comparison rules, checked on plain rows and on real PostgreSQL types."""

from __future__ import annotations

from decimal import Decimal

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from rollout.flags.model import CompareRules
from rollout.run.compare import compare
from rollout.run.results import ResultSet

INT4, FLOAT8, TEXT, NUMERIC = 23, 701, 25, 1700


def rs(cols: tuple[str, ...], rows: list[tuple[object, ...]],
       types: tuple[int, ...] | None = None) -> ResultSet:
    return ResultSet(cols, types or tuple(INT4 for _ in cols), rows, len(rows))


def test_strict_reports_changed_cells_and_positions() -> None:
    a = rs(("id", "v"), [(1, 10), (2, 20), (3, 30)])
    b = rs(("id", "v"), [(1, 10), (2, 21), (3, 30)])
    out = compare(a, b, CompareRules("strict"))
    assert not out.matched
    assert out.diffs == [{"kind": "changed", "position": 1, "columns": ["v"],
                          "legacy": {"id": "2", "v": "20"}, "new": {"id": "2", "v": "21"}}]


def test_strict_catches_order_ignore_does_not() -> None:
    a = rs(("id",), [(1,), (2,), (2,)])
    b = rs(("id",), [(2,), (1,), (2,)])
    assert not compare(a, b, CompareRules("strict")).matched
    assert compare(a, b, CompareRules("ignore")).matched
    c = rs(("id",), [(2,), (1,), (1,)])  # duplicates count
    out = compare(a, c, CompareRules("ignore"))
    assert dict(out.counts) == {"missing": 1, "extra": 1}


def test_key_mode_reports_missing_extra_changed() -> None:
    a = rs(("id", "v"), [(1, 10), (2, 20), (3, 30)])
    b = rs(("id", "v"), [(3, 31), (4, 40), (1, 10)])
    out = compare(a, b, CompareRules("key", key=("id",)))
    assert dict(out.counts) == {"missing": 1, "extra": 1, "changed": 1}
    changed = next(d for d in out.diffs if d["kind"] == "changed")
    assert changed["key"] == {"id": "3"} and changed["columns"] == ["v"]


def test_columns_and_types_are_compared_first() -> None:
    out = compare(rs(("id", "v"), []), rs(("id", "w"), []), CompareRules())
    assert out.diffs == [{"kind": "columns", "legacy": ["id", "v"], "new": ["id", "w"]}]
    out = compare(rs(("id",), [(1,)], (INT4,)), rs(("id",), [(1,)], (TEXT,)), CompareRules())
    assert out.diffs == [{"kind": "column_types", "columns": ["id"]}]


def test_ignore_columns_and_float_tolerance() -> None:
    a = rs(("id", "x", "at"), [(1, 0.1 + 0.2, "t1")], (INT4, FLOAT8, TEXT))
    b = rs(("id", "x", "at"), [(1, 0.3, "t2")], (INT4, FLOAT8, TEXT))
    assert not compare(a, b, CompareRules()).matched
    rules = CompareRules(ignore_columns=frozenset({"at"}), float_tolerance=1e-9)
    assert compare(a, b, rules).matched


def test_numeric_scale_and_nulls_round_trip(server_dsn: str) -> None:
    with psycopg.connect(server_dsn) as conn:
        cur = conn.execute("SELECT 1.50::numeric AS n, NULL::text AS t")
        a = ResultSet(("n", "t"), (NUMERIC, TEXT), cur.fetchall(), 1)
        cur = conn.execute("SELECT 1.5::numeric AS n, NULL::text AS t")
        b = ResultSet(("n", "t"), (NUMERIC, TEXT), cur.fetchall(), 1)
    assert a.rows == [(Decimal("1.50"), None)]
    assert compare(a, b, CompareRules()).matched


rows_st = st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.text(max_size=3))),
                   max_size=12)


@given(rows_st, st.randoms())
def test_equal_multisets_always_match(rows: list[tuple[object, ...]], rnd: object) -> None:
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert compare(rs(("a", "b"), rows), rs(("a", "b"), shuffled), CompareRules("ignore")).matched


@given(rows_st.filter(bool), st.data())
def test_any_single_cell_change_is_found(rows: list[tuple[object, ...]], data: st.DataObject
                                         ) -> None:
    i = data.draw(st.integers(0, len(rows) - 1))
    changed = list(rows)
    changed[i] = (rows[i][0] + 100, rows[i][1])
    for rules in (CompareRules("strict"), CompareRules("ignore")):
        assert not compare(rs(("a", "b"), rows), rs(("a", "b"), changed), rules).matched
