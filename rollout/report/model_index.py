"""The model of the workspace index page (``reports/index.html``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..judge.model_record import Record


@dataclass(frozen=True)
class IndexStage(Record):
    """One stage of a flag on the index: its newest report, if any."""

    name: str | None = None
    in_flag: bool | None = None  # False: a stage the flag file no longer has
    verdict: str | None = None
    samples: int | None = None
    created_at: str | None = None
    judged_by: str | None = None  # "rollout watch" when the watcher wrote the report
    href: str | None = None  # relative link to the stage's HTML report
    html_stale: bool | None = None  # the newest report wrote no HTML: the page is older


@dataclass(frozen=True)
class LiveState(Record):
    """A flag's live state (``rollout.flag_state``)."""

    stage: str | None = None
    killed: bool | None = None
    version: int | None = None
    updated_at: str | None = None
    updated_by: str | None = None


@dataclass(frozen=True)
class IndexFlag(Record):
    name: str | None = None
    description: str | None = None
    owner: str | None = None
    error: str | None = None  # an invalid flag file's error
    state: LiveState | None = None
    stages: list[IndexStage] = field(default_factory=list)


@dataclass(frozen=True)
class IndexPage(Record):
    """What ``reports/index.html`` lists: every flag of the workspace."""

    generated_at: str | None = None
    toolkit_version: str | None = None
    flags: list[IndexFlag] = field(default_factory=list)
