"""``rollout prune``: drop whole days of observations older than a cut-off, keeping evidence."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InputError
from .store import DEFAULT_PARTITION, PARTITION_LOCK, daily_partitions, day_start

DROP_LOCK_TIMEOUT = "5s"
"""How long dropping one partition may wait for its table locks (a long report holds them);
a busy partition is skipped and named, never waited on without end: a waiting DETACH would
hold up every write queued behind it."""

_AGE = re.compile(r"(\d+)\s*(d|w)")
_UNIT_DAYS = {"d": 1, "w": 7}

# The newest report of every flag and stage, and the observations it was judged on: that
# stage's rows of the report's SQL version, observed before the report was made.
_LATEST = ("SELECT DISTINCT ON (flag, stage) flag, stage, sql_hash, created_at"
           " FROM rollout.reports ORDER BY flag, stage, created_at DESC")
_EVIDENCE_IN = (f"WITH latest AS ({_LATEST}) SELECT l.flag, l.stage, l.created_at"
                " FROM latest l WHERE EXISTS (SELECT 1 FROM rollout.{} o"
                " WHERE o.flag = l.flag AND o.stage = l.stage AND o.sql_hash = l.sql_hash"
                " AND o.observed_at <= l.created_at) ORDER BY l.flag, l.stage")
_NOT_EVIDENCE = (f" AND NOT EXISTS (SELECT 1 FROM ({_LATEST}) l WHERE l.flag = o.flag"
                 " AND l.stage = o.stage AND l.sql_hash = o.sql_hash"
                 " AND o.observed_at <= l.created_at)")


def parse_age(text: str) -> timedelta:
    """``30d`` or ``4w``: whole days, at least one (partitions are days)."""
    m = _AGE.fullmatch(text.strip().lower())
    days = int(m.group(1)) * _UNIT_DAYS[m.group(2)] if m else 0
    if days < 1:
        raise InputError(f"--older-than: {text!r} is not an age like 30d or 4w "
                         "(whole days or weeks, at least 1 day)")
    return timedelta(days=days)


@dataclass(frozen=True)
class Partition:
    """One day of observations: its table, its day (UTC) and its rows (an estimate)."""

    name: str
    day: date
    rows: int


@dataclass(frozen=True)
class Kept:
    """A partition older than the cut-off that stays, and why."""

    partition: Partition
    why: str


@dataclass
class Pruned:
    """What ``prune`` dropped (or, on a dry run, would drop) and what it kept."""

    cutoff: datetime
    dry_run: bool
    dropped: list[Partition] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    default_rows: int = 0
    """Rows older than the cut-off deleted from the default partition (a clock far off)."""
    default_kept: int = 0
    """Rows older than the cut-off kept in the default partition as evidence."""


def prune(conn: psycopg.Connection[Any], older_than: timedelta, *, force: bool = False,
          dry_run: bool = False, now: datetime | None = None) -> Pruned:
    """Drop the daily partitions of ``rollout.observations`` wholly older than ``now -
    older_than`` (DETACH, then DROP, one transaction per day).

    A partition holding evidence behind the latest report of a flag's stage is kept unless
    ``force``; the check is made inside each day's transaction, once its locks are
    held. Rows of the default partition older than the cut-off are deleted on the same
    terms. ``dry_run`` changes nothing and says what would be dropped.
    """
    if older_than < timedelta(days=1):
        raise InputError("--older-than must be at least one day")
    cutoff = (now or datetime.now(UTC)) - older_than
    result = Pruned(cutoff=cutoff, dry_run=dry_run)
    old = sorted((day, name) for day, name in daily_partitions(conn).items()
                 if day_start(day) + timedelta(days=1) <= cutoff)
    for day, name in old:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(DROP_LOCK_TIMEOUT)))
            try:
                kept = _drop_day(conn, day, name, force=force, dry_run=dry_run)
            except psycopg.errors.LockNotAvailable:
                kept = Kept(Partition(name, day, -1), "busy (a report or a writer held it "
                                                      f"longer than {DROP_LOCK_TIMEOUT}); "
                                                      "run prune again")
        if isinstance(kept, Kept):
            result.kept.append(kept)
        else:
            result.dropped.append(kept)
    _prune_default(conn, result, force=force)
    return result


def _drop_day(conn: psycopg.Connection[Any], day: date, name: str, *, force: bool,
              dry_run: bool) -> Partition | Kept:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
    if daily_partitions(conn).get(day) != name:
        return Kept(Partition(name, day, -1), "gone meanwhile (another prune?)")
    table = sql.Identifier(name)
    part = Partition(name, day, _rows(conn, name))
    if not dry_run:
        # DETACH needs this lock anyway; taken before the evidence check, so no report can
        # read the day between the check and the drop.
        conn.execute("LOCK TABLE rollout.observations IN ACCESS EXCLUSIVE MODE")
    if not force:
        reports = conn.execute(sql.SQL(_EVIDENCE_IN).format(table)).fetchall()
        if reports:
            return Kept(part, "evidence of the latest report of " + ", ".join(
                f"{flag}/{stage} ({created.isoformat(timespec='seconds')})"
                for flag, stage, created in reports) + "; --force drops it")
    if not dry_run:
        conn.execute(sql.SQL("ALTER TABLE rollout.observations DETACH PARTITION rollout.{}"
                             ).format(table))
        conn.execute(sql.SQL("DROP TABLE rollout.{}").format(table))
    return part


def _rows(conn: psycopg.Connection[Any], name: str) -> int:
    """The planner's estimate; a count where the table was never analysed."""
    row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                       [f"rollout.{name}"]).fetchone()
    if row is not None and row[0] >= 0:
        return int(row[0])
    counted = conn.execute(sql.SQL("SELECT count(*) FROM rollout.{}").format(
        sql.Identifier(name))).fetchone()
    return int(counted[0]) if counted else 0


def _prune_default(conn: psycopg.Connection[Any], result: Pruned, *, force: bool) -> None:
    """Old rows in the default partition go row by row (it cannot be dropped)."""
    table = sql.Identifier(DEFAULT_PARTITION)
    old = sql.SQL("FROM rollout.{} o WHERE o.observed_at < %s").format(table)
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(DROP_LOCK_TIMEOUT)))
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
        total = _count(conn, sql.SQL("SELECT count(*) ") + old, result.cutoff)
        spare = total if force else _count(
            conn, sql.SQL("SELECT count(*) ") + old + sql.SQL(_NOT_EVIDENCE), result.cutoff)
        result.default_rows, result.default_kept = spare, total - spare
        if spare and not result.dry_run:
            conn.execute(sql.SQL("DELETE ") + old + sql.SQL("" if force else _NOT_EVIDENCE),
                         [result.cutoff])


def _count(conn: psycopg.Connection[Any], query: sql.Composed, cutoff: datetime) -> int:
    row = conn.execute(query, [cutoff]).fetchone()
    return int(row[0]) if row else 0
