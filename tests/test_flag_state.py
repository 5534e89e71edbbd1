"""Runtime flag state: audited changes, guarded advance, concurrency, LISTEN/NOTIFY runners."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from rollout import Context, Workspace
from rollout.flags.runtime import FlagStates
from tests.conftest import WorkspaceMaker
from tests.helpers import DIFFERENT, EQUIVALENT, Result, run_cli, wait_for


def events(dsn: str, flag: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('rollout.flag_events')").fetchone() == (None,):
            return []
        return conn.execute(
            "SELECT actor, action, from_stage, to_stage, killed, reason, forced, version,"
            " report_id IS NOT NULL FROM rollout.flag_events WHERE flag = %s ORDER BY id",
            [flag]).fetchall()


@pytest.fixture
def cli(shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
        ) -> Callable[..., Result]:
    root = make_workspace({"eq": EQUIVALENT, "diff": DIFFERENT})

    def run(*args: str) -> Result:
        return run_cli(capsys, *args, "--workspace", root, "--dsn", shop)

    run.root = root  # type: ignore[attr-defined]
    return run


def test_set_kill_resume_are_audited(cli: Callable[..., Result], shop: str) -> None:
    r = cli("flag", "set", "eq", "--stage", "everyone", "--reason", "try it", "--actor", "ann")
    assert r.code == 0 and "stage everyone, live, version 1" in r.out
    assert cli("flag", "kill", "eq", "--reason", "pager", "--actor", "bob").code == 0
    r = cli("flag", "resume", "eq", "--reason", "fixed", "--actor", "cid")
    assert r.code == 0 and "live, version 3" in r.out
    assert events(shop, "eq") == [
        ("ann", "set", None, "everyone", False, "try it", False, 1, False),
        ("bob", "kill", "everyone", "everyone", True, "pager", False, 2, False),
        ("cid", "resume", "everyone", "everyone", False, "fixed", False, 3, False),
    ]
    show = cli("flag", "show", "eq")
    assert "▶ everyone: serve all tenants" in show.out
    assert "targeted now (new): acme, globex, initech" in show.out
    assert "cid resume — fixed" in show.out
    listing = cli("flag", "list")
    assert [ln.split()[:4] for ln in listing.out.splitlines()[1:]] == [
        ["diff", "-", "not", "started"], ["eq", "everyone", "live", "3"]]


BAD = [
    (("flag", "set", "eq", "--stage", "nope", "--reason", "x"), "has no stage 'nope'"),
    (("flag", "set", "zzz", "--stage", "pilot", "--reason", "x"), "unknown flag 'zzz'"),
    (("flag", "set", "eq", "--stage", "pilot"), "a reason is required"),
    (("flag", "set", "eq", "--stage", "pilot", "--reason", "  "), "a reason is required"),
    (("flag", "resume", "eq", "--reason", "x"), "is not killed; nothing to resume"),
    (("advance", "eq", "--force"), "--force needs --reason"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_writes_nothing(cli: Callable[..., Result], shop: str,
                                  args: tuple[str, ...], message: str) -> None:
    r = cli(*args)
    assert r.code == 2, r.err
    assert message in r.err and len(r.err.strip().splitlines()) == 1
    assert events(shop, "eq") == []


def test_advance_past_last_stage_is_refused(cli: Callable[..., Result], shop: str) -> None:
    assert cli("flag", "set", "eq", "--stage", "everyone", "--reason", "x").code == 0
    r = cli("advance", "eq", "--force", "--reason", "y")
    assert r.code == 2 and "already at its last stage 'everyone'" in r.err
    assert len(events(shop, "eq")) == 1


def test_advance_needs_a_fresh_go_report(cli: Callable[..., Result], shop: str) -> None:
    r = cli("advance", "eq")  # not started: starts at the first stage
    assert r.code == 0 and "stage pilot" in r.out
    r = cli("advance", "eq")
    assert r.code == 1 and "no report for stage 'pilot' yet" in r.err
    assert cli("shadow", "eq", "--samples", "60").code == 0  # current stage: pilot
    assert cli("report", "eq").code == 0
    r = cli("advance", "eq", "--actor", "rm")
    assert r.code == 0, r.err
    assert "stage everyone" in r.out
    last = events(shop, "eq")[-1]
    assert last[:4] == ("rm", "advance", "pilot", "everyone") and last[8] is True
    assert last[6] is False  # not forced


def test_advance_refuses_stale_or_failing_evidence(cli: Callable[..., Result], shop: str
                                                   ) -> None:
    root: Path = cli.root  # type: ignore[attr-defined]
    assert cli("flag", "set", "diff", "--stage", "pilot", "--reason", "go").code == 0
    assert cli("shadow", "diff", "--samples", "60").code == 0
    assert cli("report", "diff").code == 1
    r = cli("advance", "diff")
    assert r.code == 1 and "is NO-GO" in r.err
    # A GO report, then the stage is re-set: the report now predates the change.
    assert cli("flag", "set", "eq", "--stage", "pilot", "--reason", "go").code == 0
    assert cli("shadow", "eq", "--samples", "60").code == 0
    assert cli("report", "eq").code == 0
    assert cli("flag", "set", "eq", "--stage", "pilot", "--reason", "again").code == 0
    r = cli("advance", "eq")
    assert r.code == 1 and "predates the flag's last change" in r.err
    assert cli("report", "eq").code == 0
    # The SQL changes on disk: the GO report no longer describes it.
    flag_file = root / "flags" / "eq.yaml"
    flag_file.write_text(flag_file.read_text().replace("ORDER BY i.id", "ORDER BY 1"))
    r = cli("advance", "eq")
    assert r.code == 1 and "SQL changed after the latest report" in r.err
    r = cli("advance", "eq", "--force", "--reason", "hotfix approved by CAB")
    assert r.code == 0 and "forced" in r.out
    last = events(shop, "eq")[-1]
    assert last[1:4] == ("advance", "pilot", "everyone") and last[5:7] == (
        "hotfix approved by CAB", True)


def test_two_operators_advancing_at_once_cannot_skip_a_stage(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    three = EQUIVALENT.replace(
        '  - name: everyone\n', '  - name: middle\n    serve: {tenants: [acme]}\n'
        '  - name: everyone\n')
    root = make_workspace({"eq": three})
    from rollout.commands import Session, advance, flag_set

    session = Session(root, dsn=shop)
    flag_set(session, "eq", "pilot", actor="t", reason="start")
    results: list[object] = []

    def operator(name: str) -> None:
        try:
            results.append(advance(Session(root, dsn=shop), "eq", actor=name, force=True,
                                   reason=f"{name} says go"))
        except Exception as exc:  # collected: exactly one must lose
            results.append(exc)

    with psycopg.connect(shop, autocommit=True) as blocker:
        # Hold the flag's change lock so both operators read version 1 and then queue.
        blocker.execute("SELECT pg_advisory_lock(hashtext('rollout.flag_state'), hashtext('eq'))")
        threads = [threading.Thread(target=operator, args=(n,)) for n in ("ann", "bob")]
        for t in threads:
            t.start()
        assert wait_for(lambda: blocker.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND wait_event = 'advisory' AND datname = current_database()").fetchone() == (2,),
            timeout=20), "both operators should queue on the flag's change lock"
        blocker.execute("SELECT pg_advisory_unlock(hashtext('rollout.flag_state'),"
                        " hashtext('eq'))")
        for t in threads:
            t.join()
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and "changed meanwhile" in str(errors[0])
    with psycopg.connect(shop) as conn:
        assert conn.execute("SELECT stage, version FROM rollout.flag_state").fetchone() == (
            "middle", 2)
    assert [e[1:4] for e in events(shop, "eq")] == [
        ("set", None, "pilot"), ("advance", "pilot", "middle")]


def test_runner_follows_changes_and_survives_store_outage(
    cli: Callable[..., Result], shop: str, server_dsn: str
) -> None:
    flag = Workspace.load(cli.root).flags["eq"]  # type: ignore[attr-defined]
    acme = Context(tenant="acme")
    assert cli("flag", "set", "eq", "--stage", "pilot", "--reason", "x").code == 0
    seen: list[int] = []
    states = FlagStates(shop, on_change=lambda st: seen.append(st.version)).start()
    try:
        assert states.decide(flag, acme).path == "shadow"
        assert cli("flag", "kill", "eq", "--reason", "stop").code == 0
        assert wait_for(lambda: states.decide(flag, acme).reason == "killed")
        assert states.notifications >= 1
        # The store goes away: the runner keeps its last known state.
        dbname = str(conninfo_to_dict(shop)["dbname"])
        with psycopg.connect(shop, autocommit=True) as keep, \
                psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                sql.Identifier(dbname)))
            try:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE application_name = 'pg-rollout-flags'")
                assert wait_for(lambda: not states.connected)
                # A change lands while the runner cannot see the store.
                keep.execute("UPDATE rollout.flag_state SET killed = false, stage = 'everyone',"
                             " version = version + 1")
                # A duration, not an ordering: the runner gets time to retry (and fail) against a
                # store that refuses connections; there is no event to wait for, the point is
                # that nothing reaches it meanwhile.
                time.sleep(0.3)
                assert states.decide(flag, acme).reason == "killed"  # last known state
            finally:
                admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                    sql.Identifier(dbname)))
        # Reconnected: it reloads and picks up what it missed.
        assert wait_for(lambda: states.decide(flag, acme).path == "new", timeout=30)
        assert states.reloads >= 2
        assert seen == [1, 2, 3]
    finally:
        states.close()


def test_runner_without_a_store_serves_legacy(shop: str, make_workspace: WorkspaceMaker) -> None:
    flag = Workspace.load(make_workspace({"eq": EQUIVALENT})).flags["eq"]
    gone = shop.replace(f"dbname={conninfo_to_dict(shop)['dbname']}", "dbname=no_such_store")
    states = FlagStates(gone).start(wait=5)
    try:
        d = states.decide(flag, Context(tenant="acme"))
        assert (d.path, d.reason) == ("legacy", "no-state")
        assert not states.connected
    finally:
        states.close()
