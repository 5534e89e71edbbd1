"""Evidence by source: offline shadow runs and online pairs, judged apart and shown apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._format import as_int, as_list, as_map, as_pair, as_str, number
from ._gates import gate_status

SOURCE_ORDER = ("offline", "online")
SOURCE_LABELS = {"offline": "Offline shadow runs", "online": "Online pairs"}
LATENCY_FROM = {
    "offline": "from offline shadow runs",
    "online": "from online pairs measured on the shadow pool",
}
MAX_SOURCES = 4  # a body has two; a tampered one must not blow up the page or the comment
MAX_LISTED_GATES = 5  # per source in the Markdown line
EVIDENCE_GATES = ("min_samples", "max_mismatch_rate", "latency", "max_new_failures", "lock_wait")


def source_names(raw: Any) -> list[str]:
    """The sources a body judged, offline first; names it does not know follow, sorted
    (at most ``MAX_SOURCES`` in all)."""
    names = [as_str(k) for k in as_map(raw)]
    known = [s for s in SOURCE_ORDER if s in names]
    return (known + sorted(set(names) - set(known)))[:MAX_SOURCES]


def latency_source_view(raw: Any, gates: Any = None) -> dict[str, Any] | None:
    """Which source the latency figures come from (``latency.source``); None for bodies
    that predate it. ``measured`` is False when online decided but no pair was timed like
    for like on the shadow pool: the figures are empty, not a comparison. ``also`` names
    the other sources that decided the latency gate alike (their figures are shown apart)."""
    latency = as_map(raw)
    source = as_str(latency.get("source"))
    if not source:
        return None
    pairs = as_int(latency.get("pairs_measured"))
    decided = _decided_by(gates).get("latency", [])
    return {
        "source": source,
        "text": LATENCY_FROM.get(source, f"from {source} evidence"),
        "pairs_measured": pairs,
        "measured": not (source == "online" and pairs == 0),
        "also": [s for s in decided if s != source],
    }


def sources_view(raw: Any, gates: Any) -> dict[str, Any] | None:
    """The evidence of each source side by side: samples, latency ratio and interval,
    mismatches, new-only failures, and how each source judged each evidence gate (and
    whether it decided the combined gate). None when the body has no ``sources``; ``show``
    says whether the table is worth a reader's attention: more than one source, or any
    online evidence (an offline-only report says everything in its other sections)."""
    if not isinstance(raw, Mapping):
        return None
    names = source_names(raw)
    if not names:
        return None
    decided = {
        gate: by
        for gate, by in _decided_by(gates).items()
        if len(names) > 1 and not set(names) <= set(by)  # "decided" only when it tells apart
    }
    columns = [_source_column(name, as_map(raw.get(name)), decided) for name in names]
    gate_names = [g for g in EVIDENCE_GATES if any(g in c["gates"] for c in columns)]
    gate_names += sorted({g for c in columns for g in c["gates"]} - set(gate_names))
    gate_rows = [
        {"name": g, "cells": [c["gates"].get(g) for c in columns]} for g in gate_names
    ]
    return {
        "show": len(names) > 1 or "online" in names,
        "both": len(names) > 1,
        "columns": columns,
        "gate_rows": gate_rows,
    }


def _decided_by(gates: Any) -> dict[str, list[str]]:
    """Gate name -> the sources that decided it (``details.decided_by``)."""
    out = {}
    for item in as_list(gates):
        gate = as_map(item)
        by = [as_str(s) for s in as_list(as_map(gate.get("details")).get("decided_by"))]
        if by:
            out[as_str(gate.get("name"))] = by
    return out


def _source_column(name: str, src: Mapping[str, Any], decided: Mapping[str, list[str]]
                   ) -> dict[str, Any]:
    latency = as_map(src.get("latency"))
    pairs = as_int(latency.get("pairs_measured"))
    mismatches = as_map(src.get("mismatches"))
    failures = as_map(src.get("failures"))
    noise = as_map(src.get("noise"))
    gates: dict[str, dict[str, Any]] = {}
    for item in as_list(src.get("gates")):
        gate = as_map(item)
        gate_name = as_str(gate.get("name"), "(unnamed gate)")
        gates[gate_name] = {
            "result": gate_status(gate),
            "display": as_str(gate.get("display")),
            "reason": as_str(gate.get("reason")),
            "decided": name in decided.get(gate_name, []),
        }
    failed = [g for g, cell in gates.items() if cell["result"] == "fail"]
    open_ = [g for g, cell in gates.items() if cell["result"] == "inconclusive"]
    return {
        "name": name,
        "label": SOURCE_LABELS.get(name, name),
        "samples": src.get("samples"),
        "latency_measured": not (name == "online" and pairs == 0),
        "pairs_measured": pairs,
        "hl_ratio": number(latency.get("hl_ratio")),
        "hl_ci": as_pair(latency.get("hl_ci")),
        "mismatch_count": mismatches.get("count"),
        "mismatch_compared": mismatches.get("compared"),
        "mismatch_rate": number(mismatches.get("rate")),
        "new_only": failures.get("new_only"),
        "noise_samples": as_int(noise.get("samples")) or 0,
        "noise_compared": noise.get("compared"),
        "noise_rate": number(noise.get("mismatch_rate")),
        "gates": gates,
        "gates_passed": sum(c["result"] == "pass" for c in gates.values()),
        "gates_failed": failed[:MAX_LISTED_GATES],
        "gates_open": open_[: max(0, MAX_LISTED_GATES - len(failed))],
        "latency_decided": name in decided.get("latency", []),
    }
