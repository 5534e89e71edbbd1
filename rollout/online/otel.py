"""OpenTelemetry metrics of the online runners (extra ``otel``): database conventions, rollout.*.

The runners hand each measurement to ``Metrics`` as a tuple appended to a bounded deque (tens
of nanoseconds on the caller's path); a thread records them into the instruments every
``DRAIN_INTERVAL_S``, and so does every collection (the first observable callback drains
first), so an exporter always sees what happened before it asked. Recording into an SDK
instrument costs about 10 µs a measurement: that is paid off the caller's path.

Instruments follow the OpenTelemetry database semantic conventions where they exist
(``db.client.operation.duration``, ``db.client.connection.wait_time``,
``db.client.connection.count`` ...); the toolkit's own are namespaced ``rollout.*``. Every
attribute takes a bounded set of values: flags and stages come from the workspace, paths and
decisions are enumerations, errors are SQLSTATE classes. The tenant is an attribute only
when asked for (``metric_tenants=True``): tenants are unbounded.

``opentelemetry-api`` is imported only here, and only when a runner starts: without it the
runners record nothing (``metrics_for`` returns None).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..flags.model import Flag

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

SERVED = "served"
"""``rollout.side`` of the request the caller waits for."""
BACKGROUND = "background"
"""``rollout.side`` of an execution on the shadow pool (shadow, verify, the paired re-run)."""

DRAIN_INTERVAL_S = 0.5
"""How often the metrics thread records pending measurements into the instruments."""
MAX_PENDING = 100_000
"""Measurements waiting for the metrics thread; beyond it the oldest are dropped (a drain
every ``DRAIN_INTERVAL_S`` keeps up with 200,000 requests a second)."""
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
"""Histogram boundaries in seconds: the semantic conventions' advice for
``db.client.operation.duration``."""
LOCK_INCIDENTS = {"55P03": "lock_timeout", "40P01": "deadlock"}
"""SQLSTATEs that are lock-wait incidents (``rollout.lock_waits``): the lock_timeout (or
NOWAIT) gave up, the server broke a deadlock."""
OTHER = "_OTHER"
"""The conventions' value of ``error.type`` when the error has no SQLSTATE of its own."""

# The measurement kinds in the deque (the first item of each tuple).
_EXEC, _WAIT, _DROP, _COMPARE = 0, 1, 2, 3


def sqlstate_class(sqlstate: str | None) -> str:
    """``error.type``: the SQLSTATE class (``"57"`` for ``57014``), or ``_OTHER``."""
    if sqlstate is None or len(sqlstate) != 5 or not sqlstate.isalnum():
        return OTHER
    return sqlstate[:2].upper()


def operation_name(sql: str) -> str | None:
    """``db.operation.name`` of a flag's SQL: its command (``SELECT``, ``UPDATE`` ...) as
    PostgreSQL's parser reads it, None when it does not parse to one statement."""
    from ..flags.statements import SqlError, parse, to_parseable

    try:
        statements = parse(to_parseable(sql))  # %(name)s placeholders read as parameters
    except SqlError:
        return None
    if len(statements) != 1:
        return None
    name = type(statements[0].node).__name__
    return name.removesuffix("Stmt").upper() or None


def metrics_for(meter_provider: Any, *, flags: Mapping[str, Flag],
                pools: Callable[[], Mapping[str, Mapping[str, int]]],
                database: str | None = None, tenants: bool = False) -> Metrics | None:
    """The runner's metrics on ``meter_provider`` (None: the global provider; False: none),
    or None when opentelemetry-api is not installed."""
    if meter_provider is False:
        return None
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError:
        return None
    provider = meter_provider if meter_provider is not None else \
        otel_metrics.get_meter_provider()
    return Metrics(provider, flags=flags, pools=pools, database=database, tenants=tenants)


class Metrics:
    """The runner's instruments and the hand-off that keeps recording off the caller's path.

    ``served``, ``executed``, ``waited``, ``dropped`` and ``compared`` append one tuple and
    return; ``drain`` records them (the metrics thread, a collection, ``close``).
    """

    def __init__(self, provider: MeterProvider, *, flags: Mapping[str, Flag],
                 pools: Callable[[], Mapping[str, Mapping[str, int]]],
                 database: str | None, tenants: bool) -> None:
        from .._version import __version__

        self.tenants = tenants
        self._pools = pools
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque(
            maxlen=MAX_PENDING)
        self._drain_lock = threading.Lock()
        self._closed = False
        self._db = {"db.system.name": "postgresql"}
        if database:
            self._db["db.namespace"] = database
        # db.operation.name of each flag's paths, read once
        self._operations = {(f.name, path): operation_name(q.sql) for f in flags.values()
                            for path, q in (("legacy", f.legacy), ("new", f.new))}
        meter = provider.get_meter("pg-rollout", __version__)
        self.operation_duration = meter.create_histogram(
            "db.client.operation.duration", unit="s",
            description="Duration of database client operations: each execution of a "
                        "flag's SQL, served or in the background",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time", unit="s",
            description="The time it took to obtain an open connection from the pool",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        # The first observable callback drains what is pending, so a collection sees it.
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [self._connection_count], unit="{connection}",
            description="The number of connections in each state, per pool")
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [self._pool_gauge("pool_max")], unit="{connection}",
            description="The maximum number of open connections allowed, per pool")
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", [self._pool_gauge("requests_waiting")],
            unit="{request}", description="The number of current pending requests for an "
                                          "open connection, per pool")
        meter.create_observable_counter(
            "db.client.connection.timeouts", [self._pool_counter("requests_errors")],
            unit="{timeout}", description="Connection requests that failed (timed out or "
                                          "refused), per pool")
        self.transaction_duration = meter.create_histogram(
            "rollout.transaction.duration", unit="s",
            description="Duration of each unit of work the runner runs: a served query with "
                        "its commit, a run() callable, a background execution",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.shadow_executions = meter.create_counter(
            "rollout.shadow.executions", unit="{execution}",
            description="Executions on the shadow pool (shadow, verify, paired re-run)")
        self.dropped_jobs = meter.create_counter(
            "rollout.shadow.dropped", unit="{job}",
            description="Background jobs not run, by rollout.drop_reason")
        self.comparisons = meter.create_counter(
            "rollout.comparisons", unit="{comparison}",
            description="Result comparisons online, by rollout.matched and rollout.mode")
        self.mismatches = meter.create_counter(
            "rollout.mismatches", unit="{comparison}",
            description="Result comparisons online whose results differed")
        self.lock_waits = meter.create_counter(
            "rollout.lock_waits", unit="{incident}",
            description="Lock-wait incidents: lock_timeout (55P03) or deadlock (40P01)")
        self.rollbacks = meter.create_counter(
            "rollout.rollbacks", unit="{transaction}",
            description="Transactions rolled back by an error, by error.type (SQLSTATE "
                        "class); the background's own rollbacks are not counted")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollout-metrics", daemon=True)
        self._thread.start()

    # -- the hand-off (the caller's path and the workers') -----------------------------------
    def executed(self, side: str, flag: str, stage: str | None, decision: str, path: str,
                 sql: bool, ns: int | None, sqlstate: str | None, tenant: str | None) -> None:
        """One execution ended: ``sql`` (the flag's SQL) or a run() callable; ``ns`` its
        duration, None when it failed before one was measured."""
        self._pending.append((_EXEC, side, flag, stage, decision, path, sql, ns, sqlstate,
                              tenant))

    def waited(self, pool: str, flag: str, stage: str | None, decision: str, path: str,
               ns: int) -> None:
        """A connection checkout from ``pool`` took ``ns``."""
        self._pending.append((_WAIT, pool, flag, stage, decision, path, ns))

    def dropped(self, flag: str, stage: str | None, decision: str, reason: str) -> None:
        """A background job was not run (``reason``: queue_full, rate_limited, budget,
        killed, stale, decision_changed)."""
        self._pending.append((_DROP, flag, stage, decision, reason))

    def compared(self, flag: str, stage: str | None, decision: str, path: str, mode: str,
                 matched: bool) -> None:
        """An online comparison: ``mode`` ab (the two paths) or aa (served against its
        re-run), ``path`` the background path."""
        self._pending.append((_COMPARE, flag, stage, decision, path, mode, matched))

    # -- recording ----------------------------------------------------------------------------
    def _attrs(self, flag: str, stage: str | None, decision: str, path: str,
               tenant: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"rollout.flag": flag, "rollout.decision": decision,
                               "rollout.path": path}
        if stage:
            out["rollout.stage"] = stage
        if self.tenants and tenant is not None:
            out["rollout.tenant"] = tenant
        return out

    def drain(self) -> None:
        """Record every pending measurement (one drainer at a time)."""
        with self._drain_lock:
            pending = self._pending
            while True:
                try:
                    item = pending.popleft()
                except IndexError:
                    return
                with contextlib.suppress(Exception):  # metrics must never hurt the service
                    self._record(item)

    def _record(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == _EXEC:
            _, side, flag, stage, decision, path, sql, ns, sqlstate, tenant = item
            attrs = self._attrs(flag, stage, decision, path, tenant)
            attrs["rollout.side"] = side
            failed = sqlstate is not None
            if failed:
                attrs["error.type"] = sqlstate_class(sqlstate)
            if ns is not None:
                seconds = ns / 1e9
                self.transaction_duration.record(seconds, attrs)
                if sql:
                    op = {**self._db, **attrs}
                    name = self._operations.get((flag, path))
                    if name:
                        op["db.operation.name"] = name
                    if failed and sqlstate_class(sqlstate) != OTHER:
                        op["db.response.status_code"] = sqlstate
                    self.operation_duration.record(seconds, op)
            if side == BACKGROUND:
                self.shadow_executions.add(1, attrs)
            if failed:
                self.rollbacks.add(1, attrs)
                incident = LOCK_INCIDENTS.get(sqlstate or "")
                if incident is not None:
                    self.lock_waits.add(1, {**attrs, "rollout.lock.incident": incident})
        elif kind == _WAIT:
            _, pool, flag, stage, decision, path, ns = item
            self.wait_time.record(ns / 1e9, {**self._db, "db.client.connection.pool.name": pool,
                                             **self._attrs(flag, stage, decision, path)})
        elif kind == _DROP:
            _, flag, stage, decision, reason = item
            attrs = {"rollout.flag": flag, "rollout.decision": decision,
                     "rollout.drop_reason": reason}
            if stage:
                attrs["rollout.stage"] = stage
            self.dropped_jobs.add(1, attrs)
        elif kind == _COMPARE:
            _, flag, stage, decision, path, mode, matched = item
            attrs = {**self._attrs(flag, stage, decision, path), "rollout.mode": mode}
            self.comparisons.add(1, {**attrs, "rollout.matched": matched})
            if not matched:
                self.mismatches.add(1, attrs)

    # -- observable instruments (the pools) --------------------------------------------------
    def _stats(self) -> Iterator[tuple[str, Mapping[str, int]]]:
        if self._closed:
            return
        with contextlib.suppress(Exception):
            yield from self._pools().items()

    def _connection_count(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        self.drain()
        out = []
        for pool, s in self._stats():
            idle = s.get("pool_available", 0)
            used = max(0, s.get("pool_size", 0) - idle)
            for state, value in (("idle", idle), ("used", used)):
                out.append(Observation(value, {**self._db, "db.client.connection.state": state,
                                               "db.client.connection.pool.name": pool}))
        return out

    def _pool_gauge(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            from opentelemetry.metrics import Observation

            return [Observation(s.get(key, 0), {**self._db,
                                                "db.client.connection.pool.name": pool})
                    for pool, s in self._stats()]
        return callback

    # psycopg_pool's counters are totals since the runner started (RunnerStats): the same
    # reading for a monotonic counter
    _pool_counter = _pool_gauge

    # -- lifecycle ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(DRAIN_INTERVAL_S):
            self.drain()

    def close(self) -> None:
        """Record what is pending and stop; the pools are no longer observed."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.drain()
        self._closed = True
