"""Which served requests get a background job: the flag's sampling limits and the runner's
shadow budget. Pure logic with a clock, no I/O, shared by ``Rollout`` and ``AsyncRollout``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..flags.model import Flag

SHADOW_BUDGET = 0.02
"""The default shadow budget: seconds of background work per second of wall time, per
process (2 %). Measured, not estimated: each job's cost is its own wall time, so when the
host is loaded and jobs take longer, fewer are admitted (docs/online.md)."""
BUDGET_BURST_S = 1.0
"""The budget's bucket holds at most this many seconds' worth of its share."""
COST_SMOOTHING = 0.1
"""Weight of the latest job in the moving average of a job's cost."""


class Admission:
    """Token buckets per flag and per flag and tenant (``online.max_per_second`` ...).

    Approximate under concurrency by design: a race may admit one extra execution, never
    block a request.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str | None], list[float]] = {}

    def admit(self, flag: Flag, tenant: str | None) -> bool:
        o = flag.online
        if o.max_per_second is None and o.max_per_tenant_per_second is None:
            return True
        now = self._clock()
        keys: list[tuple[tuple[str, str | None], float]] = []
        if o.max_per_second is not None:
            keys.append(((flag.name, None), o.max_per_second))
        if o.max_per_tenant_per_second is not None:
            keys.append(((flag.name, tenant or ""), o.max_per_tenant_per_second))
        buckets = [self._refill(key, rate, now) for key, rate in keys]
        if any(b[0] < 1.0 for b in buckets):
            return False
        for b in buckets:
            b[0] -= 1.0
        return True

    def _refill(self, key: tuple[str, str | None], rate: float, now: float) -> list[float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [max(rate, 1.0), now]
        bucket[0] = min(max(rate, 1.0), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        return bucket


class Budget:
    """The runner's shadow budget: at most ``share`` seconds of background work per second
    of wall time, whatever the flags say.

    A bucket of seconds refills at ``share`` per second (holding at most
    ``BUDGET_BURST_S × share``). Admitting a job takes its expected cost, the moving average
    of measured job costs; when the job ends, the difference to its measured cost is settled.
    A job is admitted only while the bucket is positive, so the work in flight never runs
    more than one job ahead of the budget; until the first job's cost is measured, one job
    runs at a time. Cost is wall time from the job's start to its
    observation, both executions and the comparison included: on a busy host jobs take
    longer and the runner sheds more — the adaptive part — without tuning.

    ``share=None`` lifts the budget (every job that passes the flag's limits is admitted).
    """

    def __init__(self, share: float | None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if share is not None and not (0 < share <= 64):
            raise ValueError(f"shadow_budget must be a share of wall time in (0, 64], "
                             f"not {share!r}")
        self.share = share
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = (share or 0.0) * BUDGET_BURST_S
        self._at = clock()
        self._cost: float | None = None  # seconds, moving average
        self._spent = 0.0
        self._jobs = 0
        self._inflight = 0
        self._started = self._at

    def admit(self) -> float | None:
        """The cost charged for a new job (to settle with ``spend``), or None: over budget."""
        if self.share is None:
            return 0.0
        with self._lock:
            now = self._clock()
            cap = self.share * BUDGET_BURST_S
            self._tokens = min(cap, self._tokens + (now - self._at) * self.share)
            self._at = now
            if self._tokens <= 0.0 or (self._cost is None and self._inflight):
                return None  # over budget, or the first job's cost is not known yet
            charge = self._cost or 0.0
            self._tokens -= charge
            self._inflight += 1
            return charge

    def spend(self, charged: float, seconds: float) -> None:
        """Settle a finished job: it cost ``seconds``, ``charged`` was taken at admission."""
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            self._spent += seconds
            self._jobs += 1
            self._cost = (seconds if self._cost is None
                          else self._cost + COST_SMOOTHING * (seconds - self._cost))
            if self.share is not None:
                self._tokens -= seconds - charged

    def refund(self, charged: float) -> None:
        """A job admitted but never run (dropped later): give its charge back."""
        if self.share is not None:
            with self._lock:
                self._inflight = max(0, self._inflight - 1)
                self._tokens = min(self.share * BUDGET_BURST_S, self._tokens + charged)

    def snapshot(self) -> dict[str, Any]:
        """What ``get_stats()`` shows: the share, the measured cost of a job, the share
        of wall time spent so far."""
        with self._lock:
            elapsed = max(self._clock() - self._started, 1e-9)
            return {"share": self.share,
                    "job_cost_ms": None if self._cost is None else self._cost * 1000.0,
                    "jobs": self._jobs, "spent_s": self._spent,
                    "used_share": self._spent / elapsed}
