"""Rollback verification never touches the target's server: statements beyond the database,
credentials on command lines, signals and killed runs (issue 12 rows 2, 5 and 14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rollout import Workspace
from rollout.rollback import scratch
from rollout.rollback.verify import verify
from tests.conftest import REPO, WorkspaceMaker, flag_yaml
from tests.helpers import run_cli, table_checksums

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, plan text);
INSERT INTO accounts SELECT n, 'a' || n || '@example.com', 'free' FROM generate_series(1, 50) n;
"""
NEW = "SELECT id, email FROM accounts WHERE email = %(email)s"


@pytest.fixture
def accounts(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    return db


def workspace(make_workspace: WorkspaceMaker, migration: str, rollback: str) -> Path:
    text = flag_yaml("acct", "SELECT id, email FROM accounts WHERE lower(email) = %(email)s",
                     NEW, rollback="rollback:\n  script: rollback/acct.sql\n"
                                   "  migration: rollback/acct.deploy.sql\n")
    root = make_workspace({"acct": text})
    (root / "rollback" / "acct.sql").write_text(rollback)
    (root / "rollback" / "acct.deploy.sql").write_text(migration)
    return root


def cluster_of(dsn: str) -> tuple[set[str], list[tuple[str, ...]], str]:
    """The target cluster's role names, its database's settings, the database's name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        roles = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")}
        settings = [tuple(r) for r in conn.execute(
            "SELECT setrole::text, array_to_string(setconfig, ',') FROM pg_db_role_setting"
            " WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname ="
            " current_database()) ORDER BY 1")]
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return roles, settings, str(row[0])


def stored_hazards(dsn: str) -> list[dict[str, object]]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT body FROM rollout.rollback_verifications WHERE flag = 'acct'"
                           " ORDER BY created_at DESC LIMIT 1").fetchone()
    assert row is not None
    hazards: list[dict[str, object]] = row[0]["hazards"]
    return hazards


# -- row 2: statements beyond the database ------------------------------------------------------


def test_statements_beyond_the_database_never_reach_the_target(
    accounts: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
    tmp_path: Path
) -> None:
    role = f"hostile_role_{uuid.uuid4().hex[:8]}"
    roles, settings, dbname = cluster_of(accounts)
    marker = tmp_path / "INJECTED"
    migration = (f"CREATE ROLE {role};\n"
                 f"ALTER DATABASE {dbname} SET work_mem = '3MB';\n"
                 f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n")
    rollback = f"ALTER DATABASE {dbname} RESET work_mem;\nDROP ROLE {role};\n"
    root = workspace(make_workspace, migration, rollback)
    before = table_checksums(accounts)
    r = run_cli(capsys, "rollback", "acct", "--verify", "--workspace", root, "--dsn", accounts)
    assert r.code == 1, r.err
    assert "not run, even on a scratch server" in r.out
    assert "COPY ... PROGRAM" in r.out
    assert not marker.exists()
    assert cluster_of(accounts) == (roles, settings, dbname)
    assert role not in cluster_of(accounts)[0]
    assert table_checksums(accounts) == before
    beyond = {(h["script"], h["statement_number"]): h["beyond_database"]
              for h in stored_hazards(accounts)}
    assert set(beyond) == {("migration", 1), ("migration", 2), ("migration", 3),
                           ("rollback", 1), ("rollback", 2)}
    assert all(beyond.values()), beyond  # each statement is named as a hazard
    assert "program" in str(beyond[("migration", 3)]).lower()


def test_cluster_statements_run_only_on_the_scratch_server(
    accounts: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    role = f"hostile_role_{uuid.uuid4().hex[:8]}"
    roles, settings, dbname = cluster_of(accounts)
    migration = (f"CREATE ROLE {role};\nALTER DATABASE {dbname} SET work_mem = '3MB';\n"
                 f"GRANT SELECT ON accounts TO {role};\n")
    rollback = (f"REVOKE SELECT ON accounts FROM {role};\n"
                f"ALTER DATABASE {dbname} RESET work_mem;\nDROP ROLE {role};\n")
    before = table_checksums(accounts)
    root = workspace(make_workspace, migration, rollback)
    r = run_cli(capsys, "rollback", "acct", "--verify", "--workspace", root, "--dsn", accounts)
    assert r.code == 0, r.out + r.err
    assert "verified: the rollback restores the schema exactly" in r.out
    assert cluster_of(accounts) == (roles, settings, dbname)
    # a rollback that forgets the role or the setting is caught, on the scratch server only
    root = workspace(make_workspace, migration, f"REVOKE SELECT ON accounts FROM {role};\n")
    r = run_cli(capsys, "rollback", "acct", "--verify", "--workspace", root, "--dsn", accounts)
    assert r.code == 1
    assert f"role {role} still exists" in r.out
    assert "setting work_mem (this database) still exists" in r.out
    assert cluster_of(accounts) == (roles, settings, dbname)
    assert table_checksums(accounts) == before


def test_a_program_hidden_in_a_do_block_cannot_run_even_on_the_scratch_server(
    accounts: str, make_workspace: WorkspaceMaker, tmp_path: Path
) -> None:
    marker = tmp_path / "INJECTED"
    migration = textwrap.dedent(f"""\
        DO $$ BEGIN
          EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker}''';
        END $$;
        CREATE INDEX accounts_plan_idx ON accounts (plan);
        """)
    root = workspace(make_workspace, migration, "DROP INDEX accounts_plan_idx;\n")
    before = table_checksums(accounts)
    result = verify(Workspace.load(root).flags["acct"], accounts)
    assert not result.verified
    assert "permission denied" in (result.error or ""), result.status
    assert not marker.exists()  # the scripts run as a role that is no superuser
    assert result.hazards[0].beyond_database  # the DO block is named
    assert table_checksums(accounts) == before


# -- row 5: credentials never on a command line -------------------------------------------------


class ProcessWatch:
    """Every process's command lines (and, for client tools, environment) seen while it runs.

    A pid is read again until it shows a client tool: a child seen between fork and exec still
    has its parent's command line, and keeping that first sight would miss the tool itself."""

    def __init__(self) -> None:
        self.cmdlines: dict[int, bytes] = {}
        self.environs: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in self.environs:
                    continue
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    if b"pg_dump" in cmdline or b"psql" in cmdline:
                        self.environs[int(entry)] = Path(f"/proc/{entry}/environ").read_bytes()
                except OSError:
                    continue
                if cmdline:
                    self.cmdlines[int(entry)] = cmdline

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def password_dsn(accounts: str, server_dsn: str) -> Iterator[tuple[str, str]]:
    role = f"rb_secret_{uuid.uuid4().hex[:8]}"
    password = f"Pw-{uuid.uuid4().hex}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
    params = {k: str(v) for k, v in conninfo_to_dict(accounts).items() if v is not None}
    yield make_conninfo(**{**params, "user": role, "password": password}), password
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_password_never_appears_on_a_command_line(
    password_dsn: tuple[str, str], make_workspace: WorkspaceMaker
) -> None:
    dsn, password = password_dsn
    root = workspace(make_workspace, "CREATE INDEX accounts_plan_idx ON accounts (plan);\n",
                     "DROP INDEX accounts_plan_idx;\n")
    with ProcessWatch() as watch:
        result = verify(Workspace.load(root).flags["acct"], dsn)
    assert result.verified, result.status
    dumps = [c for c in watch.cmdlines.values() if b"pg_dump\0" in c or c.endswith(b"pg_dump")
             or b"/pg_dump" in c]
    assert dumps, "pg_dump was never seen running: the watch proves nothing"
    secret = password.encode()
    assert not [c for c in watch.cmdlines.values() if secret in c]
    assert not [e for e in watch.environs.values() if secret in e]  # a 0600 passfile instead


def test_client_environment_carries_every_parameter_off_the_command_line() -> None:
    dsn = ("host=db.example port=6543 dbname=app user=u password='a:b\\\\c' sslmode=require "
           "keepalives_idle=30 application_name=x")
    with scratch.client_environment(dsn, base={"PGPASSWORD": "inherited"}) as env:
        assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"], env["PGUSER"]) == (
            "db.example", "6543", "app", "u")
        assert env["PGSSLMODE"] == "require" and "PGPASSWORD" not in env
        passfile = Path(env["PGPASSFILE"])
        assert passfile.read_text() == "*:*:*:*:a\\:b\\\\c\n"
        assert passfile.stat().st_mode & 0o777 == 0o600
        service = Path(env["PGSERVICEFILE"])
        assert "keepalives_idle=30" in service.read_text() and env["PGSERVICE"] == "rollout"
        assert "a:b" not in "".join(env.values())
    assert not passfile.exists() and not service.exists()


# -- row 14: signals and killed runs --------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _owned_by(pid: int) -> Path | None:
    for folder in scratch.default_root().glob("s-*"):
        try:
            if (folder / "owner").read_text().split()[0] == str(pid):
                return folder
        except (OSError, IndexError):
            continue
    return None


def _wait(what: str, check: object, proc: subprocess.Popen[bytes]) -> object:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        value = check() if callable(check) else None
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {what}: {out!r} {err!r}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_verify_leaves_no_scratch_server(
    accounts: str, make_workspace: WorkspaceMaker, signum: int
) -> None:
    root = workspace(make_workspace, "SELECT pg_sleep(60);\n"
                     "CREATE INDEX accounts_plan_idx ON accounts (plan);\n",
                     "DROP INDEX accounts_plan_idx;\n")
    proc = subprocess.Popen([sys.executable, "-m", "rollout.cli", "rollback", "acct", "--verify",
                             "--workspace", str(root), "--dsn", accounts],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        found = _wait("a scratch server", lambda: _owned_by(proc.pid), proc)
        assert isinstance(found, Path)
        folder = found

        def sleeping_on_scratch() -> bool:
            try:
                with psycopg.connect(host=str(folder / "data"), user="postgres",
                                     dbname="template1", autocommit=True) as conn:
                    row = conn.execute("SELECT count(*) FROM pg_stat_activity"
                                       " WHERE query LIKE '%pg_sleep(60)%'"
                                       " AND pid <> pg_backend_pid()").fetchone()
                return bool(row and row[0])
            except psycopg.Error:
                return False

        _wait("the migration running on the scratch server", sleeping_on_scratch, proc)
        postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), err
    assert not folder.exists()
    assert not _alive(postmaster)
    with psycopg.connect(accounts) as conn:  # and nothing was ever made on the target
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE"
                            " 'rollout_scratch%'").fetchone() == (0,)


def test_a_killed_runs_scratch_server_is_removed_by_the_next_verification(
    accounts: str, make_workspace: WorkspaceMaker
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom rollout.rollback import scratch\n"
         "print(scratch.server().folder, flush=True)\ntime.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        folder = Path(proc.stdout.readline().decode().strip())
        assert folder.name, proc.stderr.read() if proc.stderr else ""
        postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        proc.send_signal(signal.SIGKILL)  # no atexit, no finally: a stale server
        proc.wait()
    assert folder.exists() and _alive(postmaster)
    root = workspace(make_workspace, "CREATE INDEX accounts_plan_idx ON accounts (plan);\n",
                     "DROP INDEX accounts_plan_idx;\n")
    result = verify(Workspace.load(root).flags["acct"], accounts)
    assert result.verified, result.status
    assert not folder.exists()
    assert not _alive(postmaster)


def test_hazards_carry_beyond_database_in_their_json(
    accounts: str, make_workspace: WorkspaceMaker
) -> None:
    root = workspace(make_workspace, "CREATE INDEX accounts_plan_idx ON accounts (plan);\n",
                     "DROP INDEX accounts_plan_idx;\n")
    body = verify(Workspace.load(root).flags["acct"], accounts).as_dict()
    assert [h["beyond_database"] for h in body["hazards"]] == [None, None]
    json.dumps(body)


def test_a_scratch_folder_planted_by_someone_else_is_neither_used_nor_emptied(
    accounts: str, make_workspace: WorkspaceMaker, tmp_path: Path
) -> None:
    """In a shared temp dir another user may create the scratch folder's name first, e.g. as
    a symlink to a folder of theirs: verification must go on elsewhere, and the stale-server
    cleanup must not follow the link and delete what it finds there."""
    import os
    import shutil
    import tempfile

    tmpdir = Path(tempfile.mkdtemp(prefix="rt-"))  # short: the server's socket lives below
    tmpdir.chmod(0o1777)  # shared, like /tmp
    victim = tmp_path / "victim"
    (victim / "old-project").mkdir(parents=True)
    (victim / "old-project" / "keep.txt").write_text("precious")
    os.utime(victim / "old-project", (0, 0))  # looks abandoned
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    (tmpdir / f"pg-rollout-scratch-{uid}").symlink_to(victim)
    root = workspace(make_workspace, "CREATE INDEX accounts_plan_idx ON accounts (plan);\n",
                     "DROP INDEX accounts_plan_idx;\n")
    done = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "rollback", "acct", "--verify", "--workspace",
         str(root), "--dsn", accounts], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "acct: verified" in done.stdout
    assert (victim / "old-project" / "keep.txt").read_text() == "precious"
    assert (tmpdir / f"pg-rollout-scratch-{uid}").is_symlink()
    # the private folder it used instead is gone with its server
    leftovers = [p for p in tmpdir.iterdir() if p.name != f"pg-rollout-scratch-{uid}"]
    assert all(not any(p.iterdir()) for p in leftovers), leftovers
    shutil.rmtree(tmpdir)
