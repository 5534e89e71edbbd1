"""`rollout ci` against a temporary git repository (real git, real database): only the flags
a change touched are run, one comment with the verdict table first, the worst exit code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rollout.ci import COMMENT_LIMIT, INVALID, CiResult, Outcome, comment
from tests.conftest import flag_yaml
from tests.helpers import LEGACY, run_cli, table_checksums

WRONG = LEGACY.replace("ORDER BY id", "AND val > 0 ORDER BY id")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def flag(name: str, new_file: str) -> str:
    text = flag_yaml(name, LEGACY, LEGACY, min_samples=20)
    return text.replace(f"  new: |\n    {LEGACY}\n", f"  new: {new_file}\n")


@pytest.fixture
def repo(tmp_path: Path, shop: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, str]:
    """A repository with a workspace in a subfolder, three flags committed on main."""
    root = tmp_path / "repo"
    ws = root / "db" / "rollout"
    for sub in ("flags", "queries", "rollback", "reports"):
        (ws / sub).mkdir(parents=True)
    (root / ".gitignore").write_text("reports/\n")
    for name in ("eq", "wrong", "untouched"):
        (ws / "flags" / f"{name}.yaml").write_text(flag(name, f"queries/{name}.new.sql"))
        (ws / "queries" / f"{name}.new.sql").write_text(LEGACY + "\n")
        (ws / "rollback" / f"{name}.sql").write_text(f"-- undo of {name}\nSELECT 1;\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "flags")
    base = git(root, "rev-parse", "HEAD")
    git(root, "checkout", "-q", "-b", "feature")
    # the DSN holds a password: the environment, never argv
    monkeypatch.setenv("DATABASE_URL", shop)
    return root, ws, base


def test_ci_runs_only_the_touched_flags_and_exits_with_the_worst_verdict(
        repo: tuple[Path, Path, str], shop: str, capsys: pytest.CaptureFixture[str]) -> None:
    root, ws, base = repo
    (ws / "queries" / "wrong.new.sql").write_text(WRONG + "\n")  # a query file: a mismatch
    (ws / "rollback" / "eq.sql").write_text("-- undo of eq, reworded\nSELECT 1;\n")
    git(root, "commit", "-qam", "change two flags")
    before = table_checksums(shop)
    r = run_cli(capsys, "ci", "--since", base, "--workspace", ws)
    assert r.code == 1, r.err  # NO-GO is the worst
    assert table_checksums(shop) == before
    lines = r.out.splitlines()
    assert lines[0].startswith("eq / pilot: ") and lines[1] == "wrong / pilot: NO-GO"
    text = (ws / "reports" / "ci-comment.md").read_text()
    assert len(text) < COMMENT_LIMIT
    assert "untouched" not in text
    table = text.index("| flag | stage | verdict |")
    assert table < text.index("<details>")  # the verdict table comes first
    rows = [ln for ln in text[:text.index("<details>")].splitlines()
            if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["wrong", "eq"]  # worst first
    assert "NO-GO" in rows[0]
    for row in rows:  # the HTML reports, linked relative to the comment
        link = row.split("[HTML](")[1].split(")")[0]
        assert (ws / "reports" / link).is_file()
    # the Markdown report of each flag follows, folded
    assert text.count("<details>") == 2


def test_uncommitted_and_new_flags_count_and_a_broken_flag_is_bad_input(
        repo: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    root, ws, base = repo
    (ws / "flags" / "untouched.yaml").write_text("name: untouched\nkind: [read\n")  # broken
    (ws / "flags" / "fresh.yaml").write_text(flag("fresh", "queries/eq.new.sql"))  # untracked
    (ws / "rollback" / "fresh.sql").write_text("SELECT 1;\n")
    r = run_cli(capsys, "ci", "--since", base, "--workspace", ws)
    assert r.code == 2
    assert "Traceback" not in r.err
    text = (ws / "reports" / "ci-comment.md").read_text()
    assert "| untouched |" in text and INVALID in text and "untouched.yaml:" in text
    assert "| fresh |" in text and "| eq |" not in text and "| wrong |" not in text


@pytest.mark.parametrize("ref", ["no-such-branch", "--output=/tmp/x", ""])
def test_a_bad_ref_is_one_line_and_writes_nothing(
        repo: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str], ref: str) -> None:
    _, ws, _ = repo
    r = run_cli(capsys, "ci", f"--since={ref}", "--workspace", ws)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "--since" in r.err
    assert not (ws / "reports" / "ci-comment.md").exists()


def test_nothing_changed(repo: tuple[Path, Path, str],
                         capsys: pytest.CaptureFixture[str]) -> None:
    _, ws, base = repo
    r = run_cli(capsys, "ci", "--since", base, "--workspace", ws)
    assert r.code == 0 and r.out.splitlines()[0] == "no flag changed"
    assert "No flag file" in (ws / "reports" / "ci-comment.md").read_text()


def test_the_comment_stays_under_githubs_limit_and_escapes_what_it_quotes() -> None:
    """Thousands of flags, each with long problems and text that would be Markdown or HTML:
    the table comes first, the comment stays under 65,536 characters, nothing escapes its
    cell."""
    hostile = "a | b <script>alert(1)</script> [x](javascript:alert(1)) `code`\nnext line"
    outcomes = [Outcome(f"flag-{i:04d}", "pilot", INVALID if i % 2 else "GO",
                        problems=(hostile * 20,)) for i in range(3000)]
    text = comment(CiResult("main", outcomes), Path("."))
    assert len(text) < COMMENT_LIMIT
    assert text.index("| flag | stage |") < 200
    assert "<script>" not in text and "[x](javascript" not in text
    assert "more flag(s) left out" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| flag-")]
    assert rows and all(ln.count(" | ") == 5 for ln in rows)  # six cells, no extra pipes
    few = comment(CiResult("main", outcomes[:3]), Path("."))
    assert few.count("<details>") == 3 and "&lt;script&gt;" in few
