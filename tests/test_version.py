"""The version has one source, rollout/_version.py: the package, the CLI and the
distribution's metadata (pyproject reads it) all say the same."""

from __future__ import annotations

import tomllib

import pytest

import rollout
from rollout._version import __version__

from .conftest import REPO
from .helpers import run_cli


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "rollout._version.__version__"}


def test_the_package_and_the_cli_say_the_same_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert rollout.__version__ == __version__
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "--version")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"pg-rollout {__version__}"
