"""Runs that did not finish, as the sentences the first screen of a report shows."""

from __future__ import annotations

from typing import Any

from ._format import as_int, as_list, as_map, as_str


def incomplete_runs_view(raw: Any) -> list[dict[str, Any]]:
    """One entry per run that was cut short or never finished, with a sentence saying so."""
    out = []
    for item in as_list(raw):
        run = as_map(item)
        run_id = as_str(run.get("run_id"), "?")
        status = as_str(run.get("status"), "running")
        reason = as_str(run.get("reason"))
        samples = as_int(run.get("samples"))
        requested = as_int(run.get("requested"))
        mode = "A/A calibration run" if run.get("mode") == "aa" else "shadow run"
        started = as_str(run.get("started_at"))
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
