"""The report model's plans: EXPLAIN samples of both paths and the generic-plan checks,
with plan shapes as trees (``PlanShape``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..run.plan_shape import PlanShape
from .model_record import Json, Record


@dataclass(frozen=True)
class ShapeCount(Record):
    """A plan shape and how many of a path's EXPLAIN samples had it."""

    shape: PlanShape | None = None
    count: int | None = None


@dataclass(frozen=True)
class PlanPath(Record):
    """One path's EXPLAIN samples: its most common shapes and median costs."""

    samples: int | None = None
    shapes: list[ShapeCount] = field(default_factory=list)
    median_buffers: float | None = None
    median_exec_ms: float | None = None
    rows_misestimate: float | None = None


@dataclass(frozen=True)
class PairedPlan(Record):
    """One parameter set explained on both paths: new ÷ legacy buffers."""

    tenant: str | None = None
    params: Json = None
    legacy_buffers: int | None = None
    new_buffers: int | None = None
    ratio: float | None = None
    legacy_ms: float | None = None
    new_ms: float | None = None


@dataclass(frozen=True)
class PlanRun(Record):
    """One EXPLAIN sample."""

    path: str | None = None
    tenant: str | None = None
    shape: PlanShape | None = None
    buffers: int | None = None
    exec_ms: float | None = None


@dataclass(frozen=True)
class Plans(Record):
    """EXPLAIN samples of both paths and the buffers paired by parameter set."""

    samples: int | None = None
    buffers_ratio: float | None = None
    legacy: PlanPath | None = None
    new: PlanPath | None = None
    same_shape: bool | None = None
    paired: list[PairedPlan] = field(default_factory=list)
    paired_ratio_median: float | None = None
    paired_more: int | None = None
    runs: list[PlanRun] = field(default_factory=list)


@dataclass(frozen=True)
class GenericPlanCheck(Record):
    """A custom-against-generic plan check of one path and tenant, every run of each mode
    (``plans.generic_check``) and what it came to (``plan_checks.generic_row``)."""

    path: str | None = None
    tenant: str | None = None
    custom_ms: float | None = None
    generic_ms: float | None = None
    ratio: float | None = None
    custom_buffers: int | None = None
    generic_buffers: int | None = None
    custom_runs: list[float] = field(default_factory=list)
    generic_runs: list[float] = field(default_factory=list)
    custom_buffer_runs: list[int] = field(default_factory=list)
    generic_buffer_runs: list[int] = field(default_factory=list)
    custom_shape: PlanShape | None = None
    generic_shape: PlanShape | None = None
    runs: int | None = None
    runs_beyond: int | None = None
    consistently_slower: bool | None = None
    looks_slower: bool | None = None
    shape_differs: bool | None = None
    buffers_differ: bool | None = None
    differs: bool | None = None


@dataclass(frozen=True)
class GenericPlans(Record):
    checks: list[GenericPlanCheck] = field(default_factory=list)
    regressions: list[GenericPlanCheck] = field(default_factory=list)
    unconfirmed: list[GenericPlanCheck] = field(default_factory=list)
    worst_new_ratio: float | None = None
    rule: str | None = None
