"""Rollback scripts with ``COPY … FROM stdin`` data blocks (as pg_dump and psql write them)."""

from __future__ import annotations

import psycopg

from rollout.rollback.verify import apply

SCRIPT = """\
CREATE TABLE restored (id int PRIMARY KEY, note text);
COPY restored (id, note) FROM stdin;
1\tone
2\ttwo; not a statement
\\.
INSERT INTO restored VALUES (3, 'three');
"""


def test_a_copy_data_block_is_applied_with_its_rows(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        done = apply(conn, SCRIPT)
        assert done.ok, done
        rows = conn.execute("SELECT id, note FROM restored ORDER BY id").fetchall()
    assert rows == [(1, "one"), (2, "two; not a statement"), (3, "three")]


def test_a_failing_copy_leaves_nothing_applied(db: str) -> None:
    bad = SCRIPT.replace("2\ttwo", "x\ttwo")  # not an integer: the COPY fails
    with psycopg.connect(db, autocommit=True) as conn:
        done = apply(conn, bad)
        assert not done.ok and done.transactional and done.applied == 0
        assert "statement 2" in (done.position or "")
        gone = conn.execute("SELECT to_regclass('restored')").fetchone()
    assert gone == (None,)
