"""Judge a stage's observations against the flag's gates: GO, NO-GO or INCONCLUSIVE.

Latency is judged on a log scale, so shifts are ratios: a regression counts only when a
one-sided Mann-Whitney test says new is slower than legacy × (1 + tolerance) at the gate's
confidence (significant *and* larger than the tolerance). Not significant but estimated
beyond the tolerance is INCONCLUSIVE, with the samples a decision would need. A/A runs
(legacy against itself) measure noise: their mismatch rate is subtracted and their latency
shift widens the tolerance.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from scipy import stats

from ..flags.model import Flag
from ..store.observations import Observation
from . import plan_checks
from .gates import Gate
from .model import (
    EnvironmentEvent,
    Failures,
    IncompleteRun,
    Judgement,
    Latency,
    Locks,
    Mismatches,
    Noise,
    SourceEvidence,
    Tenant,
)
from .model_json import read, to_json
from .model_plans import GenericPlans, Plans
from .summaries import (
    MIN_LATENCY_PAIRS,
    PoolSignal,
    environment_failures,
    failure_class,
    failures_summary,
    latency_summary,
    locks_summary,
    noise_summary,
    tenants_summary,
)

T = TypeVar("T")

GO, NO_GO, INCONCLUSIVE = "GO", "NO-GO", "INCONCLUSIVE"
EXIT_CODES = {GO: 0, NO_GO: 1, INCONCLUSIVE: 3}


SOURCES = ("offline", "online")


@dataclass(frozen=True)
class NewFailures:
    """The new path's failures where legacy succeeded, environment failures excused."""

    count: int
    by_class: dict[str, int]
    most_common: Callable[[], tuple[str | None, str]]
    """The most frequent (SQLSTATE, first line of the message): asked only of a failing
    gate, since the database has to look for it."""


class StageEvidence(Protocol):
    """Where a stage's figures come from: observations in memory (``judge``), or the store
    computing them in SQL (``figures.StoreEvidence``); both give the same figures."""

    def sizes(self) -> Mapping[str, int]:
        """Observations judged per source: ``mode='ab'``, requests served alone left out."""
        ...

    def run_samples(self) -> Mapping[Any, int]:
        """Observations per run id, every mode and request included."""
        ...

    def figures(self, source: str | None, *, latency: bool) -> dict[str, Any]:
        """``_figures`` of one source's observations (None: of all of them)."""
        ...


@dataclass(frozen=True)
class Evidence:
    """One source's gates and figures: offline shadow runs, or a running service's pairs."""

    source: str
    samples: int
    gates: list[Gate]
    figures: dict[str, Any]


def judge(flag: Flag, observations: Sequence[Observation], *,
          noise: Sequence[Observation] = (), plans: Sequence[Mapping[str, Any]] = (),
          generic: Sequence[Mapping[str, Any]] = (),
          perturbations: Sequence[Mapping[str, Any]] = (),
          rollback: Mapping[str, Any] | None = None,
          runs: Sequence[Mapping[str, Any]] = (), pool_signals: Sequence[PoolSignal] = (),
          seed: int = 0) -> dict[str, Any]:
    """The verdict and every figure behind it, as the JSON core of a report, from
    observations in memory (``assess`` tells the rules; a stage in the store is judged by
    the database, ``figures.StoreEvidence``)."""
    return judge_evidence(flag, Listed(flag, observations, noise, pool_signals, seed),
                          plans=plans, generic=generic, perturbations=perturbations,
                          rollback=rollback, runs=runs)


def judge_evidence(flag: Flag, evidence: StageEvidence, *,
                   plans: Sequence[Mapping[str, Any]] = (),
                   generic: Sequence[Mapping[str, Any]] = (),
                   perturbations: Sequence[Mapping[str, Any]] = (),
                   rollback: Mapping[str, Any] | None = None,
                   runs: Sequence[Mapping[str, Any]] = (),
                   extra_gates: Sequence[Gate] = ()) -> dict[str, Any]:
    """``assess`` in its JSON form (``model_json``), for callers that keep JSON: the
    watcher's records, tests comparing figures."""
    body = to_json(assess(flag, evidence, plans=plans, generic=generic,
                          perturbations=perturbations, rollback=rollback, runs=runs,
                          extra_gates=extra_gates))
    assert isinstance(body, dict)
    return body


def assess(flag: Flag, evidence: StageEvidence, *,
           plans: Sequence[Mapping[str, Any]] = (),
           generic: Sequence[Mapping[str, Any]] = (),
           perturbations: Sequence[Mapping[str, Any]] = (),
           rollback: Mapping[str, Any] | None = None,
           runs: Sequence[Mapping[str, Any]] = (),
           extra_gates: Sequence[Gate] = ()) -> Judgement:
    """The verdict and every figure behind it: the judged core of a report.

    The figures ``evidence`` gives are plain JSON-shaped records (``figures``,
    ``summaries``); they become model objects here, where the judge hands them on.

    Plan evidence (EXPLAIN samples, generic-plan checks, plan perturbation) is judged by
    ``plan_checks``, whose gates no single sample can flip (docs/gates.md); ``extra_gates``
    (business metrics) join the verdict as they are.

    Offline evidence (``rollout shadow``) and online evidence (a running service's pairs)
    are never pooled: each source is judged on its own (``sources``), with its own A/A noise,
    and each evidence gate combines them (``combine``): it fails when either source fails it,
    passes when a source passes it and no source has a real doubt, and says which source
    decided (``details.decided_by``). Online latency is judged only from pairs measured like
    for like on the shadow pool (``Observation.paired_online``).

    Requests that only served the new path (no comparison) do not count as samples. Every
    figure may be missing (no successful execution on a path, nothing compared): the gates
    then say so in words, and a new path that always fails is a NO-GO like any other.

    ``runs`` are the stage's shadow runs (``Store.runs``). Runs that did not finish are
    listed under ``incomplete_runs``; their observations are judged like any other (each one
    is a complete pair), but while the latest A/B run is cut short the verdict is at best
    INCONCLUSIVE: the run did not measure what it was asked to.

    Environment failures (connection exceptions, shutdowns, too many connections) count
    against the new path only when they hit it alone while legacy ran fine at the same
    moments (``summaries.environment_failures``, with the runners' pool statistics); the
    others are listed as ``environment_events``."""
    incomplete = incomplete_runs(runs, evidence.run_samples() if any(
        r.get("status") != "finished" for r in runs) else {})
    sizes = evidence.sizes()
    found = [Evidence(src, sizes.get(src, 0), [], {}) for src in SOURCES]
    present = [e for e in found if e.samples] or found[:1]
    judged = {e.source: _evidence(flag, e.source, e.samples,
                                  evidence.figures(e.source, latency=True))
              for e in present}
    present = [judged[e.source] for e in present]
    plans_fig = plan_checks.plans_summary(plans)
    g_ratio = flag.gates.generic_plan_max_ratio
    generic_fig = plan_checks.generic_summary(generic, g_ratio)
    perturb_fig = plan_checks.perturbation_summary(perturbations)
    gates = [combine([e.gates[i] for e in present], [e.source for e in present])
             for i in range(len(present[0].gates))]
    gates += [plan_checks.buffers_gate(plans_fig, flag.gates.max_buffers_ratio),
              plan_checks.generic_gate(generic_fig, g_ratio),
              plan_checks.perturbation_gate(perturb_fig, _tie_hints(flag)),
              _rollback(flag, rollback), *extra_gates]
    failed = [x for x in gates if x.status == "fail"]
    open_ = [x for x in gates if x.status == "inconclusive"]
    decisive = [x for x in gates if x.status != "info"]
    if failed:
        verdict, reasons = NO_GO, [x.reason for x in failed]
    elif open_:
        verdict, reasons = INCONCLUSIVE, [x.reason for x in open_]
    else:
        verdict, reasons = GO, [f"all {len(decisive)} gates passed"]
    cut_short = latest_run_cut_short(incomplete, runs)
    if cut_short is not None:
        if verdict == GO:
            verdict, reasons = INCONCLUSIVE, []
        reasons.append(cut_short)
    attention = rollback_attention(rollback)
    if attention:
        reasons.append(attention)

    latency_gate = next(x for x in gates if x.name == "latency")
    decided = latency_gate.details.get("decided_by") or [present[0].source]
    if len(present) > 1:  # failures and environment events as the gates judged them
        everything = evidence.figures(None, latency=False)
        everything["failures"]["new_only"] = sum(
            e.figures["failures"]["new_only"] for e in present)
        everything["failures"]["new_only_by_class"] = dict(sum(
            (Counter(e.figures["failures"]["new_only_by_class"]) for e in present), Counter()))
        everything["environment_events"] = [
            {**ev, "source": e.source} for e in present
            for ev in e.figures["environment_events"]]
    else:
        everything = present[0].figures
    decider = judged[decided[0]].figures
    return Judgement(
        verdict=verdict,
        reasons=reasons,
        samples=sum(sizes.get(src, 0) for src in SOURCES),
        incomplete_runs=[_model(IncompleteRun, r) for r in incomplete],
        gates=[x.result() for x in gates],
        mismatches=_model(Mismatches, everything["mismatches"]),
        failures=_model(Failures, everything["failures"]),
        environment_events=[_model(EnvironmentEvent, ev)
                            for ev in everything["environment_events"]],
        locks=_model(Locks, everything["locks"]),
        tenants=[_model(Tenant, t) for t in everything["tenants"]],
        noise=_model(Noise, decider["noise"]),
        latency=_model(Latency, {**decider["latency"], "source": decided[0]}),
        sources={e.source: _source(e) for e in present if e.samples},
        plans=_model(Plans, plans_fig),
        generic_plans=_model(GenericPlans, generic_fig),
        perturbation=perturb_fig,
    )


def _model(cls: type[T], figures: Mapping[str, Any]) -> T:
    """Figures computed as plain records (``figures``, ``summaries``) as a model object;
    a figure of the wrong type is a bug here, not something to render around."""
    return read(cls, figures, strict=True)


def _source(e: Evidence) -> SourceEvidence:
    return SourceEvidence(
        e.samples, [x.result() for x in e.gates], _model(Mismatches, e.figures["mismatches"]),
        _model(Failures, e.figures["failures"]), _model(Noise, e.figures["noise"]),
        _model(Latency, e.figures["latency"]))


def _tie_hints(flag: Flag) -> list[str]:
    """What the parse tree says about ties in the new path (``determinism.hazards``): the
    words a plan-determinism failure is explained with; none when the parser cannot read it."""
    from ..flags.determinism import hazards
    from ..flags.statements import SqlError

    try:
        return [h.what for h in hazards(flag.new.sql)]
    except SqlError:
        return []


def _evidence(flag: Flag, source: str, samples: int, fig: dict[str, Any]) -> Evidence:
    """The evidence gates of one source."""
    g = flag.gates
    env = fig["environment"]
    latency = _latency(fig["latency"], g.latency.max_regression)
    if source == "online" and samples and not fig["latency"]["pairs_measured"]:
        latency = Gate("latency", "inconclusive", None, latency.threshold,
                       "not measured online",
                       "online latency not judged: no pair was measured like for like on "
                       "the shadow pool (online.pair_latency: false, or recorded before "
                       "pairing)", latency.confidence, lacking=True)
    gates = [
        _min_samples(samples, g.min_samples),
        _mismatch(fig["mismatches"]["count"], fig["mismatches"]["compared"],
                  g.max_mismatch_rate, fig["noise"], g.latency.confidence),
        latency,
        _new_failures(env["new_only"], g.max_new_failures, g.max_new_failures_by_class,
                      samples, env["excused"]),
        _lock_wait(fig["locks"], g.max_lock_wait_regression_ms),
    ]
    return Evidence(source, samples, gates, fig)


class Listed:
    """A stage's evidence held in memory as ``Observation`` objects: the figures computed
    in Python, one pass per figure. The oracle the database's figures are held to."""

    def __init__(self, flag: Flag, observations: Sequence[Observation],
                 noise: Sequence[Observation] = (), pool_signals: Sequence[PoolSignal] = (),
                 seed: int = 0) -> None:
        self.flag, self.noise, self.pool_signals, self.seed = flag, noise, pool_signals, seed
        self.everything = list(observations)
        self.observations = [o for o in observations if not o.served_only]

    def sizes(self) -> dict[str, int]:
        return dict(Counter(o.source for o in self.observations))

    def run_samples(self) -> Counter[Any]:
        return Counter(o.run_id for o in [*self.everything, *self.noise]
                       if o.run_id is not None)

    def figures(self, source: str | None, *, latency: bool) -> dict[str, Any]:
        mine = [o for o in self.observations if source is None or o.source == source]
        noise = [o for o in self.noise if source is None or o.source == source]
        return _figures(self.flag, mine, noise, self.pool_signals, self.seed,
                        latency=latency, online=source == "online")


def _figures(flag: Flag, observations: Sequence[Observation], noise: Sequence[Observation],
             pool_signals: Sequence[PoolSignal], seed: int, *, latency: bool,
             online: bool = False) -> dict[str, Any]:
    """Mismatches, failures, environment events, locks, tenants (and, with ``latency``,
    latency and noise) of ``observations``."""
    g = flag.gates
    compared = [o for o in observations if o.matched is not None]
    mismatched = [o for o in compared if o.matched is False]
    env = environment_failures(observations, pool_signals)
    excused_new = frozenset(i for i, path in env.excused if path == "new")
    new_only = [o for i, o in enumerate(observations)
                if o.new_failed and not o.legacy_failed and i not in excused_new]
    excused = [o for i, o in enumerate(observations)
               if i in excused_new and not o.legacy_failed]
    noise_fig = noise_summary(noise, g.latency.confidence)
    kinds: Counter[str] = Counter()
    for o in mismatched:
        kinds.update({d["kind"] for d in o.diff or []})
    new_only_by_class = dict(Counter(
        failure_class(o.new_sqlstate, o.new_error) or "other" for o in new_only))

    def most_common() -> tuple[str | None, str]:
        errors = Counter((o.new_sqlstate, first_line(o.new_error)) for o in new_only)
        return errors.most_common(1)[0][0]

    out: dict[str, Any] = {
        "environment": {"new_only": NewFailures(len(new_only), new_only_by_class, most_common),
                        "excused": len(excused)},
        "mismatches": {
            "count": len(mismatched),
            "compared": len(compared),
            "rate": len(mismatched) / len(compared) if compared else None,
            "noise_rate": noise_fig["mismatch_rate"],
            "by_kind": dict(sorted(kinds.items())),
            "samples": [{"tenant": o.tenant, "params": o.params, "diff": o.diff or [],
                         "truncated": False} for o in mismatched[:5]],
            "samples_omitted": max(0, len(mismatched) - 5),
        },
        "failures": {
            "legacy": failures_summary((o.legacy_sqlstate, o.legacy_error) for o in observations),
            "new": failures_summary((o.new_sqlstate, o.new_error) for o in observations),
            "new_only": len(new_only),
            "new_only_by_class": new_only_by_class,
            "environment": {
                path: {"count": sum(p == path for _, p in env.counted | env.excused),
                       "counted": sum(p == path for _, p in env.counted)}
                for path in ("legacy", "new")},
        },
        "environment_events": env.events,
        "locks": locks_summary(observations),
        "tenants": tenants_summary(observations, excused_new),
    }
    if latency:
        timed = [o for o in observations if o.paired_online] if online else observations
        out["noise"] = noise_fig
        out["latency"] = {**latency_summary(timed, g.latency.quantile, g.latency.confidence,
                                            g.latency.max_regression, noise_fig, seed),
                          "pairs_measured": len(timed)}
    return out


def _rank(x: Gate) -> int:
    """Which of a gate's per-source judgements decides: the lowest rank."""
    if x.status == "inconclusive":
        return 3 if x.lacking else 1  # too little evidence, or a real doubt
    return {"fail": 0, "pass": 2, "info": 4}[x.status]


def combine(gates: Sequence[Gate], sources: Sequence[str]) -> Gate:
    """One gate from the same gate judged on each source: fails when a source fails it;
    inconclusive when a source has a real doubt (not merely too little evidence); passes
    when a source passes it; else as lacking as the sources are. ``details`` name the
    sources that decided and hold every source's judgement."""
    if len(gates) == 1:
        only = gates[0]
        return replace(only, details={**only.details, "decided_by": [sources[0]]})
    best = min(_rank(x) for x in gates)
    deciding = [i for i, x in enumerate(gates) if _rank(x) == best]
    first = gates[deciding[0]]
    by = [sources[i] for i in deciding]
    others = "; ".join(f"{sources[i]}: {gates[i].display}" for i in range(len(gates))
                       if i != deciding[0])
    reason = f"{by[0]}: {first.reason}"
    display = f"{by[0]}: {first.display} ({others})"
    return replace(first, reason=reason, display=display, details={
        **first.details, "decided_by": by,
        "by_source": {sources[i]: {"status": x.status, "display": x.display,
                                   "reason": x.reason} for i, x in enumerate(gates)}})


def verdict_exit_code(verdict: str) -> int:
    return EXIT_CODES[verdict]


# -- runs that ended badly ------------------------------------------------------------------


def incomplete_runs(runs: Sequence[Mapping[str, Any]],
                    observations: Sequence[Observation] | Mapping[Any, int]
                    ) -> list[dict[str, Any]]:
    """Every run that did not finish: ``failed`` (cut short, with its reason) or still
    ``running`` (in progress, or its process died without a word). ``samples`` counts the
    observations of the run that reached the store (``observations``: the observations, or
    their count per run id)."""
    landed = (observations if isinstance(observations, Mapping) else
              Counter(o.run_id for o in observations if o.run_id is not None))
    out = []
    for r in runs:
        if r.get("status") == "finished":
            continue
        started: Any = r.get("started_at")
        out.append({
            "run_id": str(r["run_id"]),
            "status": str(r.get("status") or "running"),
            "reason": r.get("reason"),
            "mode": str(r.get("mode") or "ab"),
            "samples": landed.get(r["run_id"], 0),
            "requested": r.get("requested"),
            "started_at": started.isoformat(timespec="seconds")
            if hasattr(started, "isoformat") else started,
        })
    return out


def latest_run_cut_short(incomplete: Sequence[Mapping[str, Any]],
                         runs: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the verdict cannot be GO, in words, when the stage's latest A/B run (``runs`` are
    in start order) did not finish; None when it did."""
    ab = [r for r in runs if (r.get("mode") or "ab") == "ab"]
    if not ab:
        return None
    latest = str(ab[-1]["run_id"])
    run = next((r for r in incomplete if r["run_id"] == latest), None)
    if run is None:
        return None
    of = f" of {run['requested']}" if run.get("requested") else ""
    what = f"the latest shadow run ({run['run_id'][:8]}, {run['samples']}{of} samples)"
    if run["status"] == "failed":
        why = run.get("reason") or "no reason was recorded"
        told = f"{what} was cut short: {why}"
    else:
        told = (f"{what} never finished: it is still running, or its process died "
                "without marking it")
    return (f"{told}; its observations are judged, but a stage is GO only on a run that "
            "finished (run `rollout shadow` again)")


def rollback_attention(verification: Mapping[str, Any] | None) -> str | None:
    """A verified rollback whose statements reach beyond the one database (roles, database
    settings, the server's files or programs): not a gate, but the release manager must
    know before applying it."""
    if not verification:
        return None
    beyond = [h for h in verification.get("hazards") or []
              if isinstance(h, Mapping) and h.get("beyond_database")]
    if not beyond:
        return None
    first = beyond[0]
    where = (f"{first.get('script', 'rollback')} statement {first['statement_number']}"
             if first.get("statement_number") is not None else str(first.get("script", "")))
    more = f" (and {len(beyond) - 1} more)" if len(beyond) > 1 else ""
    return (f"attention: {where} reaches beyond the database: {first['beyond_database']}"
            f"{more}; verification cannot undo that on the target")


def pool_attention(pools: Mapping[str, Any] | None) -> str | None:
    """Lost connections or checkout errors in the stage's pools (``report.stage_pools``):
    not a gate (an outage is nobody's fault), but the release manager must know."""
    if not pools:
        return None
    parts = []
    for name, label in (("requests", "requests pool (served path)"),
                        ("shadow", "shadow pool (background path)")):
        p = pools.get(name)
        if not isinstance(p, Mapping):
            continue
        lost, errors = int(p.get("connections_lost") or 0), int(p.get("errors") or 0)
        found = [f"{n} {what}{'' if n == 1 else 's'}"
                 for n, what in ((lost, "lost connection"), (errors, "checkout error")) if n]
        if found:
            parts.append(f"{label}: {' and '.join(found)}")
    if not parts:
        return None
    return (f"attention: the running services' pools recorded {'; '.join(parts)} during "
            "this stage; not a gate, but look for an outage or exhausted connections")


# -- latency --------------------------------------------------------------------------------


def _latency(lat: Mapping[str, Any], tolerance: float) -> Gate:
    name = "latency"
    limit = 1 + lat["effective_tolerance"]
    conf = lat["confidence"]
    if lat["hl_ratio"] is None:
        legacy_n, new_n = lat["legacy"]["n"], lat["new"]["n"]
        n = min(legacy_n, new_n)
        never = [p for p, k in (("legacy", legacy_n), ("new", new_n)) if k == 0]
        if never:
            paths = " and ".join(never)
            return Gate(name, "inconclusive", None, limit, f"no successful {paths} execution",
                        f"latency not judged: the {paths} path{'s' if len(never) > 1 else ''} "
                        "never succeeded, so there is nothing to time", conf, lacking=True)
        return Gate(name, "inconclusive", lat["ratio"], limit, f"{n} timed executions",
                    f"too few timed executions ({n}) to judge latency "
                    f"(need {MIN_LATENCY_PAIRS} per path)", conf, lacking=True)
    ci = lat["hl_ci"]
    p = lat["mann_whitney_p"]
    shown = (f"new/legacy {lat['hl_ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], "
             f"p = {p:.3g} vs limit {limit:.3f}")
    change = f"{lat['hl_ratio'] - 1:+.1%}"
    if p < 1 - conf:
        return Gate(name, "fail", lat["hl_ratio"], limit, shown,
                    f"new path is slower: {change}, significantly beyond the "
                    f"{lat['effective_tolerance']:.0%} tolerance (p = {p:.2g})", conf)
    if lat["hl_ratio"] > limit:
        needed = lat["samples_needed"]
        more = f"; about {needed} samples per path would decide" if needed else ""
        return Gate(name, "inconclusive", lat["hl_ratio"], limit, shown,
                    f"new path looks slower ({change}) but not significantly beyond the "
                    f"{lat['effective_tolerance']:.0%} tolerance{more}", conf)
    return Gate(name, "pass", lat["hl_ratio"], limit, shown,
                f"no latency regression beyond {lat['effective_tolerance']:.0%} ({change})",
                conf)


# -- other gates ----------------------------------------------------------------------------


def _min_samples(n: int, need: int) -> Gate:
    if n >= need:
        return Gate("min_samples", "pass", n, need, f"{n} samples (need ≥ {need})",
                    f"{n} paired samples, enough to judge")
    return Gate("min_samples", "inconclusive", n, need, f"{n} samples (need ≥ {need})",
                f"only {n} of the {need} samples needed; run `rollout shadow` for more",
                lacking=True)


def _mismatch(bad: int, compared: int, limit: float, noise: Mapping[str, Any],
              confidence: float) -> Gate:
    """Fails when the mismatch rate exceeds ``limit`` beyond what A/A noise explains: the
    upper end of the noise rate's Clopper-Pearson interval."""
    rate = bad / compared if compared else None
    noise_rate = noise.get("mismatch_rate")
    noise_upper = 0.0
    if noise_rate:
        n = noise["compared"]
        ci = stats.binomtest(round(noise_rate * n), n).proportion_ci(confidence)
        noise_upper = float(ci.high)
    shown = f"{bad} of {compared} ({(rate or 0) * 100:.2f} %)"
    if noise_rate:
        shown += f", A/A noise {noise_rate * 100:.2f} % (up to {noise_upper * 100:.2f} %)"
    if compared == 0 or rate is None:
        return Gate("max_mismatch_rate", "inconclusive", None, limit, "no comparable pairs",
                    "no pair where both paths succeeded, nothing compared", lacking=True)
    excess = rate - noise_upper
    if excess > limit:
        return Gate("max_mismatch_rate", "fail", rate, limit, f"{shown} > {limit:.2%}",
                    f"result sets differ in {shown} of compared executions")
    return Gate("max_mismatch_rate", "pass", rate, limit, f"{shown} ≤ {limit:.2%}",
                f"result sets match in {compared - bad} of {compared} executions"
                + (" (differences within A/A noise)" if bad else ""))


def _new_failures(new_only: NewFailures, limit: int,
                  by_class_limits: Mapping[str, int], executions: int = 0,
                  excused: int = 0) -> Gate:
    count = new_only.count
    aside = (f"; {excused} environment failure{'s' if excused != 1 else ''} of the new path "
             "not counted (the outage hit legacy too, or legacy did not run beside them)"
             if excused else "")
    extra = {"environment_excused": excused} if excused else {}
    classes = new_only.by_class
    over = {c: n for c, n in classes.items()
            if c in by_class_limits and n > by_class_limits[c]}
    detail = ", ".join(f"{c} {n}" for c, n in sorted(classes.items()))
    if count > limit or over:
        what = detail or str(count)
        state, message = new_only.most_common()
        said = f"{message} (SQLSTATE {state})" if state else message
        head = (f"the new path never succeeded: it failed in all {count} executions"
                if count == executions else
                f"new path failed in {count} executions where legacy succeeded")
        return Gate("max_new_failures", "fail", count, limit, f"{count} > {limit} ({what})",
                    f"{head} ({what}); most often: {said}{aside}",
                    details={"by_class": dict(classes),
                             "most_common_error": {"sqlstate": state, "message": message},
                             **extra})
    return Gate("max_new_failures", "pass", count, limit, f"{count} ≤ {limit}",
                ("no new failures" if count == 0 else f"{count} new failures ({detail}), "
                 "within limit") + aside, details={"by_class": dict(classes), **extra})


def first_line(error: str | None) -> str:
    text = (error or "").strip()
    return text.splitlines()[0][:200] if text else "no error message"


def _lock_wait(locks: Mapping[str, Any], limit_ms: float) -> Gate:
    legacy, new = locks["legacy"], locks["new"]
    if legacy["measured"] == 0 or new["measured"] == 0:
        return Gate("lock_wait", "info", None, limit_ms, "not measured",
                    "lock waits were not sampled for these observations")
    extra = new["mean_wait_ms"] - legacy["mean_wait_ms"]
    shown = (f"mean wait new {new['mean_wait_ms']:.2f} ms vs legacy "
             f"{legacy['mean_wait_ms']:.2f} ms ({extra:+.2f} ms)")
    if extra <= limit_ms:
        return Gate("lock_wait", "pass", extra, limit_ms, f"{shown} ≤ {limit_ms:g} ms",
                    "no lock-wait regression")
    # One long wait (someone else's lock held once) must not carry a NO-GO: the excess has
    # to hold with the new path's longest wait left out, and more than one execution waited.
    n = int(new["measured"])
    without = ((new["mean_wait_ms"] * n - new["max_wait_ms"]) / (n - 1)
               - legacy["mean_wait_ms"]) if n > 1 else None
    if int(new.get("waited", 0)) >= 2 and without is not None and without > limit_ms:
        return Gate("lock_wait", "fail", extra, limit_ms, f"{shown} > {limit_ms:g} ms",
                    f"new path waits {extra:.1f} ms longer for locks per execution "
                    f"({without:+.1f} ms without its longest wait)",
                    details={"without_longest_ms": without})
    rest = f"; without it {without:+.2f} ms" if without is not None else ""
    return Gate("lock_wait", "inconclusive", extra, limit_ms, f"{shown} > {limit_ms:g} ms",
                f"one execution's lock wait ({new['max_wait_ms']:.1f} ms) carries the "
                f"difference{rest}: not enough to call a regression; sample more",
                details={"without_longest_ms": without}, lacking=True)


def _rollback(flag: Flag, verification: Mapping[str, Any] | None) -> Gate:
    rb = flag.rollback
    if rb.none_reason:
        return Gate("rollback", "pass", "none", "verified script or reason",
                    "no schema change", f"no rollback script needed: {rb.none_reason}")
    if rb.script is None:
        return Gate("rollback", "inconclusive", None, "verified script", "missing",
                    "no rollback script: the flag names none (rollback.script, or "
                    "rollback.none with a reason)")
    if verification is None:
        return Gate("rollback", "inconclusive", rb.script_path, "verified script",
                    "not verified", f"rollback script {rb.script_path} has not been verified "
                    f"(`{shlex.join(['rollout', 'rollback', flag.name, '--verify'])}`)")
    if not verification.get("verified"):
        return Gate("rollback", "inconclusive", rb.script_path, "verified script",
                    "verification failed",
                    f"rollback script {rb.script_path} is {verification.get('status')}",
                    details={"differences": list(verification.get("differences") or [])})
    return Gate("rollback", "pass", rb.script_path, "verified script", "verified",
                f"rollback script {rb.script_path} verified in a scratch copy of the schema")
