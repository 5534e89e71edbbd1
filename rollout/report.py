"""Build a stage's go/no-go report from the store and write it as HTML, Markdown and JSON."""

from __future__ import annotations

import json
import os
import shlex
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from . import __version__
from .errors import InputError
from .flags import Flag
from .observations import Observation
from .render import render_html, render_index, render_markdown
from .rollback import verification_for
from .state import events, read_all, read_state
from .store import Store
from .summaries import failure_class
from .verdict import judge
from .workspace import Workspace

SCHEMA_VERSION = 2
IMPACT_WINDOW = timedelta(hours=1)
FORMATS = ("html", "md", "json")


@dataclass(frozen=True)
class WrittenReport:
    report_id: uuid.UUID
    verdict: str
    body: dict[str, Any]
    files: list[Path]


def build_report(flag: Flag, stage: str, store: Store, *, database: str,
                 target_dsn: str | None = None) -> dict[str, Any]:
    """Everything a release manager needs for one stage, JSON-ready."""
    if flag.stage(stage) is None:
        raise flag.unknown_stage(stage)
    observations = store.observations(flag.name, stage, flag.sql_hash)
    runs = store.runs(flag.name, stage, flag.sql_hash)
    verification = (verification_for(flag, target_dsn, store.conn)
                    if target_dsn is not None else None)
    core = judge(flag, observations,
                 noise=store.observations(flag.name, stage, flag.sql_hash, mode="aa"),
                 plans=store.plans(flag.name, stage, flag.sql_hash),
                 generic=store.generic_checks(flag.name, stage, flag.sql_hash),
                 rollback=verification)
    versions = sorted({str(r["server_version"]) for r in runs if r["server_version"]})
    return {
        "schema_version": SCHEMA_VERSION,
        "report_id": str(uuid.uuid4()),
        "flag": flag.name,
        "description": flag.description,
        "owner": flag.owner,
        "kind": flag.kind,
        "stage": stage,
        "stages": [s.name for s in flag.stages],
        "sql_hash": flag.sql_hash,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        **core,
        "queries": {"legacy": flag.legacy.sql, "new": flag.new.sql,
                    "legacy_source": flag.legacy.source, "new_source": flag.new.source},
        "rollback": rollback_plan(flag, stage, verification),
        "stage_impact": stage_impact(store, flag, stage),
        "timeline": timeline(store, flag),
        "database_stats": _database_stats(runs),
        "environment": {
            "server_version": ", ".join(versions) or None,
            "database": database,
            "runs": [str(r["run_id"]) for r in runs],
            "first_observation": observations[0].observed_at.isoformat(timespec="seconds")
            if observations else None,
            "last_observation": observations[-1].observed_at.isoformat(timespec="seconds")
            if observations else None,
            "toolkit_version": __version__,
            "samples": {"ab": len(observations),
                        "online": sum(o.source == "online" for o in observations),
                        "offline": sum(o.source == "offline" for o in observations)},
            "run_seconds": sum((r["finished_at"] - r["started_at"]).total_seconds()
                               for r in runs if r["finished_at"] is not None),
        },
    }


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
    before = _window(store.online_window(flag.name, entered["from_stage"], at - window, at))
    after = _window(store.online_window(flag.name, stage, at, at + window))
    before["pools"] = _pools(store.pool_window(flag.name, at - window, at))
    after["pools"] = _pools(store.pool_window(flag.name, at, at + window))
    return {"changed_at": at.isoformat(timespec="seconds"), "from_stage": entered["from_stage"],
            "by": entered["actor"], "window_minutes": window.total_seconds() / 60,
            "before": before, "after": after,
            "note": "served path per request; pools: every runner serving the flag"}


def _pools(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Checkout waits and errors per pool from the runners' recorded pool statistics."""
    return {name: {"requests": int(r["requests"] or 0), "wait_ms": int(r["wait_ms"] or 0),
                   "mean_wait_ms": (r["wait_ms"] or 0) / r["requests"] if r["requests"]
                   else None, "errors": int(r["errors"] or 0),
                   "returns_bad": int(r["returns_bad"] or 0),
                   "connections_lost": int(r["connections_lost"] or 0)}
            for name, r in rows.items()}


def _window(observations: Sequence[Observation]) -> dict[str, Any]:
    served_ns = []
    waits = []
    classes: Counter[str] = Counter()
    for o in observations:
        path = "new" if o.decision == "new" else "legacy"
        ns = getattr(o, f"{path}_ns")
        if ns is not None:
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


def rollback_plan(flag: Flag, stage: str, verification: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The two steps back: return serving to the previous stage (or kill), then undo schema."""
    names = [s.name for s in flag.stages]
    i = names.index(stage)
    reason = shlex.quote(f"roll back {flag.name} from {stage}")
    if i == 0:
        command = f"rollout flag kill {flag.name} --reason {reason}"
        first = f"Return all serving to legacy: {command}"
    else:
        command = f"rollout flag set {flag.name} --stage {names[i - 1]} --reason {reason}"
        first = f"Step serving back to stage {names[i - 1]}: {command}"
    rb = flag.rollback
    steps = [first]
    if rb.none_reason:
        steps.append(f"No schema rollback: {rb.none_reason}")
    elif rb.script_path:
        steps.append(f"Undo the schema change: rollout rollback {flag.name} --apply "
                     f"(runs {rb.script_path}; kills the flag first)")
    else:
        steps.append("No rollback script: the schema change cannot be undone by the toolkit")
    return {
        "script_path": rb.script_path, "script": rb.script,
        "migration_path": rb.migration_path, "migration": rb.migration,
        "none_reason": rb.none_reason,
        "verified": bool(verification and verification.get("verified")),
        "verification": (verification or {}).get("status", "not verified"),
        "verification_details": dict(verification) if verification else None,
        "hazards": list((verification or {}).get("hazards") or []),
        "flag_command": command,
        "steps": steps,
    }


def write_report(flag: Flag, stage: str, store: Store, out_dir: Path, *, database: str,
                 formats: Sequence[str] = FORMATS, target_dsn: str | None = None
                 ) -> WrittenReport:
    """Render the report to ``out_dir/<flag>/<stage>.<fmt>`` and record it in the store.

    Files are written to a temporary name and renamed, so a failure leaves no half report.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"unknown report format {', '.join(unknown) or '(none)'}; "
                         f"use {', '.join(FORMATS)}")
    body = build_report(flag, stage, store, database=database, target_dsn=target_dsn)
    target = out_dir / flag.name
    target.mkdir(parents=True, exist_ok=True)
    rendered = {
        "html": lambda: render_html(body),
        "md": lambda: render_markdown(body),
        "json": lambda: json.dumps(body, indent=2, sort_keys=False, default=str) + "\n",
    }
    texts = {fmt: rendered[fmt]() for fmt in formats}
    files = []
    for fmt, text in texts.items():
        final = target / f"{stage}.{fmt}"
        tmp = final.with_suffix(final.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(final)
        files.append(final)
    report_id = store.save_report(flag=flag.name, stage=stage, sql_hash=flag.sql_hash,
                                  verdict=body["verdict"], samples=body["samples"], body=body,
                                  files=[str(f) for f in files])
    write_index([flag], store, out_dir)
    return WrittenReport(report_id, body["verdict"], body, files)


def write_index(workspace_flags: Sequence[Flag], store: Store, out_dir: Path) -> Path:
    """Write ``out_dir/index.html``: every flag, its live stage (the store's flag state), the
    latest verdict per stage (``rollout.reports``) and relative links to the HTML reports.

    ``workspace_flags`` are listed in any case. When ``out_dir`` is a workspace's ``reports/``
    folder (its parent holds ``flags/``), every flag file of that workspace is listed too, an
    invalid one with its error, so one `rollout report` refreshes the whole index. Written to
    a temporary file and renamed, like the reports."""
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
    for flag_name, stage, verdict, samples, files, created_at in rows:
        latest.setdefault(flag_name, {})[stage] = {
            "verdict": verdict, "samples": samples, "files": list(files or []),
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
            page = out_dir / name / f"{stage}.html"
            exists = rep is not None and page.is_file()
            stages.append({
                "name": stage, "in_flag": stage in stage_names,
                "verdict": rep["verdict"] if rep else None,
                "samples": rep["samples"] if rep else None,
                "created_at": rep["created_at"] if rep else None,
                "href": f"{quote(name, safe='')}/{quote(stage + '.html', safe='')}"
                if exists else None,
                # the newest report of this stage wrote no HTML: the page is an older one
                "html_stale": exists and rep is not None
                and not any(str(f).endswith(".html") for f in rep["files"]),
            })
        st = states.get(name)
        entries.append({
            "name": name,
            "description": flag.description if flag else "",
            "owner": flag.owner if flag else "",
            "error": invalid.get(name) if flag is None else None,
            "state": {"stage": st.stage, "killed": st.killed, "version": st.version,
                      "updated_at": st.updated_at.astimezone(UTC).isoformat(timespec="seconds")
                      if st.updated_at else None,
                      "updated_by": st.updated_by} if st else None,
            "stages": stages,
        })
    text = render_index({"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                         "toolkit_version": __version__, "flags": entries})
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "index.html"
    # a name of its own: two reports finishing at once must not write into one temp file
    tmp = out_dir / f".index.html.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
