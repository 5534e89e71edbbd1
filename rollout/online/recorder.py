"""Batch observations from running services into ``rollout.observations`` with COPY.

``record()`` is the only call on a request's path: an append to a bounded buffer. A daemon
thread drains the buffer in batches; each batch gets a batch id, so a batch whose commit
acknowledgement was lost is recognised on retry and lands exactly once. While the store is
down the buffer fills up to its bound, then new observations are dropped and counted.

A batch the store rejects for its *data* (a NUL byte in a tenant, a value that does not
serialise) is split in halves until the offending rows are alone; those are dropped and
counted (``rejected``), every other row lands. Only trouble with the store itself (a lost
connection) makes a batch wait and retry.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import StoreError
from ..store.observations import Observation
from ..store.store import Store

_TROUBLE_CLASSES = ("08", "53", "57", "58")  # connection, resources, shutdown, system


def store_trouble(exc: BaseException) -> bool:
    """Is this the store's own trouble (retry the batch later), not the batch's data?"""
    if isinstance(exc, OSError | psycopg.InterfaceError | StoreError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        return exc.sqlstate is None or exc.sqlstate[:2] in _TROUBLE_CLASSES
    return False


@dataclass
class RecorderStats:
    """What a ``Recorder`` did so far (``vars()`` of it is plain data)."""

    recorded: int = 0
    written: int = 0
    batches: int = 0
    retries: int = 0
    duplicates_skipped: int = 0
    dropped: int = 0
    rejected: int = 0
    store_errors: int = 0


class Recorder:
    """Bounded, batching, idempotent writer of observations (one thread, one connection)."""

    def __init__(self, store_dsn: str, *, batch_size: int = 2000, flush_interval: float = 0.2,
                 max_buffer: int = 100_000, retry_delay: float = 0.5) -> None:
        self._dsn = store_dsn
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_buffer = max_buffer
        self._retry_delay = retry_delay
        self._buffer: deque[Observation] = deque()
        self._pool_stats: deque[tuple[Any, ...]] = deque(maxlen=10_000)
        self._pending: tuple[uuid.UUID, list[Observation]] | None = None
        self._split: list[tuple[uuid.UUID, list[Observation]]] = []  # halves of refused batches
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._store: Store | None = None  # one per connection: it remembers ready partitions
        self.stats = RecorderStats()
        """Counters: ``recorded`` and ``dropped`` move on callers' threads (under
        ``_count_lock``), the others only on the writer thread."""
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rollout-recorder", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def record(self, obs: Observation) -> None:
        """Queue one observation; never blocks (but for the counters' lock, held for an
        increment), never raises. Called from any thread: ``+=`` is not atomic, so the
        counters it moves are incremented under a lock; the buffer's bound is approximate
        by a few rows when threads race past the length check."""
        if len(self._buffer) >= self._max_buffer:
            with self._count_lock:
                self.stats.dropped += 1
            return
        self._buffer.append(obs)
        with self._count_lock:
            self.stats.recorded += 1
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    def record_pool_stats(self, row: tuple[Any, ...]) -> None:
        """Queue one pool-statistics row (see ``Store.write_pool_stats``); never blocks."""
        self._pool_stats.append(row)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything recorded so far; True when the buffer is empty in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._done() and self._idle.is_set():
                return True
            self._wake.set()
            time.sleep(0.005)
        return self._done()

    def _done(self) -> bool:
        return not self._buffer and self._pending is None and not self._split

    def close(self, timeout: float = 10.0) -> None:
        """Flush, then stop the thread; later observations are dropped and counted."""
        if self._stop.is_set():
            return
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        atexit.unregister(self.close)

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._idle.clear()
            try:
                self._drain()
            finally:
                self._idle.set()
        if self._conn is not None:
            self._conn.close()

    def _drain(self) -> None:
        self._drain_pool_stats()
        while self._pending is not None or self._split or self._buffer:
            if self._pending is None:
                if self._split:
                    self._pending = self._split.pop()
                else:
                    n = min(len(self._buffer), self._batch_size)
                    self._pending = (uuid.uuid4(), [self._buffer.popleft() for _ in range(n)])
            batch_id, rows = self._pending
            try:
                self._write(batch_id, rows)
            except Exception as exc:
                if not store_trouble(exc):
                    # The store refused the rows: bisect to isolate the bad ones. Nothing of
                    # the batch committed (one transaction), so the halves get new ids.
                    self._refused(rows)
                    self._pending = None
                    continue
                self.stats.store_errors += 1
                self._reset()
                if self._stop.wait(self._retry_delay):
                    return
                self.stats.retries += 1
                continue
            self._pending = None

    def _refused(self, rows: list[Observation]) -> None:
        if len(rows) == 1:
            self.stats.rejected += 1
        else:
            half = len(rows) // 2
            self._split += [(uuid.uuid4(), rows[half:]), (uuid.uuid4(), rows[:half])]
        if self._conn is not None and (self._conn.closed or self._conn.info.transaction_status
                                       != psycopg.pq.TransactionStatus.IDLE):
            self._reset()

    def _drain_pool_stats(self) -> None:
        """Pool statistics are best effort: kept (bounded) while the store is down."""
        if not self._pool_stats:
            return
        stats = list(self._pool_stats)
        try:
            self._connect()
            self._the_store().write_pool_stats(stats)
        except (psycopg.Error, OSError):
            self.stats.store_errors += 1
            self._reset()
            return
        for _ in stats:
            self._pool_stats.popleft()

    def _the_store(self) -> Store:
        assert self._store is not None
        return self._store

    def _connect(self) -> bool:
        """Open the store connection if needed; True when it is new."""
        if self._conn is not None and not self._conn.closed:
            return False
        self._store = None
        self._conn = psycopg.connect(self._dsn, autocommit=True,
                                     application_name="pg-rollout-recorder")
        self._store = Store.open(self._conn)
        return True

    def _write(self, batch_id: uuid.UUID, rows: list[Observation]) -> None:
        if self._connect() and self.stats.store_errors and self._the_store().has_batch(
                batch_id, min(o.observed_at for o in rows), max(o.observed_at for o in rows)):
            # The last attempt committed but its acknowledgement was lost.
            self.stats.duplicates_skipped += 1
            return
        # Writing prepares the partitions of the rows' days (and of the days ahead) first:
        # a batch that crosses midnight, or a service's first batch of a new day, has its
        # partition; a row a wrong clock dates far off lands in the default partition.
        self._the_store().write_observations(rows, batch_id=batch_id)
        self.stats.written += len(rows)
        self.stats.batches += 1

    def _reset(self) -> None:
        self._store = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                conn.close()
