"""Verdicts, exit codes and report files: GO, NO-GO, INCONCLUSIVE; escaping; no passwords."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import WorkspaceMaker, flag_yaml
from tests.helpers import DIFFERENT, EQUIVALENT, run_cli
from tests.report_builder import CONTRACT_KEYS, shadow_and_report


def test_go_report_has_contract_keys_and_rollback(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    code, body, out = shadow_and_report(capsys, root, shop, "eq", 60)
    assert code == 0, out
    assert body["verdict"] == "GO"
    assert set(body) >= CONTRACT_KEYS
    assert body["flag"] == "eq" and body["stage"] == "pilot" and body["samples"] == 60
    assert {g["name"] for g in body["gates"]} == {
        "min_samples", "max_mismatch_rate", "latency", "max_new_failures", "lock_wait",
        "buffers", "generic_plan", "plan_determinism", "rollback"}
    assert {g["name"]: g["status"] for g in body["gates"]}["buffers"] == "info"  # not gated
    assert all(g["status"] in ("pass", "info") for g in body["gates"])
    assert body["locks"]["new"]["measured"] == 60  # lock waits sampled for every execution
    assert body["plans"]["samples"] == 20  # 10 parameter sets explained per path
    rollback = body["rollback"]
    assert rollback["script"] == "-- undo of eq\nSELECT 1;\n"
    assert rollback["flag_command"].startswith("rollout flag kill eq --reason")
    assert body["latency"]["ratio_ci"] is not None
    assert body["environment_events"] == []  # no outage, nothing to excuse
    for suffix in ("html", "md"):
        text = (root / "reports" / "eq" / f"pilot.{suffix}").read_text()
        assert "GO" in text
        assert "rollout flag kill eq" in text
        assert "undo of eq" in text
    with psycopg.connect(shop) as conn:
        row = conn.execute("SELECT verdict, samples FROM rollout.reports WHERE flag = 'eq'"
                           ).fetchone()
    assert row == ("GO", 60)


def test_no_go_on_mismatches(shop: str, make_workspace: WorkspaceMaker,
                             capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"diff": DIFFERENT})
    code, body, out = shadow_and_report(capsys, root, shop, "diff", 60)
    assert code == 1, out
    assert body["verdict"] == "NO-GO"
    gate = next(g for g in body["gates"] if g["name"] == "max_mismatch_rate")
    assert gate["status"] == "fail"
    assert body["mismatches"]["count"] > 0
    assert any("result sets differ" in r for r in body["reasons"])
    assert "NO-GO" in out


def test_inconclusive_with_too_few_samples(shop: str, make_workspace: WorkspaceMaker,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    code, body, _ = shadow_and_report(capsys, root, shop, "eq", 30)
    assert code == 3
    assert body["verdict"] == "INCONCLUSIVE"
    assert body["reasons"] == [
        "only 30 of the 60 samples needed; run `rollout shadow` for more"]


def test_inconclusive_without_rollback_script(shop: str, make_workspace: WorkspaceMaker,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    text = EQUIVALENT.split("rollback:")[0]
    root = make_workspace({"eq": text})
    code, body, _ = shadow_and_report(capsys, root, shop, "eq", 60)
    assert code == 3
    assert body["reasons"] == ["no rollback script: the flag names none (rollback.script, or "
                               "rollback.none with a reason)"]
    assert body["rollback"]["script"] is None


def test_report_sees_only_observations_of_the_current_sql(
    shop: str, make_workspace: WorkspaceMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_workspace({"eq": EQUIVALENT})
    code, body, _ = shadow_and_report(capsys, root, shop, "eq", 60)
    assert code == 0
    (root / "flags" / "eq.yaml").write_text(EQUIVALENT.replace("ORDER BY i.id", "ORDER BY 1"))
    rep = run_cli(capsys, "report", "eq", "--workspace", root, "--dsn", shop)
    assert rep.code == 3  # the edited SQL has no observations yet
    body = json.loads((root / "reports" / "eq" / "pilot.json").read_text())
    assert body["samples"] == 0


def test_html_escapes_hostile_sql_and_values(shop: str, make_workspace: WorkspaceMaker,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    hostile = flag_yaml(
        "hostile",
        "SELECT '<script>alert(1)</script>' AS v, id FROM items"
        " WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
        "SELECT '<script>alert(2)</script>\"' AS v, id FROM items"
        " WHERE tenant = %(tenant)s AND grp = %(grp)s ORDER BY id",
    ).replace("description: fixture flag hostile", "description: \"<b onmouseover='x'>hi</b>\"")
    root = make_workspace({"hostile": hostile})
    (root / "rollback" / "hostile.sql").write_text("-- </pre><script>alert(3)</script>\n")
    code, body, _ = shadow_and_report(capsys, root, shop, "hostile", 60)
    assert code == 1  # every row differs in v
    html = (root / "reports" / "hostile" / "pilot.html").read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html  # the rollback script, escaped
    assert "<b onmouseover" not in html


def test_password_never_appears(db: str, db_admin: str, make_workspace: WorkspaceMaker,
                                capsys: pytest.CaptureFixture[str]) -> None:
    secret = "Pw-7f3a-Never-Show"
    role = f"rollout_pw_{conninfo_to_dict(db)['dbname']}"[-60:]
    with psycopg.connect(db_admin, autocommit=True) as conn:  # roles are the admin's to make
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(secret)))
        conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
            sql.Identifier(str(conninfo_to_dict(db)["dbname"])), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))
    params = conninfo_to_dict(db)
    params.update(user=role, password=secret)
    dsn = make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
    with psycopg.connect(dsn, autocommit=True) as conn:
        from tests.conftest import FIXTURE_SCHEMA

        conn.execute(FIXTURE_SCHEMA.encode())
    root = make_workspace({"eq": EQUIVALENT})
    outputs = []
    for args in (("shadow", "eq", "--samples", "60"), ("report", "eq"), ("check", "eq")):
        r = run_cli(capsys, *args, "--workspace", root, "--dsn", dsn)
        assert r.code == 0, r.err
        outputs.append(r.out + r.err)
    bad = dsn.replace(f"dbname={params['dbname']}", "dbname=no_such_db")
    r = run_cli(capsys, "shadow", "eq", "--workspace", root, "--dsn", bad)
    assert r.code == 2 and "cannot connect" in r.err
    outputs.append(r.out + r.err)
    reports = [p.read_text() for p in (root / "reports").rglob("*.*")]
    assert reports
    body = json.loads((root / "reports" / "eq" / "pilot.json").read_text())
    assert f"user={role}" in body["environment"]["database"]
    with psycopg.connect(db_admin) as conn:
        stored = conn.execute("SELECT string_agg(body::text || target, '') FROM rollout.reports,"
                              " rollout.runs").fetchone()
    for text in [*outputs, *reports, str(stored)]:
        assert secret not in text
