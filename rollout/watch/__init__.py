"""Watching a live stage: judge every interval, abort or promote, notify.

Its modules, each about one thing:

- ``loop``: `rollout watch`: judge each watched flag's live stage every interval; abort or
  promote.
- ``notify``: Webhook notifications of ``rollout watch``: a JSON POST (Slack-compatible
  ``text``) sent from a thread of its own, with a timeout and retries, never holding up a
  decision.
"""

__all__ = [
    "loop",
    "notify",
]
