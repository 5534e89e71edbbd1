"""SQL scripts as statements, split and read by PostgreSQL's own parser (pglast): what each
statement is (transactional or not, what data it destroys, what it reaches beyond the database)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from pglast import ast, enums, parser

from ..errors import InputError
from .statements import SqlError, beyond_database, parse, walk


@dataclass(frozen=True)
class Statement:
    number: int
    line: int
    sql: str
    data: str | None = None
    """The rows of a ``COPY ... FROM stdin`` block (up to, not including, its ``\\.`` line)."""

    @property
    def summary(self) -> str:
        text = " ".join(_without_comments(self.sql).split())
        return text if len(text) <= 100 else text[:97] + "..."


def split(script: str) -> list[Statement]:
    """Statements of ``script`` with their 1-based number and starting line (of their first
    token: comments before a statement are not part of it). ``BEGIN ATOMIC`` bodies stay in
    their statement; a ``COPY ... FROM stdin`` keeps the rows that follow it, up to the
    ``\\.`` line, as its ``data`` (as psql and pg_dump write them). A script that does not
    parse raises InputError naming the line: nothing of it should run."""
    try:
        parsed = parse(script)
    except SqlError as exc:
        if _COPY_END.search(script) or "stdin" in script.lower():
            return _split_copy_blocks(script)
        raise _unparsable(script, exc, 0) from None
    return [Statement(i, line_of(script, p.start), script[p.start:p.end].strip())
            for i, p in enumerate(parsed, start=1)]


_COPY_END = re.compile(r"^\\\.\r?$", re.M)
"""The line that ends a COPY data block."""


def _unparsable(script: str, exc: SqlError, base: int) -> InputError:
    where = f"line {line_of(script, base + exc.offset)}: " if exc.offset is not None else ""
    return InputError(f"{where}does not parse: {exc.message}")


def _split_copy_blocks(script: str) -> list[Statement]:
    """``split`` for a script with COPY data blocks: statements are read up to each line end
    where the text so far ends in ``;`` and parses (the lexer reads a prefix as it reads the
    whole, so such a semicolon ends a statement there too); after a ``COPY ... FROM stdin``
    its rows run to the ``\\.`` line."""
    out: list[Statement] = []
    at = 0
    ends = [m.end() for m in re.finditer(r"\n|\Z", script)]
    for end in ends:
        if end <= at or not _ends_with_semicolon(script[at:end]):
            continue
        try:
            parsed = parse(script[at:end])
        except SqlError:
            continue  # the statement goes on (a body, a string spanning lines)
        start = at
        for p in parsed:
            out.append(Statement(len(out) + 1, line_of(script, start + p.start),
                                 script[start + p.start:start + p.end].strip()))
        at = end
        last = parsed[-1].node if parsed else None
        if isinstance(last, ast.CopyStmt) and last.is_from and last.filename is None \
                and not last.is_program:
            stop = _COPY_END.search(script, at)
            if stop is None:
                raise InputError(f"line {out[-1].line}: COPY ... FROM stdin: its data has "
                                 "no end line (\\.)")
            out[-1] = replace(out[-1], data=script[at:stop.start()])
            at = script.find("\n", stop.end())
            at = len(script) if at < 0 else at + 1
    rest = script[at:]
    if rest.strip():
        try:
            parsed = parse(rest)
        except SqlError as exc:
            raise _unparsable(script, exc, at) from None
        out.extend(Statement(len(out) + 1 + i, line_of(script, at + p.start),
                             script[at + p.start:at + p.end].strip())
                   for i, p in enumerate(parsed))
    return out


def _ends_with_semicolon(text: str) -> bool:
    try:
        tokens = [t for t in parser.scan(text) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    except parser.ParseError:
        return False
    return bool(tokens) and tokens[-1].name == "ASCII_59"


def line_of(text: str, offset: int) -> int:
    """1-based line of a character offset."""
    return text.count("\n", 0, max(0, offset)) + 1


def _without_comments(sql: str) -> str:
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return sql
    out, at = [], 0
    for t in tokens:
        if t.name in ("SQL_COMMENT", "C_COMMENT"):
            out.append(sql[at:t.start] + " ")
            at = t.end + 1
    out.append(sql[at:])
    return "".join(out)


@lru_cache(maxsize=512)
def _nodes(sql: str) -> tuple[ast.Node, ...] | None:
    """The statement trees of ``sql``; None when it does not parse."""
    try:
        return tuple(p.node for p in parse(sql))
    except SqlError:
        return None


def _concurrently(node: ast.Node) -> bool:
    if isinstance(node, ast.IndexStmt | ast.DropStmt):
        return bool(node.concurrent)
    if isinstance(node, ast.ReindexStmt):
        return any(isinstance(p, ast.DefElem) and p.defname == "concurrently"
                   for p in node.params or ())
    if isinstance(node, ast.AlterTableStmt):
        return any(isinstance(c, ast.AlterTableCmd) and isinstance(c.def_, ast.PartitionCmd)
                   and bool(c.def_.concurrent) for c in node.cmds or ())
    return False


_OUTSIDE_TRANSACTION = (ast.CreatedbStmt, ast.DropdbStmt, ast.AlterSystemStmt,
                        ast.CreateTableSpaceStmt, ast.DropTableSpaceStmt,
                        ast.CreateSubscriptionStmt, ast.DropSubscriptionStmt)


def non_transactional(stmt: Statement) -> str | None:
    """Why the statement cannot run in a transaction, or None."""
    for node in _nodes(stmt.sql) or ():
        if _concurrently(node):
            return "runs CONCURRENTLY, which cannot be in a transaction"
        if isinstance(node, ast.AlterEnumStmt) and node.newVal and not node.oldVal:
            return "ALTER TYPE ... ADD VALUE: the new value cannot be used in the same transaction"
        if (isinstance(node, _OUTSIDE_TRANSACTION)
                or (isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd)
                or (isinstance(node, ast.ReindexStmt) and node.kind in (
                    enums.ReindexObjectType.REINDEX_OBJECT_DATABASE,
                    enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM))
                or (isinstance(node, ast.AlterDatabaseStmt) and any(
                    isinstance(o, ast.DefElem) and o.defname == "tablespace"
                    for o in node.options or ()))):
            return "cannot run inside a transaction"
    return None


def destroys_data(stmt: Statement) -> str | None:
    """What data the statement destroys, or None."""
    for node in _nodes(stmt.sql) or ():
        if isinstance(node, ast.DropStmt):
            if node.removeType == enums.ObjectType.OBJECT_TABLE:
                return "drops a table and its data"
            if node.removeType == enums.ObjectType.OBJECT_SCHEMA:
                return "drops a schema and everything in it"
        if isinstance(node, ast.DropdbStmt):
            return "drops a database and all its data"
        if isinstance(node, ast.TruncateStmt):
            return "truncates a table"
        if isinstance(node, ast.DeleteStmt):
            return "deletes rows"
        if isinstance(node, ast.AlterTableStmt):
            for cmd in node.cmds or ():
                if not isinstance(cmd, ast.AlterTableCmd):
                    continue
                if cmd.subtype == enums.AlterTableType.AT_DropColumn:
                    return "drops a column and its data"
                if cmd.subtype == enums.AlterTableType.AT_AlterColumnType:
                    return "changes a column's type (values may be converted or truncated)"
    return None


_SERIAL = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}


def uses_sequences(stmt: Statement) -> bool:
    """Does the statement create or advance a sequence (which a rollback does not rewind)?"""
    for top in _nodes(stmt.sql) or ():
        for node in walk(top):
            if isinstance(node, ast.CreateSeqStmt):
                return True
            if isinstance(node, ast.Constraint) and \
                    node.contype == enums.ConstrType.CONSTR_IDENTITY:
                return True
            if isinstance(node, ast.ColumnDef) and node.typeName is not None:
                names = node.typeName.names or ()
                if len(names) == 1 and isinstance(names[0], ast.String) \
                        and str(names[0].sval).lower() in _SERIAL:
                    return True
            if isinstance(node, ast.FuncCall) and node.funcname:
                last = node.funcname[-1]
                if isinstance(last, ast.String) and str(last.sval).lower() == "nextval":
                    return True
    return False


def acts_beyond_database(stmt: Statement) -> str | None:
    """Why the statement reaches beyond its one database (the cluster or the host), or None:
    see ``statements.beyond_database`` for what is listed. A statement that does not parse
    cannot be vouched for, and says so."""
    nodes = _nodes(stmt.sql)
    if nodes is None:
        return "does not parse here, so what it reaches cannot be told"
    for node in nodes:
        if (why := beyond_database(node)) is not None:
            return why
    return None
