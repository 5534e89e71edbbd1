"""Markdown escaping for the pull-request comment: prose, table cells, code spans, fences."""

from __future__ import annotations

import re
from typing import Any

from ._format import fmt_num, fmt_value

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&])")
_BACKTICKS = re.compile(r"`+")


def md_text(value: Any) -> str:
    """Escape text for Markdown prose: no HTML, no emphasis/links/code, one line."""
    text = value if isinstance(value, str) else fmt_num(value)
    text = " ".join(text.splitlines())
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_cell(value: Any) -> str:
    """Escape text for a Markdown table cell: as prose, newlines become <br>."""
    text = value if isinstance(value, str) else fmt_num(value)
    return "<br>".join(md_text(line) for line in text.splitlines()) if text else ""


def md_code(value: Any, in_table: bool = False) -> str:
    """Inline code span whose delimiter is longer than any backtick run in the value."""
    text = value if isinstance(value, str) else fmt_value(value)
    text = " ".join(text.splitlines())
    if in_table:
        text = text.replace("|", "\\|")
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    ticks = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or not text.strip():
        text = f" {text} "
    return f"{ticks}{text}{ticks}"


def md_fence(value: Any, lang: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run in the content."""
    text = value if isinstance(value, str) else fmt_value(value)
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"
