"""`rollout watch` against a real store: it aborts a regressing stage once, promotes a
healthy one when asked to, acts only as the leader and only on the state it judged, posts
webhooks without waiting on them, stops cleanly on SIGTERM, refuses a bad analysis block."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.commands import flag_set, flag_show
from rollout.errors import FlagFileError
from rollout.flags.state import read_state
from rollout.flags.workspace import Workspace
from rollout.store.history import analysis_history
from rollout.store.store import Store
from rollout.watch.loop import Watcher, add_parser, holder, run, watch
from rollout.watch.notify import Notifier
from tests.conftest import REPO, WorkspaceMaker
from tests.helpers import (
    analysis_flag,
    quiet,
    record,
    run_cli,
    session,
    start,
    table_checksums,
)


class Lines:
    """A log that keeps its structured lines."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        self.lines.append({"level": level, "event": event, **fields})

    def events(self) -> list[str]:
        return [x["event"] for x in self.lines]


def rollout_rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM rollout.{t}").fetchone()[0])
                for t in ("flag_events", "reports", "watch_intervals")}


class Hook(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: keeps every body; answers ``status``; with ``hang`` set, holds
    each request until the test releases it."""

    bodies: list[dict[str, Any]] = []
    status = 200
    hang: threading.Event | None = None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if type(self).hang is not None:
            type(self).hang.wait(30)
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("H", (Hook,), {"bodies": [], "status": 200, "hang": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret", handler
    finally:
        if handler.hang is not None:
            handler.hang.set()
        server.shutdown()
        server.server_close()


# -- deciding ---------------------------------------------------------------------------------


def test_a_regression_is_aborted_once_with_its_analysis_and_report(
    shop: str, make_workspace: WorkspaceMaker, hook: tuple[str, type[Hook]]
) -> None:
    url, server = hook
    root = make_workspace({"slow": analysis_flag("slow", extra=f"webhook: {url}\n")})
    since = start(root, shop, "slow")
    record(shop, root, "slow", since, 200, slower=1.3)
    before = table_checksums(shop)
    notifier = Notifier(quiet, timeout=5, retries=0)
    [outcome] = watch(session(root, shop), ["slow"], once=True, log=quiet, notifier=notifier)
    notifier.close(grace=30)
    assert outcome.decision == "abort", outcome
    st = read_state(psycopg.connect(shop, autocommit=True), "slow")
    assert st.killed and st.stage == "pilot"
    with psycopg.connect(shop) as conn:
        event = conn.execute("SELECT actor, action, reason, report_id FROM rollout.flag_events"
                             " WHERE flag = 'slow' ORDER BY id DESC LIMIT 1").fetchone()
        report = conn.execute("SELECT verdict, body, files FROM rollout.reports"
                              " WHERE report_id = %s", [event[3]]).fetchone()
    assert event[0].startswith("rollout watch (") and event[1] == "kill"
    assert "latency" in event[2] and str(outcome.analysis_id) in event[2]
    assert report[0] == "NO-GO" and report[2] == []
    assert report[1]["kind"] == "watch" and report[1]["analysis_id"] == str(outcome.analysis_id)
    [last] = analysis_history(psycopg.connect(shop), "slow", limit=5)
    assert last["decision"] == "abort" and last["acted_by"] == event[0]
    assert last["report_id"] == str(event[3]) and last["verdict"] == "NO-GO"
    assert last["figures"]["sequential"]["latency"]["p_running"] <= 0.02
    json.dumps(last)  # JSON-ready for the report's timeline
    assert table_checksums(shop) == before  # the user's tables: nothing
    # the webhook: Slack-compatible text, the event for machines, never the URL itself
    [body] = server.bodies
    assert "slow killed by rollout watch" in body["text"]
    assert body["event"]["kind"] == "abort" and body["event"]["report_id"] == str(event[3])
    # once killed, the flag is left alone: a second look acts on nothing
    rows = rollout_rows(shop)
    [again] = watch(session(root, shop), ["slow"], once=True, log=quiet)
    assert again.status == "idle" and rollout_rows(shop) == rows


def test_equal_paths_continue_and_nothing_changes(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"same": analysis_flag("same")})
    since = start(root, shop, "same")
    record(shop, root, "same", since, 200)
    version = read_state(psycopg.connect(shop, autocommit=True), "same").version
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    add_parser(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["watch", "same", "--once"])
    assert run(session(root, shop), args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    interval = next(x for x in lines if x["event"] == "interval")
    assert interval["decision"] == "continue" and interval["verdict"] == "GO", interval
    st = read_state(psycopg.connect(shop, autocommit=True), "same")
    assert not st.killed and st.version == version


def test_promotion_is_opt_in_and_needs_consecutive_go_intervals(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    root = make_workspace({
        "ready": analysis_flag("ready", "promote_after: 0s\npromote_intervals: 2\n"),
        "kept": analysis_flag("kept")})
    for name in ("ready", "kept"):
        record(shop, root, name, start(root, shop, name), 200)
    first = watch(session(root, shop), ["ready", "kept"], once=True, log=quiet)
    assert [o.decision for o in first] == ["continue", "continue"]
    second = watch(session(root, shop), ["ready", "kept"], once=True, log=quiet)
    assert [o.decision for o in second] == ["promote", "continue"]
    conn = psycopg.connect(shop, autocommit=True)
    assert read_state(conn, "ready").stage == "everyone"
    assert read_state(conn, "kept").stage == "pilot"  # no promote_after: never promoted
    latest = Store(conn).latest_report("ready", "pilot")
    assert latest is not None and latest["verdict"] == "GO"


# -- one actor --------------------------------------------------------------------------------


def test_a_second_watcher_never_acts(shop: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({"slow": analysis_flag("slow")})
    record(shop, root, "slow", start(root, shop, "slow"), 200, slower=1.3)
    first = Watcher(session(root, shop), ["slow"], log=quiet, identity="first")
    assert first.lead("slow")
    shown = flag_show(session(root, shop), "slow", resolve=False).watcher
    assert shown is not None and shown.watcher == "first"
    rows = rollout_rows(shop)
    log = Lines()
    [outcome] = watch(session(root, shop), ["slow"], once=True, log=log)
    assert outcome.status == "not_leader" and "not_leader" in log.events()
    assert rollout_rows(shop) == rows
    assert not read_state(psycopg.connect(shop, autocommit=True), "slow").killed
    assert first.interval("slow").decision == "abort"
    first.close()
    assert flag_show(session(root, shop), "slow", resolve=False).watcher is None


def test_a_watcher_that_lost_the_store_keeps_no_authority(
    shop: str, db_admin: str, make_workspace: WorkspaceMaker
) -> None:
    """Its lock connection is cut (a network blip, a failover); meanwhile another watcher
    took the flag. The first one must not act on its old belief that it leads."""
    root = make_workspace({"slow": analysis_flag("slow")})
    record(shop, root, "slow", start(root, shop, "slow"), 200, slower=1.3)
    first = Watcher(session(root, shop), ["slow"], log=quiet, identity="first")
    assert first.lead("slow")
    assert first._lock_conn is not None
    pid = first._lock_conn.info.backend_pid
    with psycopg.connect(db_admin, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    second = Watcher(session(root, shop), ["slow"], log=quiet, identity="second")
    assert second.lead("slow")
    rows = rollout_rows(shop)
    assert first.interval("slow").status == "not_leader"
    assert rollout_rows(shop) == rows
    assert not read_state(psycopg.connect(shop, autocommit=True), "slow").killed
    holder_now = holder(psycopg.connect(shop, autocommit=True), "slow")
    assert holder_now is not None and holder_now.watcher == "second"
    assert second.interval("slow").decision == "abort"
    first.close()
    second.close()


def test_a_state_changed_while_judging_is_not_acted_on(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """An operator moves the flag while the watcher judges the old state: the kill's
    compare-and-set fails, the interval is recorded as stale, the operator's change stands."""
    root = make_workspace({"slow": analysis_flag("slow")})
    record(shop, root, "slow", start(root, shop, "slow"), 200, slower=1.3)
    moved: list[bool] = []

    def clock() -> datetime:
        if not moved:  # first asked after the watcher read the state
            moved.append(True)
            flag_set(session(root, shop), "slow", "everyone", actor="operator",
                     reason="moving on")
        return datetime.now().astimezone()

    w = Watcher(session(root, shop), ["slow"], log=quiet, identity="w", clock=clock)
    outcome = w.interval("slow")
    w.close()
    assert outcome.decision == "stale", outcome
    st = read_state(psycopg.connect(shop, autocommit=True), "slow")
    assert st.stage == "everyone" and not st.killed and st.updated_by == "operator"
    [last] = analysis_history(psycopg.connect(shop), "slow")
    assert last["decision"] == "stale" and last["acted_by"] is None
    with psycopg.connect(shop) as conn:
        assert conn.execute("SELECT count(*) FROM rollout.reports").fetchone() == (0,)


# -- notifications ----------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["500", "hang"])
def test_a_failing_webhook_never_blocks_or_breaks_the_decision(
    shop: str, make_workspace: WorkspaceMaker, hook: tuple[str, type[Hook]], failure: str
) -> None:
    url, server = hook
    if failure == "500":
        server.status = 500
    else:
        server.hang = threading.Event()
    root = make_workspace({"slow": analysis_flag("slow")},
                          files={"rollout.yaml": "webhook: env:WATCH_TEST_HOOK\n"})
    record(shop, root, "slow", start(root, shop, "slow"), 200, slower=1.3)
    log = Lines()
    notifier = Notifier(log, timeout=0.5, retries=2, backoff=0.01)
    os.environ["WATCH_TEST_HOOK"] = url
    try:
        [outcome] = watch(session(root, shop), ["slow"], once=True, log=log,
                          notifier=notifier)
        # decided and committed while the webhook fails or still hangs
        assert outcome.decision == "abort"
        assert read_state(psycopg.connect(shop, autocommit=True), "slow").killed
        notifier.close(grace=30)
    finally:
        os.environ.pop("WATCH_TEST_HOOK")
    assert notifier.stats.failed == 1 and notifier.stats.sent == 0
    assert len(server.bodies) == (3 if failure == "500" else notifier.stats.attempts)
    failed = next(x for x in log.lines if x["event"] == "notification_failed")
    assert failed["webhook"] == "$WATCH_TEST_HOOK"
    assert "secret" not in json.dumps(log.lines, default=str)  # the URL's token is never logged


def test_the_watcher_reports_its_own_failures(
    shop: str, make_workspace: WorkspaceMaker, hook: tuple[str, type[Hook]]
) -> None:
    """The store goes away (a wrong DSN here): one notification, a log line, no crash."""
    url, server = hook
    root = make_workspace({"slow": analysis_flag("slow", extra=f"webhook: {url}\n")})
    broken = shop.replace("dbname=", "dbname=missing_") if "dbname=" in shop else shop + "x"
    log = Lines()
    notifier = Notifier(log, timeout=5, retries=0)
    w = Watcher(session(root, broken), ["slow"], log=log, notifier=notifier)
    assert w.interval("slow").status == "error"
    assert w.interval("slow").status == "error"
    notifier.close(grace=30)
    assert log.events().count("interval_failed") == 2
    [body] = server.bodies  # once per outage, not every interval
    assert body["event"]["kind"] == "watcher_failure"


# -- running like a service -------------------------------------------------------------------


def test_sigterm_mid_interval_finishes_it_and_exits_0(
    shop: str, make_workspace: WorkspaceMaker
) -> None:
    """SIGTERM arrives while the interval's action waits in the store: the interval
    finishes (kill, report row, interval record commit together), then the watcher exits 0,
    every log line one JSON object."""
    root = make_workspace({"slow": analysis_flag("slow", "interval: 1h\nwindow: 1h\n")})
    record(shop, root, "slow", start(root, shop, "slow"), 200, slower=1.3)
    with psycopg.connect(shop, autocommit=True) as conn:
        Store.open(conn)
    blocker = psycopg.connect(shop)
    blocker.execute("LOCK TABLE rollout.watch_intervals IN SHARE MODE")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "rollout.watch.loop", "slow", "--workspace",
                             str(root), "--dsn", shop], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        with psycopg.connect(shop, autocommit=True) as probe:
            deadline = time.monotonic() + 60
            while not probe.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                    "'pg-rollout-watch' AND wait_event_type = 'Lock'").fetchone():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert not read_state(psycopg.connect(shop, autocommit=True), "slow").killed
        proc.send_signal(signal.SIGTERM)
        blocker.rollback()
        _, err = proc.communicate(timeout=60)
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in err.splitlines()]
    assert [x["event"] for x in lines][-1] == "stopped"
    assert any(x["event"] == "interval" and x["decision"] == "abort" for x in lines)
    assert read_state(psycopg.connect(shop, autocommit=True), "slow").killed
    assert rollout_rows(shop) == {"flag_events": 2, "reports": 1, "watch_intervals": 1}


def test_bad_flags_are_one_line_and_exit_2(
    shop: str, make_workspace: WorkspaceMaker, capfd: pytest.CaptureFixture[str]
) -> None:
    from rollout.watch.loop import main

    root = make_workspace({"ok": analysis_flag("ok")})
    assert main(["nope", "--workspace", str(root), "--dsn", shop, "--once"]) == 2
    err = capfd.readouterr().err.strip()
    assert err == "rollout: error: unknown flag 'nope' (known: ok)"


# -- the analysis block -----------------------------------------------------------------------


def test_an_analysis_block_loads() -> None:
    root = REPO  # only for paths; the flag is parsed from text below
    text = analysis_flag("x", "interval: 30s\nwindow: 10min\nfailure_limit: 2\n"
                              "inconclusive_limit: 5\npromote_after: 2h\n"
                              "promote_intervals: 20\nabort_on: [latency, lock_wait]\n")
    flag = _load(text, root)
    a = flag.analysis_for("pilot")
    assert (a.interval, a.window, a.failure_limit, a.inconclusive_limit) == (
        timedelta(seconds=30), timedelta(minutes=10), 2, 5)
    assert a.promote_after == timedelta(hours=2) and a.promote_intervals == 20
    assert a.abort_on == ("latency", "lock_wait")
    assert flag.analysis_for("everyone").promote_after is None  # no block: never promote


def _load(text: str, root: Path) -> Any:
    import tempfile

    from rollout.flags.flagfile import load_flag

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "flags").mkdir()
        (ws / "rollback").mkdir()
        (ws / "rollback" / "x.sql").write_text("SELECT 1;\n")
        (ws / "flags" / "x.yaml").write_text(text)
        return load_flag(ws / "flags" / "x.yaml", ws)


@pytest.mark.parametrize(("block", "expected"), [
    ("interval: soon\n", "stages[0].analysis.interval: must be a duration like 1s"),
    ("interval: 0.5s\n", "stages[0].analysis.interval: must be between 1s and 1d"),
    ("interval: 10min\nwindow: 5min\n", "stages[0].analysis.window: (5min) must be at least"
                                        " the interval (10min)"),
    ("failure_limit: -1\n", "stages[0].analysis.failure_limit: must be between 0 and 10000"),
    ("failure_limit: 1.5\n", "stages[0].analysis.failure_limit: must be a whole number"),
    ("abort_on: [latency, vibes]\n", "stages[0].analysis.abort_on[1]: unknown gate 'vibes'"),
    ("abort_on: latency\n", "stages[0].analysis.abort_on: must be a list of gate names"),
    ("promote_intervals: 3\n", "stages[0].analysis.promote_intervals: is only used with"
                               " promote_after"),
    ("soak: 1h\n", "stages[0].analysis.soak: unknown key (allowed: interval, window"),
])
def test_a_bad_analysis_block_is_one_line_exit_2(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str], block: str,
    expected: str
) -> None:
    root = make_workspace({"x": analysis_flag("x", block)})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith("flags/x.yaml:") and expected in line, line
    with pytest.raises(FlagFileError):
        Workspace.load(root)


def test_promotion_from_the_last_stage_and_secret_urls_are_refused(
    make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    last = analysis_flag("x").replace(
        "    serve: {tenants: [\"*\"]}\n",
        "    serve: {tenants: [\"*\"]}\n    analysis: {promote_after: 1h}\n")
    root = make_workspace({"x": last})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2 and "stages[1].analysis.promote_after: this is the last stage" \
        in result.err
    token = uuid.uuid4().hex
    bad = analysis_flag("x", extra=f"webhook: ftp://hooks.example/{token}\n")
    root = make_workspace({"x": bad})
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2 and "webhook: must be an http:// or https:// URL" in result.err
    assert token not in result.err + result.out
    (root / "flags" / "x.yaml").write_text(analysis_flag("x"))
    (root / "rollout.yaml").write_text(f"webhook: 'https://h.example/ {token}'\n")
    result = run_cli(capsys, "check", "--offline", "--workspace", root)
    assert result.code == 2 and result.err.startswith("rollout: error: rollout.yaml:1: webhook")
    assert token not in result.err + result.out
