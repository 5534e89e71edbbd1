"""Evidence by source: offline shadow runs and online pairs, judged apart and shown apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...judge.model import Failures, GateResult, Latency, Mismatches, Noise, SourceEvidence
from ._format import as_pair, number
from ._gates import result_of

SOURCE_ORDER = ("offline", "online")
SOURCE_LABELS = {"offline": "Offline shadow runs", "online": "Online pairs"}
LATENCY_FROM = {
    "offline": "from offline shadow runs",
    "online": "from online pairs measured on the shadow pool",
}
MAX_SOURCES = 4  # a body has two; a tampered one must not blow up the page or the comment
MAX_LISTED_GATES = 5  # per source in the Markdown line
EVIDENCE_GATES = ("min_samples", "max_mismatch_rate", "latency", "max_new_failures", "lock_wait")


def source_names(sources: Mapping[str, SourceEvidence]) -> list[str]:
    """The sources a body judged, offline first; names it does not know follow, sorted
    (at most ``MAX_SOURCES`` in all)."""
    names = list(sources)
    known = [s for s in SOURCE_ORDER if s in names]
    return (known + sorted(set(names) - set(known)))[:MAX_SOURCES]


def latency_source_view(latency: Latency | None, gates: list[GateResult]
                        ) -> dict[str, Any] | None:
    """Which source the latency figures come from (``latency.source``); None for bodies
    that predate it. ``measured`` is False when online decided but no pair was timed like
    for like on the shadow pool: the figures are empty, not a comparison. ``also`` names
    the other sources that decided the latency gate alike (their figures are shown apart)."""
    source = latency.source if latency is not None else None
    if not source or latency is None:
        return None
    pairs = latency.pairs_measured
    decided = _decided_by(gates).get("latency", [])
    return {
        "source": source,
        "text": LATENCY_FROM.get(source, f"from {source} evidence"),
        "pairs_measured": pairs,
        "measured": not (source == "online" and pairs == 0),
        "also": [s for s in decided if s != source],
    }


def sources_view(sources: dict[str, SourceEvidence] | None, gates: list[GateResult]
                 ) -> dict[str, Any] | None:
    """The evidence of each source side by side: samples, latency ratio and interval,
    mismatches, new-only failures, and how each source judged each evidence gate (and
    whether it decided the combined gate). None when the body has no ``sources``; ``show``
    says whether the table is worth a reader's attention: more than one source, or any
    online evidence (an offline-only report says everything in its other sections)."""
    if sources is None:
        return None
    names = source_names(sources)
    if not names:
        return None
    decided = {
        gate: by
        for gate, by in _decided_by(gates).items()
        if len(names) > 1 and not set(names) <= set(by)  # "decided" only when it tells apart
    }
    columns = [_source_column(name, sources[name], decided) for name in names]
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


def _decided_by(gates: list[GateResult]) -> dict[str, list[str]]:
    """Gate name -> the sources that decided it (``details.decided_by``)."""
    return {"" if g.name is None else g.name: g.decided_by for g in gates if g.decided_by}


def _source_column(name: str, src: SourceEvidence, decided: Mapping[str, list[str]]
                   ) -> dict[str, Any]:
    latency = src.latency or Latency()
    pairs = latency.pairs_measured
    mismatches = src.mismatches or Mismatches()
    failures = src.failures or Failures()
    noise = src.noise or Noise()
    gates: dict[str, dict[str, Any]] = {}
    for gate in src.gates:
        gate_name = "(unnamed gate)" if gate.name is None else gate.name
        gates[gate_name] = {
            "result": result_of(gate),
            "display": gate.display or "",
            "reason": gate.reason or "",
            "decided": name in decided.get(gate_name, []),
        }
    failed = [g for g, cell in gates.items() if cell["result"] == "fail"]
    open_ = [g for g, cell in gates.items() if cell["result"] == "inconclusive"]
    return {
        "name": name,
        "label": SOURCE_LABELS.get(name, name),
        "samples": src.samples,
        "latency_measured": not (name == "online" and pairs == 0),
        "pairs_measured": pairs,
        "hl_ratio": number(latency.hl_ratio),
        "hl_ci": as_pair(latency.hl_ci),
        "mismatch_count": mismatches.count,
        "mismatch_compared": mismatches.compared,
        "mismatch_rate": number(mismatches.rate),
        "new_only": failures.new_only,
        "noise_samples": noise.samples or 0,
        "noise_compared": noise.compared,
        "noise_rate": number(noise.mismatch_rate),
        "gates": gates,
        "gates_passed": sum(c["result"] == "pass" for c in gates.values()),
        "gates_failed": failed[:MAX_LISTED_GATES],
        "gates_open": open_[: max(0, MAX_LISTED_GATES - len(failed))],
        "latency_decided": name in decided.get("latency", []),
    }
