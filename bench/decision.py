"""decision: the cost of one ``Flag.decide`` beside UnleashClient's local ``is_enabled``."""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TypeVar

import rollout
from rollout import Workspace
from rollout.flags.model import Flag
from rollout.flags.targeting import Context, Stage

NAME = "decision"
ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = Path(__file__).resolve().parent / ".peer-venv"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_unleash.py"
PEER_REQUIREMENT = "UnleashClient>=6.9,<7"
"""Its own virtualenv: UnleashClient's dependency fcache pins platformdirs~=3, we need >=4."""

FLAG = "orders-recent"
STAGE = "canary"
TENANTS: tuple[str, ...] = (
    "acme", "globex", "initech", "umbrella", "hooli", "megacorp", "wayne", "stark", "wonka",
    "cyberdyne", "soylent", "tyrell", "aperture", "oscorp", "vandelay", "dunder-mifflin",
    "pied-piper", "massive-dynamic", "gringotts", "monarch",
)
"""The demo data's 20 tenants; only acme is in the canary's serve list."""
BATCHES = 30
BATCH_SIZE = 10_000
WARM_UP_BATCHES = 2
"""Run first and discarded: caches (the tenant bucket cache among them) warm."""
CALIBRATION = 2_000
"""Synthetic tenants and keys for checking that ~percent % land in the slice."""
SEED = 20260101
TARGET_MEDIAN_NS = 1_500.0
"""The issue's targets: median <= 1.5 us per decide, >= 10x faster than UnleashClient."""
TARGET_SPEEDUP = 10.0
INSTALL_TIMEOUT_S = 600
PEER_TIMEOUT_S = 900

_T = TypeVar("_T")


def run(results_dir: Path) -> dict[str, Any]:
    """Measure both sides, write ``results_dir / "decision.json"``, print a table."""
    flag = Workspace.load(ROOT).flag(FLAG)
    stage = flag.stage(STAGE)
    if stage is None:
        raise SystemExit(f"{FLAG} has no stage {STAGE!r}")
    mix = random.Random(SEED).choices(TENANTS, k=BATCH_SIZE)

    tenant_contexts = [Context(tenant=t) for t in mix]
    ours: dict[str, Any] = {
        "tenant_key": _measure_ours(flag, lambda b: tenant_contexts),
        "request_key": _measure_ours(flag, partial(_request_contexts, mix)),
        "tenant_key_context_built_per_call": _measure_built(flag, mix),
        "loop_overhead_ns": _loop_overhead(mix),
        "checks": _our_checks(flag),
    }
    try:
        peer = _peer(_peer_spec(flag, stage, mix))
    except _Unavailable as exc:
        peer = {"available": False, "reason": str(exc)}

    ours_median = ours["tenant_key"]["median_ns"]
    ratio = ratio_req = None
    if peer.get("available"):
        ratio = round(peer["tenant_key"]["median_ns"] / ours_median, 1)
        ratio_req = round(peer["request_key"]["median_ns"] / ours["request_key"]["median_ns"], 1)
    result: dict[str, Any] = {
        "name": NAME,
        "description": f"per decision: {FLAG}'s Flag.decide(ctx, stage={STAGE!r}) vs. "
                       "UnleashClient.is_enabled on an equivalent bootstrapped feature, "
                       "both in process, no I/O",
        "unit": "ns",
        "flag": FLAG,
        "stage": STAGE,
        "stage_targets": {
            "serve": stage.serve.describe() if stage.serve else None,
            "shadow": stage.shadow.describe() if stage.shadow else None,
        },
        "method": {
            "batches": BATCHES,
            "batch_size": BATCH_SIZE,
            "warm_up_batches": WARM_UP_BATCHES,
            "statistic": "per-call mean of each batch; median and p99 over the batches",
            "tenant_mix": f"{BATCH_SIZE} draws, uniform over {len(TENANTS)} tenants "
                          f"(seed {SEED}), the same list on both sides",
            "request_keys": "req-N, unique across all batches, one per call",
            "contexts": "built before each batch (decision cost only), except "
                        "tenant_key_context_built_per_call",
            "gc": "disabled inside each timed batch, as timeit does",
            "loop": "the timed loop's own cost is included, not subtracted "
                    "(loop_overhead_ns)",
        },
        "tenants": list(TENANTS),
        "ours": ours,
        "unleash": peer,
        "ratio_unleash_over_ours": {"tenant_key": ratio, "request_key": ratio_req},
        "targets": {
            "median_ns_max": TARGET_MEDIAN_NS,
            "median_met": ours_median <= TARGET_MEDIAN_NS,
            "median_met_request_key": ours["request_key"]["median_ns"] <= TARGET_MEDIAN_NS,
            "speedup_min": TARGET_SPEEDUP,
            "speedup_met": None if ratio is None else ratio >= TARGET_SPEEDUP,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "pg_rollout": rollout.__version__,
        },
    }
    header, rows = table(result)
    print(f"\n{NAME}: {result['description']}")
    print(_format(header, rows))
    for line in _notes(result):
        print(line)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{NAME}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for the console table (ns per call)."""
    header = ["case", "median ns", "p99 ns", "unleash/ours"]
    ours, peer = result["ours"], result["unleash"]
    ratio = result["ratio_unleash_over_ours"]
    rows = [
        ["ours, tenant key", *_cells(ours["tenant_key"]), ""],
        ["ours, request key", *_cells(ours["request_key"]), ""],
        ["ours, tenant key + Context()", *_cells(ours["tenant_key_context_built_per_call"]), ""],
    ]
    if peer.get("available"):
        rows += [
            ["unleash, tenant key", *_cells(peer["tenant_key"]), f"{ratio['tenant_key']:.1f}x"],
            ["unleash, request key", *_cells(peer["request_key"]),
             f"{ratio['request_key']:.1f}x"],
        ]
    else:
        rows.append(["unleash", "n/a", "n/a", "unavailable"])
    return header, rows


def _cells(stats: dict[str, Any]) -> list[str]:
    return [f"{stats['median_ns']:,.0f}", f"{stats['p99_ns']:,.0f}"]


def _notes(result: dict[str, Any]) -> list[str]:
    t, peer = result["targets"], result["unleash"]
    lines = [
        f"target median <= {t['median_ns_max']:,.0f} ns per decide: "
        f"{'met' if t['median_met'] else 'NOT met'} (tenant key), "
        f"{'met' if t['median_met_request_key'] else 'NOT met'} (request key)",
    ]
    if t["speedup_met"] is None:
        lines.append(f"target >= {t['speedup_min']:g}x faster than UnleashClient: "
                     f"not judged, peer unavailable: {peer.get('reason')}")
        return lines
    lines.append(f"target >= {t['speedup_min']:g}x faster than UnleashClient: "
                 f"{'met' if t['speedup_met'] else 'NOT met'} "
                 f"({result['ratio_unleash_over_ours']['tenant_key']:.1f}x)")
    ours, c = result["ours"]["checks"], peer["checks"]
    lines.append(
        f"evaluates: ours {ours['shadowed_tenants']}/{ours['other_tenants']} unlisted tenants "
        f"shadowed, {ours['synthetic_tenants_in_slice_fraction']:.1%} of synthetic tenants; "
        f"unleash {c['other_tenants_enabled']}/{c['other_tenants']} unlisted tenants on, "
        f"{c['synthetic_tenants_enabled_fraction']:.1%} of synthetic tenants, "
        f"{c['request_keys_enabled_fraction']:.1%} of request keys, "
        f"network attempts {peer['network_attempts']}")
    return lines


def _format(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# -- our side ----------------------------------------------------------------------------------
def _request_contexts(mix: Sequence[str], batch: int) -> list[Context]:
    """One context per call with a request key never used before."""
    n = len(mix)
    return [Context(tenant=t, key=f"req-{batch * n + j}") for j, t in enumerate(mix)]


def _measure_ours(flag: Flag, contexts_for: Callable[[int], list[Context]]) -> dict[str, Any]:
    """Time ``flag.decide`` over the contexts of each batch, built before its clock starts."""
    decide = flag.decide
    last: list[Context] = []

    def timed(contexts: list[Context]) -> int:
        t0 = perf_counter_ns()
        for ctx in contexts:
            decide(ctx, STAGE)
        return perf_counter_ns() - t0

    def batch(b: int) -> int:
        nonlocal last
        last = contexts_for(b)
        return _gc_off(timed, last)

    stats = _batched(batch, len(contexts_for(0)))
    stats["paths_last_batch"] = dict(sorted(Counter(decide(c, STAGE).path for c in last).items()))
    return stats


def _measure_built(flag: Flag, mix: list[str]) -> dict[str, Any]:
    """Context construction inside the timed loop: the whole per-request cost."""
    decide = flag.decide

    def timed(tenants: list[str]) -> int:
        t0 = perf_counter_ns()
        for t in tenants:
            decide(Context(tenant=t), STAGE)
        return perf_counter_ns() - t0

    return _batched(lambda b: _gc_off(timed, mix), len(mix))


def _loop_overhead(mix: list[str]) -> float:
    def timed(items: list[str]) -> int:
        t0 = perf_counter_ns()
        for _ in items:
            pass
        return perf_counter_ns() - t0

    return float(_batched(lambda b: _gc_off(timed, mix), len(mix))["median_ns"])


def _gc_off(timed: Callable[[_T], int], data: _T) -> int:
    gc.disable()
    try:
        return timed(data)
    finally:
        gc.enable()


def _batched(batch: Callable[[int], int], size: int) -> dict[str, Any]:
    """Per-call means of ``BATCHES`` batches of ``size`` calls, after the warm-up batches."""
    means = []
    for b in range(WARM_UP_BATCHES + BATCHES):
        elapsed = batch(b)
        if b >= WARM_UP_BATCHES:
            means.append(elapsed / size)
    return _summary(means)


def _summary(means: list[float]) -> dict[str, Any]:
    ordered = sorted(means)
    pos = (len(ordered) - 1) * 0.99
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return {
        "median_ns": round(statistics.median(ordered), 1),
        "p99_ns": round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 1),
        "min_ns": round(ordered[0], 1),
        "max_ns": round(ordered[-1], 1),
        "batches": len(ordered),
    }


def _our_checks(flag: Flag) -> dict[str, Any]:
    """The same sanity checks the peer makes: who is served, who lands in the 10 % slice."""
    stage = flag.stage(STAGE)
    assert stage is not None
    listed = stage.serve.tenants if stage.serve and stage.serve.tenants else frozenset()
    paths = {t: flag.decide(Context(tenant=t), STAGE).path for t in TENANTS}
    others = [t for t in TENANTS if t not in listed]
    synthetic = [flag.decide(Context(tenant=f"tenant-{i}"), STAGE).path != "legacy"
                 for i in range(CALIBRATION)]
    keys = [flag.decide(Context(tenant="zeta-unlisted", key=f"calibration-{i}"), STAGE).path
            != "legacy" for i in range(CALIBRATION)]
    return {
        "served_tenants": sorted(t for t, p in paths.items() if p == "new"),
        "shadowed_tenants": sum(paths[t] == "shadow" for t in others),
        "other_tenants": len(others),
        "shadowed": sorted(t for t, p in paths.items() if p == "shadow"),
        "synthetic_tenants_in_slice_fraction": sum(synthetic) / len(synthetic),
        "request_keys_in_slice_fraction": sum(keys) / len(keys),
    }


# -- the peer ---------------------------------------------------------------------------------
def _peer_spec(flag: Flag, stage: Stage, mix: list[str]) -> dict[str, Any]:
    """What the peer script needs to build the equivalent feature and the same workload."""
    serve, shadow = stage.serve, stage.shadow
    if (serve is None or serve.tenants is None or serve.percent is not None or shadow is None
            or not shadow.all_tenants or shadow.exclude or shadow.percent is None):
        raise _Unavailable(f"{FLAG}/{STAGE} is no longer 'serve tenants, shadow * at a "
                           "percent': update the feature in bench/peer_unleash.py")
    return {
        "flag": flag.name,
        "serve_tenants": sorted(serve.tenants),
        "shadow_percent": shadow.percent,
        "tenants": list(TENANTS),
        "mix": mix,
        "batch_size": BATCH_SIZE,
        "batches": BATCHES,
        "warm_up_batches": WARM_UP_BATCHES,
        "calibration": CALIBRATION,
    }


def _peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Run peer_unleash.py in the peer virtualenv; never raises, says why when it can't."""
    try:
        python = _peer_python()
    except _Unavailable as exc:
        return {"available": False, "reason": str(exc)}
    try:
        proc = subprocess.run([str(python), "-I", str(PEER_SCRIPT)], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=PEER_TIMEOUT_S,
                              cwd=PEER_SCRIPT.parent, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "reason": _scrub(f"peer run failed: {exc}")}
    if proc.returncode != 0:
        return {"available": False,
                "reason": _scrub(f"peer run exited {proc.returncode}: {_tail(proc.stderr)}")}
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"available": False,
                "reason": _scrub(f"peer printed no JSON: {_tail(proc.stdout + proc.stderr)}")}
    return result


class _Unavailable(Exception):
    pass


def _peer_python() -> Path:
    """The peer virtualenv's python with UnleashClient importable, made on first use."""
    python = PEER_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print("decision: creating bench/.peer-venv for UnleashClient (first use)",
              file=sys.stderr)
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        _step([sys.executable, "-m", "venv", str(PEER_VENV)], "python -m venv")
        if not python.exists():
            raise _Unavailable("python -m venv made no interpreter")
    if _step_ok([str(python), "-I", "-c", "import UnleashClient"]):
        return python
    print(f"decision: pip install {PEER_REQUIREMENT} into bench/.peer-venv", file=sys.stderr)
    _step([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           PEER_REQUIREMENT], f"pip install {PEER_REQUIREMENT}")
    if not _step_ok([str(python), "-I", "-c", "import UnleashClient"]):
        raise _Unavailable("UnleashClient installed but does not import")
    return python


def _step(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _Unavailable(_scrub(f"{what} failed: {exc}")) from None
    if proc.returncode != 0:
        raise _Unavailable(_scrub(f"{what} exited {proc.returncode}: {_tail(proc.stderr)}"))


def _step_ok(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _tail(text: str, lines: int = 3) -> str:
    kept = [line[:200] for line in text.strip().splitlines() if not line.startswith("WARNING:")]
    return " | ".join(kept[-lines:]) or "(no output)"


def _scrub(text: str) -> str:
    """No machine paths in results: the repository root becomes '.'."""
    return text.replace(str(PEER_VENV), "bench/.peer-venv").replace(str(ROOT), ".")
