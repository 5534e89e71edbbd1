"""``rollout init``: scaffold a workspace from the packaged templates."""

from __future__ import annotations

import re
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from .errors import InputError
from .run.privileges import setup_sql

GITIGNORE = "# pg-rollout: generated reports and the embedded server's data\nreports/*\n" \
            "!reports/.gitkeep\n.rollout/\n"


ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def init_workspace(directory: Path, role: str | None = None) -> list[Path]:
    """Create flags/, queries/, rollback/, reports/ and an example flag; never overwrite.
    With ``role``, also ``rollout-role.sql``: the least-privilege login for flag SQL."""
    template = resources.files("rollout").joinpath("templates/init")
    planned: list[tuple[Path, str]] = []
    _collect(template, directory, planned)
    planned.append((directory / "reports" / ".gitkeep", ""))
    if role is not None:
        if not ROLE_NAME.fullmatch(role):
            raise InputError(f"--role: '{role}' is not a plain role name (lower-case letters, "
                             "digits and _, at most 63)")
        planned.append((directory / "rollout-role.sql", ROLE_HEADER + setup_sql(role)))
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


ROLE_HEADER = """\
-- The login pg-rollout runs flag SQL as (docs/safety.md): it reads, and for write flags
-- writes (always rolled back), the tables of schema public, and can do nothing beyond this
-- database. Run as an administrator in the target database, then give it a password:
--   psql "$ADMIN_DSN" -f rollout-role.sql && psql "$ADMIN_DSN" -c "\\password rollout"
-- The toolkit's own state (schema rollout) needs a login that may create it: pass that
-- one as --store-dsn, or let this login create it in this database only:
--   GRANT CREATE ON DATABASE <this database> TO <the login>;
"""


def _collect(node: Traversable, dest: Path, out: list[tuple[Path, str]]) -> None:
    for entry in node.iterdir():
        if entry.is_dir():
            _collect(entry, dest / entry.name, out)
        elif not entry.name.endswith((".pyc",)):
            out.append((dest / entry.name, entry.read_text(encoding="utf-8")))
