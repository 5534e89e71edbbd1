"""The jinja2 environments for the HTML and Markdown templates, with their filters."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ._format import (
    as_str,
    clip,
    fmt_ci,
    fmt_ms,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_pvalue,
    fmt_ratio,
    fmt_seconds,
    fmt_signed_pct,
    fmt_value,
)
from ._md_escape import md_cell, md_code, md_fence, md_text

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"
INDEX_TEMPLATE = "index.html.j2"

MD_MAX_TEXT = 300  # a description, reason, plan step or verification status
MD_MAX_CELL = 160  # a gate's figure or reason in the gates table


@lru_cache(maxsize=1)
def html_env() -> Environment:
    env = Environment(
        loader=PackageLoader("rollout", "templates/report"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(_common_filters())
    return env


@lru_cache(maxsize=1)
def markdown_env() -> Environment:
    env = Environment(
        loader=PackageLoader("rollout", "templates/report"),
        autoescape=False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(_common_filters())
    env.filters.update(
        text=md_text,
        cell=md_cell,
        code=md_code,
        code_cell=lambda value: md_code(value, in_table=True),
        fence=md_fence,
        clip=lambda value, limit: clip(as_str(value), limit),
    )
    env.globals.update(MD_MAX_TEXT=MD_MAX_TEXT, MD_MAX_CELL=MD_MAX_CELL)
    return env


def _common_filters() -> dict[str, Any]:
    return {
        "ms": fmt_ms,
        "num": fmt_num,
        "pct": fmt_pct,
        "ratio": fmt_ratio,
        "pvalue": fmt_pvalue,
        "p": fmt_p,
        "ci": fmt_ci,
        "signed_pct": fmt_signed_pct,
        "value": fmt_value,
        "seconds": fmt_seconds,
    }
