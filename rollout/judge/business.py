"""Business metrics beside query metrics: a flag's ``business:`` checks around a stage change."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from numpy.typing import ArrayLike
from psycopg.pq import TransactionStatus
from scipy import stats

from ..errors import ConnectionFailed
from ..flags.model import BusinessCheck, Flag
from ..run import execute
from ..run.privileges import require_least_privilege
from ..store.connection import connect, scrub
from ..store.store import Store
from .gates import Gate

SUB_WINDOWS = 6
"""Each side of the change is split into this many sub-windows: one value of the metric
each, so each side is a small sample whose spread the interval is built from."""
MIN_VALUES = 3
"""Values a side needs before a relative change is estimated."""
LOCK_TIMEOUT_MS = 2_000


@dataclass(frozen=True)
class Interval:
    """The relative change after ÷ before − 1 (sign-corrected for a negative baseline), and
    its confidence interval (None when unbounded: the baseline is not distinguishable
    from zero)."""

    change: float
    low: float | None
    high: float | None


def relative_change(before: ArrayLike, after: ArrayLike, confidence: float) -> Interval | None:
    """Fieller's interval for the ratio of two independent means (Fieller 1954; for
    independent samples, with the Welch-Satterthwaite degrees of freedom of the ratio's
    linearised variance), as a relative change. None when the baseline mean is 0 (no
    relative change exists). Unlike dividing a difference's interval by the baseline, it
    carries the baseline's own uncertainty: a noisy baseline widens the interval, up to
    unbounded (``low``/``high`` None)."""
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    mb, ma = float(b.mean()), float(a.mean())
    if mb == 0:
        return None
    sign = 1.0 if mb > 0 else -1.0
    ratio = ma / mb
    change = (ratio - 1) * sign
    va = float(a.var(ddof=1)) / len(a)  # variances of the two means
    vb = float(b.var(ddof=1)) / len(b)
    spread = va + ratio * ratio * vb
    if spread == 0:  # every sub-window alike on both sides: the change is exact
        return Interval(change, change, change)
    df = spread * spread / (va * va / (len(a) - 1) + (ratio * ratio * vb) ** 2 / (len(b) - 1))
    t = float(stats.t.ppf(0.5 + confidence / 2, df))
    g = t * t * vb / (mb * mb)
    if g >= 1:
        return Interval(change, None, None)
    root = t / abs(mb) * math.sqrt(va * (1 - g) + ratio * ratio * vb)
    ends = sorted(((r / (1 - g)) - 1) * sign for r in (ratio - root, ratio + root))
    return Interval(change, ends[0], ends[1])


def business_impact(conn: psycopg.Connection[Any], flag: Flag, changed_at: datetime,
                    window: timedelta | None = None, *, until: datetime | None = None,
                    limits: execute.Limits | None = None) -> list[dict[str, Any]]:
    """Each business check of ``flag`` over the window before ``changed_at`` against the
    window after it, JSON-ready (docs/business.md).

    Each side is split into ``SUB_WINDOWS`` sub-windows and the check's query runs once per
    sub-window, through ``execute.execute``: one statement (extended protocol), READ ONLY,
    always rolled back, under ``SET LOCAL`` timeouts and the client-side deadline. The
    first execution that fails ends that check (inconclusive, its error shown): a query
    that times out costs one timeout, not twelve. Sub-windows that end after ``until``
    (default now: the evidence so far; or when the flag left the stage) are not run.
    ``window`` overrides every check's own ``window_minutes``. ``conn`` must be in
    autocommit mode and idle (the toolkit opens each transaction itself); the report's
    snapshot connection is not: use ``stage_business``."""
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("business checks need an idle connection in autocommit mode")
    end = until or datetime.now(UTC)
    return [_impact(conn, check, changed_at, window or check.window, end, limits)
            for check in flag.business]


def _impact(conn: psycopg.Connection[Any], check: BusinessCheck, changed_at: datetime,
            span: timedelta, until: datetime, limits: execute.Limits | None
            ) -> dict[str, Any]:
    step = span / SUB_WINDOWS
    sides = {"before": [changed_at - span + i * step for i in range(SUB_WINDOWS)],
             "after": [changed_at + i * step for i in range(SUB_WINDOWS)]}
    out = _base(check, changed_at, span)
    bounds = limits or execute.Limits(statement_timeout_ms=check.statement_timeout_ms,
                                      lock_timeout_ms=min(LOCK_TIMEOUT_MS,
                                                          check.statement_timeout_ms))
    values: dict[str, list[float]] = {}
    for side, starts in sides.items():
        elapsed = [s for s in starts if s + step <= until]
        found: list[float] = []
        empty = 0
        for start in elapsed:
            value, problem = _metric(conn, check, start, start + step, bounds)
            if problem is not None:
                return {**out, **_verdict("inconclusive", f"{check.name}: the query failed "
                                          f"for {start.isoformat(timespec='seconds')} + "
                                          f"{_minutes(step)}: {problem}", lacking=False)}
            if value is None:
                empty += 1
            else:
                found.append(value)
        values[side] = found
        out[side] = {"start": starts[0].isoformat(timespec="seconds"),
                     "end": (starts[0] + span).isoformat(timespec="seconds"),
                     "values": found, "empty": empty,
                     "not_elapsed": len(starts) - len(elapsed),
                     "mean": float(np.mean(found)) if found else None}
    short = [side for side in sides if len(values[side]) < MIN_VALUES]
    if short:
        side = short[0]
        waiting = out[side]["not_elapsed"]
        why = (f"only {len(values[side])} of {SUB_WINDOWS} sub-windows {side} the change have "
               f"a value (need {MIN_VALUES})")
        if waiting:
            why += f"; {waiting} have not elapsed yet"
        return {**out, **_verdict("inconclusive", f"{check.name}: {why}", lacking=True)}
    interval = relative_change(values["before"], values["after"], check.confidence)
    if interval is None:
        return {**out, **_verdict("inconclusive", f"{check.name}: the metric was 0 before the "
                                  "change; a relative change is undefined", lacking=True)}
    out["change"] = interval.change
    out["ci"] = [interval.low, interval.high] if interval.low is not None else None
    return {**out, **_judge(check, interval, out["before"]["mean"], out["after"]["mean"])}


def _base(check: BusinessCheck, changed_at: datetime, span: timedelta) -> dict[str, Any]:
    return {"name": check.name, "direction": check.direction, "tolerance": check.tolerance,
            "gate": check.gate, "confidence": check.confidence,
            "changed_at": changed_at.isoformat(timespec="seconds"),
            "window_minutes": span.total_seconds() / 60,
            "sub_window_minutes": span.total_seconds() / 60 / SUB_WINDOWS,
            "before": None, "after": None, "change": None, "ci": None}


def _judge(check: BusinessCheck, iv: Interval, before: float, after: float
           ) -> dict[str, Any]:
    """Fails when the whole interval is worse than the tolerance (worse, beyond it, with
    confidence); inconclusive when the estimate is beyond it but the interval is not;
    passes otherwise: the rule of the latency gate."""
    sign = 1.0 if check.direction == "higher" else -1.0
    worse = -sign * iv.change  # > 0: worse
    tol = check.tolerance
    if iv.low is None or iv.high is None:
        ci, least_worse = "interval unbounded", None
    else:
        least_worse = min(-sign * iv.low, -sign * iv.high)
        ci = f"{check.confidence:.0%} CI [{iv.low:+.1%}, {iv.high:+.1%}]"
    figures = f"{after:.4g} after vs {before:.4g} before ({iv.change:+.1%}, {ci})"
    better = f"{check.direction} is better"
    if least_worse is not None and least_worse > tol:
        return _verdict("fail", f"{check.name}: {figures}: worse beyond the {tol:.1%} "
                        f"tolerance with {check.confidence:.0%} confidence ({better})",
                        display=figures)
    if worse > tol:
        return _verdict("inconclusive", f"{check.name}: {figures}: looks worse than the "
                        f"{tol:.1%} tolerance, but not with {check.confidence:.0%} confidence "
                        f"({better})", lacking=False, display=figures)
    return _verdict("pass", f"{check.name}: {figures}: within the {tol:.1%} tolerance "
                    f"({better})", display=figures)


def _verdict(status: str, reason: str, *, lacking: bool = False,
             display: str | None = None) -> dict[str, Any]:
    return {"status": status, "reason": reason, "lacking": lacking,
            "display": display or reason.split(": ", 1)[-1]}


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g} min"


def _metric(conn: psycopg.Connection[Any], check: BusinessCheck, start: datetime,
            end: datetime, limits: execute.Limits) -> tuple[float | None, str | None]:
    """The check's number for one window (None: no value, e.g. no events), or why not."""
    params = {"window_start": start, "window_end": end}
    try:
        result, rows = execute.execute(conn, check.query.sql, params, write=False,
                                       limits=limits, prepare=False)
    except psycopg.Error as exc:  # a client-side problem: the flag file was checked at load
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
    if result.failed:
        state = f"SQLSTATE {result.sqlstate}: " if result.sqlstate else ""
        return None, f"{state}{result.error}"
    if rows is None or rows.rows is None:
        return None, "returned no result set"
    if len(rows.columns) != 1 or len(rows.rows) != 1:
        return None, (f"must return one row of one column, returned {len(rows.rows)} row(s) "
                      f"of {len(rows.columns)} column(s)")
    value = rows.rows[0][0]
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None, f"must return a number, returned {type(value).__name__}"
    number = float(value)
    if not math.isfinite(number):
        return None, f"must return a finite number, returned {number}"
    return number, None


def business_gate(impacts: Sequence[Mapping[str, Any]]) -> Gate | None:
    """One gate from the checks (None without any): informational unless a check says
    ``gate: true``; then a gated check that fails fails it, an inconclusive one leaves it
    inconclusive, and it passes when every gated check passes. Non-gated checks are shown
    in the same gate's details and reason, never deciding."""
    if not impacts:
        return None
    gated = [i for i in impacts if i["gate"]]
    figure = {i["name"]: i["status"] for i in impacts}
    threshold = {i["name"]: i["tolerance"] for i in impacts}
    display = "; ".join(f"{i['name']} {i['status']}: {i['display']}" for i in impacts)
    details = {"checks": [dict(i) for i in impacts]}
    confidence = min((i["confidence"] for i in gated), default=None)
    if not gated:
        worse = [i["reason"] for i in impacts if i["status"] == "fail"]
        reason = ("business metrics (informational): " + ("; ".join(worse) if worse else
                  ", ".join(f"{i['name']} {i['status']}" for i in impacts)))
        return Gate("business", "info", figure, threshold, display, reason, None, details)
    for status in ("fail", "inconclusive"):
        hit = [i for i in gated if i["status"] == status]
        if hit:
            return Gate("business", status, figure, threshold, display,
                        "; ".join(i["reason"] for i in hit), confidence, details,
                        lacking=all(i["lacking"] for i in hit))
    return Gate("business", "pass", figure, threshold, display,
                f"business metrics within tolerance: {', '.join(i['name'] for i in gated)}",
                confidence, details)


def stage_business(store: Store, flag: Flag, stage: str, dsn: str, *,
                   allow_superuser: bool = False, window: timedelta | None = None,
                   until: datetime | None = None) -> list[dict[str, Any]] | None:
    """``business_impact`` around the latest change into ``stage`` (None when the flag has
    no checks or never moved into ``stage`` from another stage), on a connection of its own
    to ``dsn`` (the login flag SQL runs as), after the same least-privilege check as a
    shadow run. The after side ends when the flag left the stage, if it did. A database
    that cannot be reached makes every check inconclusive, not the report fail."""
    if not flag.business:
        return None
    entered = store.stage_entered(flag.name, stage)
    if entered is None or entered["from_stage"] is None:
        return None
    at: datetime = entered["at"]
    left = store.stage_left(flag.name, stage, at)
    end = min(t for t in (left, until or datetime.now(UTC)) if t is not None)
    try:
        with _checked(dsn, allow_superuser, flag.name) as conn:
            return business_impact(conn, flag, at, window, until=end)
    except (ConnectionFailed, psycopg.OperationalError) as exc:
        text = str(exc).strip()
        why = scrub(text.splitlines()[0], dsn) if text else "connection failed"
        return [{**_base(c, at, window or c.window),
                 **_verdict("inconclusive", f"{c.name}: {why}", lacking=True)}
                for c in flag.business]


@contextmanager
def _checked(dsn: str, allow: bool, flag: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(dsn, autocommit=True) as conn:
        require_least_privilege(conn, allow=allow, what=f"run the business checks of {flag}")
        yield conn
