"""The typed report model: what the judge finds and the report builder assembles, frozen.

Field order is the JSON key order of ``docs/report-schema.json`` bodies; ``model_json``
is the one place that turns these objects into JSON and back (older bodies included).
A field whose JSON key is left out rather than written as null says so in its metadata
(``model_record``). Parts of a report whose shape belongs to another stage's own records
(perturbation, business checks, the watcher's figures, verification details, diff
entries) are carried as ``Json`` values, exactly as that stage wrote them. Plans are in
``model_plans`` (plan shapes as trees), the index page in ``model_index``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model_plans import GenericPlans, Plans
from .model_record import OMIT_EMPTY, Json, JsonObject, Record, absent_if_none


@dataclass(frozen=True)
class GateResult(Record):
    """One gate as a report shows it: its status, figure, threshold and reason."""

    name: str | None = None
    status: str | None = None  # "pass" | "fail" | "inconclusive" | "info"
    passed: bool | None = None  # None for info gates
    figure: Json = None
    threshold: Json = None
    confidence: float | None = None
    display: str | None = None
    reason: str | None = None
    details: JsonObject = field(default_factory=dict, metadata=OMIT_EMPTY)

    @property
    def decided_by(self) -> list[str]:
        """The sources whose judgement decided an evidence gate (none for other gates)."""
        raw = self.details.get("decided_by")
        return [s for s in raw if isinstance(s, str)] if isinstance(raw, list) else []


@dataclass(frozen=True)
class PathLatency(Record):
    """One path's latency quantiles in milliseconds (None: the path never succeeded)."""

    n: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None


@dataclass(frozen=True)
class Latency(Record):
    """The latency comparison: quantiles per path, the gated ratio and its intervals."""

    quantile: float | None = None
    confidence: float | None = None
    pairs: int | None = None
    legacy: PathLatency | None = None
    new: PathLatency | None = None
    ratio: float | None = None
    ratio_ci: list[float] | None = None
    hl_ratio: float | None = None
    hl_ci: list[float] | None = None
    change_pct: float | None = None
    mann_whitney_p: float | None = None
    effective_tolerance: float | None = None
    samples_needed: int | None = None
    pairs_measured: int | None = absent_if_none()
    source: str | None = absent_if_none()


@dataclass(frozen=True)
class Noise(Record):
    """The A/A calibration: legacy against itself."""

    samples: int | None = None
    compared: int | None = None
    mismatch_rate: float | None = None
    latency_ratio: float | None = None
    latency_ci: list[float] | None = None


@dataclass(frozen=True)
class MismatchSample(Record):
    """One parameter set whose results differed, with its bounded diff."""

    tenant: str | None = None
    params: Json = None
    diff: list[JsonObject] = field(default_factory=list)
    truncated: bool | None = None


@dataclass(frozen=True)
class Mismatches(Record):
    count: int | None = None
    compared: int | None = None
    rate: float | None = None
    noise_rate: float | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    samples: list[MismatchSample] = field(default_factory=list)
    samples_omitted: int | None = None


@dataclass(frozen=True)
class PathFailures(Record):
    count: int | None = None
    by_sqlstate: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvironmentCount(Record):
    count: int | None = None
    counted: int | None = None


@dataclass(frozen=True)
class Failures(Record):
    legacy: PathFailures | None = None
    new: PathFailures | None = None
    new_only: int | None = None
    new_only_by_class: dict[str, int] = field(default_factory=dict)
    environment: dict[str, EnvironmentCount] | None = absent_if_none()


@dataclass(frozen=True)
class EnvironmentEvent(Record):
    """Environment failures of one minute, path and SQLSTATE."""

    at: str | None = None
    path: str | None = None
    sqlstate: str | None = None
    count: int | None = None
    counted: int | None = None
    source: str | None = absent_if_none()


@dataclass(frozen=True)
class PathLocks(Record):
    measured: int | None = None
    waited: int | None = None
    mean_wait_ms: float | None = None
    p95_wait_ms: float | None = None
    max_wait_ms: float | None = None
    lock_timeouts: int | None = None
    held: list[list[str]] = field(default_factory=list)
    waited_on: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Locks(Record):
    legacy: PathLocks | None = None
    new: PathLocks | None = None
    only_new_holds: list[list[str]] = field(default_factory=list)
    only_legacy_holds: list[list[str]] = field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True)
class Tenant(Record):
    tenant: str | None = None
    samples: int | None = None
    mismatches: int | None = None
    legacy_p50_ms: float | None = None
    new_p50_ms: float | None = None
    new_failures: int | None = None
    new_failures_by_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceEvidence(Record):
    """One source's own evidence (offline shadow runs, or a running service's pairs)."""

    samples: int | None = None
    gates: list[GateResult] = field(default_factory=list)
    mismatches: Mismatches | None = None
    failures: Failures | None = None
    noise: Noise | None = None
    latency: Latency | None = None


@dataclass(frozen=True)
class IncompleteRun(Record):
    """A shadow run of the stage that did not finish."""

    run_id: str | None = None
    status: str | None = None  # "failed" | "running"
    reason: str | None = None
    mode: str | None = None
    samples: int | None = None
    requested: int | None = None
    started_at: str | None = None


@dataclass(frozen=True)
class Queries(Record):
    legacy: str | None = None
    new: str | None = None
    legacy_source: str | None = None
    new_source: str | None = None


@dataclass(frozen=True)
class RollbackPlan(Record):
    """The two steps back (the flag, then the schema) and the rollback's verification."""

    script_path: str | None = None
    script: str | None = None
    migration_path: str | None = None
    migration: str | None = None
    none_reason: str | None = None
    verified: bool | None = None
    verification: str | None = None
    verification_details: JsonObject | None = None
    hazards: list[JsonObject] = field(default_factory=list)
    flag_command: str | None = None
    steps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PoolFigures(Record):
    """One pool's recorded statistics summed over a window."""

    requests: int | None = None
    requests_queued: int | None = None
    wait_ms: int | None = None
    mean_wait_ms: float | None = None
    errors: int | None = None
    returns_bad: int | None = None
    connections_lost: int | None = None
    peak_pool_size: int | None = None
    snapshots: int | None = None
    runners: int | None = None


@dataclass(frozen=True)
class PoolWindow(Record):
    start: str | None = None
    end: str | None = None
    since: str | None = None  # "stage_entered" | "first_observation"


@dataclass(frozen=True)
class Pools(Record):
    window: PoolWindow | None = None
    recorded: bool | None = None
    requests: PoolFigures | None = None
    shadow: PoolFigures | None = None
    note: str | None = None


@dataclass(frozen=True)
class ServedWindow(Record):
    """The requests a running service served in a window: what callers saw."""

    requests: int | None = None
    served_new: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_lock_wait_ms: float | None = None
    failures_by_class: dict[str, int] = field(default_factory=dict)
    pools: dict[str, PoolFigures] = field(default_factory=dict)


@dataclass(frozen=True)
class StageImpact(Record):
    """Online traffic in the window before the flag entered the stage against the window
    after, and the flag's business checks around that change."""

    changed_at: str | None = None
    from_stage: str | None = None
    by: str | None = None
    window_minutes: float | None = None
    before: ServedWindow | None = None
    after: ServedWindow | None = None
    note: str | None = None
    business: list[JsonObject] | None = absent_if_none()
    """``business.stage_business``'s checks, as that stage wrote them."""


@dataclass(frozen=True)
class TimelineStage(Record):
    name: str | None = None
    current: bool | None = None
    serve: str | None = None
    shadow: str | None = None


@dataclass(frozen=True)
class TimelineEvent(Record):
    """One audited change of the flag's state."""

    at: str | None = None
    actor: str | None = None
    action: str | None = None
    from_stage: str | None = None
    to_stage: str | None = None
    killed: bool | None = None
    reason: str | None = None
    forced: bool | None = None
    report_id: str | None = None


@dataclass(frozen=True)
class AnalysisInterval(Record):
    """One interval ``rollout watch`` judged (``rollout.watch_intervals``)."""

    analysis_id: str | None = None
    at: str | None = None
    stage: str | None = None
    state_version: int | None = None
    window_start: str | None = None
    window_end: str | None = None
    verdict: str | None = None
    decision: str | None = None  # continue | abort | promote | stale
    failed_intervals: int | None = None
    go_streak: int | None = None
    inconclusive_streak: int | None = None
    latency_p: float | None = None
    mismatch_p: float | None = None
    figures: JsonObject = field(default_factory=dict)
    """The window's and the stage's figures, the sequential tests, the gates: as the
    watcher recorded them."""
    reasons: list[str] = field(default_factory=list)
    watcher: str | None = None
    acted_by: str | None = None
    report_id: str | None = None


@dataclass(frozen=True)
class Timeline(Record):
    current_stage: str | None = None
    killed: bool | None = None
    version: int | None = None
    started: bool | None = None
    stages: list[TimelineStage] = field(default_factory=list)
    events: list[TimelineEvent] = field(default_factory=list)
    analysis: list[AnalysisInterval] | None = absent_if_none()
    """The intervals ``rollout watch`` judged, newest first (``store.history.analysis_history``)."""


@dataclass(frozen=True)
class SampleCounts(Record):
    ab: int | None = None
    online: int | None = None
    offline: int | None = None


@dataclass(frozen=True)
class Environment(Record):
    """Where the evidence was measured."""

    server_version: str | None = None
    database: str | None = None
    runs: list[str] = field(default_factory=list)
    first_observation: str | None = None
    last_observation: str | None = None
    toolkit_version: str | None = None
    samples: SampleCounts | None = None
    run_seconds: float | None = None


@dataclass(frozen=True)
class Judgement:
    """What ``verdict.assess`` finds: the verdict and every figure behind it."""

    verdict: str
    reasons: list[str]
    samples: int
    incomplete_runs: list[IncompleteRun]
    gates: list[GateResult]
    mismatches: Mismatches
    failures: Failures
    environment_events: list[EnvironmentEvent]
    locks: Locks
    tenants: list[Tenant]
    noise: Noise
    latency: Latency
    sources: dict[str, SourceEvidence]
    plans: Plans
    generic_plans: GenericPlans
    perturbation: JsonObject


@dataclass(frozen=True)
class Report(Record):
    """A stage's go/no-go report (schema version 2): the JSON body, typed.

    Every field may be None or empty in a body read back from the store (older schema
    versions lack keys; ``model_json.report_from_json`` never raises on a body's shape);
    the report builder fills every field the schema requires."""

    schema_version: int | None = None
    report_id: str | None = None
    flag: str | None = None
    description: str | None = None
    owner: str | None = None
    kind: str | None = None
    stage: str | None = None
    stages: list[str] = field(default_factory=list)
    sql_hash: str | None = None
    generated_at: str | None = None
    toolkit_version: str | None = None
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)
    samples: int | None = None
    incomplete_runs: list[IncompleteRun] | None = absent_if_none()
    gates: list[GateResult] = field(default_factory=list)
    mismatches: Mismatches | None = None
    failures: Failures | None = None
    environment_events: list[EnvironmentEvent] | None = absent_if_none()
    locks: Locks | None = None
    tenants: list[Tenant] | None = None
    noise: Noise | None = None
    latency: Latency | None = None
    sources: dict[str, SourceEvidence] | None = absent_if_none()
    plans: Plans | None = None
    generic_plans: GenericPlans | None = None
    perturbation: JsonObject | None = absent_if_none()
    queries: Queries | None = None
    rollback: RollbackPlan | None = None
    stage_impact: StageImpact | None = None
    pools: Pools | None = absent_if_none()
    timeline: Timeline | None = None
    database_stats: dict[str, int] = field(default_factory=dict)
    environment: Environment | None = None
