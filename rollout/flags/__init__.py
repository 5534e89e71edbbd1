"""Flags: the flag file and its SQL read and validated, targeting, the decision, live state.

Its modules, each about one thing:

- ``_yaml``: YAML loading that remembers the line of every key, for ``file:line: key: message``
  errors.
- ``determinism``: Static determinism checks of a flag query, read from its parse tree: results
  that hang on ties.
- ``flagfile``: Loading a flag file (and the workspace's ``rollout.yaml``): YAML with line
  numbers, validated key by key into a ``Flag`` (and ``Settings``).
- ``model``: The model of one query change, as validated from its flag file (see ``flagfile``).
- ``runtime``: Live flag state in a running process: loaded once, then pushed by LISTEN/NOTIFY.
- ``sqlscript``: SQL scripts as statements, split and read by PostgreSQL's own parser (pglast):
  what each statement is (transactional or not, what data it destroys, what it reaches beyond
  the database).
- ``state``: Runtime flag state: current stage, kill switch, version; every change audited and
  NOTIFYed.
- ``statements``: SQL read by PostgreSQL's own parser (pglast): how many statements, what kind,
  reaching what.
- ``targeting``: Who gets which path: targets, sticky percent buckets and the pure ``decide``.
- ``workspace``: A workspace: the folder holding ``flags/``, ``rollback/`` and ``reports/``.
"""

__all__ = [
    "determinism",
    "flagfile",
    "model",
    "runtime",
    "sqlscript",
    "state",
    "statements",
    "targeting",
    "workspace",
]
