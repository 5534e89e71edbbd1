"""The watcher's sequential tests, simulated: 100 A/A stages watched for a day at one-minute
intervals stay below the false-alarm bound, regressions abort within a bounded number of
intervals, and an outage never aborts. Pure and seeded (no database)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import pytest

from rollout.flags.model import Analysis, CompareRules, Flag, Gates, LatencyGate, Query, Rollback
from rollout.flags.targeting import Stage, Target
from rollout.judge.sequential import (
    MIN_PAIRS,
    Moments,
    latency_test,
    log_lr_latency,
    log_lr_mismatch,
    mismatch_test,
    noise_upper,
)
from rollout.judge.verdict import judge
from rollout.store.observations import Observation
from rollout.watch.loop import Evidence, History, assess

STAGES = 100
INTERVALS = 24 * 60  # a day of one-minute intervals
PAIRS = 30  # paired online executions per interval
SIGMA = 0.3  # sd of ln(new) - ln(legacy) within a pair
CONFIDENCE = 0.98
ALPHA = 1 - CONFIDENCE
TOLERANCE = 0.10


def make_flag(max_mismatch_rate: float = 0.0) -> Flag:
    return Flag(
        name="sim", description="", owner="", kind="read",
        legacy=Query("SELECT 1", "inline"), new=Query("SELECT 1", "inline"),
        sample_sql=None, tenants_sql=None, compare=CompareRules(),
        stages=(Stage("canary", Target(all_tenants=True), None),
                Stage("full", Target(all_tenants=True), None)),
        gates=Gates(min_samples=50, max_mismatch_rate=max_mismatch_rate,
                    latency=LatencyGate(0.95, TOLERANCE, CONFIDENCE)),
        rollback=Rollback(none_reason="simulation"), file="flags/sim.yaml")


def ln_differences(rng: np.random.Generator, shift: float) -> np.ndarray:
    """(stages, intervals, pairs) of ln(new) − ln(legacy): normal within a pair, with 5 %
    outliers three times as wide (a pause, a lock wait, a cold cache on one side)."""
    noise = rng.normal(0.0, SIGMA, (STAGES, INTERVALS, PAIRS))
    wide = rng.random((STAGES, INTERVALS, PAIRS)) < 0.05
    noise[wide] *= 3.0
    return shift + noise


def first_latency_rejection(d: np.ndarray) -> np.ndarray:
    """For each stage, the first interval whose look rejects (−1: never), with the same
    statistic ``latency_test`` computes one look at a time."""
    n = np.arange(1, INTERVALS + 1) * PAIRS
    total = d.sum(axis=2).cumsum(axis=1)
    squares = (d * d).sum(axis=2).cumsum(axis=1)
    mean = total / n
    var = (squares - total * total / n) / (n - 1)
    log_lr = log_lr_latency(n, mean, var, math.log1p(TOLERANCE))
    rejected = (log_lr >= math.log(1 / ALPHA)) & (n >= MIN_PAIRS)
    return np.where(rejected.any(axis=1), rejected.argmax(axis=1), -1)


@cache
def upper(k: int, n: int) -> float:
    """The A/A noise bound the watcher uses at level alpha/2 (the same counts recur across
    stages: computed once)."""
    return noise_upper(k, n, ALPHA / 2)


def first_mismatch_rejection(ab: np.ndarray, aa: np.ndarray | None) -> np.ndarray:
    """The same for mismatches: ``ab``, ``aa`` are (stages, intervals) mismatch counts out
    of ``PAIRS`` comparisons each."""
    out = np.full(STAGES, -1)
    n = np.arange(1, INTERVALS + 1) * PAIRS
    k = ab.cumsum(axis=1)
    for s in range(STAGES):
        if aa is None:
            p0 = np.zeros(INTERVALS)
            level = ALPHA
        else:
            ka = aa[s].cumsum()
            p0 = np.array([upper(int(ka[t]), int(n[t])) for t in range(INTERVALS)])
            level = ALPHA / 2
        log_lr = log_lr_mismatch(k[s], n, p0)
        hits = np.flatnonzero(log_lr >= math.log(1 / level))
        if hits.size:
            out[s] = hits[0]
    return out


def watch_with_assess(flag: Flag, analysis: Analysis, d: np.ndarray, ab: np.ndarray,
                      aa: np.ndarray | None) -> int:
    """One stage watched interval by interval through ``watch.assess`` itself: the
    interval (0-based) it aborts at, or −1."""
    history = History()
    values = Moments()
    for t in range(INTERVALS):
        chunk = d[t]
        values = Moments(values.n + chunk.size, values.total + float(chunk.sum()),
                         values.squares + float((chunk * chunk).sum()))
        n = (t + 1) * PAIRS
        evidence = Evidence(values, (int(ab[: t + 1].sum()), n),
                            (int(aa[: t + 1].sum()), n) if aa is not None else (0, 0))
        result = assess(flag, analysis, evidence, None, history, timedelta(minutes=t + 1),
                        last_stage=False)
        history = result.history
        if result.decision == "abort":
            return t
    return -1


def test_a_day_of_a_a_stages_stays_below_the_false_alarm_bound() -> None:
    """100 A/A stages (the new path is the old one), judged every minute for a day:
    at most 2 false aborts, for latency and for mismatches with A/A noise. At the null's
    boundary itself (new exactly 10 % slower, the tolerance) the rate stays near alpha."""
    rng = np.random.default_rng(20240518)
    same = first_latency_rejection(ln_differences(rng, 0.0))
    boundary = first_latency_rejection(ln_differences(rng, math.log1p(TOLERANCE)))
    noise = 0.002  # non-deterministic rows: both A/B and A/A mismatch at 0.2 %
    ab = rng.binomial(PAIRS, noise, (STAGES, INTERVALS))
    aa = rng.binomial(PAIRS, noise, (STAGES, INTERVALS))
    mismatch = first_mismatch_rejection(ab, aa)
    clean = first_mismatch_rejection(np.zeros((STAGES, INTERVALS), dtype=int), None)
    false_aborts = int(((same >= 0) | (mismatch >= 0) | (clean >= 0)).sum())
    print(f"\nA/A, {STAGES} stages x {INTERVALS} one-minute looks x {PAIRS} pairs: "
          f"latency {int((same >= 0).sum())}, mismatch with 0.2 % A/A noise "
          f"{int((mismatch >= 0).sum())}, deterministic {int((clean >= 0).sum())} "
          f"-> {false_aborts} false aborts; at the tolerance boundary (10 % slower) "
          f"{int((boundary >= 0).sum())} of {STAGES} (alpha {ALPHA:.0%})")
    assert false_aborts <= 2
    assert (boundary >= 0).sum() <= 5  # alpha 2 % of 100, with room for sampling


def test_a_fixed_test_looked_at_every_minute_would_not_have_held() -> None:
    """The reason for the sequential test: the fixed-sample z-test at the same alpha,
    re-run at every look of the boundary case, rejects far more often (the test of the
    test: the simulation can tell a biased watcher from a valid one)."""
    rng = np.random.default_rng(7)
    d = ln_differences(rng, math.log1p(TOLERANCE))
    n = np.arange(1, INTERVALS + 1) * PAIRS
    total = d.sum(axis=2).cumsum(axis=1)
    squares = (d * d).sum(axis=2).cumsum(axis=1)
    mean = total / n
    sd = np.sqrt((squares - total * total / n) / (n - 1))
    z = (mean - math.log1p(TOLERANCE)) / (sd / np.sqrt(n))
    peeking = int((z >= 2.054).any(axis=1).sum())  # one-sided 98 %
    valid = int((first_latency_rejection(d) >= 0).sum())
    print(f"\nboundary case, repeated fixed test: {peeking} of {STAGES} false alarms; "
          f"sequential: {valid}")
    assert peeking >= 10 and valid <= 3


@pytest.mark.parametrize("analysis", [Analysis(), Analysis(failure_limit=2)])
def test_regressions_abort_within_a_bounded_number_of_intervals(analysis: Analysis) -> None:
    """A new path 30 % slower, or one result in a hundred wrong: every stage aborts, within
    a bound printed here; the vectorised look agrees with ``assess`` stage by stage."""
    rng = np.random.default_rng(11)
    flag = make_flag()
    slow = ln_differences(rng, math.log(1.30))
    slow_at = first_latency_rejection(slow) + analysis.failure_limit
    wrong_ab = rng.binomial(PAIRS, 0.01, (STAGES, INTERVALS))
    zero = np.zeros((STAGES, INTERVALS), dtype=int)
    wrong_at = first_mismatch_rejection(wrong_ab, zero) + analysis.failure_limit
    bare_at = first_mismatch_rejection(wrong_ab, None) + analysis.failure_limit
    print(f"\nfailure_limit {analysis.failure_limit}: 30 % slower aborts after at most "
          f"{slow_at.max() + 1} intervals (median {np.median(slow_at) + 1:g}); 1 % mismatches "
          f"with clean online A/A after at most {wrong_at.max() + 1} (median "
          f"{np.median(wrong_at) + 1:g}); without A/A rows after at most {bare_at.max() + 1}")
    assert (slow_at >= analysis.failure_limit).all() and slow_at.max() < 15
    assert (wrong_at >= analysis.failure_limit).all() and wrong_at.max() < 240
    assert (bare_at >= analysis.failure_limit).all() and bare_at.max() < 30
    fine = ln_differences(rng, 0.0)
    for s in range(3):  # the real decision code, interval by interval, on a few stages
        assert watch_with_assess(flag, analysis, slow[s], zero[s], zero[s]) == slow_at[s]
        assert watch_with_assess(flag, analysis, fine[s], wrong_ab[s], zero[s]) == wrong_at[s]


def test_the_mismatch_statistic_falls_as_the_noise_allowance_rises() -> None:
    """What makes the A/A allowance valid: ln Λ never rises with p0."""
    for k, n in ((0, 100), (3, 1000), (40, 2000), (500, 1000)):
        values = log_lr_mismatch(k, n, np.linspace(1e-6, 0.45, 400))
        assert np.all(np.diff(values) <= 1e-9), (k, n)


def test_one_look_of_each_test() -> None:
    assert latency_test(Moments.of([0.3] * 10), TOLERANCE).p_value == 1.0  # too few pairs
    slow = latency_test(Moments.of(np.random.default_rng(1).normal(0.4, 0.2, 200)), TOLERANCE)
    assert slow.p_value < 1e-6 and slow.estimate is not None and slow.estimate > 0.3
    fast = latency_test(Moments.of(np.random.default_rng(1).normal(-0.4, 0.2, 200)),
                        TOLERANCE)
    assert fast.p_value == 1.0  # one-sided: a faster new path never rejects
    test, level = mismatch_test(1, 1000, 0.0, ALPHA)
    assert test.p_value == 0.0 and level == ALPHA  # a mismatch beyond a zero limit
    test, level = mismatch_test(1, 1000, 0.0, ALPHA, noise=(2, 1000))
    assert test.p_value == 1.0 and level == ALPHA / 2  # explained by the A/A noise
    assert noise_upper(0, 0, 0.01) == 1.0
    assert 0 < noise_upper(0, 10_000, 0.01) < 0.001


def outage(start: datetime, legacy_too: bool) -> list[Observation]:
    """A minute of online pairs around a server restart (57P01 on the new path; on both
    paths with ``legacy_too``), then pairs that work."""
    rows = []
    for i in range(120):
        at = start + timedelta(seconds=i)
        down = 20 <= i < 80
        rows.append(Observation(
            observed_at=at, flag="sim", stage="canary", sql_hash="x", tenant="acme",
            decision="shadow", first_path="legacy", params={}, legacy_ns=None
            if down and legacy_too else 1_000_000 + i, new_ns=None if down else 1_000_000 + i,
            legacy_rows=1, new_rows=1,
            legacy_sqlstate="57P01" if down and legacy_too else None,
            new_sqlstate="57P01" if down else None,
            legacy_error="terminating connection" if down and legacy_too else None,
            new_error="terminating connection" if down else None,
            matched=None if down else True, diff=None, source="online", served_ns=900_000))
    return rows


def test_an_outage_that_hits_both_paths_never_aborts() -> None:
    """A restart: both paths fail with 57P01 for a minute. The window's failures gate
    excuses them, the sequential statistics never see them: the interval continues."""
    flag = make_flag()
    rows = outage(datetime(2024, 5, 18, 3, 0, tzinfo=UTC), legacy_too=True)
    core = judge(flag, rows)
    failures = next(g for g in core["gates"] if g["name"] == "max_new_failures")
    assert failures["status"] == "pass", failures
    ok = [o for o in rows if o.legacy_ns and o.new_ns]
    d = [math.log(o.new_ns / o.legacy_ns) for o in ok if o.new_ns and o.legacy_ns]
    evidence = Evidence(Moments.of(d), (0, len(ok)), (0, 0))
    history = History()
    for minute in range(1, 6):
        result = assess(flag, Analysis(), evidence, core, history,
                        timedelta(minutes=minute), last_stage=False)
        history = result.history
        assert result.decision == "continue" and not result.failed, result.reasons
    # the rule's other side: the same failures on the new path alone (legacy fine
    # beside them) are the new path's, and abort
    alone = judge(flag, outage(datetime(2024, 5, 18, 3, 0, tzinfo=UTC), legacy_too=False))
    result = assess(flag, Analysis(), evidence, alone, History(), timedelta(minutes=1), False)
    assert result.decision == "abort" and result.failed == ["max_new_failures"]
