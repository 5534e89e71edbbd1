"""The gates table and the A/A noise calibration of a report."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from ._format import as_list, as_map, as_pair, as_str, counts_text, fmt_num, number

GATE_STATUSES = ("pass", "fail", "inconclusive", "info")


def gate_status(gate: Mapping[str, Any]) -> str:
    """pass | fail | inconclusive | info; schema 1 bodies only carry ``passed`` (None: n/a)."""
    status = as_str(gate.get("status")).lower()
    if status in GATE_STATUSES:
        return status
    passed = gate.get("passed")
    return "pass" if passed is True else "fail" if passed is False else "n/a"


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


def gates_view(raw: Any) -> list[dict[str, Any]]:
    gates = []
    for item in as_list(raw):
        gate = as_map(item)
        result = gate_status(gate)
        display = as_str(gate.get("display"))
        figure, threshold = fmt_num(gate.get("figure")), _threshold(gate.get("threshold"))
        if display:
            summary = display
        elif gate.get("threshold") is None:
            summary = figure
        else:
            summary = f"{figure} (threshold {threshold})"
        gates.append(
            {
                "name": as_str(gate.get("name"), "(unnamed gate)"),
                "figure": display or figure,
                "threshold": threshold,
                "threshold_value": gate.get("threshold"),
                "summary": summary,
                "result": result,
                "confidence": number(gate.get("confidence")),
                "details": _details_text(gate.get("details"), display),
                "reason": as_str(gate.get("reason")),
                **_gate_sources(gate.get("details")),
            }
        )
    return gates


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


def noise_view(raw: Any, flag: str, stage: str) -> dict[str, Any] | None:
    """The A/A calibration (legacy against itself); None for bodies that predate it."""
    if not isinstance(raw, Mapping):
        return None
    samples = number(raw.get("samples")) or 0
    command = f"rollout shadow {shlex.quote(flag)}"
    if stage and stage != "—":
        command += f" --stage {shlex.quote(stage)}"
    return {
        "ran": samples > 0,
        "samples": raw.get("samples"),
        "compared": raw.get("compared"),
        "mismatch_rate": number(raw.get("mismatch_rate")),
        "latency_ratio": number(raw.get("latency_ratio")),
        "latency_ci": as_pair(raw.get("latency_ci")),
        "command": command + " --aa",
    }
