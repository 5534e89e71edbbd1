"""The ``rollout`` command line: parse arguments, call ``rollout.commands``, map errors."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from . import commands
from ._version import __version__
from .errors import (
    EXIT_INCONCLUSIVE,
    EXIT_INTERNAL,
    EXIT_NO_GO,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    RolloutError,
    Terminated,
)
from .flags.state import FlagState
from .store.connection import SHADOW_LOGIN, redact, service_uri

# `rollout flag kill` must start at once in an incident: runs, reports and verdicts (scipy,
# numpy, jinja2, rich) are imported by the commands that need them, never at start-up.
if TYPE_CHECKING:
    from .run.shadow import Progress


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    session = commands.Session(Path(args.workspace), dsn=args.dsn, store_dsn=args.store_dsn,
                               say=_err, allow_superuser=getattr(args, "allow_superuser", False))
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        code: int = args.run(session, args)
        return code
    except RolloutError as exc:
        _err(f"rollout: error: {exc}")
        return exc.exit_code
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()
        _err(f"rollout: database error: {text[0] if text else type(exc).__name__}")
        return EXIT_USAGE
    except Terminated:
        _err("rollout: terminated (SIGTERM)")
        return 143
    except KeyboardInterrupt:
        _err("rollout: interrupted")
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("ROLLOUT_DEBUG"):
            raise
        _err(f"rollout: internal error: {type(exc).__name__}: "
             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} "
             "(set ROLLOUT_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: every ``finally`` runs, runs are marked failed."""
    raise Terminated("terminated (SIGTERM)")


ALLOW_SUPERUSER = ("--allow-superuser",)
ALLOW_SUPERUSER_OPTIONS: dict[str, Any] = {
    "action": "store_true",
    "help": "run flag SQL even as a login that can reach past the database (superuser, "
            "CREATEROLE, server programs or files); see docs/safety.md"}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="target database (else DATABASE_URL, PG*, or embedded)")
    common.add_argument("--store-dsn", help="database for the toolkit's state (default: target)")
    common.add_argument("--workspace", default=".", help="folder with flags/ (default: .)")

    parser = argparse.ArgumentParser(
        prog="rollout", description="Feature-flagged PostgreSQL query rollouts.")
    parser.add_argument("--version", action="version", version=f"pg-rollout {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="scaffold a workspace")
    p.add_argument("dir", nargs="?", default=None, help="folder (default: --workspace)")
    p.add_argument("--role", metavar="NAME",
                   help="also write rollout-role.sql: SQL creating a least-privilege login "
                        "NAME for flag SQL (run it as an administrator)")
    p.set_defaults(run=_init)

    p = sub.add_parser("demo", parents=[common], help="load demo data, shadow-run, report")
    p.add_argument("--scale", type=float, default=1.0, help="data set size (default 1.0)")
    p.add_argument("--samples", type=int, default=None, help="samples per flag")
    p.add_argument(*ALLOW_SUPERUSER, **ALLOW_SUPERUSER_OPTIONS)
    p.set_defaults(run=_demo)

    p = sub.add_parser("check", parents=[common], help="validate flag files")
    p.add_argument("flags", nargs="*", metavar="FLAG")
    p.add_argument("--offline", action="store_true", help="do not prepare queries on a database")
    p.set_defaults(run=_check)

    p = sub.add_parser("shadow", parents=[common], help="offline shadow run of a flag")
    p.add_argument("flag", metavar="FLAG")
    p.add_argument("--stage", help="stage to run (default: the flag's current stage)")
    p.add_argument("--tenant", action="append", default=[], help="tenant (repeatable)")
    p.add_argument("--samples", type=int, help="paired executions (default: gates.min_samples)")
    p.add_argument("--seed", type=int, help="random seed for parameter order")
    p.add_argument("--aa", action="store_true",
                   help="noise calibration: run legacy against itself")
    p.add_argument("--lock-interval", type=float, default=10.0, metavar="MS",
                   help="pg_locks sampling interval in ms (0: off; default 10)")
    p.add_argument("--plans", type=int, default=10, metavar="N",
                   help="parameter sets per path to EXPLAIN (default 10)")
    p.add_argument(*ALLOW_SUPERUSER, **ALLOW_SUPERUSER_OPTIONS)
    p.set_defaults(run=_shadow)

    p = sub.add_parser("report", parents=[common], help="go/no-go report of a stage")
    p.add_argument("flag", metavar="FLAG")
    p.add_argument("--stage", help="stage to judge (default: the flag's current stage)")
    p.add_argument("--format", default=None, help="html,md,json (default: all)")
    p.add_argument("--out", help="output folder (default: WORKSPACE/reports)")
    p.set_defaults(run=_report)

    actor = argparse.ArgumentParser(add_help=False)
    actor.add_argument("--actor", default=None, help="who makes the change (default: OS user)")
    actor.add_argument("--reason", default=None, help="why; recorded in the audit trail")

    p = sub.add_parser("flag", help="runtime flag state: list, show, set, kill, resume")
    fsub = p.add_subparsers(dest="flag_command", metavar="ACTION", required=True)
    q = fsub.add_parser("list", parents=[common], help="every flag with its live state")
    q.set_defaults(run=_flag_list)
    q = fsub.add_parser("show", parents=[common], help="stages, live state, targets, events")
    q.add_argument("flag", metavar="FLAG")
    q.add_argument(*ALLOW_SUPERUSER, **ALLOW_SUPERUSER_OPTIONS)
    q.set_defaults(run=_flag_show)
    q = fsub.add_parser("set", parents=[common, actor], help="move a flag to a stage")
    q.add_argument("flag", metavar="FLAG")
    q.add_argument("--stage", required=True)
    q.set_defaults(run=_flag_set)
    q = fsub.add_parser("kill", parents=[common, actor], help="serve legacy everywhere, now")
    q.add_argument("flag", metavar="FLAG")
    q.set_defaults(run=_flag_kill)
    q = fsub.add_parser("resume", parents=[common, actor], help="undo a kill")
    q.add_argument("flag", metavar="FLAG")
    q.set_defaults(run=_flag_resume)

    p = sub.add_parser("advance", parents=[common, actor],
                       help="next stage, only on a fresh GO report for the current one")
    p.add_argument("flag", metavar="FLAG")
    p.add_argument("--force", action="store_true", help="override the report check (--reason)")
    p.set_defaults(run=_advance)

    p = sub.add_parser("server", parents=[common],
                       help="the embedded PostgreSQL of the workspace: status or stop")
    p.add_argument("action", choices=("status", "stop"))
    p.add_argument("--dsn-only", action="store_true",
                   help="status: print only the DSN of the workspace's database (exit 1 when "
                        "no server runs), for scripts")
    p.set_defaults(run=_server)

    p = sub.add_parser("prune", parents=[common],
                       help="drop observations older than an age, whole days at a time")
    p.add_argument("--older-than", required=True, metavar="AGE",
                   help="drop the days wholly older than this: 30d, 4w")
    p.add_argument("--force", action="store_true",
                   help="drop also the evidence behind the latest report of a flag's stage")
    p.add_argument("--dry-run", action="store_true", help="say what would be dropped, drop nothing")
    p.set_defaults(run=_prune)

    p = sub.add_parser("ci", parents=[common],
                       help="check, shadow-run and judge the flags changed since a git ref; "
                            "writes reports/ci-comment.md, exits with the worst verdict")
    p.add_argument("--since", metavar="GIT_REF",
                   help="the base of the change (e.g. origin/main); default: every flag")
    p.add_argument("--samples", type=int, default=None,
                   help="paired executions per flag (default: its gates.min_samples)")
    p.add_argument("--link-base", metavar="URL",
                   help="prefix of the HTML reports' links in the comment (default: relative)")
    p.add_argument(*ALLOW_SUPERUSER, **ALLOW_SUPERUSER_OPTIONS)
    p.set_defaults(run=_ci)

    p = sub.add_parser("rollback", parents=[common, actor],
                       help="show, verify or apply a flag's schema rollback")
    p.add_argument("flag", metavar="FLAG")
    p.add_argument("--verify", action="store_true",
                   help="prove the script in a scratch copy of the schema (exit 1 if not)")
    p.add_argument("--dry-run", action="store_true",
                   help="verify, then print what --apply would run with each statement's "
                        "hazards; applies nothing (exit 3 if not verified)")
    p.add_argument("--apply", action="store_true",
                   help="kill the flag, then run the script on the target")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.set_defaults(run=_rollback)

    from .watch.loop import add_parser as add_watch_parser  # light: no scipy or numpy at import

    add_watch_parser(sub, common)
    return parser


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or getpass.getuser())


def _describe_state(st: FlagState) -> str:
    if not st.started:
        return "not started (serving legacy)"
    live = "KILLED (serving legacy)" if st.killed else "live"
    return f"stage {st.stage}, {live}, version {st.version}"


def _flag_list(session: commands.Session, args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = [("flag", "stage", "state", "version", "changed", "by")]
    for flag, st in commands.flag_list(session):
        rows.append((flag.name, st.stage or "-", "killed" if st.killed else
                     ("live" if st.started else "not started"), str(st.version),
                     st.updated_at.isoformat(timespec="seconds") if st.updated_at else "-",
                     st.updated_by or "-"))
    _table(rows)
    return 0


def _flag_show(session: commands.Session, args: argparse.Namespace) -> int:
    view = commands.flag_show(session, args.flag)
    flag, st = view.flag, view.state
    _out(f"{flag.name}: {flag.description}".rstrip(": "))
    _out(f"owner {flag.owner or '-'}, kind {flag.kind}; {_describe_state(st)}")
    if view.watcher is not None:
        w = view.watcher
        _out(f"watched by {w.watcher} since {w.started_at.isoformat(timespec='seconds')}"
             f" (last interval {w.heartbeat_at.isoformat(timespec='seconds')})")
    _out("stages:")
    for stage in flag.stages:
        mark = "▶" if stage.name == st.stage else " "
        parts = [f"serve {stage.serve.describe()}" if stage.serve else "",
                 f"shadow {stage.shadow.describe()}" if stage.shadow else ""]
        _out(f"  {mark} {stage.name}: {'; '.join(p for p in parts if p) or 'nobody'}")
    for path, tenants in sorted(view.targeted.items()):
        _out(f"targeted now ({path}): {', '.join(tenants)}")
    if view.events:
        _out("last events:")
    for e in view.events:
        parts = [e.at.isoformat(timespec="seconds"), e.actor,
                 e.action + (" (forced)" if e.forced else "")]
        if e.from_stage != e.to_stage:
            parts.append(f"{e.from_stage or '-'} → {e.to_stage}")
        _out("  " + " ".join(parts) + f" — {e.reason}")
    return 0


def _flag_set(session: commands.Session, args: argparse.Namespace) -> int:
    st = commands.flag_set(session, args.flag, args.stage, actor=_actor(args),
                           reason=args.reason or "")
    _out(f"{args.flag}: {_describe_state(st)}")
    return 0


def _flag_kill(session: commands.Session, args: argparse.Namespace) -> int:
    st = commands.flag_kill(session, args.flag, actor=_actor(args), reason=args.reason or "")
    _out(f"{args.flag}: {_describe_state(st)}")
    return 0


def _flag_resume(session: commands.Session, args: argparse.Namespace) -> int:
    st = commands.flag_resume(session, args.flag, actor=_actor(args), reason=args.reason or "")
    _out(f"{args.flag}: {_describe_state(st)}")
    return 0


def _advance(session: commands.Session, args: argparse.Namespace) -> int:
    st = commands.advance(session, args.flag, actor=_actor(args), force=args.force,
                          reason=args.reason)
    _out(f"{args.flag}: {_describe_state(st)}" + (" (forced)" if args.force else ""))
    return 0


def _server(session: commands.Session, args: argparse.Namespace) -> int:
    if args.dsn_only and args.action != "status":
        raise InputError("--dsn-only goes with `rollout server status`")
    if args.action == "stop":
        stopped = commands.server_stop(session)
        _out("no embedded PostgreSQL in this workspace (.rollout/pgdata)" if stopped is None
             else "embedded PostgreSQL stopped" if stopped
             else "embedded PostgreSQL was not running")
        return 0
    status = commands.server_status(session)
    # Only the embedded server's own address is printed, never --dsn or DATABASE_URL: those
    # may hold a password, and the embedded server's local logins need none.
    running = status.running
    if args.dsn_only:
        if running is None:
            _err("rollout: no embedded PostgreSQL runs in this workspace (.rollout/pgdata)")
            return 1
        _out(service_uri(running.dsn))
        return 0
    if status.state is None:
        _out("no embedded PostgreSQL in this workspace (.rollout/pgdata)")
        return 0
    _out(f"embedded PostgreSQL in .rollout/pgdata: {'running' if running else 'stopped'}")
    if running is not None:
        _out(f"dsn (administrator login: the toolkit's state, --store-dsn / store_dsn): "
             f"{service_uri(running.dsn)}")
        _out(f"shadow dsn (least-privilege login {SHADOW_LOGIN}: flag SQL, a service's "
             f"Rollout / AsyncRollout dsn): {service_uri(running.shadow_dsn)}")
    return 0


def _rollback(session: commands.Session, args: argparse.Namespace) -> int:
    """Without --apply: show (0), --verify (0 verified, else 1) or --dry-run (0 verified,
    else 3: what --apply would run is not known to restore the schema). --dry-run never
    applies, even beside --apply."""
    check = commands.rollback_check(session, args.flag, verify=args.verify or args.dry_run,
                                    say=_err)
    flag, rb = check.flag, check.flag.rollback
    if not check.needed:
        _out(f"{flag.name}: no rollback script: {rb.none_reason}")
        return 0
    if check.verification is not None:
        result = check.verification
        _out(f"{flag.name}: {result['status']}")
        for line in result.get("differences") or []:
            _out(f"  - {line}")
        _print_hazards(check.hazards("rollback" if args.dry_run else None))
        if args.dry_run:
            _out(f"would kill {flag.name}, then run {rb.script_path}"
                 + (" in one transaction" if check.transactional else " statement by statement"))
            return EXIT_OK if check.verified else EXIT_INCONCLUSIVE
        if not args.apply:
            return EXIT_OK if check.verified else EXIT_NO_GO
    if not args.apply:
        _out(f"{flag.name}: rollback script {rb.script_path}"
             + (f", undoing {rb.migration_path}" if rb.migration_path else ""))
        _out(f"  verify: rollout rollback {flag.name} --verify")
        _out(f"  apply:  rollout rollback {flag.name} --apply  (kills the flag first)")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise InputError("refusing to apply a rollback without confirmation: pass --yes")
        answer = input(f"Kill {flag.name} and run {rb.script_path} on "
                       f"{redact(session.target_dsn)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            _out("nothing done")
            return 1

    def step(number: int, total: int, stmt: Any) -> None:
        _err(f"  [{number}/{total}] {stmt.summary}")

    outcome = commands.rollback_apply(session, flag.name, actor=_actor(args),
                                      reason=args.reason, progress=step)
    if outcome.ok:
        _out(f"{flag.name}: killed; {rb.script_path} applied ({outcome.statements} "
             f"statement(s){', one transaction' if outcome.transactional else ''})")
        return 0
    kept = ("nothing was applied (one transaction)" if outcome.transactional
            else f"{outcome.applied} statement(s) before it stayed applied")
    _err(f"rollout: error: rollback failed at {outcome.position}: {outcome.error}; {kept}")
    return 1


def _prune(session: commands.Session, args: argparse.Namespace) -> int:
    result = commands.prune(session, args.older_than, force=args.force, dry_run=args.dry_run)
    verb = "would drop" if args.dry_run else "dropped"
    cutoff = result.cutoff.isoformat(timespec="seconds")
    for part in result.dropped:
        _out(f"{verb} {part.name} ({part.day}, ~{part.rows:,} rows)")
    for kept in result.kept:
        rows = f", ~{kept.partition.rows:,} rows" if kept.partition.rows >= 0 else ""
        _out(f"kept {kept.partition.name} ({kept.partition.day}{rows}): {kept.why}")
    if result.default_rows or result.default_kept:
        _out(f"default partition: {'would delete' if args.dry_run else 'deleted'} "
             f"{result.default_rows:,} rows older than {cutoff}"
             + (f", kept {result.default_kept:,} (evidence; --force deletes them)"
                if result.default_kept else ""))
    if not (result.dropped or result.kept or result.default_rows or result.default_kept):
        _out(f"nothing older than {cutoff} to drop")
    return 0


def _print_hazards(hazards: list[dict[str, Any]]) -> None:
    for h in hazards:
        notes = []
        if h.get("strongest_lock"):
            rel, mode = h["strongest_lock"]
            notes.append(f"{mode} on {rel}")
        if not h["transactional"]:
            notes.append(h["why_not_transactional"])
        if h.get("destroys_data"):
            notes.append(h["destroys_data"])
        if h.get("beyond_database"):
            notes.append(h["beyond_database"])
        if h.get("sequences_not_rewound"):
            notes.append("sequence values are not rewound")
        _out(f"  {h['script']} #{h['statement_number']} (line {h['line']}): {h['statement']}"
              + (f"  [{'; '.join(notes)}]" if notes else ""))


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _init(session: commands.Session, args: argparse.Namespace) -> int:
    target = Path(args.dir) if args.dir else session.workspace
    written = commands.init(target, role=args.role)
    for path in written:
        _out(f"created {path}")
    _out(f"workspace ready in {target}: edit flags/example.yaml, then `rollout check`")
    if args.role:
        _out(f"least-privilege login: run rollout-role.sql as an administrator, then connect "
              f"as {args.role} (--dsn)")
    return 0


def _check(session: commands.Session, args: argparse.Namespace) -> int:
    warnings: list[str] = []
    problems = commands.check(session, args.flags, database=not args.offline,
                              warnings=warnings)
    for line in problems + warnings:
        _err(line)
    if problems:
        return EXIT_USAGE
    names = args.flags or sorted(session.load().flags)
    _out(f"ok: {len(names)} flag(s) valid" + ("" if args.offline else ", queries prepare"))
    return 0


def _shadow(session: commands.Session, args: argparse.Namespace) -> int:
    if args.lock_interval < 0 or args.plans < 0:
        raise InputError("--lock-interval and --plans cannot be negative")
    from .run.shadow import RunOptions

    options = RunOptions(lock_interval=args.lock_interval / 1000 or None, plan_samples=args.plans)
    with _progress(f"{args.flag}") as bar:
        summary = commands.shadow(session, args.flag, stage=args.stage, tenants=args.tenant,
                                  samples=args.samples, seed=args.seed, aa=args.aa,
                                  options=options, progress=bar)
    tenants = ", ".join(str(t) if t is not None else "(none)" for t in summary.tenants)
    kind = "A/A calibration" if args.aa else "samples"
    _out(f"{summary.flag} / {summary.stage}: {summary.samples} {kind} over {tenants}; "
          f"{summary.mismatches} mismatches, {summary.new_failures} new-path failures, "
          f"{summary.legacy_failures} legacy failures (run {summary.run_id})")
    return 0


def _report(session: commands.Session, args: argparse.Namespace) -> int:
    from .judge.verdict import verdict_exit_code

    formats = (None if args.format is None else
               [f.strip() for f in args.format.split(",") if f.strip()])
    written = commands.report(session, args.flag, stage=args.stage, formats=formats,
                              out=Path(args.out) if args.out else None)
    _out(f"{args.flag} / {written.body['stage']}: {written.verdict}")
    for reason in written.body["reasons"]:
        _out(f"  - {reason}")
    for path in written.files:
        _out(f"  {path}")
    return verdict_exit_code(written.verdict)


def _ci(session: commands.Session, args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise InputError("--samples must be at least 1")
    from .ci import run_ci, summary_lines

    result = run_ci(session, args.since, samples=args.samples, link_base=args.link_base,
                    say=_err)
    for line in summary_lines(result):
        _out(line)
    return result.exit_code


def _demo(session: commands.Session, args: argparse.Namespace) -> int:
    if not args.scale > 0:
        raise InputError(f"--scale must be positive, got {args.scale:g}")
    if args.samples is not None and args.samples < 1:
        raise InputError("--samples must be at least 1")
    from .demo import run_demo

    with ExitStack() as stack:
        def progress(label: str) -> Progress | None:
            return stack.enter_context(_progress(label))

        rows = run_demo(session, scale=args.scale, samples=args.samples, progress=progress)
    header = ("flag", "stage", "samples", "mismatches", "latency", "verdict", "report")
    _table([header] + [
        (r.flag, r.stage, str(r.samples), str(r.mismatches),
         "n/a" if r.latency_change_pct is None else f"{r.latency_change_pct:+.1f} %",
         r.verdict, str(r.report)) for r in rows])
    return 0


@contextmanager
def _progress(label: str) -> Iterator[Progress | None]:
    """A progress bar on a terminal (stderr); nothing when output is redirected."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(f"[bold]{label}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _out(message: str) -> None:
    """One line on stdout, with the data in it made harmless for a terminal."""
    print(printable(message))


def _err(message: str) -> None:
    """One line on stderr, likewise."""
    print(printable(message), file=sys.stderr)


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), *range(0x202A, 0x202F),
                                 *range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """``text`` with control characters (newlines, carriage returns, escape sequences, bidi
    overrides) shown as escapes: tenant names, server messages and reasons are data, and a
    terminal must not be told by them to rewrite or hide what the toolkit printed."""
    return text.translate(_CONTROLS)


if __name__ == "__main__":
    sys.exit(main())
