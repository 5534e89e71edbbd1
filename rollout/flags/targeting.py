"""Who gets which path: targets, sticky percent buckets and the pure ``decide``."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Literal

BUCKETS = 100_000
"""Percent slices hash into this many buckets: 0.001 % resolution."""

_sha1 = partial(hashlib.sha1, usedforsecurity=False)
_first_8_bytes = struct.Struct(">Q").unpack_from

Path = Literal["legacy", "shadow", "new"]

# Reason codes carried by every Decision.
KILLED = "killed"
UNKNOWN_STAGE = "unknown-stage"
SERVE_TARGET = "serve-target"
SHADOW_TARGET = "shadow-target"
DEFAULT = "default"
BAD_CONTEXT = "bad-context"


@dataclass(frozen=True, slots=True)
class Context:
    """One request: its tenant, an optional request key that slices inside a tenant, extras."""

    tenant: str | None = None
    key: str | None = None
    attrs: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which path serves a request, why, and under which stage."""

    path: Path
    reason: str
    stage: str | None


@dataclass(frozen=True, slots=True)
class Target:
    """A tenant list (``"*"`` = every tenant) and/or a percent of slice keys.

    With both, a request must satisfy both: ``{tenants: ["*"], percent: 10}`` is 10 % of
    every tenant's keys. ``exclude`` tenants never match.
    """

    tenants: frozenset[str] | None = None
    all_tenants: bool = False
    exclude: frozenset[str] = frozenset()
    percent: float | None = None

    threshold: int = field(init=False, repr=False, compare=False)
    """Buckets below this number are inside the percent slice."""

    def __post_init__(self) -> None:
        cut = BUCKETS if self.percent is None else round(self.percent * BUCKETS / 100)
        object.__setattr__(self, "threshold", cut)

    def matches(self, flag: str, ctx: Context) -> bool:
        tenant = ctx.tenant
        if tenant is not None and tenant in self.exclude:
            return False
        if not self.all_tenants and self.tenants is not None and tenant not in self.tenants:
            return False
        if self.percent is None:
            return True
        if ctx.key is not None:
            return bucket(flag, ctx.key) < self.threshold
        return tenant is not None and tenant_bucket(flag, tenant) < self.threshold

    def describe(self) -> str:
        parts = []
        if self.all_tenants:
            parts.append("all tenants")
        elif self.tenants is not None:
            parts.append("tenants " + ", ".join(sorted(self.tenants)))
        if self.exclude:
            parts.append("except " + ", ".join(sorted(self.exclude)))
        if self.percent is not None:
            parts.append(f"{self.percent:g} % of slice keys")
        return ", ".join(parts) or "nobody"


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a staged rollout: who is served the new path, who is shadowed."""

    name: str
    serve: Target | None = None
    shadow: Target | None = None


def bucket(flag: str, key: str) -> int:
    """The sticky bucket of a slice key: SHA-1 of ``flag + "/" + key``, first 8 bytes, mod 100,000.

    Deterministic across processes and versions (documented, with test vectors, in
    docs/flags.md). Membership is ``bucket < percent * 1000``, so raising a percent only
    adds members.
    """
    return int(_first_8_bytes(_sha1((flag + "/" + key).encode()).digest())[0]) % BUCKETS


tenant_bucket = lru_cache(maxsize=65_536)(bucket)
"""``bucket`` for tenant keys, which repeat: a dictionary lookup after the first request.
Request keys are mostly unique and skip the cache."""


def decide(
    flag: str, stages: Mapping[str, Stage], ctx: Context, stage: str | None, killed: bool = False
) -> Decision:
    """Decide the path for one request. Pure: never raises, never does I/O.

    Order: killed or unknown stage → legacy; serve target → new; shadow target → shadow;
    otherwise legacy.
    """
    try:
        if killed:
            return Decision("legacy", KILLED, stage)
        current = stages.get(stage) if stage is not None else None
        if current is None:
            return Decision("legacy", UNKNOWN_STAGE, stage)
        if not isinstance(ctx, Context) or not _valid_context(ctx):
            return Decision("legacy", BAD_CONTEXT, stage)
        if current.serve is not None and current.serve.matches(flag, ctx):
            return Decision("new", SERVE_TARGET, stage)
        if current.shadow is not None and current.shadow.matches(flag, ctx):
            return Decision("shadow", SHADOW_TARGET, stage)
        return Decision("legacy", DEFAULT, stage)
    except Exception:  # evaluation must never raise into a request
        return Decision("legacy", BAD_CONTEXT, stage)


def _valid_context(ctx: Context) -> bool:
    return (ctx.tenant is None or isinstance(ctx.tenant, str)) and (
        ctx.key is None or isinstance(ctx.key, str)
    )
