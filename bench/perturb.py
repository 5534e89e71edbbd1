"""perturbation: what plan perturbation adds to an offline shadow run, per stage.

Each example flag's first stage is shadowed with the default options (``run_shadow``), and
the run's own phase timings (``RunSummary.timings``) give the ratio: the whole run ÷ the
same run without its perturbation phase. Target ≤ 1.25× with the defaults. The same run
again without the time budget shows what the full default sample costs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from rollout.run.shadow import RunOptions, run_shadow, target_tenants
from rollout.store.connection import connect
from rollout.store.store import Store

from .database import BenchDB, say

NAME = "perturbation"
SAMPLES = 200
"""Pairs per run: the default ``gates.min_samples``."""
SEED = 20260115
TARGET = 1.25


def run(db: BenchDB) -> dict[str, Any]:
    cases = []
    with connect(db.dsn, autocommit=True) as target, connect(db.dsn, autocommit=True) as sconn:
        store = Store.open(sconn)
        for flag in sorted(db.workspace.flags.values(), key=lambda f: f.name):
            stage = flag.stages[0].name
            tenants = target_tenants(flag, stage, target)
            row: dict[str, Any] = {"flag": flag.name, "kind": flag.kind, "stage": stage,
                                   "samples": SAMPLES}
            for label, options in (("budgeted", RunOptions(seed=SEED)),
                                   ("unbudgeted", replace(RunOptions(seed=SEED),
                                                          perturb_budget=None))):
                say(f"{NAME}: {flag.name} / {stage}, {SAMPLES} pairs, {label}")
                start = time.perf_counter()
                summary = run_shadow(flag, target, store, stage=stage, tenants=tenants,
                                     samples=SAMPLES, dsn=db.dsn, options=options)
                total = time.perf_counter() - start
                added = summary.timings.get("perturbation", 0.0)
                row[label] = {
                    "run_s": total, "perturbation_s": added,
                    "pairs_s": summary.timings.get("pairs", 0.0),
                    "plans_s": summary.timings.get("plans", 0.0),
                    "ratio": total / (total - added) if total > added else None,
                    "nondeterministic": dict(summary.nondeterministic),
                }
            cases.append(row)
    budgeted = [c["budgeted"]["ratio"] for c in cases if c["budgeted"]["ratio"]]
    return {
        "name": NAME, "target": TARGET, "cases": cases,
        "worst_ratio": max(budgeted) if budgeted else None,
        "description": "per stage, an offline shadow run with plan perturbation (default "
                       "samples and time budget) ÷ the same run without its perturbation "
                       "phase; 'unbudgeted' runs every default parameter set in full",
    }


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["flag", "kind", "stage", "pairs", "run s", "perturbation s", "ratio",
              "unbudgeted perturbation s", "unbudgeted ratio", "nondeterministic (new)"]
    rows = []
    for c in result["cases"]:
        b, u = c["budgeted"], c["unbudgeted"]
        rows.append([c["flag"], c["kind"], c["stage"], str(c["samples"]), f"{b['run_s']:.2f}",
                     f"{b['perturbation_s']:.2f}", _ratio(b["ratio"]),
                     f"{u['perturbation_s']:.2f}", _ratio(u["ratio"]),
                     str(b["nondeterministic"].get("new", 0))])
    return header, rows


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"
