"""Workers starting at about the same moment on a new PostgreSQL schema (found by the two-writer store
bench: the second writer refused to start, "still holds points of version 3 not yet moved into
chunks"). A new store used to be made in two steps, the migrations and then dropping version 3's
empty per-point table: a worker opening the store between the two saw a half-upgraded store. Now the
migrations of a new store leave nothing to move, so the state between two steps is never visible."""

from __future__ import annotations

import psycopg

from lossproof.store import pg_migrations as mig
from lossproof.store.postgres import PostgresStore


def test_a_store_just_migrated_by_another_worker_opens(pg_dsn: str, pg_schema: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert mig.migrate(conn, pg_schema) == (0, mig.LATEST)  # the first worker, one step in
        assert not mig.points_pending(conn, pg_schema)
    PostgresStore(pg_dsn, schema=pg_schema).close()  # the second worker, at that moment
