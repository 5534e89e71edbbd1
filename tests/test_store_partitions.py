"""The partitioned store: a v8 store migrates with every row, days are ready before they come,
a wrong clock lands in the default partition, 8 recording processes lose and duplicate
nothing, the report's reads use the indexes and read across partitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rollout.store.store import (
    DAYS_AHEAD,
    DEFAULT_PARTITION,
    OBSERVATIONS_SQL,
    ONLINE_WINDOW_SQL,
    Store,
    create_partition,
    daily_partitions,
    day_start,
    migrate,
    migrations,
    partition_name,
)

from .conftest import REPO, WorkspaceMaker, flag_yaml
from .helpers import obs, run_cli, where_rows_are
from .helpers import observations_checksum as checksum


def store_at_version_8(conn: psycopg.Connection[Any]) -> None:
    """Schema rollout as toolkit version 8 left it: migrations 1..8, applied as migrate()
    applies them, each recorded."""
    with conn.transaction():
        conn.execute("CREATE SCHEMA rollout")
        conn.execute("CREATE TABLE rollout.schema_migrations (version integer PRIMARY KEY,"
                     " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for version, name, text in migrations():
            if version <= 8:
                conn.execute(text.encode())
                conn.execute("INSERT INTO rollout.schema_migrations (version, name)"
                             " VALUES (%s, %s)", [version, name])


def kind(conn: psycopg.Connection[Any], table: str) -> str | None:
    row = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n"
                       " ON n.oid = c.relnamespace WHERE n.nspname = 'rollout'"
                       " AND c.relname = %s", [table]).fetchone()
    return None if row is None else str(row[0])


TODAY = datetime.now(UTC).date()


def test_a_version_8_store_migrates_keeping_every_row(db: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db, autocommit=True) as conn:
        store_at_version_8(conn)
        run_id = uuid.uuid4()
        conn.execute("INSERT INTO rollout.runs (run_id, flag, stage, source, sql_hash,"
                     " toolkit_version) VALUES (%s, 'f', 'pilot', 'offline', 'h', '0')",
                     [run_id])
        # every column filled or NULL, three weeks of hours, a wrong clock either way
        conn.execute(
            "INSERT INTO rollout.observations (run_id, batch_id, observed_at, flag, stage,"
            " sql_hash, tenant, decision, first_path, params, legacy_ns, new_ns, legacy_rows,"
            " new_rows, legacy_sqlstate, new_sqlstate, legacy_error, new_error, matched, diff,"
            " source, mode, legacy_lock_wait_ns, new_lock_wait_ns, locks, served_ns)"
            " SELECT CASE WHEN n %% 3 = 0 THEN %s::uuid END, gen_random_uuid(),"
            " %s - make_interval(hours => n), 'f', 'pilot', 'h', 't' || n %% 7,"
            " (ARRAY['legacy', 'shadow', 'new'])[1 + n %% 3], CASE WHEN n %% 2 = 0 THEN 'new' END,"
            " jsonb_build_object('n', n), n * 1000, n * 900, n %% 50, n %% 51,"
            " CASE WHEN n %% 97 = 0 THEN '57014' END, NULL, CASE WHEN n %% 97 = 0 THEN 'x' END,"
            " NULL, n %% 11 <> 0, CASE WHEN n %% 11 = 0 THEN '[{\"kind\": \"row\"}]'::jsonb END,"
            " (ARRAY['offline', 'online'])[1 + n %% 2], (ARRAY['ab', 'aa'])[1 + (n %% 5 = 0)::int],"
            " n, NULL, '{\"locks\": []}', n * 7 FROM generate_series(1, 500) AS n",
            [run_id, now])
        conn.execute("INSERT INTO rollout.observations (observed_at, flag, stage, sql_hash,"
                     " decision) VALUES ('1970-01-01 00:00+00', 'f', 'pilot', 'h', 'new'),"
                     " ('2999-12-31 23:59+00', 'f', 'pilot', 'h', 'new')")
        conn.execute("DELETE FROM rollout.observations WHERE id % 100 = 0")  # gaps in ids
        before = checksum(conn)
        last_id = conn.execute("SELECT last_value FROM rollout.observations_id_seq").fetchone()
        assert kind(conn, "observations") == "r"

        assert migrate(conn)[0] == "0009_partitioned_observations.sql"

        assert kind(conn, "observations") == "p"
        assert checksum(conn) == before and before[0] == 497
        days = daily_partitions(conn)
        assert {TODAY + timedelta(days=n) for n in range(-1, 8)} <= set(days)
        rows = where_rows_are(conn)
        assert rows[f"rollout.{DEFAULT_PARTITION}"] == 2  # 1970 and 2999
        assert all(t.startswith("rollout.observations_") for t in rows) and len(rows) >= 21
        # ids go on after the old ones: id order is still arrival order
        new_id = conn.execute(
            "INSERT INTO rollout.observations (observed_at, flag, stage, sql_hash, decision)"
            " VALUES (now(), 'f', 'pilot', 'h', 'new') RETURNING id").fetchone()
        assert last_id is not None and new_id is not None and new_id[0] > last_id[0]
        # the constraints came along
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO rollout.observations (observed_at, flag, stage,"
                         " sql_hash, decision) VALUES (now(), 'f', 'p', 'h', 'maybe')")
        conn.execute("DELETE FROM rollout.runs WHERE run_id = %s", [run_id])  # cascades
        assert checksum(conn, "run_id IS NOT NULL")[0] == 0
        assert migrate(conn) == []


def test_days_are_ready_and_a_wrong_clock_lands_in_the_default(db: str) -> None:
    midnight = day_start(TODAY + timedelta(days=1))
    times = [midnight - timedelta(microseconds=1), midnight, midnight + timedelta(hours=1),
             datetime(1970, 1, 1, tzinfo=UTC), datetime(2999, 12, 31, 23, 59, tzinfo=UTC),
             datetime.now(UTC) - timedelta(days=DAYS_AHEAD + 3)]
    with psycopg.connect(db, autocommit=True) as conn:
        store = Store.open(conn)
        assert store.write_observations([obs(t) for t in times]) == len(times)
        rows = where_rows_are(conn)
        tomorrow = partition_name(TODAY + timedelta(days=1))
        assert rows == {f"rollout.{partition_name(TODAY)}": 1, f"rollout.{tomorrow}": 2,
                        f"rollout.{DEFAULT_PARTITION}": 3}
        assert set(daily_partitions(conn)) >= {TODAY + timedelta(days=n)
                                               for n in range(DAYS_AHEAD + 1)}
        # a far-off day never gets a partition of its own: a wrong clock cannot make many
        assert date(2999, 12, 31) not in daily_partitions(conn)


def test_a_new_day_moves_its_rows_out_of_the_default_partition(db: str) -> None:
    """A service whose clock ran 20 days ahead wrote rows into the default partition; 20
    days later that day comes: its partition is created and the rows move into it, none
    lost. Before version 9 there was no partition to create."""
    later = TODAY + timedelta(days=20)
    with psycopg.connect(db, autocommit=True) as conn:
        store = Store.open(conn)
        store.write_observations([obs(day_start(later) + timedelta(minutes=m))
                                  for m in range(0, 1440, 30)])
        before = checksum(conn)
        assert where_rows_are(conn) == {f"rollout.{DEFAULT_PARTITION}": 48}
        ready = Store(conn).prepare_days(today=later)  # the day has come
        assert later in ready
        assert where_rows_are(conn) == {f"rollout.{partition_name(later)}": 48}
        assert checksum(conn) == before
        # the default partition takes no row of that day any more
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql.SQL("INSERT INTO rollout.{} (observed_at, flag, stage, sql_hash,"
                                 " decision) VALUES (%s, 'f', 'p', 'h', 'new')").format(
                sql.Identifier(DEFAULT_PARTITION)), [day_start(later)])


def test_a_partition_that_cannot_be_created_costs_no_row(db: str) -> None:
    """A stray table already holds the name of tomorrow's partition: creating it fails, the
    rows go to the default partition, the write succeeds."""
    tomorrow = TODAY + timedelta(days=1)
    with psycopg.connect(db, autocommit=True) as conn:
        Store.open(conn)
        conn.execute(sql.SQL("DROP TABLE rollout.{}").format(
            sql.Identifier(partition_name(tomorrow))))
        conn.execute(sql.SQL("CREATE TABLE rollout.{} (x int)").format(
            sql.Identifier(partition_name(tomorrow))))
        assert create_partition(conn, tomorrow) is False
        store = Store(conn)
        assert store.write_observations([obs(day_start(tomorrow))]) == 1
        assert where_rows_are(conn) == {f"rollout.{DEFAULT_PARTITION}": 1}


CHILD = """\
import json, os, sys
from datetime import UTC, datetime, timedelta
from rollout.store.observations import Observation
from rollout.online.recorder import Recorder

proc, n = int(sys.argv[1]), int(sys.argv[2])
now = datetime.now(UTC)
midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
# around midnight, now, and a wrong clock either way
times = [midnight - timedelta(seconds=1), midnight + timedelta(seconds=1), now,
         datetime(1970, 1, 1, tzinfo=UTC), datetime(2999, 1, 1, tzinfo=UTC),
         now + timedelta(days=3)]
rec = Recorder(os.environ["STORE_DSN"], batch_size=97)
for i in range(n):
    rec.record(Observation(times[i % len(times)] + timedelta(microseconds=i), "f", "pilot",
                           "h", "acme", "shadow", "legacy", {"p": proc, "i": i}, 1, 2, 3, 3,
                           None, None, None, None, True, None, source="online"))
ok = rec.flush(timeout=120)
rec.close()
print(json.dumps({"ok": ok, **vars(rec.stats)}))
"""


def test_eight_processes_record_concurrently_losing_and_duplicating_nothing(db: str) -> None:
    """Eight services start at once on a store whose daily partitions are all gone, with
    rows of tomorrow already in the default partition: they race to create the same days
    while writing into them. Every row lands exactly once."""
    per_process = 3000
    with psycopg.connect(db, autocommit=True) as conn:
        Store.open(conn)
        for name in daily_partitions(conn).values():
            conn.execute(sql.SQL("DROP TABLE rollout.{}").format(sql.Identifier(name)))
        tomorrow = TODAY + timedelta(days=1)
        Store(conn)._copy([obs(day_start(tomorrow) + timedelta(hours=h), params={"early": h})
                           for h in range(5)], None)
        early = checksum(conn)
        assert where_rows_are(conn) == {f"rollout.{DEFAULT_PARTITION}": 5}
    env = {**os.environ, "PYTHONPATH": str(REPO), "STORE_DSN": db}  # never in argv
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(p), str(per_process)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for p in range(8)]
    stats = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        stats.append(json.loads(out))
    for s in stats:
        assert s["ok"] and s["written"] == per_process and s["recorded"] == per_process
        assert s["rejected"] == s["dropped"] == s["duplicates_skipped"] == 0
    with psycopg.connect(db, autocommit=True) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (params->>'p', params->>'i')) FROM"
            " rollout.observations WHERE params ? 'p'").fetchone() or (0, 0)
        assert total == distinct == 8 * per_process
        assert checksum(conn, "params ? 'early'") == early  # moved, not lost
        days = daily_partitions(conn)
        assert {TODAY + timedelta(days=n) for n in range(DAYS_AHEAD + 1)} <= set(days)
        rows = where_rows_are(conn)
        # only the wrong clocks (1970, 2999) stay in the default partition
        assert rows[f"rollout.{DEFAULT_PARTITION}"] == 2 * 8 * per_process // 6
        assert rows[f"rollout.{partition_name(tomorrow)}"] == 8 * per_process // 6 + 5
        batches = conn.execute("SELECT count(DISTINCT batch_id) FROM rollout.observations"
                               " WHERE params ? 'p'").fetchone()
        assert batches is not None and batches[0] == sum(s["batches"] for s in stats)


def plan_relations(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, relation) of every scan in an EXPLAIN (FORMAT JSON) plan."""
    out = []
    if "Relation Name" in plan:
        out.append((plan["Node Type"], plan["Relation Name"]))
    for child in plan.get("Plans", []):
        out += plan_relations(child)
    return out


def index_names(plan: dict[str, Any]) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= index_names(child)
    return names


def test_the_reports_reads_use_the_indexes_and_prune_partitions(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        Store.open(conn)
        # three days of 40 flags' traffic, 30,000 rows a day
        conn.execute(
            "INSERT INTO rollout.observations (observed_at, flag, stage, sql_hash, decision,"
            " source, legacy_ns, new_ns, matched) SELECT now() - make_interval(secs => n * 8),"
            " 'flag' || n % 40, (ARRAY['pilot', 'half'])[1 + n % 2], 'h' || n % 3,"
            " 'shadow', 'online', n, n, true FROM generate_series(1, 90000) AS n")
        conn.execute("ANALYZE rollout.observations")
        (plan,), = conn.execute("EXPLAIN (FORMAT JSON) " + OBSERVATIONS_SQL,
                                ["flag7", "half", "h1", "ab"]).fetchall()
        scans = dict((rel, node) for node, rel in plan_relations(plan[0]["Plan"]))
        filled = {t.removeprefix("rollout.") for t in where_rows_are(conn)}
        assert len(filled) >= 3  # the rows span days: the read crosses partitions
        # every partition with rows is read through the report's index (empty ones may be
        # scanned: there is nothing to read)
        assert {rel: scans.get(rel) for rel in filled} == {
            rel: "Bitmap Heap Scan" if scans.get(rel) == "Bitmap Heap Scan" else "Index Scan"
            for rel in filled}, scans
        used = {i for i in index_names(plan[0]["Plan"]) if i.split("_")[1] in
                {t.split("_")[1] for t in filled}}
        # each partition's copy of observations_report_idx (flag, stage, sql_hash, mode, ...)
        assert used == {f"{t}_flag_stage_sql_hash_mode_observed_at_idx" for t in filled}
        start = datetime.now(UTC) - timedelta(hours=2)
        (plan,), = conn.execute("EXPLAIN (FORMAT JSON) " + ONLINE_WINDOW_SQL,
                                ["flag7", "half", start, start + timedelta(hours=1)]
                                ).fetchall()
        scanned = {rel for _, rel in plan_relations(plan[0]["Plan"])}
        window_days = {partition_name((start + timedelta(hours=h)).date()) for h in (0, 1)}
        assert scanned == window_days  # only the window's partitions, no default, no others


def test_a_report_reads_across_partition_boundaries(
        shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]) -> None:
    """A stage's observations spread over three days (past two midnights) all count."""
    query = "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id"
    root: Path = make_workspace({"eq": flag_yaml("eq", query, query)})
    r = run_cli(capsys, "shadow", "eq", "--samples", "60", "--seed", "3", "--workspace", root,
                "--dsn", shop)
    assert r.code == 0, r.err
    with psycopg.connect(shop, autocommit=True) as conn:
        # the update moves rows between partitions: yesterday, the day before, today
        conn.execute("UPDATE rollout.observations SET observed_at = observed_at"
                     " - make_interval(days => (id % 3)::int)")
        spread = where_rows_are(conn)
    assert len(spread) == 3 and sum(spread.values()) == 60
    r = run_cli(capsys, "report", "eq", "--format", "json", "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.out + r.err
    body = json.loads((root / "reports" / "eq" / "pilot.json").read_text())
    assert body["samples"] == 60 and body["verdict"] == "GO"
