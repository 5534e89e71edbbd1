"""Lock waits attributed to executions: a sampler on its own connection watches pg_locks.

The runner marks which execution a backend is running (``begin``/``end``); the sampler polls
``pg_locks`` for ungranted locks of those backends every ``interval`` seconds, using
``waitstart`` (PostgreSQL 14+) for the exact start of each wait, and ``pg_blocking_pids`` for
who blocked it. A wait's end is known to within one interval, so each episode is credited
``last seen - waitstart + interval / 2``; waits shorter than an interval may go unseen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ..store.connection import connect

_WAITING = """
SELECT l.pid, l.locktype, l.mode, l.relation::regclass::text, l.waitstart,
       clock_timestamp(), pg_blocking_pids(l.pid)
  FROM pg_locks l
 WHERE NOT l.granted AND l.pid = ANY(%s) AND l.waitstart IS NOT NULL
"""

_HELD = """
SELECT coalesce(relation::regclass::text, locktype), mode
  FROM pg_locks
 WHERE pid = pg_backend_pid() AND granted AND locktype IN ('relation', 'tuple', 'transactionid')
   AND (relation IS NULL OR relation::regclass::text NOT LIKE 'pg\\_%%')
 ORDER BY 1, 2
"""


@dataclass
class Episode:
    """One lock wait of one execution."""

    locktype: str
    mode: str
    relation: str | None
    waitstart: datetime
    last_seen: datetime
    blocked_by: list[int]

    def wait_ns(self, interval: float) -> int:
        seen = (self.last_seen - self.waitstart).total_seconds()
        return int(max(0.0, seen + interval / 2) * 1e9)

    def describe(self) -> dict[str, Any]:
        return {"locktype": self.locktype, "mode": self.mode, "relation": self.relation,
                "blocked_by": self.blocked_by}


@dataclass
class _Marked:
    execution: int
    episodes: dict[datetime, Episode] = field(default_factory=dict)


class LockWaitSampler:
    """Polls pg_locks for the backends it is told about; bounded to one query per interval."""

    def __init__(self, dsn: str, interval: float = 0.01) -> None:
        self.interval = interval
        self._dsn = dsn
        self._marked: dict[int, _Marked] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.polls = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="rollout-lock-sampler",
                                        daemon=True)

    def start(self) -> LockWaitSampler:
        self._conn = connect(self._dsn, autocommit=True,
                             application_name="pg-rollout-lock-sampler")
        self._thread.start()
        return self

    def begin(self, pid: int, execution: int) -> None:
        with self._lock:
            self._marked[pid] = _Marked(execution)

    def end(self, pid: int) -> tuple[int, list[dict[str, Any]]]:
        """Total wait of the execution that ``pid`` just finished, and its episodes."""
        with self._lock:
            marked = self._marked.pop(pid, None)
        if marked is None or not marked.episodes:
            return 0, []
        episodes = list(marked.episodes.values())
        total = sum(e.wait_ns(self.interval) for e in episodes)
        return total, [e.describe() for e in episodes]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                pids = list(self._marked)
            if not pids:
                continue
            try:
                rows = self._conn.execute(_WAITING, [pids]).fetchall()
            except psycopg.Error:
                self.errors += 1
                continue
            self.polls += 1
            with self._lock:
                for pid, locktype, mode, relation, waitstart, now, blockers in rows:
                    marked = self._marked.get(pid)
                    if marked is None:
                        continue
                    ep = marked.episodes.get(waitstart)
                    if ep is None:
                        marked.episodes[waitstart] = Episode(locktype, mode, relation,
                                                             waitstart, now, list(blockers))
                    else:
                        ep.last_seen = now


def held_locks(conn: psycopg.Connection[Any]) -> tuple[tuple[str, str], ...]:
    """(relation, mode) of the locks this session holds now, inside its transaction."""
    return tuple((str(r), str(m)) for r, m in conn.execute(_HELD).fetchall())


async def aheld_locks(conn: psycopg.AsyncConnection[Any]) -> tuple[tuple[str, str], ...]:
    """The asyncio twin of ``held_locks``."""
    cur = await conn.execute(_HELD)
    return tuple((str(r), str(m)) for r, m in await cur.fetchall())
