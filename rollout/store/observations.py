"""One paired execution of the legacy and new path: the row every report is built from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class PathResult:
    """What one path did: latency, rows, error; ``rows`` holds the result for comparison."""

    ns: int | None
    row_count: int | None
    sqlstate: str | None = None
    error: str | None = None
    lock_wait_ns: int | None = None
    locks: tuple[tuple[str, str], ...] | None = None
    """(relation, mode) pairs the execution held, when sampled."""
    waits: tuple[dict[str, Any], ...] | None = None
    """Lock-wait episodes: lock type, mode, relation, blocking pids."""

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True, slots=True)
class Observation:
    """A row of ``rollout.observations``; field order is the COPY column order."""

    observed_at: datetime
    flag: str
    stage: str
    sql_hash: str
    tenant: str | None
    decision: str
    first_path: str | None
    params: dict[str, Any] | None
    legacy_ns: int | None
    new_ns: int | None
    legacy_rows: int | None
    new_rows: int | None
    legacy_sqlstate: str | None
    new_sqlstate: str | None
    legacy_error: str | None
    new_error: str | None
    matched: bool | None
    diff: list[dict[str, Any]] | None
    run_id: uuid.UUID | None = None
    batch_id: uuid.UUID | None = None
    source: str = "offline"
    mode: str = "ab"
    """``ab`` legacy against new; ``aa`` legacy against itself (noise calibration)."""
    legacy_lock_wait_ns: int | None = None
    new_lock_wait_ns: int | None = None
    locks: dict[str, Any] | None = None
    served_ns: int | None = None
    """Online: the latency the caller saw on the request pool (stage impact). ``legacy_ns``
    and ``new_ns`` of an online pair are both measured on the shadow pool."""

    @property
    def served_only(self) -> bool:
        """A request served the new path with nothing run beside it: it shows the stage's
        traffic (stage impact), not a comparison."""
        return (self.decision == "new" and self.first_path is None and self.legacy_ns is None
                and self.legacy_error is None and self.new_error is None)

    @property
    def paired_online(self) -> bool:
        """An online pair measured like for like: both paths ran one after the other on the
        shadow pool (``first_path`` first); the served execution is only ``served_ns``."""
        return self.source == "online" and self.served_ns is not None \
            and self.first_path is not None

    def online_pool(self, path: str) -> str:
        """Online, the runner's pool that ran ``path``: "requests" for the served path of an
        unpaired observation, "shadow" otherwise (both paths of a pair)."""
        if self.paired_online:
            return "shadow"
        served = "new" if self.decision == "new" else "legacy"
        return "requests" if path == served else "shadow"

    @property
    def legacy_failed(self) -> bool:
        return self.legacy_error is not None or self.legacy_sqlstate is not None

    @property
    def new_failed(self) -> bool:
        return self.new_error is not None or self.new_sqlstate is not None


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Observation))


@dataclass(frozen=True)
class PlanSample:
    """One EXPLAIN (ANALYZE, BUFFERS) of one path, as ``rollout.plans`` keeps it."""

    path: str
    tenant: str | None
    params: dict[str, Any]
    shape: str
    plan: dict[str, Any]
    buffers: int
    plan_rows: float
    actual_rows: float
    exec_ms: float
