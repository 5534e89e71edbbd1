"""The online runners for SQLAlchemy 2 engines on psycopg 3 (extra ``sqlalchemy``).

``SQLAlchemyRollout(engine, workspace=...)`` serves requests from the application's own
engine and returns SQLAlchemy ``Row`` objects; ``AsyncSQLAlchemyRollout`` does the same for
an ``AsyncEngine``. Everything else is the psycopg runner's: they are ``Rollout`` and
``AsyncRollout`` with the served side replaced, so the login check, the decision, the
sampling limits and the shadow budget, the shadow pool (its own connections, reset on
return, no server-side prepared statements), every background execution (one statement by
the extended protocol, SET LOCAL timeouts, read-only reads, always rolled back, the client
deadline), the observations, the metrics and the reports are the same code.

Why wrap rather than re-implement: the safety of the background path lives in psycopg_pool's
configuration and in ``rollout.run.execute``; an SQLAlchemy pool configured to match would be a
second copy to keep in step. So a flag's SQL shadows on the runner's psycopg shadow pool as
it always does, and a ``run()`` callable gets an SQLAlchemy ``Connection`` over a connection
*lent* from that same pool: a shadow engine with ``NullPool`` whose ``creator`` is the pool's
``getconn`` (psycopg_pool's ``close_returns`` brings the connection back when SQLAlchemy
closes it, psycopg_pool's documented SQLAlchemy integration). The callable runs inside the
runner's own transaction on that connection (``force_rollback``): SQLAlchemy's
``commit()`` there is refused by psycopg, and the transaction is rolled back whatever the
callable does.

The served side runs on the application's engine: a flag's SQL goes through SQLAlchemy
(``exec_driver_sql``, so the application's engine events see it) with the runner's cursor
class on the connection for that one statement (extended protocol: one statement), is
committed with the session reset in the same round trip, and the rows come back as
SQLAlchemy ``Row`` objects. A callable gets an engine connection; what it leaves
uncommitted is rolled back, as SQLAlchemy's own ``engine.connect()`` block does.

Layout: ``rollout/online/_sqlalchemy_aio.py`` (``AsyncSQLAlchemyRollout``) is the source,
``rollout/online/_sqlalchemy_sync.py`` (``SQLAlchemyRollout``) is generated from it by
``tools/async_to_sync.py``, and ``rollout/online/_sqlalchemy_common.py`` holds what both use.
"""

from __future__ import annotations

from .online._sqlalchemy_aio import AsyncSQLAlchemyRollout
from .online._sqlalchemy_common import connect_args, database_error, plain
from .online._sqlalchemy_sync import SQLAlchemyRollout

__all__ = ["AsyncSQLAlchemyRollout", "SQLAlchemyRollout", "connect_args", "database_error",
           "plain"]
