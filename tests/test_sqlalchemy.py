"""rollout.sqlalchemy on real engines: Rows back, the background path on the runner's own
shadow pool with the same safety, hostile SQL and callables persist nothing, the docs'
FastAPI example runs."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import column, select, table, text
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from rollout import Context
from rollout.commands import Session, flag_set
from rollout.errors import UnsafeRole
from rollout.flags.workspace import Workspace
from rollout.sqlalchemy import AsyncSQLAlchemyRollout, SQLAlchemyRollout
from tests.conftest import REPO, WorkspaceMaker, flag_yaml
from tests.helpers import LEGACY, PATIENT, table_checksums

INSERT = "INSERT INTO items VALUES (9001, 'acme', 1, 1, 'injected')"
FLAGS = {
    "eq": flag_yaml("eq", LEGACY, LEGACY.replace("ORDER BY id", "ORDER BY 1"), extra=PATIENT),
    "wrong": flag_yaml("wrong", LEGACY, LEGACY.replace("ORDER BY id", "AND val > 0 ORDER BY id"),
                       extra=PATIENT),
    "items-by-group": flag_yaml("items-by-group", LEGACY, LEGACY, extra=PATIENT),
    "w": flag_yaml("w", "UPDATE items SET val = val WHERE id = -1 RETURNING id",
                   "UPDATE items SET val = val WHERE id = -1 RETURNING id", kind="write",
                   extra=PATIENT),
}
items = table("items", column("id"), column("val"), column("tenant"), column("grp"))


def url(dsn: str, driver: str = "postgresql+psycopg") -> sqlalchemy.URL:
    """The test database's URL; host and port as query options (the embedded server's host
    is a socket directory, which a URL's host cannot hold)."""
    p = conninfo_to_dict(dsn)
    query = {k: str(p[k]) for k in ("host", "port") if p.get(k)}
    return sqlalchemy.URL.create(driver, username=p.get("user"), password=p.get("password"),
                                 database=p.get("dbname"), query=query)


@pytest.fixture
def online(shop: str, make_workspace: WorkspaceMaker) -> tuple[str, Path]:
    root = make_workspace(FLAGS)
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in FLAGS:
        flag_set(session, name, "pilot", actor="test", reason="sqlalchemy tests")
    return shop, root


@pytest.fixture
def engine(online: tuple[str, Path]) -> Any:
    eng = sqlalchemy.create_engine(url(online[0]), pool_size=3)
    yield eng
    eng.dispose()


def observations(dsn: str, flag: str, mode: str = "ab") -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT decision, matched, new_sqlstate, legacy_sqlstate, new_error, source"
            " FROM rollout.observations WHERE flag = %s AND mode = %s ORDER BY id",
            [flag, mode]).fetchall()


def expected(dsn: str, tenant: str, grp: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(LEGACY.encode(), {"tenant": tenant, "grp": grp}).fetchall()


def test_query_returns_rows_and_shadows_on_the_runners_pool(
        online: tuple[str, Path], engine: Engine) -> None:
    dsn, root = online
    with SQLAlchemyRollout(engine, workspace=root, shadow_budget=None,
                           pool_stats_interval=None) as ro:
        for grp in range(6):
            rows = ro.query("eq", Context(tenant="acme"), {"grp": grp})
            assert rows and all(isinstance(r, Row) for r in rows)
            assert [tuple(r) for r in rows] == expected(dsn, "acme", grp)
            assert rows[0]._mapping["val"] == rows[0].val
            ro.query("wrong", Context(tenant="acme"), {"grp": grp})
            assert ro.query("eq", Context(tenant="initech"), {"grp": grp})  # legacy only
        assert ro.drain()
        stats = ro.get_stats()
        assert stats.pool["pool_size"] >= 1  # the application's engine, read as a pool
    assert stats.shadowed == 12 and stats.decisions == {"shadow": 12, "legacy": 6}
    eq = observations(dsn, "eq")
    assert len(eq) == 6 and all(o == ("shadow", True, None, None, None, "online") for o in eq)
    assert len(observations(dsn, "eq", "aa")) == 6  # served rows against their re-run
    assert any(o[1] is False for o in observations(dsn, "wrong"))
    # the shadows ran on the runner's shadow pool, not on the application's engine
    with psycopg.connect(dsn) as conn:
        apps = {r[0] for r in conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
    assert "pg-rollout-requests" not in apps


def test_run_callables_take_sqlalchemy_connections(
        online: tuple[str, Path], engine: Engine) -> None:
    dsn, root = online

    def legacy(conn: Connection) -> list[Row[Any]]:
        return list(conn.execute(text(LEGACY.replace("%(tenant)s", ":tenant")
                                      .replace("%(grp)s", ":grp")),
                                 {"tenant": "acme", "grp": 3}).all())

    def new(conn: Connection) -> list[Row[Any]]:  # Core, not text
        return list(conn.execute(select(items.c.id, items.c.val).where(
            items.c.tenant == "acme", items.c.grp == 3).order_by(items.c.id)).all())

    def dropping(conn: Connection) -> list[Row[Any]]:
        return new(conn)[1:]

    with SQLAlchemyRollout(engine, workspace=root, shadow_budget=None,
                           pool_stats_interval=None) as ro:
        for _ in range(4):
            value = ro.run("eq", Context(tenant="acme"), legacy=legacy, new=new)
            assert [tuple(r) for r in value] == expected(dsn, "acme", 3)
            ro.run("wrong", Context(tenant="acme"), legacy=legacy, new=dropping)
        assert ro.drain()
        stats = ro.get_stats()
        # SQLAlchemy's notice handler is added per lent connection and taken off at
        # check-in: nothing accumulates on the shadow pool's connections
        with ro.shadow_pool.connection() as conn:
            assert len(conn._notice_handlers) <= 1
    assert stats.background_failures == {} and stats.internal_errors == 0
    assert [o[1] for o in observations(dsn, "eq")] == [True] * 4
    wrong = observations(dsn, "wrong")
    assert len(wrong) == 4 and all(o[1] is False for o in wrong)


def test_hostile_sql_through_the_sqlalchemy_path_persists_nothing(
        online: tuple[str, Path], engine: Engine) -> None:
    """Validation bypassed (the SQL replaced after loading): the served statement and the
    shadowed one are each one statement, so `SELECT 1; COMMIT; INSERT ...` is refused by
    the server on both sides; a lone COMMIT in the shadow ends nothing that persists."""
    dsn, root = online
    ws = Workspace.load(root)
    f = ws.flags["eq"]
    ws.flags["eq"] = replace(f, legacy=replace(f.legacy, sql=f"SELECT 1 AS x; COMMIT; {INSERT}"
                                               "; SELECT 1 AS x WHERE %(grp)s::int > 0"
                                               " AND %(tenant)s IS NOT NULL"),
                             new=replace(f.new, sql=f"ROLLBACK; {INSERT}; SELECT 1 AS x"
                                         " WHERE %(grp)s::int > 0 AND %(tenant)s IS NOT NULL"))
    g = ws.flags["wrong"]
    ws.flags["wrong"] = replace(g, new=replace(g.new, sql=f"{INSERT} RETURNING id"))
    before = table_checksums(dsn)
    with SQLAlchemyRollout(engine, workspace=ws, shadow_budget=None,
                           pool_stats_interval=None) as ro:
        with pytest.raises(sqlalchemy.exc.ProgrammingError, match="multiple commands"):
            ro.query("eq", Context(tenant="initech"), {"grp": 1})  # served: legacy
        for grp in range(3):
            ro.query("wrong", Context(tenant="acme"), {"grp": grp})  # an INSERT shadowed
        assert ro.drain()
        stats = ro.get_stats()
    assert table_checksums(dsn) == before
    assert stats.serving_failures == {"42601": 1}
    # the shadowed INSERT in a read-only transaction: refused (25006), rolled back anyway
    assert {o[2] for o in observations(dsn, "wrong")} == {"25006"}
    # and the application's engine is still usable, its session clean
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM items WHERE id = 9001")).scalar() == 0


def test_hostile_callables_in_the_background_persist_nothing(
        online: tuple[str, Path], engine: Engine) -> None:
    """A shadowed callable that inserts and commits through SQLAlchemy: psycopg refuses the
    commit inside the runner's transaction, the failure is recorded, nothing persists; a
    write flag's callable that inserts is rolled back."""
    dsn, root = online

    def legacy(conn: Connection) -> int:
        return 1

    def committing(conn: Connection) -> int:
        conn.execute(text(INSERT))
        conn.commit()
        return 1

    def writing(conn: Connection) -> int:
        conn.execute(text(INSERT.replace("9001", "9002")))
        return 1

    before = table_checksums(dsn)
    with SQLAlchemyRollout(engine, workspace=root, shadow_budget=None,
                           pool_stats_interval=None) as ro:
        assert ro.run("eq", Context(tenant="acme"), legacy=legacy, new=committing) == 1
        assert ro.run("w", Context(tenant="acme"), legacy=legacy, new=writing) == 1
        assert ro.run("w", Context(tenant="acme"), legacy=legacy, new=committing) == 1
        assert ro.drain()
        stats = ro.get_stats()
    assert table_checksums(dsn) == before
    errors = [(o[2], o[4]) for f in ("eq", "w") for o in observations(dsn, f)
              if o[4] is not None]
    # read flag: the INSERT is refused in the read-only transaction (25006); write flag: the
    # commit is refused by psycopg inside the runner's transaction (no SQLSTATE)
    assert sorted(e[0] or "" for e in errors) == ["", "25006"]
    assert any("commit() forbidden" in e[1] for e in errors)
    assert stats.background_failures == {"25006": 1, "other": 1}


def test_a_login_that_reaches_past_the_database_is_refused(
        online: tuple[str, Path], db_admin: str) -> None:
    _, root = online
    admin = sqlalchemy.create_engine(url(db_admin))
    try:
        with pytest.raises(UnsafeRole):
            SQLAlchemyRollout(admin, workspace=root)
        with pytest.raises(ValueError, match="postgresql\\+psycopg"):
            SQLAlchemyRollout(sqlalchemy.create_engine("sqlite://"), workspace=root)
    finally:
        admin.dispose()


def test_async_engine(online: tuple[str, Path]) -> None:
    dsn, root = online

    async def new(conn: AsyncConnection) -> list[Row[Any]]:
        result = await conn.execute(select(items.c.id, items.c.val).where(
            items.c.tenant == "acme", items.c.grp == 2).order_by(items.c.id))
        return list(result.all())

    async def main() -> tuple[Any, Any]:
        eng = create_async_engine(url(dsn))
        ro = await AsyncSQLAlchemyRollout.connect(eng, workspace=root, shadow_budget=None,
                                                  pool_stats_interval=None)
        try:
            rows = await ro.query("eq", Context(tenant="acme"), {"grp": 2})
            assert all(isinstance(r, Row) for r in rows)
            value = await ro.run("eq", Context(tenant="acme"), legacy=new, new=new)
            assert await ro.drain()
            return [tuple(r) for r in rows], ([tuple(r) for r in value], ro.get_stats())
        finally:
            await ro.close()
            await eng.dispose()

    rows, (value, stats) = asyncio.run(main())
    assert rows == value == expected(dsn, "acme", 2)
    assert stats.shadowed == 2 and stats.background_failures == {}
    assert [o[1] for o in observations(dsn, "eq")] == [True, True]


def test_the_docs_fastapi_example_runs(online: tuple[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/sqlalchemy.md's FastAPI block, as written, with FastAPI's ASGI test client."""
    from fastapi.testclient import TestClient

    dsn, root = online
    doc = (REPO / "docs" / "sqlalchemy.md").read_text()
    section = doc[doc.index("## Example: FastAPI"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    monkeypatch.setenv("DATABASE_URL", url(dsn).render_as_string(hide_password=False))
    monkeypatch.setenv("ROLLOUT_WORKSPACE", str(root))
    namespace: dict[str, Any] = {"__name__": "example"}
    exec(compile(code.group(1), "docs/sqlalchemy.md", "exec"), namespace)
    before = table_checksums(dsn)
    with TestClient(namespace["app"]) as client:
        for grp in range(3):
            response = client.get(f"/groups/{grp}/items", headers={"x-tenant": "acme"})
            assert response.status_code == 200
            assert [(r["id"], r["val"]) for r in response.json()] == expected(dsn, "acme", grp)
        ro = namespace["app"].state.rollout
        stats = ro.get_stats()
        assert stats.decisions == {"shadow": 3}
    assert table_checksums(dsn) == before
    # the lifespan's close() finished the shadows and flushed their observations; the default
    # shadow budget (2 % of wall time) may drop a job on a loaded host, and says so
    shadowed = 3 - stats.dropped_budget
    assert shadowed >= 1
    assert [o[:2] for o in observations(dsn, "items-by-group")] == [("shadow", True)] * shadowed
