"""A plan's shape: its node tree without costs, as built from EXPLAIN and written as text.

Pure and dependency-free: the run stage builds shapes (``plans``), the report model carries
them (``model``), the renderer draws them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SHAPE_MAX_DEPTH = 64
"""Deeper plan shapes are not read back as trees (they are shown as their text)."""


@dataclass(frozen=True)
class PlanShape:
    """A plan's node tree without costs: node types with their relation or index, nested.

    Stored (``rollout.plans``, generic-plan checks) and reported as its ``text``,
    "Node on rel (child, child)": a contract of the report's JSON. ``parse`` is the one
    reader of that text, for what the store and older reports hold."""

    label: str
    children: tuple[PlanShape, ...] = ()

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> PlanShape:
        """The shape of an EXPLAIN (FORMAT JSON) plan node."""
        label = str(node.get("Node Type", "?"))
        target = node.get("Index Name") or node.get("Relation Name")
        if target:
            label += f" on {target}"
        return cls(label, tuple(cls.of(c) for c in node.get("Plans") or []))

    @property
    def text(self) -> str:
        if not self.children:
            return self.label
        return f"{self.label} ({', '.join(c.text for c in self.children)})"

    def lines(self) -> list[str]:
        """The tree drawn with one node per line (box-drawing branches)."""
        out = [self.label]

        def walk(node: PlanShape, prefix: str) -> None:
            for i, child in enumerate(node.children):
                last = i == len(node.children) - 1
                out.append(f"{prefix}{'└─ ' if last else '├─ '}{child.label}")
                walk(child, prefix + ("   " if last else "│  "))

        walk(self, "")
        return out

    @classmethod
    def parse(cls, text: str) -> PlanShape | None:
        """The tree a ``text`` was written from; None when it does not read back as one (a
        relation name with brackets or commas, deeper than ``SHAPE_MAX_DEPTH``)."""
        pos = 0

        def node(depth: int) -> PlanShape:
            nonlocal pos
            if depth > SHAPE_MAX_DEPTH:
                raise ValueError("too deep")
            ends = [i for i in (text.find(" (", pos), text.find(", ", pos), text.find(")", pos))
                    if i >= 0]
            end = min(ends, default=len(text))
            label = text[pos:end]
            if not label.strip():
                raise ValueError("empty node")
            pos = end
            children = []
            if text.startswith(" (", pos):
                pos += 2
                children.append(node(depth + 1))
                while text.startswith(", ", pos):
                    pos += 2
                    children.append(node(depth + 1))
                if not text.startswith(")", pos):
                    raise ValueError("unbalanced")
                pos += 1
            return cls(label, tuple(children))

        try:
            root = node(0)
        except ValueError:
            return None
        return root if pos == len(text) else None
