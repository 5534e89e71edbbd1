"""Hostile flags against what the toolkit executes: one statement, nothing persists, nothing
escalates, nothing outlives its budget (issue 12 rows 1, 9, 10, 12, 13, 14).

Load-time validation (flag files refuse transaction control and friends) is bypassed on
purpose: the flags here are loaded clean and their SQL replaced with ``dataclasses.replace``,
so each test proves the runtime mechanism holds on its own.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout import Context, Rollout
from rollout.commands import Session, flag_set
from rollout.errors import ConnectionFailed, InputError, Terminated
from rollout.flags.model import Flag
from rollout.flags.workspace import Workspace
from rollout.run.execute import Limits
from rollout.run.shadow import RunOptions, RunSummary, run_shadow, target_tenants
from rollout.store.connection import connect
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import run_cli, table_checksums, wait_for

LEGACY = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"
WRITE_LEGACY = "UPDATE items SET val = val WHERE id = -1 RETURNING id"  # changes nothing
INSERT = "INSERT INTO items VALUES (9001, 'acme', 1, 1, 'injected')"
SHORT = Limits(statement_timeout_ms=1000, lock_timeout_ms=200, margin_ms=500)
QUICK = RunOptions(lock_interval=None, plan_samples=0, generic_tenants=0, seed=1)

HOSTILE_READS = {
    "commit-insert": f"SELECT 1 AS x; COMMIT; {INSERT}; SELECT 1 AS x",
    "rollback-delete": "ROLLBACK; DELETE FROM items WHERE tenant = 'acme'; SELECT 1 AS x",
}
HOSTILE_WRITE = f"BEGIN; {INSERT}; COMMIT;"


def loaded(make_workspace: WorkspaceMaker, kind: str = "read") -> tuple[Path, Workspace]:
    legacy = WRITE_LEGACY if kind == "write" else LEGACY
    root = make_workspace({"f": flag_yaml("f", legacy, legacy, kind=kind)})
    return root, Workspace.load(root)


def hostile(ws: Workspace, **changes: Any) -> Flag:
    """The clean flag ``f`` with its SQL replaced after loading (validation bypassed)."""
    f = ws.flags["f"]
    if "new" in changes:
        changes["new"] = replace(f.new, sql=changes["new"])
    if "legacy" in changes:
        changes["legacy"] = replace(f.legacy, sql=changes["legacy"])
    flag = replace(f, **changes)
    ws.flags["f"] = flag
    return flag


@contextmanager
def target_and_store(dsn: str) -> Iterator[tuple[psycopg.Connection[Any], Store]]:
    with connect(dsn, autocommit=True) as target, connect(dsn, autocommit=True) as sconn:
        yield target, Store.open(sconn)


def offline(dsn: str, flag: Flag, samples: int = 4, options: RunOptions = QUICK,
            progress: Callable[[int, int], None] | None = None) -> RunSummary:
    with target_and_store(dsn) as (target, store):
        return run_shadow(flag, target, store, stage="pilot", tenants=["acme"],
                          samples=samples, dsn=dsn, options=options, progress=progress)


def runs(dsn: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(dsn) as conn:
        return [(str(s), r) for s, r in conn.execute(
            "SELECT status, reason FROM rollout.runs ORDER BY started_at").fetchall()]


def observed(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT legacy_sqlstate, new_sqlstate, new_error, source"
                            " FROM rollout.observations WHERE mode = 'ab'"
                            " ORDER BY observed_at").fetchall()


def advisory_locks(dsn: str) -> int:
    """Advisory locks 777 held by any session, seen from another connection."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                           " AND objid = 777 AND granted").fetchone()
    assert row is not None
    return int(row[0])




# -- row 1: one statement, extended protocol, whatever the placeholders --------------------


def test_the_extended_protocol_refuses_a_second_statement(shop: str) -> None:
    """The mechanism itself: fails if psycopg changes how the cursor sends queries."""
    from rollout.run.execute import ExtendedCursor, ExtendedServerCursor, guard

    with psycopg.connect(shop, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError, match="cannot insert multiple commands"):
            ExtendedCursor(conn).execute(f"SELECT 1; {INSERT}")
        with pytest.raises(psycopg.errors.SyntaxError, match="cannot insert multiple commands"):
            guard(conn).execute(f"SELECT 1; {INSERT}")
        with conn.transaction(force_rollback=True), pytest.raises(psycopg.errors.SyntaxError):
            ExtendedServerCursor(conn, "c").execute(f"SELECT 1; {INSERT}")
    assert table_checksums(shop)["public.items"][0] == 3000


@pytest.mark.parametrize("name", sorted(HOSTILE_READS))
def test_read_flag_with_transaction_control_persists_nothing_offline(
    shop: str, make_workspace: WorkspaceMaker, name: str
) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws, new=HOSTILE_READS[name])
    before = table_checksums(shop)
    with pytest.raises(InputError, match="cannot insert multiple commands"):
        offline(shop, flag, samples=5)
    assert table_checksums(shop) == before


def test_write_flag_with_begin_commit_persists_nothing_offline(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace, kind="write")
    flag = hostile(ws, new=HOSTILE_WRITE)
    before = table_checksums(shop)
    with pytest.raises(InputError, match="cannot insert multiple commands"):
        offline(shop, flag, samples=5)
    assert table_checksums(shop) == before


def test_rollout_shadow_cli_persists_nothing(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """From the command line: refused at load time or at run time, never run."""
    new = HOSTILE_READS["commit-insert"]
    root = make_workspace({"f": flag_yaml("f", LEGACY, "SELECT 1 AS x")})
    path = root / "flags" / "f.yaml"
    path.write_text(path.read_text().replace("SELECT 1 AS x", new))
    before = table_checksums(shop)
    result = run_cli(capsys, "shadow", "f", "--samples", "5", "--workspace", root, "--dsn", shop)
    assert result.code == 2, result.out
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert table_checksums(shop) == before


def test_single_commit_statement_is_recorded_as_a_failure(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """One statement that ends the toolkit's transaction is not a result: it fails."""
    _, ws = loaded(make_workspace, kind="write")
    flag = hostile(ws, new="COMMIT")
    summary = offline(shop, flag, samples=2)
    assert summary.new_failures == 2
    assert {o[1] for o in observed(shop)} == {"25000"}


def test_online_hostile_sql_persists_nothing(shop: str, make_workspace: WorkspaceMaker) -> None:
    """A shadowed write and a served one: the server refuses the second statement."""
    root, ws = loaded(make_workspace, kind="write")
    hostile(ws, new=HOSTILE_WRITE)
    session = Session(root, dsn=shop, say=lambda m: None)
    flag_set(session, "f", "pilot", actor="t", reason="shadow acme")
    before = table_checksums(shop)
    with Rollout(shop, ws, shadow_budget=None, pool_stats_interval=None) as ro:
        assert ro.query("f", Context(tenant="acme"), {"grp": 1}) == []
        assert ro.drain()
        flag_set(session, "f", "everyone", actor="t", reason="serve new")
        assert wait_for(lambda: ro.decide("f", Context(tenant="acme")).path == "new")
        with pytest.raises(psycopg.errors.SyntaxError, match="cannot insert multiple commands"):
            ro.query("f", Context(tenant="acme"), {"grp": 1})
        assert ro.drain()
    assert table_checksums(shop) == before
    shadowed = [o for o in observed(shop) if o[1] is not None]
    assert [o[1] for o in shadowed] == ["42601", "42601"]  # shadowed, then served


# -- row 9: a session setting never outlives its execution ----------------------------------


STICKY = ("SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
          " AND set_config('statement_timeout', '0', false) IS NOT NULL ORDER BY id")
SLEEPY = "SELECT id, val FROM items, pg_sleep(3) WHERE tenant = %(tenant)s AND grp = %(grp)s"


def test_legacy_cannot_lift_the_timeout_of_new_offline(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws, legacy=STICKY, new=SLEEPY)
    summary = offline(shop, flag, samples=2, options=replace(QUICK, limits=SHORT))
    assert summary.new_failures == 2
    assert {o[1] for o in observed(shop)} == {"57014"}  # statement_timeout, every time


def test_a_shadow_cannot_lift_the_timeout_of_the_next_online(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    root = make_workspace({n: flag_yaml(n, LEGACY, LEGACY) for n in ("sticky", "sleepy")})
    ws = Workspace.load(root)
    for name, new in (("sticky", STICKY), ("sleepy", SLEEPY)):
        ws.flags[name] = replace(ws.flags[name], new=replace(ws.flags[name].new, sql=new))
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in ws.flags:
        flag_set(session, name, "pilot", actor="t", reason="shadow")
    with Rollout(shop, ws, shadow_budget=None, shadow_pool_size=1, shadow_workers=1,
                 shadow_limits=SHORT, pool_stats_interval=None) as ro:
        ro.query("sticky", Context(tenant="acme"), {"grp": 1})
        assert ro.drain()
        ro.query("sleepy", Context(tenant="acme"), {"grp": 1})
        assert ro.drain(timeout=30)
    assert [o[1] for o in observed(shop)] == [None, "57014"]


# -- row 10: advisory locks are released -----------------------------------------------------

LOCKER = ("SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
          " AND pg_advisory_lock(777) IS NOT NULL ORDER BY id")


def test_advisory_lock_is_released_offline(shop: str, make_workspace: WorkspaceMaker) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws, new=LOCKER)
    with target_and_store(shop) as (target, store):
        run_shadow(flag, target, store, stage="pilot", tenants=["acme"], samples=2, dsn=shop,
                   options=QUICK)
        assert not target.closed
        assert advisory_locks(shop) == 0  # the run's connection is still open


def test_advisory_lock_is_released_online(shop: str, make_workspace: WorkspaceMaker) -> None:
    root, ws = loaded(make_workspace)
    hostile(ws, new=LOCKER)
    flag_set(Session(root, dsn=shop, say=lambda m: None), "f", "pilot", actor="t", reason="s")
    with Rollout(shop, ws, shadow_budget=None, shadow_pool_size=1, pool_stats_interval=None) as ro:
        ro.query("f", Context(tenant="acme"), {"grp": 1})
        assert ro.drain()
        assert observed(shop)[0][1] is None  # the shadow ran and took the lock
        assert wait_for(lambda: advisory_locks(shop) == 0, timeout=10)


# -- row 12: params queries run read-only, rolled back, with timeouts ------------------------


def test_params_sample_that_writes_persists_nothing(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws, sample_sql=f"{INSERT} RETURNING grp")
    before = table_checksums(shop)
    with pytest.raises(InputError, match="params.sample: cannot execute INSERT in a read-only"):
        offline(shop, flag)
    assert table_checksums(shop) == before


def test_params_sample_is_bounded_by_the_statement_timeout(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws, sample_sql="SELECT grp FROM (SELECT DISTINCT grp FROM items WHERE"
                   " tenant = %(tenant)s LIMIT %(limit)s) AS s, pg_sleep(12)")
    with pytest.raises(InputError, match="params.sample: canceling statement due to statement"):
        offline(shop, flag, options=replace(QUICK, limits=SHORT))


def test_params_tenants_that_writes_persists_nothing(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws, tenants_sql=f"{INSERT} RETURNING tenant")
    before = table_checksums(shop)
    with connect(shop, autocommit=True) as conn:
        with pytest.raises(InputError, match="params.tenants: cannot execute INSERT"):
            target_tenants(flag, "everyone", conn)
        from rollout.run.shadow import fetch_tenants  # what `rollout flag show` resolves with

        with pytest.raises(InputError, match="params.tenants: cannot execute INSERT"):
            fetch_tenants(conn, flag)
        clean = replace(flag, tenants_sql="SELECT DISTINCT tenant FROM items")
        assert fetch_tenants(conn, clean) == ["acme", "globex", "initech"]
    assert table_checksums(shop) == before


# -- row 13: a backend that stops answering fails its execution after the deadline -----------


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a local backend; SIGCONT whatever happens."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        pytest.skip("the test server's backends are not local processes")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_stopped_backend_fails_the_offline_run_after_the_deadline(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)
    flag = hostile(ws)
    started = threading.Event()
    outcome: dict[str, BaseException | None] = {}
    with target_and_store(shop) as (target, store):
        pid = target.info.backend_pid

        def run() -> None:
            try:
                run_shadow(flag, target, store, stage="pilot", tenants=["acme"], samples=200,
                           dsn=shop, options=replace(QUICK, limits=SHORT),
                           progress=lambda i, n: started.set())
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        assert started.wait(30)
        with stopped(pid):
            worker.join(60)
            assert not worker.is_alive(), "the run hung on a stopped backend"
        error = outcome["error"]
        assert isinstance(error, ConnectionFailed), error
        assert "stopped answering" in str(error)
    assert runs(shop)[0][0] == "failed"
    assert "stopped answering" in (runs(shop)[0][1] or "")
    assert "08006" in {o[0] for o in observed(shop)} | {o[1] for o in observed(shop)}


def test_stopped_shadow_backend_fails_the_shadow_and_the_pool_recovers(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    root, ws = loaded(make_workspace)
    flag_set(Session(root, dsn=shop, say=lambda m: None), "f", "pilot", actor="t", reason="s")
    with Rollout(shop, ws, shadow_budget=None, shadow_pool_size=1, shadow_workers=1,
                 shadow_limits=SHORT, pool_stats_interval=None) as ro:
        ro.shadow_pool.wait()
        with psycopg.connect(shop) as admin:
            row = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name ="
                                " 'pg-rollout-shadow' AND datname = current_database()"
                                ).fetchone()
        assert row is not None
        with stopped(int(row[0])):
            assert ro.query("f", Context(tenant="acme"), {"grp": 1})  # the caller is served
            assert ro.drain(timeout=30)
        ro.query("f", Context(tenant="acme"), {"grp": 2})
        assert ro.drain(timeout=30)
    first, second = observed(shop)
    # the deadline cut the stopped backend in whichever path ran first on it (08006); a path
    # paired after it found the connection gone (08003): both environment failures
    assert {first[0], first[1]} == {"08006", "08003"}
    assert second[:2] == (None, None)
    assert first[1] != "08006" or "deadline" in first[2]


# -- row 14: a run cut short says so ----------------------------------------------------------


def test_sigterm_marks_the_run_failed_with_its_reason(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)

    def progress(i: int, n: int) -> None:
        if i == 2:
            raise Terminated("terminated (SIGTERM)")

    with pytest.raises(Terminated):
        offline(shop, hostile(ws), samples=10, progress=progress)
    assert runs(shop) == [("failed", "terminated (SIGTERM)")]


def test_a_lost_store_does_not_hide_the_interruption(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    _, ws = loaded(make_workspace)
    with target_and_store(shop) as (target, store):

        def progress(i: int, n: int) -> None:
            store.conn.close()  # the store's server went away
            raise Terminated("terminated (SIGTERM)")

        with pytest.raises(Terminated):
            run_shadow(hostile(ws), target, store, stage="pilot", tenants=["acme"], samples=4,
                       dsn=shop, options=QUICK, progress=progress)


def test_async_runner_holds_the_same_guarantees(shop: str, make_workspace: WorkspaceMaker) -> None:
    """AsyncRollout: the hostile write is refused by the server, the lock is released."""
    import asyncio

    from rollout import AsyncRollout

    root = make_workspace({n: flag_yaml(n, WRITE_LEGACY, WRITE_LEGACY, kind="write")
                           for n in ("w", "lock")})
    ws = Workspace.load(root)
    for name, new in (("w", HOSTILE_WRITE), ("lock", LOCKER.replace(
            "SELECT id, val FROM items", "SELECT id FROM items"))):
        ws.flags[name] = replace(ws.flags[name], new=replace(ws.flags[name].new, sql=new))
        flag_set(Session(root, dsn=shop, say=lambda m: None), name, "pilot", actor="t",
                 reason="shadow")
    before = table_checksums(shop)

    async def main() -> None:
        ro = await AsyncRollout.connect(shop, ws, shadow_budget=None, shadow_pool_size=1,
                                        shadow_workers=1, pool_stats_interval=None)
        try:
            await ro.query("w", Context(tenant="acme"), {"grp": 1})
            await ro.query("lock", Context(tenant="acme"), {"grp": 1})
            assert await ro.drain()
            assert advisory_locks(shop) == 0
        finally:
            await ro.close()

    asyncio.run(main())
    assert table_checksums(shop) == before
    assert [o[1] for o in observed(shop)] == ["42601", None]


def test_the_watchdog_cuts_only_a_connection_still_open() -> None:
    """Past its deadline a watch is cancelled, then cut; a connection closed meanwhile (its
    descriptor may be another socket's by now) is left alone."""
    import socket

    from rollout.run.deadline import BROKEN, WATCHDOG

    for alive in (True, False):
        ours_, peer = socket.socketpair()
        with ours_, peer:
            cancelled = threading.Event()
            w = WATCHDOG.watch(cancelled.set, ours_.fileno(), 0.0, 0.0, alive=lambda a=alive: a)
            try:
                assert wait_for(lambda w=w: w.state == BROKEN, timeout=10)
            finally:
                WATCHDOG.release(w)
            assert cancelled.is_set()
            if alive:
                assert ours_.recv(1) == b""  # shut down: a blocked read returns
            else:
                peer.sendall(b"x")
                assert ours_.recv(1) == b"x"  # untouched


# -- prepared statements: no execution sees one another execution left ---------------------

FORGE = ("DO $$ DECLARE r record; BEGIN EXECUTE 'PREPARE hostile_leak AS SELECT 1';"
         " FOR r IN SELECT name FROM pg_prepared_statements WHERE name LIKE '\\_pg3\\_%%' LOOP"
         " EXECUTE format('DEALLOCATE %%I', r.name);"
         " EXECUTE format('PREPARE %%I(text) AS SELECT %%L::text AS slug', r.name, 'forged');"
         " END LOOP; END $$")
"""A write flag's new path that replaces psycopg's prepared statements on its connection
(PREPARE run by PL/pgSQL's EXECUTE is not transactional: it survives the rollback)."""
SLUG = "SELECT tenant AS slug FROM items WHERE tenant = %(tenant)s AND id < 30 ORDER BY id"
SLUG_NEW = "SELECT tenant AS slug FROM items WHERE id < 30 AND tenant = %(tenant)s ORDER BY id"
SLUG_WRITE = ("UPDATE items SET val = val WHERE tenant = %(tenant)s AND id < 0"
              " RETURNING tenant AS slug")
SLUG_ROWS = 9  # acme's rows with id < 30


def forging(make_workspace: WorkspaceMaker) -> tuple[Path, Workspace]:
    """Read flag ``r`` (two spellings of one query) and write flag ``w`` whose new path
    forges prepared statements."""
    root = make_workspace({"r": flag_yaml("r", SLUG, SLUG_NEW),
                           "w": flag_yaml("w", SLUG_WRITE, SLUG_WRITE, kind="write")})
    ws = Workspace.load(root)
    ws.flags["w"] = replace(ws.flags["w"], new=replace(ws.flags["w"].new, sql=FORGE))
    return root, ws


def prepared(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT name FROM pg_prepared_statements ORDER BY name").fetchall()]


def slug_observations(dsn: str, flag: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT matched, legacy_rows, new_rows, legacy_sqlstate, new_sqlstate"
            " FROM rollout.observations WHERE flag = %s AND mode = 'ab'"
            " ORDER BY observed_at", [flag]).fetchall()


def test_a_flag_cannot_forge_prepared_statements_offline(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """One connection for everything, as `rollout shadow` uses: statements the write flag
    prepares reach neither its own later executions nor another flag's."""
    _, ws = forging(make_workspace)
    r, w = ws.flags["r"], ws.flags["w"]
    with target_and_store(shop) as (target, store):
        for flag in (r, w, r):
            run_shadow(flag, target, store, stage="pilot", tenants=["acme"], samples=8,
                       dsn=shop, options=QUICK)
        assert not target.closed
        left = prepared(target)
    reads = slug_observations(shop, "r")
    assert len(reads) == 16
    assert reads == [(True, SLUG_ROWS, SLUG_ROWS, None, None)] * 16
    writes = slug_observations(shop, "w")
    assert [(o[1], o[3], o[4]) for o in writes] == [(0, None, None)] * 8  # legacy never forged
    assert left == []  # nothing left on the connection


def test_a_flag_cannot_forge_prepared_statements_online(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """The shadow pool's one connection: a shadowed write forges, the read flag's later
    comparisons still compare real rows, and the pooled connection holds no statement."""
    root, ws = forging(make_workspace)
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in ("r", "w"):
        flag_set(session, name, "pilot", actor="t", reason="shadow")
    acme = Context(tenant="acme")
    with Rollout(shop, ws, shadow_budget=None, shadow_pool_size=1, pool_stats_interval=None) as ro:
        for _ in range(8):  # enough for psycopg to prepare (prepare_threshold = 5)
            assert len(ro.query("r", acme)) == SLUG_ROWS
            assert ro.drain()
        ro.query("w", acme)
        assert ro.drain()
        for _ in range(4):
            assert len(ro.query("r", acme)) == SLUG_ROWS
            assert ro.drain()
        with ro.shadow_pool.connection() as conn:
            left = prepared(conn)
        with ro.pool.connection() as conn:
            served = forged(conn)
    reads = slug_observations(shop, "r")
    assert len(reads) == 12
    assert all(o[0] is True for o in reads), reads
    writes = slug_observations(shop, "w")
    assert [o[4] for o in writes] == [None]  # the forging shadow itself ran
    assert left == []  # the shadow pool's connection holds no statement
    assert served == []  # the request pool's holds psycopg's own at most


def forged(conn: psycopg.Connection[Any]) -> list[str]:
    """Prepared statements on ``conn`` that are not psycopg's own: made through SQL, or
    not in psycopg's record of what it prepared."""
    own = {n.decode() for n in conn._prepared._names.values()}
    return [str(name) for name, from_sql in conn.execute(
        "SELECT name, from_sql FROM pg_prepared_statements ORDER BY name").fetchall()
        if from_sql or name not in own]


def test_a_served_flag_cannot_forge_the_request_pools_prepared_statements(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """The request pool keeps psycopg's prepared statements between requests (a served
    query is planned once per connection, as with psycopg's defaults). A served write whose
    SQL replaces them through PL/pgSQL is caught in the same round trip as its commit: all
    dropped, and the read served next on that connection returns its real rows."""
    root, ws = forging(make_workspace)
    session = Session(root, dsn=shop, say=lambda m: None)
    flag_set(session, "r", "pilot", actor="t", reason="shadow")
    flag_set(session, "w", "everyone", actor="t", reason="serve the forging path")
    acme = Context(tenant="acme")
    with Rollout(shop, ws, shadow_budget=None, pool_size=1, shadow_pool_size=1,
                 pool_stats_interval=None) as ro:
        for _ in range(7):  # psycopg prepares on the fifth execution
            assert ro.query("r", acme) == [("acme",)] * SLUG_ROWS
        with ro.pool.connection() as conn:
            kept = prepared(conn)
            assert forged(conn) == []
        assert kept, "psycopg should have prepared the served read on the request pool"
        ro.query("w", acme)  # served: the forging path runs on the request pool
        with ro.pool.connection() as conn:
            assert prepared(conn) == []  # everything dropped, psycopg's record too
        for _ in range(7):
            assert ro.query("r", acme) == [("acme",)] * SLUG_ROWS  # never 'forged'
        assert ro.drain()
        with ro.pool.connection() as conn:
            assert forged(conn) == []


# -- a stalled store stops the run after its deadline ------------------------------------------

STORE_SHORT = replace(QUICK, limits=SHORT, store_timeout_s=1.0)


def local_backend(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        pytest.skip("the test server's backends are not local processes")


def test_stalled_store_stops_the_offline_run_after_its_deadline(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """SIGSTOP on the store's backend mid-run: the run stops after the store deadline, says
    the run could not be marked, and the run row stays `running` (reports call it
    incomplete)."""
    from rollout.errors import StoreStalled

    _, ws = loaded(make_workspace)
    flag = hostile(ws)
    outcome: dict[str, BaseException | None] = {}
    stopped_pid: list[int] = []
    with target_and_store(shop) as (target, store):
        pid = store.conn.info.backend_pid
        local_backend(pid)

        def progress(i: int, n: int) -> None:
            if i == 1:  # in the run's own thread: the store stops before its first write
                os.kill(pid, signal.SIGSTOP)
                stopped_pid.append(pid)

        def run() -> None:
            try:
                run_shadow(flag, target, store, stage="pilot", tenants=["acme"], samples=10,
                           dsn=shop, options=STORE_SHORT, progress=progress)
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            worker.join(60)
            assert not worker.is_alive(), "the run hung on a stopped store"
        finally:
            for p in stopped_pid:
                os.kill(p, signal.SIGCONT)
        error = outcome.get("error")
        assert isinstance(error, StoreStalled), error
        assert "did not answer within 1 s (writing observations)" in str(error)
        assert "could not be marked failed" in str(error)
        assert len(str(error).splitlines()) == 1
        assert store.conn.closed and not target.closed
    assert [s for s, _ in runs(shop)] == ["running"]
    assert observed(shop) == []


def test_stalled_store_exits_the_cli_with_one_line(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollout shadow` with the store's backend stopped mid-run: exit 2, one line."""
    import functools

    import rollout.run.shadow

    root, _ = loaded(make_workspace)
    # the CLI builds its RunOptions from rollout.run.shadow when the command runs
    monkeypatch.setattr(rollout.run.shadow, "RunOptions", functools.partial(
        RunOptions, limits=SHORT, store_timeout_s=1.0))
    pair = rollout.run.shadow.run_pair
    stopped_pid: list[int] = []

    def stopping_pair(*args: Any, **kwargs: Any) -> Any:
        if not stopped_pid:  # the store is the connection that started the run
            with psycopg.connect(shop) as conn:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE 'INSERT INTO rollout.runs%'").fetchone()
            assert row is not None
            local_backend(int(row[0]))
            os.kill(int(row[0]), signal.SIGSTOP)
            stopped_pid.append(int(row[0]))
        return pair(*args, **kwargs)

    monkeypatch.setattr(rollout.run.shadow, "run_pair", stopping_pair)
    try:
        result = run_cli(capsys, "shadow", "f", "--samples", "6", "--workspace", root,
                         "--dsn", shop)
    finally:
        for p in stopped_pid:
            os.kill(p, signal.SIGCONT)
    assert stopped_pid
    assert result.code == 2, result.out
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "the store did not answer within 1 s" in result.err
    assert [s for s, _ in runs(shop)] == ["running"]


# -- the served path's one round trip (execute.serve: a pipeline) --------------------------

LOCK_THEN_FAIL = (b"WITH l AS MATERIALIZED (SELECT pg_advisory_lock(4242) AS x)"
                  b" SELECT 1 / (SELECT count(*) - 1 FROM l)")
"""One statement that takes a session advisory lock, then fails (division by zero)."""


def _advisory_locks(dsn: str, pid: int) -> int:
    with psycopg.connect(dsn) as other:
        row = other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND pid = %s", [pid]).fetchone()
    assert row is not None
    return int(row[0])


def test_a_failed_served_statement_raises_and_the_reset_still_runs_in_its_pipeline(
        shop: str) -> None:
    from rollout.run.execute import _already_reset, serve

    with psycopg.connect(shop, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            serve(conn, LOCK_THEN_FAIL, {})
        # the reset ran in the same round trip, after the failed statement's own Sync
        assert _advisory_locks(shop, conn.info.backend_pid) == 0
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # not marked reset: the pool's full reset runs at the next checkout
        assert not _already_reset(conn)
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def _aserve_fails(dsn: str) -> tuple[int, bool]:
    from rollout.run.execute import _already_reset, aserve

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await aserve(conn, LOCK_THEN_FAIL, {})
        return _advisory_locks(dsn, conn.info.backend_pid), _already_reset(conn)


def test_the_async_served_path_holds_the_same(shop: str) -> None:
    import asyncio

    assert asyncio.run(_aserve_fails(shop)) == (0, False)


def test_a_served_write_commits_on_its_own_before_the_reset(shop: str) -> None:
    from rollout.run.execute import _already_reset, serve

    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(77)")
        cur = serve(conn, b"INSERT INTO items VALUES (9100, 'acme', 1, 1, 'x') RETURNING id", {})
        assert cur.fetchall() == [(9100,)]
        assert _advisory_locks(shop, conn.info.backend_pid) == 0  # the reset ran
        assert _already_reset(conn)  # and the pool's reset at checkout has nothing to do
    with psycopg.connect(shop) as other:
        assert other.execute("SELECT count(*) FROM items WHERE id = 9100").fetchone() == (1,)


def test_psycopg_sends_no_sync_between_statements_of_an_autocommit_pipeline(shop: str) -> None:
    """Why ``serve`` queues a Sync after the served statement: without it, psycopg's pipeline
    runs every statement up to the next Sync in one implicit transaction, even in
    autocommit, so a later failure rolls back an earlier write."""
    with psycopg.connect(shop, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("INSERT INTO items VALUES (9101, 'acme', 1, 1, 'x')")
            conn.execute("SELECT 1 / (SELECT count(*) FROM pg_database WHERE false)")
        assert conn.execute("SELECT count(*) FROM items WHERE id = 9101").fetchone() == (0,)


# -- execute and its asyncio twin aexecute: the same rules, the same results ---------------

TWIN_CASES: dict[str, tuple[str, bool, str | None]] = {
    # name: (SQL, write, the SQLSTATE expected; None: it ran)
    "read": ("SELECT id, val FROM items WHERE id <= 3 ORDER BY id", False, None),
    "write rolled back": ("UPDATE items SET val = val + 1 WHERE id <= 3 RETURNING id", True, None),
    "write refused read-only": ("UPDATE items SET val = val + 1 WHERE id <= 3", False, "25006"),
    "two statements": (f"SELECT 1; {INSERT}", True, "42601"),
    "commit": ("COMMIT", True, "25000"),
    "advisory lock": ("SELECT pg_advisory_lock(4242)", False, None),
    "statement timeout": ("SELECT pg_sleep(5)", False, "57014"),
}


LEFT = ("SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND pid = pg_backend_pid()), current_setting('statement_timeout')")
"""What an execution could leave on its session: advisory locks, a changed timeout."""


def run_twins(dsn: str, sql: str, write: bool) -> list[tuple[Any, ...]]:
    """``execute`` then ``aexecute`` on the same statement, each on a connection of its own:
    (the result but its timing, the result set, what the session holds after: ``LEFT``)."""
    import asyncio

    from rollout.run.execute import aexecute, execute

    with psycopg.connect(dsn, autocommit=True) as conn:
        result, rs = execute(conn, sql, {}, write=write, limits=SHORT, capture_locks=True)
        sync = (replace(result, ns=None), rs, conn.execute(LEFT).fetchone())

    async def main() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            result, rs = await aexecute(aconn, sql, {}, write=write, limits=SHORT,
                                        capture_locks=True)
            left = await (await aconn.execute(LEFT)).fetchone()
        return (replace(result, ns=None), rs, left)

    return [sync, asyncio.run(main())]


@pytest.mark.parametrize("name", sorted(TWIN_CASES))
def test_execute_and_aexecute_keep_the_same_rules(shop: str, name: str) -> None:
    sql, write, sqlstate = TWIN_CASES[name]
    before = table_checksums(shop)
    sync, asyncio_twin = run_twins(shop, sql, write)
    assert sync == asyncio_twin
    result, rs, left = sync
    assert result.sqlstate == sqlstate, result
    assert (rs is None) == (sqlstate is not None)
    with psycopg.connect(shop) as fresh:
        assert left == (0, fresh.execute("SHOW statement_timeout").fetchone()[0])  # type: ignore[index]
    assert table_checksums(shop) == before


def test_execute_and_aexecute_raise_a_client_side_error(shop: str) -> None:
    import asyncio

    from rollout.run.execute import aexecute, execute

    with psycopg.connect(shop, autocommit=True) as conn, pytest.raises(psycopg.ProgrammingError):
        execute(conn, "SELECT %(missing)s", {}, write=False)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(shop, autocommit=True) as aconn:
            await aexecute(aconn, "SELECT %(missing)s", {}, write=False)

    with pytest.raises(psycopg.ProgrammingError):
        asyncio.run(main())
