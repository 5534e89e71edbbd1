"""``rollout init``: scaffold a workspace from the packaged templates."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from .errors import InputError

GITIGNORE = "# pg-rollout: generated reports and the embedded server's data\nreports/*\n" \
            "!reports/.gitkeep\n.rollout/\n"


def init_workspace(directory: Path) -> list[Path]:
    """Create flags/, queries/, rollback/, reports/ and an example flag; never overwrite."""
    template = resources.files("rollout").joinpath("templates/init")
    planned: list[tuple[Path, str]] = []
    _collect(template, directory, planned)
    planned.append((directory / "reports" / ".gitkeep", ""))
    existing = [p for p, _ in planned if p.exists()]
    if existing:
        raise InputError(f"{existing[0]}: already exists; `rollout init` never overwrites files")
    written = []
    for path, text in planned:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    ignore = directory / ".gitignore"
    if not ignore.exists() or ".rollout/" not in ignore.read_text(encoding="utf-8"):
        with ignore.open("a", encoding="utf-8") as fh:
            fh.write(GITIGNORE)
        written.append(ignore)
    return written


def _collect(node: Traversable, dest: Path, out: list[tuple[Path, str]]) -> None:
    for entry in node.iterdir():
        if entry.is_dir():
            _collect(entry, dest / entry.name, out)
        elif not entry.name.endswith((".pyc",)):
            out.append((dest / entry.name, entry.read_text(encoding="utf-8")))
