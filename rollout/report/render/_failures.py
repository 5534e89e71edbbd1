"""Failures per path by class and SQLSTATE."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...judge.model import EnvironmentEvent, Failures, PathFailures
from ...judge.summaries import failure_class
from ._format import as_int, counts_text, number

# Condition names for the SQLSTATEs a shadow run is most likely to meet.
SQLSTATE_NAMES = {
    "08000": "connection_exception",
    "08001": "sqlclient_unable_to_establish_sqlconnection",
    "08003": "connection_does_not_exist",
    "08004": "sqlserver_rejected_establishment_of_sqlconnection",
    "08006": "connection_failure",
    "22003": "numeric_value_out_of_range",
    "22012": "division_by_zero",
    "22P02": "invalid_text_representation",
    "23502": "not_null_violation",
    "23503": "foreign_key_violation",
    "23505": "unique_violation",
    "25000": "invalid_transaction_state",
    "25006": "read_only_sql_transaction",
    "25P02": "in_failed_sql_transaction",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "42501": "insufficient_privilege",
    "42703": "undefined_column",
    "42883": "undefined_function",
    "42P01": "undefined_table",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    # failures without a SQLSTATE are counted under this key
    "client": "client-side error, no SQLSTATE",
}

# Failure classes as rollout.judge.verdict.failure_class names them, in reading order.
FAILURE_CLASSES = (
    "serialization_failure",
    "deadlock",
    "lock_timeout",
    "statement_timeout",
    "constraint_violation",
    "connection",
    "client",
    "other",
)


def _total(*values: Any) -> int | float:
    total = sum(number(v) or 0 for v in values)
    return int(total) if all(v is None or as_int(v) is not None for v in values) else total


def _sqlstate_class(code: str) -> str:
    if code == "client":
        return "client"
    return failure_class(code) or "other"


def _class_counts(path: PathFailures) -> dict[str, Any]:
    """A path's failures by class; schema 1 bodies only have SQLSTATEs, so classify those."""
    if "by_class" not in path.absent:
        return dict(path.by_class)
    out: dict[str, Any] = {}
    for code, n in path.by_sqlstate.items():
        cls = _sqlstate_class(code)
        out[cls] = out.get(cls, 0) + n
    return out


def ordered_classes(names: Iterable[str]) -> list[str]:
    present = set(names)
    known = [c for c in FAILURE_CLASSES if c in present]
    return known + sorted(present - set(FAILURE_CLASSES))


def failures_view(failures: Failures | None) -> dict[str, Any] | None:
    if failures is None:
        return None
    legacy, new = failures.legacy or PathFailures(), failures.new or PathFailures()
    by_legacy, by_new = legacy.by_sqlstate, new.by_sqlstate
    codes = sorted({*by_legacy, *by_new})
    class_legacy, class_new = _class_counts(legacy), _class_counts(new)
    reported = "new_only_by_class" not in failures.absent
    only = failures.new_only_by_class
    classes = []
    code_classes = [_sqlstate_class(code) for code in codes]  # so no SQLSTATE goes unshown
    for cls in ordered_classes([*class_legacy, *class_new, *only, *code_classes]):
        classes.append(
            {
                "name": cls,
                "legacy": class_legacy.get(cls, 0),
                "new": class_new.get(cls, 0),
                "new_only": only.get(cls, 0) if reported else None,
                "sqlstates": [
                    {
                        "code": code,
                        "name": SQLSTATE_NAMES.get(code, ""),
                        "legacy": by_legacy.get(code, 0),
                        "new": by_new.get(code, 0),
                    }
                    for code in codes
                    if _sqlstate_class(code) == cls
                ],
            }
        )
    return {
        "legacy": legacy.count,
        "new": new.count,
        "new_only": failures.new_only,
        "new_only_text": counts_text(only),
        "legacy_text": counts_text(class_legacy),
        "new_text": counts_text(class_new),
        "classes": classes,
        "rows": [
            {
                "code": code,
                "name": SQLSTATE_NAMES.get(code, ""),
                "legacy": by_legacy.get(code, 0),
                "new": by_new.get(code, 0),
                "total": _total(by_legacy.get(code), by_new.get(code)),
            }
            for code in codes
        ],
    }


def environment_events_view(events: list[EnvironmentEvent] | None) -> dict[str, Any] | None:
    """Environment failures (connection exceptions, shutdowns, too many connections) by
    minute, path and SQLSTATE (and source, offline or online, when both were judged), and
    how many of them counted against their path's gate."""
    if events is None:
        return None
    rows = []
    for e in events:
        code = e.sqlstate or ""
        count, counted = e.count or 0, e.counted or 0
        rows.append({"at": _or_dash(e.at), "path": _or_dash(e.path), "source": e.source or "",
                     "code": code, "name": SQLSTATE_NAMES.get(code, ""), "count": count,
                     "counted": counted, "excused": max(count - counted, 0)})
    return {"rows": rows, "count": sum(r["count"] for r in rows),
            "counted": sum(r["counted"] for r in rows),
            "excused": sum(r["excused"] for r in rows),
            # judged per source when both are present: say which one each event belongs to
            "by_source": any(r["source"] for r in rows)}


def _or_dash(text: str | None) -> str:
    return "—" if text is None else text
