"""The real entry point's exit code for an unexpected internal error: 70, one line, apart
from bad input (2); ``ROLLOUT_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.errors import EXIT_INTERNAL, EXIT_USAGE

from .conftest import REPO

ENTRY = Path(sys.executable).parent / "rollout"  # the console script pyproject installs

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists() or not ENTRY.is_file(),
                                reason="needs /dev/full and the installed console script")


def rollout(*args: str | Path, stdout: int | None = None, debug: bool = False
            ) -> subprocess.CompletedProcess[str]:
    # Unbuffered: the first print meets the full disk inside the command, not at exit.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "ROLLOUT_DEBUG": "1" if debug else ""}
    for name in ("DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        env.pop(name, None)
    return subprocess.run([str(ENTRY), *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=60)


def test_an_unexpected_error_exits_70_in_one_line(tmp_path: Path) -> None:
    """stdout on a full disk: an environment the CLI has no answer for, so a genuine
    internal error (OSError ENOSPC from print), not bad input."""
    with open("/dev/full", "w") as full:
        proc = rollout("server", "status", "--workspace", tmp_path, stdout=full.fileno())
    assert proc.returncode == EXIT_INTERNAL != EXIT_USAGE, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rollout: internal error: OSError: [Errno 28]"), lines
    assert "ROLLOUT_DEBUG=1" in lines[0] and "Traceback" not in proc.stderr


def test_rollout_debug_shows_the_traceback(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        proc = rollout("server", "status", "--workspace", tmp_path, stdout=full.fileno(),
                       debug=True)
    assert proc.returncode not in (0, EXIT_INTERNAL)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "OSError: [Errno 28]" in proc.stderr


def test_the_same_command_on_a_working_stdout_exits_0(tmp_path: Path) -> None:
    """The control: only the full disk made the error."""
    proc = rollout("server", "status", "--workspace", tmp_path, stdout=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    assert "no embedded PostgreSQL in this workspace" in proc.stdout
