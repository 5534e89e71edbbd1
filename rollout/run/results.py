"""What one execution returned, before anything compares it: columns, type OIDs, rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Row = tuple[Any, ...]


@dataclass(frozen=True)
class ResultSet:
    """Columns, their type OIDs and rows of one execution; ``rows`` is None for commands."""

    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    rows: list[Row] | None
    rowcount: int
