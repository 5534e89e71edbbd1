"""Online runners: serve the decided path, shadow the other in the background, record.

Its modules, each about one thing:

- ``_admission``: Which served requests get a background job: the flag's sampling limits and the
  runner's shadow budget.
- ``_observe``: Online observations from a served request and its background job: the pair, the
  online A/A check, and what a request that ran alone leaves behind.
- ``_sqlalchemy_aio``: ``AsyncSQLAlchemyRollout``: ``AsyncRollout`` serving from a SQLAlchemy
  ``AsyncEngine``.
- ``_sqlalchemy_common``: What the SQLAlchemy runners share (``rollout.sqlalchemy``): the
  engine's connection arguments, its pool's statistics, a result's shape, errors behind
  SQLAlchemy's.
- ``_sqlalchemy_sync``: ``SQLAlchemyRollout``: ``Rollout`` serving from a SQLAlchemy ``Engine``.
- ``aio``: ``AsyncRollout``: the online runner for asyncio services (psycopg
  ``AsyncConnection``).
- ``core``: The online runner's logic without I/O, shared by ``Rollout`` and ``AsyncRollout``.
- ``otel``: OpenTelemetry metrics of the online runners (extra ``otel``): database conventions,
  rollout.*.
- ``recorder``: Batch observations from running services into ``rollout.observations`` with
  COPY.
- ``runner``: ``Rollout``: the online runner for threaded services (psycopg ``Connection``
  pools).
"""

__all__ = [
    "aio",
    "core",
    "otel",
    "recorder",
    "runner",
]
