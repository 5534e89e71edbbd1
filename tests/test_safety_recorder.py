"""Hostile input to the recorder: a row the store refuses never costs the rows around it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from rollout import Context, Rollout
from rollout.online.recorder import Recorder
from rollout.store.observations import Observation

from .conftest import WorkspaceMaker, flag_yaml


def _obs(tenant: str | None, params: dict[str, object] | None = None) -> Observation:
    return Observation(datetime.now(UTC), "eq", "pilot", "h", tenant, "shadow", "legacy",
                       params or {}, 1, 2, 3, 3, None, None, None, None, True, None,
                       source="online")


def _stored(dsn: str) -> list[str | None]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT tenant FROM rollout.observations WHERE flag = 'eq' ORDER BY id")]


def test_a_poisoned_row_is_dropped_and_counted_the_rest_lands(shop: str) -> None:
    rec = Recorder(shop, batch_size=50)
    try:
        rec.record(_obs("acme"))
        rec.record(_obs("ac\x00me"))  # PostgreSQL text cannot hold NUL: the store refuses it
        rec.record(_obs("globex", {"weird": object()}))  # not JSON: refused before the store
        for i in range(20):
            rec.record(_obs(f"t{i}"))
        assert rec.flush(timeout=20)
    finally:
        rec.close()
    stored = _stored(shop)
    assert len(stored) == 21 and "ac\x00me" not in stored and "globex" not in stored
    assert stored[0] == "acme" and stored[-1] == "t19"
    assert rec.stats.rejected == 2 and rec.stats.written == 21
    # later observations keep landing after the bad one
    rec2 = Recorder(shop)
    try:
        rec2.record(_obs("after"))
        assert rec2.flush(timeout=10)
    finally:
        rec2.close()
    assert _stored(shop)[-1] == "after"


def test_online_request_with_a_nul_tenant_loses_no_later_observation(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    legacy = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"
    root: Path = make_workspace({"eq": flag_yaml("eq", legacy, legacy)})
    with psycopg.connect(shop, autocommit=True) as conn:
        from rollout.flags.state import change
        from rollout.flags.workspace import Workspace
        from rollout.store.store import Store

        flag = Workspace.load(root).flag("eq")
        Store.open(conn)
        # everyone is served the new path: a failing request is recorded with its tenant
        change(conn, flag, "set", actor="test", reason="start", stage="everyone")
    ro = Rollout.connect(shop, workspace=root, pool_stats_interval=None)
    try:
        with pytest.raises(psycopg.Error):
            ro.query("eq", Context(tenant="ac\x00me"), {"grp": 1})
        for grp in range(5):
            ro.query("eq", Context(tenant="acme"), {"grp": grp})
        assert ro.drain(timeout=20)
        stats = ro.get_stats()["recorder"]
    finally:
        ro.close()
    assert stats["written"] >= 5
    assert _stored(shop).count("acme") == 5
