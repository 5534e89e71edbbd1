"""Nothing outlives its owner: the test run's own PostgreSQL stops when the run ends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO

INNER = '''
import os
import subprocess
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict


def test_restart_then_exit(server_dsn):
    """A restart (as the restart tests do) gives the server a new postmaster pid."""
    from rollout.store._embedded import binaries

    data = Path(str(conninfo_to_dict(server_dsn)["host"]))
    (Path(os.environ["INNER_OUT"])).write_text(str(data))
    cmd = [str(binaries() / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "restart",
           "-l", str(data / "log")]
    if os.geteuid() == 0:
        cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c",
               " ".join(f"'{c}'" for c in cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
'''


def _postmasters(data: Path) -> list[int]:
    """Running postgres processes whose command line names ``data``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and any(str(data).encode() == part for part in cmdline) and \
                cmdline[0].endswith(b"postgres"):
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(bool(os.environ.get("ROLLOUT_TEST_DSN")) or not Path("/proc").is_dir(),
                    reason="needs the embedded server and /proc")
def test_the_test_runs_server_stops_when_pytest_exits(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text("from tests.conftest import server_dsn  # noqa: F401\n")
    (inner / "test_inner.py").write_text(textwrap.dedent(INNER))
    out = tmp_path / "data-dir.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "INNER_OUT": str(out)}
    env.pop("ROLLOUT_TEST_DSN", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(inner),
         "--basetemp", str(tmp_path / "bt"), str(inner / "test_inner.py")],
        cwd=inner, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    data = Path(out.read_text())
    assert not (data / "postmaster.pid").exists()
    assert _postmasters(data) == []
