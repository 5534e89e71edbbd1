"""OpenTelemetry metrics of the runners: each instrument, read with the SDK's in-memory reader
after real queries, agrees with what the runner counted and the store recorded."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.metrics import CallbackT, Meter, MeterProvider, NoOpMeter
from opentelemetry.metrics import Counter as OtelCounter
from opentelemetry.metrics import Histogram as OtelHistogram
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from rollout import AsyncRollout, Context, Rollout
from rollout.commands import Session, flag_set
from rollout.online.otel import operation_name, sqlstate_class
from tests.conftest import REPO, WorkspaceMaker, flag_yaml
from tests.helpers import LEGACY, PATIENT, table_checksums, wait_for

# the new path locks a row a test holds: lock_timeout (55P03), a lock-wait incident
LOCKING = flag_yaml("locking", "UPDATE items SET val = val WHERE id = -1 RETURNING id",
                    "UPDATE items SET val = val WHERE id = 1 RETURNING id", kind="write",
                    extra=PATIENT)
FLAGS = {
    "eq": flag_yaml("eq", LEGACY, LEGACY.replace("ORDER BY id", "ORDER BY 1"), extra=PATIENT),
    "wrong": flag_yaml("wrong", LEGACY, LEGACY.replace("ORDER BY id", "AND val > 0 ORDER BY id"),
                       extra=PATIENT),
    "boom": flag_yaml("boom", LEGACY, "SELECT id, val / 0 AS val FROM items WHERE grp = %(grp)s",
                      extra=PATIENT),
    "broken": flag_yaml("broken", "SELECT id, val / 0 FROM items WHERE tenant = %(tenant)s"
                                  " AND grp = %(grp)s", LEGACY, extra=PATIENT),
    "capped": flag_yaml("capped", LEGACY, LEGACY + " ",
                        extra=PATIENT + "  max_per_second: 2\n  pair_latency: false\n"),
    "locking": LOCKING,
}


@pytest.fixture
def online(shop: str, make_workspace: WorkspaceMaker) -> tuple[str, Path]:
    root = make_workspace(FLAGS)
    session = Session(root, dsn=shop, say=lambda m: None)
    for name in FLAGS:
        flag_set(session, name, "pilot", actor="test", reason="metrics tests")
    return shop, root


def provider() -> tuple[SdkMeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return SdkMeterProvider(metric_readers=[reader]), reader


Point = tuple[dict[str, Any], Any]


def points(reader: InMemoryMetricReader) -> dict[str, list[Point]]:
    """Every data point by instrument name: (attributes, point)."""
    out: dict[str, list[Point]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    out.setdefault(metric.name, []).append((dict(p.attributes or {}), p))
    return out


def total(found: list[Point], **match: Any) -> float:
    """Sum (counters) or count (histograms) of the points whose attributes match."""
    n = 0.0
    for attrs, p in found:
        if all(attrs.get(k.replace("__", ".")) == v for k, v in match.items()):
            n += p.count if hasattr(p, "count") and hasattr(p, "bucket_counts") else p.value
    return n


def mismatches_in_store(dsn: str, flag: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM rollout.observations WHERE flag = %s"
                           " AND mode = 'ab' AND matched = false", [flag]).fetchone()
    assert row is not None
    return int(row[0])


def test_every_instrument_after_real_queries(online: tuple[str, Path]) -> None:
    dsn, root = online
    mp, reader = provider()
    before = table_checksums(dsn)
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, meter_provider=mp,
                         pool_stats_interval=None) as ro:
        for grp in range(10):
            ro.query("eq", Context(tenant="acme"), {"grp": grp})
            ro.query("wrong", Context(tenant="acme"), {"grp": grp})
        for grp in range(5):
            ro.query("eq", Context(tenant="initech"), {"grp": grp})  # legacy: nothing shadowed
        for grp in range(4):
            ro.query("boom", Context(tenant="globex"), {"grp": grp})
        for grp in range(3):
            with pytest.raises(psycopg.errors.DivisionByZero):
                ro.query("broken", Context(tenant="acme"), {"grp": grp})
        for grp in range(20):
            ro.query("capped", Context(tenant="acme"), {"grp": grp % 10})
        # a row lock held elsewhere: the shadowed write waits past its lock_timeout
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM items WHERE id = 1 FOR UPDATE")
            for _ in range(2):
                ro.query("locking", Context(tenant="acme"), {"grp": 1})
            assert ro.drain(timeout=30)
        stats = ro.get_stats()
        found = points(reader)
    assert table_checksums(dsn) == before

    op = found["db.client.operation.duration"]
    assert all(a["db.system.name"] == "postgresql" and a["db.namespace"] for a, _ in op)
    # instrument names are what dashboards query: each one as docs/observability.md names it
    lines = (REPO / "docs" / "observability.md").read_text().splitlines()
    table = [line.split("|")[1] for line in lines if line.startswith("| `")]
    documented = {name for cell in table for name in re.findall(r"`([\w.]+)`", cell)}
    assert sorted(set(found) - documented) == []
    assert {a["db.operation.name"] for a, _ in op} == {"SELECT", "UPDATE"}
    # served: one point per successful request, with its decision
    assert total(op, rollout__flag="eq", rollout__side="served", rollout__decision="shadow") == 10
    assert total(op, rollout__flag="eq", rollout__side="served", rollout__decision="legacy") == 5
    # background: each shadowed request ran the new path, and legacy again beside it (paired)
    for path in ("new", "legacy"):
        assert total(op, rollout__flag="eq", rollout__side="background", rollout__path=path) == 10
    execs = found["rollout.shadow.executions"]
    assert total(execs, rollout__flag="boom", rollout__path="new", error__type="22") == 4
    assert total(execs, rollout__flag="boom", rollout__path="legacy") == 4
    assert total(execs, rollout__flag="eq") == 20
    assert sum(stats.background_failures.values()) == total(execs, error__type="22") + total(
        execs, error__type="55")

    rollbacks = found["rollout.rollbacks"]
    assert total(rollbacks, rollout__flag="broken", rollout__side="served", error__type="22") == 3
    assert total(rollbacks, rollout__flag="boom", rollout__side="background",
                 error__type="22") == 4
    assert total(rollbacks, rollout__flag="eq") == 0
    locks = found["rollout.lock_waits"]
    assert total(locks, rollout__flag="locking", rollout__path="new",
                 rollout__lock__incident="lock_timeout") == 2
    assert stats.background_failures.get("55P03") == 2

    comparisons = found["rollout.comparisons"]
    assert total(comparisons, rollout__flag="eq", rollout__mode="ab", rollout__matched=True) == 10
    assert total(comparisons, rollout__flag="eq", rollout__mode="aa", rollout__matched=True) == 10
    wrong = mismatches_in_store(dsn, "wrong")
    assert wrong > 0
    assert total(found["rollout.mismatches"], rollout__flag="wrong", rollout__mode="ab") == wrong
    assert total(found["rollout.mismatches"], rollout__flag="eq") == 0

    dropped = found["rollout.shadow.dropped"]
    assert stats.dropped_rate_limited > 0
    assert total(dropped, rollout__flag="capped",
                 rollout__drop_reason="rate_limited") == stats.dropped_rate_limited

    tx = found["rollout.transaction.duration"]
    served = 10 + 10 + 5 + 4 + 20 + 2
    assert total(tx, rollout__side="served") == served
    wait = found["db.client.connection.wait_time"]
    assert total(wait, db__client__connection__pool__name="rollout-requests") == served
    assert total(wait, db__client__connection__pool__name="rollout-shadow") == (
        stats.shadowed + stats.verified)

    count = found["db.client.connection.count"]
    states = {(a["db.client.connection.pool.name"], a["db.client.connection.state"])
              for a, _ in count}
    assert states == {(p, s) for p in ("rollout-requests", "rollout-shadow")
                      for s in ("idle", "used")}
    assert total(count, db__client__connection__pool__name="rollout-requests") >= 1
    assert total(found["db.client.connection.max"],
                 db__client__connection__pool__name="rollout-shadow") == 2

    # bounded cardinality: no tenant anywhere unless asked for
    assert not any("rollout.tenant" in a for pts in found.values() for a, _ in pts)


def test_tenants_only_when_asked_and_cardinality_stays_bounded(
        online: tuple[str, Path]) -> None:
    """500 distinct tenants (a careless caller passing a request id as the tenant) add no
    series; with metric_tenants=True the tenant is an attribute."""
    dsn, root = online
    for tenants in (False, True):
        mp, reader = provider()
        with Rollout.connect(dsn, workspace=root, shadow_budget=None, meter_provider=mp,
                             pool_stats_interval=None, metric_tenants=tenants) as ro:
            for i in range(500):
                ro.query("eq", Context(tenant=f"req-{i}"), {"grp": 1})
            ro.query("eq", Context(tenant="acme"), {"grp": 1})
            assert ro.drain()
            found = points(reader)
        series = {tuple(sorted(a.items())) for pts in found.values() for a, _ in pts}
        with_tenant = {s for s in series if any(k == "rollout.tenant" for k, _ in s)}
        if tenants:
            assert {dict(s)["rollout.tenant"] for s in with_tenant} >= {"req-0", "acme"}
        else:
            assert with_tenant == set()
            assert len(series) < 40


# -- an API implementation that records which thread recorded, or fails ----------------------


class _Instrument(OtelCounter, OtelHistogram):
    def __init__(self, name: str, log: list[tuple[str, str]], fail: bool) -> None:
        self.name, self.log, self.fail = name, log, fail

    def add(self, amount: Any, attributes: Any = None, context: Any = None) -> None:
        self.record(amount, attributes, context)

    def record(self, amount: Any, attributes: Any = None, context: Any = None) -> None:
        self.log.append((threading.current_thread().name, self.name))
        if self.fail:
            raise RuntimeError("the exporter is broken")


class _Meter(NoOpMeter):
    def __init__(self, log: list[tuple[str, str]], fail: bool) -> None:
        super().__init__("test")
        self.log, self.fail = log, fail

    def create_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _Instrument(name, self.log, self.fail)

    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _Instrument(name, self.log, self.fail)

    def create_observable_up_down_counter(self, name: str,
                                          callbacks: Sequence[CallbackT] | None = None,
                                          *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise RuntimeError("no observable instruments today")
        return super().create_observable_up_down_counter(name, callbacks, *args, **kwargs)


class Recording(MeterProvider):
    def __init__(self, fail: bool = False) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail = fail

    def get_meter(self, name: str, version: str | None = None, schema_url: str | None = None,
                  attributes: Any = None) -> Meter:
        return _Meter(self.log, self.fail)


def test_the_caller_never_records_into_an_instrument(online: tuple[str, Path]) -> None:
    """Measurements taken on the caller's path are handed off; the metrics thread records
    them (an SDK record costs ~10 µs, bench/otel.py)."""
    dsn, root = online
    mp = Recording()
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, meter_provider=mp,
                         pool_stats_interval=None) as ro:
        for grp in range(10):
            ro.query("eq", Context(tenant="acme"), {"grp": grp})
            ro.query("eq", Context(tenant="initech"), {"grp": grp})
        assert ro.drain()
        metrics = ro.metrics
        assert metrics is not None
        assert wait_for(lambda: not metrics._pending)  # the metrics thread took everything
    threads = Counter(t for t, _ in mp.log)
    assert set(threads) == {"rollout-metrics"}
    names = Counter(n for _, n in mp.log)
    assert names["db.client.operation.duration"] == 20 + 20  # served, and 10 jobs x 2 paths


def test_a_broken_metrics_backend_never_reaches_the_caller(online: tuple[str, Path]) -> None:
    """Instruments that raise on every record (and a meter that cannot create observable
    ones): queries still return their rows, shadows still run and are recorded."""
    dsn, root = online
    mp = Recording(fail=True)
    with pytest.raises(RuntimeError, match="no observable"):
        Rollout.connect(dsn, workspace=root, meter_provider=mp, pool_stats_interval=None)
    # a meter that fails only when recording
    mp = Recording(fail=False)
    with Rollout.connect(dsn, workspace=root, shadow_budget=None, meter_provider=mp,
                         pool_stats_interval=None) as ro:
        mp.fail = True
        for grp in range(5):
            assert ro.query("eq", Context(tenant="acme"), {"grp": grp}) == legacy_rows(
                dsn, "acme", grp)
        assert ro.drain()
        assert ro.get_stats().shadowed == 5
    assert len(mp.log) > 0  # it was asked, and it failed every time


def legacy_rows(dsn: str, tenant: str, grp: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(LEGACY.encode(), {"tenant": tenant, "grp": grp}).fetchall()


def test_async_runner_records_the_same_instruments(online: tuple[str, Path]) -> None:
    dsn, root = online
    mp, reader = provider()

    async def main() -> dict[str, list[Point]]:
        ro = await AsyncRollout.connect(dsn, workspace=root, shadow_budget=None,
                                        meter_provider=mp, pool_stats_interval=None)
        try:
            for grp in range(6):
                await ro.query("eq", Context(tenant="acme"), {"grp": grp})
                await ro.query("boom", Context(tenant="acme"), {"grp": grp})
            assert await ro.drain()
            return points(reader)
        finally:
            await ro.close()

    found = asyncio.run(main())
    op = found["db.client.operation.duration"]
    assert total(op, rollout__flag="eq", rollout__side="served") == 6
    assert total(op, rollout__flag="eq", rollout__side="background") == 12
    assert total(found["rollout.shadow.executions"], rollout__flag="boom",
                 error__type="22") == 6
    assert total(found["db.client.connection.wait_time"],
                 db__client__connection__pool__name="rollout-shadow") == 12


def test_metrics_off_and_without_the_api(online: tuple[str, Path], tmp_path: Path) -> None:
    """meter_provider=False records nothing; without opentelemetry-api installed the runner
    works and has no metrics (a fresh interpreter that cannot import it)."""
    dsn, root = online
    with Rollout.connect(dsn, workspace=root, meter_provider=False,
                         pool_stats_interval=None) as ro:
        assert ro.metrics is None
        ro.query("eq", Context(tenant="acme"), {"grp": 1})
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ImportError('not installed')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from rollout import Rollout, Context\n"
        f"ro = Rollout.connect(sys.argv[1], workspace={str(root)!r}, pool_stats_interval=None)\n"
        "assert ro.metrics is None\n"
        "print(ro.query('eq', Context(tenant='acme'), {'grp': 1})[:1])\n"
        "ro.close()\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the DSN carries the test login's password: argv of a child of this test only
    proc = subprocess.run([sys.executable, "-c", code, dsn], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("[(")


@pytest.mark.parametrize(("sqlstate", "expected"), [
    ("57014", "57"), ("40P01", "40"), (None, "_OTHER"), ("", "_OTHER"), ("boom!", "_OTHER"),
    ("22012", "22")])
def test_error_type_is_the_sqlstate_class(sqlstate: str | None, expected: str) -> None:
    assert sqlstate_class(sqlstate) == expected


def test_operation_names_come_from_the_parser() -> None:
    assert operation_name("WITH x AS (SELECT 1) SELECT * FROM x") == "SELECT"
    assert operation_name("UPDATE t SET a = 1 RETURNING a") == "UPDATE"
    assert operation_name("INSERT INTO t VALUES (1)") == "INSERT"
    assert operation_name("SELECT 1; SELECT 2") is None
    assert operation_name("SELEC nothing") is None


