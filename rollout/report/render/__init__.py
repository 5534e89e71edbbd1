"""Render a go/no-go rollout report to a self-contained HTML page or to Markdown."""

from __future__ import annotations

from ._html import render_html, render_index
from ._markdown import render_markdown

__all__ = ["render_html", "render_index", "render_markdown"]
