"""The online runner during an outage: callers fail at their request deadline (never the
pool's 30 s), recover once the database is back; pool totals outlive snapshots (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from rollout import AsyncRollout, Context, Rollout
from rollout.commands import Session, flag_set
from rollout.online.core import RECONNECT_TIMEOUT_S, RequestTimeout, RunnerStats
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import EQ_LEGACY, EQUIVALENT, LEGACY, PATIENT, legacy_rows, table_checksums

SLEEPY = ("SELECT id, val FROM items, pg_sleep(30) WHERE tenant = %(tenant)s"
          " AND grp = %(grp)s ORDER BY id")
FLAGS = {
    "eq": EQUIVALENT + PATIENT,
    "sleepy": flag_yaml("sleepy", SLEEPY, LEGACY, extra=PATIENT),  # legacy never answers
}
ACME = Context(tenant="acme")
DEADLINE = 1.0  # short, so the tests are; the default is 5 s


@pytest.fixture
def online(shop: str, make_workspace: WorkspaceMaker) -> tuple[str, Path]:
    root = make_workspace(FLAGS)
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in FLAGS:
        flag_set(session, name, "pilot", actor="test", reason="fail-fast tests")
    return shop, root


@contextlib.contextmanager
def database_down(dsn: str, server_dsn: str) -> Iterator[None]:
    """The test's database refuses connections and the runner's are terminated: an outage
    of this database alone (the server stays up for the other tests)."""
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(dbname)))
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s AND application_name LIKE 'pg-rollout-%%'",
                          [dbname])
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(dbname)))


def until_ok(call: Callable[[], Any], tries: int = 200) -> tuple[Any, int]:
    """Call until it succeeds (bounded: every failed call ends at its request deadline or
    sooner); the result and how many calls failed first."""
    for failed in range(tries):
        try:
            return call(), failed
        except psycopg.OperationalError:
            time.sleep(0.05)  # a failed call may have returned at once: do not spin
    raise AssertionError(f"no success in {tries} calls")


def test_outage_fails_at_the_request_deadline_then_recovers(
        online: tuple[str, Path], server_dsn: str) -> None:
    dsn, root = online
    before = table_checksums(dsn)
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, request_timeout=DEADLINE) as ro:
        # the pools were built to fail fast and recover fast
        assert ro.pool.timeout == DEADLINE and ro.shadow_pool.timeout == DEADLINE
        assert ro.pool.reconnect_timeout == RECONNECT_TIMEOUT_S
        assert ro.query("eq", ACME, {"grp": 1}) == legacy_rows(dsn, "acme", 1, EQ_LEGACY)
        with database_down(dsn, server_dsn):
            with pytest.raises(RequestTimeout) as caught:
                ro.query("eq", ACME, {"grp": 1})
            # the runner's deadline bounded the wait, not psycopg_pool's 30 s default
            assert caught.value.seconds == DEADLINE
            assert f"request deadline of {DEADLINE:g} s" in str(caught.value)
            assert isinstance(caught.value, PoolTimeout)  # what callers already catch
            assert isinstance(caught.value.__cause__, PoolTimeout)
            with pytest.raises(RequestTimeout):  # run() checks out under it too
                ro.run("eq", ACME, legacy=lambda c: 1, new=lambda c: 1)
        rows, failed = until_ok(lambda: ro.query("eq", ACME, {"grp": 2}))
        assert rows == legacy_rows(dsn, "acme", 2, EQ_LEGACY)
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
    assert stats.serving_failures.get("08000", 0) >= 2  # recorded as connection failures
    assert stats.internal_errors == 0
    assert table_checksums(dsn) == before


def test_async_outage_fails_at_the_request_deadline_then_recovers(
        online: tuple[str, Path], server_dsn: str) -> None:
    dsn, root = online

    async def main() -> tuple[RunnerStats, list[Any]]:
        ro = await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None,
                                        request_timeout=DEADLINE)
        async with ro:
            assert ro.pool.timeout == DEADLINE
            assert ro.pool.reconnect_timeout == RECONNECT_TIMEOUT_S
            await ro.query("eq", ACME, {"grp": 1})
            with database_down(dsn, server_dsn):
                with pytest.raises(RequestTimeout) as caught:
                    await ro.query("eq", ACME, {"grp": 1})
                assert caught.value.seconds == DEADLINE
                assert isinstance(caught.value.__cause__, PoolTimeout)
            for _ in range(200):  # bounded: each try ends at its deadline or sooner
                try:
                    rows = await ro.query("eq", ACME, {"grp": 2})
                    break
                except psycopg.OperationalError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("no recovery")
            assert await ro.drain(timeout=30)
            return ro.get_stats(), rows

    stats, rows = asyncio.run(main())
    assert rows == legacy_rows(dsn, "acme", 2, EQ_LEGACY)
    assert stats.serving_failures.get("08000", 0) >= 1


def test_a_served_query_that_never_answers_is_cancelled_at_the_deadline(
        online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, request_timeout=DEADLINE) as ro:
        with pytest.raises(RequestTimeout) as caught:
            ro.query("sleepy", ACME, {"grp": 1})  # legacy sleeps 30 s: served, cancelled
        assert caught.value.seconds == DEADLINE
        assert "outlived the request deadline of 1 s" in str(caught.value)
        assert isinstance(caught.value.__cause__, psycopg.errors.QueryCanceled)
        # the connection went back usable: the next request is served
        assert ro.query("eq", ACME, {"grp": 1}) == legacy_rows(dsn, "acme", 1, EQ_LEGACY)
        assert ro.get_stats().serving_failures == {"57014": 1}

    async def main() -> None:
        ro = await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None,
                                        request_timeout=DEADLINE)
        async with ro:
            with pytest.raises(RequestTimeout) as caught:
                await ro.query("sleepy", ACME, {"grp": 1})
            assert isinstance(caught.value.__cause__, psycopg.errors.QueryCanceled)

    asyncio.run(main())


def test_pool_options_pass_through_and_safety_options_are_refused(
        online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None,
                         pool_options={"max_waiting": 3, "reconnect_timeout": 2.5,
                                       "check": psycopg_pool_check()},
                         connect_kwargs={"connect_timeout": 4}) as ro:
        assert ro.pool.max_waiting == 3 and ro.pool.reconnect_timeout == 2.5
        assert ro.pool.timeout == 5.0  # the default request deadline: never 30 s
        assert ro.pool.kwargs is not None and ro.pool.kwargs["connect_timeout"] == 4
        # the runner's own stay: psycopg's preparing on the request pool (checked at every
        # commit), none on the shadow pool
        assert "prepare_threshold" not in ro.pool.kwargs
        assert ro.shadow_pool.kwargs is not None
        assert ro.shadow_pool.kwargs["prepare_threshold"] is None
        assert ro.query("eq", ACME, {"grp": 1}) == legacy_rows(dsn, "acme", 1, EQ_LEGACY)
    # options that would lift a safety mechanism (the session reset, one statement per
    # execution, no server-side prepared statements) are refused before anything opens
    for bad in ({"pool_options": {"reset": None}}, {"pool_options": {"kwargs": {}}},
                {"connect_kwargs": {"prepare_threshold": 0}},
                {"connect_kwargs": {"cursor_factory": psycopg.ClientCursor}},
                {"request_timeout": 0}):
        with pytest.raises(ValueError):
            Rollout.connect(dsn, workspace=root, shadow_budget=None, **bad)


def psycopg_pool_check() -> Any:
    from psycopg_pool import ConnectionPool

    return ConnectionPool.check_connection


def test_get_stats_is_typed_and_pool_totals_survive_the_snapshot(
        online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, pool_stats_interval=0.05) as ro:
        for grp in range(6):
            ro.query("eq", ACME, {"grp": grp})
        assert ro.drain()
        # the periodic snapshot popped the pool's counters into rollout.pool_stats
        deadline = time.monotonic() + 10
        while snapshotted(dsn) < 6:
            assert time.monotonic() < deadline, "no pool snapshot recorded"
            time.sleep(0.02)
        assert ro.pool.get_stats().get("requests_num", 0) == 0  # the pool's own: reset
        stats = ro.get_stats()
    assert isinstance(stats, RunnerStats)
    assert stats.pool["requests_num"] == 6  # the runner's totals: not reset
    assert stats["pool"] is stats.pool and stats["shadowed"] == stats.shadowed == 6
    assert "pool_size" in stats.pool and "requests_waiting" in stats.pool  # gauges
    assert stats.shadow_pool["requests_num"] >= 6
    with pytest.raises(KeyError):
        stats["nope"]


def snapshotted(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(requests), 0) FROM rollout.pool_stats"
                           " WHERE pool = 'requests'").fetchone()
    return int(row[0]) if row else 0
