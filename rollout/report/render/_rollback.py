"""The rollback plan: script, migration, verification and each statement's hazards."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...judge.model import RollbackPlan
from ._format import as_int, as_list, as_map, as_str, clip
from ._locks import LOCK_STRENGTH, lock_strength
from ._sql import highlight_sql

HAZARD_MAX_STATEMENT = 300

# What a verification found besides the schema fingerprint: key, text when true, text when
# false, and whether true is good (a check) or just a fact.
ROLLBACK_CHECKS = (
    (
        "new_path_prepares",
        "the new path's query prepares on the migrated schema",
        "the new path's query does not prepare on the migrated schema",
        True,
    ),
    (
        "resumable",
        "the migration applies again after the rollback, so the rollout can resume",
        "the migration does not apply again after the rollback",
        True,
    ),
    (
        "migration_was_applied",
        "the target already runs the migration: the rollback was proven first",
        "the target does not run the migration yet: it was applied in the scratch copy first",
        False,
    ),
)


def rollback_view(plan: RollbackPlan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    script, migration = plan.script, plan.migration
    none_reason = plan.none_reason or ""
    # the verification's own record, as the verification wrote it
    details = as_map(plan.verification_details)
    verified = plan.verified is True
    # "none needed" only when the flag says so; a missing script is "not verified"
    state = "none needed" if none_reason else "verified" if verified else "not verified"
    hazards_raw = plan.hazards if "hazards" not in plan.absent else details.get("hazards")
    hazards = [_hazard(as_map(h)) for h in as_list(hazards_raw)]
    summary = _hazard_summary(hazards)
    beyond = [h for h in hazards if h["beyond"]]
    if none_reason:
        kpi_label = "rollback: no schema change"
    elif script is None:
        kpi_label = "rollback: no script"
    else:
        kpi_label = "rollback script"
        worst = next((h["worst"] for h in summary if h["script"] == "rollback"), None)
        if worst:
            kpi_label += f"; takes {worst['strongest'][1]}"
    checks = []
    for key, yes, no, judged in ROLLBACK_CHECKS:
        value = details.get(key)
        if isinstance(value, bool):
            checks.append({"text": yes if value else no, "ok": value if judged else None})
    return {
        "steps": list(plan.steps),
        "flag_command": plan.flag_command or "",
        "script_path": plan.script_path or "",
        "script": script,
        "script_html": highlight_sql(script) if script is not None else [],
        "migration_path": plan.migration_path or "",
        "migration": migration,
        "migration_html": highlight_sql(migration) if migration is not None else [],
        "none_reason": none_reason,
        "verified": verified,
        "state": state,
        "verification": plan.verification or "",
        # the status without the verdict word the pill already shows
        "verification_text": re.sub(
            r"^\s*(not verified|verified|no rollback needed)\s*:\s*",
            "",
            plan.verification or "",
            flags=re.I,
        ),
        "has_details": bool(details),
        "differences": [as_str(d) for d in as_list(details.get("differences"))],
        "migration_differences": [as_str(d) for d in as_list(details.get("migration_differences"))],
        "checks": checks,
        "error": as_str(details.get("error")),
        "verified_at": as_str(details.get("verified_at")),
        "reused": details.get("reused") is True,
        "hazards": hazards,
        "hazards_beyond": beyond,
        "hazards_reported": hazards_raw is not None,
        "hazard_summary": summary,
        "kpi_label": kpi_label,
    }


def _lock_pair(value: Any) -> tuple[str, str] | None:
    items = as_list(value)
    return (as_str(items[0]), as_str(items[1])) if len(items) >= 2 else None


def _hazard(raw: Mapping[str, Any]) -> dict[str, Any]:
    strongest = _lock_pair(raw.get("strongest_lock"))
    locks = _holds(raw.get("locks"))
    if strongest is None and locks:
        strongest = max(locks, key=lambda rl: lock_strength(rl[1]))
    why_not = as_str(raw.get("why_not_transactional"))
    transactional = raw.get("transactional")
    if transactional is False and not why_not:
        why_not = "cannot run in a transaction"
    destroys = as_str(raw.get("destroys_data"))
    # roles, database settings, server files or programs: what a scratch copy cannot contain
    beyond = as_str(raw.get("beyond_database"))
    sequences = raw.get("sequences_not_rewound") is True
    strength = lock_strength(strongest[1]) if strongest else 0
    others = [lock for lock in locks if lock != strongest]
    return {
        "script": as_str(raw.get("script"), "—"),
        "number": as_int(raw.get("statement_number")),
        "line": as_int(raw.get("line")),
        "statement": clip(as_str(raw.get("statement")), HAZARD_MAX_STATEMENT),
        "strongest": strongest,
        "strength": strength,
        # other locks that block writes too; the many AccessShareLocks are only counted
        "other_locks": ", ".join(
            f"{mode} on {rel}"
            for rel, mode in others
            if lock_strength(mode) >= LOCK_STRENGTH["ShareUpdateExclusiveLock"]
        ),
        "weaker_locks": sum(
            lock_strength(mode) < LOCK_STRENGTH["ShareUpdateExclusiveLock"] for _, mode in others
        ),
        "why_not": why_not,
        "destroys": destroys,
        "beyond": beyond,
        "sequences": sequences,
        # blocks every read and write of a table, destroys data, cannot be rolled back or
        # acts outside the database
        "severe": strength >= LOCK_STRENGTH["ExclusiveLock"] or bool(destroys) or bool(why_not)
        or bool(beyond),
    }


def _hazard_summary(hazards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per script (rollback first): its strongest lock and where, and how many statements
    are not transactional, destroy data, reach beyond the database (the first such reason)
    or leave sequences advanced."""
    out = []
    scripts = sorted({h["script"] for h in hazards}, key=lambda s: (s != "rollback", s))
    for script in scripts:
        mine = [h for h in hazards if h["script"] == script]
        locking = [h for h in mine if h["strongest"]]
        worst = max(locking, key=lambda h: h["strength"]) if locking else None
        out.append(
            {
                "script": script,
                "statements": len(mine),
                "worst": worst,
                "not_transactional": sum(bool(h["why_not"]) for h in mine),
                "destroys": sum(bool(h["destroys"]) for h in mine),
                "beyond": sum(bool(h["beyond"]) for h in mine),
                "beyond_first": next((h["beyond"] for h in mine if h["beyond"]), ""),
                "sequences": sum(h["sequences"] for h in mine),
            }
        )
    return out


def _holds(raw: Any) -> list[tuple[str, str]]:
    """A hazard's [[relation, mode], ...] (the verification's own record) as pairs;
    malformed items are skipped."""
    out = []
    for item in as_list(raw):
        pair = as_list(item)
        if len(pair) >= 2:
            out.append((as_str(pair[0]), as_str(pair[1])))
    return out
