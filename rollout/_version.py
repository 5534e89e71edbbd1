"""The toolkit's version: one source, read by pyproject.toml and by every module that reports it."""

from __future__ import annotations

__version__ = "0.1.0"
