"""SQL scripts as statements: split on semicolons outside quotes, dollar quotes and comments,
and read what each statement is (transactional or not, what data it destroys)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    number: int
    line: int
    sql: str

    @property
    def summary(self) -> str:
        text = " ".join(_strip_comments(self.sql).split())
        return text if len(text) <= 100 else text[:97] + "..."


_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def split(script: str) -> list[Statement]:
    """Statements of ``script`` with their 1-based number and starting line."""
    out: list[Statement] = []
    i, n = 0, len(script)
    start = 0
    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            j = script.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and script.startswith("/*", i):
            j = script.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in ("'", '"'):
            j = i + 1
            while j < n:
                if script[j] == c:
                    if j + 1 < n and script[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif c == "$" and (m := _DOLLAR.match(script, i)):
            end = script.find(m.group(0), m.end())
            i = n if end < 0 else end + len(m.group(0))
        elif c == ";":
            _add(out, script, start, i)
            start = i + 1
            i += 1
        else:
            i += 1
    _add(out, script, start, n)
    return out


def _add(out: list[Statement], script: str, start: int, end: int) -> None:
    body = script[start:end]
    stripped = _strip_comments(body).strip()
    if not stripped:
        return
    offset = start + (len(body) - len(body.lstrip()))
    # the statement starts at its first non-comment character
    lead = body.lstrip()
    while lead.startswith("--") or lead.startswith("/*"):
        cut = lead.find("\n") + 1 if lead.startswith("--") else lead.find("*/") + 2
        if cut <= 0:
            break
        offset += cut + (len(lead[cut:]) - len(lead[cut:].lstrip()))
        lead = lead[cut:].lstrip()
    line = script.count("\n", 0, offset) + 1
    out.append(Statement(len(out) + 1, line, body.strip()))


def _strip_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"--[^\n]*", " ", sql)


_NON_TRANSACTIONAL = [
    (re.compile(r"\bCONCURRENTLY\b", re.I), "runs CONCURRENTLY, which cannot be in a transaction"),
    (re.compile(r"^\s*ALTER\s+TYPE\b.*\bADD\s+VALUE\b", re.I | re.S),
     "ALTER TYPE ... ADD VALUE: the new value cannot be used in the same transaction"),
    (re.compile(r"^\s*(VACUUM|CREATE\s+DATABASE|DROP\s+DATABASE|ALTER\s+SYSTEM|"
                r"CREATE\s+TABLESPACE|DROP\s+TABLESPACE)\b", re.I),
     "cannot run inside a transaction"),
]

_DESTRUCTIVE = [
    (re.compile(r"^\s*DROP\s+TABLE\b", re.I), "drops a table and its data"),
    (re.compile(r"\bDROP\s+(COLUMN\b|(?!CONSTRAINT|DEFAULT|NOT|EXPRESSION|IDENTITY)"
                r"(IF\s+EXISTS\s+)?\w+\s*(CASCADE|RESTRICT)?\s*(,|$))", re.I),
     "drops a column and its data"),
    (re.compile(r"^\s*TRUNCATE\b", re.I), "truncates a table"),
    (re.compile(r"^\s*DELETE\b", re.I), "deletes rows"),
    (re.compile(r"^\s*DROP\s+SCHEMA\b", re.I), "drops a schema and everything in it"),
    (re.compile(r"\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b", re.I),
     "changes a column's type (values may be converted or truncated)"),
]

_SEQUENCES = re.compile(r"\b(CREATE\s+SEQUENCE|SERIAL|BIGSERIAL|SMALLSERIAL|"
                        r"GENERATED\s+(ALWAYS|BY\s+DEFAULT)\s+AS\s+IDENTITY|nextval\s*\()", re.I)


def non_transactional(stmt: Statement) -> str | None:
    """Why the statement cannot run in a transaction, or None."""
    body = _strip_comments(stmt.sql)
    for pattern, why in _NON_TRANSACTIONAL:
        if pattern.search(body):
            return why
    return None


def destroys_data(stmt: Statement) -> str | None:
    body = _strip_comments(stmt.sql)
    if not re.match(r"\s*(DROP|ALTER|TRUNCATE|DELETE)\b", body, re.I):
        return None
    for pattern, why in _DESTRUCTIVE:
        if pattern.search(body):
            return why
    return None


def uses_sequences(stmt: Statement) -> bool:
    return bool(_SEQUENCES.search(_strip_comments(stmt.sql)))
