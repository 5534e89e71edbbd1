"""Runtime flag state: current stage, kill switch, version; every change audited and NOTIFYed."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import ConcurrentChange, InputError
from .model import Flag

CHANNEL = "rollout_flags"
"""LISTEN/NOTIFY channel; the payload is the new state as JSON."""



@dataclass(frozen=True)
class FlagState:
    """A flag's live state. ``version`` 0 means not started: runners serve legacy."""

    flag: str
    stage: str | None
    killed: bool
    version: int
    updated_at: datetime | None = None
    updated_by: str | None = None

    @property
    def started(self) -> bool:
        return self.version > 0

    def payload(self) -> str:
        return json.dumps({"flag": self.flag, "stage": self.stage, "killed": self.killed,
                           "version": self.version})

    @classmethod
    def from_payload(cls, text: str) -> FlagState:
        data = json.loads(text)
        return cls(str(data["flag"]), data["stage"], bool(data["killed"]), int(data["version"]))


@dataclass(frozen=True)
class Event:
    flag: str
    at: datetime
    actor: str
    action: str
    from_stage: str | None
    to_stage: str | None
    killed: bool
    reason: str
    report_id: uuid.UUID | None
    forced: bool
    version: int


def read_state(conn: psycopg.Connection[Any], flag: str) -> FlagState:
    row = conn.execute(
        "SELECT flag, stage, killed, version, updated_at, updated_by FROM rollout.flag_state"
        " WHERE flag = %s", [flag]).fetchone()
    return FlagState(*row) if row else FlagState(flag, None, False, 0)


def read_all(conn: psycopg.Connection[Any]) -> dict[str, FlagState]:
    rows = conn.execute("SELECT flag, stage, killed, version, updated_at, updated_by"
                        " FROM rollout.flag_state").fetchall()
    return {r[0]: FlagState(*r) for r in rows}


def events(conn: psycopg.Connection[Any], flag: str, limit: int = 10) -> list[Event]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT flag, at, actor, action, from_stage, to_stage, killed, reason, report_id,"
            " forced, version FROM rollout.flag_events WHERE flag = %s ORDER BY id DESC LIMIT %s",
            [flag, limit])
        return [Event(**r) for r in cur.fetchall()]


def change(
    conn: psycopg.Connection[Any],
    flag: Flag,
    action: str,
    *,
    actor: str,
    reason: str,
    stage: str | None = None,
    killed: bool | None = None,
    expected_version: int | None = None,
    report_id: uuid.UUID | None = None,
    forced: bool = False,
) -> FlagState:
    """Apply one audited change under a row lock; NOTIFY runners when it commits.

    With ``expected_version`` the change is a compare-and-set: if anyone changed the flag
    since the caller read it, ConcurrentChange is raised and nothing is written.
    """
    if not reason or not reason.strip():
        raise InputError(f"a reason is required to {action} flag '{flag.name}' (--reason)")
    if stage is not None and flag.stage(stage) is None:
        raise flag.unknown_stage(stage)
    with conn.transaction():
        # Serialise changes of one flag, including its very first one (no row to lock yet).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollout.flag_state'), "
                     "hashtext(%s))", [flag.name])
        before = read_state(conn, flag.name)
        if expected_version is not None and before.version != expected_version:
            raise ConcurrentChange(
                f"flag '{flag.name}' changed meanwhile (now version {before.version}, stage "
                f"{before.stage or 'not started'}, by {before.updated_by}); nothing written, "
                "look again and retry")
        after = FlagState(
            flag.name,
            stage if stage is not None else (before.stage or flag.first_stage),
            killed if killed is not None else before.killed,
            before.version + 1,
        )
        conn.execute(
            "INSERT INTO rollout.flag_state AS s (flag, stage, killed, version, updated_by)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (flag) DO UPDATE SET stage = EXCLUDED.stage,"
            " killed = EXCLUDED.killed, version = EXCLUDED.version,"
            " updated_by = EXCLUDED.updated_by, updated_at = clock_timestamp()",
            [after.flag, after.stage, after.killed, after.version, actor])
        conn.execute(
            "INSERT INTO rollout.flag_events (flag, actor, action, from_stage, to_stage, killed,"
            " reason, report_id, forced, version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [flag.name, actor, action, before.stage, after.stage, after.killed, reason.strip(),
             report_id, forced, after.version])
        conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, after.payload()])
    return read_state(conn, flag.name)
