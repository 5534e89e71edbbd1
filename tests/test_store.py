"""Schema ``rollout``: versioned migrations applied once, concurrently safe, refusing newer."""

from __future__ import annotations

import threading

import psycopg
import pytest

from rollout.errors import StoreError
from rollout.store.store import Store, migrate, migrations


def test_migrations_are_idempotent(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        first = migrate(conn)
        assert first == [name for _, name, _ in migrations()]
        assert migrate(conn) == []
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'rollout'")}
    assert {"runs", "observations", "reports", "schema_migrations"} <= tables


def test_concurrent_first_runs_migrate_once(db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(db, autocommit=True) as conn:
                results.append(migrate(conn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations())]


def test_newer_schema_is_refused(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        migrate(conn)
        conn.execute("INSERT INTO rollout.schema_migrations (version, name) VALUES (999, 'x')")
        with pytest.raises(StoreError, match="newer than this toolkit knows"):
            migrate(conn)


def test_runs_say_how_they_ended(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        store = Store.open(conn)
        started = dict(flag="f", stage="pilot", sql_hash="h", tenants=["acme", None],
                       requested=60, target="test", server_version="18")
        cut = store.start_run(**started)
        store.finish_run(cut, 12, status="failed", reason="terminated (SIGTERM)" + "!" * 600)
        hanging = store.start_run(**started)
        runs = store.runs("f", "pilot", "h")
    assert [(r["run_id"], r["status"], r["samples"], r["requested"]) for r in runs] == [
        (cut, "failed", 12, 60), (hanging, "running", 0, 60)]
    assert runs[0]["reason"].startswith("terminated (SIGTERM)!")
    assert len(runs[0]["reason"]) == 500  # bounded, whatever the exception said
    assert runs[1]["reason"] is None and runs[1]["finished_at"] is None
