"""Issue 12, flag-file side: what a careless or hostile flag file, name or path can no longer do.

Rows 1 and 12 (one statement, nothing but reads where reads are promised), 4 and 6 (names are
data), 7 (parsers with limits) and 15 (files stay inside the workspace); each case fails on the
code before the issue, where these flag files loaded and ran."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from rollout import Workspace
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import one_line, run_cli, table_checksums

SAMPLE = "  sample: SELECT DISTINCT grp FROM items WHERE tenant = %(tenant)s LIMIT %(limit)s\n"
TENANTS = "  tenants: SELECT DISTINCT tenant FROM items ORDER BY 1\n"



# -- row 1 and row 12: one statement; reads are reads --------------------------------------

REFUSED = [
    # (case, kind, where the SQL goes, SQL, line of the key, expected message)
    ("commit then insert", "read", "new",
     "SELECT 1 AS x; COMMIT; INSERT INTO t VALUES (1); SELECT 1 AS x", 8,
     "queries.new: must be exactly one SQL statement, found 4 (the second is COMMIT)"),
    ("rollback then delete", "read", "new", "ROLLBACK; DELETE FROM items", 8,
     "queries.new: must be exactly one SQL statement, found 2"),
    ("begin insert commit in a write flag", "write", "new",
     "BEGIN; INSERT INTO t VALUES (1); COMMIT;", 8,
     "queries.new: must be exactly one SQL statement, found 3"),
    ("lone commit", "write", "legacy", "COMMIT", 6,
     "queries.legacy: COMMIT is transaction control"),
    ("set transaction", "read", "new", "SET TRANSACTION READ WRITE", 8,
     "queries.new: SET TRANSACTION is transaction control"),
    ("session timeout", "read", "new", "SET statement_timeout = 0", 8,
     "queries.new: SET statement_timeout changes session state"),
    ("set role", "write", "new", "SET ROLE postgres", 8,
     "queries.new: SET ROLE changes session state"),
    ("set session authorization", "write", "new", "SET SESSION AUTHORIZATION postgres", 8,
     "queries.new: SET SESSION AUTHORIZATION changes session state"),
    ("discard", "write", "new", "DISCARD ALL", 8, "queries.new: DISCARD changes session state"),
    ("listen", "read", "new", "LISTEN channel", 8, "queries.new: LISTEN changes session state"),
    ("copy program in a read flag", "read", "new", "COPY (SELECT 1) TO PROGRAM 'id'", 8,
     "queries.new: COPY ... PROGRAM runs a shell command on the database server's host"),
    ("copy program in a write flag", "write", "new", "COPY (SELECT 1) TO PROGRAM 'id'", 8,
     "queries.new: COPY ... PROGRAM runs a shell command"),
    ("copy to a server file", "write", "new", "COPY items TO '/tmp/items.csv'", 8,
     "queries.new: COPY to or from a file reads or writes files on the database server's host"),
    ("do block in a read flag", "read", "new",
     "DO $$ BEGIN INSERT INTO t VALUES (1); END $$", 8,
     "queries.new: DO runs procedural code the parser cannot see into; kind: read"),
    ("call in a read flag", "read", "new", "CALL p()", 8, "queries.new: CALL runs procedural"),
    ("insert in a read flag", "read", "new", "INSERT INTO t VALUES (1) RETURNING x", 8,
     "queries.new: INSERT is not a read; kind: read runs plain reads only"),
    ("ddl in a read flag", "read", "legacy", "CREATE TABLE z (a int)", 6,
     "queries.legacy: CREATE TABLE is not a read"),
    ("data-modifying cte in a read flag", "read", "new",
     "WITH d AS (DELETE FROM items RETURNING id) SELECT id FROM d", 8,
     "queries.new: it has a WITH query that does DELETE"),
    ("select into in a read flag", "read", "new", "SELECT id INTO z FROM items", 8,
     "queries.new: it has SELECT INTO, which creates a table"),
    ("role in a write flag", "write", "new", "CREATE ROLE intruder SUPERUSER", 8,
     "queries.new: creates a role: roles belong to the whole cluster, not the database"),
    ("server file function", "read", "new", "SELECT pg_read_file('/etc/passwd') AS x", 8,
     "queries.new: calls pg_read_file(), which reads files on the database server's host"),
    ("comments only", "read", "new", "-- nothing here", 8,
     "queries.new: has no SQL statement"),
    ("sample that inserts", "read", "params.sample",
     "INSERT INTO t VALUES (1) RETURNING x AS grp", 11,
     "params.sample: INSERT is not a read; params queries must be plain reads"),
    ("tenants that delete", "read", "params.tenants",
     "DELETE FROM items RETURNING tenant", 12,
     "params.tenants: DELETE is not a read; params queries must be plain reads"),
    ("sample that sleeps then commits", "read", "params.sample",
     "SELECT pg_sleep(12); COMMIT", 11, "params.sample: must be exactly one SQL statement"),
]


def hostile_flag(kind: str, where: str, sql: str, name: str = "bad") -> str:
    legacy = new = "SELECT 1 AS x"
    if where == "legacy":
        legacy = sql
    elif where == "new":
        new = sql
    text = flag_yaml(name, legacy, new, kind=kind)
    if where == "params.sample":
        text = text.replace(SAMPLE, f"  sample: {sql}\n")
    elif where == "params.tenants":
        text = text.replace(TENANTS, f"  tenants: {sql}\n")
    return text


@pytest.mark.parametrize(("case", "kind", "where", "sql", "line", "message"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_unsafe_statements_are_refused_when_the_flag_loads(
    case: str, kind: str, where: str, sql: str, line: int, message: str,
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_workspace({"bad": hostile_flag(kind, where, sql)})
    got = one_line(capsys, root)
    assert got.startswith(f"flags/bad.yaml:{line}: {message}"), got


def test_a_query_file_with_several_statements_names_the_file(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    text = flag_yaml("bad", "SELECT 1 AS x", "SELECT 1 AS x").replace(
        "  new: |\n    SELECT 1 AS x\n", "  new: queries/bad.new.sql\n")
    script = "-- looks harmless\nSELECT 1 AS x;\nROLLBACK;\nDELETE FROM items;\n"
    root = make_workspace({"bad": text}, {"queries/bad.new.sql": script})
    assert one_line(capsys, root) == (
        "flags/bad.yaml:8: queries.new: queries/bad.new.sql: must be exactly one SQL "
        "statement, found 3 (the second is ROLLBACK); the toolkit runs each query as one "
        "statement")


def test_what_stays_allowed(make_workspace: WorkspaceMaker,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """Placeholders (named, with a literal %%), a trailing semicolon, comments, set
    operations, FOR UPDATE (refused by the server at run time, reported), DO in a write
    flag, and SQL this parser cannot read (the database check reports it precisely)."""
    root = make_workspace({
        "ok-read": flag_yaml(
            "ok-read", "SELECT id FROM items WHERE tenant = %(tenant)s AND note LIKE 'n1%%' "
                       "ORDER BY id; -- done",
            "(SELECT id FROM items WHERE grp = %(grp)s UNION SELECT 0) ORDER BY 1 LIMIT 5"),
        "ok-lock": flag_yaml("ok-lock", "SELECT 1 AS x", "SELECT 1 AS x FOR UPDATE"),
        "ok-write": flag_yaml("ok-write", "UPDATE items SET val = val WHERE id = %(id)s",
                              "DO $$ BEGIN PERFORM 1; END $$", kind="write"),
        "ok-typo": flag_yaml("ok-typo", "SELECT 1 AS x", "SELEC 1 AS x"),
    })
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 0, result.err


def test_shadow_and_flag_show_refuse_what_check_refuses_and_nothing_persists(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    """Row 1 as reproduced: `shadow --samples 5` of the flag persisted 12 rows and said
    "0 new-path failures"; row 12: `params.sample` inserting persisted rows, even from
    `rollout flag show`. Every command loads the flag the same way, so every one refuses."""
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x integer)")
    before = table_checksums(shop)
    flags = {
        "inj": hostile_flag("read", "new",
                            "SELECT 1 AS x; COMMIT; INSERT INTO t VALUES (1); SELECT 1 AS x",
                            name="inj"),
        "smp": hostile_flag("read", "params.sample",
                            "INSERT INTO t SELECT 1 RETURNING x AS grp", name="smp"),
    }
    for name, text in flags.items():
        root = make_workspace({name: text})
        for other in set(flags) - {name}:
            (root / "flags" / f"{other}.yaml").unlink(missing_ok=True)
        check = run_cli(capsys, "check", "--workspace", root, "--dsn", shop)
        assert check.code == 2
        expected = check.err.strip()
        assert expected.startswith(f"flags/{name}.yaml:") and "\n" not in expected
        for args in (("shadow", name, "--samples", "5"), ("flag", "show", name)):
            result = run_cli(capsys, *args, "--workspace", root, "--dsn", shop)
            assert result.code == 2, (args, result)
            assert result.err.strip().splitlines() == [f"rollout: error: {expected}"]
    assert table_checksums(shop) == before


def test_limit_without_order_by_is_refused_by_every_command(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    """It was a `check`-only regex; now the parser finds it when the flag loads (so `shadow`
    refuses it too) and ignores a LIMIT that picks no result rows (EXISTS ... LIMIT 1)."""
    root = make_workspace({
        "lim": flag_yaml("lim", "SELECT id FROM items ORDER BY id LIMIT 10",
                         "SELECT id FROM (SELECT id FROM items LIMIT 10) s ORDER BY id"),
        "ok": flag_yaml("ok", "SELECT id FROM items WHERE EXISTS (SELECT 1 FROM items LIMIT 1)",
                        "SELECT id FROM items WHERE true"),
    })
    assert one_line(capsys, root) == (
        "flags/lim.yaml:8: queries.new: LIMIT without ORDER BY returns rows in no defined "
        "order; strict comparison would report noise (add a total ORDER BY, or use "
        "compare.order: ignore)")
    shadow = run_cli(capsys, "shadow", "lim", "--workspace", root, "--dsn", "dbname=unused")
    assert shadow.code == 2 and "LIMIT without ORDER BY" in shadow.err


# -- rows 4 and 6: names are data ---------------------------------------------------------

BAD_STAGES = ["pilot; touch INJECTED;", "../../../escaped", "/abs/path", "two words",
              "nul\\0byte", "new\\nline", "-rf", ".hidden", "..", "x" * 64, "$(id)", "a/b"]


@pytest.mark.parametrize("stage", BAD_STAGES)
def test_stage_names_outside_the_safe_set_are_refused(
    stage: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    text = flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x").replace(
        "  - name: pilot\n", f'  - name: "{stage}"\n')
    got = one_line(capsys, make_workspace({"good": text}))
    assert got.startswith("flags/good.yaml:16: stages[0].name: "), got
    assert got.endswith("is not a valid stage name: letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit, at most 63 characters"), got


@pytest.mark.parametrize("name", ["inj; touch INJECTED", "Upper", "-rf", "two words", "a$b"])
def test_flag_names_outside_the_safe_set_are_refused(
    name: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_workspace({name: flag_yaml(name, "SELECT 1 AS x", "SELECT 1 AS x")})
    got = one_line(capsys, root)
    assert re.fullmatch(rf"flags/{re.escape(name)}\.yaml:1: name: .* is not a valid flag name: "
                        r"lower-case letters, digits, '\.', '_' and '-', starting with a letter "
                        r"or digit, at most 63 characters", got), got


def test_tenant_names_are_any_text_without_control_characters(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    odd = flag_yaml("odd", "SELECT 1 AS x", "SELECT 1 AS x").replace(
        "tenants: [acme, globex]", "tenants: [\"acme; rm -rf /\", \"../x\", \"Ünïcode tenant\"]")
    root = make_workspace({"odd": odd})
    flag = Workspace.load(root).flags["odd"]
    target = flag.stages[0].shadow
    assert target is not None and target.tenants == {"acme; rm -rf /", "../x", "Ünïcode tenant"}
    bad = odd.replace('"../x"', '"nul\\0byte"')
    (root / "flags" / "odd.yaml").write_text(bad)
    assert one_line(capsys, root) == (
        "flags/odd.yaml:17: stages[0].shadow.tenants[1]: a tenant name cannot contain control "
        "characters, got 'nul\\x00byte'")


# -- row 7: parsers with limits -------------------------------------------------------------

def alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for level in "bcdefghi":  # 9 levels of 10 aliases: 10^9 strings once expanded
        lines.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 10)}]")
        previous = level
    return "\n".join(lines) + "\n"


def run_bounded(*args: str | Path, memory: int = 1 << 30) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process whose address space is capped, so that code without
    the limits under test fails (MemoryError, a crash) instead of eating the machine."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    code = "import sys; from rollout.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, preexec_fn=limit, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "ROLLOUT_DEBUG": ""})


def test_yaml_alias_bomb_is_refused_with_small_memory(make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"good": flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x")})
    (root / "flags" / "good.yaml").write_text(alias_bomb())
    result = run_bounded("check", "--offline", "--workspace", root)
    assert result.returncode == 2, result
    assert result.stderr.strip() == ("flags/good.yaml:2: YAML alias *a is not allowed: write "
                                     "the value out (aliases and merge keys are refused)")


@pytest.mark.parametrize(("text", "expected"), [
    ("x: &a [*a]\n", "flags/good.yaml:1: YAML alias *a is not allowed"),
    ("name: good\nbase: &b {order: strict}\ncompare:\n  <<: *b\n",
     "flags/good.yaml:4: YAML alias *b is not allowed"),
    ("name: good\ndeep: " + "[" * 200 + "]" * 200 + "\n",
     "flags/good.yaml:2: invalid YAML: nested deeper than 64 levels"),
], ids=["recursive alias", "merge key", "deep nesting"])
def test_recursive_alias_and_deep_nesting_are_one_line(
    text: str, expected: str, make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_workspace({"good": flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x")})
    (root / "flags" / "good.yaml").write_text(text)
    assert one_line(capsys, root).startswith(expected)


def test_sql_nested_too_deeply_for_the_parser_is_refused_not_a_crash(
    make_workspace: WorkspaceMaker,
) -> None:
    """pglast recurses in C to build its tree: 40,000 `1+` (80 KB) overflow the stack and
    kill the process unless the depth is bounded first."""
    deep = "SELECT " + "1+" * 40_000 + "1 AS x"
    root = make_workspace({"deep": flag_yaml("deep", "SELECT 1 AS x", deep)})
    result = run_bounded("check", "--offline", "--workspace", root, memory=2 << 30)
    assert result.returncode == 2, result
    assert result.stderr.strip() == "flags/deep.yaml:8: queries.new: is nested too deeply " \
                                    "to be read"


def test_files_over_the_size_limits_are_refused_before_parsing(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    text = flag_yaml("big", "SELECT 1 AS x", "SELECT 1 AS x").replace(
        "  new: |\n    SELECT 1 AS x\n", "  new: queries/big.sql\n")
    root = make_workspace({"big": text},
                          {"queries/big.sql": "SELECT 1 AS x\n" + "-- padding\n" * 100_000})
    assert one_line(capsys, root) == ("flags/big.yaml:8: queries.new: queries/big.sql is "
                                      "larger than 1024 KiB (1100014 bytes)")
    (root / "flags" / "big.yaml").write_text(text + "# " + "x" * (1 << 20) + "\n")
    assert re.fullmatch(r"flags/big\.yaml: larger than 1024 KiB \(\d+ bytes\)",
                        one_line(capsys, root))


# -- row 15: files stay inside the workspace ------------------------------------------------

def outside_case(root: Path, case: str) -> str:
    outside = root.parent / "outside.sql"
    outside.write_text("SELECT 'stolen' AS x\n")
    if case == "dotdot":
        return "../outside.sql"
    if case == "absolute":
        return str(outside)
    if case == "hardlink":
        (root / "queries" / "hard.sql").hardlink_to(outside)
        return "queries/hard.sql"
    (root / "queries" / "link.sql").symlink_to(outside)
    return "queries/link.sql"


@pytest.mark.parametrize(("case", "message"), [
    ("dotdot", "../outside.sql is outside the workspace"),
    ("absolute", "{path} is an absolute path: files must be inside the workspace, given "
                 "relative to it"),
    ("symlink", "queries/link.sql leads outside the workspace through a symbolic link"),
    ("hardlink", "queries/hard.sql has other names (hard links): it may be a file outside the "
                 "workspace"),
])
def test_query_and_rollback_files_outside_the_workspace_are_refused(
    case: str, message: str, make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_workspace({"good": flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x")})
    rel = outside_case(root, case)
    hint = " (or set files_outside_workspace: true in rollout.yaml)"
    query = flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x").replace(
        "  new: |\n    SELECT 1 AS x\n", f"  new: {rel}\n")
    (root / "flags" / "good.yaml").write_text(query)
    assert one_line(capsys, root) == \
        f"flags/good.yaml:8: queries.new: {message.format(path=rel)}{hint}"
    script = flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x").replace(
        "rollback/good.sql", rel)
    (root / "flags" / "good.yaml").write_text(script)
    assert one_line(capsys, root) == \
        f"flags/good.yaml:24: rollback.script: {message.format(path=rel)}{hint}"

    (root / "rollout.yaml").write_text("files_outside_workspace: true\n")
    (root / "flags" / "good.yaml").write_text(query)
    flag = Workspace.load(root).flags["good"]
    assert flag.new.sql == "SELECT 'stolen' AS x\n"


# -- rollout.yaml ---------------------------------------------------------------------------

def test_workspace_settings(make_workspace: WorkspaceMaker,
                            capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"good": flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x")})
    settings = Workspace.load(root).settings
    assert (settings.allow_superuser, settings.files_outside_workspace,
            settings.shadow_role) == (False, False, None)
    (root / "rollout.yaml").write_text(textwrap.dedent("""\
        # workspace settings
        allow_superuser: true
        files_outside_workspace: false
        shadow_role: rollout_shadow
        """))
    settings = Workspace.load(root).settings
    assert (settings.allow_superuser, settings.shadow_role) == (True, "rollout_shadow")
    for text, expected in [
        ("allow_superuser: yes please\n",
         "rollout: error: rollout.yaml:1: allow_superuser: must be true or false, got text"),
        ("shadow_role: x\nsuperuser: true\n",
         "rollout: error: rollout.yaml:2: superuser: unknown key"),
        ('shadow_role: "r; DROP ROLE x"\n',
         "rollout: error: rollout.yaml:1: shadow_role: 'r; DROP ROLE x' is not a role name"),
        ("a: &a [*a]\n", "rollout: error: rollout.yaml:1: YAML alias *a is not allowed"),
    ]:
        (root / "rollout.yaml").write_text(text)
        assert one_line(capsys, root).startswith(expected)


# -- scripts: split by the parser, read for what reaches beyond the database ---------------

def test_scripts_split_by_the_parser() -> None:
    from rollout.errors import InputError
    from rollout.flags.sqlscript import (
        acts_beyond_database,
        destroys_data,
        non_transactional,
        split,
    )

    script = textwrap.dedent("""\
        -- undo the reporting function
        CREATE FUNCTION total(a int, b int) RETURNS int LANGUAGE sql
        BEGIN ATOMIC
          SELECT a + b;  -- still the same statement
        END;
        /* a comment; with a semicolon */ DROP INDEX CONCURRENTLY items_grp;
        SELECT ';' AS "a;b", $x$ ; $x$;
        DELETE FROM items WHERE note = '--';
        """)
    stmts = split(script)
    assert [(s.number, s.line) for s in stmts] == [(1, 2), (2, 6), (3, 7), (4, 8)]
    assert stmts[0].sql.endswith("END")
    assert stmts[1].summary == "DROP INDEX CONCURRENTLY items_grp"
    assert non_transactional(stmts[1]) == "runs CONCURRENTLY, which cannot be in a transaction"
    assert destroys_data(stmts[3]) == "deletes rows"
    assert [acts_beyond_database(s) for s in stmts] == [None] * 4
    with pytest.raises(InputError, match=r'^line 3: does not parse: syntax error at or near '
                                         r'"SELEC"$'):
        split("SELECT 1;\n\nSELEC 2;\nDROP TABLE items;\n")


SCRIPT_VECTORS = [
    # statement, non_transactional, destroys_data, uses_sequences
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", None, None, False),
    ("ALTER TYPE mood ADD VALUE 'meh'", "ALTER TYPE ... ADD VALUE: the new value cannot be "
     "used in the same transaction", None, False),
    ("VACUUM items", "cannot run inside a transaction", None, False),
    ("ANALYZE items", None, None, False),
    ("REINDEX TABLE CONCURRENTLY items",
     "runs CONCURRENTLY, which cannot be in a transaction", None, False),
    ("ALTER TABLE items DROP note, ALTER COLUMN val TYPE real", None,
     "drops a column and its data", False),
    ("ALTER TABLE items ALTER COLUMN val TYPE real", None,
     "changes a column's type (values may be converted or truncated)", False),
    ("ALTER TABLE items DROP CONSTRAINT items_pkey", None, None, False),
    ("DROP TABLE IF EXISTS items", None, "drops a table and its data", False),
    ("DROP SCHEMA s CASCADE", None, "drops a schema and everything in it", False),
    ("TRUNCATE items", None, "truncates a table", False),
    ("SELECT 'DROP TABLE items; DELETE FROM items' AS t", None, None, False),
    ("ALTER TABLE items ADD COLUMN n bigserial", None, None, True),
    ("INSERT INTO items (id) SELECT nextval('s')", None, None, True),
    ("CREATE TABLE z (id int GENERATED ALWAYS AS IDENTITY)", None, None, True),
]


@pytest.mark.parametrize(("sql", "transaction", "destroys", "sequences"), SCRIPT_VECTORS,
                         ids=[v[0][:40] for v in SCRIPT_VECTORS])
def test_script_statements_are_read_from_parse_trees(
    sql: str, transaction: str | None, destroys: str | None, sequences: bool,
) -> None:
    from rollout.flags.sqlscript import destroys_data, non_transactional, split, uses_sequences

    [stmt] = split(sql + ";")
    assert (non_transactional(stmt), destroys_data(stmt), uses_sequences(stmt)) == (
        transaction, destroys, sequences)


def test_row_2_statements_are_named_as_reaching_beyond_the_database() -> None:
    from rollout.flags.sqlscript import acts_beyond_database, split

    script = textwrap.dedent("""\
        CREATE ROLE intruder LOGIN;
        ALTER DATABASE target SET work_mem = '3MB';
        COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned';
        ALTER SYSTEM SET work_mem = '3MB';
        CREATE TABLESPACE ts LOCATION '/tmp/ts';
        GRANT pg_write_server_files TO app;
        ALTER ROLE app SET search_path = evil;
        CREATE EXTENSION plpython3u;
        DO $$ BEGIN EXECUTE 'SELECT 1'; END $$;
        LOAD 'auto_explain';
        CREATE TABLE fine (id int);
        """)
    reasons = [acts_beyond_database(s) for s in split(script)]
    assert reasons == [
        "creates a role: roles belong to the whole cluster, not the database",
        "changes a database's settings (ALTER DATABASE ... SET): they live in the cluster's "
        "catalog and apply to every later session",
        "COPY ... PROGRAM runs a shell command on the database server's host",
        "changes the server's configuration (ALTER SYSTEM), for every database of the cluster",
        "creates a tablespace: tablespaces belong to the whole cluster and are folders on the "
        "server's host",
        "grants or revokes role membership: roles belong to the whole cluster, not the database",
        "changes a role's settings (ALTER ROLE ... SET): roles belong to the whole cluster, not "
        "the database",
        "creates an extension: that may need a superuser, and its install script may load C "
        "libraries or untrusted code onto the server",
        "runs procedural code the parser cannot see into (DO)",
        "loads a shared library into the server process (LOAD)",
        None,
    ]


def test_a_rollback_script_that_does_not_parse_is_refused_at_load(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_workspace({"good": flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x")})
    (root / "rollback" / "good.sql").write_text("DROP INDEX a;\nDROPP TABLE items;\n")
    assert one_line(capsys, root) == ('flags/good.yaml:24: rollback.script: rollback/good.sql '
                                      'line 2: does not parse: syntax error at or near "DROPP"')
