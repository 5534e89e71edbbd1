"""Build a stage's go/no-go report from the store and write it as HTML, Markdown and JSON."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import numpy as np
import psycopg
from psycopg.pq import TransactionStatus

from .._version import __version__
from ..errors import InputError, StoreError
from ..flags.model import Flag
from ..flags.state import events, read_all, read_state
from ..flags.workspace import Workspace
from ..judge.figures import StoreEvidence, served_window
from ..judge.model import (
    Environment,
    Pools,
    Queries,
    Report,
    RollbackPlan,
    SampleCounts,
    StageImpact,
    Timeline,
)
from ..judge.model_json import read, report_body, report_json
from ..judge.model_record import Json, JsonObject
from ..judge.summaries import ENVIRONMENT_WINDOW, PoolSignal, failure_class
from ..judge.verdict import assess, pool_attention
from ..rollback.verify import verification_for
from ..store.observations import Observation
from ..store.store import Store
from .model_index import IndexFlag, IndexPage, IndexStage, LiveState
from .render import render_html, render_index, render_markdown

SCHEMA_VERSION = 2
IMPACT_WINDOW = timedelta(hours=1)
FORMATS = ("html", "md", "json")
MAX_NAME_BYTES = 200
"""A flag or stage name is a file name: room for the format and temporary suffixes."""


@dataclass(frozen=True)
class WrittenReport:
    report_id: uuid.UUID
    verdict: str
    body: dict[str, Any]
    """The JSON body, as written to the JSON file and ``rollout.reports``."""
    files: list[Path]
    report: Report


def build_report(flag: Flag, stage: str, store: Store, *, database: str,
                 target_dsn: str | None = None, business_dsn: str | None = None,
                 allow_superuser: bool = False) -> dict[str, Json]:
    """``assemble_report`` as its JSON body, validated against the report schema."""
    return report_body(assemble_report(flag, stage, store, database=database,
                                       target_dsn=target_dsn, business_dsn=business_dsn,
                                       allow_superuser=allow_superuser))


def assemble_report(flag: Flag, stage: str, store: Store, *, database: str,
                    target_dsn: str | None = None, business_dsn: str | None = None,
                    allow_superuser: bool = False) -> Report:
    """Everything a release manager needs for one stage. With ``business_dsn``, the flag's
    business checks run around the stage's change (on a connection of their own, as the
    least-privilege login) and join the verdict."""
    from ..judge.business import business_gate, stage_business
    from ..run.perturb import read as read_perturbations
    from ..run.plans import read_generic_checks
    from ..store.history import analysis_history

    if flag.stage(stage) is None:
        raise flag.unknown_stage(stage)
    verification = (verification_for(flag, target_dsn, store.conn)
                    if target_dsn is not None else None)
    business = (stage_business(store, flag, stage, business_dsn,
                               allow_superuser=allow_superuser)
                if business_dsn is not None and flag.business else None)
    extra = [g for g in (business_gate(business or []),) if g is not None]
    with _snapshot(store.conn), _Progress() as progress:
        # The figures come from the database (figures.StoreEvidence), read in one snapshot:
        # rows a running service records meanwhile never change them half way.
        evidence = StoreEvidence(store.conn, flag, stage, say=progress.say)
        enormous = evidence.enormous()
        if enormous:
            progress.announce(enormous)
        evidence.load()
        seen = evidence.observed()
        runs = store.runs(flag.name, stage, flag.sql_hash)
        evidence.pool_signals = pool_signals_between(store, flag.name, seen["online_first"],
                                                     seen["online_last"])
        core = assess(
            flag, evidence, plans=store.plans(flag.name, stage, flag.sql_hash),
            generic=read_generic_checks(store.conn, flag.name, stage, flag.sql_hash),
            perturbations=read_perturbations(store.conn, flag.name, stage, flag.sql_hash),
            rollback=verification, runs=runs, extra_gates=extra)
        pools = stage_pools(store, flag.name, stage, seen["first"])
        impact = stage_impact(store, flag, stage)
        if impact is not None and business is not None:
            impact["business"] = business
        flag_timeline = timeline(store, flag)
        flag_timeline["analysis"] = analysis_history(store.conn, flag.name, limit=50)
    attention = pool_attention(pools)
    reasons = [*core.reasons, *([attention] if attention else [])]
    versions = sorted({str(r["server_version"]) for r in runs if r["server_version"]})
    return Report(
        schema_version=SCHEMA_VERSION,
        report_id=str(uuid.uuid4()),
        flag=flag.name,
        description=flag.description,
        owner=flag.owner,
        kind=flag.kind,
        stage=stage,
        stages=[s.name for s in flag.stages],
        sql_hash=flag.sql_hash,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        toolkit_version=__version__,
        verdict=core.verdict,
        reasons=reasons,
        samples=core.samples,
        incomplete_runs=core.incomplete_runs,
        gates=core.gates,
        mismatches=core.mismatches,
        failures=core.failures,
        environment_events=core.environment_events,
        locks=core.locks,
        tenants=core.tenants,
        noise=core.noise,
        latency=core.latency,
        sources=core.sources,
        plans=core.plans,
        generic_plans=core.generic_plans,
        perturbation=core.perturbation,
        queries=Queries(flag.legacy.sql, flag.new.sql, flag.legacy.source, flag.new.source),
        rollback=rollback_plan(flag, stage, verification),
        # as JSON first: business checks are their stage's own records, kept as written
        stage_impact=read(StageImpact, _json_object(impact), strict=True)
        if impact is not None else None,
        pools=read(Pools, pools, strict=True),
        timeline=read(Timeline, flag_timeline, strict=True),
        database_stats=_database_stats(runs),
        environment=Environment(
            server_version=", ".join(versions) or None,
            database=database,
            runs=[str(r["run_id"]) for r in runs],
            first_observation=seen["first"].isoformat(timespec="seconds")
            if seen["first"] else None,
            last_observation=seen["last"].isoformat(timespec="seconds")
            if seen["last"] else None,
            toolkit_version=__version__,
            samples=SampleCounts(seen["count"], seen["by_source"]["online"],
                                 seen["by_source"]["offline"]),
            run_seconds=sum((r["finished_at"] - r["started_at"]).total_seconds()
                            for r in runs if r["finished_at"] is not None),
        ),
    )


def _json_object(value: Mapping[str, Any] | None) -> JsonObject | None:
    """A record another stage built (business checks, watcher intervals) as JSON values:
    the JSON text ``json.dumps(..., default=str)`` always wrote for it."""
    return None if value is None else dict(json.loads(json.dumps(value, default=str)))


@contextlib.contextmanager
def _snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One REPEATABLE READ transaction around the report's reads (when the connection is
    not in a transaction already): every query sees the same rows."""
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        yield
        return
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


class _Progress:
    """What a long report says while it works, on stderr: progress only on a terminal (one
    line, rewritten); the announcement of an enormous stage always."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def say(self, message: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[Kreport: {message}")
            sys.stderr.flush()
            self.shown = True

    def announce(self, message: str) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            self.shown = False
        print(f"report: {message}", file=sys.stderr, flush=True)


def pool_signals(store: Store, flag: str, observations: Sequence[Observation]
                 ) -> list[PoolSignal]:
    """The runners' pool-statistics snapshots, around the stage's online observations, that
    saw connections lost, returned broken or checkouts fail."""
    online = [o.observed_at for o in observations if o.source == "online"]
    if not online:
        return []
    return pool_signals_between(store, flag, min(online), max(online))


def pool_signals_between(store: Store, flag: str, first: datetime | None,
                         last: datetime | None) -> list[PoolSignal]:
    """``pool_signals`` around online observations from ``first`` to ``last``."""
    if first is None or last is None:
        return []
    with store.conn.cursor() as cur:
        cur.execute(
            "SELECT at, pool, errors + returns_bad + connections_lost FROM rollout.pool_stats"
            " WHERE %s = ANY(flags) AND at >= %s AND at <= %s"
            " AND errors + returns_bad + connections_lost > 0 ORDER BY at",
            [flag, first - ENVIRONMENT_WINDOW, last + ENVIRONMENT_WINDOW])
        return [PoolSignal(at, str(pool), int(n)) for at, pool, n in cur]


def timeline(store: Store, flag: Flag, limit: int = 20) -> dict[str, Any]:
    """The flag's stages, where it is now, and its latest audit events."""
    st = read_state(store.conn, flag.name)
    return {
        "current_stage": st.stage, "killed": st.killed, "version": st.version,
        "started": st.started,
        "stages": [{"name": s.name, "current": s.name == st.stage,
                    "serve": s.serve.describe() if s.serve else None,
                    "shadow": s.shadow.describe() if s.shadow else None}
                   for s in flag.stages],
        "events": [{"at": e.at.isoformat(timespec="seconds"), "actor": e.actor,
                    "action": e.action, "from_stage": e.from_stage, "to_stage": e.to_stage,
                    "killed": e.killed, "reason": e.reason, "forced": e.forced,
                    "report_id": str(e.report_id) if e.report_id else None}
                   for e in events(store.conn, flag.name, limit)],
    }


def stage_impact(store: Store, flag: Flag, stage: str,
                 window: timedelta = IMPACT_WINDOW) -> dict[str, Any] | None:
    """Online traffic in the window before the flag entered ``stage`` against the window after."""
    entered = store.stage_entered(flag.name, stage)
    if entered is None or entered["from_stage"] is None:
        return None
    at = entered["at"]
    before = served_window(store.conn, flag.name, entered["from_stage"], at - window, at)
    after = served_window(store.conn, flag.name, stage, at, at + window)
    before["pools"] = _pools(store.pool_window(flag.name, at - window, at))
    after["pools"] = _pools(store.pool_window(flag.name, at, at + window))
    return {"changed_at": at.isoformat(timespec="seconds"), "from_stage": entered["from_stage"],
            "by": entered["actor"], "window_minutes": window.total_seconds() / 60,
            "before": before, "after": after,
            "note": "served path per request; pools: every runner serving the flag"}


def stage_pools(store: Store, flag: str, stage: str,
                observations: Sequence[Observation] | datetime | None,
                now: datetime | None = None) -> dict[str, Any]:
    """The running services' pool figures for the stage's window, whether or not the stage
    changed: from when the flag entered ``stage`` (else the stage's first observation) to
    when it left it (else now). Summed in the database, per pool; a pool no service recorded
    is None, and ``recorded`` says whether any did. ``observations``: the stage's
    observations, or the first one's time."""
    now = now or datetime.now(UTC)
    entered = store.stage_entered(flag, stage)
    if entered is not None:
        start: datetime | None = entered["at"]
        since = "stage_entered"
    elif isinstance(observations, datetime):
        start, since = observations, "first_observation"
    elif observations:
        start, since = observations[0].observed_at, "first_observation"
    else:
        start, since = None, None
    end = (store.stage_left(flag, stage, start) if start is not None else None) or now
    rows = store.pool_window(flag, start, end) if start is not None else {}
    figures = _pools(rows)
    return {
        "window": {"start": start.isoformat(timespec="seconds") if start else None,
                   "end": end.isoformat(timespec="seconds"), "since": since},
        "recorded": bool(figures),
        "requests": figures.get("requests"),
        "shadow": figures.get("shadow"),
        "note": "requests: the served path's pool; shadow: the background path's pool; "
                "every running service serving the flag",
    }


def _pools(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Checkout waits and errors per pool from the runners' recorded pool statistics."""
    return {name: {"requests": _int(r["requests"]),
                   "requests_queued": _int(r.get("requests_queued")),
                   "wait_ms": _int(r["wait_ms"]),
                   "mean_wait_ms": _int(r["wait_ms"]) / r["requests"] if r["requests"]
                   else None, "errors": _int(r["errors"]),
                   "returns_bad": _int(r["returns_bad"]),
                   "connections_lost": _int(r["connections_lost"]),
                   "peak_pool_size": (int(r["peak_pool_size"])
                                      if r.get("peak_pool_size") is not None else None),
                   "snapshots": _int(r.get("snapshots")), "runners": _int(r.get("runners"))}
            for name, r in rows.items()}


def _int(value: Any) -> int:
    return int(value or 0)


def _window(observations: Sequence[Observation]) -> dict[str, Any]:
    """The served requests of a window: what callers saw (``served_ns``; rows recorded
    before it existed hold it in the served path's column). From observations in memory:
    the oracle of ``figures.served_window``, which the report uses."""
    observations = [o for o in observations if o.mode == "ab"]
    served_ns = []
    waits = []
    classes: Counter[str] = Counter()
    for o in observations:
        if o.served_ns is not None:
            served_ns.append(o.served_ns)
        if o.paired_online:
            continue  # the served path's columns hold its re-run on the shadow pool
        path = "new" if o.decision == "new" else "legacy"
        ns = getattr(o, f"{path}_ns")
        if ns is not None and o.served_ns is None:
            served_ns.append(ns)
        wait = getattr(o, f"{path}_lock_wait_ns")
        if wait is not None:
            waits.append(wait)
        cls = failure_class(getattr(o, f"{path}_sqlstate"), getattr(o, f"{path}_error"))
        if cls:
            classes[cls] += 1
    q = np.quantile(served_ns, [0.5, 0.95, 0.99]) / 1e6 if served_ns else [None] * 3
    return {"requests": len(observations),
            "served_new": sum(o.decision == "new" for o in observations),
            "p50_ms": None if q[0] is None else float(q[0]),
            "p95_ms": None if q[1] is None else float(q[1]),
            "p99_ms": None if q[2] is None else float(q[2]),
            "mean_lock_wait_ms": (sum(waits) / len(waits) / 1e6) if waits else None,
            "failures_by_class": dict(classes)}


def _database_stats(runs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """pg_stat_database deltas summed over the stage's runs."""
    total: Counter[str] = Counter()
    for r in runs:
        total.update((r.get("db_stats") or {}).get("delta", {}))
    return dict(total)


def command(*argv: str) -> str:
    """A command line shown in a report, every argument shell-quoted: names are data, and a
    pasted command must run exactly these arguments whatever a name contains."""
    return shlex.join(argv)


def rollback_plan(flag: Flag, stage: str, verification: Mapping[str, Any] | None = None
                  ) -> RollbackPlan:
    """The two steps back: return serving to the previous stage (or kill), then undo schema."""
    names = [s.name for s in flag.stages]
    i = names.index(stage)
    reason = f"roll back {flag.name} from {stage}"
    if i == 0:
        flag_command = command("rollout", "flag", "kill", flag.name, "--reason", reason)
        first = f"Return all serving to legacy: {flag_command}"
    else:
        flag_command = command("rollout", "flag", "set", flag.name, "--stage", names[i - 1],
                               "--reason", reason)
        first = f"Step serving back to stage {names[i - 1]}: {flag_command}"
    rb = flag.rollback
    steps = [first]
    if rb.none_reason:
        steps.append(f"No schema rollback: {rb.none_reason}")
    elif rb.script_path:
        apply = command("rollout", "rollback", flag.name, "--apply")
        steps.append(f"Undo the schema change: {apply} (runs {rb.script_path}; kills the flag "
                     "first)")
    else:
        steps.append("No rollback script: the schema change cannot be undone by the toolkit")
    details = _json_object(verification) if verification else None
    hazards = (details or {}).get("hazards")
    return RollbackPlan(
        script_path=rb.script_path, script=rb.script,
        migration_path=rb.migration_path, migration=rb.migration,
        none_reason=rb.none_reason,
        verified=bool(verification and verification.get("verified")),
        verification=str((verification or {}).get("status", "not verified")),
        verification_details=details,
        hazards=[h for h in hazards if isinstance(h, dict)] if isinstance(hazards, list) else [],
        flag_command=flag_command,
        steps=steps,
    )


def write_report(flag: Flag, stage: str, store: Store, out_dir: Path, *, database: str,
                 formats: Sequence[str] = FORMATS, target_dsn: str | None = None,
                 business_dsn: str | None = None, allow_superuser: bool = False
                 ) -> WrittenReport:
    """Render the report to ``out_dir/<flag>/<stage>.<fmt>``, refresh ``out_dir/index.html``
    and record the report in the store: all of it or none.

    Names are data: a flag or stage name that is not one plain file name, or a folder that
    resolves outside ``out_dir``, is refused before anything is written. Every file is written
    to a temporary name first; the store row is inserted in a transaction that commits only
    after every file is renamed into place, and a failed rename or commit puts back the files
    it replaced. A filesystem error is an ``InputError`` naming the path."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"unknown report format {', '.join(unknown) or '(none)'}; "
                         f"use {', '.join(FORMATS)}")
    if flag.stage(stage) is None:
        raise flag.unknown_stage(stage)
    root = _output_folder(out_dir)
    folder = report_folder(root, flag.name, stage)
    model = assemble_report(flag, stage, store, database=database, target_dsn=target_dsn,
                            business_dsn=business_dsn, allow_superuser=allow_superuser)
    body = report_body(model)  # validated against the schema before anything is written
    rendered = {
        "html": lambda: render_html(model),
        "md": lambda: render_markdown(model),
        "json": lambda: report_json(model),
    }
    texts = {folder / f"{stage}.{fmt}": rendered[fmt]() for fmt in formats}
    files = [out_dir / flag.name / f"{stage}.{fmt}" for fmt in formats]  # as the user named it
    with _Replacement() as replacement:
        try:
            with store.conn.transaction():
                report_id = store.save_report(
                    flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
                    verdict=str(model.verdict), samples=model.samples or 0, body=body,
                    files=[str(f) for f in files])
                for path, text in texts.items():
                    replacement.stage(path, text)
                # read inside the transaction: the index lists the report being written
                replacement.stage(root / "index.html",
                                  _index_page([flag], store, root, pending=list(texts)))
                replacement.install()
        except psycopg.Error as exc:
            raise StoreError(f"cannot save the report in rollout.reports: "
                             f"{_first_line(exc)}") from None
    return WrittenReport(report_id, str(model.verdict), body, files, model)


def report_folder(root: Path, flag: str, stage: str) -> Path:
    """``root/<flag>``, after checking that both names are plain file names and that the
    folder resolves inside ``root`` (a symlink out of it is refused)."""
    for what, name in (("flag", flag), ("stage", stage)):
        problem = _unsafe_name(name)
        if problem:
            raise InputError(f"{what} name {name!r} cannot name a report file: {problem}")
    folder = root / flag
    resolved = folder.resolve()
    if resolved.parent != root:
        raise InputError(f"report folder {folder} resolves to {resolved}, outside the output "
                         f"folder {root}; remove the link or choose another --out")
    return folder


def _unsafe_name(name: str) -> str | None:
    """Why ``name`` cannot be one file name in the output folder, or None."""
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a folder"
    if "/" in name or "\\" in name or os.sep in name:
        return "it contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character"
    if name.startswith("."):
        return "it starts with '.' (hidden, and the writer's temporary names do)"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def _output_folder(out_dir: Path) -> Path:
    """``out_dir`` resolved, refused in one line when something that is not a folder is in
    the way."""
    root = out_dir.expanduser().resolve()
    for parent in (root, *root.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot write reports to {out_dir}: {parent} is a file, "
                                 "not a folder")
            break
    return root


class _Replacement:
    """Files replaced together or not at all: each is written to a temporary name in its
    own folder, then all are renamed into place; the files they replace are kept as hard
    links (or copies) until the caller's work succeeded, and put back if it did not.

    Used as a context manager: an exception anywhere inside undoes every rename and removes
    the temporaries and the folders this replacement created."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._installed: list[tuple[Path, Path, Path | None]] = []  # final, tmp, backup
        self._created: list[Path] = []

    def __enter__(self) -> _Replacement:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            for _, _, backup in self._installed:
                if backup is not None:
                    backup.unlink(missing_ok=True)
        else:
            self._undo()
        for _, tmp in self._staged:
            tmp.unlink(missing_ok=True)

    def stage(self, final: Path, text: str) -> None:
        """Write ``text`` to a temporary file beside ``final``."""
        self._mkdir(final.parent)
        tmp = _sibling(final, "tmp")
        try:
            with tmp.open("x", encoding="utf-8") as f:
                self._staged.append((final, tmp))
                f.write(text)
        except OSError as exc:
            raise _write_error(final, exc) from None

    def install(self) -> None:
        """Rename every staged file into place, keeping what each replaces."""
        for final, tmp in self._staged:
            if final.is_dir() and not final.is_symlink():
                raise InputError(f"cannot write report {final}: a folder is in the way")
            try:
                backup = _keep(final)
                # recorded before the rename: an interrupt right after it is still undone
                self._installed.append((final, tmp, backup))
                os.replace(tmp, final)
            except OSError as exc:
                raise _write_error(final, exc) from None

    def _mkdir(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                if not p.is_dir():
                    raise InputError(f"cannot write reports to {folder}: {p} is a file, "
                                     "not a folder") from None
                continue
            except OSError as exc:
                raise _write_error(p, exc) from None
            self._created.append(p)

    def _undo(self) -> None:
        for final, tmp, backup in reversed(self._installed):
            # best effort: the error that brought us here is the one to report
            with contextlib.suppress(OSError):
                if tmp.exists():  # never renamed: ``final`` is untouched
                    if backup is not None:
                        backup.unlink()
                elif backup is None:
                    final.unlink(missing_ok=True)
                else:
                    os.replace(backup, final)
        self._installed.clear()
        for _, tmp in self._staged:
            tmp.unlink(missing_ok=True)
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty: something else wrote there
                folder.rmdir()


def _sibling(final: Path, suffix: str) -> Path:
    # hidden and unique: two reports finishing at once never share a temporary file
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{suffix}")


def _keep(final: Path) -> Path | None:
    """A second name for the file ``final`` replaces (a hard link, else a copy), or None."""
    if not final.exists() and not final.is_symlink():
        return None
    backup = _sibling(final, "bak")
    try:
        os.link(final, backup, follow_symlinks=False)
    except OSError:  # a filesystem without hard links
        try:
            shutil.copy2(final, backup, follow_symlinks=False)
        except BaseException:
            backup.unlink(missing_ok=True)
            raise
    return backup


def _write_error(path: Path, exc: OSError) -> InputError:
    return InputError(f"cannot write the report to {path}: {exc.strerror or exc}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_index(workspace_flags: Sequence[Flag], store: Store, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` (see ``_index_page``), through a temporary file."""
    root = _output_folder(out_dir)
    with _Replacement() as replacement:
        replacement.stage(root / "index.html", _index_page(workspace_flags, store, root))
        replacement.install()
    return root / "index.html"


def _index_page(workspace_flags: Sequence[Flag], store: Store, out_dir: Path,
                pending: Sequence[Path] = ()) -> str:
    """The index page: every flag, its live stage (the store's flag state), the latest
    verdict per stage (``rollout.reports``) and relative links to the HTML reports.

    ``workspace_flags`` are listed in any case. When ``out_dir`` is a workspace's ``reports/``
    folder (its parent holds ``flags/``), every flag file of that workspace is listed too, an
    invalid one with its error, so one `rollout report` refreshes the whole index. A page
    links to a report in ``pending`` (about to be renamed into place) as if it were there."""
    flags: dict[str, Flag] = {}
    invalid: dict[str, str] = {}
    root = out_dir.parent
    if (root / "flags").is_dir():
        ws = Workspace.load(root, strict=False)
        flags.update(ws.flags)
        invalid = {Path(e.file).stem: str(e) for e in ws.errors}
    flags.update({f.name: f for f in workspace_flags})
    names = sorted({*flags, *invalid})
    states = read_all(store.conn)
    rows = store.latest_reports(names)
    latest: dict[str, dict[str, Any]] = {}
    for flag_name, stage, verdict, samples, files, created_at, by_watch in rows:
        latest.setdefault(flag_name, {})[stage] = {
            "verdict": verdict, "samples": samples, "files": list(files or []),
            "by_watch": bool(by_watch),
            "created_at": created_at.astimezone(UTC).isoformat(timespec="seconds")
            if created_at else None}
    entries = []
    for name in names:
        flag = flags.get(name)
        stage_names = [s.name for s in flag.stages] if flag else []
        reported = latest.get(name, {})
        stages = []
        for stage in [*stage_names, *sorted(set(reported) - set(stage_names))]:
            rep = reported.get(stage)
            # names come from the store too: one that is not a file name has no page
            page = out_dir / name / f"{stage}.html"
            exists = (rep is not None and not _unsafe_name(name) and not _unsafe_name(stage)
                      and (page in pending or page.is_file()))
            stages.append(IndexStage(
                name=stage, in_flag=stage in stage_names,
                verdict=rep["verdict"] if rep else None,
                samples=rep["samples"] if rep else None,
                created_at=rep["created_at"] if rep else None,
                judged_by="rollout watch" if rep and rep["by_watch"] else None,
                href=f"{quote(name, safe='')}/{quote(stage + '.html', safe='')}"
                if exists else None,
                # the newest report of this stage wrote no HTML: the page is an older one
                html_stale=exists and rep is not None
                and not any(str(f).endswith(".html") for f in rep["files"]),
            ))
        st = states.get(name)
        entries.append(IndexFlag(
            name=name,
            description=flag.description if flag else "",
            owner=flag.owner if flag else "",
            error=invalid.get(name) if flag is None else None,
            state=LiveState(st.stage, st.killed, st.version,
                            st.updated_at.astimezone(UTC).isoformat(timespec="seconds")
                            if st.updated_at else None, st.updated_by) if st else None,
            stages=stages,
        ))
    return render_index(IndexPage(datetime.now(UTC).isoformat(timespec="seconds"),
                                  __version__, entries))
