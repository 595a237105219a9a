"""A worker's commit must be flushed before its log offsets move past the batch, whatever the
server, role or connection string says about ``synchronous_commit``."""

from __future__ import annotations

from psycopg.conninfo import make_conninfo

from lossproof.store.postgres import PostgresStore


def test_synchronous_commit_off_is_raised_for_the_writer(pg_dsn: str, pg_schema: str) -> None:
    dsn = make_conninfo(pg_dsn, options="-c synchronous_commit=off")
    for readonly, expected in ((False, "on"), (True, "off")):
        store = PostgresStore(dsn, schema=pg_schema, readonly=readonly, pool_size=1)
        try:
            with store._pool_for_use().connection() as conn:
                row = conn.execute("SHOW synchronous_commit").fetchone()
            # readers write nothing, so their setting is left as configured
            assert row is not None and row[0] == expected, (readonly, row)
        finally:
            store.close()


def test_local_and_stronger_levels_are_left_alone(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(make_conninfo(pg_dsn, options="-c synchronous_commit=local"), schema=pg_schema)
    try:
        with store._pool_for_use().connection() as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
        assert row is not None and row[0] == "local"
    finally:
        store.close()
