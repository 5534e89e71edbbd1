"""A workspace: the folder holding ``flags/``, ``rollback/`` and ``reports/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FlagFileError, InputError
from .flagfile import load_flag, load_settings
from .model import Flag, Settings

__all__ = ["Settings", "Workspace"]


@dataclass
class Workspace:
    """Flags, their queries and rollback scripts, validated and read fresh from disk."""

    root: Path
    flags: dict[str, Flag] = field(default_factory=dict)
    errors: list[FlagFileError] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    """From the optional ``rollout.yaml`` at the root (docs/flags.md)."""

    @classmethod
    def load(cls, root: str | Path = ".", strict: bool = True) -> Workspace:
        """Read ``rollout.yaml`` and every ``flags/*.yaml``; with ``strict`` the first invalid
        flag file raises (an invalid ``rollout.yaml`` always does: every flag depends on it)."""
        path = Path(root)
        flags_dir = path / "flags"
        if not flags_dir.is_dir():
            raise InputError(f"{path}: not a workspace (no flags/ folder); run `rollout init`")
        ws = cls(path, settings=load_settings(path))
        files = sorted([*flags_dir.glob("*.yaml"), *flags_dir.glob("*.yml")])
        for file in files:
            try:
                flag = load_flag(file, path, ws.settings)
            except FlagFileError as exc:
                if strict:
                    raise
                ws.errors.append(exc)
                continue
            ws.flags[flag.name] = flag
        return ws

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def state_dir(self) -> Path:
        """Local, git-ignored state (the embedded server's data directory)."""
        return self.root / ".rollout"

    def flag(self, name: str) -> Flag:
        try:
            return self.flags[name]
        except KeyError:
            known = ", ".join(sorted(self.flags)) or "none"
            raise InputError(f"unknown flag '{name}' (known: {known})") from None
