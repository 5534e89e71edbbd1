"""The toolkit's commands as plain functions; the CLI parses arguments and calls these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, Refused
from .flags.model import Flag
from .flags.state import Event, FlagState, change, events, read_all, read_state
from .flags.targeting import Context
from .run.session import Say as Say  # re-exported: Session lives below the commands, so
from .run.session import Session as Session  # lower modules can use it; callers look here
from .store.connection import Target, redact
from .store.store import Store

# Only what the flag-state commands need is imported above: `rollout flag kill` must start
# at once in an incident. The runs, reports (scipy, numpy, jinja2) and rollbacks are
# imported by the commands that use them.
if TYPE_CHECKING:
    from .report.build import WrittenReport
    from .rollback.verify import Applied
    from .run.shadow import Progress, RunOptions, RunSummary
    from .store.prune import Pruned
    from .watch.loop import Holder, Outcome

def init(directory: Path, role: str | None = None) -> list[Path]:
    from .scaffold import init_workspace

    return init_workspace(directory, role)


def check(session: Session, names: Sequence[str] = (), database: bool = False,
          warnings: list[str] | None = None) -> list[str]:
    """Validate every flag (or the named ones); with ``database``, prepare their queries too.
    ``warnings`` (when given) receives lines that do not fail the check: orderings that do
    not determine ties, ORDER BY items the new path dropped (``dbcheck.determinism_warnings``,
    unique keys from the catalog with ``database``)."""
    from .rollback.verify import static_problems
    from .run.check import check_flag, determinism_warnings, order_problems

    ws = session.load(strict=False)
    problems = [str(e) for e in ws.errors]
    flags = list(ws.flags.values())
    if names:
        broken = {Path(e.file).stem for e in ws.errors}
        unknown = [n for n in names if n not in ws.flags and n not in broken]
        if unknown:
            ws.flag(unknown[0])  # raises the unknown-flag error, listing known flags
        flags = [ws.flags[n] for n in names if n in ws.flags]
        problems = [str(e) for e in ws.errors if Path(e.file).stem in names]
    for flag in flags:
        problems.extend(static_problems(flag))
        problems.extend(order_problems(flag))
    if database and flags:
        with session.target() as conn:
            for flag in flags:
                problems.extend(check_flag(conn, flag))
                if warnings is not None:
                    warnings.extend(determinism_warnings(flag, conn))
    elif warnings is not None:
        for flag in flags:
            warnings.extend(determinism_warnings(flag))
    return problems


def shadow(session: Session, flag_name: str, *, stage: str | None = None,
           tenants: Sequence[str] = (), samples: int | None = None, seed: int | None = None,
           aa: bool = False, options: RunOptions | None = None,
           progress: Progress | None = None) -> RunSummary:
    """Offline shadow run of one flag's stage (``aa``: legacy against itself, to calibrate
    noise); observations land in the store."""
    from .run.shadow import RunOptions, run_shadow, target_tenants

    opts = options or RunOptions()
    opts = replace(opts, seed=seed if seed is not None else opts.seed, aa=aa or opts.aa)
    ws = session.load()
    flag = ws.flag(flag_name)
    with session.runner(ws, f"shadow {flag.name}") as conn, session.store() as store:
        stage = stage or current_stage(store, flag)
        if flag.stage(stage) is None:
            raise flag.unknown_stage(stage)
        chosen: list[str | None] = list(tenants) if tenants else target_tenants(flag, stage, conn)
        return run_shadow(flag, conn, store, stage=stage, tenants=chosen,
                          samples=flag.gates.min_samples if samples is None else samples,
                          dsn=session.shadow_dsn(ws),
                          options=opts, progress=progress)


def report(session: Session, flag_name: str, *, stage: str | None = None,
           formats: Sequence[str] | None = None, out: Path | None = None) -> WrittenReport:
    """Judge a stage and write its report files (``formats``: default all); the verdict
    decides the exit code."""
    from .report.build import FORMATS, write_report

    ws = session.load()
    flag = ws.flag(flag_name)
    out_dir = out or (session.workspace / "reports")
    with session.store() as store:
        stage = stage or current_stage(store, flag)
        return write_report(flag, stage, store, out_dir, database=redact(session.target_dsn),
                            formats=FORMATS if formats is None else formats,
                            target_dsn=session.target_dsn,
                            business_dsn=session.shadow_dsn(ws) if flag.business else None,
                            allow_superuser=(session.allow_superuser
                                             or ws.settings.allow_superuser))


# -- runtime flag state ---------------------------------------------------------------------


@dataclass(frozen=True)
class FlagOverview:
    """What `rollout flag show` prints: the flag, its live state, who it targets, history."""

    flag: Flag
    state: FlagState
    targeted: dict[str, list[str]]
    events: list[Event]
    watcher: Holder | None = None
    """The `rollout watch` process holding the flag now (its lock checked), if any."""


def current_stage(store: Store, flag: Flag) -> str:
    """The live stage, or the first stage of a flag that has not been started."""
    st = read_state(store.conn, flag.name)
    return st.stage if st.stage is not None else flag.first_stage


def flag_list(session: Session) -> list[tuple[Flag, FlagState]]:
    ws = session.load()
    with session.store() as store:
        states = read_all(store.conn)
    return [(f, states.get(f.name, FlagState(f.name, None, False, 0)))
            for f in sorted(ws.flags.values(), key=lambda f: f.name)]


def flag_show(session: Session, name: str, resolve: bool = True) -> FlagOverview:
    ws = session.load()
    flag = ws.flag(name)
    from .watch.loop import holder

    with session.store() as store:
        st = read_state(store.conn, flag.name)
        history = events(store.conn, flag.name)
        watcher = holder(store.conn, flag.name)
    targeted: dict[str, list[str]] = {}
    if resolve and st.started and not st.killed and st.stage and flag.tenants_sql:
        from .run.shadow import fetch_tenants

        with session.runner(ws, f"run params.tenants of {flag.name}") as conn:
            tenants = fetch_tenants(conn, flag)
        for tenant in tenants:
            d = flag.decide(Context(tenant=str(tenant)), st.stage)
            if d.path != "legacy":
                targeted.setdefault(d.path, []).append(str(tenant))
    return FlagOverview(flag, st, targeted, history, watcher)


def watch(session: Session, flags: Sequence[str], *, once: bool = False,
          stop: Any = None) -> list[Outcome]:
    """Judge the flags' live stages every interval until ``stop`` (a threading.Event) is
    set, or once; abort or promote as their ``analysis:`` blocks say (docs/watch.md)."""
    from .watch.loop import watch as run_watch

    return run_watch(session, flags, once=once, stop=stop)


def flag_set(session: Session, name: str, stage: str, *, actor: str, reason: str) -> FlagState:
    flag = session.load().flag(name)
    with session.store() as store:
        return change(store.conn, flag, "set", actor=actor, reason=reason, stage=stage)


def flag_kill(session: Session, name: str, *, actor: str, reason: str) -> FlagState:
    flag = session.load().flag(name)
    with session.store() as store:
        st = read_state(store.conn, flag.name)
        if st.killed:
            raise InputError(f"flag '{flag.name}' is already killed (since {st.updated_at})")
        return change(store.conn, flag, "kill", actor=actor, reason=reason, killed=True,
                      expected_version=st.version)


def flag_resume(session: Session, name: str, *, actor: str, reason: str) -> FlagState:
    flag = session.load().flag(name)
    with session.store() as store:
        st = read_state(store.conn, flag.name)
        if not st.killed:
            raise InputError(f"flag '{flag.name}' is not killed; nothing to resume")
        return change(store.conn, flag, "resume", actor=actor, reason=reason, killed=False,
                      expected_version=st.version)


def advance(session: Session, name: str, *, actor: str, force: bool = False,
            reason: str | None = None) -> FlagState:
    """Move to the next stage only on a GO report for the current stage that is newer than
    the last change of the flag's SQL or stage; ``force`` overrides, with a reason, audited."""
    flag = session.load().flag(name)
    if force and not (reason and reason.strip()):
        raise InputError("--force needs --reason: say why the evidence is overridden")
    stages = [s.name for s in flag.stages]
    with session.store() as store:
        st = read_state(store.conn, flag.name)
        report_id = None
        problem = None
        if not st.started:
            target = stages[0]
            why = reason or f"start at the first stage {target}"
        else:
            if st.killed:
                raise InputError(f"flag '{flag.name}' is killed; `rollout flag resume` first")
            if st.stage not in stages:
                raise InputError(f"flag '{flag.name}' is at stage '{st.stage}', which its file no "
                                 f"longer defines; use `rollout flag set --stage`")
            i = stages.index(st.stage)
            if i == len(stages) - 1:
                raise InputError(f"flag '{flag.name}' is already at its last stage '{st.stage}'")
            target = stages[i + 1]
            latest = store.latest_report(flag.name, st.stage)
            problem = _advance_problem(flag, st, latest)
            if latest is not None:
                report_id = latest["report_id"]
            if problem and not force:
                raise Refused(f"not advancing '{flag.name}' past '{st.stage}': {problem}")
            why = reason or f"report {report_id} for {st.stage} is GO"
        return change(store.conn, flag, "advance", actor=actor, reason=why, stage=target,
                      expected_version=st.version, report_id=report_id,
                      forced=bool(force and problem))


def _advance_problem(flag: Flag, st: FlagState, latest: dict[str, Any] | None) -> str | None:
    if latest is None:
        return f"no report for stage '{st.stage}' yet (run `rollout report {flag.name}`)"
    when = latest["created_at"].isoformat(timespec="seconds")
    if latest["verdict"] != "GO":
        return f"the latest report for '{st.stage}' ({when}) is {latest['verdict']}"
    if latest["sql_hash"] != flag.sql_hash:
        return f"the flag's SQL changed after the latest report ({when})"
    if st.updated_at is not None and latest["created_at"] <= st.updated_at:
        return (f"the latest report ({when}) predates the flag's last change "
                f"({st.updated_at.isoformat(timespec='seconds')})")
    return None


# -- rollback -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackCheck:
    """What `rollout rollback` knows before anything is applied: the flag's script and, when
    asked for, its verification (``rollback.verification_for``'s body)."""

    flag: Flag
    verification: dict[str, Any] | None = None

    @property
    def needed(self) -> bool:
        """False when the flag says there is nothing to undo (``rollback.none``)."""
        return not self.flag.rollback.none_reason

    @property
    def verified(self) -> bool:
        return bool(self.verification and self.verification["verified"])

    def hazards(self, script: str | None = None) -> list[dict[str, Any]]:
        """The verification's hazards, of one script (``rollback``, ``migration``) or all."""
        found = (self.verification or {}).get("hazards") or []
        return [h for h in found if script is None or h["script"] == script]

    @property
    def transactional(self) -> bool:
        """``--apply`` would run the script in one transaction: every statement allows it."""
        return all(h["transactional"] for h in self.hazards("rollback"))


def rollback_check(session: Session, name: str, *, verify: bool = False,
                   say: Say | None = None) -> RollbackCheck:
    """The flag's rollback, verified now in a scratch copy of the target's schema when
    ``verify``; a flag with neither a script nor ``rollback.none`` is bad input."""
    flag = session.load().flag(name)
    if not flag.rollback.none_reason and flag.rollback.script is None:
        raise InputError(f"flag '{flag.name}' has no rollback script (rollback.script)")
    if not verify or flag.rollback.none_reason:
        return RollbackCheck(flag)
    return RollbackCheck(flag, _verification(session, flag, say))


def rollback_verify(session: Session, name: str, say: Say | None = None) -> dict[str, Any]:
    """Verify the flag's rollback now, in a scratch copy of the target's schema."""
    return _verification(session, session.load().flag(name), say)


def _verification(session: Session, flag: Flag, say: Say | None) -> dict[str, Any]:
    from .rollback.verify import verification_for

    with session.store() as store:
        return verification_for(flag, session.target_dsn, store.conn, say, fresh=True)


def rollback_apply(session: Session, name: str, *, actor: str, reason: str | None = None,
                   progress: Callable[[int, int, Any], None] | None = None) -> Applied:
    """Kill the flag (audited), then run its rollback script on the target; the outcome is
    audited too. A failure stops at the failing statement."""
    from .rollback.verify import apply, require_script

    flag = session.load().flag(name)
    script = require_script(flag)
    why = (reason or "").strip() or "schema rollback"
    with session.store() as store:
        st = read_state(store.conn, flag.name)
        if st.started and not st.killed:
            st = change(store.conn, flag, "kill", actor=actor,
                        reason=f"{why}: serving legacy before the schema rollback",
                        killed=True, expected_version=st.version)
        with session.target() as conn:
            outcome = apply(conn, script, progress)
        text = (f"{why}: {flag.rollback.script_path} applied ({outcome.statements} "
                f"statement(s), {'one transaction' if outcome.transactional else 'one by one'})"
                if outcome.ok else
                f"{why}: {flag.rollback.script_path} FAILED at {outcome.position}: "
                f"{outcome.error}; {outcome.applied} statement(s) stayed applied")
        change(store.conn, flag, "rollback", actor=actor, reason=text[:1000],
               stage=st.stage or flag.first_stage, killed=True)
    return outcome


# -- the workspace's embedded server, the store's upkeep ------------------------------------


@dataclass(frozen=True)
class ServerStatus:
    """The workspace's embedded PostgreSQL (``.rollout/pgdata``): ``state`` is ``running``,
    ``stopped`` or None when the workspace never had one; ``running`` holds its logins."""

    data: Path
    state: str | None
    running: Target | None


def server_status(session: Session) -> ServerStatus:
    from .store.connection import embedded_status, running_embedded

    data = session.workspace / ".rollout" / "pgdata"
    state = embedded_status(data)
    return ServerStatus(data, state, running_embedded(data) if state == "running" else None)


def server_stop(session: Session) -> bool | None:
    """Stop the workspace's embedded server: True when stopped, False when it was not
    running, None when the workspace has none."""
    from .store.connection import embedded_status, stop_embedded

    data = session.workspace / ".rollout" / "pgdata"
    return None if embedded_status(data) is None else stop_embedded(data)


def prune(session: Session, older_than: str, *, force: bool = False,
          dry_run: bool = False) -> Pruned:
    """Drop the store's observations older than ``older_than`` (``30d``, ``4w``), whole days
    at a time; the evidence behind a stage's latest report stays unless ``force``."""
    from .store.prune import parse_age
    from .store.prune import prune as run_prune

    age = parse_age(older_than)  # before any connection: bad input changes nothing
    with session.store() as store:
        return run_prune(store.conn, age, force=force, dry_run=dry_run)
