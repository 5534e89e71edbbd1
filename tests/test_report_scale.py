"""Reports of large stages: the figures come from the database in bounded memory, and equal
the figures of the same observations held in memory (``verdict.Listed``, the oracle)."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from rollout.flags.model import Flag
from rollout.flags.workspace import Workspace
from rollout.judge import figures
from rollout.judge.summaries import PoolSignal
from rollout.judge.verdict import judge, judge_evidence
from rollout.report.build import _window, build_report
from rollout.store.observations import COLUMNS, Observation
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker
from tests.helpers import EQUIVALENT, table_checksums

LARGE = 200_000
MEMORY_BUDGET_MB = 120
"""Peak Python allocations (tracemalloc: numpy's buffers included) of one report of LARGE
online observations. The old report held ~1 kB per observation as Python objects."""


@pytest.fixture
def flag(make_workspace: WorkspaceMaker) -> Flag:
    return Workspace.load(make_workspace({"eq": EQUIVALENT})).flags["eq"]


@pytest.fixture
def store(db: str) -> Iterator[Store]:
    with psycopg.connect(db, autocommit=True) as conn:
        yield Store.open(conn)


def _copy_online(store: Store, flag: Flag, n: int, seed: int = 14) -> None:
    """``n`` online pairs, COPYed from numpy: log-normal latencies in whole 100 ns, 50
    tenants, 0.1 % new-path timeouts, 0.05 % legacy serialization failures, 0.2 %
    mismatches, over the last hours."""
    rng = np.random.default_rng(seed)
    legacy = np.round(rng.lognormal(13, 0.5, n), -2).astype(np.int64)
    new = np.round(legacy * rng.lognormal(0.03, 0.1, n), -2).astype(np.int64)
    new_failed = rng.random(n) < 0.001
    legacy_failed = rng.random(n) < 0.0005
    mismatch = rng.random(n) < 0.002
    start = datetime.now(UTC) - timedelta(seconds=n / 100)
    store.prepare_days({(start + timedelta(seconds=i)).date() for i in range(0, n // 100 + 2,
                                                                             3600)})
    cols = ("observed_at", "flag", "stage", "sql_hash", "tenant", "decision", "first_path",
            "params", "legacy_ns", "new_ns", "legacy_sqlstate", "new_sqlstate", "legacy_error",
            "new_error", "matched", "diff", "source", "mode", "served_ns")
    diff = json.dumps([{"kind": "row_count", "legacy": 3, "new": 2}])
    with store.conn.transaction(), store.conn.cursor() as cur, cur.copy(
            f"COPY rollout.observations ({', '.join(cols)}) FROM STDIN") as copy:
        for i in range(n):
            lf, nf = bool(legacy_failed[i]), bool(new_failed[i])
            copy.write_row((
                start + timedelta(microseconds=10_000 * i), flag.name, "pilot", flag.sql_hash,
                f"tenant-{i % 50}", "legacy", "legacy" if i % 2 else "new",
                json.dumps({"grp": i % 7}), int(legacy[i]), int(new[i]),
                "40001" if lf else None, "57014" if nf else None,
                "could not serialize access" if lf else None,
                "canceling statement due to statement timeout" if nf else None,
                None if lf or nf else not mismatch[i],
                diff if mismatch[i] and not (lf or nf) else None, "online", "ab",
                int(legacy[i]) + 20_000))


def test_a_stage_of_200k_online_observations_reports_within_the_memory_budget(
        store: Store, flag: Flag) -> None:
    _copy_online(store, flag, LARGE)
    tracemalloc.start()
    try:
        body = build_report(flag, "pilot", store, database="test")
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BUDGET_MB, f"peak {peak:.0f} MB"
    assert body["samples"] == LARGE
    assert body["environment"]["samples"] == {"ab": LARGE, "online": LARGE, "offline": 0}
    assert len(body["tenants"]) == 50 and sum(t["samples"] for t in body["tenants"]) == LARGE
    lat = body["latency"]
    assert lat["source"] == "online" and lat["pairs_measured"] == LARGE
    assert 1.01 < lat["hl_ratio"] < 1.05  # the synthetic 3 % shift
    new_failures = body["failures"]["new"]["by_sqlstate"]["57014"]
    assert new_failures >= body["failures"]["new_only"] > 100  # some hit legacy failures too
    assert body["mismatches"]["by_kind"] == {"row_count": body["mismatches"]["count"]}
    assert len(body["mismatches"]["samples"]) == 5


# -- the oracle: the same observations in memory ---------------------------------------------

SHUTDOWN = "terminating connection due to administrator command"


def _varied(flag: Flag, n: int = 3_000, seed: int = 7, run: uuid.UUID | None = None
            ) -> list[Observation]:
    """Offline and online observations with everything the figures look at: pairs and
    unpaired online rows, requests served alone, failures (with and without SQLSTATE, empty
    messages, multi-line ones), environment failures on either path or both, mismatches of
    several kinds, lock waits and locks, tenants (one of them None, one hostile)."""
    rng = np.random.default_rng(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    tenants = ["a", "b", "c'); DROP TABLE x; --", "ünï", None]
    out = []
    for i in range(n):
        at = start + timedelta(milliseconds=int(rng.integers(0, 40 * 60_000)))
        source = "online" if rng.random() < 0.5 else "offline"
        paired = source == "online" and rng.random() < 0.7
        served_only = source == "online" and not paired and rng.random() < 0.1
        legacy_ns: int | None = int(round(rng.lognormal(13, 0.5), -2))
        new_ns: int | None = int(round(rng.lognormal(13.05, 0.5), -2))
        l_state = n_state = l_err = n_err = None
        roll = rng.random()
        # an outage of both paths in minute 10, of the new path alone in minute 30
        minute = (at - start).total_seconds() / 60
        if 10 <= minute < 11 and roll < 0.5:
            l_state, l_err, n_state, n_err = "57P01", SHUTDOWN, "08006", "lost\nconnection"
        elif 30 <= minute < 31 and roll < 0.5:
            n_state, n_err = "08000", "pool timeout"
        elif roll < 0.02:
            n_state, n_err = "57014", "  canceling statement\ndue to timeout  "
        elif roll < 0.03:
            n_state, n_err = None, "client side"
        elif roll < 0.035:
            n_state, n_err = "23505", ""
        elif roll < 0.045:
            l_state, l_err = "40001", "could not serialize"
        if l_state or l_err is not None:
            legacy_ns = None if rng.random() < 0.5 else legacy_ns
        if n_state or n_err is not None:
            new_ns = None if rng.random() < 0.5 else new_ns
        failed = l_state or l_err is not None or n_state or n_err is not None
        matched = None if failed else bool(rng.random() > 0.05)
        diff = None if matched is not False else [
            {"kind": str(k)} for k in rng.choice(["row_count", "value", "order"],
                                                 size=int(rng.integers(1, 3)))]
        waits = source == "offline" and rng.random() < 0.8
        locks = {"legacy": {"held": [["items", "AccessShareLock"]], "waits": []},
                 "new": {"held": [["items", "AccessShareLock"], ["t2", "RowShareLock"]],
                         "waits": [{"mode": "ShareLock", "relation": None,
                                    "locktype": "transactionid"}]
                         if rng.random() < 0.1 else []}} if waits else None
        if served_only:
            legacy_ns, l_state, l_err, n_err, matched, diff = None, None, None, None, None, None
        out.append(Observation(
            observed_at=at, flag=flag.name, stage="pilot", sql_hash=flag.sql_hash,
            tenant=tenants[i % len(tenants)], decision="new" if served_only else "legacy",
            first_path=("legacy" if i % 2 else "new") if paired or source == "offline"
            else None, params={"grp": i % 7}, legacy_ns=legacy_ns, new_ns=new_ns,
            legacy_rows=3, new_rows=3, legacy_sqlstate=l_state, new_sqlstate=n_state,
            legacy_error=l_err, new_error=n_err, matched=matched, diff=diff,
            run_id=run if source == "offline" else None, source=source,
            legacy_lock_wait_ns=int(rng.integers(0, 3_000_000)) if waits else None,
            new_lock_wait_ns=int(rng.integers(0, 4_000_000)) if waits else None,
            locks=locks, served_ns=int(rng.integers(100_000, 900_000)) if source == "online"
            else None))
    noise = [Observation(**{**{c: getattr(o, c) for c in COLUMNS}, "mode": "aa",
                            "observed_at": o.observed_at + timedelta(microseconds=1)})
             for o in out[:400] if not o.served_only]
    return out + noise


def _both(store: Store, flag: Flag, signals: list[PoolSignal]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verdict body from the database and from the same rows in memory."""
    listed = store.observations(flag.name, "pilot", flag.sql_hash)
    noise = store.observations(flag.name, "pilot", flag.sql_hash, mode="aa")
    runs = store.runs(flag.name, "pilot", flag.sql_hash)
    oracle = judge(flag, listed, noise=noise, pool_signals=signals, runs=runs)
    with store.conn.transaction():
        evidence = figures.StoreEvidence(store.conn, flag, "pilot").load()
        evidence.pool_signals = signals
        found = judge_evidence(flag, evidence, runs=runs)
    return found, oracle


def test_figures_from_the_database_equal_the_figures_in_memory(store: Store, flag: Flag) -> None:
    run = store.start_run(flag=flag.name, stage="pilot", sql_hash=flag.sql_hash, tenants=[],
                          requested=None, target="test", server_version="18")
    rows = _varied(flag, run=run)  # the run never finished: its samples are counted
    store.write_observations(rows)
    found, oracle = _both(store, flag, [])
    assert found["samples"] == sum(not o.served_only for o in rows if o.mode == "ab")
    assert found["failures"]["environment"]["new"]["count"] > 0  # the outages are in
    assert found["locks"]["new"]["waited_on"]  # and the lock waits
    assert found["incomplete_runs"][0]["samples"] > 0
    assert found == oracle
    # key order too: what the renderers iterate over
    assert json.dumps(found, default=str) == json.dumps(oracle, default=str)


def test_the_environment_rule_gives_identical_counted_and_excused_failures(
        store: Store, flag: Flag) -> None:
    """At the window's edges (exactly 60 s, a microsecond beyond), with pool signals on
    the shadow pool: the same failures count and the same are excused."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    base = _varied(flag, 1)[0]

    def obs(t: datetime, legacy: str | None, new: str | None, **kw: Any) -> Observation:
        values = {c: getattr(base, c) for c in COLUMNS}
        values.update(observed_at=t, legacy_sqlstate=legacy, new_sqlstate=new,
                      legacy_error=legacy and "boom", new_error=new and "boom",
                      legacy_ns=None if legacy else 100_000, new_ns=None if new else 120_000,
                      matched=None, diff=None, mode="ab", **kw)
        return Observation(**values)

    second = timedelta(seconds=1)
    window = timedelta(seconds=60)
    micro = timedelta(microseconds=1)
    rows = [
        # legacy failed otherwise beside them: only the other rows can say it ran fine
        obs(at, "40001", "08006", source="offline"),  # legacy ok exactly 60 s later: counts
        obs(at + window, None, None, source="offline"),
        obs(at + 5 * window, "40001", "08006", source="offline"),  # ok 60 s + 1 µs later
        obs(at + 6 * window + micro, None, None, source="offline"),
        obs(at + 12 * window, "57P01", "57P01", source="offline"),  # both: excused
        obs(at + 12 * window + 10 * second, None, None, source="offline"),
        obs(at + 15 * window, None, "08000", source="online", served_ns=1, first_path="new"),
        obs(at + 15 * window + second, None, None, source="online", served_ns=1,
            first_path="new"),
        obs(at + 18 * window, None, "53300", source="online", served_ns=1, first_path="new"),
        obs(at + 18 * window + second, None, None, source="online", served_ns=1,
            first_path="new"),
    ]
    store.write_observations(rows)
    # the shadow pool lost connections 30 s after the second online failure: excused
    signals = [PoolSignal(at + 18 * window + 30 * second, "shadow", 2)]
    found, oracle = _both(store, flag, signals)
    assert found["failures"]["environment"] == oracle["failures"]["environment"]
    assert found["environment_events"] == oracle["environment_events"]
    assert found["sources"] == oracle["sources"]
    assert found == oracle
    env = {src: found["sources"][src]["failures"]["environment"] for src in found["sources"]}
    assert env == {"offline": {"legacy": {"count": 1, "counted": 0},
                               "new": {"count": 3, "counted": 1}},
                   "online": {"legacy": {"count": 0, "counted": 0},
                              "new": {"count": 2, "counted": 1}}}


def test_the_served_window_from_sql_equals_the_one_from_observations(
        store: Store, flag: Flag) -> None:
    rows = [o for o in _varied(flag, 2_000) if o.source == "online"]
    store.write_observations(rows)
    start = min(o.observed_at for o in rows)
    end = max(o.observed_at for o in rows) + timedelta(seconds=1)
    listed = store.online_window(flag.name, "pilot", start, end)
    assert figures.served_window(store.conn, flag.name, "pilot", start, end) == _window(listed)


def test_order_statistics_interpolate_exactly_as_numpy(store: Store, flag: Flag) -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 20, 101, 1_000):
        values = rng.integers(0, 10**9, n)
        store.conn.execute("DELETE FROM rollout.observations")
        store.write_observations([
            Observation(datetime.now(UTC), flag.name, "pilot", flag.sql_hash, None, "legacy",
                        "legacy", None, 1, 1, 1, 1, None, None, None, None, True, None,
                        legacy_lock_wait_ns=int(v)) for v in values])
        qs = [0.0, 0.5, 0.9, 0.95, 0.99, 1.0]
        got = figures.quantiles(store.conn, "legacy_lock_wait_ns", "flag = %(flag)s",
                                {"flag": flag.name}, n, qs)
        assert list(got) == list(np.quantile(values, qs))


def test_an_enormous_stage_is_announced_before_it_is_read(
        store: Store, flag: Flag, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _copy_online(store, flag, 2_000)
    store.conn.execute("ANALYZE rollout.observations")
    monkeypatch.setattr(figures, "ENORMOUS", 1_000)
    build_report(flag, "pilot", store, database="test")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("report: eq / pilot: about ")
    assert "observations to read; the report takes about" in err[0]
    monkeypatch.setattr(figures, "ENORMOUS", 10_000)
    build_report(flag, "pilot", store, database="test")
    assert capsys.readouterr().err == ""  # not a TTY: no progress either


def test_hostile_names_and_messages_reach_sql_as_data(store: Store, flag: Flag,
                                                      db: str) -> None:
    """Tenants, errors and diff kinds holding quotes, percent signs and placeholders are
    data in every query: the figures equal the oracle and nothing else changes."""
    base = _varied(flag, 1)[0]
    nasty = ["%(flag)s", "'; DROP TABLE rollout.observations; --", "%s %% \\", "\x01"]
    rows = [Observation(**{**{c: getattr(base, c) for c in COLUMNS},
                           "observed_at": base.observed_at + timedelta(seconds=i),
                           "tenant": nasty[i % 4], "matched": False, "new_sqlstate": None,
                           "diff": [{"kind": nasty[(i + 1) % 4]}], "legacy_sqlstate": None,
                           "legacy_error": None, "new_error": None, "mode": "ab"})
            for i in range(40)]
    store.write_observations(rows)
    before = table_checksums(db)
    found, oracle = _both(store, flag, [])
    assert found == oracle
    assert set(found["mismatches"]["by_kind"]) == set(nasty)
    assert table_checksums(db) == before


def test_large_figures_stay_exact_where_the_old_ones_were_exact(store: Store,
                                                                flag: Flag) -> None:
    """A stage just small enough for everything exact: the database's figures and the
    in-memory ones are the same numbers, latency included."""
    _copy_online(store, flag, 20_000, seed=3)
    found, oracle = _both(store, flag, [])
    assert found["latency"] == oracle["latency"]
    assert found["tenants"] == oracle["tenants"]
    assert found == oracle
