"""pg-rollout: feature-flagged PostgreSQL query rollouts with shadow runs and go/no-go reports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ConnectionFailed, FlagFileError, InputError, RolloutError, StoreError

if TYPE_CHECKING:
    from .flags.model import Flag
    from .flags.targeting import Context, Decision
    from .flags.workspace import Workspace
    from .online.aio import AsyncRollout
    from .online.core import RequestTimeout, RunnerStats
    from .online.runner import Rollout

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


def __getattr__(name: str) -> Any:
    """The public names below load on first use (PEP 562): `rollout flag kill` must not pay
    for the runners (psycopg_pool, the online core) or anything they pull in; in an incident
    the kill is as late as the slowest import. Each import is written out, not computed, so
    the import graph (tests/test_import_graph.py) sees it."""
    value: Any
    if name == "Rollout":
        from .online.runner import Rollout as value
    elif name == "AsyncRollout":
        from .online.aio import AsyncRollout as value
    elif name == "RequestTimeout":
        from .online.core import RequestTimeout as value
    elif name == "RunnerStats":
        from .online.core import RunnerStats as value
    elif name == "Flag":
        from .flags.model import Flag as value
    elif name == "Context":
        from .flags.targeting import Context as value
    elif name == "Decision":
        from .flags.targeting import Decision as value
    elif name == "Workspace":
        from .flags.workspace import Workspace as value
    else:
        # AttributeError lets `from rollout import scratch` fall back to the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
