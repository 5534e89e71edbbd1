"""A gate's judgement before it is reported: status, figure, threshold, the reason in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import GateResult
from .model_json import to_json


@dataclass(frozen=True)
class Gate:
    name: str
    status: str  # "pass" | "fail" | "inconclusive" | "info"
    figure: Any
    threshold: Any
    display: str
    reason: str
    confidence: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    lacking: bool = False
    """Undecided for want of evidence (too few samples, nothing compared), not for doubt:
    another source's pass outweighs it (``combine``)."""

    def result(self) -> GateResult:
        """The gate as a report shows it."""
        return GateResult(self.name, self.status,
                          None if self.status == "info" else self.status == "pass",
                          self.figure, self.threshold, self.confidence, self.display,
                          self.reason, self.details)

    def as_dict(self) -> dict[str, Any]:
        """The gate's JSON form (``model_json``)."""
        body = to_json(self.result())
        assert isinstance(body, dict)
        return body
