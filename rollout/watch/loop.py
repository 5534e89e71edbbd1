"""`rollout watch`: judge each watched flag's live stage every interval; abort or promote.

Every ``analysis.interval`` the leader for a flag (the one process holding the flag's
advisory lock on its own store connection) judges the stage's online observations:

- the latency and mismatch gates sequentially, on everything the stage recorded since the
  flag entered its current state (``sequential``: always-valid p-values, so watching all
  day keeps the false-alarm rate at the gate's alpha);
- every gate, as ``verdict.judge`` does for a report, on a sliding ``analysis.window`` of
  online observations (the figures of the timeline; new-path failures and lock waits
  decide from here, environment failures excused as in a report).

It then continues, aborts (kills the flag) once more than ``failure_limit`` intervals
failed on a gate of ``abort_on``, or promotes (advances) after ``promote_after`` soak and
``promote_intervals`` consecutive GO intervals. An action is a compare-and-set on the flag
state version the interval judged, in one transaction with the check that the lock is still
held, the report row carrying the analysis and the interval's record: a watcher that lost
the store, or judged a state someone changed meanwhile, changes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import ConcurrentChange, InputError, LostLeadership, RolloutError
from ..flags.model import Analysis, Flag
from ..flags.state import FlagState, change, read_state
from ..flags.workspace import Workspace
from ..store.connection import connect
from ..store.observations import COLUMNS, Observation

# numpy and scipy (sequential, verdict) are imported by the functions that judge:
# `rollout flag show` imports this module for `holder` and must start at once.
if TYPE_CHECKING:
    from ..judge.sequential import Moments
    from ..run.session import Session
    from .notify import Notifier

WATCH_LOCK = 0x77617463
"""First key of a flag's watch lock, ``pg_try_advisory_lock(WATCH_LOCK, hashtext(flag))``."""
MAX_WINDOW_ROWS = 50_000
"""The window's newest rows at most: enough for every gate, bounded in memory."""
APPLICATION = "pg-rollout-watch"
EVIDENCE_GATES = ("min_samples", "max_mismatch_rate", "latency", "max_new_failures",
                  "lock_wait")
GO, NO_GO, INCONCLUSIVE = "GO", "NO-GO", "INCONCLUSIVE"

Log = Callable[..., None]


def json_log(level: str, event: str, **fields: Any) -> None:
    """One JSON object per line on stderr: what a service manager's journal collects."""
    line = {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level,
            "event": event, **fields}
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)


# -- the pure part: one interval's assessment -------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What the stage recorded since it entered its current state, as sufficient statistics:
    paired ln-latency differences, and (mismatched, compared) of A/B and online A/A pairs."""

    latency: Moments
    ab: tuple[int, int]
    aa: tuple[int, int]


@dataclass(frozen=True)
class History:
    """Where the stage's analysis stands after the previous interval (the store keeps it,
    so a new leader carries on)."""

    failed: int = 0
    go_streak: int = 0
    inconclusive_streak: int = 0
    latency_p: float = 1.0
    mismatch_p: float = 1.0


@dataclass(frozen=True)
class Assessment:
    """One interval: the verdict, the decision and every figure behind them."""

    verdict: str
    decision: str  # continue | abort | promote
    gates: list[dict[str, Any]]
    reasons: list[str]
    failed: list[str]
    """Gates of ``abort_on`` that failed in this interval."""
    history: History
    notify_inconclusive: bool
    sequential: dict[str, Any]


def assess(flag: Flag, analysis: Analysis, evidence: Evidence,
           window: Mapping[str, Any] | None, history: History, soak: timedelta,
           last_stage: bool) -> Assessment:
    """Judge one interval; pure (the simulation in tests/test_sequential.py runs it).

    ``window`` is ``verdict.judge`` on the window's observations (None: nothing recorded in
    it). Latency and mismatches fail only on their sequential test; a window that alone
    says otherwise makes them inconclusive, never failed."""
    from ..judge.sequential import latency_test, mismatch_test

    g = flag.gates
    alpha = 1 - g.latency.confidence
    lat = latency_test(evidence.latency, g.latency.max_regression)
    mis, mis_alpha = mismatch_test(evidence.ab[0], evidence.ab[1], g.max_mismatch_rate, alpha,
                                   evidence.aa if evidence.aa[1] else None)
    latency_p = min(history.latency_p, lat.p_value)
    mismatch_p = min(history.mismatch_p, mis.p_value)
    in_window = {x["name"]: x for x in (window or {}).get("gates", [])
                 if x["name"] in EVIDENCE_GATES}
    gates: list[dict[str, Any]] = []
    for name in EVIDENCE_GATES:
        w = in_window.get(name)
        status = w["status"] if w else "inconclusive"
        display = w["display"] if w else "nothing recorded in the window"
        reason = w["reason"] if w else "no online observation of the stage in the window"
        if name == "latency":
            status, reason = _sequential_status(
                status, latency_p, alpha, reason,
                f"new path slower beyond the {g.latency.max_regression:.0%} tolerance: "
                f"mean ln ratio {lat.estimate or 0:+.3f} over {lat.n} pairs (ratio "
                f"{_exp(lat.estimate)}), always-valid p = {latency_p:.2g} ≤ {alpha:.2g}")
        elif name == "max_mismatch_rate":
            status, reason = _sequential_status(
                status, mismatch_p, mis_alpha, reason,
                f"result sets differ in {evidence.ab[0]} of {evidence.ab[1]} compared pairs, "
                f"beyond {mis.boundary:.3%} (limit plus A/A noise), always-valid "
                f"p = {mismatch_p:.2g} ≤ {mis_alpha:.2g}")
        gates.append({"name": name, "status": status, "display": display, "reason": reason})
    failing = [x for x in gates if x["status"] == "fail"]
    if failing:
        verdict, reasons = NO_GO, [x["reason"] for x in failing]
    elif any(x["status"] == "inconclusive" for x in gates):
        verdict = INCONCLUSIVE
        reasons = [x["reason"] for x in gates if x["status"] == "inconclusive"]
    else:
        verdict, reasons = GO, ["every gate passed in the window, no sequential test rejected"]
    failed = [x["name"] for x in failing if x["name"] in analysis.abort_on]
    after = History(
        failed=history.failed + (1 if failed else 0),
        go_streak=history.go_streak + 1 if verdict == GO else 0,
        inconclusive_streak=history.inconclusive_streak + 1 if verdict == INCONCLUSIVE else 0,
        latency_p=latency_p, mismatch_p=mismatch_p)
    decision = "continue"
    if failed and after.failed > analysis.failure_limit:
        decision = "abort"
    elif (analysis.promote_after is not None and not last_stage
          and after.go_streak >= analysis.promote_intervals and soak >= analysis.promote_after):
        decision = "promote"
    return Assessment(
        verdict, decision, gates, reasons, failed, after,
        notify_inconclusive=after.inconclusive_streak == analysis.inconclusive_limit + 1,
        sequential={"latency": {**lat.as_dict(), "p_running": latency_p, "alpha": alpha},
                    "mismatch": {**mis.as_dict(), "p_running": mismatch_p, "alpha": mis_alpha,
                                 "mismatched": evidence.ab[0],
                                 "aa": {"mismatched": evidence.aa[0],
                                        "compared": evidence.aa[1]}}})


def _sequential_status(window_status: str, p: float, alpha: float, window_reason: str,
                       failed_reason: str) -> tuple[str, str]:
    if p <= alpha:
        return "fail", failed_reason
    if window_status in ("pass", "info"):
        return window_status, window_reason
    if window_status == "fail":  # a fixed test looked at again and again: not evidence
        return "inconclusive", f"{window_reason} (in the window only; the sequential test " \
            "has not rejected)"
    return "inconclusive", window_reason


def _exp(x: float | None) -> str:
    import math

    return "n/a" if x is None else f"{math.exp(x):.3f}"


# -- the store: evidence, window, history, leadership ------------------------------------------


@dataclass(frozen=True)
class Epoch:
    """The flag state an interval judged: the evidence starts when it was entered."""

    flag: str
    stage: str
    version: int
    sql_hash: str
    since: datetime


_EVIDENCE_SQL = """
SELECT count(d), coalesce(sum(d), 0), coalesce(sum(d * d), 0),
       count(*) FILTER (WHERE mode = 'ab' AND matched IS NOT NULL),
       count(*) FILTER (WHERE mode = 'ab' AND matched = false),
       count(*) FILTER (WHERE mode = 'aa' AND matched IS NOT NULL),
       count(*) FILTER (WHERE mode = 'aa' AND matched = false)
FROM (SELECT mode, matched,
             CASE WHEN mode = 'ab' AND served_ns IS NOT NULL AND first_path IS NOT NULL
                   AND legacy_ns > 0 AND new_ns > 0 AND legacy_error IS NULL
                   AND new_error IS NULL AND legacy_sqlstate IS NULL AND new_sqlstate IS NULL
                  THEN ln(new_ns::float8) - ln(legacy_ns::float8) END AS d
        FROM rollout.observations
       WHERE flag = %s AND stage = %s AND sql_hash = %s AND source = 'online'
         AND observed_at >= %s AND observed_at < %s) o
"""
"""The sequential tests' statistics, summed in the database: rows never leave it. Paired
online executions only (both paths timed on the shadow pool), failures left out: an
outage never moves the latency test."""

_WINDOW_SQL = (f"SELECT {', '.join(COLUMNS)} FROM rollout.observations WHERE flag = %s"
               " AND stage = %s AND sql_hash = %s AND source = 'online' AND observed_at >= %s"
               " AND observed_at < %s ORDER BY observed_at DESC LIMIT %s")


def stage_evidence(conn: psycopg.Connection[Any], epoch: Epoch, until: datetime) -> Evidence:
    from ..judge.sequential import Moments

    row = conn.execute(_EVIDENCE_SQL, [epoch.flag, epoch.stage, epoch.sql_hash, epoch.since,
                                       until]).fetchone()
    assert row is not None
    return Evidence(Moments(int(row[0]), float(row[1]), float(row[2])),
                    (int(row[4]), int(row[3])), (int(row[6]), int(row[5])))


def window_observations(conn: psycopg.Connection[Any], epoch: Epoch, start: datetime,
                        end: datetime) -> list[Observation]:
    rows = conn.execute(_WINDOW_SQL, [epoch.flag, epoch.stage, epoch.sql_hash,
                                      max(start, epoch.since), end, MAX_WINDOW_ROWS]).fetchall()
    return [Observation(*r) for r in reversed(rows)]


def judge_window(flag: Flag, conn: psycopg.Connection[Any],
                 observations: Sequence[Observation]) -> dict[str, Any] | None:
    """``verdict.judge`` on the window's A/B rows with its online A/A rows as noise, the
    runners' pool signals excusing outages as in a report."""
    from ..judge.summaries import ENVIRONMENT_WINDOW, PoolSignal
    from ..judge.verdict import judge

    ab = [o for o in observations if o.mode == "ab"]
    if not ab:
        return None
    times = [o.observed_at for o in ab]
    signals = [PoolSignal(at, str(pool), int(n)) for at, pool, n in conn.execute(
        "SELECT at, pool, errors + returns_bad + connections_lost FROM rollout.pool_stats"
        " WHERE %s = ANY(flags) AND at >= %s AND at <= %s"
        " AND errors + returns_bad + connections_lost > 0 ORDER BY at",
        [flag.name, min(times) - ENVIRONMENT_WINDOW, max(times) + ENVIRONMENT_WINDOW])]
    return judge(flag, ab, noise=[o for o in observations if o.mode == "aa"],
                 pool_signals=signals)


def epoch_history(conn: psycopg.Connection[Any], epoch: Epoch) -> History:
    row = conn.execute(
        "SELECT failed_intervals, go_streak, inconclusive_streak, latency_p, mismatch_p"
        " FROM rollout.watch_intervals WHERE flag = %s AND stage = %s AND state_version = %s"
        " AND sql_hash = %s AND decision <> 'stale' ORDER BY at DESC LIMIT 1",
        [epoch.flag, epoch.stage, epoch.version, epoch.sql_hash]).fetchone()
    if row is None:
        return History()
    return History(int(row[0]), int(row[1]), int(row[2]),
                   1.0 if row[3] is None else float(row[3]),
                   1.0 if row[4] is None else float(row[4]))


@dataclass(frozen=True)
class Holder:
    """The watcher holding a flag, as ``rollout flag show`` prints it."""

    watcher: str
    started_at: datetime
    heartbeat_at: datetime


def holder(conn: psycopg.Connection[Any], flag: str) -> Holder | None:
    """Who watches ``flag`` now: the watcher row, only while its backend holds the lock
    (a watcher that died leaves its row; the lock went with its connection)."""
    with suppress(psycopg.errors.UndefinedTable), conn.transaction():
        row = conn.execute(
            "SELECT w.watcher, w.started_at, w.heartbeat_at FROM rollout.watchers w"
            " WHERE w.flag = %s AND EXISTS (SELECT 1 FROM pg_locks l"
            "  WHERE l.locktype = 'advisory' AND l.granted AND l.pid = w.backend_pid"
            "  AND l.database = (SELECT oid FROM pg_database"
            "                    WHERE datname = current_database())"
            "  AND l.classid = %s::bigint::oid AND l.objsubid = 2"
            "  AND l.objid = (hashtext(w.flag)::bigint & 4294967295)::oid)",
            [flag, WATCH_LOCK]).fetchone()
        return Holder(*row) if row else None
    return None



# -- the watcher -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one interval of one flag came to (for --once and tests)."""

    flag: str
    status: str  # judged | idle | not_leader | lost | error
    decision: str | None = None
    verdict: str | None = None
    analysis_id: uuid.UUID | None = None
    report_id: uuid.UUID | None = None
    message: str = ""
    interval_s: float | None = None
    """Seconds until this flag is judged again (its current stage's ``interval``)."""


@dataclass
class Watcher:
    """Watches flags of a workspace; one instance per process (``run``)."""

    session: Session
    flags: Sequence[str]
    log: Log = json_log
    notifier: Notifier | None = None
    identity: str = field(default_factory=lambda: (
        f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"))
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _lock_conn: psycopg.Connection[Any] | None = field(default=None, init=False)
    _work: psycopg.Connection[Any] | None = field(default=None, init=False)
    _held: set[str] = field(default_factory=set, init=False)
    _failing: bool = field(default=False, init=False)

    @property
    def actor(self) -> str:
        return f"rollout watch ({self.identity})"

    @property
    def store_dsn(self) -> str:
        return self.session.store_dsn or self.session.target_dsn

    # connections ------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._work is None or self._work.closed or self._work.broken:
            from ..store.store import Store

            self._work = connect(self.store_dsn, autocommit=True, application_name=APPLICATION)
            Store.open(self._work)  # migrations: the watch tables exist
        return self._work

    def _locks(self) -> psycopg.Connection[Any]:
        """The dedicated connection that holds the flags' session-level advisory locks."""
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute("SELECT 1")
                return self._lock_conn
            except psycopg.Error:
                self._drop_locks("the lock connection was lost")
        self._lock_conn = connect(self.store_dsn, autocommit=True,
                                  application_name=APPLICATION + "-lock")
        return self._lock_conn

    def _drop_locks(self, why: str) -> None:
        if self._held:
            self.log("warning", "leadership_lost", flags=sorted(self._held), reason=why)
        self._held.clear()
        if self._lock_conn is not None:
            with suppress(Exception):
                self._lock_conn.close()
        self._lock_conn = None

    def lead(self, flag: str) -> bool:
        """Hold the flag's watch lock (taken once, kept for the connection's life)."""
        conn = self._locks()
        if flag in self._held:
            return True
        got = conn.execute("SELECT pg_try_advisory_lock(%s::int, hashtext(%s))",
                           [WATCH_LOCK, flag]).fetchone()
        if not (got and got[0]):
            return False
        self._held.add(flag)
        pid = conn.info.backend_pid
        self._connection().execute(
            "INSERT INTO rollout.watchers (flag, watcher, backend_pid) VALUES (%s, %s, %s)"
            " ON CONFLICT (flag) DO UPDATE SET watcher = EXCLUDED.watcher, backend_pid ="
            " EXCLUDED.backend_pid, started_at = clock_timestamp(),"
            " heartbeat_at = clock_timestamp()", [flag, self.identity, pid])
        self.log("info", "leadership", flag=flag, watcher=self.identity)
        return True

    def _still_leading(self, conn: psycopg.Connection[Any], flag: str) -> None:
        """Inside the acting transaction: the lock connection answers and its backend holds
        the flag's lock. A stale watcher (its connection cut, another leader since) fails
        here and its transaction writes nothing."""
        lock = self._lock_conn
        if lock is None or flag not in self._held:
            raise LostLeadership(f"not holding '{flag}'")
        try:
            lock.execute("SELECT 1")
        except psycopg.Error:
            self._drop_locks("the lock connection was lost")
            raise LostLeadership("the lock connection was lost") from None
        row = conn.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s"
            " AND classid = %s::bigint::oid AND objsubid = 2"
            " AND objid = (hashtext(%s)::bigint & 4294967295)::oid",
            [lock.info.backend_pid, WATCH_LOCK, flag]).fetchone()
        if row is None:
            self._held.discard(flag)
            raise LostLeadership(f"the lock of '{flag}' is no longer held")

    def close(self) -> None:
        for conn in (self._work, self._lock_conn):
            if conn is not None:
                with suppress(Exception):
                    conn.close()
        self._work = self._lock_conn = None
        self._held.clear()

    # one interval -----------------------------------------------------------------------
    def interval(self, flag_name: str) -> Outcome:
        """Judge one flag once, and act if the analysis says so; never raises for the
        store's or the workspace's trouble (logged, notified, reported as an outcome)."""
        try:
            outcome = self._interval(flag_name)
            if self._failing:
                self._failing = False
                self.log("info", "recovered", flag=flag_name)
            return outcome
        except (psycopg.Error, RolloutError, OSError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, psycopg.Error):
                self._drop_locks("the store failed")
                with suppress(Exception):
                    if self._work is not None:
                        self._work.close()
                self._work = None
            self.log("error", "interval_failed", flag=flag_name, error=text)
            if not self._failing:
                self._failing = True
                self._notify(self._webhook_for(flag_name),
                             f"rollout watch ({self.identity}) cannot judge '{flag_name}': "
                             f"{text}", {"kind": "watcher_failure", "flag": flag_name,
                                         "error": text})
            return Outcome(flag_name, "error", message=text)

    def _interval(self, flag_name: str) -> Outcome:
        ws = self.session.load(strict=False)
        broken = [e for e in ws.errors if e.file.endswith((f"/{flag_name}.yaml",
                                                           f"/{flag_name}.yml"))]
        if broken:
            raise broken[0]
        flag = ws.flag(flag_name)
        if not self.lead(flag.name):
            self.log("info", "not_leader", flag=flag.name,
                     reason="another watcher holds the flag")
            return Outcome(flag.name, "not_leader")
        conn = self._connection()
        st = read_state(conn, flag.name)
        if not st.started or st.killed or st.stage is None or flag.stage(st.stage) is None:
            why = ("not started" if not st.started else "killed" if st.killed
                   else f"at stage '{st.stage}', which its file no longer defines")
            self.log("info", "idle", flag=flag.name, reason=why)
            self._heartbeat(conn, flag.name)
            return Outcome(flag.name, "idle", message=why)
        assert st.updated_at is not None
        epoch = Epoch(flag.name, st.stage, st.version, flag.sql_hash, st.updated_at)
        analysis = flag.analysis_for(st.stage)
        now = self.clock()
        window_start = now - analysis.window
        evidence = stage_evidence(conn, epoch, now)
        observations = window_observations(conn, epoch, window_start, now)
        core = judge_window(flag, conn, observations)
        history = epoch_history(conn, epoch)
        stages = [s.name for s in flag.stages]
        last = stages.index(st.stage) == len(stages) - 1
        result = assess(flag, analysis, evidence, core, history, now - epoch.since, last)
        figures = _figures(result, core, observations, evidence)
        analysis_id = uuid.uuid4()
        webhook = flag.webhook or ws.settings.webhook
        outcome = Outcome(flag.name, "judged", result.decision, result.verdict, analysis_id,
                          interval_s=analysis.interval.total_seconds())
        try:
            with conn.transaction():
                self._still_leading(conn, flag.name)
                report_id = None
                if result.decision in ("abort", "promote"):
                    report_id = self._act(conn, flag, st, epoch, result, figures, analysis_id,
                                          stages)
                self._record(conn, epoch, analysis_id, window_start, now, result, figures,
                             result.decision, report_id)
                self._heartbeat(conn, flag.name)
        except LostLeadership as exc:
            self.log("warning", "not_acting", flag=flag.name, reason=str(exc),
                     decision=result.decision)
            return Outcome(flag.name, "lost", result.decision, result.verdict,
                           message=str(exc))
        except ConcurrentChange as exc:
            # someone changed the flag since it was read: the analysis judged a state that
            # is gone; recorded as stale, nothing applied
            with conn.transaction():
                self._still_leading(conn, flag.name)
                self._record(conn, epoch, analysis_id, window_start, now, result, figures,
                             "stale", None)
            self.log("warning", "stale", flag=flag.name, decision=result.decision,
                     reason=str(exc))
            return Outcome(flag.name, "judged", "stale", result.verdict, analysis_id,
                           message=str(exc), interval_s=outcome.interval_s)
        outcome.report_id = report_id
        self.log("info", "interval", flag=flag.name, stage=epoch.stage, version=epoch.version,
                 verdict=result.verdict, decision=result.decision, analysis_id=analysis_id,
                 failed_intervals=result.history.failed, go_streak=result.history.go_streak,
                 latency_p=result.history.latency_p, mismatch_p=result.history.mismatch_p,
                 window_samples=figures["window"]["samples"],
                 **({"report_id": report_id} if report_id else {}))
        self._announce(flag, epoch, result, analysis_id, report_id, webhook, stages)
        return outcome

    def _act(self, conn: psycopg.Connection[Any], flag: Flag, st: FlagState, epoch: Epoch,
             result: Assessment, figures: dict[str, Any], analysis_id: uuid.UUID,
             stages: list[str]) -> uuid.UUID:
        """The flag change and the report row behind it (inside the caller's transaction)."""
        from ..store.store import Store

        report_id = uuid.uuid4()
        body = {"schema_version": 2, "kind": "watch", "report_id": str(report_id),
                "analysis_id": str(analysis_id), "flag": flag.name, "stage": epoch.stage,
                "sql_hash": flag.sql_hash, "state_version": epoch.version,
                "generated_at": self.clock().isoformat(timespec="seconds"),
                "verdict": result.verdict, "reasons": result.reasons,
                "samples": figures["window"]["samples"], "gates": result.gates,
                "analysis": figures, "decision": result.decision, "watcher": self.identity}
        Store(conn).save_report(flag=flag.name, stage=epoch.stage, sql_hash=flag.sql_hash,
                                verdict=result.verdict, samples=figures["window"]["samples"],
                                body=body, files=[])
        if result.decision == "abort":
            why = (f"watch: {', '.join(result.failed)} failed in {result.history.failed} "
                   f"interval(s): {result.reasons[0]}; analysis {analysis_id}")
            change(conn, flag, "kill", actor=self.actor, reason=why[:1000], killed=True,
                   expected_version=st.version, report_id=report_id)
        else:
            target = stages[stages.index(epoch.stage) + 1]
            why = (f"watch: GO for {result.history.go_streak} consecutive intervals after "
                   f"{_hours(self.clock() - epoch.since)} in '{epoch.stage}'; "
                   f"analysis {analysis_id}")
            change(conn, flag, "advance", actor=self.actor, reason=why, stage=target,
                   expected_version=st.version, report_id=report_id)
        return report_id

    def _record(self, conn: psycopg.Connection[Any], epoch: Epoch, analysis_id: uuid.UUID,
                start: datetime, end: datetime, result: Assessment, figures: dict[str, Any],
                decision: str, report_id: uuid.UUID | None) -> None:
        h = result.history
        conn.execute(
            "INSERT INTO rollout.watch_intervals (analysis_id, flag, stage, sql_hash,"
            " state_version, window_start, window_end, verdict, decision, failed_intervals,"
            " go_streak, inconclusive_streak, latency_p, mismatch_p, figures, reasons,"
            " watcher, acted_by, report_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [analysis_id, epoch.flag, epoch.stage, epoch.sql_hash, epoch.version,
             max(start, epoch.since), end, result.verdict, decision, h.failed, h.go_streak,
             h.inconclusive_streak, h.latency_p, h.mismatch_p, Jsonb(figures),
             result.reasons, self.identity,
             self.actor if decision in ("abort", "promote") else None, report_id])

    def _heartbeat(self, conn: psycopg.Connection[Any], flag: str) -> None:
        conn.execute("UPDATE rollout.watchers SET heartbeat_at = clock_timestamp()"
                     " WHERE flag = %s AND watcher = %s", [flag, self.identity])

    def _announce(self, flag: Flag, epoch: Epoch, result: Assessment, analysis_id: uuid.UUID,
                  report_id: uuid.UUID | None, webhook: str | None, stages: list[str]) -> None:
        event = {"kind": result.decision, "flag": flag.name, "stage": epoch.stage,
                 "verdict": result.verdict, "reasons": result.reasons,
                 "analysis_id": str(analysis_id),
                 "report_id": str(report_id) if report_id else None, "watcher": self.identity}
        if result.decision == "abort":
            self._notify(webhook, f":rotating_light: {flag.name} killed by rollout watch in "
                         f"stage {epoch.stage}: {result.reasons[0]}", event)
        elif result.decision == "promote":
            nxt = stages[stages.index(epoch.stage) + 1]
            self._notify(webhook, f":white_check_mark: {flag.name} promoted by rollout watch "
                         f"from {epoch.stage} to {nxt}", event)
        elif result.notify_inconclusive:
            self._notify(webhook, f":hourglass: {flag.name} in {epoch.stage}: inconclusive for "
                         f"{result.history.inconclusive_streak} intervals, a human should "
                         f"look: {result.reasons[0]}", {**event, "kind": "inconclusive"})

    def _notify(self, webhook: str | None, text: str, event: dict[str, Any]) -> None:
        if self.notifier is not None:
            self.notifier.send(webhook, text, event)

    def _webhook_for(self, flag_name: str) -> str | None:
        """The flag's webhook, else the workspace's, as far as the files still load."""
        try:
            ws = self.session.load(strict=False)
        except RolloutError:
            return None
        flag = ws.flags.get(flag_name)
        return (flag.webhook if flag else None) or ws.settings.webhook


def _figures(result: Assessment, core: Mapping[str, Any] | None,
             observations: Sequence[Observation], evidence: Evidence) -> dict[str, Any]:
    """What an interval stores and the timeline shows: small, JSON-ready."""
    ab = [o for o in observations if o.mode == "ab"]
    lat = (core or {}).get("latency") or {}
    mism = (core or {}).get("mismatches") or {}
    fail = (core or {}).get("failures") or {}
    return {
        "window": {"samples": len(ab), "aa": len(observations) - len(ab),
                   "hl_ratio": lat.get("hl_ratio"), "hl_ci": lat.get("hl_ci"),
                   "mismatches": mism.get("count"), "compared": mism.get("compared"),
                   "new_only_failures": fail.get("new_only"),
                   "environment_events": sum(e.get("count", 0) for e in
                                             (core or {}).get("environment_events", []))},
        "stage": {"pairs_timed": evidence.latency.n, "compared": evidence.ab[1],
                  "mismatched": evidence.ab[0], "aa_compared": evidence.aa[1],
                  "aa_mismatched": evidence.aa[0]},
        "sequential": result.sequential,
        "gates": [{"name": g["name"], "status": g["status"], "display": g["display"]}
                  for g in result.gates],
    }


def _hours(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


# -- the command ------------------------------------------------------------------------------


def watch(session: Session, flags: Sequence[str], *, once: bool = False,
          stop: threading.Event | None = None, log: Log = json_log,
          notifier: Notifier | None = None) -> list[Outcome]:
    """Watch ``flags`` until ``stop`` is set (after the interval in progress), or judge each
    once with ``once``. Flags must exist and load: a bad name or flag file is one line,
    exit 2, before anything is judged. Returns the last outcome of each flag."""
    from .notify import Notifier

    if not flags:
        raise InputError("name at least one flag to watch")
    ws = session.load(strict=False)
    for name in flags:
        broken = [e for e in ws.errors if e.file.endswith((f"/{name}.yaml", f"/{name}.yml"))]
        if broken:
            raise broken[0]
        ws.flag(name)
    stop = stop or threading.Event()
    own_notifier = notifier is None
    notifier = notifier or Notifier(log)
    watcher = Watcher(session, list(dict.fromkeys(flags)), log=log, notifier=notifier)
    last: dict[str, Outcome] = {}
    due = dict.fromkeys(watcher.flags, time.monotonic())
    log("info", "started", flags=watcher.flags, watcher=watcher.identity, once=once)
    try:
        while not stop.is_set():
            now = time.monotonic()
            for name in [n for n, t in due.items() if t <= now]:
                last[name] = watcher.interval(name)
                due[name] = time.monotonic() + (last[name].interval_s
                                                or _interval_s(ws_reload(session), name))
                if stop.is_set():
                    break
            if once:
                break
            stop.wait(max(0.0, min(due.values()) - time.monotonic()))
    finally:
        watcher.close()
        if own_notifier:
            notifier.close()
        log("info", "stopped", watcher=watcher.identity,
            reason="once" if once else "signal")
    return [last[n] for n in watcher.flags if n in last]


def ws_reload(session: Session) -> Workspace | None:
    try:
        return session.load(strict=False)
    except RolloutError:
        return None


def _interval_s(ws: Workspace | None, name: str) -> float:
    """Seconds to the flag's next interval: its current stage's, else the default."""
    if ws is None or name not in ws.flags:
        return Analysis().interval.total_seconds()
    flag = ws.flags[name]
    # not judged (idle, not the leader, an error): the stage is not known, and the
    # shortest interval of the flag's stages is never late for the one that is current
    return min([flag.analysis_for(s.name).interval.total_seconds() for s in flag.stages])


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set an event instead of unwinding: the interval in progress
    finishes (its action and record commit together, or not at all), then the watcher
    exits 0. Outside the main thread (no signals there) the event is only the caller's."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``rollout watch FLAG... [--once]`` on the CLI's subparsers (``common``: --dsn,
    --store-dsn, --workspace)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "watch", parents=[common],
        help="judge live stages every interval: abort on a failing gate, promote on GO")
    p.add_argument("flags", nargs="+", metavar="FLAG")
    p.add_argument("--once", action="store_true",
                   help="judge each flag once and exit (cron, CI): exit 1 if one was aborted")
    p.set_defaults(run=run)
    return p


def run(session: Session, args: argparse.Namespace) -> int:
    """The CLI's ``watch``: 0 when stopped by a signal or after ``--once``; with
    ``--once``, 1 when a flag was aborted and 2 when a flag could not be judged."""
    with graceful_stop() as stop:
        outcomes = watch(session, args.flags, once=args.once, stop=stop)
    if args.once:
        if any(o.decision == "abort" and o.status == "judged" for o in outcomes):
            return 1
        if any(o.status == "error" for o in outcomes):
            return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rollout.watch.loop``: the command alone (as ``rollout watch``)."""
    from pathlib import Path

    from ..run.session import Session

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn")
    common.add_argument("--store-dsn")
    common.add_argument("--workspace", default=".")
    parser = argparse.ArgumentParser(prog="rollout")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub, common)
    args = parser.parse_args(["watch", *(sys.argv[1:] if argv is None else argv)])
    session = Session(Path(args.workspace), dsn=args.dsn, store_dsn=args.store_dsn,
                      say=lambda m: print(m, file=sys.stderr))
    try:
        code: int = args.run(session, args)
        return code
    except RolloutError as exc:
        print(f"rollout: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
