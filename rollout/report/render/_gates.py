"""The gates table and the A/A noise calibration of a report."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from ...judge.model import GateResult, Noise
from ._format import as_list, as_map, as_pair, as_str, counts_text, fmt_num, number

GATE_STATUSES = ("pass", "fail", "inconclusive", "info")


def gate_status(gate: Mapping[str, Any]) -> str:
    """pass | fail | inconclusive | info; schema 1 bodies only carry ``passed`` (None: n/a)."""
    status = as_str(gate.get("status")).lower()
    if status in GATE_STATUSES:
        return status
    passed = gate.get("passed")
    return "pass" if passed is True else "fail" if passed is False else "n/a"


def result_of(gate: GateResult) -> str:
    """``gate_status`` of a model gate."""
    return gate_status({"status": gate.status, "passed": gate.passed})


SOURCE_KEYS = ("decided_by", "by_source")
"""Details the gates table shows in their own right (which source decided, and each
source's judgement), not in the details line."""


def _details_text(raw: Any, display: str = "") -> str:
    """A gate's ``details`` as one short line; empty values, values the gate's display
    already shows, and the sources' judgements (shown apart) are left out."""
    parts = []
    for key, value in as_map(raw).items():
        if key in SOURCE_KEYS or _structured(value):
            continue
        if isinstance(value, Mapping):
            text = counts_text(value)
        elif isinstance(value, list | tuple):
            text = ", ".join(fmt_num(v) for v in value)
        else:
            text = fmt_num(value)
        if text and text not in display:
            parts.append(f"{as_str(key).replace('_', ' ')}: {text}")
    return "; ".join(parts)


def _structured(value: Any) -> bool:
    """Evidence made of records (business checks, parameter sets, regressions): shown in
    its own section, never as JSON in the gates table."""
    if isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        return False
    return any(isinstance(v, Mapping | list | tuple) for v in items)


def _threshold(value: Any) -> str:
    """A gate's threshold; one per check (``business``) as "name value, …"."""
    if isinstance(value, Mapping):
        return ", ".join(f"{as_str(k)} {fmt_num(v)}" for k, v in value.items())
    return fmt_num(value)


def gates_view(gates: list[GateResult]) -> list[dict[str, Any]]:
    return [_gate_view(gate) for gate in gates]


def _gate_view(gate: GateResult) -> dict[str, Any]:
    result = result_of(gate)
    display = gate.display or ""
    figure, threshold = fmt_num(gate.figure), _threshold(gate.threshold)
    if display:
        summary = display
    elif gate.threshold is None:
        summary = figure
    else:
        summary = f"{figure} (threshold {threshold})"
    return {
        "name": "(unnamed gate)" if gate.name is None else gate.name,
        "figure": display or figure,
        "threshold": threshold,
        "threshold_value": gate.threshold,
        "summary": summary,
        "result": result,
        "confidence": number(gate.confidence),
        "details": _details_text(gate.details, display),
        "reason": gate.reason or "",
        **_gate_sources(gate.details),
    }


def _gate_sources(raw: Any) -> dict[str, Any]:
    """Which sources decided a gate (``decided_by``), and each source's own judgement
    (``by_source``, present when more than one source was judged), in the body's order."""
    details = as_map(raw)
    decided = [as_str(s) for s in as_list(details.get("decided_by")) if as_str(s)]
    by_source = []
    for name, item in as_map(details.get("by_source")).items():
        judged = as_map(item)
        by_source.append(
            {
                "source": as_str(name),
                "result": gate_status(judged),
                "display": as_str(judged.get("display")),
                "reason": as_str(judged.get("reason")),
                "decided": as_str(name) in decided,
            }
        )
    return {"decided_by": decided, "by_source": by_source}


def noise_view(noise: Noise | None, flag: str, stage: str) -> dict[str, Any] | None:
    """The A/A calibration (legacy against itself); None for bodies that predate it."""
    if noise is None:
        return None
    command = f"rollout shadow {shlex.quote(flag)}"
    if stage and stage != "—":
        command += f" --stage {shlex.quote(stage)}"
    ci = noise.latency_ci
    return {
        "ran": (number(noise.samples) or 0) > 0,
        "samples": noise.samples,
        "compared": noise.compared,
        "mismatch_rate": number(noise.mismatch_rate),
        "latency_ratio": number(noise.latency_ratio),
        "latency_ci": as_pair(ci),
        "command": command + " --aa",
    }
