"""Client-side deadlines: one watchdog thread per process cancels, then cuts off, executions
whose server stops answering.

A server-side ``statement_timeout`` only helps while the backend runs; a backend that is
stopped (``kill -STOP``), a hung server or a dead network leaves the client blocked in a
read forever. Each execution registers a deadline (``watch``): past it the watchdog sends a
cancel request; past it plus a grace period it shuts the connection's socket down (on a
duplicate of the descriptor, so the descriptor itself stays owned by libpq), which makes the
blocked read return an error. The execution then fails with a connection error and the
connection is closed; a pool replaces it.

Registering costs a dict insert under a lock: the watchdog polls every ``TICK`` seconds
rather than being woken per execution, so the hot path never signals a thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

TICK = 0.05
"""Seconds between the watchdog's looks at the registered deadlines."""

ACTIVE, CANCELLED, BROKEN, DONE = "active", "cancelled", "broken", "done"


class Watch:
    """One execution under a deadline; ``state`` says what the watchdog had to do."""

    __slots__ = ("cancel", "fileno", "alive", "due", "cut", "seconds", "state", "lock")

    def __init__(self, cancel: Callable[[], None], fileno: int, due: float, cut: float,
                 seconds: float, alive: Callable[[], bool] | None = None) -> None:
        self.cancel = cancel
        self.fileno = fileno
        self.alive = alive
        self.due = due
        self.cut = cut
        self.seconds = seconds
        self.state = ACTIVE
        self.lock = threading.Lock()

    @property
    def expired(self) -> bool:
        """The watchdog acted: the execution outlived its deadline."""
        return self.state in (CANCELLED, BROKEN)


class Watchdog:
    """The process's watchdog; started on first use, a daemon thread."""

    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self._active: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.cancels = 0
        self.breaks = 0

    def watch(self, cancel: Callable[[], None], fileno: int, seconds: float, grace: float,
              alive: Callable[[], bool] | None = None) -> Watch:
        """Register an execution: cancel it after ``seconds``, cut it off ``grace`` later
        (unless ``alive`` says the connection was closed meanwhile: its descriptor may
        already belong to another socket)."""
        now = time.monotonic()
        w = Watch(cancel, fileno, now + seconds, now + seconds + grace, seconds, alive)
        with self._lock:
            self._active[id(w)] = w
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rollout-deadlines",
                                                daemon=True)
                self._thread.start()
        return w

    def release(self, w: Watch) -> None:
        """The execution is over. Waits for an action of the watchdog in progress on it, so
        a cancel or a cut never lands on whatever the connection runs next."""
        with w.lock:
            if w.state == ACTIVE:
                w.state = DONE
        with self._lock:
            self._active.pop(id(w), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self._lock:
                late = [w for w in self._active.values()
                        if (w.state == ACTIVE and now >= w.due)
                        or (w.state == CANCELLED and now >= w.cut)]
            for w in late:
                with contextlib.suppress(Exception):  # the watchdog must outlive any error
                    self._act(w)

    def _act(self, w: Watch) -> None:
        with w.lock:
            if w.state == ACTIVE:
                w.state = CANCELLED
                self.cancels += 1
                with contextlib.suppress(Exception):  # no cancel: the cut still follows
                    w.cancel()
            elif w.state == CANCELLED:
                w.state = BROKEN
                if w.alive is None or w.alive():
                    self.breaks += 1
                    cut_off(w.fileno)


def cut_off(fileno: int) -> None:
    """Shut a connection's socket down in both directions: a read blocked on it returns."""
    dup = os.dup(fileno)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise
    with sock:
        sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = Watchdog()


@contextlib.contextmanager
def watch(cancel: Callable[[], None], fileno: int, seconds: float, grace: float,
          alive: Callable[[], bool] | None = None) -> Iterator[Watch]:
    """``with watch(...) as w:`` the block runs under the process watchdog."""
    w = WATCHDOG.watch(cancel, fileno, seconds, grace, alive)
    try:
        yield w
    finally:
        WATCHDOG.release(w)
