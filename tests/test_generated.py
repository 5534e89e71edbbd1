"""The sync runner is generated from the async one: stale generated files fail the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tools.async_to_sync import PAIRS, ROOT, generate, stale

SCRIPT = ROOT / "tools" / "async_to_sync.py"


def test_every_generated_file_is_what_its_source_generates() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


def test_a_generated_file_says_so_and_names_its_source() -> None:
    for source, target in PAIRS:
        first = (ROOT / target).read_text().splitlines()[0]
        assert first.startswith(f"# generated from {source}") and "do not edit" in first


def test_an_edited_source_makes_its_target_stale(tmp_path: Path) -> None:
    for source, target in PAIRS:
        for path in (source, target):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, tmp_path / path)
    assert stale(tmp_path) == []
    source, target = PAIRS[0]
    text = (tmp_path / source).read_text()
    (tmp_path / source).write_text(text.replace("class AsyncRollout(RunnerCore):",
                                                "class AsyncRollout(RunnerCore):  # edited", 1))
    assert stale(tmp_path) == [target]


def test_the_rewrite_drops_await_and_maps_names_but_keeps_strings_and_comments() -> None:
    src = '''"""m."""

from __future__ import annotations

import asyncio


async def f(conn: AConn, flush: Any) -> None:
    """AsyncRollout stays in a string."""
    async with conn.transaction():  # acommand stays in a comment
        await acommand(conn, b"x")
    await asyncio.to_thread(flush, 1)
    # <async>
    await asyncio.sleep(0)
    # <sync>
    # time.sleep(0)
    # </sync>
'''
    out = generate(src, "a.py", "b.py")
    assert out.splitlines()[0] == "# generated from a.py by tools/async_to_sync.py: do not edit"
    assert "def f(conn: Conn, flush: Any) -> None:" in out
    assert "with conn.transaction():  # acommand stays in a comment" in out
    assert "        command(conn, b\"x\")" in out
    assert "    flush(1)" in out
    assert "    time.sleep(0)" in out
    assert '"""AsyncRollout stays in a string."""' in out
    assert "await" not in out and "async " not in out and "import asyncio" not in out
