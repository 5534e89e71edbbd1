"""The reports in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe``: DevTools messages are NUL-terminated
JSON on file descriptors 3 (commands in) and 4 (replies and events out), so no websocket
client or other Python package is needed. Each page is loaded from a file:// URL and watched
for console messages, uncaught exceptions, every network request, JavaScript dialogs; then
the verdict badge's position is read and a screenshot is taken into the test's tmp dir.

Skipped when no browser binary is found: Debian's ``chromium`` (``apt-get install chromium``),
Chrome, or the binary named by ``ROLLOUT_BROWSER``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from tests.conftest import WorkspaceMaker, flag_yaml
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
from tests.test_shadow import EQUIVALENT

BROWSER_ENV = "ROLLOUT_BROWSER"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT = 30.0
SETTLE = 0.3  # seconds to keep listening after the load event, for late requests or errors
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAPTOP = (1280, 720)
PHONE = (390, 844)


def find_browser() -> str | None:
    named = os.environ.get(BROWSER_ENV)
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason=(
        f"no Chromium or Chrome binary found ({', '.join(BROWSER_NAMES)} on PATH, or "
        f"{BROWSER_ENV}); install Debian's chromium package to run the browser tests"
    ),
)


# Put two inherited descriptors on fds 3 and 4, then exec the browser (a shell's redirection
# would do, but dash only knows descriptors 0-9).
ON_FDS_3_AND_4 = """
import os, sys
commands, replies = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2]))
os.dup2(commands, 3)
os.dup2(replies, 4)
os.set_inheritable(3, True)
os.set_inheritable(4, True)
os.execv(sys.argv[3], sys.argv[3:])
"""


class DevTools:
    """A headless Chromium and its DevTools connection over a pipe."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # the browser reads DevTools commands on fd 3 and writes replies on fd 4
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    ON_FDS_3_AND_4,
                    str(to_browser_r),
                    str(from_browser_w),
                    binary,
                    *flags,
                ],
                pass_fds=(to_browser_r, from_browser_w),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.log = log
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._inbox.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))

    def _pump(self, deadline: float) -> None:
        """Move one message from the pipe to the replies or the events (or time out)."""
        try:
            message = self._inbox.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return
        if message is None:
            raise RuntimeError(f"the browser went away; its log: {self.log}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while self._next_id not in self._replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {method} within {TIMEOUT:g} s")
            self._pump(deadline)
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {TIMEOUT:g} s")
            self._pump(deadline)

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)


@dataclass
class Visit:
    """What one page load did, as the browser saw it."""

    url: str
    requests: list[str]  # every URL fetched besides the page itself
    problems: list[str]  # console errors and warnings, exceptions, security messages
    dialogs: list[str]  # alert/confirm/prompt opened by a script
    page: dict[str, Any]  # facts read from the DOM after loading
    screenshot: Path


# Read after loading: the verdict badge's box, anything scripted, the visible text.
PROBE = """(() => {
  const badge = document.querySelector('.badge');
  const box = badge ? badge.getBoundingClientRect() : null;
  const onAttributes = [];
  for (const el of document.querySelectorAll('*'))
    for (const a of el.attributes)
      if (a.name.toLowerCase().startsWith('on')) onAttributes.push(el.tagName + ' ' + a.name);
  let hit = null;
  if (box && box.width > 0) {
    const el = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    hit = el ? (el.closest('.badge') !== null) : false;
  }
  return JSON.stringify({
    viewport: [innerWidth, innerHeight],
    badge: badge ? {text: badge.innerText.trim(), top: box.top, bottom: box.bottom,
                    left: box.left, right: box.right, width: box.width, height: box.height,
                    hit: hit, visibility: getComputedStyle(badge).visibility} : null,
    killed: [...document.querySelectorAll('header .killed-banner')].map(
      e => e.getBoundingClientRect().bottom),
    incomplete: [...document.querySelectorAll('header .incomplete')].map(
      e => e.getBoundingClientRect().top),
    firstReasonTop: (() => { const li = document.querySelector('.reasons li');
                             return li ? li.getBoundingClientRect().top : null; })(),
    scripts: document.scripts.length,
    images: document.images.length,
    iframes: document.querySelectorAll('iframe, object, embed').length,
    onAttributes: onAttributes,
    pwned: typeof window.__pwned === 'undefined' ? null : String(window.__pwned),
    text: document.body ? document.body.innerText : '',
    links: [...document.links].map(a => a.getAttribute('href')),
    resolvedLinks: [...document.links].map(a => a.href),
  });
})()"""


def visit(browser: DevTools, path: Path, shot: Path, viewport: tuple[int, int] = LAPTOP) -> Visit:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        width, height = viewport
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        url = path.resolve().as_uri()
        first = len(browser.events)
        nav = browser.send("Page.navigate", {"url": url}, session=session)
        assert "errorText" not in nav, nav
        browser.wait_for("Page.loadEventFired", session)
        browser.settle(SETTLE)
        events = [e for e in browser.events[first:] if e.get("sessionId") == session]
        probe = browser.send(
            "Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session
        )
        page = json.loads(probe["result"]["value"])
        png = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        shot.write_bytes(base64.b64decode(png["data"]))
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    requests, problems, dialogs = [], [], []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            if params["request"]["url"] != url:
                requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "warning",
            "assert",
        ):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            problems.append(f"{entry['source']} {entry['level']}: {entry['text']}")
        elif method == "Page.javascriptDialogOpening":
            dialogs.append(params.get("message", ""))
    return Visit(url, requests, problems, dialogs, page, shot)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    assert BROWSER is not None
    home = tmp_path_factory.mktemp("chromium")
    devtools = DevTools(BROWSER, home / "profile", home / "chromium.log")
    try:
        devtools.send("Browser.getVersion")
        yield devtools
    finally:
        devtools.close()


def assert_clean(v: Visit) -> None:
    """Nothing fetched, nothing complained, nothing ran, a screenshot taken."""
    assert v.requests == [], f"network requests from {v.url}: {v.requests}"
    assert v.problems == [], f"console problems on {v.url}: {v.problems}"
    assert v.dialogs == []
    page = v.page
    assert page["scripts"] == 0 and page["images"] == 0 and page["iframes"] == 0
    assert page["onAttributes"] == []
    assert page["pwned"] is None
    data = v.screenshot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def assert_verdict_on_first_screen(v: Visit, verdict: str) -> None:
    badge = v.page["badge"]
    width, height = v.page["viewport"]
    assert badge is not None and badge["text"] == verdict
    assert badge["visibility"] == "visible" and badge["hit"] is True  # not covered
    assert badge["top"] >= 0 and badge["bottom"] <= height, (badge, height)
    assert badge["left"] >= 0 and badge["right"] <= width, (badge, width)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


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
