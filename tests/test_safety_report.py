"""Reports in every outcome: a failing new path is a NO-GO in words, commands are shell-quoted,
names never escape the output folder, files and store row land together or not at all, and a
run cut short is said on the first screen."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.commands import Session, shadow
from rollout.errors import InputError
from rollout.flags.model import Flag
from rollout.flags.workspace import Workspace
from rollout.judge.verdict import judge
from rollout.report.build import build_report, write_report
from rollout.run.execute import Limits
from rollout.run.shadow import RunOptions
from rollout.store.observations import Observation
from rollout.store.store import Store
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import EQUIVALENT, LEGACY, run_cli, table_checksums
from tests.report_builder import html_page, markdown_comment, schema_errors, visible_text


def load(root: Path, name: str) -> Flag:
    return Workspace.load(root).flags[name]


def reports_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM rollout.reports").fetchone()
    return int(row[0]) if row else 0


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


# -- row 8: a new path that always fails is a NO-GO report, in words --------------------------

FAILING = {
    # a lock in a read flag: the READ ONLY transaction refuses it (25006)
    "for_update": (LEGACY + " FOR UPDATE", None, "read-only transaction"),
    # a write hidden in a function call: the parser cannot see it, the server refuses it
    "write_in_read_flag": (
        "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
        " AND nextval('report_probe') > 0 ORDER BY id",
        "CREATE SEQUENCE report_probe", "read-only transaction"),
    # slower than the statement timeout, every time (57014)
    "timeout": (
        "SELECT id, val FROM items, pg_sleep(0.3) AS s WHERE tenant = %(tenant)s"
        " AND grp = %(grp)s ORDER BY id", None, "statement timeout"),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_new_path_that_always_fails_gets_a_no_go_report(
    case: str, shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    new, setup, words = FAILING[case]
    if setup:
        with psycopg.connect(shop, autocommit=True) as conn:
            conn.execute(setup)
    root = make_workspace({"bad": flag_yaml("bad", LEGACY, new, min_samples=20)})
    before = table_checksums(shop)
    if case == "timeout":
        # the CLI's timeout is 10 s; the library call takes a short one
        opts = RunOptions(limits=Limits(statement_timeout_ms=50), plan_samples=1,
                          generic_tenants=1)
        shadow(Session(root, dsn=shop), "bad", samples=20, seed=5, options=opts)
    else:
        r = run_cli(capsys, "shadow", "bad", "--samples", "20", "--seed", "5",
                    "--workspace", root, "--dsn", shop)
        assert r.code == 0, r.err
    assert table_checksums(shop) == before

    rep = run_cli(capsys, "report", "bad", "--workspace", root, "--dsn", shop)
    assert "internal error" not in rep.err, rep.err
    assert rep.code == 1, rep.out + rep.err
    assert "NO-GO" in rep.out and words in rep.out
    folder = root / "reports" / "bad"
    body = json.loads((folder / "pilot.json").read_text())
    assert body["verdict"] == "NO-GO"
    assert schema_errors(body) == []
    gates = {g["name"]: g for g in body["gates"]}
    assert gates["max_new_failures"]["status"] == "fail"
    assert any("never succeeded" in r and words in r for r in body["reasons"]), body["reasons"]
    assert "never succeeded" in gates["latency"]["reason"]
    page = (folder / "pilot.html").read_text()
    assert words in visible_text(page[: page.index("</header>")])
    md = (folder / "pilot.md").read_text()
    assert words in md[: md.index("### Gates")]
    # a path that never ran through took no locks we saw: no claim about the locks it takes
    assert body["locks"]["only_legacy_holds"] == []
    assert "the new path does not lock" not in md + visible_text(page)
    with psycopg.connect(shop) as conn:
        assert conn.execute("SELECT verdict FROM rollout.reports WHERE flag = 'bad'"
                            ).fetchall() == [("NO-GO",)]


def observation(**fields: Any) -> Observation:
    base: dict[str, Any] = dict(
        observed_at=datetime.now(UTC), flag="f", stage="pilot", sql_hash="h", tenant="acme",
        decision="shadow", first_path="legacy", params={"grp": 1}, legacy_ns=1_000_000,
        new_ns=1_100_000, legacy_rows=1, new_rows=1, legacy_sqlstate=None, new_sqlstate=None,
        legacy_error=None, new_error=None, matched=True, diff=None)
    base.update(fields)
    return Observation(**base)


NEW_FAILS = dict(new_ns=None, new_rows=None, new_sqlstate="57014", matched=None,
                 new_error="canceling statement due to statement timeout")
BOTH_FAIL = dict(NEW_FAILS, legacy_ns=None, legacy_rows=None, legacy_sqlstate="57014",
                 legacy_error="canceling statement due to statement timeout")
LEGACY_PLAN = {"path": "legacy", "tenant": "acme", "params": {}, "shape": "Seq Scan",
               "buffers": 10, "plan_rows": 5.0, "actual_rows": 5.0, "exec_ms": 0.5}
LEGACY_GENERIC = {"path": "legacy", "tenant": "acme", "custom_ms": 0.2, "generic_ms": 0.3,
                  "custom_buffers": 3, "generic_buffers": 4}
FIGURES_MISSING: dict[str, tuple[list[Observation], str, str]] = {
    "no observations": ([], "INCONCLUSIVE", "never succeeded"),
    "both paths always fail": ([observation(**BOTH_FAIL)] * 30, "INCONCLUSIVE",
                               "legacy and new paths never succeeded"),
    "new path always fails": ([observation(**NEW_FAILS)] * 30, "NO-GO",
                              "canceling statement due to statement timeout"),
    "one new success among failures": (
        [observation(**NEW_FAILS)] * 29 + [observation()], "NO-GO", "statement_timeout 29"),
    "legacy never timed": ([observation(legacy_ns=None)] * 30, "INCONCLUSIVE",
                           "legacy path never succeeded"),
}


@pytest.mark.parametrize("case", list(FIGURES_MISSING))
def test_every_missing_figure_is_judged_in_words_and_renders(
    case: str, make_workspace: WorkspaceMaker
) -> None:
    observations, verdict, words = FIGURES_MISSING[case]
    flag = load(make_workspace({"f": flag_yaml("f", LEGACY, LEGACY, min_samples=20)}), "f")
    # plans and generic checks of legacy only: the new path's EXPLAIN failed too
    body = judge(flag, observations, plans=[LEGACY_PLAN], generic=[LEGACY_GENERIC],
                 noise=[observation(mode="aa", **BOTH_FAIL)])
    assert body["verdict"] == verdict
    text = " ".join([*body["reasons"], *(g["reason"] for g in body["gates"])])
    assert words in text, text
    report = {"schema_version": 2, "flag": "f", "stage": "pilot", "stages": ["pilot"],
              "rollback": {"steps": ["a", "b"], "flag_command": "rollout flag kill f"},
              **body}
    assert verdict in html_page(report)
    assert verdict in markdown_comment(report)


# -- row 4: every command shown is shell-quoted ------------------------------------------------

EVIL_STAGE = "pilot; touch INJECTED;"
EVIL_FLAG = "eq$(touch INJECTED_FLAG)`touch INJECTED_TICK`'"


def run_as_printf(cmd: str, cwd: Path) -> list[str]:
    """Run a shown command through ``sh -c`` with ``rollout`` replaced by printf: the
    arguments the shell would have passed, one per line."""
    assert cmd.startswith("rollout ")
    script = "printf '%s\\n' " + cmd[len("rollout "):]
    out = subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True,
                         check=True, timeout=30)
    return out.stdout.splitlines()


def test_commands_in_reports_are_shell_quoted(
    shop: str, make_workspace: WorkspaceMaker, tmp_path: Path
) -> None:
    flag = load(make_workspace({"eq": EQUIVALENT}), "eq")
    # built in code: the loader refuses such names, the report must hold by itself
    flag = replace(flag, name=EVIL_FLAG,
                   stages=(replace(flag.stages[0], name=EVIL_STAGE), flag.stages[1]))
    with psycopg.connect(shop) as conn:
        body = build_report(flag, "everyone", Store.open(conn), database="test")
    reason = f"roll back {EVIL_FLAG} from everyone"
    expected = {
        "flag": ["flag", "set", EVIL_FLAG, "--stage", EVIL_STAGE, "--reason", reason],
        "apply": ["rollback", EVIL_FLAG, "--apply"],
        "verify": ["rollback", EVIL_FLAG, "--verify"],
        "aa": ["shadow", EVIL_FLAG, "--stage", "everyone", "--aa"],
    }
    shown = {key: shlex.join(["rollout", *argv]) for key, argv in expected.items()}
    rb = body["rollback"]
    assert rb["flag_command"] == shown["flag"]
    assert shown["flag"] in rb["steps"][0] and shown["apply"] in rb["steps"][1]
    assert any(f"`{shown['verify']}`" in r for r in body["reasons"])
    page = html.unescape(html_page(body))
    md = markdown_comment(body)
    for key in ("flag", "apply", "verify", "aa"):
        assert shown[key] in page, key
    assert f"```sh\n{shown['flag']}\n```" in md
    # what a reader pastes runs exactly the intended arguments, and nothing else
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    pasted = [rb["flag_command"], *re.findall(r"<code>(rollout [^<]*)</code>", page)]
    assert len(pasted) >= 3
    for cmd in pasted:
        argv = run_as_printf(cmd, sandbox)
        assert argv == shlex.split(cmd)[1:]
        assert argv in expected.values(), cmd
    assert run_as_printf(shown["flag"], sandbox) == expected["flag"]
    assert list(sandbox.iterdir()) == []


# -- row 6: report paths stay inside the output folder -----------------------------------------

def with_names(flag: Flag, name: str, stage: str) -> Flag:
    return replace(flag, name=name, stages=(replace(flag.stages[0], name=stage),
                                            *flag.stages[1:]))


@pytest.mark.parametrize(("flag_name", "stage"), [
    ("eq", "../../../escaped"),
    ("eq", "ABSOLUTE"),
    ("../escaped", "pilot"),
    ("ABSOLUTE", "pilot"),
    ("eq", "sub/escaped"),
    ("..", "pilot"),
    ("eq", ".."),
    ("eq", ".hidden"),
    ("eq", "new\nline"),
])
def test_report_names_never_write_outside_the_output_folder(
    flag_name: str, stage: str, shop: str, make_workspace: WorkspaceMaker, tmp_path: Path
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep" / "deeper").mkdir(parents=True)
    out = elsewhere / "deep" / "deeper" / "out"
    absolute = str(elsewhere / "abs")
    flag = with_names(load(root, "eq"), flag_name.replace("ABSOLUTE", absolute),
                      stage.replace("ABSOLUTE", absolute))
    before = files_under(tmp_path)
    with psycopg.connect(shop) as conn:
        store = Store.open(conn)
        with pytest.raises(InputError, match="cannot name a report file"):
            write_report(flag, flag.stages[0].name, store, out, database="test")
    assert files_under(tmp_path) == before
    assert not out.exists()
    assert reports_count(shop) == 0


def test_a_report_folder_linked_out_of_the_output_folder_is_refused(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str],
    tmp_path: Path
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "reports" / "eq").symlink_to(outside, target_is_directory=True)
    r = run_cli(capsys, "shadow", "eq", "--samples", "20", "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 2
    assert "outside the output folder" in one_line_error(rep.err)
    assert list(outside.iterdir()) == []
    assert reports_count(shop) == 0


# -- row 16: all formats and the store row, or none --------------------------------------------

@pytest.fixture
def shadowed(shop: str, make_workspace: WorkspaceMaker,
             capsys: pytest.CaptureFixture[str]) -> Path:
    """A workspace whose flag ``eq`` has observations for stage pilot."""
    root = make_workspace({"eq": EQUIVALENT})
    r = run_cli(capsys, "shadow", "eq", "--samples", "20", "--seed", "3",
                "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    return root


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.suffix in (".tmp", ".bak")]


def test_out_that_is_a_file_is_refused_in_one_line(
    shadowed: Path, shop: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "a-file"
    out.write_text("keep me\n")
    for target in (out, out / "below"):
        rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop,
                      "--out", target)
        assert rep.code == 2
        assert "is a file, not a folder" in one_line_error(rep.err)
    assert out.read_text() == "keep me\n"
    assert reports_count(shop) == 0


@pytest.mark.parametrize("place", ["/proc", "/proc/rollout-reports", "/sys/rollout-reports"])
def test_out_on_a_pseudo_or_unwritable_filesystem_is_refused_in_one_line(
    place: str, shadowed: Path, shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path("/", place.split("/")[1]).is_dir():
        pytest.skip(f"no {place} on this system")
    rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop,
                  "--out", place)
    assert rep.code == 2
    assert "cannot write the report to" in one_line_error(rep.err)
    assert reports_count(shop) == 0
    assert not Path(place, "eq").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_refused_in_one_line(
    shadowed: Path, shop: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop,
                      "--out", locked / "reports")
    finally:
        locked.chmod(0o700)
    assert rep.code == 2
    assert "Permission denied" in one_line_error(rep.err)
    assert list(locked.iterdir()) == []
    assert reports_count(shop) == 0


def test_a_folder_in_the_way_leaves_the_previous_report_whole(
    shadowed: Path, shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop)
    assert rep.code in (0, 3), rep.err
    folder = shadowed / "reports"
    (folder / "eq" / "pilot.md").unlink()
    (folder / "eq" / "pilot.md").mkdir()  # html is renamed first, then md fails
    before = files_under(folder)
    rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop)
    assert rep.code == 2
    assert "a folder is in the way" in one_line_error(rep.err)
    assert files_under(folder) == before  # the earlier html, json and index, byte for byte
    assert no_temporaries(folder)
    assert reports_count(shop) == 1


def fail_on(shop: str, when: str) -> None:
    """Make the store refuse the next report: on insert, or only at commit."""
    trigger = ("CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON rollout.reports"
               " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
               if when == "commit" else
               "CREATE TRIGGER refuse BEFORE INSERT ON rollout.reports"
               " FOR EACH ROW EXECUTE FUNCTION refuse()")
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$BEGIN RAISE EXCEPTION 'store refuses reports'; END$$")
        conn.execute(trigger)


@pytest.mark.parametrize("when", ["insert", "commit"])
def test_no_files_without_the_store_row(
    when: str, shadowed: Path, shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop)
    assert rep.code in (0, 3), rep.err
    folder = shadowed / "reports"
    before = files_under(folder)
    fresh = shadowed / "fresh"
    fail_on(shop, when)
    for out in (folder, fresh):
        rep = run_cli(capsys, "report", "eq", "--workspace", shadowed, "--dsn", shop,
                      "--out", out)
        assert rep.code == 2
        assert "store refuses reports" in one_line_error(rep.err)
    assert files_under(folder) == before  # replaced files are put back after a failed commit
    assert not fresh.exists()  # and folders made for the report are gone
    assert no_temporaries(folder)
    assert reports_count(shop) == 1


# -- row 14: a report on a run cut short says so on its first screen ---------------------------

def first_screens(root: Path) -> tuple[dict[str, Any], str, str]:
    folder = root / "reports" / "eq"
    body = json.loads((folder / "pilot.json").read_text())
    page = (folder / "pilot.html").read_text()
    md = (folder / "pilot.md").read_text()
    return body, visible_text(page[: page.index("</header>")]), md[: md.index("### Gates")]


def test_a_run_cut_short_is_said_and_caps_the_verdict(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    r = run_cli(capsys, "shadow", "eq", "--samples", "60", "--seed", "1",
                "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    with psycopg.connect(shop, autocommit=True) as conn:
        store = Store.open(conn)
        flag = load(root, "eq")
        (cut,) = store.runs("eq", "pilot", flag.sql_hash)
        # what the runner records when SIGTERM cuts a run short
        store.finish_run(cut["run_id"], 60, status="failed", reason="terminated (SIGTERM)")

    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 3, rep.out + rep.err  # GO before this change
    body, page, md = first_screens(root)
    assert body["verdict"] == "INCONCLUSIVE"
    assert schema_errors(body) == []
    assert [(r["run_id"], r["status"], r["reason"], r["samples"], r["requested"])
            for r in body["incomplete_runs"]] == [
        (str(cut["run_id"]), "failed", "terminated (SIGTERM)", 60, 60)]
    assert any("cut short: terminated (SIGTERM)" in r for r in body["reasons"])
    for screen in (page, md):
        assert "did not finish" in screen and "terminated (SIGTERM)" in screen
        assert str(cut["run_id"])[:8] in screen

    # a run that never finished (killed outright, or still going) is the latest now
    with psycopg.connect(shop, autocommit=True) as conn:
        hanging = Store.open(conn).start_run(
            flag="eq", stage="pilot", sql_hash=flag.sql_hash, tenants=["acme"], requested=60,
            target="test", server_version="18")
    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 3
    body, page, md = first_screens(root)
    assert [r["status"] for r in body["incomplete_runs"]] == ["failed", "running"]
    assert any("never finished" in r and str(hanging)[:8] in r for r in body["reasons"])
    assert "never finished" in page and "never finished" in md

    # a later run that finished decides again; the earlier ones are still named
    r = run_cli(capsys, "shadow", "eq", "--samples", "60", "--seed", "2",
                "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 0, rep.out
    body, page, md = first_screens(root)
    assert body["verdict"] == "GO" and len(body["incomplete_runs"]) == 2
    assert "2 runs of this stage did not finish" in page
    assert "2 runs of this stage did not finish" in md


# -- hazards that reach beyond the database ----------------------------------------------------

def test_hazards_beyond_the_database_call_for_attention(make_workspace: WorkspaceMaker) -> None:
    flag = load(make_workspace({"eq": EQUIVALENT}), "eq")
    beyond = "CREATE ROLE acts on the whole cluster <script>x</script>"
    hazard = {"script": "rollback", "statement_number": 2, "line": 3,
              "statement": "CREATE ROLE r", "transactional": True,
              "why_not_transactional": None, "locks": [], "strongest_lock": None,
              "destroys_data": None, "sequences_not_rewound": False,
              "beyond_database": beyond}
    verification = {"verified": True, "status": "verified", "differences": [],
                    "hazards": [hazard], "error": None}
    body = judge(flag, [observation()] * 60, rollback=verification)
    rollback_gate = next(g for g in body["gates"] if g["name"] == "rollback")
    assert rollback_gate["status"] == "pass"  # not a gate by itself
    assert any(r.startswith("attention: rollback statement 2 reaches beyond the database")
               for r in body["reasons"])
    report = {"schema_version": 2, "flag": "eq", "stage": "pilot", "stages": ["pilot"],
              "rollback": {"steps": ["a", "b"], "flag_command": "rollout flag kill eq",
                           "script": "SELECT 1;", "verified": True, "hazards": [hazard],
                           "verification_details": verification},
              **body}
    page = html_page(report)
    assert "<script>x" not in page
    table = visible_text(page[page.index('id="hazards"'):])
    assert "Beyond the database" in table and html.unescape(beyond) in table
    md = markdown_comment(report)
    assert "1 statement reaching beyond the database (CREATE ROLE acts" in md

