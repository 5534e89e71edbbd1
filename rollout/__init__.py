"""pg-rollout: feature-flagged PostgreSQL query rollouts with shadow runs and go/no-go reports."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConnectionFailed,
    FlagFileError,
    InputError,
    RolloutError,
    StoreError,
)
from .flags import Flag  # noqa: E402
from .targeting import Context, Decision  # noqa: E402
from .workspace import Workspace  # noqa: E402

__all__ = [
    "ConnectionFailed",
    "Context",
    "Decision",
    "Flag",
    "FlagFileError",
    "InputError",
    "RolloutError",
    "StoreError",
    "Workspace",
    "__version__",
]
