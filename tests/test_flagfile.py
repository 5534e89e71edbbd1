"""Flag files: each kind of bad input gives one clear ``file:line: key: message`` and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rollout import Workspace
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import run_cli

GOOD = flag_yaml("good", "SELECT 1 AS x", "SELECT 1 AS x")


def test_good_flag_loads_with_defaults(make_workspace: WorkspaceMaker) -> None:
    ws = Workspace.load(make_workspace({"good": GOOD}))
    flag = ws.flags["good"]
    assert flag.kind == "read"
    assert [s.name for s in flag.stages] == ["pilot", "everyone"]
    assert flag.gates.min_samples == 60
    assert flag.gates.max_new_failures == 0  # default
    assert flag.gates.latency.max_regression == 5.0
    assert flag.rollback.script == "-- undo of good\nSELECT 1;\n"


def test_query_from_file(make_workspace: WorkspaceMaker) -> None:
    text = GOOD.replace("  new: |\n    SELECT 1 AS x\n", "  new: queries/good.new.sql\n")
    root = make_workspace({"good": text}, {"queries/good.new.sql": "SELECT 2 AS x\n"})
    flag = Workspace.load(root).flags["good"]
    assert flag.new.sql == "SELECT 2 AS x\n"
    assert flag.new.source == "queries/good.new.sql"


BAD = [
    ("unknown top key", GOOD + "colour: blue\n", r"flags/good.yaml:\d+: colour: unknown key"),
    ("wrong type", GOOD.replace("min_samples: 60", "min_samples: many"),
     r"flags/good.yaml:\d+: gates.min_samples: must be a number, got text"),
    ("missing query file", GOOD.replace("  new: |\n    SELECT 1 AS x\n",
                                        "  new: queries/nope.sql\n"),
     r"flags/good.yaml:8: queries.new: file not found: queries/nope.sql"),
    ("name mismatch", GOOD.replace("name: good", "name: other"),
     r"flags/good.yaml:1: name: 'other' does not match the file name 'good.yaml'"),
    ("bad yaml", GOOD.replace("owner: tests", "owner: [tests"),
     r"flags/good.yaml:\d+: invalid YAML"),
    ("bad order", GOOD.replace("order: strict", "order: sorted"),
     r"flags/good.yaml:\d+: compare.order: must be strict, ignore or key, got 'sorted'"),
    ("percent out of range", GOOD.replace('serve: {tenants: ["*"]}', "serve: {percent: 120}"),
     r"flags/good.yaml:\d+: stages\[1\].serve.percent: must be between 0 and 100, got 120"),
    ("missing rollback script", GOOD.replace("rollback/good.sql", "rollback/missing.sql"),
     r"flags/good.yaml:\d+: rollback.script: file not found: rollback/missing.sql"),
    ("duplicate stage", GOOD.replace("name: everyone", "name: pilot"),
     r"flags/good.yaml:\d+: stages\[1\].name: duplicate stage name 'pilot'"),
    ("key without key order", GOOD.replace("order: strict", "order: key"),
     r"flags/good.yaml:\d+: compare.key: is required with order: key"),
    ("empty file", "", r"flags/good.yaml:1: file is empty"),
    ("control character", GOOD.replace("owner: tests", "owner: te\x01sts"),
     r"flags/good.yaml:3: invalid YAML: unacceptable character #x0001 \(control characters "
     r"are not allowed\)$"),
    ("python tag", GOOD.replace("owner: tests", "owner: !!python/object:os.system x"),
     r"flags/good.yaml:3: owner: invalid value: could not determine a constructor for the tag "
     r"'tag:yaml.org,2002:python/object:os.system'$"),
]


@pytest.mark.parametrize(("case", "text", "pattern"), BAD, ids=[b[0] for b in BAD])
def test_bad_flag_is_one_clear_line_and_exit_2(
    case: str, text: str, pattern: str, make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_workspace({"good": text})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert re.match(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.err


def test_binary_files_are_one_clear_line(make_workspace: WorkspaceMaker,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"good": GOOD.replace("  new: |\n    SELECT 1 AS x\n",
                                                "  new: queries/bin.sql\n")},
                          {"queries/bin.sql": "SELECT 1"})
    (root / "queries" / "bin.sql").write_bytes(b"SELECT \xff\xfe 1")
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2
    assert result.err.strip() == ("flags/good.yaml:8: queries.new: queries/bin.sql is not "
                                  "UTF-8 text (byte 7)")
    (root / "flags" / "good.yaml").write_bytes(b"name: good\n\xff")
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.err.strip() == "flags/good.yaml: not UTF-8 text (byte 11)"


def test_line_number_points_at_the_key(make_workspace: WorkspaceMaker,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace("owner: tests\n", "owner: tests\nsurprise: 1\n")
    root = make_workspace({"good": text})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.err.startswith("flags/good.yaml:4: surprise: unknown key")


def test_check_reports_every_broken_flag(make_workspace: WorkspaceMaker,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({
        "good": GOOD,
        "one": flag_yaml("one", "SELECT 1", "SELECT 1").replace("kind: read", "kind: delete"),
        "two": flag_yaml("two", "SELECT 1", "SELECT 1") + "extra: 1\n",
    })
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2
    assert sorted(line.split(":")[0] for line in result.err.splitlines()) == [
        "flags/one.yaml", "flags/two.yaml"]


def test_unknown_flag_and_missing_workspace(tmp_path: Path, make_workspace: WorkspaceMaker,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"good": GOOD})
    result = run_cli(capsys, "check", "--offline", "--workspace", root, "nope")
    assert result.code == 2
    assert "unknown flag 'nope' (known: good)" in result.err
    result = run_cli(capsys, "check", "--offline", "--workspace", tmp_path / "empty")
    assert result.code == 2
    assert "not a workspace" in result.err


def test_check_with_database_prepares_both_paths(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({
        "good": flag_yaml("good", "SELECT id FROM items WHERE grp = %(grp)s",
                          "SELECT id FROM items WHERE grp = %(grp)s AND true"),
        "cols": flag_yaml("cols", "SELECT id FROM items WHERE grp = %(grp)s",
                          "SELECT id AS item_id FROM items WHERE grp = %(grp)s"),
        "typo": flag_yaml("typo", "SELECT id FROM items WHERE grp = %(grp)s",
                          "SELECT id FROM itemz WHERE grp = %(grp)s"),
        "param": flag_yaml("param", "SELECT id FROM items WHERE grp = %(grp)s",
                           "SELECT id FROM items WHERE grp = %(group)s"),
    })
    result = run_cli(capsys, "check", "--workspace", root, "--dsn", shop)
    assert result.code == 2
    err = result.err
    assert "flags/cols.yaml: queries: columns differ: legacy (id) vs new (item_id)" in err
    assert 'flags/typo.yaml: queries.new: relation "itemz" does not exist' in err
    assert "flags/param.yaml: queries.new: parameter(s) group not provided" in err
    assert "flags/good.yaml" not in err
    ok = run_cli(capsys, "check", "good", "--workspace", root, "--dsn", shop)
    assert ok.code == 0, ok.err
    assert "1 flag(s) valid, queries prepare" in ok.out


def test_init_scaffolds_a_valid_workspace(tmp_path: Path, shop: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "svc"
    result = run_cli(capsys, "init", target)
    assert result.code == 0
    assert (target / "flags" / "example.yaml").is_file()
    assert (target / "reports").is_dir()
    assert ".rollout/" in (target / ".gitignore").read_text()
    check = run_cli(capsys, "check", "--workspace", target, "--dsn", shop)
    assert check.code == 0, check.err
    again = run_cli(capsys, "init", target)
    assert again.code == 2
    assert "already exists" in again.err
