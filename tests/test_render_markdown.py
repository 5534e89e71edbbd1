"""The Markdown report (a pull-request comment): its lines, escaping and size bound; and
environment events in both formats."""

from __future__ import annotations

import copy
import re

from rollout.report.render._md_escape import md_code, md_fence
from tests.report_builder import (
    HAZARDS,
    QUOTES,
    XSS,
    complete_report,
    hostile_report,
    html_page,
    make_report,
    many_samples_report,
    markdown_comment,
    none_needed_report,
    schema_errors,
    schema_v1_report,
    section,
    verified_report,
    visible_text,
)

# --------------------------------------------------------------------------- Markdown


def test_markdown_core_content() -> None:
    md = markdown_comment(make_report(verdict="NO-GO", reasons=["mismatch rate 1.5% exceeds 0%"]))
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


def test_markdown_gates_latency_failures_locks() -> None:
    md = markdown_comment(make_report())
    assert "| `buffers` | ℹ️ info | median 30 vs 12 buffers (2.50×) |" in md
    assert "| `max_new_failures` | ⚠️ inconclusive |" in md
    assert "| `generic_plan` | ❌ fail |" in md
    latency = [line for line in md.splitlines() if line.startswith("**Latency:**")]
    assert latency == [
        "**Latency:** new ÷ legacy 1.04× (Hodges–Lehmann, 98% CI 0.991–1.09) · "
        "p95 1.03× (CI 0.97–1.08) · Mann–Whitney p = 0.41 that new is slower than "
        "legacy × 1.155 · A/A noise 1.05×"
    ]
    assert (
        "**Failures:** legacy 1 (serialization\\_failure 1), new 3 (statement\\_timeout 2, "
        "deadlock 1) · only new failed: 2 (statement\\_timeout 2) · SQLSTATE `40001` "
        "serialization\\_failure ×1, `40P01` deadlock\\_detected ×1, `57014` query\\_canceled ×2"
    ) in md
    assert (
        "**Locks:** The new path takes `RowExclusiveLock` on `orders` where legacy took "
        "`AccessShareLock`. Legacy took `AccessShareLock` on `customers`; the new path "
        "does not lock it."
    ) in md
    assert "0 mismatches" not in md and "3 mismatches (1.5%)" in md
    assert "· A/A noise 1%" in md
    # each summary line is its own paragraph
    for head in ("**Latency:**", "**Failures:**", "**Locks:**"):
        before = md[: md.index(head)]
        assert before.endswith("\n\n")


def test_markdown_latency_samples_needed_and_no_noise() -> None:
    report = make_report()
    report["latency"]["samples_needed"] = 1_840
    report["noise"] = {
        "samples": 0,
        "compared": 0,
        "mismatch_rate": None,
        "latency_ratio": None,
        "latency_ci": None,
    }
    md = markdown_comment(report)
    assert "· about 1,840 samples per path would decide · no A/A calibration run" in md


OUTAGE = [
    {"at": "2026-03-02T10:14+00:00", "path": "legacy", "sqlstate": "57P01", "count": 3,
     "counted": 0},
    {"at": "2026-03-02T10:14+00:00", "path": "new", "sqlstate": "08000", "count": 4,
     "counted": 0},
    {"at": "2026-03-02T10:31+00:00", "path": "new", "sqlstate": "53300", "count": 2,
     "counted": 2},
]


def test_html_environment_events_after_the_failures() -> None:
    page = html_page(make_report(environment_events=OUTAGE))
    text = section(page, "failures", "locks")
    assert text.index("Failure class") < text.index("Environment events")
    assert ("9 environment failures (connection lost, server shut down or restarting, too many "
            "connections): 7 not counted against a gate") in text
    assert "2 counted, because they hit one path alone" in text
    table = page[page.index('id="environment-events"') : page.index('id="locks"')]
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", table, flags=re.S)
    assert [" ".join(visible_text(r).split()) for r in rows] == [
        "2026-03-02T10:14+00:00 legacy 57P01 admin_shutdown 3 0",
        "2026-03-02T10:14+00:00 new 08000 connection_exception 4 0",
        "2026-03-02T10:31+00:00 new 53300 too_many_connections 2 2",
    ]
    assert rows[2].startswith('<tr class="failed">') and not rows[1].startswith(
        '<tr class="failed">')
    assert "Environment events" not in html_page(make_report())  # none: no section


def test_markdown_environment_events() -> None:
    md = markdown_comment(make_report(environment_events=OUTAGE))
    line = next(x for x in md.splitlines() if x.startswith("**Environment events:**"))
    assert line == (
        "**Environment events:** 7 not counted, 2 counted (counted: one path alone while the "
        "other ran fine) · 2026-03-02T10:14+00:00 legacy `57P01` admin\\_shutdown ×3; "
        "2026-03-02T10:14+00:00 new `08000` connection\\_exception ×4; "
        "2026-03-02T10:31+00:00 new `53300` too\\_many\\_connections ×2 (2 counted)")
    assert md.index("**Failures:**") < md.index("**Environment events:**")
    assert "Environment events" not in markdown_comment(make_report(environment_events=[]))


def test_environment_events_validate_against_the_schema() -> None:
    body = complete_report()
    body["environment_events"] = copy.deepcopy(OUTAGE)
    body["failures"]["environment"] = {"legacy": {"count": 3, "counted": 0},
                                       "new": {"count": 6, "counted": 2}}
    assert schema_errors(body) == []
    body["environment_events"][0]["path"] = "both"
    del body["environment_events"][1]["counted"]
    assert len(schema_errors(body)) == 2


def test_markdown_no_failures() -> None:
    report = make_report()
    empty = {"count": 0, "by_sqlstate": {}, "by_class": {}}
    report["failures"] = {
        "legacy": empty,
        "new": dict(empty),
        "new_only": 0,
        "new_only_by_class": {},
    }
    assert "**Failures:** none on either path" in markdown_comment(report)


def test_markdown_schema_v1() -> None:
    md = markdown_comment(schema_v1_report())
    assert "| `max_new_failures` | ⚠️ n/a |" in md
    assert (
        "**Latency:** p95 legacy 0.7 ms, new 0.72 ms · new ÷ legacy 1.03× (98% CI 0.97–1.08)" in md
    )
    assert "Hodges" not in md and "A/A" not in md
    assert "**Failures:** legacy 1 (serialization\\_failure 1), new 3" in md
    assert "**Locks:**" not in md


def test_markdown_short_with_many_lock_differences() -> None:
    report = many_samples_report(200)
    locks = report["locks"]
    long_name = "x" * 200
    locks["only_new_holds"] = [[f"{long_name}{i}", f"Mode{i % 9}"] for i in range(300)]
    locks["only_legacy_holds"] = [[f"rel{i}", "AccessShareLock"] for i in range(300)]
    locks["legacy"]["held"] = locks["only_legacy_holds"]
    locks["new"]["held"] = locks["only_new_holds"]
    md = markdown_comment(report)
    assert len(md) < 12_000
    line = next(line for line in md.splitlines() if line.startswith("**Locks:**"))
    assert "(+7 more in the HTML report)" in line  # 9 new-only groups + 1 legacy-only group
    assert "and 295 more; the new path does not lock them." in html_page(report)


def test_markdown_short_with_many_samples() -> None:
    md = markdown_comment(many_samples_report(200))
    assert len(md) < 12_000
    assert md.count("tenant **tenant-") == 3
    assert "Showing 3 of 200 mismatching samples; the HTML report shows 10." in md


def test_markdown_long_script_is_clipped() -> None:
    report = make_report()
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2000
    md = markdown_comment(report)
    assert len(md) < 12_000
    assert "(first part)" in md


def test_markdown_table_cells_escape_pipes_and_newlines() -> None:
    report = make_report()
    report["gates"][0]["reason"] = "a | b\nc"
    report["gates"][0]["name"] = "x|y"
    md = markdown_comment(report)
    row = next(line for line in md.splitlines() if "x\\|y" in line)
    assert "a \\| b<br>c" in row
    # every table row has exactly the header's number of unescaped pipes
    for line in md.splitlines():
        if line.startswith("|"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5


def test_markdown_escapes_outside_code() -> None:
    md = markdown_comment(hostile_report())
    assert "`rel <script>alert(1)</script>`" in md  # relation names are code spans
    outside_code = re.sub(r"(`{3,}).*?\n\1", "", md, flags=re.S)  # drop fenced blocks
    outside_code = re.sub(r"(`+).+?\1", "", outside_code)  # drop code spans
    assert "<script>" not in outside_code
    assert "\\<script\\>alert(1)\\</script\\>" in md  # description, reasons, tenant
    assert f"```sql\n-- {XSS}\nSELECT '{QUOTES}';\n```" in md  # SQL stays verbatim in a fence


def test_markdown_fence_outgrows_backticks_in_sql() -> None:
    report = make_report()
    report["rollback"]["script"] = "SELECT 1; -- ```` not a fence end\n"
    md = markdown_comment(report)
    assert "`````sql\nSELECT 1; -- ```` not a fence end\n`````" in md


def test_markdown_helpers() -> None:
    assert md_fence("a ``` b", "sql") == "````sql\na ``` b\n````"
    assert md_fence("plain") == "```\nplain\n```"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x`") == "`` `x` ``"
    assert md_code("a|b", in_table=True) == "`a\\|b`"


def test_markdown_tolerates_missing_sections() -> None:
    md = markdown_comment({"flag": "f", "verdict": "INCONCLUSIVE", "reasons": []})
    assert "INCONCLUSIVE" in md
    assert "no reasons were recorded" in md
    assert "No rollback plan was reported." in md


def test_markdown_rollback_status_and_hazards() -> None:
    md = markdown_comment(verified_report())
    assert (
        "✅ **Rollback: verified** — the rollback restores the schema exactly; the migration "
        "re-applies cleanly"
    ) in md
    assert (
        "**Hazards:**\n\n"
        "- rollback script: strongest lock `AccessExclusiveLock` on `orders` (statement 2, "
        "line 4) · 1 statement not transactional, 1 statement destroying data\n"
        "- migration script: strongest lock `ShareLock` on `orders` (statement 1, line 1) · "
        "1 statement leaving sequences advanced\n"
    ) in md
    assert "Differences after the rollback" not in md
    assert md.index("**Rollback: verified**") < md.index("**Hazards:**") < md.index("1. Return")


def test_markdown_rollback_not_verified_and_none_needed() -> None:
    report = verified_report(
        verified=False,
        status="not verified: index i0 still exists",
        differences=[f"index i{i} still exists" for i in range(5)],
        migration_differences=["column orders.note differs"],
    )
    md = markdown_comment(report)
    assert "⚠️ **Rollback: not verified** — index i0 still exists" in md
    assert (
        "Differences after the rollback: index i0 still exists; index i1 still exists; "
        "index i2 still exists (+3 more in the HTML report)"
    ) in md
    md = markdown_comment(make_report())
    assert "⚠️ **Rollback: not verified** — run \\`rollout rollback verify orders-recent\\`" in md
    assert "**Hazards:**" not in md  # never verified: nothing measured
    md = markdown_comment(none_needed_report())
    assert "✅ **Rollback: none needed** — no schema change; the rewrite only uses" in md
    assert "No rollback script" not in md
    report = make_report()
    report["rollback"].update(script=None, verification="no rollback script")
    md = markdown_comment(report)
    assert (
        "❌ **Rollback: not verified** — no rollback script (expected at "
        "`rollback/orders-recent.sql`)."
    ) in md


def test_markdown_diff_kinds() -> None:
    report = make_report()
    report["mismatches"]["samples"][0]["diff"] = [
        {"kind": "order", "rows": 20, "note": "n"},
        {"kind": "duplicate_key", "side": "new", "key": {"id": "7"}},
        {"kind": "value", "legacy": "'shipped'", "new": "None"},
        {"kind": "column_types", "columns": ["total", "created_at"]},
    ]
    lines = [line.strip() for line in markdown_comment(report).splitlines()]
    assert lines[lines.index("1. tenant **acme** · `customer_id=7`") + 1 :][:4] == [
        "- column types differ: `total, created_at`",
        "- value: `'shipped'` → `None`",
        "- duplicate key in the new result: `id=7`",
        "- same 20 rows in a different order",
    ]


def test_markdown_short_with_many_hazards_and_differences() -> None:
    hazards = []
    for i in range(400):
        hazard = copy.deepcopy(HAZARDS[i % 3])
        hazard["statement"] = f"ALTER TABLE t{i} " + "x" * 300
        hazard["strongest_lock"] = [f"t{i}" + "y" * 200, "AccessExclusiveLock"]
        hazards.append(hazard)
    report = many_samples_report(200)
    details = verified_report(
        verified=False,
        status="not verified: " + "z" * 3000,
        differences=[f"index {'i' * 300}{n} still exists" for n in range(300)],
        hazards=hazards,
    )["rollback"]
    report["rollback"] = details
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2000
    md = markdown_comment(report)
    assert len(md) < 12_000
    assert md.count("- rollback script: strongest lock") == 1
    assert md.count("- migration script: strongest lock") == 1




def test_markdown_short_with_long_texts() -> None:
    report = many_samples_report(200)
    report["description"] = "d" * 50_000
    report["reasons"] = [f"reason {i} " + "r" * 5_000 for i in range(8)]
    for gate in report["gates"]:
        gate["reason"] = "g" * 5_000
        gate["display"] = "f" * 5_000
    report["rollback"]["steps"] = ["s" * 5_000, "t" * 5_000]
    report["rollback"]["verification"] = "not verified: " + "v" * 5_000
    report["rollback"]["script"] = "DROP INDEX i;\n" * 2_000
    report["rollback"]["hazards"] = copy.deepcopy(HAZARDS) * 100
    report["locks"]["only_new_holds"] = [[f"{'x' * 200}{i}", f"Mode{i}"] for i in range(30)]
    md = markdown_comment(report)
    assert len(md) < 12_000
    assert "reason 7 rrr" in md  # every reason is there, clipped
    assert "(first part)" in md  # the script gave way to the rest
