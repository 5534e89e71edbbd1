"""Generate the sync twin of an asyncio module: ``python tools/async_to_sync.py [--check]``.

psycopg's approach, by tokens rather than by AST so comments and layout survive:

1. Marked blocks, line by line (a marker is a comment alone on its line):
   ``# <async>`` ... ``# </async>`` lines exist only in the async source;
   ``# <async>`` ... ``# <sync>`` ... ``# </sync>`` the async lines, then their sync
   replacement written as comments (``# `` after the indentation), uncommented here;
   ``# <sync>`` ... ``# </sync>`` alone: sync-only lines, as comments in the source.
2. Tokens: ``await`` and ``async`` (before ``def``, ``with``, ``for``) are dropped,
   ``Awaitable[X]`` becomes ``X``, ``asyncio.to_thread(f, *args)`` becomes ``f(*args)``,
   and the names of ``NAMES`` become their sync twins. Strings and comments are untouched.
3. ``ruff`` sorts the imports and drops the ones only the async code used.

A module holding both twins of a function (``TWINS``) gets its sync function from the async
one by step 2, in place; the sync function keeps its own docstring.

``--check`` writes nothing and exits 1 naming every target that differs from what the
source generates (a test runs it); without it, the targets are written.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

PAIRS: tuple[tuple[str, str], ...] = (
    ("rollout/online/aio.py", "rollout/online/runner.py"),
    ("rollout/online/_sqlalchemy_aio.py", "rollout/online/_sqlalchemy_sync.py"),
)
"""(async source, generated sync target), paths from the repository root."""

TWINS: tuple[tuple[str, str, str], ...] = (
    ("rollout/run/execute.py", "aexecute", "execute"),
    ("rollout/run/execute.py", "aserve", "serve"),
    ("rollout/run/execute.py", "acommand", "command"),
    ("rollout/run/execute.py", "acommit_and_reset", "commit_and_reset"),
    ("rollout/run/execute.py", "areset_session", "reset_session"),
    ("rollout/run/execute.py", "aend", "end"),
)
"""(module, async function, the sync function generated from it in the same module)."""

NAMES: dict[str, str] = {
    "AConn": "Conn",
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncCursor": "Cursor",
    "AsyncEngine": "Engine",
    "AsyncExitStack": "ExitStack",
    "AsyncExtendedCursor": "ExtendedCursor",
    "AsyncRollout": "Rollout",
    "ATransaction": "Transaction",
    "AsyncSQLAlchemyRollout": "SQLAlchemyRollout",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "aheld_locks": "held_locks",
    "acommand": "command",
    "aexecute": "execute",
    "aio": "runner",  # the module: from .aio import AsyncRollout
    "acommit_and_reset": "commit_and_reset",
    "areset_session": "reset_session",
    "aserve": "serve",
    "aregrow": "regrow",
    "check_login_async": "check_login",
    "enter_async_context": "enter_context",
    "push_async_callback": "callback",
}
"""Async names and their sync twins (whole names only, never inside strings or comments)."""

ROOT = Path(__file__).resolve().parent.parent
HEADER = "# generated from {source} by tools/async_to_sync.py: do not edit\n"

_MARKER = re.compile(r"^(\s*)# <(/?)(async|sync)>\s*$")


class SourceError(Exception):
    """The source's markers do not nest as they should."""


def unmark(text: str, source: str) -> str:
    """Step 1: keep the sync side of every marked block."""
    out: list[str] = []
    state = "both"  # "async": dropping lines, "sync": uncommenting them
    indent = ""
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        m = _MARKER.match(line)
        if m is not None:
            closing, which = m.group(2) == "/", m.group(3)
            expected = {("both", False, "async"), ("both", False, "sync"),
                        ("async", False, "sync"), ("async", True, "async"),
                        ("sync", True, "sync")}
            if (state, closing, which) not in expected:
                raise SourceError(f"{source}:{n}: unexpected marker {line.strip()!r}")
            state = "both" if closing else which
            indent = m.group(1)
            continue
        if state == "async":
            continue
        if state == "sync":
            body = line[len(indent):] if line.startswith(indent) else line.lstrip()
            if body.rstrip("\n") == "#":
                out.append("\n")
            elif body.startswith("# "):
                out.append(indent + body[2:])
            else:
                raise SourceError(f"{source}:{n}: a sync line must be a comment ('# '): "
                                  f"{line.strip()!r}")
            continue
        out.append(line)
    if state != "both":
        raise SourceError(f"{source}: a marked block is not closed")
    return "".join(out)


def retoken(text: str, names: dict[str, str] = NAMES) -> str:
    """Step 2: rewrite tokens, keeping every other character where it was; ``names`` are the
    async names and their sync twins."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def at(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1]

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in text offsets
    significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.COMMENT)]
    for i, tok in enumerate(significant):
        nxt = significant[i + 1] if i + 1 < len(significant) else None
        if tok.type != tokenize.NAME:
            continue
        if tok.string == "await" or (tok.string == "async" and nxt is not None
                                     and nxt.string in ("def", "with", "for")):
            # the keyword and the blank after it
            end = at(nxt.start) if nxt is not None and nxt.start[0] == tok.end[0] else at(tok.end)
            edits.append((at(tok.start), end, ""))
        elif tok.string == "Awaitable" and nxt is not None and nxt.string == "[":
            close = _matching(significant, i + 1)
            edits.append((at(tok.start), at(nxt.end), ""))
            edits.append((at(close.start), at(close.end), ""))
        elif (tok.string == "asyncio" and i + 3 < len(significant)
              and significant[i + 2].string == "to_thread"):
            # asyncio.to_thread(f, a, b) -> f(a, b); asyncio.to_thread(f) -> f()
            open_ = significant[i + 3]
            j = i + 4
            depth = 0
            while depth or significant[j].string not in (",", ")"):
                depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(
                    significant[j].string, 0)
                j += 1
            sep = significant[j]
            edits.append((at(tok.start), at(open_.end), ""))
            if sep.string == ",":
                after = significant[j + 1]
                edits.append((at(sep.start), at(after.start), "("))
            else:
                edits.append((at(sep.start), at(sep.start), "("))
        elif tok.string in names:
            edits.append((at(tok.start), at(tok.end), names[tok.string]))
    edits += _realign(significant, edits, starts)
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _realign(tokens: list[tokenize.TokenInfo], edits: list[tuple[int, int, str]],
             starts: list[int]) -> list[tuple[int, int, str]]:
    """Edits that keep continuation lines aligned with their opening bracket when text before
    it on its line got shorter (``async def f(a,`` / ``          b)``); a hanging indent
    (the bracket last on its line) moves only as its opening line does."""
    removed: dict[int, list[tuple[int, int]]] = {}  # line -> (column, chars removed there)
    for start, end, new in edits:
        line = next(n for n in range(len(starts) - 1, 0, -1) if starts[n - 1] <= start)
        removed.setdefault(line, []).append((end - starts[line - 1], end - start - len(new)))
    shift: dict[int, int] = {}
    stack: list[int] = []  # per open bracket: the shift of the lines inside it
    out = []
    for i, tok in enumerate(tokens):
        line = tok.start[0]
        if stack and line not in shift and (i == 0 or tokens[i - 1].end[0] < line):
            shift[line] = stack[-1]
            if stack[-1] > 0 and tok.line[:stack[-1]].isspace():
                out.append((starts[line - 1], starts[line - 1] + stack[-1], ""))
        if tok.string in ("(", "[", "{"):
            hanging = i + 1 < len(tokens) and tokens[i + 1].start[0] > line
            before = sum(n for col, n in removed.get(line, []) if col <= tok.start[1])
            stack.append(shift.get(line, 0) + (0 if hanging else before))
        elif tok.string in (")", "]", "}") and stack:
            stack.pop()
    return out


def _matching(tokens: list[tokenize.TokenInfo], i: int) -> tokenize.TokenInfo:
    """The bracket closing ``tokens[i]``."""
    depth = 0
    for tok in tokens[i:]:
        if tok.string in ("(", "[", "{"):
            depth += 1
        elif tok.string in (")", "]", "}"):
            depth -= 1
            if depth == 0:
                return tok
    raise SourceError(f"unbalanced bracket at line {tokens[i].start[0]}")


def tidy(text: str, target: str) -> str:
    """Step 3: imports sorted, the async-only ones dropped (ruff, the project's linter)."""
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff) if ruff.exists() else "ruff", "check", "--quiet", "--fix-only",
         "--select", "I,F401", "--stdin-filename", target, "-"],
        input=text, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SourceError(f"ruff could not tidy {target}: {done.stderr.strip()}")
    return done.stdout


def generate(source_text: str, source: str, target: str) -> str:
    """The sync twin of ``source_text`` (the async module at ``source``)."""
    return HEADER.format(source=source) + tidy(retoken(unmark(source_text, source)), target)


def twin(text: str, module: str, afunc: str, func: str) -> str:
    """``text`` (the module at ``module``) with the top-level function ``func`` replaced by
    what the async function ``afunc`` generates, ``func``'s own docstring kept."""
    tree = ast.parse(text, module)
    found = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef,
                                                            ast.AsyncFunctionDef))}
    if afunc not in found or func not in found:
        raise SourceError(f"{module}: needs top-level functions {afunc} and {func}")
    lines = text.splitlines(keepends=True)
    (a_start, a_end), (s_start, s_end) = _span(found[afunc]), _span(found[func])
    a_doc, s_doc = _docstring(found[afunc], module), _docstring(found[func], module)
    source = lines[a_start:a_doc[0]] + lines[s_doc[0]:s_doc[1]] + lines[a_doc[1]:a_end]
    generated = retoken("".join(source), {**NAMES, afunc: func})
    return "".join(lines[:s_start]) + generated + "".join(lines[s_end:])


def _span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """The function's lines (decorators included), as a slice of the module's lines."""
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return start - 1, node.end_lineno or node.lineno


def _docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, module: str) -> tuple[int, int]:
    """The lines of the function's docstring (on lines of its own), as a slice."""
    first = node.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)) or first.lineno == node.lineno:
        raise SourceError(f"{module}:{node.lineno}: {node.name} needs a docstring of its own "
                          "lines")
    return first.lineno - 1, first.end_lineno or first.lineno


def _outputs(root: Path) -> dict[str, tuple[str, str]]:
    """Every generated file: {target: (its source, the text the source generates)}."""
    out = {target: (source, generate((root / source).read_text(), source, target))
           for source, target in PAIRS}
    for module, afunc, func in TWINS:
        text = out[module][1] if module in out else (root / module).read_text()
        out[module] = (f"{module}:{afunc}", twin(text, module, afunc, func))
    return out


def stale(root: Path = ROOT) -> list[str]:
    """The targets under ``root`` that differ from what their sources generate."""
    return [target for target, (_, text) in _outputs(root).items()
            if not (root / target).exists() or (root / target).read_text() != text]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a generated file is stale")
    args = parser.parse_args(argv)
    try:
        outputs = _outputs(ROOT)
        if args.check:
            old = stale()
            for target in old:
                print(f"{target} is stale: run python tools/async_to_sync.py "
                      f"(it is generated from {outputs[target][0]})", file=sys.stderr)
            return 1 if old else 0
        for target, (source, text) in outputs.items():
            (ROOT / target).write_text(text)
            print(f"{target}: generated from {source}")
    except (SourceError, OSError, tokenize.TokenError, SyntaxError) as exc:
        print(f"async_to_sync: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
