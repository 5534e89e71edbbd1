"""pg-rollout: feature-flagged PostgreSQL query rollouts with shadow runs and go/no-go reports."""

from __future__ import annotations

__version__ = "0.1.0"

from .aio import AsyncRollout  # noqa: E402
from .errors import (  # noqa: E402
    ConnectionFailed,
    FlagFileError,
    InputError,
    RolloutError,
    StoreError,
)
from .flags import Flag  # noqa: E402
from .runner import Rollout  # noqa: E402
from .targeting import Context, Decision  # noqa: E402
from .workspace import Workspace  # noqa: E402

__all__ = [
    "AsyncRollout",
    "ConnectionFailed",
    "Context",
    "Decision",
    "Flag",
    "FlagFileError",
    "InputError",
    "Rollout",
    "RolloutError",
    "StoreError",
    "Workspace",
    "__version__",
]
