"""The toolkit's commands as plain functions; the CLI parses arguments and calls these."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .connection import connect, redact, resolve_dsn
from .dbcheck import check_flag
from .errors import InputError
from .execute import Limits
from .report import FORMATS, WrittenReport, write_report
from .scaffold import init_workspace
from .shadow import Progress, RunSummary, run_shadow, target_tenants
from .store import Store
from .workspace import Workspace

Say = Callable[[str], None]


@dataclass
class Session:
    """A workspace plus where its target and store databases are (resolved lazily)."""

    workspace: Path
    dsn: str | None = None
    store_dsn: str | None = None
    say: Say = print
    _resolved: str | None = field(default=None, init=False, repr=False)

    def load(self, strict: bool = True) -> Workspace:
        return Workspace.load(self.workspace, strict=strict)

    @property
    def target_dsn(self) -> str:
        if self._resolved is None:
            self._resolved = resolve_dsn(self.dsn, self.workspace, announce=self.say)
        return self._resolved

    @contextmanager
    def target(self) -> Iterator[psycopg.Connection[Any]]:
        with connect(self.target_dsn, autocommit=True) as conn:
            yield conn

    @contextmanager
    def store(self) -> Iterator[Store]:
        dsn = self.store_dsn or self.target_dsn
        with connect(dsn, autocommit=True) as conn:
            yield Store.open(conn)


def init(directory: Path) -> list[Path]:
    return init_workspace(directory)


def check(session: Session, names: Sequence[str] = (), database: bool = False) -> list[str]:
    """Validate every flag (or the named ones); with ``database``, prepare their queries too."""
    ws = session.load(strict=False)
    problems = [str(e) for e in ws.errors]
    flags = list(ws.flags.values())
    if names:
        broken = {Path(e.file).stem for e in ws.errors}
        unknown = [n for n in names if n not in ws.flags and n not in broken]
        if unknown:
            ws.flag(unknown[0])  # raises the unknown-flag error, listing known flags
        flags = [ws.flags[n] for n in names if n in ws.flags]
        problems = [str(e) for e in ws.errors if Path(e.file).stem in names]
    if database and flags:
        with session.target() as conn:
            for flag in flags:
                problems.extend(check_flag(conn, flag))
    return problems


def shadow(session: Session, flag_name: str, *, stage: str | None = None,
           tenants: Sequence[str] = (), samples: int | None = None, seed: int | None = None,
           limits: Limits | None = None, progress: Progress | None = None) -> RunSummary:
    """Offline shadow run of one flag's stage; observations land in the store."""
    flag = session.load().flag(flag_name)
    stage = stage or flag.first_stage
    if flag.stage(stage) is None:
        names = ", ".join(s.name for s in flag.stages)
        raise InputError(f"flag '{flag.name}' has no stage '{stage}' (stages: {names})")
    with session.target() as conn, session.store() as store:
        chosen: list[str | None] = list(tenants) if tenants else target_tenants(flag, stage, conn)
        return run_shadow(flag, conn, store, stage=stage, tenants=chosen,
                          samples=samples or flag.gates.min_samples, dsn=session.target_dsn,
                          limits=limits, seed=seed, progress=progress)


def report(session: Session, flag_name: str, *, stage: str | None = None,
           formats: Sequence[str] = FORMATS, out: Path | None = None) -> WrittenReport:
    """Judge a stage and write its report files; the verdict decides the exit code."""
    flag = session.load().flag(flag_name)
    stage = stage or flag.first_stage
    out_dir = out or (session.workspace / "reports")
    with session.store() as store:
        return write_report(flag, stage, store, out_dir, database=redact(session.target_dsn),
                            formats=formats)
