"""What a reader sees of plan determinism, repeated generic-plan checks, business metrics and
the watcher's history: real reports from `rollout shadow`, a real stage change and real
watcher intervals, read in the HTML, the Markdown and the JSON Schema; hostile names stay
data, tampered bodies stay bounded, reports written before these keys render as before."""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.flags.workspace import Workspace
from rollout.judge.business import business_gate
from rollout.judge.model_json import report_from_json, to_json
from rollout.judge.plan_checks import (
    generic_gate,
    generic_summary,
    perturbation_gate,
    perturbation_summary,
)
from rollout.report.build import write_index
from rollout.store.store import Store
from rollout.watch.loop import watch
from tests.chromium import (
    BROWSER,
    DevTools,
    assert_clean,
    assert_verdict_on_first_screen,
    visit,
)
from tests.conftest import WorkspaceMaker
from tests.helpers import (
    FAILED,
    FULL,
    LIMIT,
    NO_TIE_BREAK,
    OUTLIER,
    SLOW_GENERIC,
    analysis_flag,
    business_flag,
    change_stage,
    check_yaml,
    checks,
    flag_file,
    quiet,
    record,
    record_checkouts,
    run_cli,
    session,
    start,
    table_checksums,
)
from tests.report_builder import (
    canary_report,
    html_page,
    make_report,
    markdown_comment,
    schema_errors,
    schema_v1_report,
    section,
    timeline_report,
    visible_text,
)

EVIL = "<img src=x onerror=alert(1)>"
NEW_HEADINGS = ("plan-determinism", "Plan determinism", "buffers-paired", "Every run",
                "generic-runs", "business-metrics", "Business metrics", "watcher-analysis",
                "Watcher analysis", "**Watcher:**", "sub-window")


def reported(capsys: pytest.CaptureFixture[str], root: Path, dsn: str, flag: str,
             stage: str = "pilot") -> tuple[int, dict[str, Any], str, str]:
    """``rollout report`` as a user runs it: exit code, JSON body, HTML, Markdown."""
    rep = run_cli(capsys, "report", flag, "--stage", stage, "--workspace", root, "--dsn", dsn)
    out = root / "reports" / flag
    body = json.loads((out / f"{stage}.json").read_text())
    return rep.code, body, (out / f"{stage}.html").read_text(), (out / f"{stage}.md").read_text()


def gate(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(g for g in body["gates"] if g["name"] == name)
    return found


def html_gate_row(page: str, name: str) -> str:
    start = page.index(f"<td><code>{name}</code></td>")
    row = page[page.rindex("<tr", 0, start): page.index("</tr>", start)]
    return " ".join(visible_text(row).split())


def md_line(md: str, head: str) -> str:
    return next(x for x in md.splitlines() if x.startswith(head))


def table_rows(page: str, css: str) -> list[str]:
    """The visible text of each body row of the first table with class ``css``."""
    start = page.index(f'<table class="{css}')
    body = page[page.index("<tbody>", start): page.index("</tbody>", start)]
    return [" ".join(visible_text(tr).split()) for tr in re.findall(r"<tr.*?</tr>", body, re.S)]


def with_displays(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as build_report writes it: every gate has a display string."""
    for g in body["gates"]:
        g["display"] = g["display"] or f"{g['figure']}"
    return body


def ms_runs(runs: list[float]) -> str:
    return ", ".join(f"{x:.3g}" for x in runs)


# -- plan determinism from a real `rollout shadow` ----------------------------------------


def test_a_distinct_on_no_go_shows_what_changed_under_which_plan(
    orders: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rewrite that dropped the tie-break matches in every shadow sample; the report
    says in words which setting changed new's result, shows the two runs side by side,
    and the comment says it in one line."""
    root = make_workspace({})
    (root / "flags" / "latest.yaml").write_text(flag_file("latest", FULL, NO_TIE_BREAK))
    r = run_cli(capsys, "shadow", "latest", "--samples", "12", "--seed", "7",
                "--workspace", root, "--dsn", orders)
    assert r.code == 0, r.err
    code, body, page, md = reported(capsys, root, orders, "latest")
    assert code == 1 and body["verdict"] == "NO-GO", body["reasons"]
    assert body["mismatches"]["count"] == 0  # today's plan hides it
    assert schema_errors(body) == []
    pert = body["perturbation"]
    n, blamed = pert["samples"], pert["counts"]["blamed"]
    first = pert["blamed"][0]
    exposed = first["new"][0]
    kinds = {d["kind"] for d in exposed["diff"]}
    what = "the same rows in another order" if kinds == {"order"} else "other rows"

    plans = section(page, "plans", "pools")
    det = plans[plans.index("Plan determinism"): plans.index("Generic plans")]
    assert det.startswith("Plan determinism ✗ fail")
    assert (f"New returns different results under another plan for {blamed} of {n} "
            "parameter set") in det
    assert gate(body, "plan_determinism")["reason"] in det  # the cause, in words
    assert "new alone changes its result with the plan" in det
    params = ", ".join(f"{k}={v}" for k, v in first["params"].items())
    assert f"Tenant {first['tenant']} · {params}" in det
    statements = "; ".join(f"SET LOCAL {k} = {v}" for k, v in exposed["settings"].items())
    assert f"New returned {what} under {exposed['setting']}: {statements}" in det
    # the diff sample: the path's first run against its run under the other plan
    change = next(d for d in exposed["diff"] if d["kind"] == "changed")
    column = change["columns"][0]
    det_html = page[page.index('id="plan-determinism"'): page.index('id="generic-plans"')]
    assert '<td class="label">first run</td>' in det_html
    assert '<td class="label">other plan</td>' in det_html
    assert '<td class="label">legacy</td>' not in det_html
    assert change["legacy"][column] in det and change["new"][column] in det
    tried = [s for s in pert["settings"] if s != "same plan"]
    assert f"Planner settings tried: {', '.join(tried)}." in det
    assert f"{pert['executions']} perturbed executions" in det
    assert "never counted in latency" in det
    # the gates table names the gate without dumping the evidence as JSON
    row = html_gate_row(page, "plan_determinism")
    assert '"diff"' not in row and '"setting"' not in row

    # repeated generic-plan checks: every run listed, each judged in words
    generic = plans[plans.index("Generic plans"):]
    assert "Each checked tenant's query ran 5 times under a custom and 5 times" in generic
    rows = table_rows(page, "compact generic-runs")
    checks_ = body["generic_plans"]["checks"]
    assert len(rows) == len(checks_) > 0
    for check, text in zip(checks_, rows, strict=True):
        assert text.startswith(f"{check['tenant']} {check['path']} "
                               f"{ms_runs(check['custom_runs'])} median"), text
        assert ms_runs(check["generic_runs"]) in text
        assert text.endswith("holds up"), text  # same plan, no regression
        assert "same plan" in text and check["custom_shape"] in text
    # buffers paired by parameter set
    pairs = body["plans"]["paired"]
    assert (f"median new ÷ legacy {body['plans']['paired_ratio_median']:.3g}× over "
            f"{len(pairs)} parameter sets explained on both paths") in plans

    line = md_line(md, "**Plan determinism:**")
    assert line.startswith(f"**Plan determinism:** ❌ new alone returns different results "
                           f"under another plan for {blamed} of {n} parameter set")
    assert f"tenant `{first['tenant']}`" in line and f"`{statements}`" in line
    assert (f"changed row: {column} `{change['legacy'][column]}` → "
            f"`{change['new'][column]}`") in line


def test_every_generic_run_is_shown_and_judged_in_words(tasks: str) -> None:
    """Real generic-plan checks on a skewed table: a generic plan consistently slower on
    another plan is a regression; one slow run among five holds up; the same plan and
    buffers slower throughout is timing noise. The reader sees every run of each."""
    slow = checks(tasks, SLOW_GENERIC, status="abc%")
    outlier = [dict(c, tenant="globex") for c in checks(tasks, OUTLIER)]
    noise = [{"path": "new", "tenant": "initech", "custom_ms": 0.2, "generic_ms": 4.0,
              "custom_buffers": 10, "generic_buffers": 10, "custom_runs": [0.2] * 5,
              "generic_runs": [4.0] * 5, "custom_buffer_runs": [10] * 5,
              "generic_buffer_runs": [10] * 5, "custom_shape": "Seq Scan on t",
              "generic_shape": "Seq Scan on t"}]
    summary = generic_summary(slow + outlier + noise, LIMIT)
    body = with_displays(make_report(generic_plans=json.loads(json.dumps(summary, default=str))))
    body["gates"] = [g for g in body["gates"] if g["name"] != "generic_plan"]
    body["gates"].append(generic_gate(summary, LIMIT).as_dict())
    assert schema_errors(body) == []
    page, md = html_page(body), markdown_comment(body)
    rows = {" ".join(r.split()[:2]): r for r in table_rows(page, "compact generic-runs")}
    assert set(rows) == {"acme legacy", "acme new", "globex legacy", "globex new",
                         "initech new"}
    slow_new = next(c for c in summary["checks"] if c["tenant"] == "acme"
                    and c["path"] == "new")
    assert ms_runs(slow_new["generic_runs"]) in rows["acme new"]
    assert rows["acme new"].endswith("regression consistently slower, another plan: "
                                     "a regression")
    assert f"custom: {slow_new['custom_shape']}" in rows["acme new"]
    assert f"generic: {slow_new['generic_shape']}" in rows["acme new"]
    outlier_new = next(c for c in summary["checks"] if c["tenant"] == "globex"
                       and c["path"] == "new")
    assert max(outlier_new["generic_runs"]) > 25  # the outlier is listed with the others
    assert ms_runs(outlier_new["generic_runs"]) in rows["globex new"]
    assert rows["globex new"].endswith("holds up")
    assert rows["initech new"].endswith("timing noise: same plan and buffers")
    generic = section(page, "generic-plans", "pools")
    assert ("Slower generic runs of the new path for initech were not counted against it"
            in generic)
    assert "the gate fails when the generic plan's median is beyond the limit" in generic
    assert "consistently far slower" in html_gate_row(page, "generic_plan")
    assert '"custom_runs"' not in html_gate_row(page, "generic_plan")
    assert "| `generic_plan` | ❌ fail |" in md


# -- business metrics around a real stage change -------------------------------------------


def test_business_checks_show_in_stage_impact_and_the_comment(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    checks_ = (check_yaml(gate="true"),
               check_yaml("checkout_failures", FAILED, direction="lower", tolerance=0.05))
    root = make_workspace({"pay": business_flag("pay", *checks_)})
    at = change_stage(root, shop, "pay")
    # the report judges "now": move the recorded change two hours back so both one-hour
    # windows have elapsed (the checks' own queries see checkouts around that time)
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("UPDATE rollout.flag_events SET at = at - interval '2 hours'"
                     " WHERE flag = 'pay'")
    at -= timedelta(hours=2)
    record_checkouts(shop, at, before=0.95, after=0.85)
    before = table_checksums(shop)
    code, body, page, md = reported(capsys, root, shop, "pay", stage="everyone")
    assert table_checksums(shop) == before
    assert code == 1 and schema_errors(body) == []
    success, failures = body["stage_impact"]["business"]
    assert (success["status"], failures["status"]) == ("fail", "fail")
    # the typed report reads back into the very JSON the CLI wrote, keys in their order
    assert json.dumps(to_json(report_from_json(body))) == json.dumps(body)
    assert list(body["stage_impact"]) == ["changed_at", "from_stage", "by", "window_minutes",
                                          "before", "after", "note", "business"]
    assert gate(body, "business")["status"] == "fail"  # only the gated check decides

    impact = section(page, "stage-impact", "timeline")
    assert "Business metrics" in impact
    assert ("Each check's query ran once per sub-window (10 minutes) of the 60 minutes "
            "before the change and the 60 minutes after it") in impact
    rows = table_rows(page, "business")  # each check: its figures, then its reason
    low, high = success["ci"]
    assert rows[0] == (
        f"checkout_success higher is better · gated {success['before']['mean']:.4g} mean of "
        f"6 sub-windows {success['after']['mean']:.4g} mean of 6 sub-windows "
        f"{success['change']:+.1%} 95% CI [{low:+.1%}, {high:+.1%}] 2.0% ✗ fail")
    assert rows[1].startswith(success["reason"])
    values = ", ".join(f"{v:.4g}" for v in success["after"]["values"])
    assert rows[1].endswith(f"after: {values}")
    assert rows[2].startswith("checkout_failures lower is better · informational")
    assert rows[2].endswith("5.0% ✗ fail") and rows[3].startswith(failures["reason"])
    gate_row = html_gate_row(page, "business")
    assert "checkout_success 0.02, checkout_failures 0.05" in gate_row  # tolerances
    assert "{" not in gate_row

    line = md_line(md, "**Business metrics:**")
    assert line.startswith(f"**Business metrics:** ❌ `checkout_success` fail (gated): "
                           f"{success['after']['mean']:.4g} after vs")
    assert "❌ `checkout_failures` fail (informational)" in line


# -- the watcher's history ------------------------------------------------------------------


def test_watcher_intervals_show_in_the_timeline_and_the_index_keeps_working(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two failing intervals the watcher tolerates, the third aborts: the report's timeline
    lists each with its decision, p-values and who acted; the index, whose newest row for
    the stage is then the watcher's (no files), still links the earlier page and says so."""
    root = make_workspace({"slow": analysis_flag("slow", "failure_limit: 2\n")})
    record(shop, root, "slow", start(root, shop, "slow"), 200, slower=1.3)
    _, first, _, _ = reported(capsys, root, shop, "slow")
    decisions = [watch(session(root, shop), ["slow"], once=True, log=quiet)[0].decision
                 for _ in range(3)]
    assert decisions == ["continue", "continue", "abort"]

    # the index, the watcher's row the newest for the stage
    with psycopg.connect(shop, autocommit=True) as conn:
        store = Store.open(conn)
        [row] = store.latest_reports(["slow"])  # flag, stage, verdict, samples, files, …
        assert (row[2], list(row[4])) == ("NO-GO", [])
        index = write_index(list(Workspace.load(root).flags.values()), store, root / "reports")
    text = " ".join(visible_text(index.read_text()).split())
    assert "pilot (killed) NO-GO 200 samples (judged by rollout watch over its window)" in text
    assert "the HTML page is from an earlier report" in text
    assert 'href="slow/pilot.html"' in index.read_text()  # the page `rollout report` wrote

    code, body, page, md = reported(capsys, root, shop, "slow")
    assert schema_errors(body) == []
    history = body["timeline"]["analysis"]
    assert [h["decision"] for h in history] == ["abort", "continue", "continue"]
    aborted = history[0]
    assert aborted["acted_by"].startswith("rollout watch (") and aborted["report_id"]

    timeline = section(page, "timeline", "tenants")
    assert "Watcher analysis (newest first)" in timeline
    assert ("rollout watch judged this flag in 3 intervals (2 continue, 1 abort). Latest, at "
            f"{aborted['at']}: abort: killed the flag") in timeline
    rows = table_rows(page, "analysis")
    assert len(rows) == 3
    assert rows[0].startswith(f"{aborted['at']} pilot state version 1 NO-GO "
                              f"{aborted['reasons'][0]}")
    assert "abort abort: killed the flag latency p < 0.001 (α 0.02) mismatches p > 0.999" \
        in rows[0]
    assert "200 pairs, latency 1.3" in rows[0] and "0 of 200 mismatched" in rows[0]
    assert "latency ✗" in rows[0] and "failed 3 GO streak 0" in rows[0]
    assert f"acted: {aborted['acted_by']} report {aborted['report_id']}" in rows[0]
    assert "continue latency p < 0.001" in rows[1] and "acted:" not in rows[1]
    assert "failed 2" in rows[1] and "failed 1" in rows[2]

    line = md_line(md, "**Watcher:**")
    assert line.startswith(f"**Watcher:** latest interval {aborted['at']}: **abort** (NO-GO, "
                           "stage `pilot`; latency p \\< 0.001, mismatches p \\> 0.999)")
    assert f"acted: {aborted['acted_by']}, report `{aborted['report_id']}`" in line
    assert line.endswith("3 intervals: 2 continue, 1 abort")
    assert first["timeline"]["analysis"] == []  # judged before any watcher looked


def test_the_timeline_shows_the_latest_20_intervals_and_counts_the_rest() -> None:
    body = with_displays(timeline_report(stage="canary"))
    body["timeline"]["analysis"] = [analysis_interval(i) for i in range(50)]
    assert schema_errors(body) == []
    page = html_page(body)
    assert len(table_rows(page, "analysis")) == 20
    timeline = section(page, "timeline", "tenants")
    assert "Watcher analysis (newest first, 20 of 50)" in timeline
    assert "30 earlier intervals not shown." in timeline
    assert "2026-11-28T10:00:00+00:00" in timeline  # the newest
    assert "2026-11-28T09:40:00+00:00" not in timeline  # the 21st newest


# -- bodies by hand: old ones, hostile ones, enormous ones ----------------------------------


def analysis_interval(i: int, decision: str = "continue", text: str = "") -> dict[str, Any]:
    """One ``store.history.analysis_history`` entry, ``i`` minutes before the newest."""
    at = f"2026-11-28T{10 - (i + 59) // 60 + 0:02d}:{(60 - i) % 60:02d}:00+00:00"
    return {
        "analysis_id": f"00000000-0000-4000-8000-{i:012d}", "at": at, "stage": "canary" + text,
        "state_version": 3, "window_start": at, "window_end": at, "verdict": "GO",
        "decision": decision, "failed_intervals": 0, "go_streak": i, "inconclusive_streak": 0,
        "latency_p": 0.4, "mismatch_p": 1.0,
        "figures": {"window": {"samples": 120, "hl_ratio": 1.01, "hl_ci": [0.98, 1.04],
                               "mismatches": 0, "compared": 120},
                    "stage": {"pairs_timed": 900}, "sequential": {"latency": {"alpha": 0.02}},
                    "gates": [{"name": "latency" + text, "status": "pass", "display": "d"}]},
        "reasons": ["every gate passed in the window" + text], "watcher": "w@host" + text,
        "acted_by": None, "report_id": None,
    }


def determinism_rows(tenant: str, setting: str, samples: int = 1, entries: int = 1
                     ) -> list[dict[str, Any]]:
    """``perturb.read`` rows: new changes under ``setting``, legacy never."""
    diff = [{"kind": "changed", "position": i, "columns": ["id"],
             "legacy": {"id": str(i), "note": tenant}, "new": {"id": str(i + 1000),
                                                                "note": tenant}}
            for i in range(entries)]
    rows = []
    for sample in range(samples):
        for name, settings in (("same plan", {}), (setting, {"enable_indexscan": "off"})):
            for path in ("legacy", "new"):
                changed = path == "new" and name == setting
                rows.append({"run_id": "r", "sample": sample, "path": path, "tenant": tenant,
                             "params": {"k": tenant}, "setting": name, "settings": settings,
                             "changed": changed, "strict_changed": changed,
                             "diff": diff if changed else None, "rows": 3, "sqlstate": None,
                             "error": None, "elapsed_ns": 1_000_000})
    return rows


def business_check(name: str, status: str = "fail", gated: bool = True,
                   values: int = 6) -> dict[str, Any]:
    """A ``business.business_impact`` entry."""
    side = {"start": "2026-11-28T07:00:00+00:00", "end": "2026-11-28T08:00:00+00:00",
            "values": [0.95] * values, "empty": 0, "not_elapsed": 0, "mean": 0.95}
    return {"name": name, "direction": "higher", "tolerance": 0.02, "gate": gated,
            "confidence": 0.95, "changed_at": "2026-11-28T08:00:00+00:00",
            "window_minutes": 60.0, "sub_window_minutes": 10.0, "before": side,
            "after": dict(side, mean=0.85, values=[0.85] * values), "change": -0.105,
            "ci": [-0.126, -0.087], "status": status,
            "reason": f"{name}: 0.85 after vs 0.95 before: worse", "lacking": False,
            "display": "0.85 after vs 0.95 before (-10.5%)"}


def sections_body(text: str = "", *, samples: int = 1, entries: int = 1, checks_: int = 2,
                  intervals: int = 3) -> dict[str, Any]:
    """A canary report with every new section, judged by the real gate functions; ``text``
    goes into every name a body carries."""
    body = with_displays(canary_report())
    body["verdict"] = "NO-GO"
    body["timeline"] = timeline_report(stage="canary")["timeline"]
    summary = perturbation_summary(determinism_rows("acme" + text, "no index scans" + text,
                                                    samples, entries))
    body["perturbation"] = json.loads(json.dumps(summary))
    body["gates"].append(perturbation_gate(summary).as_dict())
    impacts = [business_check(f"checkout_success{text}")]
    impacts += [business_check(f"check_{i}{text}", "pass", gated=False)
                for i in range(checks_ - 1)]
    body["stage_impact"]["business"] = impacts
    business = business_gate(impacts)
    assert business is not None
    body["gates"].append(business.as_dict())
    body["timeline"]["analysis"] = [
        analysis_interval(i, "abort" if i == 0 else "continue", text) for i in range(intervals)]
    body["timeline"]["analysis"][0].update(verdict="NO-GO", acted_by="rollout watch" + text,
                                           report_id="5b0c1d2e-0000-4000-8000-000000000001")
    return body


OLD_BODIES = {
    "schema 2": make_report,
    "schema 1": schema_v1_report,
    "canary": canary_report,
    "timeline": lambda: timeline_report(stage="canary"),
}


@pytest.mark.parametrize("name", list(OLD_BODIES))
def test_bodies_without_the_new_keys_render_as_before(name: str) -> None:
    """Reports written before these keys existed: no new heading, table or line; the
    generic-plan check still reads as one run per mode."""
    old = OLD_BODIES[name]()
    page, md = html_page(old), markdown_comment(old)
    for marker in NEW_HEADINGS:
        assert marker not in page and marker not in md, marker
    for head in ("**Plan determinism:**", "**Business metrics:**", "**Watcher:**"):
        assert head not in md
    if old.get("generic_plans", {}).get("checks"):
        assert "ran once under a custom and once under a generic plan" in page


def test_every_new_section_validates_and_reads() -> None:
    body = sections_body()
    assert schema_errors(body) == []
    page, md = html_page(body), markdown_comment(body)
    for marker in ("Plan determinism", "Business metrics", "Watcher analysis"):
        assert marker in page
    for head in ("**Plan determinism:** ❌", "**Business metrics:** ❌", "**Watcher:**"):
        assert head in md


SCHEMA_BREAKAGES = {  # what is broken -> where the schema must say so
    "decision": ("timeline/analysis/0/decision",
                 lambda b: b["timeline"]["analysis"][0].update(decision="panic")),
    # stage_impact is null or an object (oneOf): the error is reported at stage_impact
    "business status": ("stage_impact",
                        lambda b: b["stage_impact"]["business"][0].update(status="bad")),
    "business direction": ("stage_impact",
                           lambda b: b["stage_impact"]["business"][0].update(direction="up")),
    "perturbation count": ("perturbation/samples",
                           lambda b: b["perturbation"].update(samples=-1)),
    "exposure settings": ("perturbation/blamed/0/new/0/settings/enable_indexscan",
                          lambda b: b["perturbation"]["blamed"][0]["new"][0]["settings"].update(
                              enable_indexscan=False)),
}


@pytest.mark.parametrize("breakage", list(SCHEMA_BREAKAGES))
def test_schema_rejects_malformed_new_keys(breakage: str) -> None:
    where, breaks = SCHEMA_BREAKAGES[breakage]
    body = sections_body()
    breaks(body)
    errors = schema_errors(body)
    assert errors and all(e.startswith(where) for e in errors), errors


def test_hostile_names_stay_data_in_every_new_section() -> None:
    """A tenant, a planner setting, a check name, a watcher identity, a stage: markup in any
    of them is shown as text in the page and escaped in the comment."""
    body = sections_body(EVIL)
    page, md = html_page(body), markdown_comment(body)
    assert "<img" not in page
    shown = visible_text(page)
    assert f"Tenant acme{EVIL}" in shown
    assert f"under no index scans{EVIL}" in shown
    assert f"checkout_success{EVIL}" in " ".join(table_rows(page, "business"))
    assert f"acted: rollout watch{EVIL}" in " ".join(table_rows(page, "analysis"))
    outside_code = re.sub(r"(`+).+?\1", "", md)  # names in code spans are literal text
    assert re.search(r"(?<!\\)<img", outside_code) is None  # every other < escaped
    for head in ("**Plan determinism:**", "**Business metrics:**", "**Watcher:**"):
        line = md_line(md, head)
        assert f"`acme{EVIL}`" in line or f"`checkout_success{EVIL}`" in line \
            or f"`canary{EVIL}`" in line, line
    assert r"under no index scans\<img src=x onerror=alert(1)\>" in md
    assert r"acted: rollout watch\<img src=x onerror=alert(1)\>" in md


def test_enormous_bodies_stay_a_page_and_a_comment() -> None:
    """A tampered body with thousands of parameter sets, diff entries, checks and intervals:
    the page shows a bounded number of each and says how many more; the comment stays
    under its limit."""
    body = sections_body(samples=2000, entries=2000, checks_=2000, intervals=5000)
    body["perturbation"]["blamed"][0]["new"] *= 500
    body["generic_plans"]["checks"] = [
        dict(body["generic_plans"]["checks"][0], generic_runs=[1.0] * 5000,
             custom_runs=[1.0] * 5000) for _ in range(100)]
    body["plans"]["paired"] = [{"tenant": "t", "params": {}, "legacy_buffers": 1,
                                "new_buffers": 2, "ratio": 2.0}] * 3000
    page = html_page(body)
    # enormous single values and thousands of distinct decisions: still one comment
    huge = copy.deepcopy(body)
    huge["perturbation"]["blamed"][0]["new"][0]["setting"] = "s" * 100_000
    for i, interval in enumerate(huge["timeline"]["analysis"]):
        interval.update(decision=f"decision-{i}", at="t" * 100_000, verdict="v" * 100_000,
                        report_id="r" * 100_000, acted_by="a" * 100_000)
    huge["stage_impact"]["business"][0].update(name="n" * 100_000, display="d" * 100_000)
    for md in (markdown_comment(body), markdown_comment(huge)):
        assert len(md) < 12_000
    assert "5000 intervals: 1 decision-0, 1 decision-1" in markdown_comment(huge)
    assert len(page) < 3_000_000
    assert len(table_rows(page, "analysis")) == 20
    assert len(table_rows(page, "business")) == 2 * 20
    assert "1,980 more checks not shown" in page  # business
    assert "60 more checks not shown" in page  # generic plans
    assert "(5 shown, 1,995 more)" in page  # parameter sets new alone changed for
    # the first parameter set's 500 settings cut to 3, the other four have one each
    assert page.count("New returned other rows under no index scans") == 3 + 4
    assert "2,980 more parameter sets not shown" in page
    assert "4,980 earlier intervals not shown" in page
    assert "… 1990 more differences are not shown." in page
    assert "+4980)" in page  # runs beyond the 20 shown per mode


def test_a_copy_of_a_body_renders_the_same() -> None:
    """Rendering never changes the body it reads (the JSON file is written from it)."""
    body = sections_body()
    kept = copy.deepcopy(body)
    html_page(body)
    markdown_comment(body)
    assert body == kept


# -- in a browser ---------------------------------------------------------------------------


@pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome binary found")
def test_the_new_sections_in_the_browser(browser: DevTools, tmp_path: Path) -> None:
    body = sections_body(EVIL)
    page = tmp_path / "sections.html"
    page.write_text(html_page(body), encoding="utf-8")
    v = visit(browser, page, tmp_path / "sections.png")
    assert_clean(v)  # the hostile names ran nothing, fetched nothing
    assert_verdict_on_first_screen(v, "NO-GO")
    text = v.page["text"]
    assert "Plan determinism" in text and "Business metrics" in text
    assert "Watcher analysis" in text
    assert f"New returned other rows under no index scans{EVIL}" in text  # open by default
    assert f"checkout_success{EVIL}" in text
    assert "abort: killed the flag" in text
