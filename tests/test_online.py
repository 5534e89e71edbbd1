"""The online runner: callers get legacy results, the shadow can never hurt them."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout import AsyncRollout, Context, Rollout
from rollout.commands import Session, flag_kill, flag_set
from rollout.online.recorder import Recorder
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import (
    EQ_LEGACY,
    EQUIVALENT,
    LEGACY,
    PATIENT,
    WRITE,
    legacy_rows,
    online_observations,
    restart_server,
)
from tests.helpers import items_checksum as checksum


def flag(name: str, new: str, **kw: Any) -> str:
    return flag_yaml(name, LEGACY, new, **kw)


FLAGS = {
    "eq": EQUIVALENT + PATIENT,
    "wrong": flag("wrong", LEGACY.replace("ORDER BY id", "AND val > 0 ORDER BY id"),
                  extra=PATIENT),
    "boom": flag("boom", "SELECT id, val / 0 AS val FROM items WHERE grp = %(grp)s",
                 extra=PATIENT),
    "slow": flag("slow", "SELECT id, val FROM items, pg_sleep(5) WHERE tenant = %(tenant)s"
                         " AND grp = %(grp)s ORDER BY id", extra=PATIENT),
    "nap": flag("nap", "SELECT id, val FROM items, pg_sleep(0.05) WHERE tenant = %(tenant)s"
                       " AND grp = %(grp)s ORDER BY id", extra=PATIENT),
    "capped": flag("capped", LEGACY + " ", extra=PATIENT + "  max_per_second: 5\n"),
}


@pytest.fixture
def online(shop: str, make_workspace: WorkspaceMaker) -> tuple[str, Path]:
    root = make_workspace(FLAGS)
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in FLAGS:
        flag_set(session, name, "pilot", actor="test", reason="online tests")
    return shop, root


def test_shadow_serves_legacy_and_records_matches(online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        assert ro.decide("eq", Context(tenant="acme")).path == "shadow"
        assert ro.decide("eq", Context(tenant="initech")).path == "legacy"
        assert ro.decide("nope", Context(tenant="acme")).reason == "unknown-flag"
        for grp in range(10):
            assert ro.query("eq", Context(tenant="acme"), {"grp": grp}) == legacy_rows(
                dsn, "acme", grp, EQ_LEGACY)
            assert ro.query("wrong", Context(tenant="acme"), {"grp": grp}) == legacy_rows(
                dsn, "acme", grp)
            ro.query("eq", Context(tenant="initech"), {"grp": grp})  # legacy only
        assert ro.drain()
        stats = ro.get_stats()
    assert stats["shadowed"] == 20 and stats["dropped_queue_full"] == 0
    eq = online_observations(dsn, "eq")
    assert len(eq) == 10
    assert all(o == ("acme", "shadow", True, None, True, "online") for o in eq)
    wrong = online_observations(dsn, "wrong")
    assert sum(o[2] is False for o in wrong) > 0  # negative values dropped by the rewrite


def test_new_path_errors_and_hangs_never_reach_the_caller(online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, shadow_workers=2) as ro:
        for grp in range(4):
            expected = legacy_rows(dsn, "globex", grp)
            assert ro.query("boom", Context(tenant="globex"), {"grp": grp}) == expected
            assert ro.query("slow", Context(tenant="globex"), {"grp": grp}) == expected
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
    assert stats["background_failures"] == {"22012": 4, "57014": 4}
    assert stats["internal_errors"] == 0
    assert {o[3] for o in online_observations(dsn, "boom")} == {"22012"}
    assert {o[3] for o in online_observations(dsn, "slow")} == {"57014"}  # statement_timeout


def test_killed_shadow_backends_are_counted_and_the_pool_recovers(
    online: tuple[str, Path]
) -> None:
    dsn, root = online
    stop = threading.Event()

    def assassin() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            while not stop.is_set():
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE application_name = 'pg-rollout-shadow'"
                              " AND state = 'active'")
                time.sleep(0.01)

    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        killer = threading.Thread(target=assassin)
        killer.start()
        try:
            for i in range(40):
                assert ro.query("nap", Context(tenant="acme"), {"grp": i % 10}) == legacy_rows(
                    dsn, "acme", i % 10)
            assert ro.drain(timeout=30)
        finally:
            stop.set()
            killer.join()
        killed = ro.get_stats()["background_failures"]
        assert sum(killed.values()) > 0, "the assassin should have hit some shadow executions"
        # killed mid-query (57P01), or the pair's other path found its connection gone
        assert set(killed) <= {"57P01", "08000", "08003"}
        # the pool recovered: a later shadow succeeds
        ro.query("nap", Context(tenant="acme"), {"grp": 1})
        assert ro.drain(timeout=30)
        last = online_observations(dsn, "nap")[-1]
        assert last[2] is True and last[3] is None


def test_queue_full_drops_and_counts(online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, shadow_workers=1,
                         queue_size=1) as ro:
        for i in range(30):
            assert ro.query("nap", Context(tenant="acme"), {"grp": i % 10}) == legacy_rows(
                dsn, "acme", i % 10)
        dropped = ro.get_stats()["dropped_queue_full"]
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
    assert dropped > 0
    assert stats["shadowed"] + stats["dropped_queue_full"] == 30
    assert len(online_observations(dsn, "nap")) == stats["shadowed"]


def test_sampling_limit_per_flag(online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        for i in range(50):
            ro.query("capped", Context(tenant="acme"), {"grp": i % 10})
        assert ro.drain()
        stats = ro.get_stats()
    assert stats["dropped_rate_limited"] > 0
    assert stats["shadowed"] + stats["dropped_rate_limited"] == 50


def test_kill_switch_reaches_a_running_runner(online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        assert ro.decide("eq", Context(tenant="acme")).path == "shadow"
        flag_kill(Session(root, dsn=dsn), "eq", actor="test", reason="stop")
        deadline = time.monotonic() + 10
        while ro.decide("eq", Context(tenant="acme")).path != "legacy":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ro.decide("eq", Context(tenant="acme")).reason == "killed"


def test_shadowed_writes_never_persist(shop: str, make_workspace: WorkspaceMaker) -> None:
    failing = WRITE.replace("name: bump", "name: bump2").replace(
        "WHERE i.id = s.id RETURNING", "WHERE i.id = s.id AND 1 / (i.id %% 7) > 0 RETURNING")
    root = make_workspace({"bump": WRITE + PATIENT, "bump2": failing + PATIENT})
    session = Session(root, dsn=shop)
    flag_set(session, "bump", "pilot", actor="t", reason="x")
    flag_set(session, "bump2", "pilot", actor="t", reason="x")
    # A legacy-only twin of the table, written by the same legacy statements directly.
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("CREATE TABLE items_twin AS SELECT * FROM items")
    legacy_sql = WRITE.split("legacy: |\n")[1].split("\n  new:")[0].strip()
    calls = [(("acme", "globex")[i % 2], i % 10) for i in range(2000)]
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000) as ro:
        for n, (tenant, grp) in enumerate(calls):
            ro.query("bump" if n % 2 else "bump2", Context(tenant=tenant), {"grp": grp})
        assert ro.drain(timeout=60)
        stats = ro.get_stats()
    with psycopg.connect(shop, autocommit=True) as conn:
        for tenant, grp in calls:
            conn.execute(legacy_sql.replace("UPDATE items", "UPDATE items_twin"),
                         {"tenant": tenant, "grp": grp})
        twin = conn.execute("SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM items_twin t"
                            ).fetchone()
    assert stats["shadowed"] == 2000
    assert stats["background_failures"].get("22012", 0) > 0  # new paths failing halfway
    assert twin is not None and checksum(shop) == twin[0]


def test_callable_left_in_transaction_is_rolled_back_and_reported(
    online: tuple[str, Path]
) -> None:
    dsn, root = online
    session = Session(root, dsn=dsn)
    flag_set(session, "eq", "everyone", actor="t", reason="serve new")

    def sloppy(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        conn.execute("UPDATE items SET note = 'leaked' WHERE id = 1")
        return conn.execute("SELECT 1").fetchall()  # returns without commit

    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        with pytest.raises(Exception, match="returned inside a transaction; it was rolled back"):
            ro.run("eq", Context(tenant="acme"), legacy=lambda c: [], new=sloppy)
        stats = ro.get_stats()
        # the pool's worker resets a returned connection, then makes it available again
        waited = time.monotonic() + 10
        while ro.pool.get_stats()["pool_available"] < 1 and time.monotonic() < waited:
            time.sleep(0.01)
        assert ro.pool.get_stats()["pool_available"] >= 1
        assert "returns_bad" not in ro.pool.get_stats()
    assert stats["left_open"] == 1
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT note FROM items WHERE id = 1").fetchone() != ("leaked",)


def test_run_with_callables_compares_values(online: tuple[str, Path]) -> None:
    dsn, root = online

    def legacy(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        with conn.transaction():
            return conn.execute(LEGACY, {"tenant": "acme", "grp": 3}).fetchall()

    def new(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        rows = conn.execute(LEGACY, {"tenant": "acme", "grp": 3}).fetchall()
        return rows[:-1]  # drops a row: a mismatch

    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        assert ro.run("eq", Context(tenant="acme"), legacy=legacy, new=new) == legacy_rows(
            dsn, "acme", 3)
        assert ro.drain()
    assert online_observations(dsn, "eq")[-1][2] is False


def test_recorder_batch_lands_exactly_once(online: tuple[str, Path]) -> None:
    dsn, _ = online
    from datetime import UTC, datetime

    from rollout.store.observations import Observation

    obs = [Observation(datetime.now(UTC), "eq", "pilot", "h", "acme", "shadow", "legacy", {},
                       1, 2, 3, 3, None, None, None, None, True, None, source="online")
           for _ in range(5)]
    rec = Recorder(dsn)
    try:
        batch = uuid.uuid4()
        rec._write(batch, obs)  # committed, but pretend the acknowledgement was lost
        rec.stats.store_errors += 1
        rec._reset()
        rec._write(batch, obs)  # the retry recognises the batch id
        assert rec.stats.duplicates_skipped == 1
    finally:
        rec.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM rollout.observations WHERE batch_id = %s",
                            [batch]).fetchone() == (5,)


def test_recorder_buffers_then_drops_when_the_store_is_down(shop: str) -> None:
    from datetime import UTC, datetime

    from rollout.store.observations import Observation

    gone = shop.replace("dbname=", "dbname=gone_")
    rec = Recorder(gone, max_buffer=10, retry_delay=0.05)
    try:
        for _ in range(25):
            rec.record(Observation(datetime.now(UTC), "eq", "pilot", "h", None, "shadow", None,
                                   None, 1, 1, 0, 0, None, None, None, None, True, None))
        assert not rec.flush(timeout=0.5)
        assert rec.stats.dropped >= 15
        assert rec.stats.written == 0 and rec.stats.store_errors > 0
    finally:
        rec.close(timeout=0.2)


def test_async_runner(online: tuple[str, Path]) -> None:
    dsn, root = online

    async def main() -> dict[str, Any]:
        ro = await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None)
        async with ro:
            for grp in range(5):
                rows = await ro.query("eq", Context(tenant="acme"), {"grp": grp})
                assert rows == legacy_rows(dsn, "acme", grp, EQ_LEGACY)
                rows = await ro.query("boom", Context(tenant="acme"), {"grp": grp})
                assert rows == legacy_rows(dsn, "acme", grp)
            assert await ro.drain()
            return ro.get_stats()

    stats = asyncio.run(main())
    assert stats["shadowed"] == 10
    assert stats["background_failures"] == {"22012": 5}
    assert [o[2] for o in online_observations(dsn, "eq")] == [True] * 5


def test_server_restart_mid_run(online: tuple[str, Path], server_dsn: str) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, pool_size=4) as ro:
        # several connections in the pool, all of which the restart kills
        threads = [threading.Thread(target=ro.query, args=("eq", Context(tenant="acme"),
                                                            {"grp": g})) for g in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for grp in range(4):
            assert ro.query("eq", Context(tenant="acme"), {"grp": grp}) == legacy_rows(
                dsn, "acme", grp, EQ_LEGACY)
        assert ro.drain()
        restart_server(server_dsn)
        # the pooled connections are dead: reads are retried once on a fresh connection
        for grp in range(4, 10):
            assert ro.query("eq", Context(tenant="acme"), {"grp": grp}) == legacy_rows(
                dsn, "acme", grp, EQ_LEGACY)
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
    assert stats["serving_failures"] == {}
    assert stats["internal_errors"] == 0
    observed = online_observations(dsn, "eq")
    assert len(observed) == 14  # failed shadow executions are observations too
    with psycopg.connect(dsn) as conn:
        # both paths of a pair ran in the background, each failure counted once
        states = [s for row in conn.execute(
            "SELECT legacy_sqlstate, new_sqlstate FROM rollout.observations"
            " WHERE flag = 'eq' AND mode = 'ab'") for s in row if s is not None]
    assert len(states) == sum(stats["background_failures"].values()) > 0
    assert set(states) <= {"57P01", "08000", "08003"}
    assert observed[-1][2] is True  # the shadow pool recovered too


def test_stage_impact_before_and_after_a_stage_change(online: tuple[str, Path]) -> None:
    from rollout.commands import report

    dsn, root = online
    session = Session(root, dsn=dsn, say=lambda m: None)
    acme = Context(tenant="acme")
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, pool_stats_interval=0.05) as ro:
        for grp in range(10):
            ro.query("eq", acme, {"grp": grp})
        assert ro.drain()
        # a pool-statistics snapshot lands before the change (polled, with a deadline)
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while not conn.execute("SELECT count(*) FROM rollout.pool_stats WHERE 'eq' ="
                                   " ANY(flags)").fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "no pool statistics recorded"
                time.sleep(0.01)
        flag_set(session, "eq", "everyone", actor="rm", reason="serve everyone")
        deadline = time.monotonic() + 10
        while ro.decide("eq", acme).path != "new":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for grp in range(7):
            ro.query("eq", acme, {"grp": grp})
        assert ro.drain()
    body = report(session, "eq", stage="everyone", formats=["json"]).body
    impact = body["stage_impact"]
    assert impact["from_stage"] == "pilot" and impact["by"] == "rm"
    before, after = impact["before"], impact["after"]
    assert (before["requests"], before["served_new"]) == (10, 0)
    assert (after["requests"], after["served_new"]) == (7, 7)
    assert before["p50_ms"] > 0 and after["p50_ms"] > 0
    assert before["pools"]["requests"]["requests"] >= 10
    assert after["pools"]["requests"]["requests"] >= 7
    assert body["samples"] == 0  # serving-only requests are traffic, not comparisons
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT count(*), sum(requests) FROM rollout.pool_stats"
                            " WHERE pool = 'requests'").fetchone()
    assert rows is not None and rows[0] >= 2 and rows[1] == 17
