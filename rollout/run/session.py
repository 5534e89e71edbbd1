"""Where a command works: the workspace and its target and store databases (resolved lazily)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..flags.workspace import Workspace
from ..store.connection import Target, connect, resolve
from ..store.store import Store
from .privileges import require_least_privilege, with_role

Say = Callable[[str], None]


@dataclass
class Session:
    """A workspace plus where its target and store databases are (resolved lazily)."""

    workspace: Path
    dsn: str | None = None
    store_dsn: str | None = None
    say: Say = print
    allow_superuser: bool = False
    """Run flag SQL even as a login that reaches past the database (``--allow-superuser``)."""
    _resolved: Target | None = field(default=None, init=False, repr=False)

    def load(self, strict: bool = True) -> Workspace:
        return Workspace.load(self.workspace, strict=strict)

    @property
    def resolved(self) -> Target:
        if self._resolved is None:
            self._resolved = resolve(self.dsn, self.workspace, announce=self.say)
        return self._resolved

    @property
    def target_dsn(self) -> str:
        return self.resolved.dsn

    def shadow_dsn(self, ws: Workspace) -> str:
        """The connection flag SQL runs on: the target's (the embedded server's
        least-privilege login), with ``SET ROLE`` to the workspace's ``shadow_role``."""
        return with_role(self.resolved.shadow_dsn, ws.settings.shadow_role)

    @contextmanager
    def target(self) -> Iterator[psycopg.Connection[Any]]:
        with connect(self.target_dsn, autocommit=True) as conn:
            yield conn

    @contextmanager
    def runner(self, ws: Workspace, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection to run flag SQL on, after the least-privilege check (``what`` names
        the work in a refusal)."""
        with connect(self.shadow_dsn(ws), autocommit=True) as conn:
            require_least_privilege(
                conn, allow=self.allow_superuser or ws.settings.allow_superuser, what=what)
            yield conn

    @contextmanager
    def store(self) -> Iterator[Store]:
        dsn = self.store_dsn or self.target_dsn
        with connect(dsn, autocommit=True) as conn:
            yield Store.open(conn)
