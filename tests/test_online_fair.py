"""Online latency judged fairly: pairs measured like for like on the shadow pool, online and
offline evidence judged apart, online A/A noise, and the runner's default shadow budget."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout import Context, Rollout
from rollout.commands import Session, flag_set
from rollout.online._admission import BUDGET_BURST_S, SHADOW_BUDGET, Budget
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import PATIENT, run_cli, table_checksums

TENANT = "%(tenant)s"
# A little CPU and a little waiting, the same for both spellings: equivalent paths.
WORK = "(SELECT count(*) FROM generate_series(1, 3000)) > 0"
SAME_LEGACY = (f"SELECT id, val FROM items, pg_sleep(0.002) WHERE tenant = {TENANT}"
               f" AND grp = %(grp)s AND {WORK} ORDER BY id")
SAME_NEW = (f"SELECT i.id, i.val FROM items i, pg_sleep(0.002) WHERE i.tenant = {TENANT}"
            f" AND i.grp = %(grp)s AND {WORK} ORDER BY i.id")
# The new path 30 % slower: 13 ms of waiting against 10 ms.
SLOW_LEGACY = ("SELECT id, val FROM items, pg_sleep(0.010) WHERE tenant = %(tenant)s"
               " AND grp = %(grp)s ORDER BY id")
SLOW_NEW = ("SELECT id, val FROM items, pg_sleep(0.013) WHERE tenant = %(tenant)s"
            " AND grp = %(grp)s ORDER BY id")
# Slow only for groups no offline sample draws (params.sample reads the table's groups).
# An initplan sleeps once per execution, also when no row matches (groups past 100 hold
# none).
ONLINE_ONLY_SLOW = ("SELECT id, val FROM items WHERE (SELECT true FROM pg_sleep(CASE WHEN"
                    " %(grp)s::int > 100 THEN 0.012 ELSE 0 END)) AND tenant = %(tenant)s"
                    " AND grp = %(grp)s ORDER BY id")
FAST_LEGACY = ("SELECT id, val FROM items WHERE (SELECT true FROM pg_sleep(CASE WHEN"
               " %(grp)s::int > 100 THEN 0.004 ELSE 0 END)) AND tenant = %(tenant)s"
               " AND grp = %(grp)s ORDER BY id")
# Three of a tenant's rows in random order: a served result and its re-run differ often.
SHUFFLED = "SELECT id FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY random()"


def strict(name: str, legacy: str, new: str, *, extra: str = PATIENT,
           min_samples: int = 40) -> str:
    """A flag whose latency gate judges a 10 % regression at 95 % confidence."""
    return flag_yaml(name, legacy, new, min_samples=min_samples, extra=extra).replace(
        "latency: {quantile: 0.95, max_regression: 5.0, confidence: 0.98}",
        "latency: {quantile: 0.95, max_regression: 0.1, confidence: 0.95}")


def start(shop: str, root: Path, *names: str) -> None:
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in names:
        flag_set(session, name, "pilot", actor="test", reason="online")


def load(ro: Rollout, flag: str, requests: int, threads: int, groups: range) -> None:
    """``requests`` served requests from ``threads`` callers at once."""
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            for i in range(k, requests, threads):
                ro.query(flag, Context(tenant="acme"), {"grp": groups[i % len(groups)]})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors, errors


def report(capsys: pytest.CaptureFixture[str], root: Path, dsn: str, flag: str
           ) -> tuple[int, dict[str, Any]]:
    r = run_cli(capsys, "report", flag, "--workspace", root, "--dsn", dsn)
    assert r.code in (0, 1, 3), r.err
    return r.code, json.loads((root / "reports" / flag / "pilot.json").read_text())


def gate(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in body["gates"] if g["name"] == name)


def pairs(dsn: str, flag: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT first_path, served_ns, legacy_ns, new_ns, mode FROM rollout.observations"
            " WHERE flag = %s ORDER BY id", [flag]).fetchall()


def test_equivalent_paths_under_load_come_out_equal_online(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Eight callers at once on the request pool, two shadow workers: the served legacy
    latency (queued behind the load) never meets the new path's; both paths of each pair
    run one after the other on a shadow connection, in random order."""
    root = make_workspace({"same": strict("same", SAME_LEGACY, SAME_NEW)})
    start(shop, root, "same")
    before = table_checksums(shop)
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000,
                         pool_stats_interval=None) as ro:
        load(ro, "same", 240, 8, range(1, 11))
        assert ro.drain(timeout=60)
    assert table_checksums(shop) == before
    rows = [r for r in pairs(shop, "same") if r[4] == "ab"]
    assert len(rows) == 240
    assert all(r[1] is not None and r[2] is not None and r[3] is not None for r in rows)
    firsts = [r[0] for r in rows]
    assert 0.3 < firsts.count("new") / len(firsts) < 0.7  # random order, both ways
    code, body = report(capsys, root, shop, "same")
    assert list(body["sources"]) == ["online"]
    lat = body["sources"]["online"]["latency"]
    assert lat["pairs_measured"] == 240
    assert 0.9 <= lat["hl_ratio"] <= 1.1, lat
    assert body["latency"]["source"] == "online"
    assert gate(body, "latency")["status"] == "pass"
    assert gate(body, "latency")["details"]["decided_by"] == ["online"]
    assert body["verdict"] == "GO" and code == 0


def test_a_new_path_30_percent_slower_is_caught_online(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"slow": strict("slow", SLOW_LEGACY, SLOW_NEW)})
    start(shop, root, "slow")
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000,
                         pool_stats_interval=None) as ro:
        load(ro, "slow", 120, 4, range(1, 11))
        assert ro.drain(timeout=60)
    code, body = report(capsys, root, shop, "slow")
    g = gate(body, "latency")
    assert g["status"] == "fail", g
    assert g["details"]["decided_by"] == ["online"]
    assert 1.2 < body["sources"]["online"]["latency"]["hl_ratio"] < 1.45
    assert body["verdict"] == "NO-GO" and code == 1
    assert any("slower" in r for r in body["reasons"])


def test_offline_and_online_evidence_are_judged_apart(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline runs sample the table's groups and find the paths equal; the service asks
    for groups where the new path sleeps three times longer. Pooled, the offline pairs would
    dilute it; apart, the online evidence fails the gate and says it decided."""
    root = make_workspace({"split": strict("split", FAST_LEGACY, ONLINE_ONLY_SLOW)})
    start(shop, root, "split")
    r = run_cli(capsys, "shadow", "split", "--samples", "200", "--seed", "1", "--workspace",
                root, "--dsn", shop)
    assert r.code == 0, r.err
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000,
                         pool_stats_interval=None) as ro:
        load(ro, "split", 30, 2, range(101, 111))
        assert ro.drain(timeout=60)
    code, body = report(capsys, root, shop, "split")
    assert set(body["sources"]) == {"offline", "online"}
    assert body["sources"]["offline"]["samples"] == 200
    assert body["sources"]["online"]["samples"] == 30
    offline = next(g for g in body["sources"]["offline"]["gates"] if g["name"] == "latency")
    online = next(g for g in body["sources"]["online"]["gates"] if g["name"] == "latency")
    assert offline["status"] == "pass" and online["status"] == "fail"
    g = gate(body, "latency")
    assert g["status"] == "fail"
    assert g["details"]["decided_by"] == ["online"]
    assert set(g["details"]["by_source"]) == {"offline", "online"}
    assert g["reason"].startswith("online: ")
    assert body["latency"]["source"] == "online"
    assert body["verdict"] == "NO-GO" and code == 1
    # min_samples: online alone has too few, offline enough: the offline pass decides
    samples = gate(body, "min_samples")
    assert samples["status"] == "pass" and samples["details"]["decided_by"] == ["offline"]


def test_unpaired_online_latency_is_never_judged(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """``online.pair_latency: false``: the served execution is one side of the pair, so the
    report refuses to judge latency from it (served on one pool, shadowed on another)."""
    root = make_workspace({"solo": strict(
        "solo", SLOW_LEGACY, SLOW_LEGACY + " ", extra=PATIENT + "  pair_latency: false\n")})
    start(shop, root, "solo")
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000,
                         pool_stats_interval=None) as ro:
        load(ro, "solo", 50, 2, range(1, 11))
        assert ro.drain(timeout=60)
    rows = pairs(shop, "solo")
    assert len(rows) == 50 and all(r[0] is None and r[1] is not None and r[4] == "ab"
                                   for r in rows)
    code, body = report(capsys, root, shop, "solo")
    g = gate(body, "latency")
    assert g["status"] == "inconclusive"
    assert "not judged" in g["reason"] and "pair_latency" in g["reason"]
    assert body["verdict"] == "INCONCLUSIVE" and code == 3


def test_online_aa_measures_the_noise_of_a_query_that_is_not_deterministic(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"shuf": strict("shuf", SHUFFLED, SHUFFLED + " ")})
    start(shop, root, "shuf")
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000,
                         pool_stats_interval=None) as ro:
        load(ro, "shuf", 60, 2, range(1, 11))
        assert ro.drain(timeout=60)
    rows = pairs(shop, "shuf")
    aa = [r for r in rows if r[4] == "aa"]
    assert len(aa) == 60 and all(r[2] is None and r[3] is None for r in aa)
    _, body = report(capsys, root, shop, "shuf")
    noise = body["sources"]["online"]["noise"]
    assert noise["compared"] == 60
    assert noise["mismatch_rate"] > 0.3  # most shuffles of three rows differ
    assert body["noise"]["mismatch_rate"] == noise["mismatch_rate"]


# -- the shadow budget --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_admits_its_share_of_wall_time_and_settles_measured_cost() -> None:
    clock = Clock()
    b = Budget(0.1, clock)
    first = b.admit()
    assert first == 0.0
    assert b.admit() is None  # the first job's cost is not known yet: one at a time
    b.spend(first, 0.02)  # it cost 20 ms
    admitted = 0
    while b.admit() is not None:
        admitted += 1
    # the bucket held 0.1 s - 0.02 s: four more 20 ms jobs, the last one into debt
    assert admitted == 4
    clock.now += 1.0  # a second later, 0.1 s more to spend... minus the debt
    more = 0
    while b.admit() is not None:
        more += 1
    assert 1 <= more <= 5
    snap = b.snapshot()
    assert snap["share"] == 0.1 and math.isclose(snap["job_cost_ms"], 20.0)


def test_refunds_give_back_what_a_dropped_job_was_charged() -> None:
    clock = Clock()
    b = Budget(0.05, clock)
    b.spend(b.admit() or 0.0, 0.01)
    charges = []
    while (c := b.admit()) is not None:
        charges.append(c)
    for c in charges:
        b.refund(c)
    assert b.admit() is not None  # room again, with no time passing


@pytest.mark.parametrize("share", [0, -0.5, float("nan"), 65.0])
def test_a_budget_that_is_not_a_share_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="shadow_budget"):
        Budget(share)


def test_the_default_budget_bounds_background_work_under_load(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """Default settings, callers as fast as they can: the runner sheds what would exceed
    5 % of wall time (by each job's measured cost), and says so in get_stats()."""
    root = make_workspace({"same": strict("same", SAME_LEGACY, SAME_NEW)})
    start(shop, root, "same")
    with Rollout.connect(shop, workspace=root, pool_stats_interval=None) as ro:
        load(ro, "same", 400, 4, range(1, 11))
        assert ro.drain(timeout=60)
        stats = ro.get_stats()
    budget = stats.budget
    assert budget["share"] == SHADOW_BUDGET
    assert stats.dropped_budget > 0
    assert stats.shadowed == budget["jobs"] > 0
    assert stats.shadowed + stats.dropped_budget == stats.decisions["shadow"] == 400
    # what it spent stays within its share of the time it ran, the bucket and one job
    cost = budget["job_cost_ms"] / 1000
    elapsed = budget["spent_s"] / budget["used_share"]
    assert budget["spent_s"] <= SHADOW_BUDGET * (elapsed + BUDGET_BURST_S) + 2 * cost


def test_a_bad_budget_fails_before_any_pool_opens(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    root = make_workspace({"same": strict("same", SAME_LEGACY, SAME_NEW)})

    def runners() -> int:
        with psycopg.connect(shop) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name"
                               " LIKE 'pg-rollout-%'").fetchone()
        return int(row[0]) if row else 0

    idle = runners()
    with pytest.raises(ValueError, match="shadow_budget"):
        Rollout.connect(shop, workspace=root, shadow_budget=0.0)
    assert runners() == idle


def test_pair_latency_must_be_a_boolean(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"bad": strict("bad", SAME_LEGACY, SAME_NEW,
                                         extra="online:\n  pair_latency: sometimes\n")})
    r = run_cli(capsys, "check", "--workspace", root)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "online.pair_latency" in lines[0] and "bad.yaml" in lines[0]
    assert "Traceback" not in r.err


def test_running_the_served_path_again_never_writes_twice(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """Pairing re-runs the served path in the background: for a write flag's callables that
    re-run is rolled back like the shadow, so each request writes exactly once."""
    root = make_workspace({"bump": flag_yaml(
        "bump", "UPDATE items SET val = val + 1 WHERE tenant = %(tenant)s AND grp = %(grp)s",
        "UPDATE items SET val = val + 1 WHERE grp = %(grp)s AND tenant = %(tenant)s",
        kind="write", extra=PATIENT)})
    start(shop, root, "bump")
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("CREATE TABLE requests_log (n int, path text)")

    def writer(path: str) -> Any:
        def write(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                conn.execute("INSERT INTO requests_log VALUES (1, %s)", [path])
                conn.execute("UPDATE items SET val = val + 1 WHERE tenant = 'acme'")
            return 1
        return write

    with psycopg.connect(shop) as conn:
        acme_before = conn.execute("SELECT sum(val) FROM items WHERE tenant = 'acme'"
                                   ).fetchone()
    with Rollout.connect(shop, workspace=root, shadow_budget=None, queue_size=10_000,
                         pool_stats_interval=None) as ro:
        for _ in range(30):
            assert ro.run("bump", Context(tenant="acme"), legacy=writer("legacy"),
                          new=writer("new")) == 1
        assert ro.drain(timeout=60)
        stats = ro.get_stats()
    # a background write may wait on a served one's row locks: lock_timeout, never a hang
    assert stats.shadowed == 30 and set(stats.background_failures) <= {"55P03"}
    with psycopg.connect(shop) as conn:
        logged = conn.execute("SELECT path, count(*) FROM requests_log GROUP BY 1").fetchall()
        acme_after = conn.execute("SELECT sum(val), count(*) FROM items WHERE tenant = 'acme'"
                                  ).fetchone()
        ran = conn.execute("SELECT count(*) FROM rollout.observations WHERE flag = 'bump'"
                           " AND mode = 'ab' AND first_path IS NOT NULL").fetchone()
    assert logged == [("legacy", 30)]  # the served writes, once each; no re-run persisted
    assert acme_before is not None and acme_after is not None
    assert acme_after[0] == acme_before[0] + 30 * acme_after[1]
    assert ran == (30,)  # and every request's pair ran both paths in the background


# -- the request pool's session reset at checkout ------------------------------------------

STICKY_SERVED = ("SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
                 " AND set_config('work_mem', '77kB', false) IS NOT NULL"
                 " AND pg_advisory_lock(4242) IS NOT NULL ORDER BY id")


def session_state(conn: Any) -> tuple[Any, ...]:
    return (conn.execute("SHOW work_mem").fetchone()[0],
            conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                         " AND pid = pg_backend_pid()").fetchone()[0])


def test_no_session_state_reaches_the_next_request_on_the_request_pool(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """One request connection: a served query and a run() callable that change a session
    setting and take a session advisory lock leave neither to the next request, whether the
    served query ended normally or failed."""
    root = make_workspace({"sticky": strict("sticky", STICKY_SERVED, STICKY_SERVED + " ")})
    start(shop, root, "sticky")
    with psycopg.connect(shop) as conn:
        default = conn.execute("SHOW work_mem").fetchone()[0]  # type: ignore[index]

    def dirty(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SELECT set_config('work_mem', '88kB', false),"
                     " pg_advisory_lock(4243)")
        conn.commit()
        return 1

    def seen(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        state = session_state(conn)
        conn.commit()
        return state

    acme = Context(tenant="acme")
    with Rollout.connect(shop, workspace=root, shadow_budget=None, pool_size=1,
                         pool_stats_interval=None) as ro:
        ro.query("sticky", acme, {"grp": 1})
        assert ro.run("sticky", acme, legacy=seen, new=seen) == (default, 0)
        ro.run("sticky", acme, legacy=dirty, new=dirty)
        assert ro.run("sticky", acme, legacy=seen, new=seen) == (default, 0)
        with pytest.raises(psycopg.Error):  # a served query that fails
            ro.query("sticky", acme, {"grp": "not a number"})
        assert ro.run("sticky", acme, legacy=seen, new=seen) == (default, 0)
        assert ro.drain(timeout=60)
