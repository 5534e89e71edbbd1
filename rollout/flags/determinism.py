"""Static determinism checks of a flag query, read from its parse tree: results that hang on ties.

A ``LIMIT``, a ``DISTINCT ON``, ``FETCH ... WITH TIES``, an ``array_agg``/``string_agg``/
``json_agg`` or an order-sensitive window function returns what the plan happens to give
when its ordering does not cover a unique key of its source: such a query can match in every
shadow sample and differ under another plan. Unique keys come from the catalog (``Keys``,
``pg_index.indisunique`` of plain, non-partial indexes on NOT NULL columns, or NULLS NOT
DISTINCT). These are warnings for ``rollout check``: the plan-perturbation gate is the
evidence (``rollout.run.perturb``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pglast import ast, enums
from pglast.stream import RawStream

from .statements import SqlError, parse, to_parseable, walk

Keys = Callable[[str], list[frozenset[str]] | None]
"""A relation's name as written in the query → its unique keys (column-name sets), or None
when it is not a table the catalog knows (a view, a CTE, a function)."""

ORDER_SENSITIVE_AGGREGATES = frozenset({
    "array_agg", "string_agg", "json_agg", "jsonb_agg", "json_agg_strict", "jsonb_agg_strict",
    "json_object_agg", "jsonb_object_agg", "xmlagg", "json_arrayagg"})
ORDER_SENSITIVE_WINDOWS = frozenset({
    "row_number", "ntile", "lag", "lead", "first_value", "last_value", "nth_value"})


@dataclass(frozen=True)
class Hazard:
    """One construct whose result depends on how ties are broken, in words."""

    what: str


def hazards(sql: str, keys: Keys | None = None) -> list[Hazard]:
    """Constructs of ``sql`` (psycopg placeholders allowed) whose result depends on ties.
    Without ``keys`` only what needs no catalog is said (an aggregate without ORDER BY);
    raises SqlError when the text does not parse."""
    out: list[Hazard] = []
    for stmt in parse(to_parseable(sql)):
        for node in walk(stmt.node):
            if isinstance(node, ast.SelectStmt) and node.op == enums.SetOperation.SETOP_NONE:
                out.extend(_select(node, keys))
    return list(dict.fromkeys(out))  # one warning per construct, in order


def dropped_order(legacy: str, new: str) -> list[str]:
    """ORDER BY items of legacy's outermost query that new's lacks (as written)."""
    try:
        a, b = _top_order(legacy), _top_order(new)
    except SqlError:
        return []
    return [item for item in a if item not in b]


def fully_ordered(sql: str, keys: Keys) -> bool | None:
    """Does the outermost query's ORDER BY cover a unique key of its source (so no tie is
    left to the plan)? None when that cannot be told."""
    try:
        stmts = parse(to_parseable(sql))
    except SqlError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].node, ast.SelectStmt):
        return None
    node = stmts[0].node
    return _Scope(node, keys).covered(list(node.sortClause or ())) if node.sortClause else False


def _top_order(sql: str) -> list[str]:
    stmts = parse(to_parseable(sql))
    if len(stmts) != 1 or not isinstance(stmts[0].node, ast.SelectStmt):
        return []
    return [_text(s) for s in stmts[0].node.sortClause or ()]


# -- one SELECT ---------------------------------------------------------------------------------


class _Scope:
    """The relations one SELECT reads (alias → name) and how to tell whether a set of
    columns covers a unique key of one of them."""

    def __init__(self, node: ast.SelectStmt, keys: Keys | None) -> None:
        self.node = node
        self.keys = keys
        self.relations: dict[str, str] = {}
        self.opaque = False  # a subquery, function or CTE: its keys are unknown
        for item in node.fromClause or ():
            self._add(item)
        self.targets = {str(t.name): t.val for t in node.targetList or ()
                        if isinstance(t, ast.ResTarget) and t.name}

    def _add(self, item: object) -> None:
        if isinstance(item, ast.RangeVar):
            name = ".".join(p for p in (item.schemaname, item.relname) if p)
            alias = item.alias.aliasname if item.alias is not None else item.relname
            self.relations[str(alias)] = name
        elif isinstance(item, ast.JoinExpr):
            self._add(item.larg)
            self._add(item.rarg)
        else:
            self.opaque = True

    def columns(self, exprs: Sequence[object]) -> set[tuple[str | None, str]]:
        out: set[tuple[str | None, str]] = set()
        for e in exprs:
            e = e.node if isinstance(e, ast.SortBy) else e
            if isinstance(e, ast.A_Const) and isinstance(e.val, ast.Integer):
                targets = self.node.targetList or ()
                i = int(e.val.ival or 0) - 1
                e = targets[i].val if 0 <= i < len(targets) else None
            if isinstance(e, ast.ColumnRef):
                names = [str(f.sval) for f in e.fields or () if isinstance(f, ast.String)]
                target = self.targets.get(names[0]) if len(names) == 1 else None
                if isinstance(target, ast.ColumnRef):
                    names = [str(f.sval) for f in target.fields or ()
                             if isinstance(f, ast.String)]
                if len(names) == 1:
                    out.add((None, str(names[0])))
                elif len(names) >= 2:
                    out.add((str(names[-2]), str(names[-1])))
        return out

    def covered(self, exprs: Sequence[object]) -> bool | None:
        """Do ``exprs`` cover a unique key of a source? None when that cannot be told."""
        if self.keys is None or self.opaque or not self.relations:
            return None
        cols = self.columns(exprs)
        known = False
        for alias, name in self.relations.items():
            found = self.keys(name)
            if found is None:
                return None
            known = True
            mine = {c for q, c in cols if q in (None, alias)}
            if any(k and k <= mine for k in found):
                return True
        return False if known else None

    @property
    def sources(self) -> str:
        return ", ".join(sorted(set(self.relations.values())))


def _select(node: ast.SelectStmt, keys: Keys | None) -> Iterator[Hazard]:
    scope = _Scope(node, keys)
    order = list(node.sortClause or ())
    shown = ", ".join(_text(s) for s in order)
    distinct = [d for d in node.distinctClause or () if d is not None]
    if distinct and order and scope.covered(order + distinct) is False:
        yield Hazard(f"DISTINCT ON ({', '.join(_text(d) for d in distinct)}) keeps the first "
                     f"row of each group by ORDER BY {shown}, which does not cover a unique "
                     f"key of {scope.sources}: which row wins among ties depends on the plan")
    limited = node.limitCount is not None and not (
        isinstance(node.limitCount, ast.A_Const) and node.limitCount.isnull)
    if limited and order and scope.covered(order) is False:
        if node.limitOption == enums.LimitOption.LIMIT_OPTION_WITH_TIES:
            yield Hazard(f"FETCH ... WITH TIES by ORDER BY {shown}, which does not cover a "
                         f"unique key of {scope.sources}: tied rows come in the plan's order")
        else:
            yield Hazard(f"LIMIT by ORDER BY {shown}, which does not cover a unique key of "
                         f"{scope.sources}: which rows are kept among ties depends on the plan")
    for item in _own_nodes(node):
        if not isinstance(item, ast.FuncCall) or not item.funcname:
            continue
        name = str(getattr(item.funcname[-1], "sval", "")).lower()
        window = _window(node, item.over) if item.over is not None else None
        if name in ORDER_SENSITIVE_AGGREGATES and window is None:
            if not item.agg_order:
                yield Hazard(f"{name}() without ORDER BY: its elements come in the plan's "
                             "order")
            elif scope.covered(list(item.agg_order)) is False:
                yield Hazard(f"{name}(... ORDER BY {', '.join(_text(s) for s in item.agg_order)})"
                             f" does not cover a unique key of {scope.sources}: tied elements "
                             "come in the plan's order")
        elif window is not None and (name in ORDER_SENSITIVE_WINDOWS
                                     or name in ORDER_SENSITIVE_AGGREGATES):
            parts = list(window.partitionClause or ()) + list(window.orderClause or ())
            if scope.covered(parts) is False:
                by = ", ".join(_text(s) for s in window.orderClause or ()) or "nothing"
                yield Hazard(f"{name}() OVER (... ORDER BY {by}) does not cover a unique key "
                             f"of {scope.sources} with its PARTITION BY: its value among ties "
                             "depends on the plan")


def _window(node: ast.SelectStmt, over: ast.WindowDef) -> ast.WindowDef:
    """A window as written, or the named window it refers to (``OVER w``)."""
    if over.name or over.refname:
        name = over.refname or over.name
        for w in node.windowClause or ():
            if isinstance(w, ast.WindowDef) and w.name == name:
                return w
    return over


def _own_nodes(node: ast.SelectStmt) -> Iterator[ast.Node]:
    """Nodes of a SELECT's own target list, HAVING and ORDER BY (not of nested SELECTs:
    each is judged with its own sources)."""
    for part in (node.targetList, node.havingClause, node.sortClause):
        for root in (part,) if isinstance(part, ast.Node) else part or ():
            if isinstance(root, ast.Node):
                yield from walk(root, into_sublinks=False)


def _text(node: object) -> str:
    try:
        return str(RawStream()(node))  # type: ignore[arg-type]
    except Exception:  # deparsing is for display: never let it fail a check
        return "?"
