"""Live flag state in a running process: loaded once, then pushed by LISTEN/NOTIFY.

A ``FlagStates`` watcher owns one store connection in a daemon thread. Every change made
through ``rollout.flags.state.change`` NOTIFYs the new state; the watcher applies it in place, so
``decide`` never does I/O. On a lost connection it keeps the last known state, reconnects
with backoff and reloads everything; a flag it has never seen serves legacy.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import psycopg

from .model import Flag
from .state import CHANNEL, FlagState, read_all
from .targeting import Context, Decision

POLL = 0.5
"""Seconds between checks for close() while waiting for notifications."""

NO_STATE = "no-state"
"""Decision reason when the store has never been reachable or the flag was never started."""


class FlagStates:
    """Thread-safe view of ``rollout.flag_state``, kept current by notifications."""

    def __init__(self, dsn: str, *, on_change: Callable[[FlagState], None] | None = None,
                 reconnect_delay: float = 0.5, max_delay: float = 10.0) -> None:
        self._dsn = dsn
        self._on_change = on_change
        # Runners subscribe to act on a change at once (a kill drops their queued shadow
        # jobs); a tuple replaced whole, so the watcher iterates it without a lock.
        self._listeners: tuple[Callable[[FlagState], None], ...] = ()
        self._listeners_lock = threading.Lock()
        self._states: dict[str, FlagState] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._delay = reconnect_delay
        self._max_delay = max_delay
        self.connected = False
        self.reloads = 0
        self.notifications = 0
        self._thread = threading.Thread(target=self._run, name="rollout-flag-states",
                                        daemon=True)

    def start(self, wait: float | None = 5.0) -> FlagStates:
        """Start listening; wait up to ``wait`` seconds for the first load (it may fail)."""
        self._thread.start()
        if wait:
            self._ready.wait(wait)
        return self

    def subscribe(self, fn: Callable[[FlagState], None]) -> None:
        """Call ``fn(state)`` in the watcher thread after each state it applies."""
        with self._listeners_lock:
            self._listeners = (*self._listeners, fn)

    def unsubscribe(self, fn: Callable[[FlagState], None]) -> None:
        with self._listeners_lock:
            self._listeners = tuple(f for f in self._listeners if f != fn)

    def get(self, flag: str) -> FlagState | None:
        return self._states.get(flag)

    def decide(self, flag: Flag, ctx: Context) -> Decision:
        st = self._states.get(flag.name)
        if st is None or not st.started:
            return Decision("legacy", NO_STATE, None)
        return flag.decide(ctx, st.stage, st.killed)

    def close(self) -> None:
        """Stop listening; returns within the notification poll interval."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- the listening thread -------------------------------------------------------------
    def _run(self) -> None:
        delay = self._delay
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True,
                                     application_name="pg-rollout-flags") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._replace(read_all(conn))  # after LISTEN: no change slips between
                    self.connected = True
                    self._ready.set()
                    delay = self._delay
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=POLL):
                            self._apply(FlagState.from_payload(note.payload))
            except (psycopg.Error, OSError):
                pass  # keep the last known state; reconnect below
            finally:
                self.connected = False
            self._ready.set()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._max_delay)

    def _replace(self, states: dict[str, FlagState]) -> None:
        self.reloads += 1
        for st in states.values():
            self._apply(st, notified=False)

    def _apply(self, st: FlagState, notified: bool = True) -> None:
        self.notifications += notified
        known = self._states.get(st.flag)
        if known is not None and known.version >= st.version:
            return
        self._states[st.flag] = st  # one dict store: atomic under the GIL
        for fn in (*self._listeners, *(() if self._on_change is None else (self._on_change,))):
            with contextlib.suppress(Exception):  # a callback must not stop the watcher
                fn(st)
