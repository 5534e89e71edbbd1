"""A stage's figures computed by the store: aggregates in SQL, latencies streamed into numpy.

``StoreEvidence`` gives ``verdict.judge_evidence`` the same figures as the observations held
in memory would (``verdict.Listed``, the tests' oracle), without ever holding a Python object
per observation: counts, failures, tenants and lock figures come from one grouped scan of the
stage; latencies travel once, as binary arrays (8 bytes per value) in observation order; the
rarer rows (environment failures, mismatches, lock details) are read by their own small
queries only when the grouped scan says there are any. See docs/scale.md.
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray

from ..flags.model import Flag
from .stats import hodges_lehmann
from .summaries import (
    ENVIRONMENT_STATES,
    ENVIRONMENT_WINDOW,
    MIN_LATENCY_PAIRS,
    FloatArray,
    PoolSignal,
    failure_class,
    is_environment_failure,
    latency_figures,
)

STAGE = ("flag = %(flag)s AND stage = %(stage)s AND sql_hash = %(sql_hash)s"
         " AND mode = %(mode)s AND observed_at >= %(since)s")
"""A stage's rows of one mode: the prefix of observations_report_idx, and a lower time bound
(the stage's first observation) that prunes older partitions at planning."""
SERVED_ONLY = ("(decision = 'new' AND first_path IS NULL AND legacy_ns IS NULL"
               " AND legacy_error IS NULL AND new_error IS NULL)")
"""``Observation.served_only`` in SQL."""
PAIRED = "(source = 'online' AND served_ns IS NOT NULL AND first_path IS NOT NULL)"
"""``Observation.paired_online`` in SQL."""
JUDGED = f"{STAGE} AND NOT {SERVED_ONLY}"
ROWS_PER_WINDOW = 20_000
"""Rows the latency stream aims to carry per message (one time window of the stage)."""
NULL_NS = -(1 << 63)
"""A missing latency in the stream (no real latency is negative)."""
MASKED_TENANTS = 64
"""Up to this many tenants, their medians are found one comparison pass each, no sort."""
ENORMOUS = 1_000_000
"""From this many observations a report says, before it reads them, how long it will take."""
SCAN_RATE = 1_000_000.0
"""Observations a report reads per second, about, on a small server: the announced time."""


def _environment(column: str) -> str:
    states = ", ".join(f"'{s}'" for s in sorted(ENVIRONMENT_STATES))
    return f"({column} LIKE '08%%' OR {column} IN ({states}))"


def _first_line(column: str) -> str:
    """``verdict.first_line`` in SQL: the first line of the trimmed message, 200 characters
    (lines end at \\n, \\r, \\v or \\f; Python's other, rarer line ends are not split)."""
    trimmed = f"btrim({column}, E' \\t\\n\\r\\f' || chr(11))"
    return (f"CASE WHEN {trimmed} = '' OR {column} IS NULL THEN 'no error message' ELSE"
            f" left(split_part(translate({trimmed}, E'\\r\\f' || chr(11), E'\\n\\n\\n'),"
            " E'\\n', 1), 200) END")


@dataclass(frozen=True)
class _Group:
    """Observations alike in everything the count figures look at, and how many."""

    source: str
    tenant: str | None
    tenant_hash: int
    served_only: bool
    paired: bool
    legacy_state: str | None
    legacy_error: bool
    legacy_message: bool
    new_state: str | None
    new_error: bool
    new_message: bool
    matched: bool | None
    n: int
    first_at: datetime
    first_id: int
    last_at: datetime
    legacy_waits: tuple[int, int, int, int]
    new_waits: tuple[int, int, int, int]
    """Lock waits measured, of them > 0, their sum and their maximum (ns)."""
    locks: int

    def failed(self, path: str) -> bool:
        return (self.legacy_error or self.legacy_state is not None) if path == "legacy" \
            else (self.new_error or self.new_state is not None)

    def failure_class(self, path: str) -> str | None:
        if path == "legacy":
            return failure_class(self.legacy_state, "x" if self.legacy_message else None)
        return failure_class(self.new_state, "x" if self.new_message else None)


GROUPS_SQL = f"""
SELECT source, tenant, coalesce(hashtext(tenant), 0), {SERVED_ONLY}, {PAIRED},
       legacy_sqlstate, legacy_error IS NOT NULL, coalesce(legacy_error, '') <> '',
       new_sqlstate, new_error IS NOT NULL, coalesce(new_error, '') <> '', matched,
       count(*), min(observed_at), min(id), max(observed_at),
       count(legacy_lock_wait_ns), count(*) FILTER (WHERE legacy_lock_wait_ns > 0),
       coalesce(sum(legacy_lock_wait_ns), 0), coalesce(max(legacy_lock_wait_ns), 0),
       count(new_lock_wait_ns), count(*) FILTER (WHERE new_lock_wait_ns > 0),
       coalesce(sum(new_lock_wait_ns), 0), coalesce(max(new_lock_wait_ns), 0),
       count(locks)
  FROM rollout.observations WHERE {STAGE}
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
"""


@dataclass
class _Hit:
    """An environment failure of one path (one observation may hit both)."""

    at: datetime
    path: str
    state: str
    tenant: str | None
    source: str
    paired: bool
    decision: str
    legacy_failed: bool
    message: str
    """The first line of the new path's error (``verdict.first_line``)."""

    def other_pool(self) -> str:
        """``Observation.online_pool`` of the other path."""
        if self.paired:
            return "shadow"
        served = "new" if self.decision == "new" else "legacy"
        return "requests" if self.path != served else "shadow"


@dataclass(frozen=True)
class _Environment:
    counted: Counter[str]
    excused: Counter[str]
    events: list[dict[str, Any]]
    excused_new: list[_Hit]
    """Excused environment failures of the new path where legacy succeeded."""


class StoreEvidence:
    """The evidence of one flag's stage in the store, for ``verdict.judge_evidence``.

    Read everything inside one REPEATABLE READ transaction (``report.build_report`` does), so
    that rows a running service writes meanwhile do not change the figures half way.
    ``say`` receives progress lines (rows streamed); ``pool_signals`` are the runners' pool
    statistics around the online observations (``report.pool_signals``)."""

    def __init__(self, conn: psycopg.Connection[Any], flag: Flag, stage: str, *, seed: int = 0,
                 say: Callable[[str], None] | None = None) -> None:
        self.conn, self.flag, self.seed, self.say = conn, flag, seed, say
        self.pool_signals: Sequence[PoolSignal] = ()
        base = {"flag": flag.name, "stage": stage, "sql_hash": flag.sql_hash}
        first = [conn.execute(
            "SELECT min(observed_at) FROM rollout.observations WHERE flag = %(flag)s"
            " AND stage = %(stage)s AND sql_hash = %(sql_hash)s AND mode = %(mode)s",
            {**base, "mode": mode}).fetchone() for mode in ("ab", "aa")]
        since = min((r[0] for r in first if r and r[0] is not None), default=None)
        self.params: dict[str, Any] = {**base, "mode": "ab", "since": since}
        self.estimated = self._estimate() if since is not None else 0
        """The planner's estimate of the stage's A/B observations, before any is read."""
        self.groups: list[_Group] = []
        self.judged: list[_Group] = []
        self._latencies: dict[str, tuple[FloatArray, FloatArray, FloatArray, FloatArray]] = {}
        self._tenant_medians: dict[str | None, tuple[float | None, float | None]] | None = None
        self._noise: dict[str, dict[str, Any]] = {}

    def enormous(self) -> str | None:
        """What a user waiting for an enormous stage should know first, or None."""
        if self.estimated < ENORMOUS:
            return None
        seconds = max(1, round(self.estimated / SCAN_RATE))
        return (f"{self.flag.name} / {self.params['stage']}: about {self.estimated:,} "
                f"observations to read; the report takes about {seconds} s")

    def load(self) -> StoreEvidence:
        """Count the stage's observations by kind: one grouped scan."""
        if self.params["since"] is not None:
            self.groups = self._groups()
            self.judged = [g for g in self.groups if not g.served_only]
        return self

    # -- the stage at a glance ------------------------------------------------------------
    def _estimate(self) -> int:
        """The planner's estimate of the stage's rows: no scan."""
        with self.conn.cursor() as cur:
            cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM rollout.observations WHERE {STAGE}",
                        self.params)
            row = cur.fetchone()
        plan = row[0] if row else None
        try:
            return int(plan[0]["Plan"]["Plan Rows"])  # type: ignore[index]
        except (TypeError, KeyError, IndexError, ValueError):
            return 0

    def _groups(self) -> list[_Group]:
        started = time.monotonic()
        rows = self.conn.execute(GROUPS_SQL, self.params).fetchall()
        self._progress(f"counted {sum(r[12] for r in rows):,} observations",
                       time.monotonic() - started)
        out = [_Group(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
                      r[12], r[13], r[14], r[15], (r[16], r[17], int(r[18]), r[19]),
                      (r[20], r[21], int(r[22]), r[23]), r[24]) for r in rows]
        out.sort(key=lambda g: (g.first_at, g.first_id))  # first occurrence, as a list has it
        return out

    def _progress(self, what: str, seconds: float | None = None) -> None:
        if self.say is not None:
            self.say(what + (f" in {seconds:.1f} s" if seconds is not None else ""))

    def observed(self) -> dict[str, Any]:
        """Every A/B observation (requests served alone included): how many per source, the
        first and last time, and the online observations' first and last time."""
        online = [g for g in self.groups if g.source == "online"]
        return {
            "count": sum(g.n for g in self.groups),
            "by_source": {s: sum(g.n for g in self.groups if g.source == s)
                          for s in ("online", "offline")},
            "first": min((g.first_at for g in self.groups), default=None),
            "last": max((g.last_at for g in self.groups), default=None),
            "online_first": min((g.first_at for g in online), default=None),
            "online_last": max((g.last_at for g in online), default=None),
        }

    # -- verdict.StageEvidence ------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for g in self.judged:
            out[g.source] += g.n
        return dict(out)

    def run_samples(self) -> dict[Any, int]:
        if self.params["since"] is None:
            return {}
        rows = self.conn.execute(
            "SELECT run_id, count(*) FROM rollout.observations WHERE flag = %(flag)s"
            " AND stage = %(stage)s AND sql_hash = %(sql_hash)s AND mode IN ('ab', 'aa')"
            " AND observed_at >= %(since)s AND run_id IS NOT NULL GROUP BY run_id",
            self.params).fetchall()
        return {run_id: n for run_id, n in rows}

    def figures(self, source: str | None, *, latency: bool) -> dict[str, Any]:
        from .verdict import NewFailures  # verdict imports this module's callers

        g = self.flag.gates
        mine = [x for x in self.judged if source is None or x.source == source]
        compared = sum(x.n for x in mine if x.matched is not None)
        mismatched = sum(x.n for x in mine if x.matched is False)
        env = self._environment(source, mine)
        noise = self._noise_summary(source, latency=latency)
        only = [x for x in mine if x.failed("new") and not x.failed("legacy")]
        by_class: Counter[str] = Counter()
        for x in only:
            by_class[x.failure_class("new") or "other"] += x.n
        by_class.subtract(Counter("connection" for _ in env.excused_new))
        new_only_by_class = {c: n for c, n in by_class.items() if n > 0}
        count = sum(x.n for x in only) - len(env.excused_new)

        def most_common() -> tuple[str | None, str]:
            return self._most_common_error(source, env.excused_new)

        out: dict[str, Any] = {
            "environment": {"new_only": NewFailures(count, new_only_by_class, most_common),
                            "excused": len(env.excused_new)},
            "mismatches": {
                "count": mismatched,
                "compared": compared,
                "rate": mismatched / compared if compared else None,
                "noise_rate": noise["mismatch_rate"],
                "by_kind": self._kinds(source) if mismatched else {},
                "samples": self._mismatch_samples(source) if mismatched else [],
                "samples_omitted": max(0, mismatched - 5),
            },
            "failures": {
                "legacy": _failures(mine, "legacy"),
                "new": _failures(mine, "new"),
                "new_only": count,
                "new_only_by_class": new_only_by_class,
                "environment": {path: {"count": env.counted[path] + env.excused[path],
                                       "counted": env.counted[path]}
                                for path in ("legacy", "new")},
            },
            "environment_events": env.events,
            "locks": self._locks(source, mine),
            "tenants": self._tenants(mine, env) if self._whole(source) else [],
        }
        if latency:
            legacy, new, pair_legacy, pair_new = self._timed(source)
            out["noise"] = noise
            out["latency"] = {**latency_figures(
                legacy, new, pair_legacy, pair_new, g.latency.quantile, g.latency.confidence,
                g.latency.max_regression, noise, self.seed),
                "pairs_measured": self._timed_rows(source)}
            self._latencies.pop(source or "", None)  # handed over: overwritten, not kept
        return out

    def _whole(self, source: str | None) -> bool:
        """Are ``source``'s observations all of the stage's? (Tenants are shown for all.)"""
        return source is None or all(x.source == source for x in self.judged)

    # -- failures -------------------------------------------------------------------------
    def _most_common_error(self, source: str | None, excused: Sequence[_Hit]
                           ) -> tuple[str | None, str]:
        rows = self.conn.execute(
            f"SELECT new_sqlstate, {_first_line('new_error')}, count(*) FROM"
            f" rollout.observations WHERE {JUDGED}{_source(source)}"
            " AND (new_error IS NOT NULL OR new_sqlstate IS NOT NULL)"
            " AND legacy_error IS NULL AND legacy_sqlstate IS NULL"
            " GROUP BY 1, 2 ORDER BY min(observed_at), min(id)",
            {**self.params, "source": source}).fetchall()
        counts: Counter[tuple[str | None, str]] = Counter(
            {(state, message): n for state, message, n in rows})
        counts.subtract(Counter((h.state, h.message) for h in excused))
        best = max(counts.values(), default=0)
        return next((k for k, n in counts.items() if n == best),
                    (None, "no error message"))

    def _environment(self, source: str | None, mine: Sequence[_Group]) -> _Environment:
        """``summaries.environment_failures`` of the stage: which environment failures count
        against their path. The failures are read one by one (they are rare); whether the
        other path succeeded or failed within the window of each is decided in SQL from the
        stage's rows by second (the earliest and latest success and failure of each path in
        each second), the exact test ``near`` makes on a sorted list of times."""
        empty = _Environment(Counter(), Counter(), [], [])
        if not any(is_environment_failure(x.legacy_state) or is_environment_failure(x.new_state)
                   for x in mine):
            return empty
        p = {**self.params, "source": source, "window": ENVIRONMENT_WINDOW}
        where = f"{JUDGED}{_source(source)}"
        env_l, env_n = _environment("legacy_sqlstate"), _environment("new_sqlstate")
        rows = self.conn.execute(
            f"SELECT observed_at, tenant, source, {PAIRED}, decision, legacy_sqlstate,"
            " new_sqlstate, legacy_error IS NOT NULL OR legacy_sqlstate IS NOT NULL,"
            f" {_first_line('new_error')} FROM rollout.observations"
            f" WHERE {where} AND ({env_l} OR {env_n}) ORDER BY observed_at, id", p).fetchall()
        ok = {path: f"({path}_error IS NULL AND {path}_sqlstate IS NULL AND {path}_ns IS NOT NULL)"
              for path in ("legacy", "new")}
        bounds = ", ".join(
            f"min(observed_at) FILTER (WHERE {cond}) AS {name}_min,"
            f" max(observed_at) FILTER (WHERE {cond}) AS {name}_max"
            for name, cond in (("ok_legacy", ok["legacy"]), ("ok_new", ok["new"]),
                               ("env_legacy", env_l), ("env_new", env_n)))
        near = ", ".join(
            f"coalesce(bool_or(b.{name}_max >= h.t - %(window)s"
            f" AND b.{name}_min <= h.t + %(window)s), false)"
            for name in ("ok_legacy", "ok_new", "env_legacy", "env_new"))
        flags = {t: (a, b, c, d) for t, a, b, c, d in self.conn.execute(
            f"WITH h AS (SELECT DISTINCT observed_at AS t FROM rollout.observations"
            f"  WHERE {where} AND ({env_l} OR {env_n})),"
            f" b AS (SELECT date_trunc('second', observed_at) AS sec, {bounds}"
            f"  FROM rollout.observations WHERE {where}"
            f"  AND observed_at >= (SELECT min(t) FROM h) - %(window)s"
            f"  AND observed_at <= (SELECT max(t) FROM h) + %(window)s GROUP BY 1)"
            f" SELECT h.t, {near} FROM h"
            " CROSS JOIN LATERAL generate_series(date_trunc('second', h.t - %(window)s),"
            "  h.t + %(window)s, interval '1 second') AS s(sec)"
            " LEFT JOIN b ON b.sec = s.sec GROUP BY h.t", p).fetchall()}
        signals: dict[str, list[datetime]] = {"requests": [], "shadow": []}
        for s in self.pool_signals:
            if s.count > 0:
                signals.setdefault(s.pool, []).append(s.at)
        counted: Counter[str] = Counter()
        excused: Counter[str] = Counter()
        excused_new: list[_Hit] = []
        groups: dict[tuple[str, str, str], list[int]] = {}
        for at, tenant, src, paired, decision, l_state, n_state, l_failed, message in rows:
            ok_l, ok_n, env_ln, env_nn = flags[at]
            for path, state in (("legacy", l_state), ("new", n_state)):
                if not is_environment_failure(state):
                    continue
                hit = _Hit(at, path, state, tenant, src, paired, decision, l_failed, message)
                other_ok, other_env = (ok_n, env_nn) if path == "legacy" else (ok_l, env_ln)
                alone = (other_ok and not other_env and not (
                    src == "online" and _near(signals.get(hit.other_pool(), []), at)))
                (counted if alone else excused)[path] += 1
                if not alone and path == "new" and not l_failed:
                    excused_new.append(hit)
                minute = at.replace(second=0, microsecond=0).isoformat(timespec="minutes")
                group = groups.setdefault((minute, path, state), [0, 0])
                group[0] += 1
                group[1] += int(alone)
        events = [{"at": m, "path": p_, "sqlstate": s, "count": n, "counted": c}
                  for (m, p_, s), (n, c) in sorted(groups.items())]
        return _Environment(counted, excused, events, excused_new)

    # -- mismatches -----------------------------------------------------------------------
    def _kinds(self, source: str | None) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT kind, count(*) FROM (SELECT DISTINCT o.observed_at, o.id, d ->> 'kind'"
            " AS kind FROM rollout.observations o CROSS JOIN LATERAL jsonb_array_elements("
            " CASE jsonb_typeof(o.diff) WHEN 'array' THEN o.diff ELSE '[]' END) AS d"
            f" WHERE {JUDGED}{_source(source, 'o.')} AND o.matched = false) AS k"
            " GROUP BY kind", {**self.params, "source": source}).fetchall()
        return dict(sorted((str(k), int(n)) for k, n in rows))

    def _mismatch_samples(self, source: str | None) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT tenant, params, diff FROM rollout.observations WHERE {JUDGED}"
            f"{_source(source)} AND matched = false ORDER BY observed_at, id LIMIT 5",
            {**self.params, "source": source}).fetchall()
        return [{"tenant": t, "params": p, "diff": d or [], "truncated": False}
                for t, p, d in rows]

    # -- noise ----------------------------------------------------------------------------
    def _noise_summary(self, source: str | None, *, latency: bool) -> dict[str, Any]:
        key = source or ""
        if key in self._noise and (not latency or "latency_ratio" in self._noise[key]):
            return self._noise[key]
        p = {**self.params, "mode": "aa", "source": source}
        if p["since"] is None:
            samples = compared = bad = 0
        else:
            samples, compared, bad = self.conn.execute(
                "SELECT count(*), count(matched), count(*) FILTER (WHERE matched = false)"
                f" FROM rollout.observations WHERE {STAGE}{_source(source)}", p).fetchone() \
                or (0, 0, 0)
        out: dict[str, Any] = {"samples": samples, "compared": compared,
                               "mismatch_rate": bad / compared if compared else None,
                               "latency_ratio": None, "latency_ci": None}
        if latency and samples:
            timed = self.conn.execute(
                "SELECT count(legacy_ns), count(new_ns), count(*) FILTER (WHERE"
                " legacy_ns IS NOT NULL OR new_ns IS NOT NULL) FROM rollout.observations"
                f" WHERE {STAGE}{_source(source)}", p).fetchone() or (0, 0, 0)
            if min(timed[0], timed[1]) >= MIN_LATENCY_PAIRS:
                a, b, _, _ = self._stream(
                    p, f"{STAGE}{_source(source)} AND (legacy_ns IS NOT NULL OR new_ns IS NOT"
                    " NULL)", timed[2], tenants=False)
                a, b = _present(a), _present(b)
                shift = hodges_lehmann(np.log(a, out=a), np.log(b, out=b),
                                       self.flag.gates.latency.confidence)
                out["latency_ratio"] = math.exp(shift.estimate)
                out["latency_ci"] = [math.exp(shift.low), math.exp(shift.high)]
        self._noise[key] = out
        return out

    # -- locks ----------------------------------------------------------------------------
    def _locks(self, source: str | None, mine: Sequence[_Group]) -> dict[str, Any]:
        """``summaries.locks_summary``: wait figures from the groups, the 95th percentile
        from two order statistics, held locks and waits from the rows that listed any."""
        out: dict[str, Any] = {}
        p = {**self.params, "source": source}
        where = f"{JUDGED}{_source(source)}"
        has_locks = any(x.locks for x in mine)
        for path in ("legacy", "new"):
            waits = [x.legacy_waits if path == "legacy" else x.new_waits for x in mine]
            measured = sum(w[0] for w in waits)
            total = sum(w[2] for w in waits)
            held: list[list[str]] = []
            episodes: Counter[str] = Counter()
            if has_locks:
                held = sorted([str(r), str(m)] for r, m in self.conn.execute(
                    "SELECT DISTINCT h ->> 0, h ->> 1 FROM rollout.observations CROSS JOIN"
                    f" LATERAL jsonb_array_elements(CASE jsonb_typeof(locks -> '{path}' ->"
                    f" 'held') WHEN 'array' THEN locks -> '{path}' -> 'held' ELSE '[]' END)"
                    f" AS h WHERE {where} AND locks IS NOT NULL", p))
                for mode, relation, locktype, n in self.conn.execute(
                        "SELECT w -> 'mode', w -> 'relation', w -> 'locktype', count(*)"
                        " FROM rollout.observations CROSS JOIN LATERAL jsonb_array_elements("
                        f"CASE jsonb_typeof(locks -> '{path}' -> 'waits') WHEN 'array' THEN"
                        f" locks -> '{path}' -> 'waits' ELSE '[]' END) AS w WHERE {where}"
                        " AND locks IS NOT NULL GROUP BY 1, 2, 3"
                        " ORDER BY min(observed_at), min(id)", p):
                    episodes[f"{mode} on {relation or locktype}"] += n
            out[path] = {
                "measured": measured, "waited": sum(w[1] for w in waits),
                "mean_wait_ms": (total / measured / 1e6) if measured else 0.0,
                "p95_wait_ms": self._wait_quantile(path, measured, where, p) / 1e6
                if measured else 0.0,
                "max_wait_ms": max(w[3] for w in waits if w[0]) / 1e6 if measured else 0.0,
                "lock_timeouts": sum(x.n for x in mine
                                     if (x.legacy_state if path == "legacy" else x.new_state)
                                     == "55P03"),
                "held": held,
                "waited_on": dict(episodes),
            }
        legacy_held = {tuple(x) for x in out["legacy"]["held"]}
        new_held = {tuple(x) for x in out["new"]["held"]}
        compared = False
        if has_locks:
            nonempty = " OR ".join(
                f"(jsonb_typeof(locks -> '{x}' -> 'held') = 'array' AND"
                f" jsonb_array_length(locks -> '{x}' -> 'held') > 0)" for x in ("legacy", "new"))
            row = self.conn.execute(
                "SELECT coalesce(bool_or(legacy_error IS NULL AND legacy_sqlstate IS NULL),"
                " false), coalesce(bool_or(new_error IS NULL AND new_sqlstate IS NULL), false)"
                f" FROM rollout.observations WHERE {where} AND locks IS NOT NULL"
                f" AND ({nonempty})", p).fetchone()
            compared = bool(row and row[0] and row[1])
        out["only_new_holds"] = sorted([list(x) for x in new_held - legacy_held]) \
            if compared else []
        out["only_legacy_holds"] = sorted([list(x) for x in legacy_held - new_held]) \
            if compared else []
        out["note"] = ("waits sampled from pg_locks every 10 ms; a wait shorter than that may "
                       "be missed; lock_timeout failures (55P03) count as failures")
        return out

    def _wait_quantile(self, path: str, n: int, where: str, p: dict[str, Any]) -> float:
        """``np.quantile`` of the path's measured lock waits at 0.95."""
        column = f"{path}_lock_wait_ns"
        return float(quantiles(self.conn, column, f"{where} AND {column} IS NOT NULL", p, n,
                               [0.95])[0])

    # -- tenants --------------------------------------------------------------------------
    def _tenants(self, mine: Sequence[_Group], env: _Environment) -> list[dict[str, Any]]:
        medians = self._medians()
        excused: Counter[str | None] = Counter(h.tenant for h in env.excused_new)
        rows: dict[str | None, dict[str, Any]] = {}
        for x in mine:
            row = rows.setdefault(x.tenant, {
                "tenant": x.tenant, "samples": 0, "mismatches": 0,
                "legacy_p50_ms": None, "new_p50_ms": None, "new_failures": 0,
                "new_failures_by_class": Counter()})
            row["samples"] += x.n
            row["mismatches"] += x.n if x.matched is False else 0
            if x.failed("new") and not x.failed("legacy"):
                row["new_failures"] += x.n
                row["new_failures_by_class"][x.failure_class("new") or "other"] += x.n
        out = []
        for tenant, row in sorted(rows.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
            row["new_failures"] -= excused[tenant]
            row["new_failures_by_class"].subtract(
                Counter("connection" for h in env.excused_new if h.tenant == tenant))
            row["new_failures_by_class"] = {c: n for c, n in row["new_failures_by_class"].items()
                                            if n > 0}
            row["legacy_p50_ms"], row["new_p50_ms"] = medians.get(tenant, (None, None))
            out.append(row)
        return out

    def _medians(self) -> dict[str | None, tuple[float | None, float | None]]:
        """Each tenant's median latency per path, in ms: from the streamed latencies."""
        if self._tenant_medians is None:
            self._load_stream()
        assert self._tenant_medians is not None
        return self._tenant_medians

    # -- latencies ------------------------------------------------------------------------
    def _timed_rows(self, source: str | None) -> int:
        return sum(x.n for x in self.judged if (source is None or x.source == source)
                   and (x.source == "offline" or x.paired))

    def _timed(self, source: str | None
               ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """The source's timed executions per path and its pairs, in observation order."""
        key = source or ""
        if key not in self._latencies:
            self._load_stream()
        if key not in self._latencies:
            empty = np.empty(0)
            return empty, empty.copy(), empty.copy(), empty.copy()
        return self._latencies[key]

    def _load_stream(self) -> None:
        """Stream the stage's judged observations once: tenants' medians, then each source's
        timed latencies (online: the pairs measured like for like)."""
        total = sum(x.n for x in self.judged)
        hashes = {x.tenant: x.tenant_hash for x in self.judged}
        unique = len(set(hashes.values())) == len(hashes)
        legacy, new, codes, kinds = self._stream(self.params, JUDGED, total, tenants=unique)
        self._tenant_medians = (_medians_by_code(legacy, new, codes, hashes) if unique
                                else self._sql_medians())
        del codes
        for source in ("offline", "online"):
            is_online = (kinds & 1) == 1
            mask = (is_online & ((kinds & 2) == 2)) if source == "online" else ~is_online
            if not mask.any():
                continue
            everyone = bool(mask.all())
            a = legacy if everyone else legacy[mask]
            b = new if everyone else new[mask]
            both = ~np.isnan(a) & ~np.isnan(b)
            if both.all():
                self._latencies[source] = (a, b, a, b)
            else:
                pair_a, pair_b = a[both], b[both]
                if everyone:  # the whole arrays are handed over: compact them in place
                    a, b = _compact(a), _compact(b)
                else:
                    a, b = _present(a), _present(b)
                self._latencies[source] = (a, b, pair_a, pair_b)

    def _sql_medians(self) -> dict[str | None, tuple[float | None, float | None]]:
        """Tenants' medians in SQL, when two tenants' names hash alike (the stream tells
        tenants apart by hash). ``percentile_cont`` of integers below 2**52 is exactly
        ``np.median``'s mean of the two middle values."""
        rows = self.conn.execute(
            "SELECT tenant, percentile_cont(0.5) WITHIN GROUP (ORDER BY legacy_ns),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY new_ns) FROM rollout.observations"
            f" WHERE {JUDGED} GROUP BY tenant", self.params).fetchall()
        return {t: (None if a is None else float(a) / 1e6, None if b is None else float(b) / 1e6)
                for t, a, b in rows}

    def _stream(self, params: dict[str, Any], where: str, rows: int, *, tenants: bool
                ) -> tuple[FloatArray, FloatArray, NDArray[np.int32], NDArray[np.int16]]:
        """``legacy_ns`` and ``new_ns`` (NaN when missing), the tenant's hash and the kind of
        each row (1: online, 2: a pair), in order of ``observed_at, id``.

        Rows travel as binary arrays, one message per time window of about
        ``ROWS_PER_WINDOW`` rows (a window's rows read by the index, sorted in the window):
        one message per row would cost more in Python than the whole scan in the server."""
        legacy = np.full(rows, np.nan)
        new = np.full(rows, np.nan)
        codes = np.zeros(rows if tenants else 0, dtype=np.int32)
        kinds = np.zeros(rows, dtype=np.int16)
        if not rows:
            return legacy, new, codes, kinds
        first, last = self.conn.execute(
            f"SELECT min(observed_at), max(observed_at) FROM rollout.observations WHERE {where}",
            params).fetchone() or (None, None)
        if first is None or last is None:
            return legacy[:0], new[:0], codes[:0], kinds[:0]
        windows = max(1, math.ceil(rows / ROWS_PER_WINDOW))
        step = max((last - first) / windows, timedelta(microseconds=1))
        order = "ORDER BY observed_at, id"
        tenant = f"array_agg(coalesce(hashtext(tenant), 0) {order})" if tenants \
            else "NULL::int[]"
        query = (
            f"COPY (SELECT a.l, a.n, {'a.t' if tenants else 'NULL::int[]'}, a.k"
            " FROM generate_series(%(first)s::timestamptz, %(last)s::timestamptz,"
            " %(step)s::interval) AS w(start) CROSS JOIN LATERAL ("
            f"SELECT array_agg(coalesce(legacy_ns, {NULL_NS}) {order}) AS l,"
            f" array_agg(coalesce(new_ns, {NULL_NS}) {order}) AS n, {tenant} AS t,"
            f" array_agg(((source = 'online')::int + 2 * {PAIRED}::int)::int2 {order}) AS k"
            f" FROM rollout.observations WHERE {where} AND observed_at >= w.start"
            " AND observed_at < w.start + %(step)s::interval) AS a"
            " WHERE a.l IS NOT NULL ORDER BY w.start) TO STDOUT (FORMAT BINARY)")
        filled = 0
        started = time.monotonic()
        reported = started
        with self.conn.cursor() as cur, cur.copy(
                query, {**params, "first": first, "last": last, "step": step}) as copy:
            for fields in _binary_rows(copy):
                ls = _int_array(fields[0], ">i8")
                end = filled + len(ls)
                if end > len(legacy):  # cannot happen in one snapshot; never overrun
                    raise psycopg.DataError("the stage changed while it was read")
                legacy[filled:end] = np.where(ls == NULL_NS, np.nan, ls)
                ns = _int_array(fields[1], ">i8")
                new[filled:end] = np.where(ns == NULL_NS, np.nan, ns)
                if tenants and fields[2] is not None:
                    codes[filled:end] = _int_array(fields[2], ">i4")
                kinds[filled:end] = _int_array(fields[3], ">i2")
                filled = end
                if time.monotonic() - reported > 1.0:
                    reported = time.monotonic()
                    self._progress(f"read {filled:,} of {rows:,} latencies")
        self._progress(f"read {filled:,} latencies", time.monotonic() - started)
        return legacy[:filled], new[:filled], codes[:filled] if tenants else codes, \
            kinds[:filled]


def _source(source: str | None, prefix: str = "") -> str:
    return "" if source is None else f" AND {prefix}source = %(source)s"


def _near(times: list[datetime], at: datetime) -> bool:
    return any(abs(t - at) <= ENVIRONMENT_WINDOW for t in times)


def _failures(groups: Sequence[_Group], path: str) -> dict[str, Any]:
    """``summaries.failures_summary`` of one path."""
    states: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    for x in groups:
        cls = x.failure_class(path)
        if cls is None:
            continue
        state = x.legacy_state if path == "legacy" else x.new_state
        states[state or "client"] += x.n
        classes[cls] += x.n
    return {"count": sum(states.values()), "by_sqlstate": dict(states),
            "by_class": dict(classes)}


def quantiles(conn: psycopg.Connection[Any], column: str, where: str,
              params: dict[str, Any], n: int, qs: Sequence[float]) -> NDArray[np.float64]:
    """``np.quantile`` (linear) of the ``n`` integer values of ``column`` in the rows
    ``where``, in one sort by the server: the two order statistics around each quantile
    (``percentile_disc`` at the middle of an order statistic's share picks exactly it), then
    numpy's own interpolation between them, so the result is the same to the last bit."""
    virtual = (n - 1) * np.asarray(qs, dtype=float)
    below = np.minimum(np.floor(virtual).astype(np.int64), n - 1)
    above = np.minimum(below + 1, n - 1)
    ranks = sorted({int(k) for k in (*below, *above)})
    fractions = [(k + 0.5) / n for k in ranks]
    row = conn.execute(f"SELECT percentile_disc(%(fractions)s::float8[]) WITHIN GROUP"
                       f" (ORDER BY {column}) FROM rollout.observations WHERE {where}",
                       {**params, "fractions": fractions}).fetchone()
    at = dict(zip(ranks, row[0] if row else [], strict=True))
    out = np.empty(len(qs))
    for i, (lo, hi, v) in enumerate(zip(below, above, virtual, strict=True)):
        # np.quantile of the pair at the same fraction: (2 - 1) * gamma is gamma itself
        pair = np.array([at[int(lo)], at[int(hi)]], dtype=np.int64)
        out[i] = np.quantile(pair, v - np.floor(v)) if v < n - 1 else pair[1]
    return out


def served_window(conn: psycopg.Connection[Any], flag: str, stage: str, start: datetime,
                  end: datetime) -> dict[str, Any]:
    """``report._window`` in SQL: the served requests of a stage in ``[start, end)`` (any SQL
    version), what callers saw (``served_ns``; rows recorded before it existed hold it in the
    served path's column). Aggregates and one sort for the quantiles; no row travels."""
    p = {"flag": flag, "stage": stage, "start": start, "end": end}
    where = ("flag = %(flag)s AND stage = %(stage)s AND source = 'online' AND mode = 'ab'"
             " AND observed_at >= %(start)s AND observed_at < %(end)s")
    served = "coalesce(served_ns, CASE WHEN decision = 'new' THEN new_ns ELSE legacy_ns END)"
    path = "CASE WHEN decision = 'new' THEN new_{0} ELSE legacy_{0} END"
    requests, served_new, timed, waits, wait_sum = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE decision = 'new'), count({served}),"
        f" count({path.format('lock_wait_ns')}) FILTER (WHERE NOT {PAIRED}),"
        f" sum({path.format('lock_wait_ns')}) FILTER (WHERE NOT {PAIRED})"
        f" FROM rollout.observations WHERE {where}", p).fetchone() or (0, 0, 0, 0, None)
    classes: Counter[str] = Counter()
    for state, message, n in conn.execute(
            f"SELECT {path.format('sqlstate')}, coalesce({path.format('error')}, '') <> '',"
            f" count(*) FROM rollout.observations WHERE {where} AND NOT {PAIRED}"
            f" GROUP BY 1, 2 ORDER BY min(observed_at), min(id)", p):
        cls = failure_class(state, "x" if message else None)
        if cls:
            classes[cls] += n
    q: list[float | None] = [None] * 3
    if timed:
        q = [float(v) for v in quantiles(conn, served, f"{where} AND {served} IS NOT NULL", p,
                                         timed, [0.5, 0.95, 0.99]) / 1e6]
    return {"requests": requests, "served_new": served_new,
            "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2],
            "mean_lock_wait_ms": (int(wait_sum or 0) / waits / 1e6) if waits else None,
            "failures_by_class": dict(classes)}


def _present(values: FloatArray) -> FloatArray:
    out: FloatArray = values[~np.isnan(values)]
    return out


def _compact(values: FloatArray, chunk: int = 1 << 20) -> FloatArray:
    """The values that are not NaN, moved to the front in place: a prefix view."""
    kept = 0
    for start in range(0, len(values), chunk):
        part = values[start:start + chunk]
        keep = part[~np.isnan(part)]
        values[kept:kept + len(keep)] = keep
        kept += len(keep)
    return values[:kept]


def _medians_by_code(legacy: FloatArray, new: FloatArray, codes: NDArray[np.int32],
                     hashes: dict[str | None, int]
                     ) -> dict[str | None, tuple[float | None, float | None]]:
    """Each tenant's ``np.median`` per path (in ms), from rows labelled by tenant hash."""
    out: dict[str | None, tuple[float | None, float | None]] = {}
    if not len(codes):
        return out
    # a few tenants: one comparison per tenant; many: one sort (8 bytes a row more)
    order = np.argsort(codes, kind="stable") if len(hashes) > MASKED_TENANTS else None
    ordered = codes[order] if order is not None else codes
    for tenant, code in hashes.items():
        if order is None:
            rows = np.flatnonzero(codes == code)
        else:
            rows = order[np.searchsorted(ordered, code, side="left"):
                         np.searchsorted(ordered, code, side="right")]
        medians: list[float | None] = []
        for values in (legacy, new):
            mine = values[rows]
            mine = mine[~np.isnan(mine)]
            # the median of integers as np.median computes it on the int64 values
            medians.append(float(np.median(mine.astype(np.int64))) / 1e6 if len(mine) else None)
        out[tenant] = (medians[0], medians[1])
    return out


def _binary_rows(copy: Iterable[Any]) -> Iterator[list[bytes | None]]:
    """The rows of a ``COPY ... TO STDOUT (FORMAT BINARY)``, each a list of its fields' raw
    bytes (None for NULL)."""
    buf = bytearray()
    pos = 0
    header = ended = False
    for data in copy:  # read to the end, trailer included: the COPY must finish
        if ended:
            continue
        buf += data
        if not header:
            if len(buf) < 19:
                continue
            if bytes(buf[:11]) != b"PGCOPY\n\xff\r\n\x00":
                raise psycopg.DataError("unexpected COPY header")
            (extension,) = struct.unpack_from(">i", buf, 15)
            pos = 19 + extension
            header = True
        while True:
            row = _binary_row(buf, pos)
            if row is None:
                break
            fields, pos = row
            if fields is None:
                ended = True
                break
            yield fields
        del buf[:pos]
        pos = 0


def _binary_row(buf: bytearray, pos: int) -> tuple[list[bytes | None] | None, int] | None:
    """One row from ``pos``: (fields, next position), (None, ...) at the trailer, or None
    when the row is not all there yet."""
    if len(buf) < pos + 2:
        return None
    (count,) = struct.unpack_from(">h", buf, pos)
    if count == -1:
        return None, pos + 2
    at = pos + 2
    fields: list[bytes | None] = []
    for _ in range(count):
        if len(buf) < at + 4:
            return None
        (size,) = struct.unpack_from(">i", buf, at)
        at += 4
        if size < 0:
            fields.append(None)
            continue
        if len(buf) < at + size:
            return None
        fields.append(bytes(buf[at:at + size]))
        at += size
    return fields, at


def _int_array(raw: bytes | None, kind: str) -> NDArray[Any]:
    """The elements of a one-dimensional binary array of integers without NULLs."""
    if raw is None:
        return np.empty(0, dtype=kind)
    ndim, _, _ = struct.unpack_from(">iii", raw, 0)
    if ndim == 0:
        return np.empty(0, dtype=kind)
    (length, _) = struct.unpack_from(">ii", raw, 12)
    width = np.dtype(kind).itemsize
    items = np.frombuffer(raw, dtype=np.dtype([("size", ">i4"), ("value", kind)]),
                          count=length, offset=20)
    if length and (items["size"] != width).any():
        raise psycopg.DataError("unexpected NULL in a streamed array")
    return items["value"].astype(kind.replace(">", "="))
