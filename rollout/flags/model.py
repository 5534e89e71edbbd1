"""The model of one query change, as validated from its flag file (see ``flagfile``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from ..errors import InputError
from .targeting import Context, Decision, Stage, decide

Kind = Literal["read", "write"]
Order = Literal["strict", "ignore", "key"]
Direction = Literal["higher", "lower"]

FAILURE_CLASSES = ("serialization_failure", "deadlock", "lock_timeout", "statement_timeout",
                   "constraint_violation", "connection", "client", "other")

TOP_KEYS = (
    "name", "description", "owner", "kind", "queries", "params", "compare", "stages", "gates",
    "rollback", "online", "isolation", "webhook", "business",
)
ISOLATION = ("read committed", "repeatable read", "serializable")

# Names are data, never code or paths: they appear in file names (reports/<flag>/<stage>.md),
# in shell commands shown to operators and in URLs. These sets need no quoting anywhere and
# can never be ".", "..", absolute, hidden or an option ("-x"). Flag names are lower case so
# two flags cannot share a file on a case-insensitive file system. See docs/flags.md.
FLAG_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Tenant names may be any text but these (they are only matched, never used as paths)."""

SETTINGS_KEYS = ("allow_superuser", "files_outside_workspace", "shadow_role", "webhook")
ABORT_GATES = ("latency", "max_mismatch_rate", "max_new_failures", "lock_wait")
"""The gates an ``analysis:`` block may let abort a stage (``abort_on``)."""
ANALYSIS_KEYS = ("interval", "window", "failure_limit", "inconclusive_limit", "promote_after",
                 "promote_intervals", "abort_on")
BUSINESS_KEYS = ("name", "query", "direction", "tolerance", "gate", "window_minutes",
                 "confidence", "statement_timeout_ms")
BUSINESS_PLACEHOLDERS = ("window_start", "window_end")
"""What a business query receives: the bounds of one time window (timestamptz)."""
MAX_BUSINESS_CHECKS = 20
"""Each check runs its query a dozen times per report: a bound on what one flag costs."""


@dataclass(frozen=True)
class Settings:
    """Workspace settings, from the optional ``rollout.yaml`` at the workspace root."""

    allow_superuser: bool = False
    """Shadow as a superuser (or a role that can run programs or write server files)."""
    files_outside_workspace: bool = False
    """Let query and rollback paths point outside the workspace (absolute, ``..``, symlinks)."""
    shadow_role: str | None = None
    """A role to ``SET ROLE`` to for shadow executions."""
    webhook: str | None = None
    """Where ``rollout watch`` posts its notifications: an http(s) URL, or ``env:NAME`` to
    read the URL (a secret) from the environment when sending."""


@dataclass(frozen=True)
class Analysis:
    """How ``rollout watch`` judges one stage (its ``analysis:`` block; docs/watch.md)."""

    interval: timedelta = timedelta(minutes=1)
    """How often the stage is judged."""
    window: timedelta = timedelta(minutes=30)
    """The sliding window of online observations each interval's figures come from."""
    failure_limit: int = 0
    """Failed intervals allowed in the stage; one more aborts (kills) the flag."""
    inconclusive_limit: int = 60
    """Consecutive inconclusive intervals after which a human is notified (once)."""
    promote_after: timedelta | None = None
    """Opt-in promotion: the stage's soak time before the watcher may advance it."""
    promote_intervals: int = 10
    """Consecutive GO intervals promotion needs besides the soak time."""
    abort_on: tuple[str, ...] = ("latency", "max_mismatch_rate", "max_new_failures")
    """The gates whose failure counts towards ``failure_limit`` (``ABORT_GATES``)."""


@dataclass(frozen=True)
class Query:
    """SQL text of one path and where it came from (``inline`` or a workspace path)."""

    sql: str
    source: str


@dataclass(frozen=True)
class CompareRules:
    """How two result sets are compared; every rule is documented in docs/compare.md."""

    order: Order = "strict"
    key: tuple[str, ...] = ()
    ignore_columns: frozenset[str] = frozenset()
    float_tolerance: float = 0.0
    """Relative: |a - b| ≤ tolerance × max(|a|, |b|)."""
    float_abs_tolerance: float = 0.0
    """Absolute: |a - b| ≤ this, whatever the magnitude."""
    numeric_scale: Literal["ignore", "strict"] = "ignore"
    """``ignore``: 1.50 = 1.5; ``strict``: the scale must match too."""
    round_timestamps: Mapping[str, timedelta] = field(default_factory=dict)
    """Per column: truncate timestamps to this unit before comparing."""
    sensitive: frozenset[str] = frozenset()
    """Columns (and parameters) whose values are masked in every output."""
    max_diffs: int = 5
    """Diff entries kept per kind and comparison."""
    stream: bool = False
    """Compare large results as they stream from server-side cursors."""
    batch_size: int = 10_000
    binary: bool = False
    """Stream in binary format (cheaper for numeric, timestamp and array columns)."""
    checksum: bool = False
    """Compare count and an order-independent hash on the server; drill down by key."""


@dataclass(frozen=True)
class LatencyGate:
    quantile: float = 0.95
    max_regression: float = 0.10
    confidence: float = 0.98


@dataclass(frozen=True)
class Gates:
    """Go/no-go thresholds; the defaults are documented in docs/flags.md."""

    min_samples: int = 200
    max_mismatch_rate: float = 0.0
    latency: LatencyGate = field(default_factory=LatencyGate)
    max_new_failures: int = 0
    max_lock_wait_regression_ms: float = 5.0
    max_new_failures_by_class: Mapping[str, int] = field(default_factory=dict)
    """Per failure class (deadlock, serialization_failure, ...): new-only failures allowed."""
    max_buffers_ratio: float | None = None
    """New ÷ legacy shared buffers per execution (EXPLAIN samples); None reports only."""
    generic_plan_max_ratio: float = 5.0
    """A path whose generic plan is this much slower than its custom plan for a tenant
    (and by at least 1 ms) fails, unless legacy is as bad for that tenant."""


@dataclass(frozen=True)
class Online:
    """How the online runner treats this flag in a running service."""

    max_per_second: float | None = None
    """Shadow executions per second, per process; beyond it requests are served unshadowed."""
    max_per_tenant_per_second: float | None = None
    verify_new: bool = False
    """When serving new, also run legacy in the background and compare."""
    statement_timeout_ms: int | None = None
    """Overrides the runner's shadow statement_timeout for this flag."""
    lock_timeout_ms: int | None = None
    max_lag_ms: int = 250
    """A background job that waited longer than this in the queue is dropped, not run:
    compared later, it would see data changed since the served read (false mismatches)."""
    pair_latency: bool = True
    """The background job runs the served path again beside the other one on the shadow
    pool, in random order: online latency compared like for like, and an online A/A check of
    the served result. False halves the background work; online latency is then not
    judged."""


@dataclass(frozen=True)
class BusinessCheck:
    """A business metric judged beside the query metrics (a ``business:`` entry;
    docs/business.md): one number per time window, compared before and after a stage change."""

    name: str
    query: Query
    """One plain read returning one number for ``%(window_start)s``–``%(window_end)s``."""
    direction: Direction
    """Which way is better: ``higher`` (success rate) or ``lower`` (error rate, staleness)."""
    tolerance: float
    """The relative change for the worse that is allowed (0.02: 2 %)."""
    gate: bool = False
    """Counts towards the verdict; informational (shown, never deciding) by default."""
    window: timedelta = timedelta(minutes=60)
    """How long each side of the change is (before and after)."""
    confidence: float = 0.95
    """Of the interval of the relative change."""
    statement_timeout_ms: int = 10_000
    """``SET LOCAL statement_timeout`` of each execution of the query."""


@dataclass(frozen=True)
class Rollback:
    """The schema undo (and the forward change it undoes), read from the workspace."""

    script_path: str | None = None
    script: str | None = None
    migration_path: str | None = None
    migration: str | None = None
    none_reason: str | None = None


@dataclass(frozen=True)
class Flag:
    """One query change, validated. ``decide`` is pure."""

    name: str
    description: str
    owner: str
    kind: Kind
    legacy: Query
    new: Query
    sample_sql: str | None
    tenants_sql: str | None
    compare: CompareRules
    stages: tuple[Stage, ...]
    gates: Gates
    rollback: Rollback
    file: str
    online: Online = field(default_factory=Online)
    isolation: str = "read committed"
    """The isolation level both paths run under, as the application runs them."""
    analysis: Mapping[str, Analysis] = field(default_factory=dict)
    """Per stage name, its ``analysis:`` block; a stage without one is watched with
    ``Analysis()`` (abort on failure, never promote)."""
    webhook: str | None = None
    """The flag's own notification webhook (else the workspace's); see ``Settings``."""
    business: tuple[BusinessCheck, ...] = ()
    """Business metrics compared around each stage change (``rollout.judge.business``)."""

    def analysis_for(self, stage: str) -> Analysis:
        return self.analysis.get(stage) or Analysis()

    @property
    def stage_map(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages}

    def stage(self, name: str) -> Stage | None:
        return self.stage_map.get(name)

    def unknown_stage(self, name: str) -> InputError:
        """The error for a stage this flag does not define, naming the ones it does."""
        names = ", ".join(s.name for s in self.stages)
        return InputError(f"flag '{self.name}' has no stage '{name}' (stages: {names})")

    @property
    def first_stage(self) -> str:
        return self.stages[0].name

    def decide(self, ctx: Context, stage: str | None, killed: bool = False) -> Decision:
        return decide(self.name, self._stages, ctx, stage, killed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stages", {s.name: s for s in self.stages})
        h = hashlib.sha256()
        for q in (self.legacy.sql, self.new.sql):
            h.update(q.strip().encode())
            h.update(b"\x00")
        object.__setattr__(self, "sql_hash", h.hexdigest()[:16])

    _stages: Mapping[str, Stage] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)
    sql_hash: str = field(default="", init=False, compare=False)
    """Fingerprint of both paths' SQL: observations of older SQL do not count."""
