"""Least privilege: who flag SQL runs as, and the refusal of roles that reach past the database.

A shadow run executes SQL written by whoever wrote the flag file. Read-only, rolled-back
transactions bound what that SQL can do to the data; they do not bound a superuser, who can
run shell commands (``COPY ... TO PROGRAM``), write server files or create roles. So the
login that runs flag SQL is checked before anything runs, and refused when it could do any of
that, unless the user says ``--allow-superuser`` (or ``allow_superuser: true`` in the
workspace's ``rollout.yaml``).

The check is on the *login* (``session_user``), not on a role set with ``SET ROLE``: a
privileged login can switch back (``set_config('role', ...)``) from inside the SQL it runs.
A configured shadow role (``SET ROLE``) narrows what a well-meaning query can touch; the
mechanism against a hostile one is a login without those powers (docs/safety.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from ..errors import ConnectionFailed, InputError, UnsafeRole

POWERS = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")
"""Predefined roles whose members reach the server's host (programs, files)."""

ROLE_SQL = """
SELECT session_user::text, current_user::text,
       ARRAY(SELECT r.rolname::text FROM pg_roles r WHERE r.rolsuper
             AND pg_has_role(session_user, r.oid, 'MEMBER') ORDER BY r.rolname <> session_user,
             r.rolname),
       ARRAY(SELECT r.rolname::text FROM pg_roles r WHERE r.rolcreaterole
             AND pg_has_role(session_user, r.oid, 'MEMBER') ORDER BY r.rolname <> session_user,
             r.rolname),
       ARRAY(SELECT p FROM unnest(%s::text[]) AS p
             WHERE pg_has_role(session_user, p, 'MEMBER'))
"""
"""The login and every role it is a member of, directly or through other roles, whatever the
grant's INHERIT and SET options: a member can become the role (``set_config('role', ...)``)
or may be granted that option later, so membership itself is the power."""

SETUP_HINT = ("connect as a login without those powers (`rollout init --role NAME` writes the "
              "SQL that creates one; docs/safety.md), or pass --allow-superuser to accept "
              "the risk")



@dataclass(frozen=True)
class Role:
    """The login flag SQL runs as, and what it can do beyond the database."""

    login: str
    current: str
    superusers: tuple[str, ...]
    """Superuser roles the login is or is a member of."""
    createroles: tuple[str, ...]
    """Roles with CREATEROLE the login is or is a member of."""
    powers: tuple[str, ...]

    @property
    def superuser(self) -> bool:
        return bool(self.superusers)

    @property
    def dangers(self) -> list[str]:
        """In words, each way this login reaches past the database; empty when none."""
        if self.login in self.superusers:  # a superuser can do all of the rest
            return ["is a superuser (can run shell commands with COPY ... TO PROGRAM)"]
        out: list[str] = []
        out.extend(f"is a member of the superuser role '{name}' (and can become it)"
                   for name in self.superusers)
        for name in self.createroles:
            out.append("has CREATEROLE (can create and grant roles for the whole cluster)"
                       if name == self.login else
                       f"is a member of '{name}', which has CREATEROLE")
        out.extend(f"is a member of {p}" for p in self.powers)
        return out


def inspect(conn: psycopg.Connection[Any]) -> Role:
    """The login of ``conn`` and its cluster-wide powers (one catalog query)."""
    return _role(conn.execute(ROLE_SQL, [list(POWERS)]).fetchone())


async def inspect_async(conn: psycopg.AsyncConnection[Any]) -> Role:
    """``inspect`` for an asyncio connection."""
    cur = await conn.execute(ROLE_SQL, [list(POWERS)])
    return _role(await cur.fetchone())


def _role(row: Any) -> Role:
    if row is None:  # a login always has a pg_roles row; be explicit rather than crash
        raise InputError("cannot read the connecting role from pg_roles")
    login, current, superusers, createroles, powers = row
    return Role(login, current, tuple(superusers or ()), tuple(createroles or ()),
                tuple(powers or ()))


def require_least_privilege(conn: psycopg.Connection[Any], *, allow: bool, what: str
                            ) -> Role:
    """Refuse (``UnsafeRole``) to run flag SQL as a login that reaches past the database,
    unless ``allow``. ``what`` names the work in the message (e.g. ``shadow``)."""
    return refuse_unless(inspect(conn), allow=allow, what=what)


def refuse_unless(role: Role, *, allow: bool, what: str) -> Role:
    """``role`` if it is safe (or ``allow``), else ``UnsafeRole`` naming why and the fix."""
    if role.dangers and not allow:
        raise UnsafeRole(f"refusing to {what} as role '{role.login}': it "
                         f"{'; '.join(role.dangers)}; flag SQL could reach the server beyond "
                         f"this database. Fix: {SETUP_HINT}")
    return role


def check_login(dsn: str, *, allow: bool, what: str) -> Role:
    """Connect once and ``refuse_unless`` the login is safe: a runner checks before it opens
    its pools. An unreachable database is ``ConnectionFailed`` (named, never the password)."""
    from ..store.connection import connect

    with connect(dsn, connect_timeout=10) as conn:
        return refuse_unless(inspect(conn), allow=allow, what=what)


async def check_login_async(dsn: str, *, allow: bool, what: str) -> Role:
    """``check_login`` for asyncio."""
    from ..store.connection import redact, scrub

    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()
        raise ConnectionFailed(f"cannot connect to {redact(dsn)}: "
                               f"{scrub(text[0] if text else type(exc).__name__, dsn)}"
                               ) from None
    async with conn:
        return refuse_unless(await inspect_async(conn), allow=allow, what=what)


def with_role(dsn: str, role: str | None) -> str:
    """``dsn`` whose sessions start with ``SET ROLE role`` (libpq ``options``): every
    connection of a pool gets it, and a pool's reset (``RESET ALL``) keeps it."""
    if not role:
        return dsn
    return make_conninfo(dsn, options=f"-c role={role}")


def setup_sql(role: str, schemas: tuple[str, ...] = ("public",), write: bool = True) -> str:
    """The SQL that creates a least-privilege login for flag SQL: it may read (and, for
    write flags, write — always rolled back) the tables of ``schemas``, nothing more; it
    connects by PUBLIC's default CONNECT on the database. Run it as an administrator, then
    set a password (``ALTER ROLE ... PASSWORD``) or use your usual authentication."""
    ident = pgsql.Identifier(role).as_string(None)
    lines = [f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;"]
    for schema in schemas:
        s = pgsql.Identifier(schema).as_string(None)
        tables = "SELECT, INSERT, UPDATE, DELETE" if write else "SELECT"
        sequences = "USAGE, SELECT" if write else "SELECT"
        lines += [
            f"GRANT USAGE ON SCHEMA {s} TO {ident};",
            f"GRANT {tables} ON ALL TABLES IN SCHEMA {s} TO {ident};",
            f"GRANT {sequences} ON ALL SEQUENCES IN SCHEMA {s} TO {ident};",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {tables} ON TABLES TO {ident};",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {sequences} ON SEQUENCES TO {ident};",
        ]
    return "\n".join(lines) + "\n"
