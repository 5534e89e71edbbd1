"""The typed report model and its one JSON reader and writer (rollout.judge.model_json)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rollout.judge.model import GateResult, Latency, PathFailures, Report
from rollout.judge.model_json import (
    SCHEMA_RESOURCE,
    ReportSchemaError,
    read,
    report_body,
    report_from_json,
    report_json,
    to_json,
)
from rollout.run.plan_shape import PlanShape
from rollout.run.plans import shape
from tests.report_builder import go_report, schema_v1_body

ROOT = Path(__file__).resolve().parent.parent


def test_the_packaged_schema_is_the_documented_one() -> None:
    """Validation at write time uses the schema shipped in the package; it must be the
    contract in docs/ byte for byte."""
    packaged = ROOT / "rollout" / Path(*SCHEMA_RESOURCE)
    assert packaged.read_bytes() == (ROOT / "docs" / "report-schema.json").read_bytes()


def test_a_report_written_and_read_back_is_the_same_report() -> None:
    report = go_report()
    text = report_json(report)
    assert text.endswith("}\n")
    back = report_from_json(json.loads(text))
    assert to_json(back) == to_json(report)
    assert back.gates[0] == report.gates[0]
    assert back.latency is not None and back.latency.source == "offline"


def test_keys_come_out_in_the_documented_order() -> None:
    body = report_body(go_report())
    assert list(body)[:6] == ["schema_version", "report_id", "flag", "description", "owner",
                              "kind"]
    assert list(body["latency"])[-2:] == ["pairs_measured", "source"]
    # a gate without details has no details key (never an empty object)
    assert "details" not in body["gates"][0]


def test_a_report_that_breaks_the_schema_is_never_written() -> None:
    broken = replace(go_report(), verdict="MAYBE")
    with pytest.raises(ReportSchemaError, match="verdict"):
        report_json(broken)
    missing = replace(go_report(), latency=None)
    with pytest.raises(ReportSchemaError, match="latency"):
        report_body(missing)


def test_an_older_body_reads_and_keeps_what_it_lacked_absent() -> None:
    """A schema 1 body has no by_class, no A/A noise, no pairs: read back, those keys are
    absent (not null), so a view tells "not reported" from "not measured"."""
    body = schema_v1_body()
    report = report_from_json(body)
    assert report.failures is not None and report.failures.legacy is not None
    assert "by_class" in report.failures.legacy.absent
    assert report.latency is not None and "hl_ratio" in report.latency.absent
    assert to_json(report)["failures"] == body["failures"]  # type: ignore[index]


@pytest.mark.parametrize("body", [None, [], "GO", {"verdict": 1, "gates": "none"},
                                  {"gates": [None, 3, {"name": ["x"]}], "reasons": "one"}])
def test_any_shape_reads_without_raising(body: object) -> None:
    report = report_from_json(body)
    assert isinstance(report, Report)
    assert all(isinstance(g, GateResult) for g in report.gates)


def test_reading_is_lenient_and_numbers_stay_numbers() -> None:
    report = report_from_json({"verdict": 7, "samples": True, "reasons": "only one",
                               "latency": {"ratio": 1, "hl_ratio": "fast"}})
    assert report.verdict == "7"  # text where text belongs, as the report shows it
    assert report.samples is None  # a boolean is not a count
    assert report.reasons == ["only one"]  # schema 1 allowed one sentence
    assert report.latency is not None
    assert report.latency.ratio == 1 and isinstance(report.latency.ratio, int)
    assert report.latency.hl_ratio is None


def test_strict_reading_names_the_wrong_field() -> None:
    """The judge reads its own figures strictly: a wrong type is a bug, never rendered
    around."""
    with pytest.raises(TypeError, match=r"PathFailures\.count"):
        read(PathFailures, {"count": "three"}, strict=True)
    assert read(Latency, {"ratio": 1.5}, strict=True).ratio == 1.5


EXPLAIN_NODE = {"Node Type": "Limit", "Plans": [{"Node Type": "Sort", "Plans": [
    {"Node Type": "Hash Join", "Plans": [
        {"Node Type": "Seq Scan", "Relation Name": "orders"},
        {"Node Type": "Hash", "Plans": [{"Node Type": "Index Scan",
                                         "Index Name": "customers_pkey"}]}]}]}]}


def test_a_plan_shape_is_a_tree_written_as_its_text_and_read_back() -> None:
    tree = PlanShape.of(EXPLAIN_NODE)
    assert tree.text == shape(EXPLAIN_NODE) == (
        "Limit (Sort (Hash Join (Seq Scan on orders, Hash (Index Scan on customers_pkey))))")
    assert PlanShape.parse(tree.text) == tree
    assert tree.lines() == [
        "Limit",
        "└─ Sort",
        "   └─ Hash Join",
        "      ├─ Seq Scan on orders",
        "      └─ Hash",
        "         └─ Index Scan on customers_pkey",
    ]


@pytest.mark.parametrize("text", ["Seq Scan on weird (name", "Limit (Seq Scan on a",
                                  "Limit (, x)", "Limit" + " (Sort" * 100 + ")" * 100])
def test_a_shape_that_does_not_read_back_is_none(text: str) -> None:
    assert PlanShape.parse(text) is None


def test_plan_shapes_in_a_report_are_trees_and_written_back_as_text() -> None:
    body = report_body(go_report())
    report = report_from_json(body)
    assert report.plans is not None and report.plans.new is not None
    tree = report.plans.new.shapes[0].shape
    assert tree is not None and tree.label == "Limit"
    assert [c.label for c in tree.children] == ["Sort"]
    assert to_json(report)["plans"] == body["plans"]  # type: ignore[index]
    # a shape that does not read back as a tree stays one node holding its text
    odd = report_from_json(
        {"plans": {"legacy": {"shapes": [{"shape": "Scan on x) (", "count": 1}]}}})
    assert odd.plans is not None and odd.plans.legacy is not None
    shape = odd.plans.legacy.shapes[0].shape
    assert shape is not None and shape.lines() == ["Scan on x) ("]
