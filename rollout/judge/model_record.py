"""What every part of the report model is made of: ``Record``, JSON values, omission rules.

``model_json`` writes a record's fields in order, leaving out a key whose field says so
(``OMIT_NONE``, ``OMIT_EMPTY``) or that the body it was read from did not have
(``Record.absent``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    Json: TypeAlias = "None | bool | int | float | str | list[Json] | dict[str, Json]"
    JsonObject: TypeAlias = "dict[str, Json]"
else:
    class Json:
        """At run time, the marker ``model_json`` reads a value by: any JSON, kept as is."""

    JsonObject = dict[str, Json]

OMIT_NONE = {"omit": "none"}
OMIT_EMPTY = {"omit": "empty"}


def absent_if_none() -> Any:
    """A field that is None by default and then has no key at all."""
    return field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class Record:
    """A part of a report. ``absent`` names the keys a body read back did not have (an
    older schema version): written back, they stay absent while unset, and a view can tell
    "not measured" (null) from "not reported" (absent)."""

    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False,
                                   compare=False, metadata={"internal": True})
