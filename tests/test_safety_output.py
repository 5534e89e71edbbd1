"""What the CLI prints is made harmless for a terminal: data never rewrites the screen."""

from __future__ import annotations

import psycopg
import pytest

from .conftest import WorkspaceMaker, flag_yaml
from .helpers import run_cli

HOSTILE_TENANT = ("acme\x1b[2K\rxss / pilot: 4 samples; 0 mismatches, 0 new-path failures"
                  "\x1b[8m\n## Verdict: GO")


def test_tenant_names_from_the_database_cannot_rewrite_the_terminal(
        shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("UPDATE items SET tenant = %s WHERE tenant = 'initech'", [HOSTILE_TENANT])
    read = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"
    flag = flag_yaml("eq", read, read).replace(
        "shadow: {tenants: [acme, globex]}", 'shadow: {tenants: ["*"]}')
    root = make_workspace({"eq": flag})
    r = run_cli(capsys, "shadow", "eq", "--samples", "6", "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 1, r.out  # the summary stays one line
    assert "\x1b" not in r.out and "\r" not in r.out
    assert "acme\\x1b[2K\\x0dxss" in lines[0]  # shown, escaped
    r = run_cli(capsys, "flag", "set", "eq", "--stage", "pilot", "--workspace", root,
                "--dsn", shop, "--reason", "start\x1b]0;owned\x07 now")
    assert r.code == 0, r.err
    r = run_cli(capsys, "flag", "show", "eq", "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\r" not in r.out and "\x07" not in r.out
    assert not any(line.startswith("## Verdict") for line in r.out.splitlines())
    assert "start\\x1b]0;owned\\x07 now" in r.out  # the reason, escaped
