"""Lock waits, locks held and the locks one path takes that the other does not."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from ...judge.model import Locks, PathLocks
from ._format import fmt_ms, fmt_num, number

# Per-path lock-wait figures: key, label, unit.
LOCK_METRICS = (
    ("measured", "executions measured", "count"),
    ("waited", "executions that waited for a lock", "count"),
    ("mean_wait_ms", "mean wait per execution", "ms"),
    ("p95_wait_ms", "p95 wait", "ms"),
    ("max_wait_ms", "longest wait", "ms"),
    ("lock_timeouts", "lock timeouts (55P03)", "count"),
)

# Table-level lock modes, weakest first (PostgreSQL's conflict table order).
LOCK_STRENGTH = {
    "AccessShareLock": 1,
    "RowShareLock": 2,
    "RowExclusiveLock": 3,
    "ShareUpdateExclusiveLock": 4,
    "ShareLock": 5,
    "ShareRowExclusiveLock": 6,
    "ExclusiveLock": 7,
    "AccessExclusiveLock": 8,
}

MAX_SENTENCE_NAMES = 6


def _lock_value(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    return fmt_ms(value) if unit == "ms" else fmt_num(value)


def parse_holds(holds: list[list[str]]) -> list[tuple[str, str]]:
    """[[relation, mode], ...] as pairs; malformed items are skipped."""
    return [(pair[0], pair[1]) for pair in holds if len(pair) >= 2]


def lock_strength(mode: str) -> int:
    return LOCK_STRENGTH.get(mode, 0)


def _modes(holds: Iterable[tuple[str, str]], relation: str) -> list[str]:
    return sorted({m for r, m in holds if r == relation}, key=lambda m: (lock_strength(m), m))


def _sentence(*parts: str | list[str]) -> list[dict[str, Any]]:
    """Segments of a sentence: plain strings are prose, lists are names shown as code
    (a long list is cut after a few names; the full lists are in the locks-held table)."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            out.append({"text": part, "code": False})
            continue
        names = part if len(part) <= MAX_SENTENCE_NAMES else part[: MAX_SENTENCE_NAMES - 1]
        for i, name in enumerate(names):
            if i:
                last = i == len(names) - 1 and len(names) == len(part)
                out.append({"text": " and " if last else ", ", "code": False})
            out.append({"text": name, "code": True})
        if len(names) < len(part):
            out.append({"text": f" and {len(part) - len(names)} more", "code": False})
    return out


def _lock_differences(locks: Locks, legacy: PathLocks, new: PathLocks) -> list[dict[str, Any]]:
    """Sentences for the locks one path takes and the other does not, grouped by relation
    (relations in the same situation share a sentence); stronger locks on the new path first."""
    only_new = parse_holds(locks.only_new_holds)
    only_legacy = parse_holds(locks.only_legacy_holds)
    full = _has(legacy, "held") and _has(new, "held")
    held_legacy = parse_holds(legacy.held) if full else only_legacy
    held_new = parse_holds(new.held) if full else only_new
    groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for relation in dict.fromkeys(r for r, _ in (*only_new, *only_legacy)):
        extra_new = _modes(only_new, relation)
        extra_legacy = _modes(only_legacy, relation)
        legacy_modes = _modes(held_legacy, relation)
        new_modes = _modes(held_new, relation)
        if extra_new:
            case = "new_also" if legacy_modes else "new_only"
            key = (case, tuple(extra_new), tuple(legacy_modes))
        else:
            case = "legacy_also" if new_modes else "legacy_only"
            key = (case, tuple(extra_legacy), tuple(new_modes))
        groups.setdefault(key, []).append(relation)
    out: list[dict[str, Any]] = []
    for (case, modes, other), relations in groups.items():
        rels, mode_list, other_list = sorted(relations), list(modes), list(other)
        many = len(rels) > 1
        if case == "new_also":
            parts = _sentence(
                "The new path takes ",
                mode_list,
                " on ",
                rels,
                " where legacy took ",
                other_list,
                ".",
            )
            stronger = max(map(lock_strength, modes)) > max(map(lock_strength, other))
        elif case == "new_only":
            parts = _sentence(
                "The new path takes ", mode_list, " on ", rels, ", which legacy did not lock."
            )
            stronger = True
        elif case == "legacy_also":
            parts = _sentence(
                "Legacy took ",
                mode_list,
                " on ",
                rels,
                " where the new path takes only ",
                other_list,
                ".",
            )
            stronger = False
        else:
            parts = _sentence(
                "Legacy took ",
                mode_list,
                " on ",
                rels,
                "; the new path does not " + ("lock them." if many else "lock it."),
            )
            stronger = False
        strength = max(map(lock_strength, modes))
        out.append({"parts": parts, "stronger": stronger, "strength": strength})
    out.sort(key=lambda d: (not d["stronger"], -int(d["strength"])))
    return out


def _has(path: PathLocks, key: str) -> bool:
    """Whether the body reported ``key`` for the path (schema 1 reported lock timeouts only)."""
    return key not in path.absent


def locks_view(locks: Locks | None) -> dict[str, Any] | None:
    if locks is None:
        return None
    # a path the body did not report at all: every figure absent
    nothing = PathLocks(absent=frozenset(f.name for f in fields(PathLocks)))
    legacy, new = locks.legacy or nothing, locks.new or nothing
    rows = []
    for key, label, unit in LOCK_METRICS:
        if _has(legacy, key) or _has(new, key):
            lv, nv = number(getattr(legacy, key)), number(getattr(new, key))
            worse = key != "measured" and lv is not None and nv is not None and nv > lv
            rows.append(
                {
                    "metric": label,
                    "legacy": _lock_value(getattr(legacy, key), unit),
                    "new": _lock_value(getattr(new, key), unit),
                    "worse": worse,
                }
            )
    waited_legacy, waited_new = legacy.waited_on, new.waited_on
    waited = [
        {"lock": k, "legacy": waited_legacy.get(k, 0), "new": waited_new.get(k, 0)}
        for k in dict.fromkeys([*waited_legacy, *waited_new])
    ]
    waited.sort(key=lambda w: (-(number(w["legacy"]) or 0) - (number(w["new"]) or 0), w["lock"]))
    held_legacy, held_new = parse_holds(legacy.held), parse_holds(new.held)
    relations = sorted({r for r, _ in (*held_legacy, *held_new)})
    held = []
    for rel in relations:
        modes_legacy, modes_new = _modes(held_legacy, rel), _modes(held_new, rel)
        held.append(
            {
                "relation": rel,
                "legacy": ", ".join(modes_legacy),
                "new": ", ".join(modes_new),
                "differs": modes_legacy != modes_new,
            }
        )
    return {
        "rows": rows,
        "waited_on": waited,
        "differences": _lock_differences(locks, legacy, new),
        "held": held,
        "held_known": _has(legacy, "held") or _has(new, "held"),
        "note": locks.note or "",
    }
