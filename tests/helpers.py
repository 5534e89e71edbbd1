"""Shared helpers for tests: run the real CLI entry point in-process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)
