"""One fixture chain: a server (ROLLOUT_TEST_DSN or embedded), then a database per test."""

from __future__ import annotations

import os
import secrets
import shutil
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rollout.store.connection import start_embedded, stop_embedded

if TYPE_CHECKING:
    from tests.chromium import DevTools

# The shared modules assert too: rewritten like the tests, a failure there shows its values.
pytest.register_assert_rewrite("tests.chromium", "tests.helpers", "tests.report_builder")

REPO = Path(__file__).resolve().parent.parent


TEST_LOGIN = "rollout_tester"
"""The login tests run the toolkit as: like a careful user's, it owns its test database and
nothing beyond it (no superuser, no CREATEROLE, no server programs or files)."""


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin DSN: ROLLOUT_TEST_DSN, else an embedded PostgreSQL started once per run and
    stopped when the run ends (nothing outlives the test run)."""
    dsn = os.environ.get("ROLLOUT_TEST_DSN")
    data = None
    if not dsn:
        data = tmp_path_factory.mktemp("pg") / "data"
        dsn = start_embedded(data, database="postgres", keep_running=False)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.exit(f"cannot connect to the test PostgreSQL: {exc}", returncode=2)
    try:
        yield dsn
    finally:
        if data is not None:
            stop_embedded(data)


@pytest.fixture(scope="session")
def tester(server_dsn: str) -> dict[str, str]:
    """Connection parameters of the least-privilege test login (created once per run)."""
    password = secrets.token_hex(12)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        role = sql.Identifier(TEST_LOGIN)
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [TEST_LOGIN]).fetchone():
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, password))
        else:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                                 " PASSWORD {}").format(role, password))
    return {"user": TEST_LOGIN, "password": password}


def _dsn(server_dsn: str, **changes: str) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(server_dsn).items() if v is not None}
    params.update(changes)
    return make_conninfo(**params)


@pytest.fixture
def db_name(server_dsn: str, tester: dict[str, str]) -> Iterator[str]:
    """A fresh, empty database owned by the test login; dropped afterwards."""
    name = f"rollout_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(tester["user"])))
    yield name
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def db(server_dsn: str, db_name: str, tester: dict[str, str]) -> str:
    """A fresh database for one test, as the least-privilege test login (its owner)."""
    return _dsn(server_dsn, dbname=db_name, **tester)


@pytest.fixture
def db_admin(server_dsn: str, db_name: str) -> str:
    """The same database as ``db``, as the server's administrator (for what a careful user
    would do as an admin: roles, server settings, restarts)."""
    return _dsn(server_dsn, dbname=db_name)


FIXTURE_SCHEMA = """
CREATE TABLE items (
    id      integer PRIMARY KEY,
    tenant  text NOT NULL,
    grp     integer NOT NULL,
    val     double precision NOT NULL,
    note    text
);
INSERT INTO items
SELECT n, (ARRAY['acme', 'globex', 'initech'])[1 + n % 3], n % 10, (n % 17) - 3,
       CASE WHEN n % 5 = 0 THEN NULL ELSE 'n' || n END
FROM generate_series(1, 3000) AS n;
ANALYZE items;
"""


@pytest.fixture
def shop(db: str) -> str:
    """A small fixture schema (table ``items``) in a fresh database; returns its DSN."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(FIXTURE_SCHEMA.encode())
    return db


def flag_yaml(name: str, legacy: str, new: str, *, kind: str = "read", order: str = "strict",
              min_samples: int = 60, rollback: str | None = "script", extra: str = "") -> str:
    """A flag file for the fixture schema; ``rollback='script'`` names rollback/NAME.sql."""
    rb = {"script": f"rollback:\n  script: rollback/{name}.sql\n",
          None: ""}.get(rollback, rollback or "")
    return textwrap.dedent(f"""\
        name: {name}
        description: fixture flag {name}
        owner: tests
        kind: {kind}
        queries:
          legacy: |
        {textwrap.indent(legacy.strip(), '    ')}
          new: |
        {textwrap.indent(new.strip(), '    ')}
        params:
          sample: SELECT DISTINCT grp FROM items WHERE tenant = %(tenant)s LIMIT %(limit)s
          tenants: SELECT DISTINCT tenant FROM items ORDER BY 1
        compare:
          order: {order}
        stages:
          - name: pilot
            shadow: {{tenants: [acme, globex]}}
          - name: everyone
            serve: {{tenants: ["*"]}}
        gates:
          min_samples: {min_samples}
          latency: {{quantile: 0.95, max_regression: 5.0, confidence: 0.98}}
        """) + rb + extra


WorkspaceMaker = Callable[..., Path]


@pytest.fixture
def make_workspace(tmp_path: Path) -> WorkspaceMaker:
    """Write flag files (name -> YAML text) into a fresh workspace; returns its root."""

    def make(flags: dict[str, str], files: dict[str, str] | None = None) -> Path:
        root = tmp_path / "ws"
        for sub in ("flags", "rollback", "reports", "queries"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for name, text in flags.items():
            (root / "flags" / f"{name}.yaml").write_text(text)
            (root / "rollback" / f"{name}.sql").write_text(f"-- undo of {name}\nSELECT 1;\n")
        for rel, text in (files or {}).items():
            (root / rel).write_text(text)
        return root

    return make


@pytest.fixture
def demo_workspace(tmp_path: Path) -> Path:
    """A copy of the repository's example workspace (flags, queries, rollback)."""
    root = tmp_path / "demo-ws"
    for sub in ("flags", "queries", "rollback"):
        shutil.copytree(REPO / sub, root / sub)
    (root / "reports").mkdir()
    return root


@pytest.fixture
def tasks(db: str) -> str:
    """``db`` with the skewed ``tasks`` table (tests.helpers.SKEWED)."""
    from tests.helpers import SKEWED

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SKEWED.encode())
    return db


@pytest.fixture
def orders(db: str) -> str:
    """``db`` with the ``orders`` of three tenants (tests.helpers.ORDERS)."""
    from tests.helpers import ORDERS

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(ORDERS.encode())
    return db


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """A headless Chromium for the module's tests (tests/chromium.py); they skip when
    ``tests.chromium.BROWSER`` is None."""
    from tests.chromium import BROWSER, DevTools

    assert BROWSER is not None
    home = tmp_path_factory.mktemp("chromium")
    devtools = DevTools(BROWSER, home / "profile", home / "chromium.log")
    try:
        devtools.send("Browser.getVersion")
        yield devtools
    finally:
        devtools.close()
