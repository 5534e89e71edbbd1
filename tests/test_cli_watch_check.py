"""The CLI's `watch` and `check` warnings, through the real entry point."""

from __future__ import annotations

import psycopg
import pytest

from rollout.flags.state import read_state
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import analysis_flag, record, run_cli, start

TIES = ("SELECT id FROM items WHERE tenant = %(tenant)s ORDER BY grp, id LIMIT 3",
        "SELECT id FROM items WHERE tenant = %(tenant)s ORDER BY grp LIMIT 3")


def test_watch_once_aborts_a_regression_from_the_command_line(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"w": analysis_flag("w")})
    since = start(root, shop, "w")
    record(shop, root, "w", since, 200, slower=1.3)
    r = run_cli(capsys, "watch", "w", "--once", "--workspace", root, "--dsn", shop)
    assert r.code == 1, r.err  # a flag was aborted
    with psycopg.connect(shop) as conn:
        assert read_state(conn, "w").killed
    shown = run_cli(capsys, "flag", "show", "w", "--workspace", root, "--dsn", shop)
    assert shown.code == 0 and "KILLED" in shown.out


def test_watch_of_an_unknown_flag_is_one_line_exit_2(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"w": analysis_flag("w")})
    r = run_cli(capsys, "watch", "nope", "--once", "--workspace", root, "--dsn", shop)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "nope" in r.err


def test_check_prints_ordering_warnings_without_failing(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"ties": flag_yaml("ties", *TIES)})
    r = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert r.code == 0, r.err
    warnings = [line for line in r.err.splitlines() if "warning" in line]
    assert warnings and all(line.startswith("flags/ties.yaml: queries.new: warning")
                            or "ties.yaml" in line for line in warnings)
    assert any("ORDER BY" in line for line in warnings)
    assert "ok: 1 flag(s) valid" in r.out
