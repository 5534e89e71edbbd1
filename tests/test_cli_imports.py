"""The incident commands start at once: `rollout flag kill` and friends never import the
statistics, the reports or the runners (the kill used to wait ~2 s for scipy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .conftest import REPO, WorkspaceMaker, flag_yaml
from .helpers import table_checksums

HEAVY_PACKAGES = ("scipy", "numpy", "jinja2", "rich", "psycopg_pool")
HEAVY_MODULES = ("report", "judge.verdict", "judge.summaries", "judge.stats", "run.shadow",
                 "rollback.verify", "rollback.scratch", "online.runner", "online.aio",
                 "online.core", "online.recorder", "demo", "demo_data")
"""Modules of ours (and every module under them) the incident commands never import."""

# The real entry point in a fresh interpreter; what it imported is written to a file, apart
# from the command's own output.
PROBE = """\
import json, sys
from rollout.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

QUERY = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY_PACKAGES
            or any(m == f"rollout.{h}" or m.startswith(f"rollout.{h}.") for h in HEAVY_MODULES)]


def run_probe(tmp_path: Path, dsn: str, *args: str | Path) -> tuple[int, list[str], str, str]:
    out = tmp_path / "probe.json"
    out.unlink(missing_ok=True)
    # The DSN holds the test login's password: the environment, never argv.
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": dsn, "ROLLOUT_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and out.is_file(), proc
    probe = json.loads(out.read_text())
    return probe["code"], probe["modules"], proc.stdout, proc.stderr


def killed(dsn: str, flag: str) -> bool | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT killed FROM rollout.flag_state WHERE flag = %s",
                           [flag]).fetchone()
    return None if row is None else bool(row[0])


@pytest.mark.parametrize("command", [
    ("flag", "kill", "eq", "--reason", "pager", "--actor", "oncall"),
    ("flag", "show", "eq"),
    ("flag", "list"),
    ("flag", "resume", "eq", "--reason", "fixed", "--actor", "oncall"),
    ("flag", "set", "eq", "--stage", "pilot", "--reason", "back", "--actor", "oncall"),
    ("server", "status"),
], ids=lambda c: " ".join(c[:2]))
def test_incident_commands_import_nothing_heavy(
        command: tuple[str, ...], shop: str, make_workspace: WorkspaceMaker,
        tmp_path: Path) -> None:
    root = make_workspace({"eq": flag_yaml("eq", QUERY, QUERY)})
    before = table_checksums(shop)
    # a live flag first (a fresh interpreter too, so nothing here is cached for the probe)
    code, _, _, err = run_probe(tmp_path, shop, "flag", "set", "eq", "--stage", "everyone",
                                "--reason", "go", "--workspace", root)
    assert code == 0, err
    if command[1] in ("resume", "show"):
        assert run_probe(tmp_path, shop, "flag", "kill", "eq", "--reason", "x",
                         "--workspace", root)[0] == 0
    code, modules, out, err = run_probe(tmp_path, shop, *command, "--workspace", root)
    assert code == 0, err
    assert heavy(modules) == []
    # the command did its work
    if command[1] == "kill":
        assert killed(shop, "eq") is True
        assert out.strip() == "eq: stage everyone, KILLED (serving legacy), version 2"
    elif command[1] == "resume":
        assert killed(shop, "eq") is False and "live, version 3" in out
    elif command[1] == "set":
        assert "eq: stage pilot, live, version 2" in out
    elif command[1] == "show":
        assert "KILLED (serving legacy)" in out and "kill — x" in out
    elif command[1] == "list":
        assert out.splitlines()[1].split()[:3] == ["eq", "everyone", "live"]
    else:
        assert "no embedded PostgreSQL" in out
    assert table_checksums(shop) == before


def test_show_of_a_live_flag_runs_its_tenants_query_without_the_statistics(
        shop: str, make_workspace: WorkspaceMaker, tmp_path: Path) -> None:
    """`flag show` resolving who is targeted runs ``params.tenants`` as every execution runs
    (``rollout.run.shadow``, no statistics): still none of scipy, numpy, jinja2, the reports."""
    root = make_workspace({"eq": flag_yaml("eq", QUERY, QUERY)})
    assert run_probe(tmp_path, shop, "flag", "set", "eq", "--stage", "everyone",
                     "--reason", "go", "--workspace", root)[0] == 0
    code, modules, out, err = run_probe(tmp_path, shop, "flag", "show", "eq",
                                        "--workspace", root)
    assert code == 0, err
    assert "targeted now (new): acme, globex, initech" in out
    assert [m for m in heavy(modules) if m != "rollout.run.shadow"] == []


def test_the_library_names_still_import(tmp_path: Path) -> None:
    """The runners load on first use of their names, and ``from rollout import ...`` of every
    public name (and of a submodule) still works."""
    code = ("import sys, rollout\n"
            "assert 'rollout.online.runner' not in sys.modules\n"
            "assert 'rollout.online.aio' not in sys.modules\n"
            "from rollout import (AsyncRollout, ConnectionFailed, Context, Decision, Flag,\n"
            "    FlagFileError, InputError, Rollout, RolloutError, StoreError, Workspace,\n"
            "    __version__)\n"
            "from rollout.rollback import scratch\n"
            "from rollout.online.aio import AsyncRollout as A\n"
            "from rollout.online.runner import Rollout as R\n"
            "assert (A, R) == (AsyncRollout, Rollout) and rollout.Rollout is R\n"
            "assert sorted(rollout.__all__) == sorted(n for n in rollout.__all__\n"
            "                                        if hasattr(rollout, n))\n"
            "try:\n    rollout.nothing\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
