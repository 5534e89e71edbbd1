"""The generic-plan gate rests on repeated runs: one slow run never fails it."""

from __future__ import annotations

from typing import Any

from rollout.judge.plan_checks import buffers_gate, generic_gate, generic_summary, plans_summary
from rollout.run.plans import GENERIC_RUNS
from tests.helpers import LIMIT, OUTLIER, SLOW_GENERIC, checks, table_checksums


def test_one_slow_generic_run_stays_pass(tasks: str) -> None:
    before = table_checksums(tasks)
    found = checks(tasks, OUTLIER)
    new = found[1]
    assert len(new["generic_runs"]) == len(new["custom_runs"]) == GENERIC_RUNS  # type: ignore[arg-type]
    # the outlier is there, in one run only
    runs = sorted(new["generic_runs"])  # type: ignore[call-overload]
    assert runs[-1] > 25 and runs[-2] < 25
    summary = generic_summary(found, LIMIT)
    gate = generic_gate(summary, LIMIT)
    assert gate.status == "pass", gate.reason
    assert summary["checks"][1]["generic_runs"] == list(new["generic_runs"])  # type: ignore[call-overload]
    assert table_checksums(tasks) == before


def test_a_consistently_slow_generic_plan_still_fails(tasks: str) -> None:
    found = checks(tasks, SLOW_GENERIC, status="abc%")
    new = generic_summary(found, LIMIT)["checks"][1]
    assert new["shape_differs"] and new["consistently_slower"], new
    gate = generic_gate(generic_summary(found, LIMIT), LIMIT)
    assert gate.status == "fail", gate.reason
    assert "consistently far slower" in gate.reason and "acme" in gate.reason


def test_a_single_run_check_can_only_be_inconclusive() -> None:
    """A check stored before version 10 has one run per mode: it cannot fail the gate."""
    old = [{"path": "new", "tenant": "acme", "custom_ms": 0.2, "generic_ms": 4.0,
            "custom_buffers": 10, "generic_buffers": 10}]
    gate = generic_gate(generic_summary(old, LIMIT), LIMIT)
    assert gate.status == "inconclusive" and "one run decides nothing" in gate.reason


def test_slow_but_same_plan_and_buffers_is_noise() -> None:
    same = [{"path": "new", "tenant": "acme", "custom_ms": 0.2, "generic_ms": 4.0,
             "custom_buffers": 10, "generic_buffers": 10,
             "custom_runs": [0.2] * 5, "generic_runs": [4.0] * 5,
             "custom_buffer_runs": [10] * 5, "generic_buffer_runs": [10] * 5,
             "custom_shape": "Seq Scan on t", "generic_shape": "Seq Scan on t"}]
    gate = generic_gate(generic_summary(same, LIMIT), LIMIT)
    assert gate.status == "pass" and "timing noise" in gate.reason


def test_one_heavy_explain_sample_does_not_fail_the_buffers_gate() -> None:
    plans: list[dict[str, Any]] = []
    for i in range(10):
        for path in ("legacy", "new"):
            heavy = path == "new" and i == 3
            plans.append({"path": path, "tenant": "acme", "params": {"k": i},
                          "shape": "Index Scan", "buffers": 4000 if heavy else 40,
                          "plan_rows": 1, "actual_rows": 1, "exec_ms": 0.1})
    gate = buffers_gate(plans_summary(plans), 2.0)
    assert gate.status == "pass", gate.reason
    always = [{**p, "buffers": 4000} if p["path"] == "new" else p for p in plans]
    assert buffers_gate(plans_summary(always), 2.0).status == "fail"
    assert buffers_gate(plans_summary(always[:2]), 2.0).status == "inconclusive"
