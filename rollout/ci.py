"""``rollout ci``: check, shadow-run and judge the flags a change touched; one PR comment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from . import commands
from .errors import EXIT_USAGE, InputError, RolloutError
from .flags.workspace import Workspace

if TYPE_CHECKING:
    from .report.build import WrittenReport

COMMENT_LIMIT = 65_536
"""GitHub's limit on a comment's body, in characters."""
COMMENT_BUDGET = COMMENT_LIMIT - 1_536
"""What the comment may use: a margin for the note that says what was left out."""
INVALID = "INVALID"
"""A flag whose check failed (bad flag file, a query that does not prepare): exit 2."""
RANK = {INVALID: 3, "NO-GO": 2, "INCONCLUSIVE": 1, "GO": 0}
"""Worst first: the exit code is the worst outcome's."""
EXIT = {INVALID: EXIT_USAGE, "NO-GO": 1, "INCONCLUSIVE": 3, "GO": 0}
MARK = {INVALID: "⛔", "NO-GO": "❌", "INCONCLUSIVE": "⚠️", "GO": "✅"}
GIT_TIMEOUT_S = 60


@dataclass(frozen=True)
class Outcome:
    """What CI found for one flag: its first stage's verdict, or the problems that stopped it."""

    flag: str
    stage: str | None
    verdict: str
    problems: tuple[str, ...] = ()
    report: WrittenReport | None = None


@dataclass
class CiResult:
    since: str | None
    outcomes: list[Outcome] = field(default_factory=list)
    comment: Path | None = None

    @property
    def exit_code(self) -> int:
        if not self.outcomes:
            return 0
        return EXIT[max((o.verdict for o in self.outcomes), key=RANK.__getitem__)]


def _git(cwd: Path, *args: str) -> str:
    """``git`` with a list argv (no shell); its stdout, or an InputError with its message."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise InputError("rollout ci needs git on PATH") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"git {args[0]} did not answer within {GIT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        text = proc.stderr.strip().splitlines()
        raise InputError(f"git {args[0]}: {text[-1] if text else f'exit {proc.returncode}'}")
    return proc.stdout


def changed_files(workspace: Path, since: str) -> set[Path]:
    """Files changed since the merge base of ``since`` and HEAD (committed or not, deleted
    and renamed ones under both names) and files git does not track yet, resolved."""
    if not since or since.startswith("-"):
        raise InputError(f"--since: {since!r} is not a git revision")
    top = Path(_git(workspace, "rev-parse", "--show-toplevel").strip())
    try:
        ref = _git(workspace, "rev-parse", "--verify", "--quiet", f"{since}^{{commit}}").strip()
    except InputError:
        raise InputError(f"--since: {since!r} is not a commit of this repository "
                         "(in CI, fetch it first: actions/checkout fetch-depth: 0)") from None
    base = _git(workspace, "merge-base", ref, "HEAD").strip()
    names = _git(workspace, "diff", "--name-only", "--no-renames", "-z", base, "--").split("\0")
    names += _git(workspace, "ls-files", "--others", "--exclude-standard", "-z",
                  "--full-name", "--", ".").split("\0")
    return {(top / n).resolve() for n in names if n}


def flag_files(ws: Workspace, name: str) -> set[Path]:
    """A flag's own files: its flag file, query files and rollback scripts."""
    flag = ws.flags[name]
    root = ws.root
    files = {Path(flag.file) if Path(flag.file).is_absolute() else root / flag.file,
             root / "flags" / f"{name}.yaml", root / "flags" / f"{name}.yml"}
    for q in (flag.legacy, flag.new):
        if q.source != "inline":
            files.add(root / q.source)
    for path in (flag.rollback.script_path, flag.rollback.migration_path):
        if path:
            files.add(root / path)
    return {f.resolve() for f in files}


def touched(ws: Workspace, changed: set[Path] | None) -> tuple[list[str], list[str]]:
    """The flags whose files changed (every flag without ``changed``), and the flag files
    that changed but do not load (their names)."""
    if changed is None:
        return sorted(ws.flags), sorted(Path(e.file).stem for e in ws.errors)
    flags = sorted(n for n in ws.flags if flag_files(ws, n) & changed)
    broken = sorted(Path(e.file).stem for e in ws.errors
                    if Path(e.file).resolve() in changed
                    or (ws.root / e.file).resolve() in changed)
    return flags, broken


def run_ci(session: commands.Session, since: str | None, *, samples: int | None = None,
           link_base: str | None = None, say: Callable[[str], None] = print) -> CiResult:
    """Check, shadow-run (first stage) and judge each touched flag; write the comment."""
    ws = session.load(strict=False)
    changed = changed_files(session.workspace, since) if since is not None else None
    flags, broken = touched(ws, changed)
    result = CiResult(since)
    for name in broken:
        problems = tuple(str(e) for e in ws.errors if Path(e.file).stem == name)
        result.outcomes.append(Outcome(name, None, INVALID, problems))
    for name in flags:
        say(f"rollout ci: {name}: check, shadow, report")
        result.outcomes.append(_one(session, ws, name, samples))
    out = session.workspace / "reports"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ci-comment.md"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(comment(result, path.parent, link_base), encoding="utf-8")
    tmp.replace(path)
    result.comment = path
    return result


def _one(session: commands.Session, ws: Workspace, name: str, samples: int | None) -> Outcome:
    flag = ws.flags[name]
    stage = flag.first_stage
    problems = commands.check(session, [name], database=True)
    if problems:
        return Outcome(name, stage, INVALID, tuple(problems))
    try:
        commands.shadow(session, name, stage=stage, samples=samples)
        written = commands.report(session, name, stage=stage)
    except InputError as exc:  # this flag's own input (its stage, its parameters ...)
        return Outcome(name, stage, INVALID, (str(exc),))
    except RolloutError:
        raise  # the database or the store: nothing else would fare better
    return Outcome(name, stage, written.verdict, report=written)


# -- the comment ---------------------------------------------------------------------------


def cell(text: object) -> str:
    """Text for a Markdown table cell: one line, no table or HTML syntax of its own."""
    s = " ".join(str(text).split())
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("`", "\\`"),
                 ("[", "\\["), ("]", "\\]")):
        s = s.replace(a, b)
    return s


def _link(path: Path, folder: Path, base: str | None) -> str:
    rel = os.path.relpath(path, folder).replace(os.sep, "/")
    target = quote(rel) if base is None else f"{base.rstrip('/')}/{quote(rel)}"
    return target


def comment(result: CiResult, folder: Path, link_base: str | None = None) -> str:
    """One Markdown comment, verdict table first, then each report's Markdown as far as
    GitHub's limit allows (the HTML reports are linked: upload ``reports/`` as an
    artifact)."""
    n = len(result.outcomes)
    scope = (f"since `{cell(result.since)}`" if result.since else "(every flag)")
    head = [f"## pg-rollout: {n} flag{'s' if n != 1 else ''} checked {scope}", ""]
    if not result.outcomes:
        return "\n".join([*head, "No flag file, query file or rollback script changed.", ""])
    worst = max((o.verdict for o in result.outcomes), key=RANK.__getitem__)
    head += [f"**{MARK[worst]} {worst}** (exit {EXIT[worst]})", "",
             "| flag | stage | verdict | samples | why | report |",
             "|---|---|---|---|---|---|"]
    ordered = sorted(result.outcomes, key=lambda o: (-RANK[o.verdict], o.flag))
    rows = []
    for o in ordered:
        body = o.report.body if o.report is not None else {}
        reasons = list(body.get("reasons") or []) or list(o.problems)
        samples = body.get("samples", "")
        html = [f for f in (o.report.files if o.report else []) if f.suffix == ".html"]
        link = f"[HTML]({_link(html[0], folder, link_base)})" if html else ""
        rows.append(f"| {cell(o.flag)} | {cell(o.stage or '')} | {MARK[o.verdict]} "
                    f"{o.verdict} | {cell(samples)} | {cell(reasons[0] if reasons else '')}"
                    f"{' (+' + str(len(reasons) - 1) + ')' if len(reasons) > 1 else ''} | "
                    f"{link} |")
    text = "\n".join(head)
    kept = 0
    for row in rows:
        if len(text) + len(row) + 1 > COMMENT_BUDGET:
            break
        text += "\n" + row
        kept += 1
    if kept < len(rows):
        return text + f"\n\n… {len(rows) - kept} more flag(s) left out: GitHub's comment " \
                      "limit. Every report is in the `reports/` artifact.\n"
    text += "\n"
    left = []
    for o in ordered:
        section = _details(o)
        if len(text) + len(section) > COMMENT_BUDGET:
            left.append(o.flag)
            continue
        text += section
    if left:
        text += (f"\n… the details of {', '.join(cell(f) for f in left)} are left out "
                 "(GitHub's comment limit): see their reports in the artifact.\n")
    return text


def _details(o: Outcome) -> str:
    """A flag's section: its Markdown report, or the problems that stopped it."""
    if o.report is None:
        lines = "\n".join(f"- {cell(p)}" for p in o.problems)
        return f"\n<details><summary>{cell(o.flag)}: {o.verdict}</summary>\n\n{lines}\n\n" \
               "</details>\n"
    md = [f for f in o.report.files if f.suffix == ".md"]
    body = md[0].read_text(encoding="utf-8") if md else ""
    return (f"\n<details><summary>{cell(o.flag)} / {cell(o.stage or '')}: {o.verdict}"
            f"</summary>\n\n{body.strip()}\n\n</details>\n")


def summary_lines(result: CiResult) -> Sequence[str]:
    """What ``rollout ci`` prints: one line per flag, then where the comment is."""
    out = [f"{o.flag} / {o.stage or '-'}: {o.verdict}" + (f" ({o.problems[0]})"
                                                          if o.problems else "")
           for o in result.outcomes] or ["no flag changed"]
    if result.comment is not None:
        out.append(f"comment: {result.comment}")
    return out
