"""SQL read by PostgreSQL's own parser (pglast): how many statements, what kind, reaching what."""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pglast import ast, enums, parser

MAX_SQL_BYTES = 1024 * 1024
"""SQL files (queries, rollback scripts) larger than this are refused before parsing."""

Role = Literal["read", "write", "params", "business"]
"""What a flag query is for: a path of a ``kind: read`` or ``kind: write`` flag, a
``params.sample``/``params.tenants`` query or a ``business:`` metric (always plain reads)."""


class SqlError(Exception):
    """The parser refused the text: ``offset`` is the 0-based character where, if known."""

    def __init__(self, message: str, offset: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True)
class Parsed:
    """One statement of a text: its tree and where its text is (character offsets)."""

    node: ast.Node
    start: int
    end: int


# -- parsing ----------------------------------------------------------------------------------

# pglast turns libpg_query's tree into Python objects by recursing in C with no depth check:
# an expression nested ~25,000 deep (``1+1+...``, 100 KB of text) overflows an 8 MiB stack and
# kills the process. libpg_query's JSON output does check the depth (PostgreSQL's
# check_stack_depth, never deeper than 16,383 levels), so a text passes that guarded parse
# first, and both run in a thread whose stack is large enough for that depth, whatever thread
# the caller runs on.
_PARSE_STACK = 32 * 1024 * 1024


class _Parser:
    """One daemon thread with a large stack that parses on behalf of every caller (a thread
    per parse costs a millisecond); started on first use, and again in a forked child,
    which inherits the object but not the thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue[tuple[str, Future[list[Parsed]]]] = queue.SimpleQueue()
        self.pid = 0

    def parse(self, sql: str) -> list[Parsed]:
        with self.lock:
            if self.pid != os.getpid():
                self.jobs = queue.SimpleQueue()
                # stack_size() is process-wide: set it, start the thread, restore it
                previous = threading.stack_size(_PARSE_STACK)
                try:
                    threading.Thread(target=self.serve, args=(self.jobs,),
                                     name="rollout-sql-parser", daemon=True).start()
                finally:
                    threading.stack_size(previous)
                self.pid = os.getpid()
        job: Future[list[Parsed]] = Future()
        self.jobs.put((sql, job))
        return job.result()

    @staticmethod
    def serve(jobs: queue.SimpleQueue[tuple[str, Future[list[Parsed]]]]) -> None:
        while True:
            sql, job = jobs.get()
            try:
                job.set_result(_parse_guarded(sql))
            except BaseException as exc:  # handed to the caller
                job.set_exception(exc)


_PARSER = _Parser()


@lru_cache(maxsize=256)
def _parse_cached(sql: str) -> tuple[Parsed, ...]:
    return tuple(_PARSER.parse(sql))


def parse(sql: str) -> list[Parsed]:
    """Every statement of ``sql``; raise SqlError if it does not parse (or nests too deeply).
    The trees are shared between callers (cached): read them, never change them."""
    return list(_parse_cached(sql))


def _parse_guarded(sql: str) -> list[Parsed]:
    try:
        parser.parse_sql_json(sql)
        raws = parser.parse_sql(sql)
    except parser.ParseError as exc:
        message = str(exc.args[0]) if exc.args else "syntax error"
        if "stack depth" in message or "nested too deeply" in message:
            raise SqlError("nested too deeply to be read", None) from None
        offset = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        raise SqlError(message, offset) from None
    out = []
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(sql)
        if raw.stmt is not None:
            out.append(Parsed(raw.stmt, start, end))
    return out


def count_statements(sql: str) -> int:
    """Statements in ``sql`` by the scanner alone (semicolons outside quotes and comments),
    for text the parser refuses (the server may be newer); 1 when even the scanner cannot
    tell."""
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return 1
    count, pending = 0, False
    for t in tokens:
        if t.name == "ASCII_59":  # ;
            count += pending
            pending = False
        elif t.name not in ("SQL_COMMENT", "C_COMMENT"):
            pending = True
    return max(1, count + pending)


_PLACEHOLDER = re.compile(r"%\([^)]*\)[sbt]|%[sbt]|%%")


def to_parseable(query: str) -> str:
    """A psycopg query as the server sees it: ``%(name)s``/``%s`` (and ``b``/``t``) become
    ``$n``, ``%%`` becomes ``%``; the rewrite is textual, as psycopg's is."""
    names: dict[str, int] = {}
    counter = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal counter
        text = m.group(0)
        if text == "%%":
            return "%"
        if text.startswith("%("):
            if text not in names:
                counter += 1
                names[text] = counter
            return f"${names[text]}"
        counter += 1
        return f"${counter}"

    return _PLACEHOLDER.sub(sub, query)


def walk(node: ast.Node, into_sublinks: bool = True) -> Iterator[ast.Node]:
    """Every node under ``node`` (itself included), without recursion: trees may be deep."""
    stack: list[object] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(reversed(item))
            continue
        if not isinstance(item, ast.Node):
            continue
        yield item
        if not into_sublinks and isinstance(item, ast.SubLink) and item is not node:
            continue
        for name in item:
            value = getattr(item, name, None)
            if isinstance(value, ast.Node | tuple | list):
                stack.append(value)


def first_words(sql: str, start: int = 0, end: int | None = None, words: int = 2) -> str:
    """The statement's first keywords (comments skipped), upper-cased: ``CREATE TABLE``."""
    text = sql[start:end]
    try:
        tokens = [t for t in parser.scan(text) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    except parser.ParseError:
        return " ".join(text.split()[:words]).upper()
    out = []
    for t in tokens[:words]:
        if t.kind == "NO_KEYWORD" and t.name != "IDENT":
            break
        out.append(text[t.start:t.end + 1].upper())
    return " ".join(out) or " ".join(text.split()[:words]).upper()


# -- what a statement is ----------------------------------------------------------------------

_TRANSACTION_WORDS = {
    enums.TransactionStmtKind.TRANS_STMT_BEGIN: "BEGIN",
    enums.TransactionStmtKind.TRANS_STMT_START: "START TRANSACTION",
    enums.TransactionStmtKind.TRANS_STMT_COMMIT: "COMMIT",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
    enums.TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
    enums.TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE SAVEPOINT",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO SAVEPOINT",
    enums.TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
    enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}

_SESSION_WORDS: dict[type[ast.Node], str] = {
    ast.DiscardStmt: "DISCARD",
    ast.ListenStmt: "LISTEN",
    ast.UnlistenStmt: "UNLISTEN",
    ast.PrepareStmt: "PREPARE",
    ast.ExecuteStmt: "EXECUTE",
    ast.DeallocateStmt: "DEALLOCATE",
    ast.DeclareCursorStmt: "DECLARE CURSOR",
    ast.FetchStmt: "FETCH",
    ast.ClosePortalStmt: "CLOSE",
}


def transaction_control(node: ast.Node) -> str | None:
    """``COMMIT``, ``SET TRANSACTION`` ...: the words of a transaction-control statement."""
    if isinstance(node, ast.TransactionStmt):
        return _TRANSACTION_WORDS.get(node.kind, "transaction control") if node.kind else \
            "transaction control"
    name = (node.name or "") if isinstance(node, ast.VariableSetStmt) else ""
    if name.lower() in ("transaction", "session characteristics"):
        return f"SET {name.upper()}"
    return None


def session_state(node: ast.Node) -> str | None:
    """``SET x``, ``RESET``, ``DISCARD``, ``LISTEN``, ``PREPARE`` ...: the words of a statement
    that leaves state in the session (which a pooled connection would carry on)."""
    if isinstance(node, ast.VariableSetStmt):
        kind = node.kind
        name = (node.name or "").lower()
        what = {"role": "ROLE", "session_authorization": "SESSION AUTHORIZATION"}.get(name, name)
        if kind == enums.VariableSetKind.VAR_RESET_ALL:
            return "RESET ALL"
        if kind == enums.VariableSetKind.VAR_RESET:
            return f"RESET {what}"
        return f"SET {'LOCAL ' if node.is_local else ''}{what}".rstrip()
    if isinstance(node, ast.LoadStmt):
        return "LOAD"
    for cls, words in _SESSION_WORDS.items():
        if isinstance(node, cls):
            return words
    return None


def host_access(node: ast.Node) -> str | None:
    """Why a COPY reaches the database server's host (a program or a file), else None."""
    if isinstance(node, ast.CopyStmt):
        if node.is_program:
            return "COPY ... PROGRAM runs a shell command on the database server's host"
        if node.filename is not None:
            return ("COPY to or from a file reads or writes files on the database server's "
                    "host")
    return None


def data_modifying_cte(node: ast.Node) -> str | None:
    """The verb of a data-modifying WITH query anywhere in the tree (``INSERT`` ...)."""
    for item in walk(node):
        query = item.ctequery if isinstance(item, ast.CommonTableExpr) else None
        if query is not None and not isinstance(query, ast.SelectStmt):
            return _VERBS.get(type(query), "a data-modifying statement")
    return None


_VERBS: dict[type[ast.Node], str] = {
    ast.InsertStmt: "INSERT", ast.UpdateStmt: "UPDATE", ast.DeleteStmt: "DELETE",
    ast.MergeStmt: "MERGE",
}


def is_plain_read(node: ast.Node) -> bool:
    """SELECT, VALUES or TABLE (set operations and WITH included) that creates nothing and
    modifies nothing."""
    if not isinstance(node, ast.SelectStmt):
        return False
    if data_modifying_cte(node):
        return False
    return not any(isinstance(n, ast.SelectStmt) and n.intoClause is not None
                   for n in walk(node))


def refusal(sql: str, role: Role) -> str | None:
    """Why the flag query ``sql`` (psycopg placeholders allowed) may not be run, or None.

    Exactly one statement; never transaction control, session state or COPY; for reads and
    ``params`` queries a plain read; for writes nothing that reaches beyond the database
    (``DO`` excepted: its body is opaque, and like the rest it is rolled back). Text that does
    not parse is left to the database check unless the scanner sees several statements in it:
    the server reports the syntax error precisely, and may be newer than this parser."""
    text = to_parseable(sql)
    try:
        stmts = parse(text)
    except SqlError as exc:
        if exc.offset is None:  # not a syntax error: nesting the parser cannot hold
            return f"is {exc.message}"
        count = count_statements(text)
        if count > 1:
            return f"must be exactly one SQL statement, found {count}"
        return None
    if not stmts:
        return "has no SQL statement (only comments or blanks)"
    if len(stmts) > 1:
        second = stmts[1]
        return (f"must be exactly one SQL statement, found {len(stmts)} (the second is "
                f"{first_words(text, second.start, second.end)}); the toolkit runs each "
                "query as one statement")
    node = stmts[0].node
    words = first_words(text, stmts[0].start, stmts[0].end)
    if (tx := transaction_control(node)) is not None:
        return (f"{tx} is transaction control: each execution runs in a transaction the "
                "toolkit opens and always rolls back")
    if (state := session_state(node)) is not None:
        return (f"{state} changes session state, which would outlive the query on the "
                "connection (timeouts and roles are set by the toolkit)")
    if (host := host_access(node)) is not None:
        return host
    if isinstance(node, ast.CopyStmt):
        return "COPY needs the copy protocol; flag queries run as ordinary statements"
    reach = beyond_database(node)
    beyond = f"{reach}; a flag query acts on its own database only" if reach else None
    if role == "write":
        # DO is allowed in writes: its body is opaque, and it is rolled back like the rest
        return None if isinstance(node, ast.DoStmt) else beyond
    if is_plain_read(node):
        return beyond
    if isinstance(node, ast.DoStmt | ast.CallStmt):
        what = "DO" if isinstance(node, ast.DoStmt) else "CALL"
        if role == "business":
            return (f"{what} runs procedural code the parser cannot see into; business "
                    "queries must be plain reads (SELECT, VALUES or TABLE)")
        return (f"{what} runs procedural code the parser cannot see into; kind: read runs "
                "plain reads only (use kind: write, whose executions are rolled back)")
    if isinstance(node, ast.SelectStmt):
        verb = data_modifying_cte(node)
        why = f"a WITH query that does {verb}" if verb else "SELECT INTO, which creates a table"
        words = f"it has {why}"
    else:
        words = f"{_VERBS.get(type(node), words)} is not a read"
    if role in ("params", "business"):
        return f"{words}; {role} queries must be plain reads (SELECT, VALUES or TABLE)"
    return (f"{words}; kind: read runs plain reads only (use kind: write, whose executions "
            "are rolled back)")


UNORDERED_LIMIT = ("LIMIT without ORDER BY returns rows in no defined order; strict "
                   "comparison would report noise (add a total ORDER BY, or use "
                   "compare.order: ignore)")


def unordered_limit(sql: str) -> bool:
    """Does a query limit rows it does not order? A SELECT with LIMIT, FETCH FIRST or
    OFFSET and no ORDER BY, at the top or in a FROM subquery, set operation or WITH query
    (subqueries in expressions, like ``EXISTS (... LIMIT 1)``, do not pick result rows)."""
    try:
        stmts = parse(to_parseable(sql))
    except SqlError:
        return False
    for stmt in stmts:
        for node in walk(stmt.node, into_sublinks=False):
            if isinstance(node, ast.SelectStmt) and not node.sortClause and (
                    _limits(node.limitCount) or _limits(node.limitOffset)):
                return True
    return False


def _limits(value: ast.Node | None) -> bool:
    # LIMIT ALL and LIMIT NULL parse as a NULL constant: no limit at all
    return value is not None and not (isinstance(value, ast.A_Const) and value.isnull)


# -- what reaches beyond the database ---------------------------------------------------------

_ROLES = "roles belong to the whole cluster, not the database"
_TABLESPACES = "tablespaces belong to the whole cluster and are folders on the server's host"
_DATABASES = "databases belong to the server, not to this database"
_SHARED_OBJECTS = {
    enums.ObjectType.OBJECT_ROLE: f"a role: {_ROLES}",
    enums.ObjectType.OBJECT_DATABASE: f"a database: {_DATABASES}",
    enums.ObjectType.OBJECT_TABLESPACE: f"a tablespace: {_TABLESPACES}",
    enums.ObjectType.OBJECT_PARAMETER_ACL: "a server parameter's privileges: they apply to "
                                           "the whole cluster",
}

_STATEMENTS: dict[type[ast.Node], str] = {
    ast.CreateRoleStmt: f"creates a role: {_ROLES}",
    ast.DropRoleStmt: f"drops a role: {_ROLES}",
    ast.AlterRoleSetStmt: f"changes a role's settings (ALTER ROLE ... SET): {_ROLES}",
    ast.GrantRoleStmt: f"grants or revokes role membership: {_ROLES}",
    ast.CreatedbStmt: f"creates a database: {_DATABASES}",
    ast.DropdbStmt: f"drops a database: {_DATABASES}",
    ast.AlterDatabaseStmt: "alters a database: its settings live in the cluster's catalog",
    ast.AlterDatabaseSetStmt: "changes a database's settings (ALTER DATABASE ... SET): they "
                              "live in the cluster's catalog and apply to every later session",
    ast.AlterDatabaseRefreshCollStmt: "alters a database: its settings live in the cluster's "
                                      "catalog",
    ast.AlterSystemStmt: "changes the server's configuration (ALTER SYSTEM), for every "
                         "database of the cluster",
    ast.CreateTableSpaceStmt: f"creates a tablespace: {_TABLESPACES}",
    ast.DropTableSpaceStmt: f"drops a tablespace: {_TABLESPACES}",
    ast.AlterTableSpaceOptionsStmt: f"alters a tablespace: {_TABLESPACES}",
    ast.CreateExtensionStmt: "creates an extension: that may need a superuser, and its install "
                             "script may load C libraries or untrusted code onto the server",
    ast.AlterExtensionStmt: "updates an extension: its update script may load C libraries or "
                            "untrusted code onto the server",
    ast.CreatePLangStmt: "creates a procedural language: its handler is code on the server's "
                         "host",
    ast.LoadStmt: "loads a shared library into the server process (LOAD)",
    ast.DoStmt: "runs procedural code the parser cannot see into (DO)",
    ast.CreateSubscriptionStmt: "creates a subscription: it connects to another server and "
                                "creates a replication slot there",
    ast.AlterSubscriptionStmt: "alters a subscription: it connects to another server",
    ast.DropSubscriptionStmt: "drops a subscription: it connects to another server and drops "
                              "its replication slot there",
}

_HOST_FILES = "reads files on the database server's host"
_SLOTS = "changes a replication slot, which holds WAL for the whole cluster"
_FUNCTIONS = {
    "pg_read_file": _HOST_FILES, "pg_read_binary_file": _HOST_FILES,
    "pg_ls_dir": "lists folders on the database server's host",
    "pg_stat_file": _HOST_FILES,
    "lo_import": _HOST_FILES,
    "lo_export": "writes a file on the database server's host",
    "pg_file_write": "writes a file on the database server's host",
    "pg_file_rename": "renames a file on the database server's host",
    "pg_file_unlink": "deletes a file on the database server's host",
    "pg_terminate_backend": "ends other sessions on the server",
    "pg_cancel_backend": "cancels other sessions' queries on the server",
    "pg_reload_conf": "reloads the server's configuration",
    "pg_rotate_logfile": "rotates the server's log file",
    "pg_promote": "promotes a standby server",
    "pg_switch_wal": "switches the server's WAL file",
    "pg_create_physical_replication_slot": _SLOTS,
    "pg_create_logical_replication_slot": _SLOTS,
    "pg_drop_replication_slot": _SLOTS,
    "dblink": "connects to another database or server (dblink)",
    "dblink_exec": "runs a statement in another database or server (dblink)",
    "dblink_connect": "connects to another database or server (dblink)",
    "dblink_connect_u": "connects to another database or server (dblink)",
    "dblink_send_query": "runs a statement in another database or server (dblink)",
}


def beyond_database(node: ast.Node) -> str | None:
    """Why a statement acts on the cluster or the host rather than its one database, or None.

    By statement: roles and role membership, CREATE/ALTER/DROP DATABASE, ALTER SYSTEM,
    tablespaces, COPY with a program or a server file, extensions and languages, LOAD,
    subscriptions, DO (opaque); grants, owners, renames and comments on roles, databases,
    tablespaces or parameters. By function call anywhere in the statement: server files,
    other sessions, server control, replication slots, dblink. Publications are not listed:
    a publication is an object of its database until a subscriber elsewhere connects."""
    for cls, why in _STATEMENTS.items():
        if isinstance(node, cls):
            return why
    if isinstance(node, ast.AlterRoleStmt):
        members = any(isinstance(o, ast.DefElem) and o.defname == "rolemembers"
                      for o in node.options or ())
        return (f"{'changes role membership' if members else 'alters a role'}: {_ROLES}")
    if (host := host_access(node)) is not None:
        return host
    if isinstance(node, ast.RenameStmt | ast.AlterOwnerStmt | ast.CommentStmt | ast.GrantStmt
                  | ast.SecLabelStmt):
        objtype = {ast.RenameStmt: "renameType", ast.AlterOwnerStmt: "objectType"}.get(
            type(node), "objtype")
        kind = getattr(node, objtype, None)
        shared = _SHARED_OBJECTS.get(kind) if isinstance(kind, enums.ObjectType) else None
        if shared is not None:
            return f"changes {shared}"
    if isinstance(node, ast.CreateFunctionStmt):
        language = next((str(o.arg.sval).lower() for o in node.options or ()
                         if isinstance(o, ast.DefElem) and o.defname == "language"
                         and isinstance(o.arg, ast.String)), "")
        if language == "c" or (language.startswith("pl") and language.endswith("u")):
            shown = "C" if language == "c" else language
            return (f"creates a function in {shown}, an untrusted language: its code runs "
                    "on the server's host with the server's rights")
    for item in walk(node):
        if isinstance(item, ast.FuncCall) and item.funcname:
            last = item.funcname[-1]
            name = str(last.sval).lower() if isinstance(last, ast.String) else ""
            if name in _FUNCTIONS:
                return f"calls {name}(), which {_FUNCTIONS[name]}"
    return None
