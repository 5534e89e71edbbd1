"""The online runner under hostile use: a tenant smuggled in params, a kill under load,
queued shadows gone stale, and rows a service can use (issue 13)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg.rows import class_row, dict_row, namedtuple_row

from rollout import AsyncRollout, Context, Rollout, Workspace
from rollout.commands import Session, flag_kill, flag_set
from rollout.errors import InputError
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import (
    EQ_LEGACY,
    EQUIVALENT,
    LEGACY,
    PATIENT,
    legacy_rows,
    online_observations,
    run_cli,
    table_checksums,
)

NAP = ("SELECT id, val FROM items, pg_sleep(0.1) WHERE tenant = %(tenant)s"
       " AND grp = %(grp)s ORDER BY id")
FLAGS = {
    "eq": EQUIVALENT + PATIENT,
    "nap": flag_yaml("nap", LEGACY, NAP, extra=PATIENT),  # queued jobs never go stale
    "lag": flag_yaml("lag", LEGACY, NAP),  # online.max_lag_ms: the default
}
ACME = Context(tenant="acme")


@pytest.fixture
def online(shop: str, make_workspace: WorkspaceMaker) -> tuple[str, Path]:
    root = make_workspace(FLAGS)
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in FLAGS:
        flag_set(session, name, "pilot", actor="test", reason="runner safety tests")
    return shop, root


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.002)


async def await_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.002)


def requests_made(ro: Rollout | AsyncRollout) -> int:
    return int(ro.pool.get_stats().get("requests_num", 0))


# -- tenant safety ----------------------------------------------------------------------------
SMUGGLED = [
    (ACME, {"tenant": "globex", "grp": 1}),  # the decision is acme's, the rows globex's
    (Context(), {"tenant": "acme", "grp": 1}),  # no tenant decided, one queried
    (ACME, {"tenant": None, "grp": 1}),
]


def test_a_tenant_in_params_never_overrides_the_context(online: tuple[str, Path]) -> None:
    dsn, root = online
    before = table_checksums(dsn)
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, pool_stats_interval=None) as ro:
        made = requests_made(ro)
        for ctx, params in SMUGGLED:
            with pytest.raises(InputError, match=r"^flag 'eq': params\['tenant'\] differs "
                                                 r"from Context.tenant") as err:
                ro.query("eq", ctx, params)
            assert "globex" not in str(err.value)  # names the flag, not the values
        with pytest.raises(InputError, match=r"^flag 'eq': missing query parameter grp "):
            ro.query("eq", ACME, {"note": "x"})
        # before any I/O: no connection asked of the pool, nothing decided, nothing recorded
        assert requests_made(ro) == made
        stats = ro.get_stats()
        assert stats["decisions"] == {} and stats["serving_failures"] == {}
        # the context's own tenant, repeated in params, is harmless
        assert ro.query("eq", ACME, {"tenant": "acme", "grp": 1}) == legacy_rows(
            dsn, "acme", 1, EQ_LEGACY)
        assert ro.drain()
    assert [o[0] for o in online_observations(dsn, "eq")] == ["acme"]
    assert table_checksums(dsn) == before


def test_async_tenant_safety(online: tuple[str, Path]) -> None:
    dsn, root = online

    async def main() -> None:
        async with await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None,
                                              pool_stats_interval=None) as ro:
            made = requests_made(ro)
            for ctx, params in SMUGGLED:
                with pytest.raises(InputError, match=r"^flag 'eq': params\['tenant'\]"):
                    await ro.query("eq", ctx, params)
            with pytest.raises(InputError, match=r"^flag 'eq': missing query parameter grp "):
                await ro.query("eq", ACME)
            assert requests_made(ro) == made
            assert ro.get_stats()["decisions"] == {}

    asyncio.run(main())
    assert online_observations(dsn, "eq") == []


# -- a kill stops everything ------------------------------------------------------------------
def test_a_kill_under_load_stops_every_shadow_within_100ms(online: tuple[str, Path]) -> None:
    dsn, root = online
    n = 60  # 0.1 s each on 2 workers: seconds of queued shadow work when the kill lands
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, shadow_workers=2,
                         pool_stats_interval=None) as ro:
        for i in range(n):
            assert ro.query("nap", ACME, {"grp": i % 10}) == legacy_rows(dsn, "acme", i % 10)
        wait_for(lambda: "nap" in ro.last_started, "the first shadow to start")
        flag_kill(Session(root, dsn=dsn, say=lambda m: None), "nap", actor="test",
                  reason="kill under load")
        wait_for(lambda: "nap" in ro.killed_at, "the runner to apply the kill")
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
        killed_at, last_start = ro.killed_at["nap"], ro.last_started["nap"]
    # Compared with the moment this runner applied the kill (not a wall-clock duration):
    # nothing of the flag started more than 100 ms later.
    assert last_start <= killed_at + 0.1
    assert stats["dropped_killed"] > 0
    assert stats["shadowed"] + stats["dropped_killed"] == n
    assert len(online_observations(dsn, "nap")) == stats["shadowed"]


def test_async_kill_under_load(online: tuple[str, Path]) -> None:
    dsn, root = online
    n = 60

    async def main() -> tuple[dict[str, Any], float, float]:
        async with await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None,
                                              pool_stats_interval=None) as ro:
            for i in range(n):
                await ro.query("nap", ACME, {"grp": i % 10})
            await await_for(lambda: "nap" in ro.last_started, "the first shadow to start")
            await asyncio.to_thread(flag_kill, Session(root, dsn=dsn, say=lambda m: None),
                                    "nap", actor="test", reason="kill under load")
            await await_for(lambda: "nap" in ro.killed_at, "the runner to apply the kill")
            assert await ro.drain(timeout=30)
            return ro.get_stats(), ro.killed_at["nap"], ro.last_started["nap"]

    stats, killed_at, last_start = asyncio.run(main())
    assert last_start <= killed_at + 0.1
    assert stats["dropped_killed"] > 0
    assert stats["shadowed"] + stats["dropped_killed"] == n


def test_a_worker_rechecks_the_live_decision_before_it_starts(
    online: tuple[str, Path]
) -> None:
    """No kill: the stage moves on to serving new (without verify_new), so the queued shadow
    jobs no longer have a reason to run; the workers' re-check drops them."""
    dsn, root = online
    n = 30
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, shadow_workers=2,
                         pool_stats_interval=None) as ro:
        for i in range(n):
            ro.query("nap", ACME, {"grp": i % 10})
        wait_for(lambda: "nap" in ro.last_started, "the first shadow to start")
        flag_set(Session(root, dsn=dsn, say=lambda m: None), "nap", "everyone",
                 actor="test", reason="serve new")
        wait_for(lambda: ro.decide("nap", ACME).path == "new", "the stage change")
        changed = time.monotonic()
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
        last_start = ro.last_started["nap"]
    assert last_start <= changed
    assert stats["dropped_decision_changed"] > 0 and stats["dropped_killed"] == 0
    assert stats["shadowed"] + stats["dropped_decision_changed"] == n


# -- shadows are fresh or not compared --------------------------------------------------------
def test_stale_jobs_are_dropped_not_compared(online: tuple[str, Path]) -> None:
    dsn, root = online
    n = 20  # one worker, 0.1 s a shadow: most jobs wait far beyond the default 250 ms
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, shadow_workers=1,
                         pool_stats_interval=None) as ro:
        ro.query("eq", ACME, {"grp": 1})  # the shadow pool's connection is up: no first wait
        assert ro.drain()
        for i in range(n):
            ro.query("lag", ACME, {"grp": i % 10})
        assert ro.drain(timeout=30)
        stats = ro.get_stats()
    assert stats["dropped_stale"] > 0 and stats["shadowed"] >= 2  # the warm-up, the first
    assert stats["shadowed"] + stats["dropped_stale"] == n + 1
    assert len(online_observations(dsn, "lag")) == stats["shadowed"] - 1


def test_max_lag_ms_is_read_from_the_flag_file(make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"lag": FLAGS["lag"], "nap": FLAGS["nap"]})
    flags = Workspace.load(root).flags
    assert flags["lag"].online.max_lag_ms == 250
    assert flags["nap"].online.max_lag_ms == 600_000


@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be between 1 and 600000, got 0"),
    ("soon", "must be a number, got text"),
    ("2.5", "must be a whole number"),
    ("600001", "must be between 1 and 600000, got 600001"),
])
def test_bad_max_lag_ms_is_one_clear_line(value: str, message: str,
                                          make_workspace: WorkspaceMaker,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = flag_yaml("lag", LEGACY, NAP, extra=f"online:\n  max_lag_ms: {value}\n")
    root = make_workspace({"lag": text})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    line = text.splitlines().index(f"  max_lag_ms: {value}") + 1
    assert re.fullmatch(rf"flags/lag.yaml:{line}: online.max_lag_ms: {re.escape(message)}",
                        lines[0]), lines[0]


# -- rows a service can use -------------------------------------------------------------------
@dataclass
class Item:
    id: int
    val: float
    note: str | None


def test_row_factories_for_the_caller_comparison_on_tuples(online: tuple[str, Path]) -> None:
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, pool_stats_interval=None) as ro:
        plain = ro.query("eq", ACME, {"grp": 2})
        dicts = ro.query("eq", ACME, {"grp": 2}, row_factory=dict_row)
        named = ro.query("eq", ACME, {"grp": 2}, row_factory=namedtuple_row)
        items = ro.query("eq", ACME, {"grp": 2}, row_factory=class_row(Item))
        none = ro.query("eq", ACME, {"grp": 99}, row_factory=dict_row)
        assert ro.drain()
        stats = ro.get_stats()
    assert plain == legacy_rows(dsn, "acme", 2, EQ_LEGACY) and plain
    assert dicts == [{"id": r[0], "val": r[1], "note": r[2]} for r in plain]
    assert [tuple(r) for r in named] == plain and named[0]._fields == ("id", "val", "note")
    assert items == [Item(*r) for r in plain]
    assert none == []
    # the shadow compared plain tuples, as before: every comparison matched
    assert stats["shadowed"] == 5 and stats["compare_errors"] == 0
    assert [o[2] for o in online_observations(dsn, "eq")] == [True] * 5


def test_async_row_factory(online: tuple[str, Path]) -> None:
    dsn, root = online

    async def main() -> list[dict[str, Any]]:
        async with await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None,
                                              pool_stats_interval=None) as ro:
            rows = await ro.query("eq", ACME, {"grp": 3}, row_factory=dict_row)
            assert await ro.drain()
            return rows

    rows = asyncio.run(main())
    assert rows == [{"id": r[0], "val": r[1], "note": r[2]}
                    for r in legacy_rows(dsn, "acme", 3, EQ_LEGACY)]
    assert [o[2] for o in online_observations(dsn, "eq")] == [True]
