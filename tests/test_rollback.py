"""Rollback scripts: verification in a scratch copy, hazards, applying, and the target untouched."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from rollout import Workspace
from rollout.rollback.fingerprint import fingerprint
from rollout.rollback.verify import verify
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import run_cli

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, plan text);
INSERT INTO accounts SELECT n, 'a' || n || '@example.com', 'free' FROM generate_series(1, 100) n;
"""
ROLE = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rollout_reporting') THEN
    CREATE ROLE rollout_reporting;
  END IF;
END $$;
"""
MIGRATION = """-- forward change
CREATE INDEX accounts_email_idx ON accounts (email);
ALTER TABLE accounts ALTER COLUMN plan SET DEFAULT 'trial';
ALTER TABLE accounts ADD CONSTRAINT accounts_plan_check CHECK (plan <> '');
GRANT SELECT ON accounts TO rollout_reporting;
"""
GOOD = """-- undo
REVOKE SELECT ON accounts FROM rollout_reporting;
ALTER TABLE accounts DROP CONSTRAINT accounts_plan_check;
ALTER TABLE accounts ALTER COLUMN plan DROP DEFAULT;
DROP INDEX accounts_email_idx;
"""
FORGETFUL = {
    "index": (GOOD.replace("DROP INDEX accounts_email_idx;\n", ""),
              "index accounts_email_idx still exists"),
    "default": (GOOD.replace("ALTER TABLE accounts ALTER COLUMN plan DROP DEFAULT;\n", ""),
                "column accounts.plan differs"),
    "constraint": (GOOD.replace("ALTER TABLE accounts DROP CONSTRAINT accounts_plan_check;\n",
                                ""), "constraint accounts.accounts_plan_check still exists"),
    "grant": (GOOD.replace("REVOKE SELECT ON accounts FROM rollout_reporting;\n", ""),
              "grant accounts to rollout_reporting still exists"),
}
NEW = "SELECT id, email FROM accounts WHERE email = %(email)s"


@pytest.fixture
def accounts(db: str, db_admin: str) -> str:
    """The schema, owned by the test login; the role its grants name is made by the
    administrator (roles belong to the cluster, beyond a careful user's login)."""
    with psycopg.connect(db_admin, autocommit=True) as conn:
        conn.execute(ROLE.encode())
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    return db


def workspace(make_workspace: WorkspaceMaker, rollback: str, migration: str = MIGRATION
              ) -> Path:
    text = flag_yaml("acct", "SELECT id, email FROM accounts WHERE lower(email) = %(email)s",
                     NEW, rollback="rollback:\n  script: rollback/acct.sql\n"
                                   "  migration: rollback/acct.deploy.sql\n")
    root = make_workspace({"acct": text})
    (root / "rollback" / "acct.sql").write_text(rollback)
    (root / "rollback" / "acct.deploy.sql").write_text(migration)
    return root


def test_a_correct_rollback_is_verified_and_the_target_is_untouched(
    accounts: str, make_workspace: WorkspaceMaker
) -> None:
    flag = Workspace.load(workspace(make_workspace, GOOD)).flags["acct"]
    with psycopg.connect(accounts) as conn:
        before = fingerprint(conn)
        rows_before = conn.execute("SELECT count(*) FROM accounts").fetchone()
    result = verify(flag, accounts)
    assert result.verified, result.status
    assert result.migration_was_applied is False
    assert result.new_path_prepares and result.resumable
    with psycopg.connect(accounts) as conn:
        assert fingerprint(conn) == before  # nothing ran against the target
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == rows_before
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE"
                            " 'rollout_scratch_%'").fetchone() == (0,)  # cleaned up


@pytest.mark.parametrize("forgotten", sorted(FORGETFUL))
def test_verification_catches_what_a_rollback_forgets(
    accounts: str, make_workspace: WorkspaceMaker, forgotten: str
) -> None:
    script, words = FORGETFUL[forgotten]
    flag = Workspace.load(workspace(make_workspace, script)).flags["acct"]
    result = verify(flag, accounts)
    assert not result.verified
    assert any(d.startswith(words) for d in result.differences), result.differences


def test_verification_when_the_target_already_runs_the_migration(
    accounts: str, make_workspace: WorkspaceMaker
) -> None:
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute(MIGRATION.encode())
    flag = Workspace.load(workspace(make_workspace, GOOD)).flags["acct"]
    assert verify(flag, accounts).migration_was_applied is True
    assert verify(flag, accounts).verified
    broken = Workspace.load(workspace(make_workspace, FORGETFUL["index"][0])).flags["acct"]
    result = verify(broken, accounts)
    assert not result.verified


def test_lock_levels_and_hazards(accounts: str, make_workspace: WorkspaceMaker) -> None:
    migration = ("ALTER TABLE accounts ADD COLUMN score int DEFAULT 0;\n"
                 "CREATE INDEX accounts_plan_idx ON accounts (plan);\n")
    rollback = ("DROP INDEX CONCURRENTLY accounts_plan_idx;\n"
                "ALTER TABLE accounts DROP COLUMN score;\n")
    flag = Workspace.load(workspace(make_workspace, rollback, migration)).flags["acct"]
    result = verify(flag, accounts)
    assert result.verified, result.status
    by = {(h.script, h.number): h for h in result.hazards}
    assert by[("migration", 1)].strongest == ("accounts", "AccessExclusiveLock")
    assert by[("migration", 2)].strongest == ("accounts", "ShareLock")
    assert not by[("rollback", 1)].transactional
    assert "CONCURRENTLY" in (by[("rollback", 1)].why_not or "")
    assert by[("rollback", 2)].destroys == "drops a column and its data"


def test_apply_kills_the_flag_then_runs_the_script(
    accounts: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = workspace(make_workspace, GOOD)
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute(MIGRATION.encode())
    assert run_cli(capsys, "flag", "set", "acct", "--stage", "everyone", "--reason", "go",
                   "--workspace", root, "--dsn", accounts).code == 0
    r = run_cli(capsys, "rollback", "acct", "--apply", "--workspace", root, "--dsn", accounts)
    assert r.code == 2 and "pass --yes" in r.err  # no terminal to ask
    r = run_cli(capsys, "rollback", "acct", "--apply", "--yes", "--actor", "oncall",
                "--workspace", root, "--dsn", accounts)
    assert r.code == 0, r.err
    assert "applied (4 statement(s), one transaction)" in r.out
    with psycopg.connect(accounts) as conn:
        assert conn.execute("SELECT to_regclass('accounts_email_idx')").fetchone() == (None,)
        events = conn.execute("SELECT actor, action, killed, reason FROM rollout.flag_events"
                              " WHERE flag = 'acct' ORDER BY id").fetchall()
    assert [e[1] for e in events] == ["set", "kill", "rollback"]
    assert events[1][2] is True and "applied" in events[2][3]


def test_a_failing_rollback_stops_at_the_failing_statement(
    accounts: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute(MIGRATION.encode())
    bad = GOOD.replace("DROP INDEX accounts_email_idx;", "DROP INDEX no_such_idx;")
    root = workspace(make_workspace, bad)
    r = run_cli(capsys, "rollback", "acct", "--apply", "--yes", "--workspace", root,
                "--dsn", accounts)
    assert r.code == 1
    assert "failed at statement 4 (line 5): DROP INDEX no_such_idx" in r.err
    assert 'index "no_such_idx" does not exist' in r.err
    assert "nothing was applied (one transaction)" in r.err
    with psycopg.connect(accounts) as conn:  # left as the error found it: all rolled back
        assert conn.execute("SELECT has_table_privilege('rollout_reporting', 'accounts',"
                            " 'SELECT')").fetchone() == (True,)
        reason = conn.execute("SELECT reason FROM rollout.flag_events WHERE action ="
                              " 'rollback'").fetchone()
    assert reason is not None and "FAILED at statement 4" in reason[0]
    # statement by statement (a CONCURRENTLY statement): what ran before stays applied
    mixed = "REVOKE SELECT ON accounts FROM rollout_reporting;\nDROP INDEX CONCURRENTLY nope;\n"
    root = workspace(make_workspace, mixed)
    r = run_cli(capsys, "rollback", "acct", "--apply", "--yes", "--workspace", root,
                "--dsn", accounts)
    assert r.code == 1 and "1 statement(s) before it stayed applied" in r.err


def test_check_and_report_use_the_verification(
    accounts: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    stray = GOOD + "DROP INDEX some_other_idx;\n"
    root = workspace(make_workspace, stray)
    r = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert r.code == 2
    assert ("rollback.script: drops some_other_idx, which rollback/acct.deploy.sql does not "
            "create") in r.err
    root = workspace(make_workspace, FORGETFUL["index"][0])
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int, tenant text, grp int)")
    r = run_cli(capsys, "report", "acct", "--workspace", root, "--dsn", accounts)
    assert r.code == 3
    assert "accounts_email_idx still exists" in r.out
    r = run_cli(capsys, "rollback", "acct", "--verify", "--workspace", root, "--dsn", accounts)
    assert r.code == 1 and "index accounts_email_idx still exists" in r.out


def test_dry_run_exit_code_says_whether_the_rollback_is_verified(
    accounts: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run applies nothing and exits 0 only on a verified rollback; unverified is 3
    (INCONCLUSIVE: what --apply would run is not known to restore the schema)."""
    with psycopg.connect(accounts) as conn:
        before = fingerprint(conn)
    root = workspace(make_workspace, GOOD)
    r = run_cli(capsys, "rollback", "acct", "--dry-run", "--workspace", root, "--dsn", accounts)
    assert r.code == 0, r
    assert "acct: verified" in r.out
    assert "would kill acct, then run rollback/acct.sql in one transaction" in r.out
    assert "rollback #4 (line 5): DROP INDEX accounts_email_idx" in r.out
    assert "migration #" not in r.out  # only what --apply would run

    root = workspace(make_workspace, FORGETFUL["index"][0])
    r = run_cli(capsys, "rollback", "acct", "--dry-run", "--workspace", root, "--dsn", accounts)
    assert r.code == 3, r
    assert "acct: not verified" in r.out and "index accounts_email_idx still exists" in r.out
    # beside --apply too: a dry run never applies
    r = run_cli(capsys, "rollback", "acct", "--dry-run", "--apply", "--yes", "--workspace", root,
                "--dsn", accounts)
    assert r.code == 3, r
    r = run_cli(capsys, "rollback", "acct", "--verify", "--workspace", root, "--dsn", accounts)
    assert r.code == 1, r
    with psycopg.connect(accounts) as conn:
        assert fingerprint(conn) == before
