"""The online runner's logic without I/O, shared by ``Rollout`` and ``AsyncRollout``.

Admission (sampling limits), the shadow job, turning two executions into an observation,
and the counters behind ``get_stats()``. The sync and async runners only add I/O around it.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from ..flags.model import Flag
from ..flags.runtime import FlagStates
from ..flags.state import FlagState
from ..flags.targeting import Context, Decision
from ..run.execute import Limits
from ..run.results import ResultSet
from ..store.observations import Observation, PathResult
from ._admission import SHADOW_BUDGET, Admission, Budget
from ._observe import Ran, ShadowJob, observe, served_observation
from .recorder import Recorder

if TYPE_CHECKING:
    from .otel import Metrics

UNKNOWN_FLAG = "unknown-flag"

SHADOW_LIMITS = Limits(statement_timeout_ms=2000, lock_timeout_ms=200, margin_ms=1000)
"""The runners' timeouts of a background execution (``shadow_limits=`` to change)."""
REQUEST_TIMEOUT_S = 5.0
"""Default bound on a caller's request: pool checkout plus the served query."""
REQUEST_GRACE_S = 0.5
"""Past its deadline a served query is cancelled; this much later its socket is cut (a
server that does not answer the cancel either)."""
RECONNECT_TIMEOUT_S = 1.0
"""psycopg_pool retries a failed connection attempt with a backoff that starts at 1 s and
doubles up to ``reconnect_timeout`` (5 min by default), so a pool that saw an outage can take
many seconds to notice the server is back. Capped here, an attempt chain gives up within this
time and the next request starts a new one at once: recovery within about a second."""
CONNECT_TIMEOUT_S = 3
"""libpq's ``connect_timeout`` for the pools' connections (psycopg's default is 130 s): a
connection attempt to an unreachable host cannot hold a pool worker for minutes."""

POOL_OPTIONS = frozenset({"timeout", "max_waiting", "reconnect_timeout", "reconnect_failed",
                          "max_lifetime", "max_idle", "num_workers", "check", "configure",
                          "min_size"})
"""psycopg_pool options a caller may pass (``pool_options=``); the others (``reset``,
``kwargs``, ``name``, ``open``, ``max_size``) carry the runner's safety or are its own
parameters."""
OWN_KWARGS = frozenset({"cursor_factory", "prepare_threshold", "autocommit", "row_factory",
                        "application_name"})
"""Connection arguments the runner sets itself: one statement per execution, no server-side
prepared statements, autocommit on the shadow pool (docs/online.md)."""
POOL_GAUGES = frozenset({"pool_min", "pool_max", "pool_size", "pool_available",
                         "requests_waiting"})
"""psycopg_pool statistics that are current values; every other one is a counter that
``pop_stats`` resets."""


class RequestTimeout(PoolTimeout):
    """A request outlived its deadline (``request_timeout``): no connection in time, or the
    served query was cancelled at the deadline. A ``PoolTimeout`` (so a
    ``psycopg.OperationalError``): code that catches those keeps working."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds
        """The deadline that bounded the request, in seconds (the runner's
        ``request_timeout``)."""


def regrow(pool: Any) -> None:
    """``reconnect_failed`` of the runners' sync pools: an attempt chain gave up (the server
    was down for ``RECONNECT_TIMEOUT_S``) and psycopg_pool starts no other until a request
    arrives or a connection returns, but requests already waiting do neither: they would
    wait out their deadline after the server is back. While any is waiting, start a new
    chain now (``check()`` grows a pool that has no connection)."""
    if pool.get_stats().get("requests_waiting"):
        pool.check()


async def aregrow(pool: Any) -> None:
    """``regrow`` for the asyncio pools."""
    if pool.get_stats().get("requests_waiting"):
        await pool.check()


def _then(ours: Callable[[Any], Any], theirs: Callable[[Any], Any] | None
          ) -> Callable[[Any], Any]:
    """Our ``reconnect_failed``, then the caller's (sync or async, as the pool is)."""
    if theirs is None:
        return ours
    if inspect.iscoroutinefunction(ours):
        async def both(pool: Any) -> None:
            await ours(pool)
            result = theirs(pool)
            if inspect.isawaitable(result):
                await result
        return both

    def both_sync(pool: Any) -> None:
        ours(pool)
        theirs(pool)
    return both_sync


def pool_config(base: Mapping[str, Any], pool_options: Mapping[str, Any] | None,
                connect_kwargs: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
    """The keyword arguments of one of the runner's pools: ``base`` (its own, including the
    connection ``kwargs``), fail-fast defaults, then the caller's options. Raises ValueError
    for an option that would lift a safety mechanism or is unknown."""
    bad = sorted(set(pool_options or ()) - POOL_OPTIONS)
    if bad:
        raise ValueError(f"pool_options: {', '.join(bad)} cannot be set (allowed: "
                         f"{', '.join(sorted(POOL_OPTIONS))})")
    own = sorted(set(connect_kwargs or ()) & OWN_KWARGS)
    if own:
        raise ValueError(f"connect_kwargs: {', '.join(own)} is set by the runner itself")
    if timeout <= 0:
        raise ValueError(f"request_timeout must be positive, not {timeout!r}")
    kwargs = {"connect_timeout": CONNECT_TIMEOUT_S, **(connect_kwargs or {}),
              **base["kwargs"]}
    options = dict(pool_options or {})
    ours = {"reconnect_failed": _then(base["reconnect_failed"],
                                      options.pop("reconnect_failed", None))}
    if base.get("check") is not None:  # the session reset at checkout runs first
        ours["check"] = _then(base["check"], options.pop("check", None))
    return {**base, "timeout": timeout, "reconnect_timeout": RECONNECT_TIMEOUT_S,
            **options, "kwargs": kwargs, **ours}


def pool_configs(*, pool_size: int, shadow_pool_size: int, cursor_factory: Any,
                 reset: Callable[[Any], Any], regrow: Callable[[Any], Any], open: bool,
                 pool_options: Mapping[str, Any] | None,
                 connect_kwargs: Mapping[str, Any] | None, timeout: float
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request pool's and the shadow pool's keyword arguments, the same for ``Rollout``
    and ``AsyncRollout`` but for the cursor class, the reset and when they open: both hand a
    connection back only after ``reset``, fail fast and recover fast (``pool_config``).

    The request pool keeps psycopg's preparing (planning a served query on every request
    would cost more than the query): a served query goes through ``execute.serve``, whose
    ending (in the same pipeline, one round trip) checks the server's prepared statements
    are exactly psycopg's own and drops them all if flag SQL made or replaced one. It is in
    autocommit: a served query is one statement, its own transaction, with no BEGIN and
    COMMIT round trips; ``run()`` turns it off for the callables, which own their
    transactions. The request pool resets a connection at
    checkout (``check=``), not on return: psycopg_pool would hand every return to a worker
    task first, a hop on each request; ``reset`` finds the connections a served query already
    reset and does nothing (no round trip), and resets in full any other (a ``run()``
    callable's, one an error or a cancellation interrupted), before anyone gets it. The
    shadow pool resets on return, off any caller's path, and never prepares: its executions
    end with ``DEALLOCATE ALL`` anyway (docs/online.md)."""
    def kwargs(name: str, **more: Any) -> dict[str, Any]:
        return {"application_name": f"pg-rollout-{name}", "cursor_factory": cursor_factory,
                **more}

    requests = pool_config(
        {"min_size": 1, "max_size": pool_size, "open": open, "name": "rollout-requests",
         "kwargs": kwargs("requests", autocommit=True), "check": reset,
         "reconnect_failed": regrow},
        pool_options, connect_kwargs, timeout)
    shadow = pool_config(
        {"min_size": 1, "max_size": shadow_pool_size, "open": open, "name": "rollout-shadow",
         "kwargs": kwargs("shadow", autocommit=True, prepare_threshold=None), "reset": reset,
         "reconnect_failed": regrow},
        None, connect_kwargs, timeout)
    return requests, shadow


def _placeholders(sql: str) -> frozenset[str] | None:
    """The named parameters of ``sql`` as psycopg itself reads them (its query splitter, so
    ``%%`` and quoting agree with execution); None when psycopg cannot tell."""
    try:
        from psycopg._queries import _split_query

        return frozenset(p.item for p in _split_query(sql.encode(), "utf-8")
                         if isinstance(p.item, str))
    except Exception:  # psycopg raises its own error at execution, as before
        return None


@dataclass
class Counters:
    """Plain counters, read with ``get_stats()`` (psycopg_pool's model)."""

    decisions: Counter[str] = field(default_factory=Counter)
    shadowed: int = 0
    verified: int = 0
    dropped_queue_full: int = 0
    dropped_rate_limited: int = 0
    dropped_killed: int = 0
    dropped_stale: int = 0
    dropped_decision_changed: int = 0
    dropped_budget: int = 0
    background_failures: Counter[str] = field(default_factory=Counter)
    serving_failures: Counter[str] = field(default_factory=Counter)
    compare_errors: int = 0
    internal_errors: int = 0
    left_open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "decisions": dict(self.decisions), "shadowed": self.shadowed,
                "verified": self.verified, "dropped_queue_full": self.dropped_queue_full,
                "dropped_rate_limited": self.dropped_rate_limited,
                "dropped_killed": self.dropped_killed, "dropped_stale": self.dropped_stale,
                "dropped_decision_changed": self.dropped_decision_changed,
                "dropped_budget": self.dropped_budget,
                "background_failures": dict(self.background_failures),
                "serving_failures": dict(self.serving_failures),
                "compare_errors": self.compare_errors, "internal_errors": self.internal_errors,
                "left_open": self.left_open,
            }


@dataclass(frozen=True)
class RunnerStats:
    """What ``get_stats()`` returns: the runner's counters since it started, its queue, its
    pools' statistics and its recorder's. ``stats["shadowed"]`` reads a field too.

    ``pool`` and ``shadow_pool`` hold psycopg_pool's current gauges (``pool_size``,
    ``pool_available``, ``requests_waiting`` ...) and its counters as totals since the runner
    started: the periodic snapshot to ``rollout.pool_stats`` (``pop_stats``) resets the
    pool's own counters, the runner adds what it popped.
    """

    decisions: dict[str, int]
    shadowed: int
    verified: int
    dropped_queue_full: int
    dropped_rate_limited: int
    dropped_killed: int
    dropped_stale: int
    dropped_decision_changed: int
    dropped_budget: int
    background_failures: dict[str, int]
    serving_failures: dict[str, int]
    compare_errors: int
    internal_errors: int
    left_open: int
    queue_size: int
    budget: dict[str, Any]
    """The shadow budget (``Budget.snapshot``): its share of wall time, the measured cost
    of a job, the share used so far."""
    pool: dict[str, int]
    shadow_pool: dict[str, int]
    recorder: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class PoolTotals:
    """Running totals of what ``pop_stats`` took from each pool, under one lock with the pop,
    so ``get_stats()`` never sees figures popped and not yet added (or added twice)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: dict[str, Counter[str]] = {}

    def pop(self, name: str, pool: Any) -> dict[str, int]:
        with self.lock:
            s: dict[str, int] = pool.pop_stats()
            self.totals.setdefault(name, Counter()).update(
                {k: v for k, v in s.items() if k not in POOL_GAUGES})
        return s

    def current(self, name: str, pool: Any) -> dict[str, int]:
        with self.lock:
            s: dict[str, int] = pool.get_stats()
            out = {k: v for k, v in s.items() if k in POOL_GAUGES}
            total = Counter(self.totals.get(name, Counter()))
            total.update({k: v for k, v in s.items() if k not in POOL_GAUGES})
        return {**out, **dict(sorted(total.items()))}


def background_limits(flag: Flag, default: Limits) -> Limits:
    """The timeouts of a background execution: the flag's ``online.*_timeout_ms`` over the
    runner's, set with SET LOCAL in its transaction."""
    o = flag.online
    if o.statement_timeout_ms is None and o.lock_timeout_ms is None:
        return default
    return Limits(o.statement_timeout_ms or default.statement_timeout_ms,
                  o.lock_timeout_ms or default.lock_timeout_ms, default.margin_ms)


def decide(flags: Mapping[str, Flag], states: FlagStates, name: str, ctx: Context
           ) -> Decision:
    """Under the live state; an unknown flag gets legacy. Never raises."""
    flag = flags.get(name)
    if flag is None:
        return Decision("legacy", UNKNOWN_FLAG, None)
    return states.decide(flag, ctx)


class RunnerCore:
    """Everything ``Rollout`` and ``AsyncRollout`` share that needs no I/O of theirs."""

    flags: dict[str, Flag]
    states: FlagStates
    recorder: Recorder
    counters: Counters
    admission: Admission
    budget: Budget

    def _init_core(self, flags: Mapping[str, Flag], states: FlagStates,
                   recorder: Recorder, shadow_budget: float | None = SHADOW_BUDGET) -> None:
        self.budget = Budget(shadow_budget)  # first: a bad share fails before anything starts
        self.flags = dict(flags)
        self.states = states
        self.recorder = recorder
        self.counters = Counters()
        self.admission = Admission()
        self.metrics: Metrics | None = None
        """OpenTelemetry instruments (``rollout.online.otel``); None: no metrics."""
        self._random = random.Random()
        self._pool_totals = PoolTotals()
        self._shapes: dict[tuple[str, str, int], tuple[tuple[str, ...], tuple[int, ...]]] = {}
        # Each path's named parameters, read once: a missing one is the caller's error,
        # named before any I/O.
        self._names = {(f.name, path): _placeholders(q.sql) for f in self.flags.values()
                       for path, q in (("legacy", f.legacy), ("new", f.new))}
        self.killed_at: dict[str, float] = {}
        """Per flag, the time.monotonic() at which this runner applied its kill (until a
        resume): no background execution of the flag starts after it (see last_started)."""
        self.last_started: dict[str, float] = {}
        """Per flag, the time.monotonic() at which its latest background execution started
        (after the live re-check, right before the SQL or callable runs)."""
        states.subscribe(self._state_changed)

    def _shape(self, flag: str, path: str, res: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Column names and type OIDs of a served result, read once per flag, path and
        width: the caller hands only its rows to the shadow job."""
        if res is None or not res.nfields:
            return (), ()
        key = (flag, path, res.nfields)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = (
                tuple((res.fname(i) or b"").decode() for i in range(res.nfields)),
                tuple(res.ftype(i) for i in range(res.nfields)))
        return shape

    def decide(self, flag: str, ctx: Context) -> Decision:
        """The decision under the live runtime state; never raises, never does I/O."""
        return decide(self.flags, self.states, flag, ctx)

    def _flag(self, name: str) -> Flag:
        try:
            return self.flags[name]
        except KeyError:
            from ..errors import InputError

            raise InputError(f"unknown flag '{name}' (known: "
                             f"{', '.join(sorted(self.flags)) or 'none'})") from None

    def _job(self, f: Flag, d: Decision, ctx: Context, params: Mapping[str, Any] | None,
             call: Callable[[Any], Any] | None, again: Callable[[Any], Any] | None,
             served: PathResult, result: Any) -> ShadowJob | None:
        """The background job for a served request, or None (legacy, the flag's sampling
        limits, the runner's shadow budget)."""
        with self.counters.lock:
            self.counters.decisions[d.path] += 1
        background = "new" if d.path == "shadow" else "legacy"
        if background == "legacy" and not f.online.verify_new:
            # served new, nothing to compare: record the request for the stage-impact view
            self.recorder.record(served_observation(f, d, ctx.tenant, params, served))
            return None
        if not self.admission.admit(f, ctx.tenant):
            with self.counters.lock:
                self.counters.dropped_rate_limited += 1
            if self.metrics is not None:
                self.metrics.dropped(f.name, d.stage, d.path, "rate_limited")
            return None
        charged = self.budget.admit()
        if charged is None:
            with self.counters.lock:
                self.counters.dropped_budget += 1
            if self.metrics is not None:
                self.metrics.dropped(f.name, d.stage, d.path, "budget")
            return None
        return ShadowJob(f, d, ctx.tenant, params, call, again, served, result, background,
                         ctx, time.monotonic(), charged)

    # -- the live re-check before a background job starts ------------------------------------
    def _state_changed(self, st: FlagState) -> None:
        """Called by FlagStates (its watcher thread) whenever it applies a flag's state: a
        kill drops the flag's queued jobs at once, before any worker gets to them."""
        if not st.killed:
            self.killed_at.pop(st.flag, None)
            return
        if st.flag in self.killed_at or st.flag not in self.flags:
            return
        self.killed_at[st.flag] = time.monotonic()
        self._purge(st.flag)

    def _purge(self, flag: str) -> None:
        raise NotImplementedError  # the sync or async queue

    def _purged(self, jobs: list[ShadowJob]) -> None:
        for job in jobs:
            self._settle(job, None)
            self._metric_drop(job, "dropped_killed")
        if jobs:
            with self.counters.lock:
                self.counters.dropped_killed += len(jobs)

    def _still_wanted(self, job: ShadowJob, starting: bool) -> bool:
        """Whether ``job`` may run now: not if its flag is killed, the live decision no
        longer runs this path in the background, or it waited longer than
        ``online.max_lag_ms`` (its comparison would see data changed since the served read).
        Checked when a worker takes the job and again right before it starts (``starting``:
        after the connection checkout), which is when ``last_started`` is set."""
        f = job.flag
        st = self.states.get(f.name)
        if st is not None and st.killed:
            reason = "dropped_killed"
        else:
            d = self.decide(f.name, job.ctx)
            now = time.monotonic()
            if not (d.path == "shadow" if job.background == "new"
                    else d.path == "new" and f.online.verify_new):
                reason = "dropped_decision_changed"
            elif (now - job.requested_at) * 1000.0 > f.online.max_lag_ms:
                reason = "dropped_stale"
            else:
                if starting:
                    self.last_started[f.name] = now
                return True
        with self.counters.lock:
            setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        self._settle(job, None)
        self._metric_drop(job, reason)
        return False

    def _metric_drop(self, job: ShadowJob, counter: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped(job.flag.name, job.decision.stage, job.decision.path,
                                 counter.removeprefix("dropped_"))

    request_timeout: float

    def _left(self, until: float) -> float:
        """Seconds left before the request's deadline ``until`` (time.monotonic())."""
        return max(0.0, until - time.monotonic())

    def _request_watch(self, conn: Any, until: float) -> contextlib.AbstractContextManager[Any]:
        """The served query under the request deadline (the process watchdog): cancelled at
        ``until``, its connection cut ``REQUEST_GRACE_S`` later."""
        from ..run import deadline

        return deadline.watch(conn.cancel, conn.pgconn.socket, self._left(until),
                              REQUEST_GRACE_S, alive=lambda: not conn.closed)

    def _timed_out(self, f: Flag, exc: Exception, watch: Any) -> Exception | None:
        """The caller's error when ``exc`` is the request deadline at work: the pool's
        checkout timeout, or the watchdog cancelling (or cutting) the served query."""
        t = self.request_timeout
        if isinstance(exc, PoolTimeout) and not isinstance(exc, RequestTimeout):
            return RequestTimeout(f"flag '{f.name}': no connection from the request pool within"
                                  f" the request deadline of {t:g} s ({exc})", t)
        if watch is not None and watch.expired:
            return RequestTimeout(f"flag '{f.name}': the served query outlived the request "
                                  f"deadline of {t:g} s and was cancelled", t)
        return None

    def _checkout_failed(self, f: Flag, d: Decision, ctx: Context, exc: psycopg.Error
                         ) -> Exception:
        """``run()`` got no connection: recorded, and the caller's error (the request
        deadline's when that is what bounded it)."""
        from ..run.execute import failure

        self._served_failed(f, d, ctx, None, failure(exc), sql=None)
        return self._timed_out(f, exc, None) or exc

    @staticmethod
    def _database_error(exc: Exception) -> psycopg.Error | None:
        """The database error behind an exception a callable raised, None for its own bug
        (a library over psycopg, ``rollout.sqlalchemy``, unwraps its own exceptions)."""
        return exc if isinstance(exc, psycopg.Error) else None

    @staticmethod
    def _dead(exc: Exception, conn: Any) -> bool:
        """The pooled connection turned out dead (server restart, failover, terminated)."""
        return isinstance(exc, psycopg.OperationalError) and conn is not None and conn.closed

    def _retry(self, f: Flag, exc: Exception, conn: Any, attempt: int, watch: Any) -> bool:
        """Retry once a read whose pooled connection turned out dead: nothing ran, and the
        pool has already replaced it. Writes are never retried, nor a query the request
        deadline cut."""
        return (attempt == 1 and f.kind == "read" and self._dead(exc, conn)
                and not (watch is not None and watch.expired))

    def _start(self, flag: str, ctx: Context, params: Mapping[str, Any] | None
               ) -> tuple[Flag, Decision, dict[str, Any], bytes]:
        """The flag, its decision, the query arguments and the SQL of the served path.

        ``%(tenant)s`` is always ``ctx.tenant``: the decision is made for that tenant, so a
        ``tenant`` parameter that differs would run the SQL for another one. Both that and
        a missing parameter are the caller's error, raised here, before any I/O.
        """
        f = self._flag(flag)
        given = params or {}
        if "tenant" in given and given["tenant"] != ctx.tenant:
            from ..errors import InputError

            raise InputError(f"flag '{f.name}': params['tenant'] differs from Context.tenant;"
                             " %(tenant)s always comes from the context (drop the key)")
        d = self.decide(flag, ctx)
        path = "new" if d.path == "new" else "legacy"
        args = {**given, "tenant": ctx.tenant}
        names = self._names.get((f.name, path))
        if names is not None and not names <= args.keys():
            from ..errors import InputError

            missing = ", ".join(sorted(names - args.keys()))
            raise InputError(f"flag '{f.name}': missing query parameter {missing} "
                             f"(used by its {path} SQL)")
        return f, d, args, (f.new if d.path == "new" else f.legacy).sql.encode()

    def _served_rows(self, f: Flag, d: Decision, ctx: Context, args: dict[str, Any],
                     res: Any, rows: list[tuple[Any, ...]] | None, rowcount: int,
                     elapsed: int, cur: Any, row_factory: Any, waited: int = 0) -> list[Any]:
        """After the served query: hand its rows to the shadow and return them — the same
        tuples (no copy: callers must not mutate the list while it is being shadowed), or
        built by ``row_factory`` for the caller while the comparison keeps the tuples.
        ``waited``: the request pool's checkout, in ns."""
        out = rows if rows is not None else []
        if self.metrics is not None:
            self._metric_served(f, d, ctx, True, elapsed, None, waited)
        if d.path == "legacy":
            self._count_legacy()
        else:
            shape = self._shape(f.name, d.path, res)
            self._hand_off(self._job(f, d, ctx, args, None, None,
                                     PathResult(elapsed, len(out)), (shape, out, rowcount)))
        if row_factory is None or not out:
            return out
        make = row_factory(cur)  # reads the cursor's description: names, once per request
        return [make(r) for r in out]

    def _served_value(self, f: Flag, d: Decision, ctx: Context, other: Callable[[Any], Any],
                      served: Callable[[Any], Any], value: Any, elapsed: int,
                      waited: int = 0) -> None:
        if self.metrics is not None:
            self._metric_served(f, d, ctx, False, elapsed, None, waited)
        if d.path == "legacy":
            self._count_legacy()
        else:
            self._hand_off(self._job(f, d, ctx, None, other, served,
                                     PathResult(elapsed, count(value)), value))

    def _metric_served(self, f: Flag, d: Decision, ctx: Context, sql: bool, ns: int | None,
                       sqlstate: str | None, waited: int | None) -> None:
        """The served execution and its checkout, handed to the metrics (an append each)."""
        m = self.metrics
        assert m is not None
        path = "new" if d.path == "new" else "legacy"
        m.executed("served", f.name, d.stage, d.path, path, sql, ns, sqlstate, ctx.tenant)
        if waited is not None:
            m.waited(self._request_pool_name, f.name, d.stage, d.path, path, waited)

    def _count_legacy(self) -> None:
        with self.counters.lock:
            self.counters.decisions["legacy"] += 1

    def _hand_off(self, job: ShadowJob | None) -> None:
        raise NotImplementedError  # the sync or async queue

    def _order(self, job: ShadowJob) -> list[str]:
        """The paths the job runs, in order: the background path, and when pairing the
        served path again, in random order (each path goes first half of the time, so
        neither is favoured by a warm cache or a connection's state)."""
        if not job.paired:
            return [job.background]
        order = [job.background, job.served_path]
        self._random.shuffle(order)
        return order

    @staticmethod
    def _served_rows_as_result(job: ShadowJob) -> None:
        """Turn the served rows the caller handed over into a ResultSet for comparison."""
        (names, oids), rows, rowcount = job.served_result
        job.served_result = ResultSet(names, oids, rows if names else None, rowcount)

    @staticmethod
    def _sql(job: ShadowJob, path: str) -> str:
        return (job.flag.new if path == "new" else job.flag.legacy).sql

    def _dropped(self, job: ShadowJob) -> None:
        self._settle(job, None)
        with self.counters.lock:
            self.counters.dropped_queue_full += 1
        self._metric_drop(job, "dropped_queue_full")

    def _served_failed(self, f: Flag, d: Decision, ctx: Context,
                       params: Mapping[str, Any] | None, failed: PathResult,
                       sql: bool | None = True) -> None:
        """A served request failed: counted and recorded; ``sql`` whether it was the flag's
        SQL or a callable, None when it never ran (no connection)."""
        with self.counters.lock:
            self.counters.serving_failures[failed.sqlstate or "other"] += 1
        if self.metrics is not None and sql is not None:
            self._metric_served(f, d, ctx, sql, failed.ns, failed.sqlstate or "", None)
        if d.path != "legacy":
            self.recorder.record(served_observation(f, d, ctx.tenant, params, failed))

    def _left_open(self, f: Flag, d: Decision, ctx: Context, served_new: bool) -> Exception:
        from ..errors import InputError

        with self.counters.lock:
            self.counters.left_open += 1
        self._served_failed(f, d, ctx, None, PathResult(
            None, None, "25001", "callable returned inside an open transaction"), sql=False)
        return InputError(f"{f.name}: the {'new' if served_new else 'legacy'} callable "
                          "returned inside a transaction; it was rolled back")

    def _finish(self, job: ShadowJob, ran: Ran, order: list[str], started: float) -> None:
        """Count and record what the job ran; settle its cost (wall time since ``started``,
        a time.perf_counter(): executions and comparison) with the shadow budget."""
        with self.counters.lock:
            if job.background == "new":
                self.counters.shadowed += 1
            else:
                self.counters.verified += 1
            for result, _ in ran.values():
                if result.failed:
                    self.counters.background_failures[result.sqlstate or "other"] += 1
        try:
            observations = observe(job, ran, order, self._compare_failed)
            for o in observations:
                self.recorder.record(o)
            if self.metrics is not None:
                self._metric_job(job, ran, observations)
        finally:
            self._settle(job, time.perf_counter() - started)

    def _metric_job(self, job: ShadowJob, ran: Ran, observations: list[Observation]) -> None:
        """A background job's executions, its shadow-pool checkout and its comparisons, for
        the metrics (on the worker, off the caller's path)."""
        m = self.metrics
        assert m is not None
        f, d = job.flag, job.decision
        sql = job.call is None
        for path, (result, _) in ran.items():
            m.executed("background", f.name, d.stage, d.path, path, sql, result.ns,
                       (result.sqlstate or "") if result.failed else None, job.tenant)
        if job.waited is not None:
            m.waited(self._shadow_pool_name, f.name, d.stage, d.path, job.background,
                     job.waited)
        for o in observations:
            if o.matched is not None:
                m.compared(f.name, d.stage, d.path, job.background, o.mode, o.matched)

    def _settle(self, job: ShadowJob, seconds: float | None) -> None:
        """Settle a job's charge with the shadow budget once: its measured cost, or (None)
        a refund for a job that never ran."""
        if job.settled:
            return
        job.settled = True
        if seconds is None:
            self.budget.refund(job.charged)
        else:
            self.budget.spend(job.charged, seconds)

    def _compare_failed(self) -> None:
        with self.counters.lock:
            self.counters.compare_errors += 1

    def _internal_error(self, job: ShadowJob) -> None:
        self._settle(job, None)
        with self.counters.lock:
            self.counters.internal_errors += 1

    def _start_pool_stats(self, pools: Mapping[str, Any]) -> None:
        """The pools whose statistics the runner records every ``pool_stats_interval``
        seconds (psycopg_pool's ``pop_stats``, ``_pool_stats_loop``): checkout waits and
        errors over time, for the stage impact view. ``get_stats()`` adds what was popped
        to its totals."""
        self._pools = dict(pools)
        self._request_pool_name = str(getattr(pools["requests"], "name", None) or "requests")
        self._shadow_pool_name = str(getattr(pools["shadow"], "name", None) or "shadow")
        self._runner_id = uuid.uuid4()
        self._pool_stats_stop = threading.Event()

    def _pool_stats_loop(self, interval: float) -> None:
        """The body of the runner's pool-statistics thread (the runner starts it: this
        module does no I/O of its own): a snapshot every ``interval`` seconds until
        closed."""
        while not self._pool_stats_stop.wait(interval):
            self._snapshot_pools()

    def _snapshot_pools(self) -> None:
        now = datetime.now(UTC)
        flags = sorted(self.flags)
        for name, pool in self._pools.items():
            with contextlib.suppress(Exception):  # statistics must never hurt the service
                s = self._pool_totals.pop(name, pool)
                self.recorder.record_pool_stats((
                    now, self._runner_id, flags, name, s.get("requests_num", 0),
                    s.get("requests_queued", 0), s.get("requests_wait_ms", 0),
                    s.get("requests_errors", 0), s.get("returns_bad", 0),
                    s.get("connections_lost", 0), s.get("pool_size")))

    def _stop_pool_stats(self) -> None:
        self._pool_stats_stop.set()
        self._snapshot_pools()

    def _start_metrics(self, meter_provider: Any, dsn: str, tenants: bool) -> None:
        """OpenTelemetry instruments on ``meter_provider`` (None: the global provider, False:
        none); nothing when opentelemetry-api is not installed (``rollout.online.otel``)."""
        from psycopg.conninfo import conninfo_to_dict

        from .otel import metrics_for

        try:
            database = conninfo_to_dict(dsn).get("dbname")
        except psycopg.ProgrammingError:
            database = None
        self.metrics = metrics_for(
            meter_provider, flags=self.flags, database=str(database) if database else None,
            tenants=tenants, pools=lambda: {
                self._request_pool_name: self._pool_totals.current("requests",
                                                                   self._pools["requests"]),
                self._shadow_pool_name: self._pool_totals.current("shadow",
                                                                  self._pools["shadow"])})

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def _stats(self, queued: int) -> RunnerStats:
        """The counters, the queue, pools (totals and gauges) and the recorder."""
        return RunnerStats(
            **self.counters.snapshot(), queue_size=queued, budget=self.budget.snapshot(),
            pool=self._pool_totals.current("requests", self._pools["requests"]),
            shadow_pool=self._pool_totals.current("shadow", self._pools["shadow"]),
            recorder=vars(self.recorder.stats).copy())


def count(value: Any) -> int | None:
    """Row count of a callable's result when it is a sequence."""
    return len(value) if isinstance(value, list | tuple) else None


def callable_failure(exc: Exception) -> PathResult:
    """A callable's own bug (not a database error): recorded, never raised."""
    return PathResult(None, None, "XX000", f"{type(exc).__name__}: {exc}"[:300])
