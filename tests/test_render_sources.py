"""Evidence by source in the rendered reports: offline shadow runs and online pairs shown
apart, the source that decided each gate named, online latency only from shadow-pool pairs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rollout import Context, Rollout
from rollout.commands import Session, flag_set
from tests.chromium import (
    BROWSER,
    DevTools,
    assert_clean,
    assert_verdict_on_first_screen,
    visit,
)
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import EQUIVALENT, LEGACY, PATIENT, run_cli
from tests.report_builder import (
    html_page,
    make_report,
    markdown_comment,
    schema_errors,
    schema_v1_report,
    section,
    visible_text,
)

# The same rows, but 20 ms slower for groups above 50: offline shadow runs sample the
# fixture's groups (0-9) and see no difference; the online traffic below asks for groups
# 60+ and sees the new path slower. The sleep is an uncorrelated scalar subquery, so
# PostgreSQL runs it once before the scan whether or not a row matches.
SLOW_ONLINE = (
    "SELECT id, val FROM items WHERE tenant = %(tenant)s AND grp = %(grp)s"
    " AND (SELECT 1 FROM pg_sleep(CASE WHEN %(grp)s::int > 50 THEN 0.02 ELSE 0 END)) = 1"
    " ORDER BY id"
)
FLAGS = {
    "split": flag_yaml("split", LEGACY, SLOW_ONLINE, extra=PATIENT),
    "unpaired": flag_yaml("unpaired", LEGACY, LEGACY + " ",
                          extra=PATIENT + "  pair_latency: false\n"),
}
ONLINE_PAIRS = 60


def online_traffic(dsn: str, root: Path, flag: str, groups: range) -> None:
    """Serve ``flag`` to acme (shadowed at pilot) through the online runner, one request
    per group, and wait until every shadow job is recorded."""
    with Rollout.connect(dsn, workspace=root, shadow_budget=None) as ro:
        for grp in groups:
            ro.query(flag, Context(tenant="acme"), {"grp": grp})
        assert ro.drain()


def write_report(capsys: pytest.CaptureFixture[str], root: Path, dsn: str, flag: str
                 ) -> tuple[int, dict[str, Any], str, str]:
    """``rollout report`` as a user runs it: the exit code, the JSON body, the HTML and
    the Markdown it wrote."""
    rep = run_cli(capsys, "report", flag, "--workspace", root, "--dsn", dsn)
    out = root / "reports" / flag
    body = json.loads((out / "pilot.json").read_text())
    return rep.code, body, (out / "pilot.html").read_text(), (out / "pilot.md").read_text()


def two_source_report(dsn: str, root: Path, capsys: pytest.CaptureFixture[str]
                      ) -> tuple[int, dict[str, Any], str, str]:
    """``split``: 60 offline shadow samples (no difference) and 60 online pairs (the new
    path 20 ms slower), reported."""
    r = run_cli(capsys, "shadow", "split", "--samples", "60", "--seed", "11",
                "--workspace", root, "--dsn", dsn)
    assert r.code == 0, r.err
    flag_set(Session(root, dsn=dsn, say=lambda m: None), "split", "pilot", actor="test",
             reason="online traffic")
    online_traffic(dsn, root, "split", range(60, 60 + ONLINE_PAIRS))
    return write_report(capsys, root, dsn, "split")


def gate(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(g for g in body["gates"] if g["name"] == name)
    return found


def evidence_rows(page: str) -> dict[str, list[str]]:
    """The Evidence by source table as the reader sees it: row label -> cell texts."""
    start = page.index('id="evidence-by-source"')
    body = page[page.index("<tbody>", start): page.index("</tbody>", start)]
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [" ".join(visible_text(td).split())
                 for td in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        rows[cells[0]] = cells[1:]
    return rows


def part(page: str, start: str, end: str) -> str:
    """The visible text of a section, from its heading on."""
    return section(page, start, end).split(">", 1)[1].strip()


def html_gate_row(page: str, name: str) -> str:
    start = page.index(f"<td><code>{name}</code></td>")
    row = page[page.rindex("<tr", 0, start): page.index("</tr>", start)]
    return " ".join(visible_text(row).split())


# --------------------------------------------------------------------------- real reports


def test_online_decides_latency_and_every_view_says_so(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline runs see no difference, online pairs see the new path slower: NO-GO, decided
    online, and the reader is told which source's figures they are looking at."""
    root = make_workspace(FLAGS)
    code, body, page, md = two_source_report(shop, root, capsys)
    assert code == 1 and body["verdict"] == "NO-GO", body["reasons"]
    assert schema_errors(body) == []
    latency = gate(body, "latency")
    assert latency["details"]["decided_by"] == ["online"]
    by_source = latency["details"]["by_source"]
    assert (by_source["offline"]["status"], by_source["online"]["status"]) == ("pass", "fail")
    assert body["latency"]["source"] == "online"
    assert body["latency"]["pairs_measured"] == ONLINE_PAIRS
    offline_ratio = body["sources"]["offline"]["latency"]["hl_ratio"]
    online_ratio = body["sources"]["online"]["latency"]["hl_ratio"]

    # the latency section names its source before any figure
    lat = part(page, "latency", "correctness")
    assert lat.startswith("Latency Figures from online pairs measured on the shadow pool")
    assert "that source decided the latency gate" in lat
    assert lat.index("from online pairs") < lat.index("Typical latency")
    header = " ".join(visible_text(page[: page.index("</header>")]).split())
    assert "typical new ÷ legacy latency" in header and "(online)" in header

    # the gates table: who decided, and each source's own judgement
    row = html_gate_row(page, "latency")
    assert "decided by online" in row
    assert "offline ✓ new/legacy" in row and "online ✗ new/legacy" in row
    assert "decided by offline and online" in html_gate_row(page, "min_samples")
    assert "decided by offline" in html_gate_row(page, "lock_wait")  # not measured online

    # evidence by source: the sources side by side, the online one deciding latency
    rows = evidence_rows(page)
    assert rows["Samples"] == ["60", str(ONLINE_PAIRS)]
    offline_cell, online_cell = rows["Latency, new ÷ legacy"]
    assert offline_cell.startswith(f"{offline_ratio:.3g}×") and "CI" in offline_cell
    assert online_cell.startswith(f"{online_ratio:.3g}×")
    assert f"{ONLINE_PAIRS} pairs on the shadow pool" in online_cell
    assert rows["Mismatches"] == ["0 of 60 0%", f"0 of {ONLINE_PAIRS} 0%"]
    assert rows["Failed only on the new path"] == ["0", "0"]
    assert rows["latency"] == ["✓ pass", "✗ fail decided"]
    assert rows["min_samples"] == ["✓ pass", "✓ pass"]  # both decided: nothing to tell apart
    assert page.index('id="evidence-by-source"') < page.index('id="latency"')
    correctness = part(page, "correctness", "failures")
    assert "By source, each judged against its own A/A noise" in correctness
    assert "Offline shadow runs: 0 of 60 mismatched (0%)" in correctness
    assert f"Online pairs: 0 of {ONLINE_PAIRS} mismatched (0%)" in correctness

    # the pull-request comment: one line naming the source, one line per source
    assert ("**Latency** (from online pairs measured on the shadow pool, which decided the "
            "gate): new ÷ legacy") in md
    lines = md.splitlines()
    evidence = lines[lines.index(next(x for x in lines if x.startswith("**Evidence by source**"))):]
    offline_line = next(x for x in evidence if x.startswith("- offline: "))
    online_line = next(x for x in evidence if x.startswith("- online: "))
    assert offline_line.startswith(f"- offline: 60 samples · latency {offline_ratio:.3g}×")
    assert "gates: 5 passed" in offline_line
    assert f"from {ONLINE_PAIRS} shadow-pool pairs" in online_line
    assert online_line.endswith("gates: 3 passed, ❌ `latency`")
    assert "| `latency` | ❌ fail (online) |" in md
    assert (f"by source, each against its own A/A noise: offline 0 of 60, online 0 of "
            f"{ONLINE_PAIRS}") in md


def test_online_latency_without_pairs_is_not_shown_as_a_comparison(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """online.pair_latency: false records served latency only: the report must not present
    it as a new-against-legacy figure, anywhere."""
    root = make_workspace(FLAGS)
    flag_set(Session(root, dsn=shop, say=lambda m: None), "unpaired", "pilot", actor="test",
             reason="online traffic")
    online_traffic(shop, root, "unpaired", range(ONLINE_PAIRS))
    _, body, page, md = write_report(capsys, root, shop, "unpaired")
    assert schema_errors(body) == []
    assert list(body["sources"]) == ["online"]
    assert body["latency"]["source"] == "online" and body["latency"]["pairs_measured"] == 0
    assert gate(body, "latency")["display"] == "not measured online"

    lat = part(page, "latency", "correctness")
    assert "Latency not measured online" in lat
    assert "No online pair was measured like for like on the runner's shadow pool" in lat
    for claim in ("Typical latency", "timed executions", "Gated quantile", "No latency samples"):
        assert claim not in lat
    header = " ".join(visible_text(page[: page.index("</header>")]).split())
    assert "latency not measured online" in header and "new ÷ legacy" not in header
    # online evidence alone is still shown by source
    rows = evidence_rows(page)
    assert rows["Samples"] == [str(ONLINE_PAIRS)]
    assert rows["Latency, new ÷ legacy"] == ["not measured online 0 pairs on the shadow pool"]
    assert "This stage's evidence is online only" in page

    assert "**Latency:** not measured online: no pair was measured like for like" in md
    assert "new ÷ legacy" not in md.split("**Latency:**", 1)[1].split("\n", 1)[0]
    assert "**Evidence by source**" not in md  # one source: the latency line says it all


def test_offline_report_names_its_source_without_the_table(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    r = run_cli(capsys, "shadow", "eq", "--samples", "60", "--seed", "11",
                "--workspace", root, "--dsn", shop)
    assert r.code == 0, r.err
    code, body, page, md = write_report(capsys, root, shop, "eq")
    assert code == 0 and schema_errors(body) == []
    assert list(body["sources"]) == ["offline"] and body["latency"]["source"] == "offline"
    lat = part(page, "latency", "correctness")
    assert lat.startswith("Latency Figures from offline shadow runs. Typical latency")
    assert "decided by offline" in html_gate_row(page, "latency")
    assert 'id="evidence-by-source"' not in page and "(offline)" not in page
    assert "**Latency** (from offline shadow runs): new ÷ legacy" in md
    assert "Evidence by source" not in md and "(offline)" not in md


# --------------------------------------------------------------------------- bodies by hand


def without_sources(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as reports wrote it before sources were judged apart."""
    old = copy.deepcopy(body)
    old.pop("sources", None)
    for key in ("source", "pairs_measured"):
        old["latency"].pop(key, None)
    for g in old["gates"]:
        details = g.get("details", {})
        for key in ("decided_by", "by_source"):
            details.pop(key, None)
        if "details" in g and not details:
            del g["details"]
    for event in old.get("environment_events", []):
        event.pop("source", None)
    return old


def two_source_body() -> dict[str, Any]:
    """A schema 2 body with both sources, as build_report writes one: online decided the
    latency gate (NO-GO), offline passed it."""
    body = make_report(verdict="NO-GO", reasons=["online: new path is slower: +30.0%"])
    offline_lat = dict(copy.deepcopy(body["latency"]), pairs_measured=200, hl_ratio=1.01,
                       hl_ci=[0.98, 1.04])
    online_lat = dict(copy.deepcopy(body["latency"]), pairs_measured=150, hl_ratio=1.3,
                      hl_ci=[1.22, 1.39])
    body["latency"] = dict(online_lat, source="online")
    judged = {
        "offline": {"status": "pass", "display": "new/legacy 1.010", "reason": "no regression"},
        "online": {"status": "fail", "display": "new/legacy 1.300", "reason": "slower"},
    }
    for g in body["gates"]:
        if g["name"] == "latency":
            g.update(status="fail", passed=False, display="online: new/legacy 1.300 "
                     "(offline: new/legacy 1.010)", reason="online: slower",
                     details={"decided_by": ["online"], "by_source": judged})
    gates = [{"name": "latency", "status": s, "passed": s == "pass", "figure": None,
              "threshold": 1.2, "confidence": 0.98, "display": "d", "reason": "r"}
             for s in ("pass", "fail")]
    body["sources"] = {
        "offline": {"samples": 200, "gates": [gates[0]], "latency": offline_lat,
                    "noise": body["noise"], "mismatches": body["mismatches"],
                    "failures": body["failures"]},
        "online": {"samples": 150, "gates": [gates[1]], "latency": online_lat,
                   "noise": body["noise"], "mismatches": body["mismatches"],
                   "failures": body["failures"]},
    }
    body["environment_events"] = [
        {"at": "2026-03-02T10:14+00:00", "path": "new", "sqlstate": "57P01", "count": 3,
         "counted": 0, "source": "online"},
        {"at": "2026-03-02T10:20+00:00", "path": "legacy", "sqlstate": "08000", "count": 1,
         "counted": 0, "source": "offline"},
    ]
    return body


def test_bodies_without_sources_render_as_before() -> None:
    """Schema 1 and 2 bodies written before sources existed: no source is claimed, nothing
    new appears, the latency line reads as it did."""
    for old in (make_report(), schema_v1_report(), without_sources(two_source_body())):
        page, md = html_page(old), markdown_comment(old)
        for text in ("evidence-by-source", "Evidence by source", "decided by", "Figures from",
                     "not measured online", "(online)", "(offline)"):
            assert text not in page and text not in md, text
        assert "<th>Source</th>" not in page
        assert "**Latency:** " in md  # no source named
        assert "Typical latency" in page or old.get("schema_version") == 1
    assert schema_errors(without_sources(two_source_body())) == []


def test_hand_built_two_source_body_validates_and_shows_event_sources() -> None:
    body = two_source_body()
    assert schema_errors(body) == []
    page, md = html_page(body), markdown_comment(body)
    events = part(page, "failures", "locks")
    assert "Minute (UTC) Source Path SQLSTATE" in events
    assert "2026-03-02T10:14+00:00 online new 57P01" in events
    assert "2026-03-02T10:20+00:00 offline legacy 08000" in events
    assert "2026-03-02T10:14+00:00 online new `57P01`" in md
    rows = evidence_rows(page)
    assert rows["Latency, new ÷ legacy"] == ["1.01× CI 0.98–1.04",
                                             "1.3× CI 1.22–1.39 150 pairs on the shadow pool"]
    assert rows["latency"] == ["✓ pass", "✗ fail decided"]


BREAKAGES = {  # what is broken -> where the schema must say so
    "unknown source": "sources",
    "decided by an unknown source": "gates/2/details/decided_by/0",
    "by_source status": "gates/2/details/by_source/online/status",
    "event source": "environment_events/0/source",
    "latency source": "latency/source",
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_schema_rejects_malformed_sources(breakage: str) -> None:
    body = two_source_body()
    latency_gate = body["gates"][2]
    assert latency_gate["name"] == "latency"
    if breakage == "unknown source":
        body["sources"]["pooled"] = body["sources"]["online"]
    elif breakage == "decided by an unknown source":
        latency_gate["details"]["decided_by"] = ["pooled"]
    elif breakage == "by_source status":
        latency_gate["details"]["by_source"]["online"]["status"] = "slow"
    elif breakage == "event source":
        body["environment_events"][0]["source"] = "both"
    else:
        body["latency"]["source"] = "pooled"
    errors = schema_errors(body)
    assert errors, breakage
    assert all(e.startswith(BREAKAGES[breakage]) for e in errors), errors


def test_hostile_source_names_and_judgements_are_escaped() -> None:
    """Source names and per-source texts come from the body: a tampered body must not
    inject markup into the page or the comment."""
    body = two_source_body()
    evil = "<img src=x onerror=alert(1)>"
    body["sources"][evil] = body["sources"].pop("online")
    latency_gate = next(g for g in body["gates"] if g["name"] == "latency")
    latency_gate["details"]["decided_by"] = [evil]
    latency_gate["details"]["by_source"][evil] = dict(
        latency_gate["details"]["by_source"].pop("online"), display=evil, reason=evil)
    body["latency"]["source"] = evil
    body["environment_events"][0]["source"] = evil
    page, md = html_page(body), markdown_comment(body)
    assert evil not in page and "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert evil in visible_text(page)
    assert re.search(r"(?<!\\)<img", md) is None  # every < escaped
    assert r"\<img src=x onerror=alert(1)\>" in md


# --------------------------------------------------------------------------- in a browser


@pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome binary found")
def test_two_source_report_in_the_browser(
    browser: DevTools, shop: str, make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    root = make_workspace(FLAGS)
    _, body, _, _ = two_source_report(shop, root, capsys)
    v = visit(browser, root / "reports" / "split" / "pilot.html", tmp_path / "split.png")
    assert_clean(v)
    assert_verdict_on_first_screen(v, body["verdict"])
    text = v.page["text"]
    assert "Evidence by source" in text
    assert "from online pairs measured on the shadow pool" in text
    assert "decided by online" in text


def test_a_body_with_thousands_of_sources_stays_a_comment() -> None:
    """A tampered body cannot make the pull-request comment or the page unbounded."""
    body = two_source_body()
    online = body["sources"]["online"]
    many_gates = [dict(online["gates"][0], name=f"gate_{i}") for i in range(500)]
    for i in range(3000):
        body["sources"][f"source-{i:04d}"] = dict(online, gates=many_gates)
    md = markdown_comment(body)
    assert len(md) < 12_000
    page = html_page(body)
    # offline, online and the first two unknown ones, no more
    assert "source-0000" in page and "source-0001" in page and "source-0002" not in page
