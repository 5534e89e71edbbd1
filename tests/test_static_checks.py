"""Static checks from PostgreSQL's own parser: scripts split right, hazards per statement
kind, and `rollout check` warnings for results that hang on ties; and, read with ast, test
modules that share only through tests/helpers.py and the like, never each other."""

from __future__ import annotations

import ast
import textwrap

import psycopg
import pytest

from rollout.commands import Session
from rollout.errors import InputError
from rollout.flags.determinism import dropped_order, hazards
from rollout.flags.sqlscript import (
    acts_beyond_database,
    destroys_data,
    non_transactional,
    split,
    uses_sequences,
)
from rollout.run.check import determinism_warnings, unique_keys
from tests.conftest import REPO, WorkspaceMaker
from tests.helpers import table_checksums

CORPUS = textwrap.dedent(r"""
    -- a comment; with a semicolon
    CREATE TABLE t (a int, b text);
    COPY t (a, b) FROM stdin;
    1	it's; here
    2	$$ not a quote -- nor a comment
    \.
    CREATE FUNCTION f() RETURNS int LANGUAGE sql
    BEGIN ATOMIC
      SELECT 1;
      SELECT 2;
    END;
    SELECT E'it\'s; x'; /* block; comment */ COPY t FROM STDIN WITH (FORMAT csv);
    3,"x;y"
    \.
    DO $body$ BEGIN PERFORM 1; END $body$;
    REFRESH MATERIALIZED VIEW CONCURRENTLY mv;
    """)


def test_the_splitter_keeps_every_tricky_statement_whole() -> None:
    stmts = split(CORPUS)
    assert [(s.number, s.line) for s in stmts] == [
        (1, 3), (2, 4), (3, 8), (4, 13), (5, 13), (6, 16), (7, 17)]
    assert stmts[1].sql == "COPY t (a, b) FROM stdin"
    assert stmts[1].data == "1\tit's; here\n2\t$$ not a quote -- nor a comment\n"
    assert stmts[2].sql.startswith("CREATE FUNCTION") and stmts[2].sql.endswith("END")
    assert stmts[3].sql == "SELECT E'it\\'s; x'"
    assert stmts[4].data == '3,"x;y"\n'
    assert stmts[5].sql == "DO $body$ BEGIN PERFORM 1; END $body$"
    assert all(s.data is None for i, s in enumerate(stmts) if i not in (1, 4))


@pytest.mark.parametrize("script, message", [
    ("SELECT 1;\nSELEC 2;\n", r'^line 2: does not parse: syntax error at or near "SELEC"$'),
    ("COPY t FROM stdin;\n1\t2\n", r"^line 1: COPY \.\.\. FROM stdin: its data has no end line"),
    ("COPY t FROM stdin;\n1\n\\.\nSELECT 1;\nDROPP TABLE t;\n",
     r'^line 5: does not parse: syntax error at or near "DROPP"$'),
])
def test_parse_failures_are_one_line_with_the_position(script: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        split(script)


HAZARDS = [
    # statement, non_transactional, destroys_data, uses_sequences, beyond the database
    ("CREATE INDEX CONCURRENTLY i ON t (a)", "runs CONCURRENTLY, which cannot be in a "
     "transaction", None, False, False),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", None, None, False, False),
    ("VACUUM t", "cannot run inside a transaction", None, False, False),
    ("ALTER TYPE mood ADD VALUE 'meh'", "ALTER TYPE ... ADD VALUE: the new value cannot be "
     "used in the same transaction", None, False, False),
    ("DROP TABLE t", None, "drops a table and its data", False, False),
    ("TRUNCATE t", None, "truncates a table", False, False),
    ("DELETE FROM t WHERE a = 1", None, "deletes rows", False, False),
    ("ALTER TABLE t DROP COLUMN b", None, "drops a column and its data", False, False),
    ("ALTER TABLE t ADD COLUMN id bigserial", None, None, True, False),
    ("CREATE TABLE u (id int GENERATED ALWAYS AS IDENTITY)", None, None, True, False),
    ("ALTER SYSTEM SET work_mem = '1MB'", "cannot run inside a transaction", None, False, True),
    ("COPY t FROM stdin", None, None, False, False),
    ("COPY t TO PROGRAM 'true'", None, None, False, True),
    ("CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", None, None,
     False, False),
]


@pytest.mark.parametrize("sql, why_not, destroys, sequences, beyond", HAZARDS)
def test_hazards_of_each_statement_kind(sql: str, why_not: str | None, destroys: str | None,
                                        sequences: bool, beyond: bool) -> None:
    (stmt,) = split(sql + ";")
    assert non_transactional(stmt) == why_not
    assert destroys_data(stmt) == destroys
    assert uses_sequences(stmt) is sequences
    assert (acts_beyond_database(stmt) is not None) is beyond


ORDERS = """
CREATE TABLE orders (id integer PRIMARY KEY, tenant text NOT NULL, customer integer NOT NULL,
                     placed date NOT NULL, code text UNIQUE, note text);
CREATE UNIQUE INDEX orders_pair ON orders (tenant, customer, placed);
CREATE VIEW recent AS SELECT * FROM orders;
INSERT INTO orders SELECT n, 't' || n % 3, n % 40, date '2024-01-01' + n % 9, NULL, 'x'
FROM generate_series(1, 100) AS n;
"""


def flag(name: str, legacy: str, new: str) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        description: static fixture {name}
        owner: tests
        kind: read
        queries:
          legacy: |
            {legacy}
          new: |
            {new}
        stages:
          - name: pilot
            shadow: {{tenants: [t1]}}
        rollback:
          none: no schema change
        """)


@pytest.fixture
def orders(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(ORDERS.encode())
    return db


CASES = {
    # name: (legacy, new, expected fragments in the warnings, or [] for none)
    "ties": ("SELECT DISTINCT ON (customer) customer, id FROM orders ORDER BY customer, placed"
             " DESC, id DESC",
             "SELECT DISTINCT ON (customer) customer, id FROM orders ORDER BY customer, placed"
             " DESC",
             ["queries.new: warning: DISTINCT ON (customer) keeps the first row",
              "queries.new: warning: drops ORDER BY id DESC that legacy has"]),
    "limit": ("SELECT id FROM orders o ORDER BY o.placed DESC, o.id LIMIT 5",
              "SELECT id FROM orders o ORDER BY o.placed DESC LIMIT 5",
              ["queries.new: warning: LIMIT by ORDER BY o.placed DESC, which does not cover"]),
    "pair": ("SELECT id FROM orders ORDER BY tenant, customer, placed LIMIT 5",
             "SELECT id FROM orders ORDER BY 1 LIMIT 5", []),
    "nullable": ("SELECT id FROM orders ORDER BY id LIMIT 5",
                 "SELECT id FROM orders ORDER BY code LIMIT 5",
                 ["queries.new: warning: LIMIT by ORDER BY code"]),
    "ties_kept": ("SELECT id FROM orders ORDER BY id FETCH FIRST 3 ROWS ONLY",
                  "SELECT id FROM orders ORDER BY placed FETCH FIRST 3 ROWS WITH TIES",
                  ["FETCH ... WITH TIES by ORDER BY placed"]),
    "aggregates": ("SELECT tenant, string_agg(note, ',' ORDER BY id) FROM orders GROUP BY 1"
                   " ORDER BY 1",
                   "SELECT tenant, string_agg(note, ',') FROM orders GROUP BY 1 ORDER BY 1",
                   ["queries.new: warning: string_agg() without ORDER BY"]),
    "windows": ("SELECT id, row_number() OVER (PARTITION BY tenant ORDER BY placed, id) FROM"
                " orders ORDER BY id",
                "SELECT id, row_number() OVER w FROM orders WINDOW w AS (PARTITION BY tenant"
                " ORDER BY placed) ORDER BY id",
                ["queries.new: warning: row_number() OVER (... ORDER BY placed)"]),
    "view": ("SELECT id FROM recent ORDER BY id LIMIT 5",
             "SELECT id FROM recent ORDER BY id LIMIT 5", []),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_warnings_name_the_flag_file_and_key(
    orders: str, make_workspace: WorkspaceMaker, name: str,
) -> None:
    legacy, new, expected = CASES[name]
    root = make_workspace({})
    (root / "flags" / f"{name}.yaml").write_text(flag(name, legacy, new))
    f = Session(root, dsn=orders).load().flags[name]
    with psycopg.connect(orders, autocommit=True) as conn:
        found = determinism_warnings(f, conn)
    assert all(w.startswith(f"flags/{name}.yaml: queries.") or w.startswith(
        str(f.file)) for w in found), found
    for fragment in expected:
        assert any(fragment in w for w in found), (fragment, found)
    if not expected:
        assert found == []
    assert not [w for w in found if "queries.legacy" in w], found


def test_without_a_database_only_what_needs_no_catalog_is_said() -> None:
    assert [h.what for h in hazards("SELECT json_agg(x) FROM t")] == [
        "json_agg() without ORDER BY: its elements come in the plan's order"]
    assert hazards("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a") == []
    assert dropped_order("SELECT a FROM t ORDER BY a, b", "SELECT a FROM t ORDER BY a") == ["b"]


def test_a_query_this_parser_cannot_read_is_a_warning_not_a_crash(
    orders: str, make_workspace: WorkspaceMaker,
) -> None:
    root = make_workspace({})
    (root / "flags" / "odd.yaml").write_text(
        flag("odd", "SELECT id FROM orders ORDER BY id", "SELECT id FROM orders ORDER BY id"))
    f = Session(root, dsn=orders).load().flags["odd"]
    from dataclasses import replace

    from rollout.flags.model import Query
    odd = replace(f, new=Query("SELECT id FROM orders ORDER BY id FETCH NEXT ROWS SKIPPED",
                               "inline"))
    with psycopg.connect(orders, autocommit=True) as conn:
        found = determinism_warnings(odd, conn)
    assert len(found) == 1 and "queries.new: warning: this toolkit's SQL parser" in found[0]
    assert "the server's checks apply" in found[0]


def test_hostile_relation_names_are_only_looked_up(orders: str) -> None:
    """A relation name from flag SQL reaches the catalog lookup as a parameter only."""
    before = table_checksums(orders)
    with psycopg.connect(orders, autocommit=True) as conn:
        keys = unique_keys(conn)
        assert keys('orders"; DROP TABLE orders; --') is None
        assert keys("orders); DROP TABLE orders; --") is None
        assert keys("recent") is None  # a view: no keys it could vouch for
        assert sorted(map(sorted, keys("orders") or [])) == [
            ["customer", "placed", "tenant"], ["id"]]
        found = hazards('SELECT id FROM "orders; DROP TABLE orders" ORDER BY id LIMIT 1', keys)
        assert found == []
    assert table_checksums(orders) == before


# -- test modules import no other test module ------------------------------------------------


def is_test_module(dotted: str, level: int) -> bool:
    """``tests.test_x`` (absolute) or ``.test_x`` (relative, ``level`` dots) names a test
    module; ``tests.helpers``, ``.conftest`` and the like do not."""
    parts = dotted.split(".") if dotted else []
    if level:
        return bool(parts) and parts[0].startswith("test_")
    return len(parts) > 1 and parts[0] == "tests" and parts[1].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports, anywhere in it (a function body, ``if
    TYPE_CHECKING:``), written as imported: ``tests.test_x`` or ``.test_x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if is_test_module(a.name, 0)]
        elif isinstance(node, ast.ImportFrom):
            dots, module = "." * node.level, node.module or ""
            if is_test_module(module, node.level):
                found.append(dots + module)
                continue
            # `from tests import test_x` and `from . import test_x` import the module by name
            members = [f"{module}.{a.name}" if module else a.name for a in node.names]
            found += [dots + m for m in members if is_test_module(m, node.level)]
    return found


@pytest.mark.parametrize("source, imported", [
    ("from tests.test_shadow import EQUIVALENT\n", ["tests.test_shadow"]),
    ("from .test_store_partitions import checksum, obs\n", [".test_store_partitions"]),
    ("from tests import test_online\n", ["tests.test_online"]),
    ("from . import helpers, test_watch, test_ci\n", [".test_watch", ".test_ci"]),
    ("import tests.test_browser as b\n", ["tests.test_browser"]),
    ("def f() -> None:\n    from tests.test_business import FAILED\n", ["tests.test_business"]),
    ("from tests.test_browser import browser as browser  # a fixture\n", ["tests.test_browser"]),
    ("from tests.helpers import EQUIVALENT\nfrom .conftest import REPO\n"
     "from tests.report_builder import make_report\nfrom tests import helpers\n"
     "import testing_tools\nfrom rollout.run import test_hooks\n", []),
])
def test_an_import_of_a_test_module_is_found(source: str, imported: list[str]) -> None:
    assert imported_test_modules(source) == imported


def test_no_test_module_imports_another() -> None:
    """Test modules share through tests/helpers.py, report_builder.py, chromium.py and
    conftest.py: a test module read alone says what its tests depend on, and changing or
    removing one never breaks another."""
    files = sorted((REPO / "tests").glob("*.py"))
    assert len(files) > 10 and any(f.name == "test_shadow.py" for f in files)
    offenders = {f.name: found for f in files if (found := imported_test_modules(f.read_text()))}
    assert offenders == {}, f"test modules imported by other files of tests/: {offenders}"
