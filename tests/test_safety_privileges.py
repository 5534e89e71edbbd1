"""Least privilege: flag SQL never runs as a login that reaches past the database."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from rollout.run.privileges import inspect, setup_sql
from rollout.store.connection import SHADOW_LOGIN, stop_embedded

from .conftest import WorkspaceMaker, flag_yaml
from .helpers import run_cli, table_checksums

READ = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"


def test_a_superuser_login_is_refused_in_one_line_with_the_fix(
        shop: str, db_admin: str, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"eq": flag_yaml("eq", READ, READ)})
    before = table_checksums(db_admin)
    r = run_cli(capsys, "shadow", "eq", "--samples", "5", "--workspace", root,
                "--dsn", db_admin)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "is a superuser" in lines[0] and "--allow-superuser" in lines[0]
    assert "docs/safety.md" in lines[0]
    assert table_checksums(db_admin) == before
    with psycopg.connect(db_admin) as conn:  # nothing ran: not even a run row
        runs = conn.execute("SELECT to_regclass('rollout.runs')").fetchone()
        assert runs == (None,) or conn.execute(
            "SELECT count(*) FROM rollout.runs").fetchone() == (0,)
    # the user accepts the risk explicitly
    r = run_cli(capsys, "shadow", "eq", "--samples", "5", "--workspace", root,
                "--dsn", db_admin, "--allow-superuser")
    assert r.code == 0, r.err


@pytest.mark.parametrize("power", ["CREATEROLE", "pg_execute_server_program",
                                   "pg_write_server_files", "pg_read_server_files"])
def test_logins_with_cluster_powers_are_refused(
        shop: str, server_dsn: str, db_admin: str, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str], power: str) -> None:
    login = f"rollout_powerful_{power.lower()}"[:60]
    ident = sql.Identifier(login)
    with psycopg.connect(db_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(ident))
        if power == "CREATEROLE":
            conn.execute(sql.SQL("ALTER ROLE {} CREATEROLE").format(ident))
        else:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(power), ident))
    dsn = psycopg.conninfo.make_conninfo(db_admin, user=login, password="")
    root = make_workspace({"eq": flag_yaml("eq", READ, READ)})
    try:
        r = run_cli(capsys, "shadow", "eq", "--samples", "5", "--workspace", root,
                    "--dsn", dsn, "--store-dsn", db_admin)
        assert r.code == 2
        assert power in r.err and len(r.err.strip().splitlines()) == 1
    finally:
        with psycopg.connect(db_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.mark.parametrize("grant", ["", " WITH INHERIT FALSE", " WITH INHERIT FALSE, SET FALSE"])
def test_membership_in_a_powerful_role_is_refused_like_the_power_itself(
        shop: str, db_admin: str, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str], grant: str) -> None:
    """A login that can become a superuser (``set_config('role', ...)`` inside its SQL) is as
    dangerous as one: found through memberships, whatever the grant's options."""
    with psycopg.connect(db_admin, autocommit=True) as conn:
        for role in ("rollout_hidden_admin", "rollout_middle", "rollout_sneaky"):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute("CREATE ROLE rollout_hidden_admin SUPERUSER NOLOGIN")
        conn.execute("CREATE ROLE rollout_middle NOLOGIN")
        conn.execute(f"GRANT rollout_hidden_admin TO rollout_middle{grant}".encode())
        conn.execute("CREATE ROLE rollout_sneaky LOGIN")
        conn.execute("GRANT rollout_middle TO rollout_sneaky")
        conn.execute("GRANT pg_read_all_data, pg_write_all_data TO rollout_sneaky")
    escape = ("SELECT id, val FROM items, (SELECT set_config('role', 'rollout_hidden_admin', true)"
              " AS r) s WHERE tenant = %(tenant)s AND grp = %(grp)s AND s.r IS NOT NULL"
              " ORDER BY id")
    root = make_workspace({"eq": flag_yaml("eq", READ, escape)})
    dsn = psycopg.conninfo.make_conninfo(db_admin, user="rollout_sneaky")
    try:
        r = run_cli(capsys, "shadow", "eq", "--samples", "4", "--workspace", root,
                    "--dsn", dsn, "--store-dsn", db_admin)
        assert r.code == 2, r.out + r.err
        assert "member of the superuser role 'rollout_hidden_admin'" in r.err
        assert len(r.err.strip().splitlines()) == 1
    finally:
        with psycopg.connect(db_admin, autocommit=True) as conn:
            for role in ("rollout_sneaky", "rollout_middle", "rollout_hidden_admin"):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_workspace_may_accept_the_risk(
        shop: str, db_admin: str, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"eq": flag_yaml("eq", READ, READ)})
    (root / "rollout.yaml").write_text("allow_superuser: true\n")
    r = run_cli(capsys, "shadow", "eq", "--samples", "5", "--workspace", root,
                "--dsn", db_admin)
    assert r.code == 0, r.err


def test_the_shadow_role_narrows_what_flag_sql_reads(
        shop: str, db_admin: str, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``shadow_role`` in rollout.yaml: flag SQL runs under SET ROLE, with its privileges."""
    with psycopg.connect(db_admin, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS rollout_narrow")
        conn.execute("CREATE ROLE rollout_narrow NOLOGIN")
        conn.execute("GRANT rollout_narrow TO rollout_tester")
        conn.execute("GRANT SELECT (id, tenant, grp) ON items TO rollout_narrow")
    root = make_workspace({"eq": flag_yaml("eq", READ, READ)})
    (root / "rollout.yaml").write_text("shadow_role: rollout_narrow\n")
    try:
        r = run_cli(capsys, "shadow", "eq", "--samples", "5", "--workspace", root,
                    "--dsn", shop)
        # val is not granted to the shadow role: the very first execution says so
        assert r.code == 2 and "permission denied for table items" in r.err, r.err
    finally:
        with psycopg.connect(db_admin, autocommit=True) as conn:
            conn.execute("DROP OWNED BY rollout_narrow")
            conn.execute("DROP ROLE rollout_narrow")


def test_the_least_privilege_login_cannot_reach_the_host(shop: str, db_admin: str,
                                                          tmp_path: Path) -> None:
    """What docs/safety.md tells users to create: no programs, no files, no roles."""
    with psycopg.connect(db_admin, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS rollout_docs_login")
        conn.execute(setup_sql("rollout_docs_login").encode())
    dsn = psycopg.conninfo.make_conninfo(db_admin, user="rollout_docs_login")
    marker = tmp_path / "INJECTED"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            role = inspect(conn)
            assert role.dangers == [] and role.login == "rollout_docs_login"
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (3000,)
            for hostile in (f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
                            f"COPY (SELECT 1) TO '{marker}'", "CREATE ROLE sneaky",
                            "SELECT pg_read_file('postgresql.conf')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(hostile.encode())
        assert not marker.exists()
    finally:
        with psycopg.connect(db_admin, autocommit=True) as conn:
            conn.execute("DROP OWNED BY rollout_docs_login")
            conn.execute("DROP ROLE rollout_docs_login")


def test_the_embedded_server_runs_flag_sql_as_its_least_privilege_login(
        tmp_path: Path, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No --dsn: the CLI's own server, flag SQL as ``rollout_shadow`` (a division by zero
    unless the session user is that login), no --allow-superuser needed."""
    probe = ("SELECT 1 / (session_user = 'rollout_shadow' AND NOT"
             " (SELECT rolsuper FROM pg_roles WHERE rolname = session_user))::int AS x")
    root = make_workspace({"who": flag_yaml("who", probe, probe)})
    (root / "flags" / "who.yaml").write_text(
        (root / "flags" / "who.yaml").read_text().replace(
            "  sample: SELECT DISTINCT grp FROM items WHERE tenant = %(tenant)s LIMIT %(limit)s\n"
            "  tenants: SELECT DISTINCT tenant FROM items ORDER BY 1\n", "  {}\n"
        ).replace("params:\n  {}\n", ""))
    try:
        r = run_cli(capsys, "shadow", "who", "--samples", "4", "--tenant", "acme",
                    "--workspace", root)
        assert r.code == 0, r.err
        assert f"flag SQL runs as {SHADOW_LOGIN}" in r.err
        assert "0 new-path failures, 0 legacy failures" in r.out
    finally:
        stop_embedded(root / ".rollout" / "pgdata")


def test_the_online_runners_refuse_a_superuser_login(
        shop: str, db_admin: str, make_workspace: WorkspaceMaker) -> None:
    import asyncio

    from rollout import AsyncRollout, Rollout
    from rollout.errors import UnsafeRole

    root = make_workspace({"eq": flag_yaml("eq", READ, READ)})
    threads = {t.name for t in threading.enumerate()}
    with pytest.raises(UnsafeRole, match="is a superuser"):
        Rollout.connect(db_admin, workspace=root, pool_stats_interval=None)
    with pytest.raises(UnsafeRole, match="is a superuser"):
        asyncio.run(AsyncRollout.connect(db_admin, workspace=root, pool_stats_interval=None))
    # refused before anything started: no pool, listener or recorder thread left behind
    assert {t.name for t in threading.enumerate()} - threads == set()
    ro = Rollout.connect(db_admin, workspace=root, pool_stats_interval=None,
                         allow_superuser=True)
    ro.close()


def test_the_online_shadow_pool_runs_as_the_shadow_role(
        shop: str, db_admin: str, make_workspace: WorkspaceMaker) -> None:
    from rollout import Rollout

    with psycopg.connect(db_admin, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS rollout_online_narrow")
        conn.execute("CREATE ROLE rollout_online_narrow NOLOGIN")
        conn.execute("GRANT rollout_online_narrow TO rollout_tester")
    root = make_workspace({"eq": flag_yaml("eq", READ, READ)})
    (root / "rollout.yaml").write_text("shadow_role: rollout_online_narrow\n")
    try:
        with Rollout.connect(shop, workspace=root, pool_stats_interval=None) as ro:
            for _ in range(3):  # and it survives the pool's reset of returned connections
                with ro.shadow_pool.connection() as conn:
                    assert conn.execute("SELECT current_user").fetchone() == (
                        "rollout_online_narrow",)
            with ro.pool.connection() as conn:  # the served path is the application's login
                assert conn.execute("SELECT current_user").fetchone() == ("rollout_tester",)
    finally:
        with psycopg.connect(db_admin, autocommit=True) as conn:
            conn.execute("DROP ROLE rollout_online_narrow")
