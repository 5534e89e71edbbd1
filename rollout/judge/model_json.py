"""The report model to JSON and back: the one place a report body is written or read.

Writing follows each dataclass's field order, so a body's keys come out in the order the
schema documents; a body is validated against ``docs/report-schema.json`` before it is
written anywhere (``report_body``, ``report_json``). Reading (``report_from_json``) takes
any body the store or a file holds — schema version 1, a version 2 body written before a
key was added, a tampered one — and never raises on its shape: a missing key stays absent
(``model_record.Record.absent``), a value of the wrong type reads as None (or empty), a number
where text belongs as that number's text. The judge reads its own figures with
``read(..., strict=True)``, where a wrong type is an error naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import types
import typing
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from ..run.plan_shape import PlanShape
from . import model_record
from .model import Report
from .model_record import Json, Record

T = TypeVar("T")

SCHEMA_RESOURCE = ("templates", "report", "report-schema.json")
"""A copy of ``docs/report-schema.json`` shipped in the package (a test keeps them equal):
installed from a wheel, the toolkit has no ``docs/`` folder."""


# -- writing ---------------------------------------------------------------------------------


def to_json(value: Any) -> Json:
    """A model object (or a list, dict or scalar holding some) as JSON-ready values."""
    if isinstance(value, PlanShape):
        return value.text  # the schema's "Node on rel (child, child)"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Json] = {}
        absent: frozenset[str] = getattr(value, "absent", frozenset())
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("internal") or (f.name in absent and _unset(item)):
                continue  # a key the body read had not, and nobody set since
            omit = f.metadata.get("omit")
            if (omit == "none" and item is None) or (omit == "empty" and not item):
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # a UUID or a datetime that reached a Json field


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict) and not value)


def report_body(report: Report) -> dict[str, Json]:
    """The report's JSON body, validated against the schema (a body that does not match
    is a bug of ours, never written: ``ReportSchemaError``)."""
    body = to_json(report)
    assert isinstance(body, dict)
    problem = schema_problem(body)
    if problem is not None:
        raise ReportSchemaError(problem)
    return body


def report_json(report: Report) -> str:
    """The JSON file of a report, as ``rollout report --format json`` writes it."""
    return json.dumps(report_body(report), indent=2, sort_keys=False, default=str) + "\n"


class ReportSchemaError(AssertionError):
    """A report the toolkit built does not match docs/report-schema.json: a bug, never bad
    input (so not a ``RolloutError``: the CLI reports it as an internal error)."""


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads(resources.files("rollout").joinpath(*SCHEMA_RESOURCE).read_text())
    return Draft202012Validator(schema)


def schema_problem(body: Mapping[str, Any]) -> str | None:
    """Where ``body`` breaks the report schema first, in one line; None when it matches."""
    error = next(iter(sorted(_validator().iter_errors(body), key=lambda e: list(e.path))),
                 None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"report body does not match the report schema at {where}: {error.message}"


# -- reading ---------------------------------------------------------------------------------


def report_from_json(body: Any) -> Report:
    """A report body of any schema version (or shape) as a ``Report``; never raises."""
    if not isinstance(body, Mapping):
        return Report()
    if isinstance(body.get("reasons"), str) and body["reasons"]:
        body = {**body, "reasons": [body["reasons"]]}  # schema 1 allowed one sentence
    return read(Report, body)


def read(cls: type[T], raw: Any, *, strict: bool = False) -> T:
    """``raw`` as a ``cls`` (a model dataclass): each field read by its annotated type.

    Lenient by default (a body from the store). ``strict``: a value of the wrong type is a
    ``TypeError`` naming the field, for figures the toolkit computed itself (the judge's
    boundary), where a wrong type is a bug to see, not data to tolerate."""
    values = raw if isinstance(raw, Mapping) else {}
    if strict and not isinstance(raw, Mapping):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(raw).__name__}")
    hints = _hints(typing.cast(Any, cls))
    kwargs: dict[str, Any] = {}
    fields = [f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if not f.metadata.get("internal")]
    if issubclass(cls, Record):
        kwargs["absent"] = frozenset(f.name for f in fields if f.name not in values)
    for f in fields:
        if f.name in values:
            value = _read(hints[f.name], values[f.name], strict)
            if value is _WRONG:
                if strict:
                    raise TypeError(f"{cls.__name__}.{f.name}: {values[f.name]!r} is not "
                                    f"{hints[f.name]}")
                continue  # the field's default: None or empty
            kwargs[f.name] = value
    return cls(**kwargs)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return get_type_hints(cls)  # in the namespace of the record's own module


def _read(hint: Any, raw: Any, strict: bool) -> Any:
    if hint is Any or hint is model_record.Json:
        return raw
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if raw is None:
            return None
        value = _read(inner[0], raw, strict)
        return None if value is _WRONG and not strict else value
    if origin is list:
        if not isinstance(raw, list | tuple):
            return _WRONG
        (item,) = get_args(hint)
        if not strict and isinstance(item, type) and dataclasses.is_dataclass(item):
            # a malformed entry of a list of records still counts as one, empty
            raw = [v if isinstance(v, Mapping) else {} for v in raw]
        items = [_read(item, v, strict) for v in raw]
        if strict and any(v is _WRONG for v in items):
            return _WRONG
        return [v for v in items if v is not _WRONG]
    if origin is dict:
        if not isinstance(raw, Mapping):
            return _WRONG
        _, item = get_args(hint)
        pairs = [(_text(k), _read(item, v, strict)) for k, v in raw.items()]
        if strict and any(v is _WRONG for _, v in pairs):
            return _WRONG
        return {k: v for k, v in pairs if v is not _WRONG}
    if hint is PlanShape:
        if not isinstance(raw, str):
            return _WRONG
        # a text that does not read back as a tree (brackets in a name) is one node
        return PlanShape.parse(raw) or PlanShape(raw)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return read(hint, raw, strict=strict) if isinstance(raw, Mapping) else _WRONG
    if hint is str:
        if isinstance(raw, str):
            return raw
        return _WRONG if strict or raw is None or isinstance(raw, list | dict) else _text(raw)
    if hint is bool:
        return raw if isinstance(raw, bool) else _WRONG
    if isinstance(raw, bool):
        return _WRONG
    if hint is int:
        # numpy's integers are Integral, not int: figures computed with numpy read as ints
        return int(raw) if isinstance(raw, numbers.Integral) else _WRONG
    if hint is float:
        if isinstance(raw, int | float):
            return raw  # an int stays one: its JSON and its rendering keep no ".0"
        # numpy's floats, and PostgreSQL's numeric as psycopg reads it (Decimal)
        return float(raw) if isinstance(raw, numbers.Real | Decimal) else _WRONG
    return raw


class _Wrong:
    """A value of the wrong type: dropped from lists and dicts, None in a field."""


_WRONG: Any = _Wrong()


def _text(value: Any) -> str:
    """Text as it is; a number or a boolean as the text a report shows for it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
