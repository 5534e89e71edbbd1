"""Errors raised by pg-rollout, each mapped to a CLI exit code.

::

    RolloutError                 exit 2, one line on stderr
     ├── InputError              bad command-line input (unknown flag, stage, tenant ...)
     │    ├── FlagFileError      a flag file or workspace file is wrong: file:line: key: what
     │    ├── ConcurrentChange   a flag changed between reading and changing it
     │    └── UnsafeRole         the login flag SQL would run as reaches past the database
     ├── ConnectionFailed        the target or store database cannot be reached
     ├── StoreError              the rollout schema is missing, too new, or a write failed
     │    └── StoreStalled       the store stopped answering during a run: the run stopped
     ├── ScratchUnavailable      no scratch server for a verification: skipped, saying why
     ├── LostLeadership          a watcher lost its lock or the store: it acts on nothing
     └── Refused                 exit 1: `advance` without a fresh GO report for the stage

    Terminated (a KeyboardInterrupt) SIGTERM: exit 143 (SIGINT: 130), runs marked failed

Anything else that escapes the CLI is a bug of ours: one line, exit ``EXIT_INTERNAL`` (70,
sysexits' EX_SOFTWARE), never the exit code of bad input; ``ROLLOUT_DEBUG=1`` shows the
traceback.

Verdict exit codes (0 GO, 1 NO-GO, 3 INCONCLUSIVE) are not errors; see ``rollout.judge.verdict``.
Commands that answer a yes/no question about evidence use the same three (``rollout
rollback --verify``: 0 verified, 1 not; ``--dry-run``: 0 verified, 3 not known to be safe).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NO_GO = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_INTERNAL = 70


class RolloutError(Exception):
    """Base class: a failure the user can act on, reported as one line."""

    exit_code = EXIT_USAGE


class InputError(RolloutError):
    """Bad input on the command line or in the library call."""


class FlagFileError(InputError):
    """A flag file (or a file it names) is invalid."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class ConcurrentChange(InputError):
    """The flag changed between reading its state and changing it; nothing was written."""


class UnsafeRole(InputError):
    """The login that would run flag SQL can reach past the database (exit 2)."""


class ConnectionFailed(RolloutError):
    """A database could not be reached; the message names it without its password."""


class StoreError(RolloutError):
    """The toolkit's own state in schema ``rollout`` could not be read or written."""


class StoreStalled(StoreError):
    """The store stopped answering during a run: the run stopped."""


class ScratchUnavailable(RolloutError):
    """No scratch server or database could be made: verification is skipped, saying why."""


class LostLeadership(RolloutError):
    """A watcher's lock connection is gone or no longer holds the flag: act on nothing."""


class Refused(RolloutError):
    """A guarded operation (``rollout advance``) refused: the evidence does not allow it."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds like Ctrl-C: every ``finally``
    runs, a run in progress is marked failed with ``str(exc)`` as its reason."""


def interruption(exc: BaseException) -> str:
    """Why a run was cut short, in words, for ``rollout.runs.reason``."""
    if isinstance(exc, Terminated):
        return str(exc) or "terminated (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")[:500]
