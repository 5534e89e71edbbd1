"""Decisions: stage order, tenant lists, sticky and monotonic percent slices, never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rollout.flags.targeting import BUCKETS, Context, Stage, Target, bucket, decide

# Published test vectors (docs/flags.md), computed independently with
# `printf %s "flag/key" | sha1sum`: first 16 hex digits as an integer, mod 100,000.
FIXED_VECTORS = [
    ("orders-recent", "acme", 44534),
    ("orders-recent", "globex", 91475),
    ("orders-recent", "megacorp", 26845),
    ("checkout", "user-42", 8554),
]


@pytest.mark.parametrize(("flag", "key", "expected"), FIXED_VECTORS)
def test_bucket_vectors(flag: str, key: str, expected: int) -> None:
    assert bucket(flag, key) == expected


STAGES = {
    "pilot": Stage("pilot", shadow=Target(tenants=frozenset({"acme", "globex"}))),
    "canary": Stage("canary", serve=Target(tenants=frozenset({"acme"})),
                    shadow=Target(all_tenants=True, percent=10)),
    "ramp": Stage("ramp", serve=Target(percent=25, exclude=frozenset({"initech"}))),
}


def test_decision_order() -> None:
    d = decide("f", STAGES, Context(tenant="acme"), "pilot")
    assert (d.path, d.reason, d.stage) == ("shadow", "shadow-target", "pilot")
    assert decide("f", STAGES, Context(tenant="hooli"), "pilot").path == "legacy"
    assert decide("f", STAGES, Context(tenant="acme"), "pilot", killed=True).reason == "killed"
    assert decide("f", STAGES, Context(tenant="acme"), "nope").reason == "unknown-stage"
    assert decide("f", STAGES, Context(tenant="acme"), None).path == "legacy"
    # serve wins over shadow
    assert decide("f", STAGES, Context(tenant="acme"), "canary").path == "new"
    assert decide("f", STAGES, Context(tenant="initech", key="k"), "ramp").path == "legacy"


def test_bad_context_gives_legacy_never_raises() -> None:
    d = decide("f", STAGES, Context(tenant=42), "pilot")
    assert (d.path, d.reason) == ("legacy", "bad-context")
    d = decide("f", STAGES, "acme", "pilot")
    assert (d.path, d.reason) == ("legacy", "bad-context")


def test_request_key_slices_inside_a_tenant() -> None:
    stage = {"s": Stage("s", serve=Target(tenants=frozenset({"acme"}), percent=50))}
    paths = {decide("f", stage, Context(tenant="acme", key=f"r{i}"), "s").path
             for i in range(200)}
    assert paths == {"new", "legacy"}
    assert decide("f", stage, Context(tenant="globex", key="r1"), "s").path == "legacy"


@settings(max_examples=300)
@given(st.text(min_size=1), st.text(), st.floats(0, 100), st.floats(0, 100))
def test_percent_is_sticky_and_monotonic(flag: str, key: str, p1: float, p2: float) -> None:
    lo, hi = sorted((round(p1, 3), round(p2, 3)))
    small = Target(percent=lo).matches(flag, Context(key=key))
    large = Target(percent=hi).matches(flag, Context(key=key))
    assert small == Target(percent=lo).matches(flag, Context(key=key))  # sticky
    assert not small or large  # raising the percent only adds members


@given(st.sets(st.text(min_size=1), max_size=5), st.text(min_size=1), st.text(min_size=1))
def test_adding_a_tenant_loses_no_member(tenants: set[str], extra: str, probe: str) -> None:
    before = Target(tenants=frozenset(tenants))
    after = Target(tenants=frozenset(tenants | {extra}))
    ctx = Context(tenant=probe)
    assert not before.matches("f", ctx) or after.matches("f", ctx)


def test_buckets_are_uniform() -> None:
    counts = [0] * 20
    for i in range(40_000):
        counts[bucket("uniformity", f"key-{i}") * 20 // BUCKETS] += 1
    _, p = stats.chisquare(counts)
    assert p > 0.001, counts
