"""`rollout prune`: whole old days go, the evidence of the latest reports stays, bad input
changes nothing, a busy day is skipped rather than waited on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from rollout.store.store import (
    DEFAULT_PARTITION,
    Store,
    create_partition,
    daily_partitions,
    day_start,
    partition_name,
)

from .helpers import obs, run_cli, where_rows_are
from .helpers import observations_checksum as checksum

TODAY = datetime.now(UTC).date()


def day(n: int) -> datetime:
    """Noon of the day ``n`` days from today (UTC)."""
    return day_start(TODAY + timedelta(days=n)) + timedelta(hours=12)


def store_with_days(dsn: str, rows: dict[int, int], **kw: str) -> None:
    """A store with ``rows[n]`` observations on day ``n`` (each day its own partition)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        store = Store.open(conn)
        for n in rows:
            assert create_partition(conn, TODAY + timedelta(days=n))
        store.write_observations([obs(day(n) + timedelta(seconds=i), **kw)
                                  for n, count in rows.items() for i in range(count)])


def report(dsn: str, flag: str, stage: str, sql_hash: str, at: datetime) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO rollout.reports (report_id, flag, stage, sql_hash, verdict,"
                     " samples, body, created_at) VALUES (%s, %s, %s, %s, 'GO', 1, %s, %s)",
                     [uuid.uuid4(), flag, stage, sql_hash, Jsonb({}), at])


def prune(capsys: pytest.CaptureFixture[str], dsn: str, tmp_path: Path, *args: str
          ) -> tuple[int, list[str], str]:
    r = run_cli(capsys, "prune", *args, "--dsn", dsn, "--workspace", tmp_path)
    return r.code, r.out.splitlines(), r.err


def state(dsn: str, where: str = "true") -> tuple[tuple[int, str], list[str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return checksum(conn, where), sorted(daily_partitions(conn).values())


def test_prune_drops_only_whole_days_older_than_the_cutoff(
        db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_with_days(db, {-40: 3, -35: 4, -31: 5, -30: 6, -29: 7, 0: 8})
    with psycopg.connect(db, autocommit=True) as conn:
        # a wrong clock: long ago (old enough to go) and far ahead (stays)
        Store(conn).write_observations([obs(datetime(1970, 1, 1, tzinfo=UTC)),
                                        obs(datetime(2999, 1, 1, tzinfo=UTC))])
    younger = state(db, f"observed_at >= '{day_start(TODAY - timedelta(days=30))}'")[0]
    code, out, err = prune(capsys, db, tmp_path, "--older-than", "30d")
    assert code == 0, err
    assert out == [f"dropped {partition_name(TODAY + timedelta(days=n))} "
                   f"({TODAY + timedelta(days=n)}, ~{rows} rows)"
                   for n, rows in ((-40, 3), (-35, 4), (-31, 5))] + [
        out[-1]]
    assert out[-1].startswith("default partition: deleted 1 rows older than")
    names = state(db)[1]
    assert partition_name(TODAY - timedelta(days=31)) not in names
    assert partition_name(TODAY - timedelta(days=30)) in names  # not wholly older yet
    # every younger row untouched, the old ones gone, the far-future row kept; "old" is
    # before the first day kept: the kept day's own rows are older than now() - 30 days
    # from noon on, and stay with their day
    first_kept = day_start(TODAY - timedelta(days=30))
    assert state(db, f"observed_at >= '{first_kept}'")[0] == younger
    with psycopg.connect(db, autocommit=True) as conn:
        assert where_rows_are(conn, f"observed_at < '{first_kept}'") == {}
        assert where_rows_are(conn, "observed_at > now() + interval '1 year'") == {
            f"rollout.{DEFAULT_PARTITION}": 1}
    # nothing left to do
    code, out, _ = prune(capsys, db, tmp_path, "--older-than", "30d")
    assert code == 0 and out[0].startswith("nothing older than")


def test_the_latest_reports_evidence_is_kept_unless_forced(
        db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_with_days(db, {-35: 4}, stage="pilot")
    store_with_days(db, {-36: 2}, stage="half")  # a stage nobody reported on
    store_with_days(db, {-37: 2}, stage="everyone")  # reported, but on newer rows only
    with psycopg.connect(db, autocommit=True) as conn:
        Store(conn).write_observations([obs(day(-32), stage="everyone"),
                                        obs(datetime(1971, 1, 1, tzinfo=UTC), stage="pilot")])
    report(db, "f", "pilot", "h", day(-60))  # an older report: not the latest
    report(db, "f", "pilot", "h", day(-34))
    report(db, "f", "everyone", "h", day(-37) - timedelta(hours=1))  # before those rows
    before = state(db, "stage = 'pilot'")
    code, out, err = prune(capsys, db, tmp_path, "--older-than", "30d")
    assert code == 0, err
    kept = partition_name(TODAY - timedelta(days=35))
    assert f"dropped {partition_name(TODAY - timedelta(days=36))} ({TODAY - timedelta(days=36)}"\
           ", ~2 rows)" in out
    assert f"dropped {partition_name(TODAY - timedelta(days=37))} ({TODAY - timedelta(days=37)}"\
           ", ~2 rows)" in out
    line = next(x for x in out if x.startswith(f"kept {kept}"))
    assert "evidence of the latest report of f/pilot" in line and "--force drops it" in line
    assert any("kept 1 (evidence" in x for x in out)  # the 1971 row of f/pilot
    assert state(db, "stage = 'pilot'")[0] == before[0]
    # the SQL changed and a newer report judged the new SQL only: the old rows are no
    # longer anyone's evidence
    report(db, "f", "pilot", "h2", day(-1))
    code, out, err = prune(capsys, db, tmp_path, "--older-than", "30d")
    assert code == 0 and any(x.startswith(f"dropped {kept}") for x in out), out
    # --force drops evidence too
    store_with_days(db, {-45: 3}, stage="pilot", sql_hash="h2")
    code, out, _ = prune(capsys, db, tmp_path, "--older-than", "30d")
    assert code == 0 and out[0].startswith(f"kept {partition_name(TODAY - timedelta(days=45))}")
    code, out, _ = prune(capsys, db, tmp_path, "--older-than", "30d", "--force")
    assert code == 0 and out[0].startswith(
        f"dropped {partition_name(TODAY - timedelta(days=45))}")


def test_a_dry_run_changes_nothing(
        db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_with_days(db, {-50: 3, -2: 2})
    with psycopg.connect(db, autocommit=True) as conn:
        Store(conn).write_observations([obs(datetime(1970, 1, 1, tzinfo=UTC))])
    before = state(db)
    code, out, err = prune(capsys, db, tmp_path, "--older-than", "4w", "--dry-run", "--force")
    assert code == 0, err
    assert out[0] == (f"would drop {partition_name(TODAY - timedelta(days=50))} "
                      f"({TODAY - timedelta(days=50)}, ~3 rows)")
    assert out[1].startswith("default partition: would delete 1 rows")
    assert state(db) == before


@pytest.mark.parametrize("age", ["abc", "-5d", "0d", "30", "1.5d", "30x", "", "d"])
def test_a_bad_age_is_one_line_and_touches_nothing(
        age: str, db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = prune(capsys, db, tmp_path, f"--older-than={age}")
    assert code == 2 and out == []
    assert err.splitlines() == [f"rollout: error: --older-than: {age!r} is not an age like "
                                "30d or 4w (whole days or weeks, at least 1 day)"]
    with psycopg.connect(db) as conn:  # refused before connecting: not even migrated
        assert conn.execute("SELECT to_regnamespace('rollout')").fetchone() == (None,)


def test_a_day_a_report_is_reading_is_skipped_not_waited_on(
        db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A long report holds the observations open: prune names the day busy and leaves it,
    instead of queueing an ACCESS EXCLUSIVE lock that would hold up every writer."""
    store_with_days(db, {-40: 3})
    before = state(db)
    with psycopg.connect(db) as reader:
        reader.execute("SELECT count(*) FROM rollout.observations").fetchone()  # stays open
        code, out, err = prune(capsys, db, tmp_path, "--older-than", "30d")
    assert code == 0, err
    assert out == [f"kept {partition_name(TODAY - timedelta(days=40))} "
                   f"({TODAY - timedelta(days=40)}): busy (a report or a writer held it longer "
                   "than 5s); run prune again"]
    assert state(db) == before
