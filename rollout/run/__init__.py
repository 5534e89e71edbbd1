"""Execution: one path run safely, both paths shadowed and compared, plans, locks, checks.

Its modules, each about one thing:

- ``check``: Database checks of a flag without running it: both paths prepare and return the
  same columns.
- ``checksum``: Very large results: compare counts and order-independent checksums on the
  server, and only where they differ drill down by key ranges (as data-diff does), fetching just
  those rows.
- ``compare``: Result-set comparison under a flag's ``compare`` rules: strict order, multiset,
  or by key.
- ``deadline``: Client-side deadlines: one watchdog thread per process cancels, then cuts off,
  executions whose server stops answering.
- ``execute``: Run one path of a flag once, safely: one statement, a transaction that always
  rolls back.
- ``locks``: Lock waits attributed to executions: a sampler on its own connection watches
  pg_locks.
- ``perturb``: Plan perturbation: each path run again under planner settings that force other
  plans.
- ``plan_shape``: A plan's shape: its node tree without costs, as built from EXPLAIN and written
  as text.
- ``plans``: Plans of both paths: EXPLAIN (ANALYZE, BUFFERS) shapes and costs, and the generic-
  plan check.
- ``prepare``: A query prepared, never run: placeholders as ``$n``, its result columns and
  parameters.
- ``privileges``: Least privilege: who flag SQL runs as, and the refusal of roles that reach
  past the database.
- ``results``: What one execution returned, before anything compares it: columns, type OIDs,
  rows.
- ``shadow``: Offline shadow run: draw parameter sets per tenant, run both paths in ABBA order,
  record.
- ``streaming``: Large result sets: stream both paths from server-side cursors and compare as
  rows arrive.
"""

__all__ = [
    "check",
    "checksum",
    "compare",
    "deadline",
    "execute",
    "locks",
    "perturb",
    "plan_shape",
    "plans",
    "prepare",
    "privileges",
    "results",
    "shadow",
    "streaming",
]
