"""The sync runner is generated from the async one: stale generated files fail the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tools.async_to_sync import PAIRS, ROOT, TWINS, generate, stale, twin

SCRIPT = ROOT / "tools" / "async_to_sync.py"


def test_every_generated_file_is_what_its_source_generates() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


def test_a_generated_file_says_so_and_names_its_source() -> None:
    for source, target in PAIRS:
        first = (ROOT / target).read_text().splitlines()[0]
        assert first.startswith(f"# generated from {source}") and "do not edit" in first


def copy_generated(tmp_path: Path) -> None:
    """Every source and generated file, copied under ``tmp_path``."""
    paths = {p for pair in PAIRS for p in pair} | {module for module, _, _ in TWINS}
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)


def test_an_edited_source_makes_its_target_stale(tmp_path: Path) -> None:
    copy_generated(tmp_path)
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


def test_an_edited_async_function_makes_its_sync_twin_stale(tmp_path: Path) -> None:
    copy_generated(tmp_path)
    module = "rollout/run/execute.py"
    text = (tmp_path / module).read_text()
    edited = text.replace("            await cur.execute(query.encode(), params, prepare=prepare)",
                          "            await cur.execute(query.encode(), params)", 1)
    assert edited != text
    (tmp_path / module).write_text(edited)
    assert stale(tmp_path) == [module]
    # an edit of the sync twin alone is stale too: it is generated, never edited
    sync_only = "                held = held_locks(conn)\n"
    assert text.count(sync_only) == 1
    (tmp_path / module).write_text(text.replace(sync_only, sync_only + "                pass\n"))
    assert stale(tmp_path) == [module]


def test_a_sync_twin_is_its_async_function_rewritten_keeping_its_own_docstring() -> None:
    src = '''"""m."""


async def aget(conn: AConn) -> int:
    """The asyncio twin of ``get``."""
    rows = await acommand(conn, b"x")
    return len(rows)


def get(conn: Conn) -> int:
    """Rows of x.

    Generated from ``aget``.
    """
    return 0
'''
    out = twin(src, "m.py", "aget", "get")
    assert out.split("\n\n\ndef get")[0] == src.split("\n\n\ndef get")[0]
    assert out.endswith('''def get(conn: Conn) -> int:
    """Rows of x.

    Generated from ``aget``.
    """
    rows = command(conn, b"x")
    return len(rows)
''')
