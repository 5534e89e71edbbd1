"""Business metrics beside query metrics (issue 16): ``business:`` checks judged before and after
a real stage change on a real database; hostile business queries refused when the flag loads,
or bounded with nothing persisted; bad keys and values one line, exit 2."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from rollout.flags.model import Flag
from rollout.flags.workspace import Workspace
from rollout.judge.business import (
    SUB_WINDOWS,
    business_gate,
    business_impact,
    relative_change,
    stage_business,
)
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker
from tests.helpers import (
    FAILED,
    HOUR,
    SUCCESS,
    business_flag,
    change_stage,
    check_yaml,
    one_line,
    record_checkouts,
    run_cli,
    table_checksums,
)


def line_of(text: str, needle: str, after: str = "business:") -> int:
    """1-based line of the first line containing ``needle`` after the line ``after``."""
    lines = text.splitlines()
    start = lines.index(after)
    return next(i + 1 for i in range(start, len(lines)) if needle in lines[i])


def judged(root: Path, dsn: str, name: str, changed_at: datetime,
           until: datetime | None = None) -> tuple[Flag, list[dict[str, Any]]]:
    flag = Workspace.load(root).flag(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        impacts = business_impact(conn, flag, changed_at,
                                  until=until or changed_at + HOUR + timedelta(minutes=1))
    return flag, impacts


def test_a_drop_in_checkout_success_beyond_tolerance_fails(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"pay": business_flag("pay", check_yaml(gate="true"))})
    at = change_stage(root, shop, "pay")
    record_checkouts(shop, at, before=0.95, after=0.85)
    _, impacts = judged(root, shop, "pay", at)
    (impact,) = impacts
    assert impact["status"] == "fail", impact
    assert len(impact["before"]["values"]) == len(impact["after"]["values"]) == SUB_WINDOWS
    assert impact["before"]["mean"] == pytest.approx(0.95, abs=0.02)
    assert impact["after"]["mean"] == pytest.approx(0.85, abs=0.02)
    low, high = impact["ci"]
    assert low <= impact["change"] <= high < -0.02
    assert "worse beyond the 2.0% tolerance" in impact["reason"]
    gate = business_gate(impacts)
    assert gate is not None and gate.status == "fail" and gate.name == "business"
    assert gate.as_dict()["passed"] is False
    assert gate.details["checks"][0]["name"] == "checkout_success"


def test_no_change_passes_and_an_informational_check_never_decides(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    checks = (check_yaml(gate="true"),
              check_yaml("checkout_failures", FAILED, direction="lower", tolerance=0.05))
    root = make_workspace({"pay": business_flag("pay", *checks)})
    at = change_stage(root, shop, "pay")
    record_checkouts(shop, at, before=0.95, after=0.95)
    _, impacts = judged(root, shop, "pay", at)
    assert [i["status"] for i in impacts] == ["pass", "pass"], impacts
    gate = business_gate(impacts)
    assert gate is not None and gate.status == "pass"
    # the same data with no gated check: shown, never deciding
    info = business_gate([{**i, "gate": False} for i in impacts])
    assert info is not None and info.status == "info" and info.as_dict()["passed"] is None
    assert business_gate([]) is None


def test_lower_is_better_fails_when_failures_rise_and_informational_stays_info(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"pay": business_flag(
        "pay", check_yaml("checkout_failures", FAILED, direction="lower", tolerance=0.1))})
    at = change_stage(root, shop, "pay")
    record_checkouts(shop, at, before=0.95, after=0.85)
    _, impacts = judged(root, shop, "pay", at)
    (impact,) = impacts
    assert impact["status"] == "fail" and impact["change"] > 1.0, impact  # 5 % -> 15 %
    gate = business_gate(impacts)
    assert gate is not None and gate.status == "info"
    assert "checkout_failures" in gate.reason and "worse beyond" in gate.reason


def test_the_report_side_reads_the_change_from_the_store_and_waits_for_the_window(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    """``stage_business``: the change recorded by `rollout flag set`, the least-privilege
    check, and sub-windows that have not elapsed are not judged (lacking, not doubt)."""
    root = make_workspace({"pay": business_flag("pay", check_yaml(gate="true"))})
    at = change_stage(root, shop, "pay")
    record_checkouts(shop, at, before=0.95, after=0.85)
    flag = Workspace.load(root).flag("pay")
    with psycopg.connect(shop, autocommit=True) as conn:
        store = Store.open(conn)
        early = stage_business(store, flag, "everyone", shop,
                               until=at + timedelta(minutes=25))
        late = stage_business(store, flag, "everyone", shop, until=at + 2 * HOUR)
        assert stage_business(store, flag, "pilot", shop) is None  # entered from nowhere
    assert early is not None and late is not None
    assert early[0]["status"] == "inconclusive" and early[0]["lacking"], early
    assert early[0]["after"]["not_elapsed"] == SUB_WINDOWS - 2
    assert "have not elapsed yet" in early[0]["reason"]
    gate = business_gate(early)
    assert gate is not None and gate.status == "inconclusive" and gate.lacking
    assert late[0]["status"] == "fail", late


def test_noise_without_a_clear_change_is_inconclusive(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    """Few checkouts per sub-window: the estimate is worse than the tolerance, the interval
    is not (a real doubt, not a lack of windows)."""
    root = make_workspace({"pay": business_flag("pay", check_yaml(gate="true"))})
    at = change_stage(root, shop, "pay")
    record_checkouts(shop, at, before=0.9, after=0.86, per_minute=1, seed=3)
    _, impacts = judged(root, shop, "pay", at)
    (impact,) = impacts
    assert impact["status"] == "inconclusive" and not impact["lacking"], impact
    assert impact["change"] < -0.02 and impact["ci"][1] > -0.02


def test_relative_change_interval() -> None:
    """Fieller: exact when nothing varies, sign-corrected for a negative baseline, undefined
    for a zero one, unbounded when the baseline cannot be told from zero."""
    exact = relative_change([2.0] * 6, [1.0] * 6, 0.95)
    assert exact is not None and (exact.change, exact.low, exact.high) == (-0.5, -0.5, -0.5)
    rng = np.random.default_rng(1)
    before, after = 100 + rng.normal(0, 1, 6), 110 + rng.normal(0, 1, 6)
    up = relative_change(before, after, 0.95)
    assert up is not None and up.low is not None and up.high is not None
    assert 0.05 < up.low < up.change < up.high < 0.15
    loss = relative_change(-before, -after, 0.95)  # a loss growing by 10 % is worse
    assert loss is not None and loss.low is not None and loss.high is not None
    assert loss.change == pytest.approx(-up.change)
    assert (loss.low, loss.high) == pytest.approx((-up.high, -up.low))
    assert relative_change([0.0] * 6, [1.0] * 6, 0.95) is None
    wild = relative_change([-5.0, 5.0, -4.0, 6.0, -6.0, 5.0], [1.0] * 6, 0.95)
    assert wild is not None and wild.low is None and wild.high is None


def test_unchanged_metrics_rarely_fail() -> None:
    """A/A: 2,000 simulated stages whose metric did not move (6 sub-windows a side, noisy
    after the change), judged with no tolerance at all: the interval lies wholly below the
    truth about 2.5 % of the time (one side of 95 %), never much more."""
    rng = np.random.default_rng(16)
    wrong = 0
    for _ in range(2000):
        before, after = rng.normal(0.95, 0.01, 6), rng.normal(0.95, 0.02, 6)
        iv = relative_change(before, after, 0.95)
        assert iv is not None and iv.high is not None
        wrong += iv.high < 0
    assert wrong / 2000 < 0.035, wrong


def test_a_query_file_loads_and_check_accepts_the_flag(
        make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]) -> None:
    text = business_flag("pay", check_yaml(query="queries/success.sql", gate="true",
                                           window_minutes=30, confidence=0.9,
                                           statement_timeout_ms=500))
    root = make_workspace({"pay": text}, {"queries/success.sql": SUCCESS + ";\n"})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 0, result
    (check,) = Workspace.load(root).flag("pay").business
    assert (check.name, check.direction, check.tolerance, check.gate) == (
        "checkout_success", "higher", 0.02, True)
    assert check.window == timedelta(minutes=30) and check.confidence == 0.9
    assert check.statement_timeout_ms == 500 and check.query.source == "queries/success.sql"


# -- hostile business queries ---------------------------------------------------------------

REFUSED = [
    ("two statements", "SELECT 1; DELETE FROM checkouts",
     "must be exactly one SQL statement, found 2 (the second is DELETE FROM)"),
    ("commit then insert", "SELECT 1; COMMIT; INSERT INTO checkouts (at, ok) VALUES (now(), true)",
     "must be exactly one SQL statement, found 3"),
    ("a write", "DELETE FROM checkouts WHERE at < %(window_end)s RETURNING 1",
     "DELETE is not a read; business queries must be plain reads"),
    ("a write in a WITH query",
     "WITH d AS (DELETE FROM checkouts WHERE at < %(window_end)s RETURNING 1) "
     "SELECT count(*) FROM d",
     "it has a WITH query that does DELETE; business queries must be plain reads"),
    ("select into", "SELECT count(*) INTO stolen FROM checkouts WHERE at < %(window_end)s",
     "it has SELECT INTO, which creates a table; business queries must be plain reads"),
    ("copy to stdout", "COPY checkouts TO STDOUT", "COPY needs the copy protocol"),
    ("copy to a program", "COPY (SELECT 1) TO PROGRAM 'id'",
     "COPY ... PROGRAM runs a shell command on the database server's host"),
    ("copy to a server file", "COPY checkouts TO '/tmp/checkouts.csv'",
     "COPY to or from a file reads or writes files on the database server's host"),
    ("a session timeout", "SET statement_timeout = 0",
     "SET statement_timeout changes session state"),
    ("a do block", "DO $$ BEGIN DELETE FROM checkouts; END $$",
     "DO runs procedural code the parser cannot see into; business queries must be plain"),
    ("a server file", "SELECT length(pg_read_file('/etc/passwd')) WHERE %(window_end)s IS NOT NULL",
     "calls pg_read_file(), which reads files on the database server's host"),
    ("a positional placeholder", "SELECT count(*) FROM checkouts WHERE at < %s",
     "positional placeholders (%s) are not allowed: use %(window_start)s and %(window_end)s"),
    ("a tenant", "SELECT count(*) FROM checkouts WHERE note = %(tenant)s",
     "unknown placeholder %(tenant)s: a business query receives %(window_start)s and "
     "%(window_end)s"),
    ("all time", "SELECT count(*) FROM checkouts",
     "must use %(window_start)s and %(window_end)s: a number for each time window"),
    ("a stray percent", "SELECT count(*) FROM checkouts WHERE note LIKE 'a%' "
     "AND at < %(window_end)s", "only '%s', '%b', '%t' are allowed as placeholders"),
]


@pytest.mark.parametrize(("case", "sql", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_hostile_business_queries_are_refused_when_the_flag_loads(
        case: str, sql: str, message: str, make_workspace: WorkspaceMaker,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = business_flag("bad", check_yaml(query=f"'{sql}'" if ":" in sql else sql))
    root = make_workspace({"bad": text})
    got = one_line(capsys, root)
    line = line_of(text, "query:")
    assert got.startswith(f"flags/bad.yaml:{line}: business[0].query: {message}"), got


def test_a_refused_query_file_is_named(make_workspace: WorkspaceMaker,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    text = business_flag("bad", check_yaml(), check_yaml("second", "queries/evil.sql"))
    root = make_workspace({"bad": text}, {"queries/evil.sql":
                                          "SELECT 1;\nROLLBACK;\nDELETE FROM checkouts;\n"})
    got = one_line(capsys, root)
    line = line_of(text, "query: queries/evil.sql")
    assert got.startswith(f"flags/bad.yaml:{line}: business[1].query: queries/evil.sql: must "
                          "be exactly one SQL statement, found 3"), got


RUN_HOSTILE = [
    # (case, query, what the check says)
    ("a session setting", "SELECT length(set_config('application_name', 'pwned', false))"
     " WHERE %(window_end)s IS NOT NULL", "pass"),
    ("a write through a function",
     "SELECT bump() WHERE %(window_end)s IS NOT NULL", "SQLSTATE 25006"),
    ("a sequence, which no rollback undoes",
     "SELECT nextval('checkouts_id_seq') WHERE %(window_end)s IS NOT NULL", "SQLSTATE 25006"),
    ("a session advisory lock",
     "SELECT 1 + length(pg_advisory_lock(42)::text) WHERE %(window_end)s IS NOT NULL", "pass"),
    ("a sleep beyond the timeout",
     "SELECT count(*) FROM checkouts, pg_sleep(30) WHERE at < %(window_end)s",
     "SQLSTATE 57014"),
    ("rows, not a number", "SELECT ok::int FROM checkouts WHERE at < %(window_end)s",
     "must return one row of one column"),
    ("text, not a number", "SELECT 'many' WHERE %(window_end)s IS NOT NULL",
     "must return a number, returned str"),
    ("not a number at all", "SELECT 'NaN'::float8 WHERE %(window_end)s IS NOT NULL",
     "must return a finite number"),
]


@pytest.mark.parametrize(("case", "sql", "outcome"), RUN_HOSTILE, ids=[r[0] for r in RUN_HOSTILE])
def test_hostile_business_queries_that_load_are_bounded_and_persist_nothing(
        case: str, sql: str, outcome: str, shop: str, make_workspace: WorkspaceMaker) -> None:
    text = business_flag("pay", check_yaml(query=f'"{sql}"', gate="true",
                                           statement_timeout_ms=200))
    root = make_workspace({"pay": text})
    at = change_stage(root, shop, "pay")
    record_checkouts(shop, at, before=0.95, after=0.95, per_minute=2)
    before = table_checksums(shop)
    with psycopg.connect(shop, autocommit=True) as conn:
        seq = conn.execute("SELECT last_value FROM checkouts_id_seq").fetchone()
        flag = Workspace.load(root).flag("pay")
        impacts = business_impact(conn, flag, at, until=at + 2 * HOUR)
        assert conn.execute("SHOW application_name").fetchone() != ("pwned",)
        assert conn.execute("SELECT last_value FROM checkouts_id_seq").fetchone() == seq
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with psycopg.connect(shop, autocommit=True) as other:
        assert other.execute("SELECT pg_try_advisory_lock(42)").fetchone() == (True,)
    assert table_checksums(shop) == before
    (impact,) = impacts
    if outcome == "pass":
        assert impact["status"] == "pass", impact
    else:
        assert impact["status"] == "inconclusive" and outcome in impact["reason"], impact
        # the first failure ends the check: nothing more ran, no side was measured
        assert impact["before"] is None and impact["after"] is None
        gate = business_gate(impacts)
        assert gate is not None and gate.status == "inconclusive" and not gate.lacking


def test_business_checks_refuse_a_connection_inside_a_transaction(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    """The toolkit opens each execution's transaction itself: on a connection already in
    one (the report's snapshot), its ROLLBACK would end the caller's transaction."""
    root = make_workspace({"pay": business_flag("pay", check_yaml())})
    flag = Workspace.load(root).flag("pay")
    with psycopg.connect(shop) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="idle connection in autocommit"):
            business_impact(conn, flag, datetime.now().astimezone())


def test_an_unreachable_database_makes_checks_inconclusive_without_the_password(
        shop: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"pay": business_flag("pay", check_yaml(gate="true"))})
    at = change_stage(root, shop, "pay")
    flag = Workspace.load(root).flag("pay")
    dead = "host=127.0.0.1 port=1 user=nobody password=s3cr3t-token dbname=x connect_timeout=2"
    with psycopg.connect(shop, autocommit=True) as conn:
        got = stage_business(Store.open(conn), flag, "everyone", dead, until=at + 2 * HOUR)
    assert got is not None and got[0]["status"] == "inconclusive" and got[0]["lacking"]
    assert "s3cr3t-token" not in str(got)


# -- bad keys and values --------------------------------------------------------------------

BAD = [
    # (case, the business block's YAML after "business:", key, message)
    ("not a list", " yes\n", "business", "must be a non-empty list of checks, got true/false"),
    ("empty", " []\n", "business", "must be a non-empty list of checks, got a list"),
    ("unknown key", check_yaml(threshold=3), "business[0].threshold",
     "unknown key (allowed: name, query, direction, tolerance, gate"),
    ("no name", check_yaml().replace("- name: checkout_success\n    ", "- "),
     "business[0].name", "is required"),
    ("a name that is a path", check_yaml("../etc"), "business[0].name",
     "'../etc' is not a valid check name"),
    ("two checks, one name", check_yaml() + check_yaml(), "business[1].name",
     "duplicate check name 'checkout_success'"),
    ("no query", check_yaml().replace(f"    query: {SUCCESS}\n", ""), "business[0].query",
     "is required"),
    ("an empty query file", check_yaml(query="queries/empty.sql"), "business[0].query",
     "file is empty: queries/empty.sql"),
    ("a query file outside", check_yaml(query="../outside.sql"), "business[0].query",
     "../outside.sql is outside the workspace"),
    ("sideways", check_yaml(direction="sideways"), "business[0].direction",
     "must be higher or lower (which way is better), got 'sideways'"),
    ("no direction", check_yaml(direction=None), "business[0].direction",
     "must be higher or lower (which way is better), got nothing"),
    ("no tolerance", check_yaml(tolerance=None), "business[0].tolerance", "is required"),
    ("a percent sign", check_yaml(tolerance="2%"), "business[0].tolerance",
     "must be a number, got text"),
    ("a negative tolerance", check_yaml(tolerance=-0.1), "business[0].tolerance",
     "must be between 0 and 10, got -0.1"),
    ("gate yes", check_yaml(gate='"yes"'), "business[0].gate", "must be true or false, got text"),
    ("no minutes", check_yaml(window_minutes=0), "business[0].window_minutes",
     "must be between 1 and 10080, got 0"),
    ("half minutes", check_yaml(window_minutes=1.5), "business[0].window_minutes",
     "must be a whole number"),
    ("certainty", check_yaml(confidence=1), "business[0].confidence",
     "must be between 0.5 and 0.9999, got 1"),
    ("no timeout", check_yaml(statement_timeout_ms=0), "business[0].statement_timeout_ms",
     "must be between 1 and 3.6e+06, got 0"),
    ("too many checks", "".join(check_yaml(f"c{i}") for i in range(21)), "business",
     "at most 20 checks, got 21"),
]


@pytest.mark.parametrize(("case", "block", "key", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_business_keys_are_one_line(case: str, block: str, key: str, message: str,
                                        make_workspace: WorkspaceMaker,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    inline = not block.startswith("  ")  # "business: yes"
    text = business_flag("bad", "PLACEHOLDER").replace(
        "business:\nPLACEHOLDER", "business:" + ("" if inline else "\n") + block)
    root = make_workspace({"bad": text}, {"queries/empty.sql": "  \n"})
    got = one_line(capsys, root)
    assert got.startswith("flags/bad.yaml:") and f": {key}: {message}" in got, got
    line = int(got.split(":")[1])
    lines = text.splitlines()
    assert line >= next(i + 1 for i, x in enumerate(lines) if x.startswith("business:"))
    leaf = key.rsplit(".", 1)[-1]
    if f"{leaf}:" in block:  # a key that is there: its own line
        assert f"{leaf}:" in lines[line - 1], (line, lines[line - 1])
