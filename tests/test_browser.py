"""The reports in a real browser: headless Chromium (tests/chromium.py) loads each page from a
file:// URL; nothing may be fetched, run or complained about, and the verdict is on the first
screen.

Skipped when no browser binary is found: Debian's ``chromium`` (``apt-get install chromium``),
Chrome, or the binary named by ``ROLLOUT_BROWSER``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from tests.chromium import (
    BROWSER,
    BROWSER_ENV,
    BROWSER_NAMES,
    PHONE,
    DevTools,
    assert_clean,
    assert_verdict_on_first_screen,
    visit,
    write,
)
from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import EQUIVALENT
from tests.report_builder import (
    XSS,
    hostile_report,
    html_page,
    index_data,
    index_html,
    make_report,
    many_samples_report,
    none_needed_report,
    schema_v1_report,
    shadow_and_report,
    timeline_report,
    verified_report,
)

pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason=(
        f"no Chromium or Chrome binary found ({', '.join(BROWSER_NAMES)} on PATH, or "
        f"{BROWSER_ENV}); install Debian's chromium package to run the browser tests"
    ),
)


# --------------------------------------------------------------------------- the harness


def test_the_harness_sees_scripts_requests_and_console_errors(
    browser: DevTools, tmp_path: Path
) -> None:
    """A page without the report's CSP that runs a script, logs an error and fetches an image
    (port 9 is refused by the browser itself): each is caught, so a clean report is clean."""
    page = write(
        tmp_path / "control.html",
        "<!DOCTYPE html><title>control</title><body><p>control</p>"
        "<script>window.__pwned = 1; console.error('boom')</script>"
        '<img src="http://127.0.0.1:9/pixel.png"></body>',
    )
    v = visit(browser, page, tmp_path / "control.png")
    assert v.page["pwned"] == "1"
    assert any("boom" in p for p in v.problems)
    assert "http://127.0.0.1:9/pixel.png" in v.requests


def test_the_csp_blocks_injected_markup(browser: DevTools, tmp_path: Path) -> None:
    """Had escaping failed, the report's Content-Security-Policy would still stop markup from
    running or fetching, and the browser would say so (which assert_clean treats as failure)."""
    report_page = html_page(make_report())
    head = report_page[: report_page.index("</head>")]
    page = write(
        tmp_path / "injected.html",
        head + "</head><body><script>window.__pwned = 1</script>"
        '<img src="http://127.0.0.1:9/pixel.png" onerror="window.__pwned = 2"></body></html>',
    )
    v = visit(browser, page, tmp_path / "injected.png")
    assert v.page["pwned"] is None
    assert any("Content Security Policy" in p for p in v.problems), v.problems


# --------------------------------------------------------------------------- hand-built reports

REPORTS = {
    "go": (make_report, "GO"),
    "nogo-many-samples": (many_samples_report, "NO-GO"),
    "verified-with-hazards": (verified_report, "GO"),
    "none-needed": (none_needed_report, "GO"),
    "killed": (lambda: timeline_report(stage="canary", killed=True), "GO"),
    "schema-1": (schema_v1_report, "GO"),
    "minimal": (lambda: {"flag": "f", "verdict": "INCONCLUSIVE", "reasons": ["x"]}, "INCONCLUSIVE"),
    "cut-short": (lambda: cut_short_report(), "INCONCLUSIVE"),
}


def cut_short_report() -> dict[str, Any]:
    """A report whose latest run was cut short by SIGTERM, and an earlier one never ended."""
    return make_report(
        verdict="INCONCLUSIVE",
        reasons=["the latest shadow run (1b2c3d4e, 12 of 200 samples) was cut short: "
                 "terminated (SIGTERM); a stage is GO only on a run that finished"],
        incomplete_runs=[
            {"run_id": "0a1b2c3d-0000-4000-8000-000000000000", "status": "running",
             "reason": None, "mode": "ab", "samples": 40, "requested": 200,
             "started_at": "2026-11-28T09:00:00+00:00"},
            {"run_id": "1b2c3d4e-0000-4000-8000-000000000000", "status": "failed",
             "reason": "terminated (SIGTERM)", "mode": "ab", "samples": 12, "requested": 200,
             "started_at": "2026-11-28T09:30:00+00:00"},
        ])


@pytest.mark.parametrize("name", list(REPORTS))
def test_report_in_the_browser(browser: DevTools, tmp_path: Path, name: str) -> None:
    make, verdict = REPORTS[name]
    page = write(tmp_path / f"{name}.html", html_page(make()))
    v = visit(browser, page, tmp_path / f"{name}.png")
    assert_clean(v)
    assert_verdict_on_first_screen(v, verdict)
    assert v.page["firstReasonTop"] is not None
    assert v.page["firstReasonTop"] < v.page["viewport"][1]  # the reasons start on screen too
    assert all(link.startswith("#") for link in v.page["links"])
    if name == "killed":
        assert v.page["killed"] and v.page["killed"][0] <= v.page["viewport"][1]
    if name == "cut-short":  # the runs that did not finish are said on the first screen
        assert v.page["incomplete"] and v.page["incomplete"][0] < v.page["viewport"][1]
        assert "terminated (SIGTERM)" in v.page["text"]


def test_report_on_a_phone_screen(browser: DevTools, tmp_path: Path) -> None:
    page = write(tmp_path / "phone.html", html_page(make_report(verdict="NO-GO")))
    v = visit(browser, page, tmp_path / "phone.png", viewport=PHONE)
    assert_clean(v)
    assert_verdict_on_first_screen(v, "NO-GO")


def test_hostile_report_runs_nothing(browser: DevTools, tmp_path: Path) -> None:
    report = hostile_report()
    tricks = [
        '<img src=x onerror="window.__pwned=1">',
        '"><svg onload=window.__pwned=2>',
        "</textarea></code></pre><script>window.__pwned=3</script>",
        "javascript:window.__pwned=4",
    ]
    report["reasons"] += tricks
    report["flag"] = tricks[1]
    report["mismatches"]["samples"][0]["tenant"] = tricks[0]
    report["rollback"]["script"] = "\n".join(f"-- {t}\nSELECT '{t}';" for t in tricks)
    v = visit(browser, write(tmp_path / "hostile.html", html_page(report)), tmp_path / "h.png")
    assert_clean(v)
    for text in (XSS, *tricks):
        assert text in v.page["text"]  # shown as text, not run as markup


def test_index_in_the_browser(browser: DevTools, tmp_path: Path) -> None:
    v = visit(
        browser, write(tmp_path / "index.html", index_html(index_data())), tmp_path / "i.png"
    )
    assert_clean(v)
    assert v.page["links"] == ["orders-recent/shadow-pilot.html", "orders-recent/canary.html"]
    assert XSS in v.page["text"]


# --------------------------------------------------------------------------- real reports

HOSTILE_FLAG = flag_yaml(
    "hostile",
    "SELECT '<script>window.__pwned=1</script>' AS v, id FROM items"
    " WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
    "SELECT '<img src=x onerror=window.__pwned=2>' AS v, id FROM items"
    " WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
).replace(
    "description: fixture flag hostile",
    "description: \"<svg onload='window.__pwned=3'>hi</svg>\"",
)


def test_real_reports_and_index_in_the_browser(
    browser: DevTools,
    shop: str,
    make_workspace: WorkspaceMaker,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    root = make_workspace({"eq": EQUIVALENT, "hostile": HOSTILE_FLAG})
    (root / "rollback" / "hostile.sql").write_text(
        "-- </pre><script>window.__pwned=4</script>\nSELECT 1;\n"
    )
    verdicts = {}
    for flag in ("eq", "hostile"):
        code, body, out = shadow_and_report(capsys, root, shop, flag, 60)
        assert code in (0, 1), out
        verdicts[flag] = body["verdict"]
    assert verdicts == {"eq": "GO", "hostile": "NO-GO"}  # every row differs in v
    reports = root / "reports"
    for flag, verdict in verdicts.items():
        v = visit(browser, reports / flag / "pilot.html", tmp_path / f"{flag}.png")
        assert_clean(v)
        assert_verdict_on_first_screen(v, verdict)
    hostile = visit(browser, reports / "hostile" / "pilot.html", tmp_path / "hostile-again.png")
    for text in (
        "<script>window.__pwned=1</script>",
        "<img src=x onerror=window.__pwned=2>",
        "<svg onload='window.__pwned=3'>hi</svg>",
        "-- </pre><script>window.__pwned=4</script>",
    ):
        assert text in hostile.page["text"]

    v = visit(browser, reports / "index.html", tmp_path / "index.png")
    assert_clean(v)
    assert sorted(v.page["links"]) == ["eq/pilot.html", "hostile/pilot.html"]
    for href in v.page["resolvedLinks"]:
        url = urlparse(href)
        assert url.scheme == "file" and Path(unquote(url.path)).is_file(), href
