"""The workspace index page and the report's JSON schema: hand-built and real reports
validate, broken bodies do not, every key is documented."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import WorkspaceMaker
from tests.helpers import DIFFERENT, EQUIVALENT, run_cli
from tests.report_builder import (
    CONTRACT_KEYS,
    DOCS_PATH,
    SCHEMA_PATH,
    canary_report,
    complete_report,
    index_data,
    index_html,
    schema_errors,
    shadow_and_report,
    timeline_report,
    visible_text,
)

# --------------------------------------------------------------------------- workspace index


def test_index_lists_flags_state_and_verdicts() -> None:
    page = index_html(index_data())
    text = " ".join(visible_text(page).split())
    assert "3 flags 0 live 1 killed 2 not started 1 invalid flag file" in text
    assert "orders-recent keyset pagination" in text
    assert "killed stage canary; all traffic on legacy since 2026-11-28T11:00:00+00:00" in text
    assert "shadow-pilot GO 200 samples · 2026-11-28T10:00:00+00:00" in text
    assert "canary (killed) NO-GO 1,200 samples" in text
    assert "the HTML page is from an earlier report" in text
    assert "full no report yet" in text
    assert "(no longer a stage)" in text
    assert "orders-latest not started" in text
    assert "invalid flag file flags/broken.yaml:3" in text
    start = page.index('id="flag-orders-recent"')
    row = page[start : page.index("</tr>", start)]
    assert row.startswith('id="flag-orders-recent"') and 'class="killed"' in page
    assert '<li class="nogo current">' in row


def test_index_links_are_relative_and_everything_is_escaped() -> None:
    page = index_html(index_data())
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs == ["orders-recent/shadow-pilot.html", "orders-recent/canary.html"]
    assert "javascript:" not in page and "example.com" not in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|srcset)\s*=", page)


def test_index_tolerates_missing_parts() -> None:
    page = index_html({})
    assert "No flags in this workspace yet." in page
    page = index_html({"flags": [{"name": "x"}]})
    assert "no stages" in page and "not started" in page


# --------------------------------------------------------------------------- JSON schema

def test_schema_requires_the_contract_keys_and_is_documented() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == CONTRACT_KEYS | {"schema_version"}
    assert schema["properties"]["schema_version"] == {"const": 2}
    docs = DOCS_PATH.read_text(encoding="utf-8")
    for key in schema["properties"]:
        assert f"`{key}`" in docs, f"docs/reports.md does not describe {key}"


def test_hand_built_reports_validate() -> None:
    for body in (complete_report(), timeline_report(stage=None), canary_report()):
        for gate in body["gates"]:
            gate["display"] = gate["display"] or "shown"
        assert schema_errors(body) == []


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "no verdict": _drop("verdict"),
    "no rollback": _drop("rollback"),
    "no schema_version": _drop("schema_version"),
    "unknown verdict": lambda b: b.update(verdict="MAYBE"),
    "schema 3": lambda b: b.update(schema_version=3),
    "reasons not a list": lambda b: b.update(reasons="because"),
    "negative samples": lambda b: b.update(samples=-1),
    "gate without status": lambda b: b["gates"][0].pop("status"),
    "unknown gate status": lambda b: b["gates"][0].update(status="maybe"),
    "changed row without position or key": lambda b: [
        e.pop(k, None)
        for e in b["mismatches"]["samples"][0]["diff"]
        if e["kind"] == "changed"
        for k in ("position", "key")
    ],
    "row_count as text": lambda b: b["mismatches"]["samples"][0]["diff"][1].update(new="19"),
    "quantile as text": lambda b: b["latency"]["legacy"].update(p95_ms="0.7 ms"),
    "hazard lock not a pair": lambda b: b["rollback"]["hazards"][1].update(
        strongest_lock=["orders"]
    ),
    "hazard of another script": lambda b: b["rollback"]["hazards"][0].update(script="deploy"),
    "one rollback step": lambda b: b["rollback"].update(steps=["kill it"]),
    "verified as text": lambda b: b["rollback"].update(verified="yes"),
    "killed as text": lambda b: b["timeline"].update(killed="no"),
    "event without actor": lambda b: b["timeline"]["events"][0].pop("actor"),
    "sample counts missing": lambda b: b["environment"]["samples"].pop("online"),
}


@pytest.mark.parametrize("mutate", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_bodies_fail_validation(mutate: Callable[[dict[str, Any]], None]) -> None:
    body = complete_report()
    assert schema_errors(body) == []
    mutate(body)
    assert schema_errors(body)


def test_real_reports_validate_and_the_index_lists_them(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT, "diff": DIFFERENT})
    reports = root / "reports"
    for flag, expected in (("eq", 0), ("diff", 1)):
        code, body, out = shadow_and_report(capsys, root, shop, flag, 60)
        assert code == expected, out
        assert schema_errors(body) == []
        assert len((reports / flag / "pilot.md").read_text(encoding="utf-8")) < 12_000
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert sorted(re.findall(r'href="([^"]*)"', index)) == ["diff/pilot.html", "eq/pilot.html"]
    assert all((reports / href).is_file() for href in re.findall(r'href="([^"]*)"', index))
    text = " ".join(visible_text(index).split())
    assert "2 flags 0 live 0 killed 2 not started" in text
    assert "pilot GO 60 samples" in text and "pilot NO-GO 60 samples" in text
    assert "everyone no report yet" in text
    assert not list(reports.glob(".index.html*"))  # no temporary file left behind

    # the kill switch shows up in the next report's timeline and in the index
    r = run_cli(
        capsys,
        "flag",
        "kill",
        "eq",
        "--reason",
        "alarm",
        "--actor",
        "tester",
        "--workspace",
        root,
        "--dsn",
        shop,
    )
    assert r.code == 0, r.err
    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 0, rep.err
    body = json.loads((reports / "eq" / "pilot.json").read_text(encoding="utf-8"))
    assert schema_errors(body) == []
    assert body["timeline"]["killed"] is True
    assert [e["actor"] for e in body["timeline"]["events"]] == ["tester"]
    page = (reports / "eq" / "pilot.html").read_text(encoding="utf-8")
    assert '<span class="killed-banner">KILLED</span>' in page[: page.index("</header>")]
    text = " ".join(visible_text((reports / "index.html").read_text(encoding="utf-8")).split())
    assert "2 flags 0 live 1 killed 1 not started" in text
    assert "killed stage pilot; all traffic on legacy" in text

    # --out outside the workspace: that folder gets an index of what was reported there
    elsewhere = root.parent / "elsewhere"
    rep = run_cli(capsys, "report", "diff", "--workspace", root, "--dsn", shop, "--out", elsewhere)
    assert rep.code == 1, rep.err
    index = (elsewhere / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'href="([^"]*)"', index) == ["diff/pilot.html"]
    assert "1 flag 0 live" in " ".join(visible_text(index).split())
