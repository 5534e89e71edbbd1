"""Webhook notifications of ``rollout watch``: a JSON POST (Slack-compatible ``text``) sent
from a thread of its own, with a timeout and retries, never holding up a decision."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__

TIMEOUT_S = 5.0
"""Each attempt's connect and read timeout."""
RETRIES = 3
"""Attempts after the first, with backoff ``BACKOFF_S`` × 2^n."""
BACKOFF_S = 1.0
QUEUE_SIZE = 100
"""Notifications waiting to be sent; beyond it the newest is dropped (and counted)."""

Log = Callable[..., None]


@dataclass
class NotifierStats:
    """Plain counters (psycopg_pool's ``get_stats()`` model)."""

    sent: int = 0
    failed: int = 0
    """Notifications given up after every attempt."""
    dropped: int = 0
    """Refused because the queue was full."""
    attempts: int = 0


def resolve(webhook: str | None) -> str | None:
    """The URL a setting names: itself, or the value of ``env:NAME`` now (None when unset)."""
    if webhook is None:
        return None
    if webhook.startswith("env:"):
        return os.environ.get(webhook[4:]) or None
    return webhook


def describe(webhook: str) -> str:
    """A webhook as it may be logged: the environment variable's name, or the URL's scheme
    and host only (its path and query are the secret)."""
    if webhook.startswith("env:"):
        return f"${webhook[4:]}"
    from urllib.parse import urlsplit

    parts = urlsplit(webhook)
    return f"{parts.scheme}://{parts.hostname}/…"


def payload(text: str, event: dict[str, Any]) -> bytes:
    """The body: ``text`` for Slack-compatible incoming webhooks, the event for machines."""
    return json.dumps({"text": text, "event": event}, default=str).encode()


@dataclass
class Notifier:
    """Sends notifications in the background. ``send`` never blocks and never raises;
    ``close`` waits at most ``grace`` seconds for what is queued."""

    log: Log
    timeout: float = TIMEOUT_S
    retries: int = RETRIES
    backoff: float = BACKOFF_S
    stats: NotifierStats = field(default_factory=NotifierStats)
    _queue: queue.Queue[tuple[str, bytes] | None] = field(
        default_factory=lambda: queue.Queue(QUEUE_SIZE))
    _thread: threading.Thread | None = None
    _closing: threading.Event = field(default_factory=threading.Event)

    def send(self, webhook: str | None, text: str, event: dict[str, Any]) -> None:
        if webhook is None:
            return
        try:
            self._queue.put_nowait((webhook, payload(text, event)))
        except queue.Full:
            self.stats.dropped += 1
            self.log("warning", "notification_dropped", webhook=describe(webhook),
                     reason="queue full")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rollout-notify",
                                            daemon=True)
            self._thread.start()

    def close(self, grace: float = 10.0) -> None:
        """Stop after the queued notifications, or after ``grace`` seconds (a daemon
        thread: a webhook that hangs never keeps the process alive)."""
        self._closing.set()
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(grace)
        if self._thread.is_alive():
            self.log("warning", "notifications_abandoned", pending=self._queue.qsize())

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(*item)

    def _deliver(self, webhook: str, body: bytes) -> None:
        url = resolve(webhook)
        if url is None:
            self.stats.failed += 1
            self.log("warning", "notification_failed", webhook=describe(webhook),
                     error="the environment variable is not set")
            return
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:  # closing cuts the wait short: one more try, no more waiting
                self._closing.wait(self.backoff * 2 ** (attempt - 1))
            self.stats.attempts += 1
            request = urllib.request.Request(
                url, data=body, method="POST",
                headers={"Content-Type": "application/json",
                         "User-Agent": f"pg-rollout/{__version__}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read(1024)
                self.stats.sent += 1
                return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this body: trying again will not help
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                error = type(reason).__name__ if not str(reason) else str(reason)[:200]
        self.stats.failed += 1
        self.log("warning", "notification_failed", webhook=describe(webhook), error=error,
                 attempts=self.retries + 1)
