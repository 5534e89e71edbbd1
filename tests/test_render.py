"""Rendering tests for rollout.render on hand-built report dicts (no database)."""

from __future__ import annotations

import copy
import html
import re
from typing import Any

import pytest

from rollout.render import md_code, md_fence, render_html, render_markdown

XSS = "<script>alert(1)</script>"
QUOTES = 'it\'s "quoted"'


def make_report(**overrides: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema_version": 1,
        "flag": "orders-recent",
        "description": "keyset pagination for the recent-orders page",
        "owner": "team-orders",
        "kind": "read",
        "stage": "shadow-pilot",
        "stages": ["shadow-pilot", "canary", "ramp-25", "full"],
        "verdict": "GO",
        "reasons": ["all 5 gates passed"],
        "generated_at": "2026-11-28T10:00:00+00:00",
        "toolkit_version": "0.1.0",
        "samples": 200,
        "gates": [
            {
                "name": "min_samples",
                "figure": 200,
                "threshold": 200,
                "passed": True,
                "display": "200 samples (need ≥ 200)",
                "reason": "enough paired samples",
            },
            {
                "name": "mismatch_rate",
                "figure": 0.015,
                "threshold": 0.0,
                "passed": False,
                "display": "1.5% mismatching (allowed 0%)",
                "reason": "3 results differ from legacy",
            },
            {
                "name": "latency_ratio",
                "figure": 1.03,
                "threshold": 1.2,
                "passed": True,
                "display": None,
                "reason": "p95 within budget",
            },
            {
                "name": "failures",
                "figure": None,
                "threshold": "none new",
                "passed": None,
                "display": "",
                "reason": "not evaluated",
            },
        ],
        "mismatches": {
            "count": 3,
            "rate": 0.015,
            "by_kind": {"changed": 2, "missing": 1},
            "samples": [
                {
                    "tenant": "acme",
                    "params": {"customer_id": 7},
                    "diff": [
                        {"kind": "columns", "legacy": ["id", "total"], "new": ["id", "sum"]},
                        {"kind": "row_count", "legacy": 20, "new": 19},
                        {"kind": "missing", "row": {"id": "7", "total": "1.50"}},
                        {"kind": "extra", "row": {"id": "8", "total": None}},
                        {
                            "kind": "changed",
                            "position": 3,
                            "key": {"id": "7"},
                            "columns": ["total"],
                            "legacy": {"id": "7", "total": "1.50"},
                            "new": {"id": "7", "total": "1.60"},
                        },
                    ],
                    "truncated": False,
                }
            ],
        },
        "latency": {
            "quantile": 0.95,
            "legacy": {
                "p50_ms": 0.41,
                "p90_ms": 0.6,
                "p95_ms": 0.7,
                "p99_ms": 1.2,
                "mean_ms": 0.45,
                "n": 200,
            },
            "new": {
                "p50_ms": 0.43,
                "p90_ms": 0.62,
                "p95_ms": 0.72,
                "p99_ms": 1.4,
                "mean_ms": 0.47,
                "n": 200,
            },
            "ratio": 1.03,
            "ratio_ci": [0.97, 1.08],
            "confidence": 0.98,
            "change_pct": 3.0,
            "mann_whitney_p": 0.41,
        },
        "failures": {
            "legacy": {"count": 0, "by_sqlstate": {}},
            "new": {"count": 2, "by_sqlstate": {"57014": 2}},
            "new_only": 2,
        },
        "locks": {
            "legacy": {"lock_timeouts": 0},
            "new": {"lock_timeouts": 1},
            "note": "lock_timeout was 2s on both paths",
        },
        "tenants": [
            {
                "tenant": "acme",
                "samples": 100,
                "mismatches": 3,
                "legacy_p50_ms": 0.4,
                "new_p50_ms": 0.41,
                "new_failures": 0,
            },
            {
                "tenant": "globex",
                "samples": 100,
                "mismatches": 0,
                "legacy_p50_ms": 0.42,
                "new_p50_ms": 0.44,
                "new_failures": 2,
            },
        ],
        "rollback": {
            "script_path": "rollback/orders-recent.sql",
            "script": "DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx;\n",
            "migration_path": "rollback/orders-recent.deploy.sql",
            "migration": "CREATE INDEX CONCURRENTLY orders_customer_created_idx\n"
            "  ON orders (customer_id, created_at DESC, id DESC);\n",
            "verified": False,
            "verification": "not verified: run `rollout rollback verify orders-recent`",
            "flag_command": "rollout flag kill orders-recent --reason 'no-go at shadow-pilot'",
            "steps": [
                "Return serving to legacy: rollout flag kill orders-recent --reason "
                "'no-go at shadow-pilot'",
                'Undo the schema change: psql "$DATABASE_URL" -f rollback/orders-recent.sql',
            ],
        },
        "environment": {
            "server_version": "PostgreSQL 18.6",
            "database": "host=db.internal dbname=shop user=app",
            "runs": [
                "3f1c2a9e-0000-4000-8000-000000000001",
                "3f1c2a9e-0000-4000-8000-000000000002",
            ],
            "first_observation": "2026-11-28T09:00:00+00:00",
            "last_observation": "2026-11-28T09:55:00+00:00",
            "toolkit_version": "0.1.0",
        },
    }
    report.update(overrides)
    return report


def hostile_report() -> dict[str, Any]:
    """Every free-text field an attacker-influenced value could reach, poisoned."""
    report = make_report(description=f"{XSS} {QUOTES}", reasons=[f"reason {XSS}"])
    report["gates"][0]["reason"] = f"gate {XSS}"
    report["gates"][0]["display"] = f"display {XSS}"
    sample = report["mismatches"]["samples"][0]
    sample["tenant"] = f"tenant {XSS}"
    sample["params"] = {"q": XSS}
    changed = sample["diff"][4]
    changed["legacy"]["total"] = f"{XSS} {QUOTES}"
    sample["diff"][2]["row"]["total"] = XSS
    report["rollback"]["script"] = f"-- {XSS}\nSELECT '{QUOTES}';\n"
    report["rollback"]["migration"] = f"-- {XSS}\n"
    report["rollback"]["steps"] = [f"step {XSS}"]
    report["locks"]["note"] = XSS
    return report


def many_samples_report(n: int = 80) -> dict[str, Any]:
    report = make_report(verdict="NO-GO", reasons=["mismatch rate 40% exceeds 0%"])
    base = report["mismatches"]["samples"][0]
    samples = []
    for i in range(n):
        sample = copy.deepcopy(base)
        sample["tenant"] = f"tenant-{i}"
        sample["params"] = {"customer_id": i, "note": "x" * 400}
        sample["diff"] = sample["diff"] * 10
        for entry in sample["diff"]:
            if entry["kind"] == "changed":
                entry["legacy"]["total"] = "9" * 500
        samples.append(sample)
    report["mismatches"]["samples"] = samples
    report["mismatches"]["count"] = n
    return report


def visible_text(page: str) -> str:
    """Tag-free, entity-decoded text of an HTML page (roughly what a reader sees)."""
    body = re.sub(r"<style.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


# --------------------------------------------------------------------------- HTML


@pytest.mark.parametrize(
    ("verdict", "css_class"), [("GO", "go"), ("NO-GO", "nogo"), ("INCONCLUSIVE", "inconclusive")]
)
def test_html_verdict_badge(verdict: str, css_class: str) -> None:
    page = render_html(make_report(verdict=verdict))
    assert f'<div class="badge {css_class}"' in page
    assert f">{verdict}</div>" in page
    assert f"<title>{verdict} · orders-recent · shadow-pilot" in page


def test_html_headline_comes_first() -> None:
    page = render_html(make_report(reasons=["mismatch rate 1.5% exceeds 0%", "p99 regressed"]))
    header = page[: page.index("</header>")]
    for text in (
        "badge",
        "orders-recent",
        "shadow-pilot",
        "canary",
        "mismatch rate 1.5% exceeds 0%",
        "p99 regressed",
    ):
        assert text in header
    assert page.index("badge") < page.index('id="gates"')


def test_html_gates_table() -> None:
    text = visible_text(render_html(make_report()))
    assert "200 samples (need ≥ 200)" in text
    assert "enough paired samples" in text
    assert "1.5% mismatching (allowed 0%)" in text
    assert "✗ fail" in text and "✓ pass" in text and "n/a" in text
    # no display string: the raw figure and threshold are shown instead
    assert "1.03" in text and "1.2" in text
    assert "2 / 4" in text  # gates passed, headline figure


def test_html_latency_section_and_chart() -> None:
    page = render_html(make_report())
    text = visible_text(page)
    assert "1.03×" in text
    assert "98% confidence interval 0.97–1.08" in text
    assert "Mann–Whitney p = 0.41" in text
    assert "+3.0%" in text
    assert "0.41 ms" in text and "1.4 ms" in text
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count('class="bar-legacy"') == 5  # 4 quantiles + legend
    assert svg.count('class="bar-new"') == 5
    for q in ("p50", "p90", "p95", "p99"):
        assert f">{q}</text>" in svg


def test_html_latency_without_samples() -> None:
    empty_path = {
        "p50_ms": None,
        "p90_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "mean_ms": None,
        "n": 0,
    }
    report = make_report(
        verdict="INCONCLUSIVE",
        latency={
            "quantile": 0.95,
            "legacy": empty_path,
            "new": dict(empty_path),
            "ratio": None,
            "ratio_ci": None,
            "confidence": None,
            "change_pct": None,
            "mann_whitney_p": None,
        },
    )
    page = render_html(report)
    assert "<svg" not in page
    assert "No latency samples to chart." in page
    assert "no confidence interval" in page


def test_html_correctness_diffs() -> None:
    page = render_html(make_report())
    text = visible_text(page)
    assert "3 mismatching results" in " ".join(text.split())
    assert "changed 2, missing 1" in text
    for title in (
        "Column lists differ",
        "Row counts differ",
        "Row only in legacy result",
        "Row only in new result",
        "Row changed (at position 3; key id=7)",
    ):
        assert title in text
    assert '<td class="chg">1.60</td>' in page
    assert '<span class="col odd">sum</span>' in page
    assert '<td class="null">NULL</td>' in page
    assert "<td>7</td>" in page


def test_html_marks_empty_and_absent_values() -> None:
    report = make_report()
    changed = report["mismatches"]["samples"][0]["diff"][4]
    changed["legacy"] = {"id": 12345, "total": "", "note": "x"}
    changed["new"] = {"id": 12345, "total": None}
    changed["columns"] = ["total", "note"]
    page = render_html(report)
    assert "<td>12345</td>" in page  # identifiers keep their digits, no thousands separator
    assert '<td class="chg null">&#39;&#39;</td>' in page
    assert '<td class="chg null">NULL</td>' in page
    assert '<td class="chg null">(absent)</td>' in page


def test_html_bounds_diff_samples() -> None:
    page = render_html(many_samples_report(40))
    assert page.count('<div class="sample">') == 10
    assert "first 10 of 40" in page
    assert "more differences in this sample are not shown" in page


def test_html_failures_locks_tenants_environment() -> None:
    text = " ".join(visible_text(render_html(make_report())).split())
    assert "57014" in text and "query_canceled" in text
    assert "2 failed only on the new path" in text
    assert "lock timeouts" in text and "lock_timeout was 2s on both paths" in text
    assert "globex" in text
    assert "PostgreSQL 18.6" in text
    assert "host=db.internal dbname=shop user=app" in text
    assert "3f1c2a9e-0000-4000-8000-000000000002" in text
    assert "2026-11-28T09:00:00+00:00 → 2026-11-28T09:55:00+00:00" in text


def test_html_rollback_section() -> None:
    page = render_html(make_report())
    section = page[page.index('id="rollback"') : page.index('id="environment"')]
    assert "<pre><code>DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx;" in section
    assert "<pre><code>CREATE INDEX CONCURRENTLY" in section
    command = "rollout flag kill orders-recent --reason &#39;no-go at shadow-pilot&#39;"
    assert f"<pre><code>{command}</code></pre>" in section
    # the plan is ordered: flag first, then the schema script
    assert section.index("Return serving to legacy") < section.index("Undo the schema change")
    assert '<span class="pill na">not verified</span> not verified: run' in section


def test_html_rollback_script_missing() -> None:
    report = make_report()
    report["rollback"]["script"] = None
    report["rollback"]["migration"] = None
    page = render_html(report)
    assert '<span class="pill fail">no script</span>' in page
    assert "Expected at <code>rollback/orders-recent.sql</code>" in page
    assert "was not found" in page
    assert ">missing</b>" in page


def test_html_escapes_everything() -> None:
    page = render_html(hostile_report())
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "it&#39;s &#34;quoted&#34;" in page
    assert QUOTES not in page
    # escaped values still read correctly once decoded
    assert XSS in visible_text(page)


def test_html_is_self_contained() -> None:
    page = render_html(many_samples_report(5))
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|srcset)\s*=", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page
    # every href is an in-page anchor
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


def test_html_tolerates_missing_sections() -> None:
    minimal = {"flag": "f", "verdict": "INCONCLUSIVE", "reasons": ["no samples yet"]}
    page = render_html(minimal)
    assert "INCONCLUSIVE" in page and "no samples yet" in page
    assert "Latency was not reported." in page
    assert "No rollback plan was reported." in page


def test_unknown_verdict_renders_amber() -> None:
    page = render_html(make_report(verdict="maybe"))
    assert '<div class="badge inconclusive"' in page
    assert ">MAYBE</div>" in page


# --------------------------------------------------------------------------- Markdown


def test_markdown_core_content() -> None:
    md = render_markdown(make_report(verdict="NO-GO", reasons=["mismatch rate 1.5% exceeds 0%"]))
    assert md.startswith("## 🔴 NO-GO — `orders-recent` at stage `shadow-pilot`")
    assert "- mismatch rate 1.5% exceeds 0%" in md
    assert "| Gate | Result | Figure | Reason |" in md
    assert "| `min_samples` | ✅ pass | 200 samples (need ≥ 200) | enough paired samples |" in md
    assert "1.03 (threshold 1.2)" in md
    assert "```sh\nrollout flag kill orders-recent --reason 'no-go at shadow-pilot'\n```" in md
    assert "```sql\nDROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx;\n```" in md
    assert md.index("1. Return serving to legacy") < md.index("2. Undo the schema change")
    assert "`total` `1.50` → `1.60`" not in md  # column names are prose, values are code
    assert "total `1.50` → `1.60`" in md
    assert "row count: legacy 20, new 19" in md


def test_markdown_short_with_many_samples() -> None:
    md = render_markdown(many_samples_report(200))
    assert len(md) < 12_000
    assert md.count("tenant **tenant-") == 3
    assert "Showing 3 of 200 diff samples" in md


def test_markdown_long_script_is_clipped() -> None:
    report = make_report()
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2000
    md = render_markdown(report)
    assert len(md) < 12_000
    assert "(first part)" in md


def test_markdown_table_cells_escape_pipes_and_newlines() -> None:
    report = make_report()
    report["gates"][0]["reason"] = "a | b\nc"
    report["gates"][0]["name"] = "x|y"
    md = render_markdown(report)
    row = next(line for line in md.splitlines() if "x\\|y" in line)
    assert "a \\| b<br>c" in row
    # every table row has exactly the header's number of unescaped pipes
    for line in md.splitlines():
        if line.startswith("|"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5


def test_markdown_escapes_outside_code() -> None:
    md = render_markdown(hostile_report())
    outside_code = re.sub(r"(`{3,}).*?\n\1", "", md, flags=re.S)  # drop fenced blocks
    outside_code = re.sub(r"(`+).+?\1", "", outside_code)  # drop code spans
    assert "<script>" not in outside_code
    assert "\\<script\\>alert(1)\\</script\\>" in md  # description, reasons, tenant
    assert f"```sql\n-- {XSS}\nSELECT '{QUOTES}';\n```" in md  # SQL stays verbatim in a fence


def test_markdown_fence_outgrows_backticks_in_sql() -> None:
    report = make_report()
    report["rollback"]["script"] = "SELECT 1; -- ```` not a fence end\n"
    md = render_markdown(report)
    assert "`````sql\nSELECT 1; -- ```` not a fence end\n`````" in md


def test_markdown_helpers() -> None:
    assert md_fence("a ``` b", "sql") == "````sql\na ``` b\n````"
    assert md_fence("plain") == "```\nplain\n```"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x`") == "`` `x` ``"
    assert md_code("a|b", in_table=True) == "`a\\|b`"


def test_markdown_tolerates_missing_sections() -> None:
    md = render_markdown({"flag": "f", "verdict": "INCONCLUSIVE", "reasons": []})
    assert "INCONCLUSIVE" in md
    assert "no reasons were recorded" in md
    assert "No rollback plan was reported." in md
