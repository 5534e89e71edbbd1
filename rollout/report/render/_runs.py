"""Runs that did not finish, as the sentences the first screen of a report shows."""

from __future__ import annotations

from typing import Any

from ...judge.model import IncompleteRun


def incomplete_runs_view(runs: list[IncompleteRun]) -> list[dict[str, Any]]:
    """One entry per run that was cut short or never finished, with a sentence saying so."""
    out = []
    for run in runs:
        run_id = "?" if run.run_id is None else run.run_id
        status = "running" if run.status is None else run.status
        reason = run.reason or ""
        samples, requested = run.samples, run.requested
        mode = "A/A calibration run" if run.mode == "aa" else "shadow run"
        started = run.started_at or ""
        got = "" if samples is None else f"{samples}{f' of {requested}' if requested else ''}"
        after = f" after {got} sample{'' if samples == 1 and not requested else 's'}" \
            if got else ""
        since = f" (started {started})" if started else ""
        if status == "failed":
            text = (f"{mode} {run_id[:8]}{since} was cut short{after}: "
                    f"{reason or 'no reason was recorded'}")
        else:
            text = (f"{mode} {run_id[:8]}{since} never finished ({got or 'no'} samples so "
                    "far): still running, or its process died without marking it")
        out.append({"run_id": run_id, "status": status, "reason": reason, "samples": samples,
                    "requested": requested, "text": text})
    return out
