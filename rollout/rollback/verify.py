"""Rollback scripts proven before they are needed: verification on a throwaway local server,
hazards of every statement, and applying the script for real.

Verification never touches the target's server: the target's schema is copied with
``pg_dump --schema-only`` into a database on a local scratch PostgreSQL
(``rollout.rollback.scratch``) and every step runs there, as a role that is no superuser.
Statements that reach the host (``COPY ... PROGRAM``, server files, tablespaces) are not run
at all.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pglast
import psycopg

from ..errors import InputError, ScratchUnavailable
from ..flags.model import Flag
from ..flags.sqlscript import (
    Statement,
    acts_beyond_database,
    destroys_data,
    non_transactional,
    split,
    uses_sequences,
)
from ..run.prepare import describe
from ..store.verifications import latest_verification, save_verification
from .fingerprint import Fingerprint, differences, fingerprint
from .scratch import scratch_database

__all__ = ["Applied", "Hazard", "ScratchUnavailable", "Verification", "apply", "hazards_of",
           "reaches_host", "require_script", "run_script", "static_problems", "verify",
           "verification_for"]

LOCK_ORDER = ("AccessShareLock", "RowShareLock", "RowExclusiveLock",
              "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock",
              "ExclusiveLock", "AccessExclusiveLock")
_DUPLICATE = {"42P07", "42710", "42701", "42P06", "42723"}


@dataclass
class Hazard:
    """What one statement of a script does besides its job."""

    script: str
    number: int
    line: int
    statement: str
    transactional: bool = True
    why_not: str | None = None
    locks: list[tuple[str, str]] = field(default_factory=list)
    destroys: str | None = None
    sequences: bool = False
    beyond_database: str | None = None

    @property
    def strongest(self) -> tuple[str, str] | None:
        if not self.locks:
            return None
        return max(self.locks, key=lambda rl: LOCK_ORDER.index(rl[1])
                   if rl[1] in LOCK_ORDER else -1)

    def as_dict(self) -> dict[str, Any]:
        strongest = self.strongest
        return {"script": self.script, "statement_number": self.number, "line": self.line,
                "statement": self.statement, "transactional": self.transactional,
                "why_not_transactional": self.why_not,
                "locks": [list(x) for x in self.locks],
                "strongest_lock": list(strongest) if strongest else None,
                "destroys_data": self.destroys, "sequences_not_rewound": self.sequences,
                "beyond_database": self.beyond_database}


@dataclass
class Verification:
    verified: bool
    status: str
    differences: list[str] = field(default_factory=list)
    migration_differences: list[str] = field(default_factory=list)
    new_path_prepares: bool | None = None
    resumable: bool | None = None
    migration_was_applied: bool | None = None
    hazards: list[Hazard] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, "status": self.status,
                "differences": self.differences,
                "migration_differences": self.migration_differences,
                "new_path_prepares": self.new_path_prepares, "resumable": self.resumable,
                "migration_was_applied": self.migration_was_applied,
                "hazards": [h.as_dict() for h in self.hazards], "error": self.error}


def static_problems(flag: Flag) -> list[str]:
    """`rollout check`: a missing or empty script, or one dropping what the migration does
    not create."""
    rb = flag.rollback
    if rb.none_reason:
        return []
    if rb.script is None:
        return [f"{flag.file}: rollback.script: missing (or say rollback.none: <reason>)"]
    if not split(rb.script):
        return [f"{flag.file}: rollback.script: {rb.script_path} has no statements"]
    if rb.migration is None:
        return []
    created = _names(rb.migration, r"CREATE\s+(?:UNIQUE\s+)?(?:INDEX|TABLE|VIEW|SEQUENCE|"
                     r"FUNCTION|TRIGGER|TYPE|MATERIALIZED\s+VIEW)\s+(?:CONCURRENTLY\s+)?"
                     r"(?:IF\s+NOT\s+EXISTS\s+)?([\w.\"]+)|ADD\s+(?:COLUMN\s+)?"
                     r"(?:IF\s+NOT\s+EXISTS\s+)?(?:CONSTRAINT\s+)?([\w\"]+)")
    dropped = _names(rb.script, r"DROP\s+(?:INDEX|TABLE|VIEW|SEQUENCE|FUNCTION|TRIGGER|TYPE|"
                     r"MATERIALIZED\s+VIEW|COLUMN|CONSTRAINT)\s+(?:CONCURRENTLY\s+)?"
                     r"(?:IF\s+EXISTS\s+)?([\w.\"]+)")
    unknown = sorted(dropped - created)
    return [f"{flag.file}: rollback.script: drops {name}, which "
            f"{rb.migration_path} does not create" for name in unknown]


def _names(script: str, pattern: str) -> set[str]:
    out = set()
    for m in re.finditer(pattern, script, re.I):
        for g in m.groups():
            if g:
                out.add(g.strip('"').split(".")[-1].lower())
    return out


# -- verification -----------------------------------------------------------------------------


def verify(flag: Flag, target_dsn: str, progress: Callable[[str], None] | None = None, *,
           scratch_root: Path | None = None) -> Verification:
    """Prove the rollback on a scratch copy of the target's schema, on a local throwaway
    server (``scratch_root``: where it lives, default the system temp dir)."""
    rb = flag.rollback
    say = progress or (lambda _m: None)
    if rb.none_reason:
        return Verification(True, f"no rollback needed: {rb.none_reason}")
    if rb.script is None:
        return Verification(False, "no rollback script")
    static = hazards_of(rb.migration or "", "migration") + hazards_of(rb.script, "rollback")
    host = [h for h in static if _refused(h)]
    if host:
        why = "; ".join(f"{h.script} statement {h.number} (line {h.line}): {h.beyond_database}"
                        for h in host)
        return Verification(False, f"not verified: not run, even on a scratch server: {why}",
                            hazards=static, error=why)
    try:
        with scratch_database(target_dsn, say, root=scratch_root) as scratch:
            result = _verify(flag, scratch, say)
    except ScratchUnavailable as exc:
        return Verification(False, f"not verified: {exc}", hazards=static, error=str(exc))
    result.hazards = _complete(result.hazards, static)
    return result


def hazards_of(script: str, name: str) -> list[Hazard]:
    """What each statement of ``script`` is, read without running it (locks are measured
    only when it runs)."""
    return [_hazard(stmt, name) for stmt in split(script)]


def _hazard(stmt: Statement, name: str) -> Hazard:
    hazard = Hazard(name, stmt.number, stmt.line, stmt.summary)
    hazard.why_not = non_transactional(stmt)
    hazard.transactional = hazard.why_not is None
    hazard.destroys = destroys_data(stmt)
    hazard.sequences = uses_sequences(stmt)
    hazard.beyond_database = reaches_host(stmt) or acts_beyond_database(stmt)
    return hazard


_HOST = "reaches the server's host: "


def reaches_host(stmt: Statement) -> str | None:
    """Why ``stmt`` acts on the server's host (a program, a file, a directory), else None.
    Such a statement is not run even on the scratch server: that server is on this host."""
    try:
        parsed = pglast.parse_sql(stmt.sql)
    except pglast.parser.ParseError:
        return None  # it fails on the scratch server with PostgreSQL's own message
    for raw in parsed:
        node = raw.stmt
        if isinstance(node, pglast.ast.CopyStmt) and node.is_program:
            return _HOST + "COPY ... PROGRAM runs a shell command"
        if isinstance(node, pglast.ast.CopyStmt) and node.filename:
            return _HOST + "COPY with a file name reads or writes a server file"
        if isinstance(node, pglast.ast.CreateTableSpaceStmt):
            return _HOST + "CREATE TABLESPACE makes a directory"
    return None


def _refused(hazard: Hazard) -> bool:
    """A statement verification will not run anywhere."""
    return (hazard.beyond_database or "").startswith(_HOST)


def _complete(measured: list[Hazard], static: list[Hazard]) -> list[Hazard]:
    """Every statement of both scripts, with what was measured where it ran (its first run)."""
    ran: dict[tuple[str, int], Hazard] = {}
    for h in measured:
        ran.setdefault((h.script, h.number), h)
    return [ran.get((h.script, h.number), h) for h in static]


def _verify(flag: Flag, conn: psycopg.Connection[Any], say: Callable[[str], None]
            ) -> Verification:
    rb = flag.rollback
    assert rb.script is not None
    migration = rb.migration or ""
    f0 = fingerprint(conn)
    hazards: list[Hazard] = []
    applied = bool(migration) and _already_applied(conn, migration, f0)
    say("verify: target schema copied" + (" (migration already applied)" if applied else ""))
    if applied:
        # the target runs the new schema: roll back first, then prove the way forward
        err = run_script(conn, rb.script, "rollback", hazards)
        if err:
            return Verification(False, f"rollback fails: {err}", hazards=hazards, error=err,
                                migration_was_applied=True)
        base = fingerprint(conn)
        err = run_script(conn, migration, "migration", hazards)
        if err:
            return Verification(False, f"migration fails after the rollback: {err}",
                                hazards=hazards, error=err, migration_was_applied=True)
        forward = differences(f0, fingerprint(conn))
    else:
        base = f0
        forward = []
        if migration:
            err = run_script(conn, migration, "migration", hazards)
            if err:
                return Verification(False, f"migration fails: {err}", hazards=hazards,
                                    error=err, migration_was_applied=False)
    prepares = _prepares(conn, flag)
    if not applied:
        err = run_script(conn, rb.script, "rollback", hazards)
        if err:
            return Verification(False, f"rollback fails: {err}", hazards=hazards, error=err,
                                new_path_prepares=prepares, migration_was_applied=False)
        back = differences(base, fingerprint(conn))
    else:
        err = run_script(conn, rb.script, "rollback", [])
        back = differences(base, fingerprint(conn)) if not err else [f"second rollback: {err}"]
    say("verify: rollback applied, schema compared")
    resumable = not migration or run_script(conn, migration, "migration", []) is None
    verified = not back and not forward and resumable
    status = ("verified: the rollback restores the schema exactly"
              + ("; the migration re-applies cleanly" if migration else "")
              if verified else "not verified: " + "; ".join(
                  back + [f"(migration) {d}" for d in forward]
                  + ([] if resumable else ["the migration does not re-apply after the rollback"])
              )[:2000])
    return Verification(verified, status, back, forward, prepares, resumable, applied,
                        hazards)


def _already_applied(conn: psycopg.Connection[Any], migration: str, f0: Fingerprint) -> bool:
    """Does the copied schema already carry the migration? (It fails as a duplicate or
    changes nothing.) Tried inside a transaction that is rolled back."""
    statements = split(migration)
    if any(non_transactional(s) for s in statements):
        # cannot try it in a transaction: judge by the objects it creates
        return _creates_existing(conn, migration)
    try:
        with conn.transaction(force_rollback=True):
            for s in statements:
                _run(conn, s)
            changed = fingerprint(conn) != f0
    except psycopg.Error as exc:
        return (exc.sqlstate or "") in _DUPLICATE
    return not changed


def _creates_existing(conn: psycopg.Connection[Any], migration: str) -> bool:
    names = _names(migration, r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?"
                   r"(?:IF\s+NOT\s+EXISTS\s+)?([\w.\"]+)")
    if not names:
        return False
    row = conn.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)",
                       [list(names)]).fetchone()
    return bool(row and row[0])


def _prepares(conn: psycopg.Connection[Any], flag: Flag) -> bool:
    try:
        describe(conn, flag.new.sql)
    except psycopg.Error:
        return False
    return True


def run_script(conn: psycopg.Connection[Any], script: str, name: str,
               hazards: list[Hazard]) -> str | None:
    """Apply ``script`` statement by statement (autocommit), measuring each transactional
    statement's locks in a rolled-back try first. The first error, with its position."""
    for stmt in split(script):
        hazard = _hazard(stmt, name)
        hazards.append(hazard)
        if _refused(hazard):  # never sent, whatever the caller checked
            return f"statement {stmt.number} (line {stmt.line}): {hazard.beyond_database}"
        try:
            if hazard.transactional:
                with conn.transaction(force_rollback=True):
                    existing = _relations(conn)
                    _run(conn, stmt)
                    hazard.locks = _locks(conn, existing)
            _run(conn, stmt)
        except psycopg.Error as exc:
            return f"statement {stmt.number} (line {stmt.line}): {_first(exc)}"
    return None


def _run(conn: psycopg.Connection[Any], stmt: Statement) -> None:
    """One statement of a script; a ``COPY … FROM stdin`` gets its data block (as psql)."""
    if stmt.data is None:
        conn.execute(stmt.sql.encode())
        return
    with conn.cursor() as cur, cur.copy(stmt.sql.encode()) as copy:
        copy.write(stmt.data.encode())


def _relations(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """OID → name of the user relations that exist now (names survive a DROP)."""
    return {int(oid): str(name) for oid, name in conn.execute(
        "SELECT c.oid, c.oid::regclass::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")}


def _locks(conn: psycopg.Connection[Any], existing: dict[int, str]
           ) -> list[tuple[str, str]]:
    """The strongest lock the statement took on each relation that existed before it
    (what concurrent traffic would queue behind)."""
    rows = conn.execute(
        "SELECT l.relation::oid, l.mode FROM pg_locks l"
        " WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted"
        ).fetchall()
    strongest: dict[str, str] = {}
    for oid, mode in rows:
        rel = existing.get(int(oid))
        if rel is None:
            continue  # created by the statement itself, or a system catalog
        if rel not in strongest or LOCK_ORDER.index(mode) > LOCK_ORDER.index(strongest[rel]):
            strongest[rel] = mode
    return sorted(strongest.items())


def script_hash(flag: Flag) -> str:
    rb = flag.rollback
    h = hashlib.sha256()
    for part in (rb.migration or "", rb.script or "", flag.new.sql):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_script(flag: Flag) -> str:
    if flag.rollback.script is None:
        raise InputError(f"flag '{flag.name}' has no rollback script"
                         + (f" ({flag.rollback.none_reason})" if flag.rollback.none_reason
                            else ""))
    return flag.rollback.script


def schema_hash(conn: psycopg.Connection[Any]) -> str:
    """A short hash of the target's schema fingerprint: verifications are reused while it
    and the scripts stay the same."""
    h = hashlib.sha256()
    for key, definition in sorted(fingerprint(conn).items()):
        h.update(f"{key[0]}\x00{key[1]}\x00{definition}\x01".encode())
    return h.hexdigest()[:16]


def verification_for(flag: Flag, target_dsn: str, store_conn: psycopg.Connection[Any],
                     progress: Callable[[str], None] | None = None, *, fresh: bool = False,
                     scratch_root: Path | None = None) -> dict[str, Any]:
    """The flag's rollback verification: reused from the store when the scripts, the new
    path and the target's schema are unchanged, else run now and stored."""
    if flag.rollback.none_reason or flag.rollback.script is None:
        return verify(flag, target_dsn, progress, scratch_root=scratch_root).as_dict()
    with psycopg.connect(target_dsn, autocommit=True) as target:
        current = schema_hash(target)
    scripts = script_hash(flag)
    if not fresh:
        stored = latest_verification(store_conn, flag.name, scripts, current)
        if stored is not None:
            body, at = stored
            return {**body, "verified_at": at.isoformat(timespec="seconds"), "reused": True}
    result = verify(flag, target_dsn, progress, scratch_root=scratch_root)
    body = result.as_dict()
    if result.error is None or result.hazards:
        save_verification(store_conn, flag.name, scripts, current, result.verified, body)
    return {**body, "verified_at": _now(), "reused": False}


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


# -- applying ----------------------------------------------------------------------------------


@dataclass
class Applied:
    ok: bool
    statements: int
    applied: int
    transactional: bool
    error: str | None = None
    position: str | None = None


def apply(conn: psycopg.Connection[Any], script: str,
          progress: Callable[[int, int, Statement], None] | None = None) -> Applied:
    """Run a rollback script on the target: in one transaction when every statement allows
    it (all or nothing), else statement by statement. Stops at the first error; in one
    transaction nothing stays applied, statement by statement what ran before stays."""
    stmts = split(script)
    one_tx = all(non_transactional(s) is None for s in stmts)
    done = 0
    current: Statement | None = None
    try:
        if one_tx:
            with conn.transaction():
                for current in stmts:
                    _run(conn, current)
                    if progress:
                        progress(current.number, len(stmts), current)
            done = len(stmts)
        else:
            for current in stmts:
                _run(conn, current)
                done += 1
                if progress:
                    progress(current.number, len(stmts), current)
    except psycopg.Error as exc:
        assert current is not None
        where = f"statement {current.number} (line {current.line}): {current.summary}"
        return Applied(False, len(stmts), 0 if one_tx else done, one_tx, _first(exc), where)
    return Applied(True, len(stmts), done, one_tx)
