"""Server-side SQL highlighting: a script as runs of keywords, strings, comments and the rest."""

from __future__ import annotations

import re

# Enough of PostgreSQL's keywords to make a DDL or DML script scannable; other words stay
# plain. Matching is case-insensitive and never changes the text.
# fmt: off
SQL_KEYWORDS = frozenset(
    {
        "ADD", "ALL", "ALTER", "ALWAYS", "ANALYZE", "AND", "ANY", "AS", "ASC", "BEGIN", "BETWEEN",
        "BY", "CASCADE", "CASE", "CAST", "CHECK", "COLLATE", "COLUMN", "COMMENT", "COMMIT",
        "CONCURRENTLY", "CONSTRAINT", "COPY", "CREATE", "CROSS", "CURRENT_DATE",
        "CURRENT_TIMESTAMP", "DATA", "DEFAULT", "DEFERRABLE", "DELETE", "DESC", "DISABLE",
        "DISTINCT", "DO", "DOMAIN", "DROP", "ELSE", "ENABLE", "END", "EXCEPT", "EXCLUDE", "EXISTS",
        "EXTENSION", "FALSE", "FETCH", "FILTER", "FIRST", "FOR", "FOREIGN", "FROM", "FULL",
        "FUNCTION", "GENERATED", "GRANT", "GROUP", "HAVING", "IDENTITY", "IF", "ILIKE", "IN",
        "INCLUDE", "INDEX", "INHERITS", "INITIALLY", "INNER", "INSERT", "INTERSECT", "INTO", "IS",
        "JOIN", "KEY", "LANGUAGE", "LAST", "LATERAL", "LEFT", "LIKE", "LIMIT", "LOCK",
        "MATERIALIZED", "NATURAL", "NO", "NOT", "NOTHING", "NOWAIT", "NULL", "NULLS", "OF",
        "OFFSET", "ON", "ONLY", "OR", "ORDER", "OUTER", "OVER", "OWNER", "PARTITION", "POLICY",
        "PRIMARY", "PROCEDURE", "REFERENCES", "REFRESH", "REINDEX", "RENAME", "REPLACE", "RESTRICT",
        "RETURNING", "RETURNS", "REVOKE", "RIGHT", "ROLLBACK", "ROW", "ROWS", "SCHEMA", "SELECT",
        "SEQUENCE", "SET", "SHARE", "SOME", "TABLE", "TABLESPACE", "TEMP", "TEMPORARY", "THEN",
        "TO", "TRIGGER", "TRUE", "TRUNCATE", "TYPE", "UNION", "UNIQUE", "UNLOGGED", "UPDATE",
        "USING", "VACUUM", "VALID", "VALIDATE", "VALUE", "VALUES", "VIEW", "WHEN", "WHERE",
        "WINDOW", "WITH", "WITHOUT",
    }
)
# fmt: on

_SQL_TOKEN = re.compile(
    r"""
    (?P<c>--[^\n]*|/\*.*?(?:\*/|\Z))                           # comment
    | (?P<d>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?(?:\$(?P=tag)\$|\Z))  # dollar quote
    | (?P<s>(?:[EeBbXxNn]|[Uu]&)?'(?:[^']|'')*(?:'|\Z))            # string constant
    | (?P<q>"(?:[^"]|"")*(?:"|\Z))                               # quoted identifier
    | (?P<p>%\([^)\s]*\)s|%s|\$\d+)                              # query parameter
    | (?P<n>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)                # number
    | (?P<w>[A-Za-z_][A-Za-z_0-9$]*)                             # word
    """,
    re.S | re.X,
)
# token group -> CSS class ("" stays plain text)
_SQL_CLASS = {"c": "c", "d": "s", "s": "s", "q": "", "p": "p", "n": "n"}


def highlight_sql(sql: str) -> list[tuple[str, str]]:
    """``sql`` as (css class, text) runs for server-side highlighting: keywords ``k``,
    strings ``s``, comments ``c``, numbers ``n``, parameters ``p``, plain text ``""``.

    The texts concatenate to exactly ``sql``; the template escapes each one, so nothing in
    the script can become markup."""
    out: list[tuple[str, str]] = []

    def add(css: str, text: str) -> None:
        if not text:
            return
        if out and out[-1][0] == css:
            out[-1] = (css, out[-1][1] + text)
        else:
            out.append((css, text))

    pos = 0
    for m in _SQL_TOKEN.finditer(sql):
        add("", sql[pos : m.start()])
        group = m.lastgroup or ""
        if group == "tag":  # lastgroup names the innermost group that closed last
            group = "d"
        text = m.group(0)
        css = ("k" if text.upper() in SQL_KEYWORDS else "") if group == "w" else _SQL_CLASS[group]
        add(css, text)
        pos = m.end()
    add("", sql[pos:])
    return out
