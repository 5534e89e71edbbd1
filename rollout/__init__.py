"""pg-rollout: feature-flagged PostgreSQL query rollouts with shadow runs and go/no-go reports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConnectionFailed,
    FlagFileError,
    InputError,
    RolloutError,
    StoreError,
)

if TYPE_CHECKING:
    from ._online import RequestTimeout, RunnerStats
    from .aio import AsyncRollout
    from .flags import Flag
    from .runner import Rollout
    from .targeting import Context, Decision
    from .workspace import Workspace

# Public names imported on first use (PEP 562): `rollout flag kill` must not pay for the
# runners (psycopg_pool, the online core) or anything they pull in; in an incident the kill
# is as late as the slowest import.
_LAZY = {
    "AsyncRollout": "aio",
    "Flag": "flags",
    "Rollout": "runner",
    "RequestTimeout": "_online",
    "RunnerStats": "_online",
    "Context": "targeting",
    "Decision": "targeting",
    "Workspace": "workspace",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # AttributeError lets `from rollout import scratch` fall back to the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncRollout",
    "ConnectionFailed",
    "Context",
    "Decision",
    "Flag",
    "FlagFileError",
    "InputError",
    "RequestTimeout",
    "Rollout",
    "RolloutError",
    "RunnerStats",
    "StoreError",
    "Workspace",
    "__version__",
]
