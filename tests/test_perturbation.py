"""Plan perturbation on real data: a result that matches only because of today's plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.commands import Session, shadow
from rollout.flags.model import Flag
from rollout.judge.gates import Gate
from rollout.judge.plan_checks import perturbation_gate, perturbation_summary
from rollout.run import perturb
from rollout.run.execute import execute, guard, set_local_settings
from tests.conftest import WorkspaceMaker
from tests.helpers import FULL, NO_TIE_BREAK, flag_file, table_checksums

# The same result written another way, fully ordered: GO.
WINDOWED = ("SELECT customer, id, total FROM (SELECT customer, id, total, row_number() OVER"
            " (PARTITION BY customer ORDER BY placed DESC, id DESC) AS rn FROM orders"
            " WHERE tenant = %(tenant)s) AS latest WHERE rn = 1 ORDER BY customer DESC")
LIMIT_FULL = ("SELECT id, placed FROM orders WHERE tenant = %(tenant)s"
              " ORDER BY placed DESC, id DESC LIMIT 20")
LIMIT_TIES = ("SELECT id, placed FROM orders WHERE tenant = %(tenant)s"
              " ORDER BY placed DESC LIMIT 20")


def judged(root: Path, dsn: str, name: str, samples: int = 12
           ) -> tuple[Gate, dict[str, Any], int]:
    """Shadow a flag offline, then judge its stored perturbations; also the run's
    mismatches (what the ordinary comparison saw)."""
    session = Session(root, dsn=dsn)
    summary = shadow(session, name, samples=samples, seed=7)
    flag: Flag = session.load().flags[name]
    with psycopg.connect(dsn) as conn:
        rows = perturb.read(conn, name, "pilot", flag.sql_hash)
    assert rows, "the shadow run recorded no perturbation"
    figures = perturbation_summary(rows)
    return perturbation_gate(figures), figures, summary.mismatches


def test_distinct_on_without_tie_break_is_no_go_naming_the_cause(
    orders: str, make_workspace: WorkspaceMaker,
) -> None:
    root = make_workspace({})
    (root / "flags" / "latest.yaml").write_text(flag_file("latest", FULL, NO_TIE_BREAK))
    before = table_checksums(orders)
    gate, figures, mismatches = judged(root, orders, "latest")
    # Today's plan hides it: every shadow sample matched...
    assert mismatches == 0
    # ...but another plan does not.
    assert gate.status == "fail", gate.reason
    assert "new returns different rows/order for the same parameters" in gate.reason
    assert "ORDER BY does not determine" in gate.reason
    assert "SET LOCAL enable_" in gate.reason or "SET LOCAL max_parallel" in gate.reason
    assert "legacy returned the same result under every plan" in gate.reason
    blamed = figures["blamed"][0]
    assert blamed["new"][0]["diff"], "the diff sample is missing"
    assert blamed["legacy"] == []
    assert table_checksums(orders) == before


def test_limit_with_ties_is_no_go(orders: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({})
    (root / "flags" / "recent.yaml").write_text(flag_file("recent", LIMIT_FULL, LIMIT_TIES))
    gate, _, _ = judged(root, orders, "recent")
    assert gate.status == "fail", gate.reason
    assert "other rows are returned" in gate.reason or "another order" in gate.reason


def test_the_fully_ordered_rewrite_passes(orders: str, make_workspace: WorkspaceMaker) -> None:
    root = make_workspace({})
    (root / "flags" / "windowed.yaml").write_text(flag_file("windowed", FULL, WINDOWED))
    gate, figures, mismatches = judged(root, orders, "windowed")
    assert mismatches == 0
    assert gate.status == "pass", gate.reason
    assert figures["counts"]["blamed"] == 0 and figures["compared"] == figures["samples"] > 0


def test_a_nondeterministic_legacy_is_not_blamed_on_new(
    orders: str, make_workspace: WorkspaceMaker,
) -> None:
    root = make_workspace({})
    (root / "flags" / "fixed.yaml").write_text(flag_file("fixed", NO_TIE_BREAK, FULL))
    (root / "flags" / "same.yaml").write_text(
        flag_file("same", NO_TIE_BREAK, NO_TIE_BREAK.replace("SELECT", "SELECT /* v2 */")))
    # new fixes legacy's ties: a pass that says legacy was the nondeterministic one
    gate, figures, _ = judged(root, orders, "fixed")
    assert gate.status == "pass", gate.reason
    assert "legacy's result changes with the plan" in gate.reason
    assert figures["counts"]["legacy_only"] > 0
    # both nondeterministic: not a NO-GO against new, but no GO on today's plan either
    gate, figures, _ = judged(root, orders, "same")
    assert gate.status == "inconclusive", gate.reason
    assert "legacy is nondeterministic too" in gate.reason
    assert figures["counts"]["blamed"] == 0


def test_order_ignore_makes_a_reordering_irrelevant(
    orders: str, make_workspace: WorkspaceMaker,
) -> None:
    """Ties reordered but the same multiset: compare.order: ignore does not care."""
    unordered = "SELECT id, placed FROM orders WHERE tenant = %(tenant)s AND customer < 20"
    reordered = unordered + " ORDER BY placed DESC"
    root = make_workspace({})
    (root / "flags" / "bag.yaml").write_text(flag_file("bag", unordered, reordered, "ignore"))
    gate, _, _ = judged(root, orders, "bag")
    assert gate.status in ("pass",), gate.reason


def test_perturbed_settings_never_outlive_their_execution(orders: str) -> None:
    """SET LOCAL in the execution's own transaction: the session's settings are untouched,
    whatever the perturbation set, and nothing of the data changed."""
    before = table_checksums(orders)
    with psycopg.connect(orders, autocommit=True) as conn:
        guard(conn)
        shown = {r[0]: r[1] for r in conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [["enable_indexscan", "work_mem", "parallel_setup_cost"]]).fetchall()}
        _, rows = execute(conn, "SELECT current_setting('enable_indexscan'),"
                               " current_setting('work_mem')", {}, write=False,
                               settings=(("enable_indexscan", "off"), ("work_mem", "64kB")))
        assert rows is not None and rows.rows == [("off", "64kB")]
        after = {r[0]: r[1] for r in conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [["enable_indexscan", "work_mem", "parallel_setup_cost"]]).fetchall()}
        assert after == shown
    assert table_checksums(orders) == before


@pytest.mark.parametrize("name, value", [
    ("work_mem; DROP TABLE orders", "1MB"),
    ("work_mem", "1MB'; DROP TABLE orders; --"),
    ("work_mem", "\\'; DROP TABLE orders; --"),
])
def test_hostile_settings_never_reach_the_server_as_sql(
    orders: str, name: str, value: str,
) -> None:
    try:
        text = set_local_settings(((name, value),))
    except ValueError:
        return
    # a quoted value is one literal: the server refuses it as a setting, nothing else runs
    with psycopg.connect(orders, autocommit=True) as conn:
        with pytest.raises(psycopg.Error), conn.transaction():
            conn.execute(text)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (30000,)
