"""Comparison engine on real PostgreSQL types: normalisation rules, streaming, checksums,
masking."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.flags.model import CompareRules
from rollout.run.checksum import checksum_compare
from rollout.run.compare import compare
from rollout.run.results import ResultSet
from rollout.run.streaming import stream_pair
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import run_cli


def fetch(dsn: str, query: str, setup: str = "") -> ResultSet:
    with psycopg.connect(dsn) as conn:
        if setup:
            conn.execute(setup)
        cur = conn.execute(query)
        desc = cur.description or []
        rows = cur.fetchall()
    return ResultSet(tuple(d.name for d in desc), tuple(d.type_code for d in desc), rows,
                     len(rows))


def same(dsn: str, a: str, b: str, rules: CompareRules, setup_b: str = "") -> bool:
    return compare(fetch(dsn, a), fetch(dsn, b, setup_b), rules).matched


def test_float_tolerance_relative_and_absolute(server_dsn: str) -> None:
    a, b = "SELECT 1000.0::float8 AS x", "SELECT 1000.001::float8 AS x"
    assert not same(server_dsn, a, b, CompareRules())
    assert same(server_dsn, a, b, CompareRules(float_tolerance=1e-5))
    tiny_a, tiny_b = "SELECT 0.0::float8 AS x", "SELECT 1e-12::float8 AS x"
    assert not same(server_dsn, tiny_a, tiny_b, CompareRules(float_tolerance=1e-5))
    assert same(server_dsn, tiny_a, tiny_b, CompareRules(float_abs_tolerance=1e-9))


def test_numeric_scale(server_dsn: str) -> None:
    a, b = "SELECT 1.50::numeric AS n", "SELECT 1.5::numeric AS n"
    assert same(server_dsn, a, b, CompareRules())
    assert not same(server_dsn, a, b, CompareRules(numeric_scale="strict"))
    assert not same(server_dsn, a, "SELECT 1.51::numeric AS n", CompareRules())


def test_timestamptz_compares_instants(server_dsn: str) -> None:
    q = "SELECT '2026-03-01 12:00:00+00'::timestamptz AS t"
    legacy = fetch(server_dsn, q, "SET TIME ZONE 'UTC'")
    new = fetch(server_dsn, q, "SET TIME ZONE 'Asia/Tokyo'")
    assert legacy.rows != [] and legacy.rows[0][0].utcoffset() != new.rows[0][0].utcoffset()
    assert compare(legacy, new, CompareRules()).matched


def test_timestamp_rounding_per_column(server_dsn: str) -> None:
    a = "SELECT '2026-03-01 12:00:00.2+00'::timestamptz AS t, 1 AS id"
    b = "SELECT '2026-03-01 12:00:00.7+00'::timestamptz AS t, 1 AS id"
    c = "SELECT '2026-03-01 12:00:01.2+00'::timestamptz AS t, 1 AS id"
    rules = CompareRules(round_timestamps={"t": timedelta(seconds=1)})
    assert not same(server_dsn, a, b, CompareRules())
    assert same(server_dsn, a, b, rules)
    assert not same(server_dsn, b, c, rules)


def test_json_by_value_and_arrays(server_dsn: str) -> None:
    assert same(server_dsn, """SELECT '{"a": 1, "b": [1, 2]}'::json AS j""",
                """SELECT '{"b": [1, 2], "a": 1}'::json AS j""", CompareRules())
    assert same(server_dsn, """SELECT '{"a": 1}'::jsonb AS j""",
                """SELECT '{"a":1}'::jsonb AS j""", CompareRules())
    assert not same(server_dsn, """SELECT '{"a": [1, 2]}'::jsonb AS j""",
                    """SELECT '{"a": [2, 1]}'::jsonb AS j""", CompareRules())
    arr_a = "SELECT ARRAY[1.0, 2.0]::float8[] AS a"
    arr_b = "SELECT ARRAY[1.0, 2.0000001]::float8[] AS a"
    assert not same(server_dsn, arr_a, arr_b, CompareRules())
    assert same(server_dsn, arr_a, arr_b, CompareRules(float_tolerance=1e-6))


def test_nulls_and_ignored_columns(server_dsn: str) -> None:
    assert same(server_dsn, "SELECT NULL::int AS x, now() AS at",
                "SELECT NULL::int AS x, now() - interval '1 day' AS at",
                CompareRules(ignore_columns=frozenset({"at"})))
    assert not same(server_dsn, "SELECT NULL::int AS x", "SELECT 0 AS x", CompareRules())


def test_order_only_difference_is_named(server_dsn: str) -> None:
    out = compare(fetch(server_dsn, "SELECT g FROM generate_series(1, 5) g ORDER BY g"),
                  fetch(server_dsn, "SELECT g FROM generate_series(1, 5) g ORDER BY g DESC"),
                  CompareRules())
    assert [d["kind"] for d in out.diffs] == ["order"]
    assert "calibrate" in out.diffs[0]["note"]


def test_diff_samples_are_bounded_per_kind() -> None:
    a = ResultSet(("id", "v"), (23, 23), [(i, i) for i in range(100)], 100)
    b = ResultSet(("id", "v"), (23, 23), [(i, -i) for i in range(1, 100)] + [(500, 0)], 100)
    out = compare(a, b, CompareRules(order="key", key=("id",), max_diffs=3))
    assert out.counts == {"changed": 99, "missing": 1, "extra": 1}
    assert sorted(d["kind"] for d in out.diffs) == ["changed"] * 3 + ["extra", "missing"]


def test_sensitive_values_are_masked() -> None:
    a = ResultSet(("id", "email"), (23, 25), [(1, "ann@example.com")], 1)
    b = ResultSet(("id", "email"), (23, 25), [(1, "bob@example.com")], 1)
    out = compare(a, b, CompareRules(sensitive=frozenset({"email"})))
    assert out.diffs[0]["columns"] == ["email"]
    assert "example.com" not in json.dumps(out.diffs)


rows_st = st.lists(st.tuples(st.integers(0, 50), st.one_of(st.none(), st.text(max_size=3))),
                   max_size=15, unique_by=lambda r: r[0])


@given(rows_st, st.randoms())
def test_key_mode_equal_sets_match(rows: list[tuple[Any, ...]], rnd: Any) -> None:
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    rules = CompareRules(order="key", key=("k",))
    assert compare(ResultSet(("k", "v"), (23, 25), rows, len(rows)),
                   ResultSet(("k", "v"), (23, 25), shuffled, len(rows)), rules).matched


@given(rows_st.filter(bool), st.data())
def test_key_mode_finds_any_single_cell_change(rows: list[tuple[Any, ...]],
                                               data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(rows) - 1))
    changed = list(rows)
    changed[i] = (rows[i][0], "changed!")
    rules = CompareRules(order="key", key=("k",))
    out = compare(ResultSet(("k", "v"), (23, 25), rows, len(rows)),
                  ResultSet(("k", "v"), (23, 25), changed, len(rows)), rules)
    assert out.counts == {"changed": 1}


BIG = """
CREATE TABLE big (id bigint PRIMARY KEY, grp int NOT NULL, label text, amount numeric);
INSERT INTO big SELECT n, n % 97, 'row ' || n, n * 1.5 FROM generate_series(1, 60000) n;
CREATE TABLE big2 AS SELECT * FROM big;
ALTER TABLE big2 ADD PRIMARY KEY (id);
DELETE FROM big2 WHERE id IN (17, 30001);
UPDATE big2 SET label = 'changed' WHERE id IN (5, 59999);
INSERT INTO big2 VALUES (70000, 1, 'extra', 1.5);
ANALYZE big; ANALYZE big2;
"""


@pytest.fixture
def big(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(BIG.encode())
    return db


@pytest.mark.parametrize(("order", "binary"), [("strict", False), ("key", False),
                                               ("ignore", False), ("key", True)])
def test_streaming_finds_exactly_the_differences(big: str, order: str, binary: bool) -> None:
    rules = CompareRules(order=order, key=("id",) if order == "key" else (), batch_size=1000,
                         max_diffs=10, binary=binary)  # type: ignore[arg-type]
    legacy = "SELECT id, grp, label, amount FROM big" + (" ORDER BY id" if order == "strict"
                                                         else "")
    with psycopg.connect(big, autocommit=True) as a, psycopg.connect(big, autocommit=True) as b:
        l_res, n_res, same_cmp = stream_pair(a, b, legacy, legacy, {}, rules=rules,
                                             write=False)
        assert same_cmp.matched and l_res.row_count == n_res.row_count == 60000
        new = legacy.replace("FROM big", "FROM big2")
        _, n_res, out = stream_pair(a, b, legacy, new, {}, rules=rules, write=False)
    assert n_res.row_count == 59999
    if order == "key":
        assert out.counts == {"missing": 2, "extra": 1, "changed": 2, "row_count": 1}
        changed = sorted(d["key"]["id"] for d in out.diffs if d["kind"] == "changed")
        assert changed == ["5", "59999"]
    elif order == "ignore":
        # a changed row is one missing and one extra row without a key
        assert out.counts == {"missing": 4, "extra": 3, "row_count": 1}
    else:
        assert out.counts["row_count"] == 1 and out.counts["changed"] > 0


def test_checksum_drills_down_to_the_differing_rows(big: str) -> None:
    rules = CompareRules(order="key", key=("id",), checksum=True)
    legacy = "SELECT id, grp, label, amount FROM big"
    with psycopg.connect(big, autocommit=True) as a, psycopg.connect(big, autocommit=True) as b:
        same_result = checksum_compare(a, b, legacy, legacy, {}, rules=rules)
        assert same_result.comparison.matched and same_result.queries == 4  # bounds, one scan
        result = checksum_compare(a, b, legacy, legacy.replace("big", "big2"), {}, rules=rules)
    out = result.comparison
    assert out.counts == {"missing": 2, "extra": 1, "changed": 2, "row_count": 1}
    assert sorted(d["row"]["id"] for d in out.diffs if d["kind"] == "missing") == ["17", "30001"]
    assert result.legacy.rows == 60000 and result.new.rows == 59999
    assert result.ranges_compared < 60000 / 2000  # it drilled down, not everything


def test_masking_in_every_output(shop: str, make_workspace: WorkspaceMaker,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    secret_col = "SELECT id, 'secret-' || id AS token FROM items WHERE tenant = %(tenant)s" \
                 " AND grp = %(grp)s ORDER BY id"
    text = flag_yaml("mask", secret_col, secret_col.replace("'secret-'", "'other-'"),
                     min_samples=20).replace("  order: strict",
                                             "  order: strict\n  sensitive: [token, grp]")
    root = make_workspace({"mask": text})
    assert run_cli(capsys, "shadow", "mask", "--samples", "20", "--workspace", root,
                   "--dsn", shop).code == 0
    r = run_cli(capsys, "report", "mask", "--workspace", root, "--dsn", shop)
    assert r.code == 1
    outputs = [p.read_text() for p in (root / "reports" / "mask").iterdir()]
    assert len(outputs) == 3
    with psycopg.connect(shop) as conn:
        stored = conn.execute("SELECT string_agg(diff::text || params::text, '')"
                              " FROM rollout.observations").fetchone()
    for text_out in [*outputs, str(stored), r.out, r.err]:
        # the SQL text is shown; values (secret-17, other-17) never are
        assert not re.search(r"(secret|other)-\d", text_out)
    assert '"grp": "***"' in str(stored)


def test_check_reports_limit_without_order_by(make_workspace: WorkspaceMaker,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({
        "lim": flag_yaml("lim", "SELECT id FROM items LIMIT 10", "SELECT id FROM items LIMIT 10"),
        "ok": flag_yaml("ok", "SELECT id FROM items ORDER BY id LIMIT 10",
                        "SELECT id FROM items /* no LIMIT here */ ORDER BY id LIMIT 10"),
    })
    r = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert r.code == 2
    # a flag file stops at its first problem (the legacy path here)
    assert "flags/lim.yaml" in r.err and "LIMIT without ORDER BY" in r.err
    assert "flags/ok.yaml" not in r.err


def test_flag_validation_of_compare_rules(make_workspace: WorkspaceMaker,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = flag_yaml("c", "SELECT 1 AS id", "SELECT 1 AS id")
    cases = {
        "checksum: true": "compare.key: is required with checksum: true",
        "round_timestamps: {at: soon}": "compare.round_timestamps.at: must be a duration",
        "numeric_scale: loose": "compare.numeric_scale: must be ignore or strict",
    }
    for line, message in cases.items():
        root = make_workspace({"c": base.replace("  order: strict", f"  order: strict\n  {line}")})
        r = run_cli(capsys, "check", "--offline", "--workspace", root)
        assert r.code == 2 and message in r.err, r.err
    write = flag_yaml("c", "SELECT 1 AS id", "SELECT 1 AS id", kind="write").replace(
        "  order: strict", "  order: key\n  key: [id]\n  checksum: true")
    root = make_workspace({"c": write})
    r = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert r.code == 2 and "compare.checksum: is for large read results" in r.err
