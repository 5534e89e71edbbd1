"""Offline shadow runs against a real PostgreSQL: matches, caught differences, write safety."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest

from rollout.commands import Session, shadow
from rollout.errors import InputError
from rollout.flags.workspace import Workspace
from rollout.run.shadow import run_shadow
from rollout.store.connection import connect
from rollout.store.observations import COLUMNS
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import DIFFERENT, EQUIVALENT, WRITE, run_cli
from tests.helpers import items_checksum as checksum


def observations(dsn: str, flag: str) -> list[dict[str, object]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM rollout.observations WHERE flag = %s",
                    [flag])
        return cur.fetchall()


def test_equivalent_rewrite_has_zero_mismatches(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    result = run_cli(capsys, "shadow", "eq", "--samples", "40", "--seed", "1",
                     "--workspace", root, "--dsn", shop)
    assert result.code == 0, result.err
    assert "40 samples over acme, globex; 0 mismatches" in result.out
    rows = observations(shop, "eq")
    assert len(rows) == 40
    assert {r["tenant"] for r in rows} == {"acme", "globex"}
    assert all(r["matched"] is True for r in rows)
    assert all(r["legacy_ns"] > 0 and r["new_ns"] > 0 for r in rows)
    assert all(r["legacy_rows"] == r["new_rows"] and r["legacy_rows"] > 0
               for r in rows)
    # Scientist's lesson: both orders occur, so neither path always runs warm.
    assert {r["first_path"] for r in rows} == {"legacy", "new"}


def test_different_rewrite_is_caught_with_the_right_diff(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    root = make_workspace({"diff": DIFFERENT})
    summary = shadow(Session(root, dsn=shop), "diff", samples=20, tenants=["acme"], seed=3)
    rows = observations(shop, "diff")
    assert summary.mismatches == len([r for r in rows if r["matched"] is False]) > 0
    with psycopg.connect(shop) as conn:
        for r in rows:
            grp = r["params"]["grp"]
            negatives = conn.execute(
                "SELECT id, val FROM items WHERE tenant = 'acme' AND grp = %s"
                " AND val < 0 ORDER BY id", [grp]).fetchall()
            if not negatives:
                assert r["matched"] is True
                continue
            assert r["matched"] is False
            diff = r["diff"]
            assert diff[0] == {"kind": "row_count", "legacy": r["legacy_rows"],
                               "new": r["new_rows"]}
            missing = [d["row"] for d in diff if d["kind"] == "missing"]
            assert [(m["id"], m["val"]) for m in missing] == [
                (str(i), str(v)) for i, v in negatives][: len(missing)]
            assert not [d for d in diff if d["kind"] == "extra"]


def test_write_flag_leaves_the_table_unchanged(shop: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"bump": WRITE})
    before = checksum(shop)
    summary = shadow(Session(root, dsn=shop), "bump", samples=30, seed=5)
    assert summary.samples == 30
    assert summary.mismatches == 0
    assert summary.new_failures == 0
    assert checksum(shop) == before
    rows = observations(shop, "bump")
    assert all(r["legacy_rows"] and r["legacy_rows"] == r["new_rows"] for r in rows)


def test_failures_are_recorded_with_sqlstate(shop: str, make_workspace: WorkspaceMaker) -> None:
    flaky = flag_yaml(
        "flaky",
        "SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
        "SELECT id / (grp - 3) AS id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
        " ORDER BY 1",
    )
    root = make_workspace({"flaky": flaky})
    summary = shadow(Session(root, dsn=shop), "flaky", samples=30, tenants=["acme"], seed=2)
    rows = observations(shop, "flaky")
    failed = [r for r in rows if r["new_sqlstate"] is not None]
    assert failed, "grp 3 divides by zero in the new path"
    assert {r["new_sqlstate"] for r in failed} == {"22012"}
    assert all(r["params"]["grp"] == 3 for r in failed)
    assert summary.new_failures == len(failed)
    assert all(r["legacy_sqlstate"] is None for r in rows)


def test_read_flag_cannot_write(shop: str, make_workspace: WorkspaceMaker) -> None:
    sneaky = flag_yaml(
        "sneaky",
        "SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s",
        "UPDATE items SET note = 'x' WHERE tenant = %(tenant)s AND grp = %(grp)s RETURNING id",
        order="ignore",
    )
    # Loading refuses a write in a read flag; the READ ONLY transaction is the mechanism
    # that holds without it: load a clean flag, then put the UPDATE in its place.
    clean = sneaky.replace("UPDATE items SET note = 'x' WHERE tenant = %(tenant)s AND grp ="
                           " %(grp)s RETURNING id",
                           "SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s")
    root = make_workspace({"sneaky": clean})
    loaded = Workspace.load(root).flag("sneaky")
    flag = replace(loaded, new=replace(loaded.new, sql="UPDATE items SET note = 'x' WHERE"
                                       " tenant = %(tenant)s AND grp = %(grp)s RETURNING id"))
    before = checksum(shop)
    with connect(shop, autocommit=True) as target, connect(shop, autocommit=True) as sconn:
        summary = run_shadow(flag, target, Store.open(sconn), stage="pilot", tenants=["acme"],
                             samples=10, dsn=shop)
    assert summary.new_failures == 10
    assert {r["new_sqlstate"] for r in observations(shop, "sneaky")} == {"25006"}
    assert checksum(shop) == before


def test_bad_input_to_shadow(shop: str, make_workspace: WorkspaceMaker,
                             capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    r = run_cli(capsys, "shadow", "eq", "--stage", "nope", "--workspace", root, "--dsn", shop)
    assert r.code == 2
    assert r.err.strip() == ("rollout: error: flag 'eq' has no stage 'nope' "
                             "(stages: pilot, everyone)")
    r = run_cli(capsys, "shadow", "eq", "--samples", "0", "--workspace", root, "--dsn", shop)
    assert r.code == 2 and r.err.strip() == "rollout: error: --samples must be at least 1"
    r = run_cli(capsys, "demo", "--scale", "-1", "--workspace", root, "--dsn", shop)
    assert r.code == 2 and r.err.strip() == "rollout: error: --scale must be positive, got -1"
    r = run_cli(capsys, "shadow", "zzz", "--workspace", root, "--dsn", shop)
    assert r.code == 2 and "unknown flag 'zzz'" in r.err
    broken = EQUIVALENT.replace("FROM items i", "FROM itemz i")
    root = make_workspace({"eq": broken})
    with pytest.raises(InputError, match=r"queries.new: relation \"itemz\" does not exist"):
        shadow(Session(root, dsn=shop), "eq", samples=5)
    with psycopg.connect(shop) as conn:
        row = conn.execute("SELECT count(*) FROM rollout.observations").fetchone()
    assert row == (0,)


def test_store_dsn_keeps_the_toolkit_state_elsewhere(
    shop: str, server_dsn: str, make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"rollout_store_{uuid.uuid4().hex[:8]}"
    params = {k: str(v) for k, v in conninfo_to_dict(shop).items() if v is not None}
    with psycopg.connect(server_dsn, autocommit=True) as conn:  # owned by the test login
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(params["user"])))
    store = make_conninfo(**{**params, "dbname": name})
    root = make_workspace({"eq": EQUIVALENT})
    try:
        for args in (("shadow", "eq", "--samples", "60"), ("report", "eq")):
            r = run_cli(capsys, *args, "--workspace", root, "--dsn", shop, "--store-dsn", store)
            assert r.code == 0, r.err
        with psycopg.connect(store) as conn:
            assert conn.execute("SELECT count(*) FROM rollout.observations").fetchone() == (60,)
            assert conn.execute("SELECT verdict FROM rollout.reports").fetchone() == ("GO",)
        with psycopg.connect(shop) as conn:
            assert conn.execute("SELECT to_regnamespace('rollout')").fetchone() == (None,)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
