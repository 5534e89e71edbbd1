"""Headless Chromium driven over the DevTools protocol, for the reports in a real browser.

Chromium is started with ``--remote-debugging-pipe``: DevTools messages are NUL-terminated
JSON on file descriptors 3 (commands in) and 4 (replies and events out), so no websocket
client or other Python package is needed. Each page is loaded from a file:// URL and watched
for console messages, uncaught exceptions, every network request, JavaScript dialogs; then
the verdict badge's position is read and a screenshot is taken into the test's tmp dir.

``BROWSER`` is None when no browser binary is found: Debian's ``chromium`` (``apt-get install
chromium``), Chrome, or the binary named by ``ROLLOUT_BROWSER``; tests using the ``browser``
fixture (tests/conftest.py) skip then.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
