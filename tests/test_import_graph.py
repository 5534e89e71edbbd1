"""The rollout package has no import cycles, read from the source (ast), not by importing.

Every import counts, at module level or inside a function: a function-level import only
postpones a cycle to the first call. Imports under ``if TYPE_CHECKING:`` are excluded, since
they never run. ``from . import name`` is an edge to the submodule ``name`` when one exists,
else to the package that defines ``name``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = "rollout"
ROOT = REPO / PACKAGE

def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def edges(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule; any other name comes from pkg itself
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        for target in targets:
            # `import rollout.a.b` runs rollout.a.b; the nearest module we know stands for it
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: edges(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_the_package() -> None:
    g = graph()
    assert "rollout.cli" in g and "rollout.report.render" in g
    assert "rollout.commands" in g["rollout.cli"]
    # a function-level import counts too
    assert any(g.values())


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert found == [], "import cycles among rollout modules: " + "; ".join(
        " <-> ".join(c) for c in found)


@pytest.mark.parametrize("source,expected", [
    ("from . import a\n", {"rollout.a"}),
    ("from .a import x\n", {"rollout.a"}),
    ("def f():\n    from . import b\n", {"rollout.b"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n", set()),
    ("from . import __version__\n", {"rollout"}),
], ids=["submodule", "from-module", "function-level", "type-checking", "package-name"])
def test_edges(source: str, expected: set[str], tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert edges("rollout.m", path, {"rollout", "rollout.a", "rollout.b", "rollout.m"}) \
        == expected


STAGES = ("store", "flags", "run", "online", "judge", "rollback", "report", "watch")
"""The packages in the order of the flow (docs/architecture.md): a module imports only from
its own package and from the packages before it. ``errors`` and ``_version`` sit below every
stage; the face (``rollout/__init__``, ``cli``, ``commands``, ``ci``, ``demo``, the
``sqlalchemy`` integration, ...) above."""
BASE = ("rollout.errors", "rollout._version")


def stage(module: str) -> int:
    if module in BASE:
        return -1
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else len(STAGES)


def test_imports_point_down_the_flow() -> None:
    g = graph()
    upward = sorted(f"{source} -> {target}" for source, targets in g.items()
                    for target in targets if stage(target) > stage(source))
    assert upward == [], "imports against the flow: " + "; ".join(upward)


def test_every_stage_is_a_package_and_the_face_stays_small() -> None:
    """A new module finds its stage: only the face's modules stand beside the packages."""
    for name in STAGES:
        assert (ROOT / name / "__init__.py").is_file(), name
    face = sorted(p.stem for p in ROOT.glob("*.py"))
    assert face == ["__init__", "_version", "ci", "cli", "commands", "demo", "demo_data",
                    "errors", "scaffold", "sqlalchemy"]


@pytest.mark.parametrize("source,target,upward", [
    ("rollout.run.execute", "rollout.store.connection", False),
    ("rollout.store.store", "rollout.run.plans", True),
    ("rollout.judge.verdict", "rollout", True),
    ("rollout.cli", "rollout.report.build", False),
    ("rollout.flags.state", "rollout.errors", False),
], ids=["down", "up", "to-the-face", "face-down", "to-base"])
def test_stage_order(source: str, target: str, upward: bool) -> None:
    assert (stage(target) > stage(source)) is upward
