"""The HTML report page, section by section, on reports built from model objects
(tests/report_builder.py): what a release manager reads, escaped and self-contained."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.report.render._sql import highlight_sql
from tests.report_builder import (
    NEW_SQL,
    QUOTES,
    XSS,
    canary_report,
    hostile_report,
    html_page,
    make_report,
    many_samples_report,
    none_needed_report,
    schema_v1_report,
    section,
    timeline_report,
    verified_report,
    visible_text,
)

# --------------------------------------------------------------------------- HTML


@pytest.mark.parametrize(
    ("verdict", "css_class"), [("GO", "go"), ("NO-GO", "nogo"), ("INCONCLUSIVE", "inconclusive")]
)
def test_html_verdict_badge(verdict: str, css_class: str) -> None:
    page = html_page(make_report(verdict=verdict))
    assert f'<div class="badge {css_class}"' in page
    assert f">{verdict}</div>" in page
    assert f"<title>{verdict} · orders-recent · shadow-pilot" in page


def test_html_headline_comes_first() -> None:
    page = html_page(make_report(reasons=["mismatch rate 1.5% exceeds 0%", "p99 regressed"]))
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


def gate_row(page: str, name: str) -> str:
    start = page.index(f"<td><code>{name}</code></td>")
    return page[page.rindex("<tr", 0, start) : page.index("</tr>", start)]


def test_html_gates_table() -> None:
    page = html_page(make_report())
    text = visible_text(page)
    assert "200 samples (need ≥ 200)" in text
    assert "enough paired samples" in text
    assert "1.5% mismatching (allowed 0%)" in text
    assert "✗ fail" in text and "✓ pass" in text and "? inconclusive" in text
    # no display string: the raw figure and threshold are shown instead
    assert "1.03" in text and "1.2" in text
    assert "at 98% confidence" in visible_text(gate_row(page, "latency"))
    # details the display string already carries are not repeated
    assert "by class" not in visible_text(gate_row(page, "max_new_failures"))
    report = make_report()
    report["gates"][3]["display"] = "2 > 0"
    row = visible_text(gate_row(html_page(report), "max_new_failures"))
    assert "by class: statement_timeout 2" in row
    assert 'class="open"' in gate_row(page, "max_new_failures")
    assert 'class="failed"' in gate_row(page, "generic_plan")
    # headline: info gates are not counted as judged
    header = visible_text(page[: page.index("</header>")])
    assert "4 / 7" in header and "1 informational" in header


def test_html_info_gate_shown_as_info() -> None:
    page = html_page(make_report())
    row = gate_row(page, "buffers")
    assert '<span class="pill info">info</span>' in row
    assert "pass" not in visible_text(row) and "fail" not in visible_text(row)
    assert 'class="info"' in row
    assert "do not affect the verdict" in page


def test_html_schema_v1_gates() -> None:
    """Without ``status``, ``passed`` decides; None is shown as n/a, not as info."""
    page = html_page(schema_v1_report())
    assert '<span class="pill na">n/a</span>' in gate_row(page, "max_new_failures")
    assert '<span class="pill info">' not in page


def test_html_latency_section_and_chart() -> None:
    page = html_page(make_report())
    section = page[page.index('id="latency"') : page.index('id="correctness"')]
    text = " ".join(visible_text(section).split())
    # leads with the Hodges-Lehmann ratio the gate judges, then the quantile ratio
    assert "Typical latency, new ÷ legacy: 1.04× (98% confidence interval 0.991–1.09)" in text
    assert "change +4.0%" in text
    assert "p95: new ÷ legacy = 1.03× (bootstrap 98% confidence interval 0.97–1.08)" in text
    assert text.index("1.04×") < text.index("1.03×")
    # the p-value says what it tests, against the noise-widened tolerance
    assert "Mann–Whitney p = 0.41" in text
    assert (
        "a one-sided test of whether the new path is slower than legacy × 1.155 "
        "(the 15.5% tolerance, widened by A/A noise); the gate fails when p is below 0.02."
    ) in text
    assert "0.41 ms" in text and "1.4 ms" in text
    assert "would be needed" not in text
    header = visible_text(page[: page.index("</header>")])
    assert "1.04×" in header and "CI 0.991–1.09" in header
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
            "hl_ratio": None,
            "hl_ci": None,
            "effective_tolerance": 0.1,
            "samples_needed": None,
        },
    )
    page = html_page(report)
    assert "<svg" not in page
    assert "No latency samples to chart." in page
    assert "no confidence interval" in page
    assert "not estimated — too few timed executions (0 legacy, 0 new)" in page


def test_html_latency_undecided_and_too_few() -> None:
    report = make_report()
    report["latency"].update(samples_needed=1_840, mann_whitney_p=0.2, hl_ratio=1.2)
    text = " ".join(visible_text(html_page(report)).split())
    assert "Undecided: about 1,840 samples per path would be needed" in text

    report["latency"].update(hl_ratio=None, hl_ci=None, mann_whitney_p=None, samples_needed=None)
    report["latency"]["legacy"]["n"] = 12
    text = " ".join(visible_text(html_page(report)).split())
    assert "not estimated — too few timed executions (12 legacy, 200 new)" in text
    assert "Mann–Whitney" not in text


def test_html_noise_present() -> None:
    page = html_page(make_report())
    latency = visible_text(page[page.index('id="latency"') : page.index('id="correctness"')])
    latency = " ".join(latency.split())
    assert "Noise from the A/A calibration (legacy against itself, 100 samples)" in latency
    assert "legacy ÷ legacy = 1.05× (CI 0.97–1.12)" in latency
    correctness = page[page.index('id="correctness"') : page.index('id="failures"')]
    correctness = " ".join(visible_text(correctness).split())
    assert "Noise from the A/A calibration: 1% of 100 legacy-against-legacy pairs" in correctness
    assert "No A/A calibration run" not in page


def test_html_noise_absent() -> None:
    report = make_report()
    report["noise"] = {
        "samples": 0,
        "compared": 0,
        "mismatch_rate": None,
        "latency_ratio": None,
        "latency_ci": None,
    }
    report["mismatches"]["noise_rate"] = None
    page = html_page(report)
    command = "rollout shadow orders-recent --stage shadow-pilot --aa"
    hint = f"No A/A calibration run — <code>{command}</code>"
    assert page.count(hint) == 2  # latency and correctness
    assert "widened by A/A noise" not in page
    # schema 1 bodies predate the calibration: no claim either way
    assert "A/A" not in html_page(schema_v1_report())


def test_html_correctness_diffs() -> None:
    page = html_page(make_report())
    text = visible_text(page)
    assert "3 mismatching results" in " ".join(text.split())
    assert "changed 2, missing 1" in text
    for title in (
        "Column lists differ",
        "Row counts differ",
        # a row only in legacy next to one only in new: one table, labelled per row
        "Rows only in one result (1 only in legacy, 1 only in new)",
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
    page = html_page(report)
    assert "<td>12345</td>" in page  # identifiers keep their digits, no thousands separator
    assert '<td class="chg null">&#39;&#39;</td>' in page
    assert '<td class="chg null">NULL</td>' in page
    assert '<td class="chg null">(absent)</td>' in page


def test_html_bounds_diff_samples() -> None:
    page = html_page(many_samples_report(40))
    assert page.count('<div class="sample">') == 10
    assert "(10 shown; 30 more mismatching executions not shown)" in page
    assert "more differences in this sample are not shown" in page


def test_html_failures_locks_tenants_environment() -> None:
    text = " ".join(visible_text(html_page(make_report())).split())
    assert "57014" in text and "query_canceled" in text
    assert "2 failed only on the new path (statement_timeout 2)" in text
    assert "lock timeouts" in text and "lock_timeout was 2s on both paths" in text
    assert "globex" in text
    assert "2 statement_timeout 2" in text  # tenant's new failures with their class
    assert "PostgreSQL 18.6" in text
    assert "host=db.internal dbname=shop user=app" in text
    assert "3f1c2a9e-0000-4000-8000-000000000002" in text
    assert "2026-11-28T09:00:00+00:00 → 2026-11-28T09:55:00+00:00" in text


def test_html_rollback_section() -> None:
    page = html_page(make_report())
    section = page[page.index('id="rollback"') : page.index('id="environment"')]
    # both scripts highlighted server-side: keywords wrapped, names left plain
    kw = '<span class="k">{}</span>'.format
    drop = " ".join(kw(w) for w in ("DROP", "INDEX", "CONCURRENTLY", "IF", "EXISTS"))
    assert f'<pre class="sql"><code>{drop} orders_customer_created_idx;' in section
    assert f'<pre class="sql"><code>{kw("CREATE")} {kw("INDEX")} {kw("CONCURRENTLY")}' in section
    command = "rollout flag kill orders-recent --reason &#39;no-go at shadow-pilot&#39;"
    assert f"<pre><code>{command}</code></pre>" in section
    # the plan is ordered: flag first, then the schema script
    assert section.index("Return serving to legacy") < section.index("Undo the schema change")
    assert '<span class="pill na">not verified</span> run `rollout rollback verify' in section


def test_html_rollback_script_missing() -> None:
    report = make_report()
    report["rollback"]["script"] = None
    report["rollback"]["migration"] = None
    page = html_page(report)
    assert (
        '<span class="pill fail">not verified</span> <strong>No rollback script.</strong>' in page
    )
    assert "Expected at <code>rollback/orders-recent.sql</code>" in page
    assert "was not found" in page
    assert "<b>not verified</b><span>rollback: no script</span>" in page


def test_html_escapes_everything() -> None:
    page = html_page(hostile_report())
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "it&#39;s &#34;quoted&#34;" in page
    assert QUOTES not in page
    # escaped values still read correctly once decoded
    assert XSS in visible_text(page)


def test_html_is_self_contained() -> None:
    page = html_page(many_samples_report(5))
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|srcset)\s*=", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page
    # every href is an in-page anchor
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


def test_html_tolerates_missing_sections() -> None:
    minimal = {"flag": "f", "verdict": "INCONCLUSIVE", "reasons": ["no samples yet"]}
    page = html_page(minimal)
    assert "INCONCLUSIVE" in page and "no samples yet" in page
    assert "Latency was not reported." in page
    assert "No rollback plan was reported." in page


def test_unknown_verdict_renders_amber() -> None:
    page = html_page(make_report(verdict="maybe"))
    assert '<div class="badge inconclusive"' in page
    assert ">MAYBE</div>" in page


def test_html_failures_by_class() -> None:
    page = html_page(make_report())
    table = page[page.index("<th>Failure class</th>") : page.index('id="locks"')]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, flags=re.S)
    texts = [" ".join(visible_text(r).split()) for r in rows]
    # classes in a fixed reading order; legacy, new, only-new, then the SQLSTATEs
    assert texts == [
        "serialization_failure 1 0 0 40001 serialization_failure (legacy 1, new 0)",
        "deadlock 0 1 0 40P01 deadlock_detected (legacy 0, new 1)",
        "statement_timeout 0 2 2 57014 query_canceled (legacy 0, new 2)",
    ]
    assert rows[2].startswith('<tr class="failed">')  # only the new path failed this way


def test_html_failures_schema_v1_classified_from_sqlstates() -> None:
    text = section(html_page(schema_v1_report()), "failures", "locks")
    assert "statement_timeout 0 2 — 57014 query_canceled" in text
    assert "serialization_failure 1 0 —" in text


def test_html_lock_holds_difference_sentence() -> None:
    page = html_page(make_report())
    text = section(page, "locks", "plans")
    assert (
        "The new path takes RowExclusiveLock on orders where legacy took AccessShareLock." in text
    )
    assert "Legacy took AccessShareLock on customers; the new path does not lock it." in text
    # the stronger lock on the new path comes first and is marked
    assert text.index("RowExclusiveLock on orders where") < text.index("on customers;")
    assert '<li class="stronger">The new path takes <code>RowExclusiveLock</code>' in page


def test_html_lock_difference_grouping_and_fallback() -> None:
    report = make_report()
    locks = report["locks"]
    locks["only_new_holds"] = [["a", "AccessExclusiveLock"], ["b", "AccessExclusiveLock"]]
    locks["only_legacy_holds"] = []
    for path in ("legacy", "new"):
        del locks[path]["held"]  # only the difference lists: still a sentence
    text = section(html_page(report), "locks", "plans")
    assert "The new path takes AccessExclusiveLock on a and b, which legacy did not lock." in text
    assert "Locks held by each path" not in text


def test_html_lock_waits_and_same_locks() -> None:
    page = html_page(make_report())
    text = section(page, "locks", "plans")
    assert "mean wait per execution 0.2 ms 1.3 ms" in text
    assert "longest wait 4.1 ms 12.0 ms" in text
    assert "lock timeouts (55P03) 0 1" in text
    assert "RowExclusiveLock on orders 3 7" in text  # waited on, legacy and new
    assert "Locks held by each path (3 relations)" in text
    assert "orders AccessShareLock RowExclusiveLock" in text

    report = make_report()
    same = [["orders", "AccessShareLock"]]
    report["locks"].update(only_new_holds=[], only_legacy_holds=[])
    report["locks"]["legacy"]["held"] = report["locks"]["new"]["held"] = same
    text = section(html_page(report), "locks", "plans")
    assert "Both paths take the same locks (1 relation)." in text


def test_html_plan_shapes() -> None:
    page = html_page(make_report())
    plans = page[page.index('id="plans"') : page.index('id="generic-plans"')]
    tree = (
        "Limit\n"
        "└─ Sort\n"
        "   └─ Hash Join\n"
        "      ├─ Seq Scan on orders\n"
        "      └─ Hash\n"
        "         └─ Seq Scan on customers"
    )
    assert f'<pre class="tree"><code>{tree}</code></pre>' in plans
    assert "<code>Limit\n└─ Index Scan on orders_customer_created_idx</code>" in plans
    # side by side: legacy column before new column
    assert plans.index("<h3>Legacy</h3>") < plans.index("<h3>New</h3>") < plans.index("Hash Join")
    text = " ".join(visible_text(plans).split())
    assert "The plans differ in shape." in text
    assert "touches 2.5× the shared buffers of legacy" in text
    assert "7 of 10 samples" in text and "3 of 10 samples" in text
    assert "shared buffers per execution (median) 12 30 2.5×" in text
    assert "execution time (median, EXPLAIN ANALYZE) 0.08 ms 0.2 ms 2.5×" in text


def test_html_plan_shape_that_does_not_parse_is_shown_verbatim() -> None:
    report = make_report()
    odd = "Seq Scan on weird(name, Limit)"  # brackets in a relation name
    report["plans"]["legacy"]["shapes"] = [{"shape": odd, "count": 10}]
    page = html_page(report)
    assert f'<pre class="tree"><code>{odd}</code></pre>' in page


def test_html_no_plan_samples() -> None:
    report = make_report()
    report["plans"] = {
        "samples": 0,
        "buffers_ratio": None,
        "same_shape": False,
        "legacy": {"samples": 0, "shapes": []},
        "new": {"samples": 0, "shapes": []},
    }
    report["generic_plans"] = {"checks": [], "regressions": [], "worst_new_ratio": None}
    text = section(html_page(report), "plans", "stage-impact")
    assert "No EXPLAIN samples for this stage." in text
    assert "No generic-plan check for this stage." in text


def test_html_generic_regression_highlighted() -> None:
    page = html_page(make_report())
    part = page[page.index('id="generic-plans"') : page.index('id="stage-impact"')]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", part, flags=re.S)
    assert len(rows) == 2
    regressed, fine = rows  # regressions sort first
    assert regressed.startswith('<tr class="regressed">') and "globex" in regressed
    assert '<span class="pill fail">regression</span>' in regressed
    assert "<strong>45×</strong>" in regressed
    assert " ".join(visible_text(regressed).split()).startswith(
        "globex 0.2 ms 20 buffers 0.25 ms 21 buffers 1.25× 0.2 ms 20 buffers 9 ms 4,100 buffers"
    )
    assert fine.startswith('<tr class="">') and "acme" in fine and "regression" not in fine
    text = " ".join(visible_text(part).split())
    assert "Worst new-path generic ÷ custom: 45× (limit 5×)" in text
    assert "far slower than its custom plan for globex" in text


def test_html_stage_impact_table() -> None:
    page = html_page(canary_report())
    text = section(page, "stage-impact", "tenants")
    assert (
        "Serving moved from stage shadow-pilot to canary at 2026-11-28T08:00:00+00:00 by alice."
        in text
    )
    assert "Online traffic in the 60 minutes before against the 60 minutes after" in text
    assert "Before (shadow-pilot) After (canary) After ÷ before" in text
    assert "requests 1,000 1,200" in text
    assert "served by the new path 0 (0%) 60 (5%)" in text
    assert "p95 latency 0.9 ms 1.8 ms 2×" in text
    assert "mean lock wait 0.05 ms — " in text
    assert "failures: deadlock 0 2" in text
    assert "pool checkout waits are not recorded yet" in text
    part = page[page.index('id="stage-impact"') : page.index('id="tenants"')]
    assert '<tr class="worse"><td>failures: deadlock</td>' in part


def test_html_stage_impact_absent() -> None:
    text = section(html_page(make_report()), "stage-impact", "tenants")
    assert "No stage change with online traffic to compare yet" in text


def test_html_queries_and_database_stats() -> None:
    page = html_page(make_report())
    part = page[page.index('id="queries"') : page.index('id="rollback"')]
    assert part.count("<details>") == 2
    assert html.escape(NEW_SQL, quote=True) in part
    text = " ".join(visible_text(part).split())
    assert "Legacy query · inline · 3 lines" in text
    assert "New query · queries/orders-recent.new.sql · 4 lines" in text
    env = page[
        page.index('id="database-stats"') : page.index(
            "</section>", page.index('id="database-stats"')
        )
    ]
    env = " ".join(visible_text(env).split())
    assert "deadlocks 1" in env and "transactions committed xact_commit 604" in env
    assert "buffer cache hit ratio 99.6%" in env
    assert '<tr class="worse"><td>deadlocks' in page  # a deadlock deserves a second look
    assert '<tr class=""><td>transactions rolled back' in page


def test_html_escapes_new_sections() -> None:
    page = html_page(hostile_report())
    assert "<script" not in page
    esc = "&lt;script&gt;alert(1)&lt;/script&gt;"
    locks = page[page.index('id="locks"') : page.index('id="plans"')]
    assert f"<code>rel {esc}</code>" in locks  # relation name in the difference sentence
    assert f"<code>mode {esc}</code>" in locks
    assert f"<code>RowExclusiveLock on {esc}</code>" in locks  # waited on
    plans = page[page.index('id="plans"') : page.index('id="stage-impact"')]
    assert "├─ Seq Scan on &lt;script&gt;alert`1`&lt;/script&gt;" in plans
    assert "└─ Index Scan on it&#39;s &#34;quoted&#34;" in plans
    assert f"Seq Scan on weird({esc}" in plans  # unparseable, verbatim and escaped
    assert f"tenant {esc}" in plans
    queries = page[page.index('id="queries"') : page.index('id="rollback"')]
    assert f"SELECT &#39;{esc}&#39; AS it&#39;s &#34;quoted&#34;" in queries
    assert f"queries/{esc}.sql" in queries
    assert f"class {esc} 1" in page  # gate details
    assert f"<code>{esc}</code>" in page  # SQLSTATE
    assert XSS in visible_text(page)


def rollback_part(page: str) -> str:
    return page[page.index('id="rollback"') : page.index('id="environment"')]


def header_text(page: str) -> str:
    return " ".join(visible_text(page[: page.index("</header>")]).split())


@pytest.mark.parametrize(
    ("report", "card"),
    [
        (make_report(), "<b>not verified</b><span>rollback script</span>"),
        (
            verified_report(),
            "<b>verified</b><span>rollback script; takes AccessExclusiveLock</span>",
        ),
        (none_needed_report(), "<b>none needed</b><span>rollback: no schema change</span>"),
    ],
    ids=["not-verified", "verified", "none-needed"],
)
def test_html_rollback_kpi_card(report: dict[str, Any], card: str) -> None:
    page = html_page(report)
    assert card in page[: page.index("</header>")]
    assert ">missing<" not in page


def test_html_rollback_none_needed() -> None:
    section = rollback_part(html_page(none_needed_report()))
    assert '<span class="pill pass">none needed</span> No schema rollback: no schema change;' in (
        section
    )
    assert "No rollback script" not in section and "not verified" not in section


def test_html_rollback_hazards_table() -> None:
    page = html_page(verified_report())
    section = rollback_part(page)
    assert '<span class="pill pass">verified</span> the rollback restores the schema' in section
    text = " ".join(visible_text(section).split())
    assert "Verification reused from 2026-11-28T09:58:00+00:00" in text
    assert "✓ the new path's query prepares on the migrated schema" in text
    assert "✓ the migration applies again after the rollback" in text
    assert "it was applied in the scratch copy first" in text  # a fact, no tick
    assert "Why it is not verified" not in text
    table = section[section.index('id="hazards"') :]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, flags=re.S)
    texts = [" ".join(visible_text(r).split()) for r in rows]
    assert texts == [
        "rollback 1 2 DROP INDEX CONCURRENTLY IF EXISTS orders_customer_created_idx none measured"
        " runs CONCURRENTLY, which cannot be in a transaction — —",
        "rollback 2 4 ALTER TABLE orders DROP COLUMN note AccessExclusiveLock on orders"
        " also ShareRowExclusiveLock on customers +1 weaker lock — drops a column and its data —",
        "migration 1 1 CREATE INDEX orders_customer_created_idx ON orders (customer_id)"
        " ShareLock on orders — — not rewound",
    ]
    # not transactional, or blocking every read, or destroying data: highlighted
    assert [r.startswith('<tr class="severe">') for r in rows] == [True, True, False]
    # the hazards sit between the rollback script and the migration it undoes
    assert section.index("Rollback script (step 2)") < section.index('id="hazards"')
    assert section.index('id="hazards"') < section.index("Migration it undoes")


def test_html_rollback_differences_when_not_verified() -> None:
    report = verified_report(
        verified=False,
        status="not verified: index orders_customer_created_idx still exists",
        differences=["index orders_customer_created_idx still exists"],
        migration_differences=["column orders.note differs"],
        resumable=False,
    )
    text = " ".join(visible_text(rollback_part(html_page(report))).split())
    assert "not verified index orders_customer_created_idx still exists" in text
    assert "Why it is not verified" in text
    assert (
        "the schema still differs from before the migration: index orders_customer_created_idx"
        in (text)
    )
    assert "does not recreate the target's schema: column orders.note differs" in text
    assert "✗ the migration does not apply again after the rollback" in text


def test_html_sql_highlighting_escapes() -> None:
    report = make_report()
    script = (
        "-- </pre><script>alert(1)</script>\n"
        'SELECT \'<b>x</b>\', "we""ird" FROM t WHERE a = 1.5 AND b = $1;\n'
        "DO $fn$ BEGIN PERFORM '<i>'; END $fn$;\n"
    )
    report["rollback"]["script"] = script
    section = rollback_part(html_page(report))
    assert "<script" not in section and "<b>" not in section and "<i>" not in section
    assert '<span class="c">-- &lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;</span>' in section
    assert '<span class="s">&#39;&lt;b&gt;x&lt;/b&gt;&#39;</span>' in section
    assert '<span class="s">$fn$ BEGIN PERFORM &#39;&lt;i&gt;&#39;; END $fn$</span>' in section
    assert '<span class="n">1.5</span>' in section and '<span class="p">$1</span>' in section
    assert "&#34;we&#34;&#34;ird&#34;" in section  # a quoted identifier stays plain text
    start = section.index('<pre class="sql">')
    block = section[start : section.index("</pre>", start)]
    assert html.unescape(re.sub(r"<[^>]+>", "", block)) == script


@given(st.text())
def test_highlight_sql_keeps_every_character(sql: str) -> None:
    runs = highlight_sql(sql)
    assert "".join(text for _, text in runs) == sql
    assert {css for css, _ in runs} <= {"", "k", "s", "c", "n", "p"}
    assert all(text for _, text in runs)


def test_html_diff_kinds_are_tables_not_json() -> None:
    report = make_report()
    report["mismatches"]["samples"][0]["diff"] = [
        {"kind": "columns", "legacy": ["id"], "new": ["id"], "note": "key column(s) sku not in"},
        {"kind": "column_types", "columns": ["total", "created_at"]},
        {"kind": "order", "rows": 20, "note": "the same rows in another order"},
        {"kind": "duplicate_key", "side": "new", "key": {"id": "7", "tenant": "acme"}},
        {"kind": "value", "legacy": "'shipped'", "new": "None"},
        {"kind": "missing", "row": {"id": "1", "total": "2"}},
        {"kind": "missing", "row": {"id": "3", "total": None}},
        {"kind": "extra", "row": {"id": "9"}},
        {"kind": "brand_new_kind", "detail": 1},
    ]
    page = html_page(report)
    part = page[page.index('id="correctness"') : page.index('id="failures"')]
    text = " ".join(visible_text(part).split())
    assert "Column lists differ" in text and "key column(s) sku not in" in text
    assert "Column types differ total created_at" in text
    assert "Same rows, different order Both results hold the same 20 rows" in text
    assert "Duplicate key in the new result id tenant new 7 acme" in text
    assert "Values differ value legacy 'shipped' new None" in text
    # consecutive rows only in legacy share one table; the new-only row has other columns
    assert "Rows only in legacy result (2) id total legacy 1 2 legacy 3 NULL" in text
    assert "Row only in new result id new 9" in text
    # only a kind the renderer does not know is shown as raw JSON
    raw = re.findall(r"<pre><code>(.*?)</code></pre>", part, flags=re.S)
    assert raw == ["{&#34;kind&#34;: &#34;brand_new_kind&#34;, &#34;detail&#34;: 1}"]


def test_html_latency_distribution_chart() -> None:
    page = html_page(make_report())
    part = page[page.index('id="latency-distribution"') : page.index('id="correctness"')]
    svg = part[part.index("<svg") : part.index("</svg>")]
    assert svg.count('class="dot-legacy"') == 4 and svg.count('class="dot-new"') == 4
    assert svg.count("<polyline") == 2
    for label in ("50%", "90%", "95%", "99%"):
        assert f">{label}</text>" in svg
    assert "<title>new p99: 1.4 ms</title>" in svg
    assert "latency, ms</text>" in svg  # 0.41–1.4 ms: a linear axis
    assert "the dashed lines merely join them" in part  # says what is measured and what not

    report = make_report()
    report["latency"]["new"].update(p90_ms=30.0, p95_ms=35.0, p99_ms=80.0)
    wide = html_page(report)
    assert "latency, ms (log scale)</text>" in wide

    report = make_report()
    report["latency"]["new"] = {k: None for k in report["latency"]["new"]}
    one = html_page(report)
    svg = one[one.index('<svg class="chart ecdf"') :]
    svg = svg[: svg.index("</svg>")]
    assert svg.count('class="dot-new"') == 0 and svg.count("<polyline") == 1


def test_html_timeline_not_started() -> None:
    page = html_page(make_report())
    assert "Not started: every runner serves legacy." in header_text(page)
    text = section(page, "timeline", "tenants")
    assert "Not started: every runner serves legacy until the flag is set to a stage." in text
    assert "shadow-pilot this report serves new: nobody shadows: tenants acme, globex" in text
    assert "canary serves new: tenants acme shadows: nobody" in text
    assert "No audit events" in text


def test_html_timeline_live_elsewhere() -> None:
    page = html_page(timeline_report(stage="canary"))
    assert "Live now at stage canary — this report judges stage shadow-pilot." in header_text(page)
    assert '<li class="todo live-here">canary</li>' in page
    text = section(page, "timeline", "tenants")
    assert "canary live serves new: tenants acme" in text
    assert "Audit events (newest first)" in text
    assert "2026-11-28T11:00:00+00:00 bob set canary canary looks fine —" in text
    assert (
        "2026-11-28T10:30:00+00:00 alice advance forced shadow-pilot → canary GO at shadow-pilot"
        " 5b0c1d2e-0000-4000-8000-000000000009"
    ) in text


def test_html_timeline_killed_is_prominent() -> None:
    page = html_page(timeline_report(stage="canary", killed=True))
    header = page[: page.index("</header>")]
    assert '<span class="killed-banner">KILLED</span> all traffic is served by legacy' in header
    assert '<li class="todo killed-here">canary</li>' in header
    part = page[page.index('id="timeline"') : page.index('id="tenants"')]
    assert '<div class="callout bad"><span class="killed-banner">KILLED</span>' in part
    assert '<span class="pill fail">killed here</span>' in part
    assert '<tr class="kill">' in part


def test_html_environment_details() -> None:
    text = section(html_page(make_report()), "environment", "database-stats")
    assert "Host db.internal" in text
    assert "Database shop as app" in text
    assert "Connection host=db.internal dbname=shop user=app" in text
    assert "Samples 200 paired (160 offline shadow, 40 online)" in text
    assert "Run time 3 min 12 s" in text
    report = make_report()
    report["environment"]["database"] = "user=postgres dbname=rollout host=/run/pg"
    text = section(html_page(report), "environment", "database-stats")
    assert "Host Unix socket in /run/pg" in text
