"""``lossproof store migrate`` for PostgreSQL: the schema migrations (:mod:`lossproof.store.pg_migrations`)
and moving version 3's points into chunks (:func:`move_points`)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from lossproof.store import chunks
from lossproof.store import pg_migrations as mig
from lossproof.store.base import (
    StoreError,
)
from lossproof.store.pg.binary import (
    _read_points,
    copy_chunks,
)
from lossproof.store.pg.common import (
    _ID_SEQ,
    _LOG_BATCH,
    _Conn,
    _one_line,
    describe_dsn,
    log,
    open_connection,
)

MOVE_POINTS = 1_000_000  # version 3 points moved into chunks per transaction (see move_points)


def migrate(dsn: str, schema: str = "lossproof", connect_timeout: float = 10.0) -> tuple[int, int]:
    """Apply pending migrations, then move version 3's points into chunks (:func:`move_points`);
    returns (version before, version after)."""
    conn = open_connection(dsn, connect_timeout)
    try:
        before, after = mig.migrate(conn, schema)
        move_points(conn, schema)
        return before, after
    except StoreError:
        raise
    except psycopg.Error as e:
        raise StoreError(f"migrating PostgreSQL {describe_dsn(dsn)}: {_one_line(e)}") from None
    finally:
        conn.close()


def move_points(conn: _Conn, schema: str, limit: int | None = None) -> int:
    """Version 3 -> 4: move the per-point table ``points`` into chunks; returns the points moved.

    Each transaction takes the migration lock, then moves the first ``limit`` points (in key
    order: (series_id, t)) of the oldest day partition into one raw chunk per series and deletes
    them, so that a crash, kill or error leaves every point in exactly one of the two tables, and
    the next ``store migrate`` goes on from there (concurrent runs take turns). Empty partitions
    are dropped; the last transaction drops ``points``. Progress is logged per transaction.
    Compaction packs the chunks afterwards, like the worker's."""
    limit = limit or MOVE_POINTS
    ident = sql.Identifier(schema)
    moved = 0
    total: int | None = None
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (mig.LOCK_CLASS, mig.LOCK_MIGRATE))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            if not mig.points_pending(conn, schema):
                break
            parts = [
                str(r[0])
                for r in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'points'::regclass ORDER BY c.relname"
                )
            ]
            if total is None and parts:
                row = conn.execute(
                    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i"
                    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'points'::regclass"
                ).fetchone()
                total = int(row[0]) if row else 0
                log.info("store.upgrade_started", schema=schema, from_version=3, to_version=4, points=total)
            cur = conn.cursor()
            n = 0
            name = ""
            for name in parts:
                part = sql.Identifier(name)
                sids, ts, vs = _read_points(
                    cur,
                    sql.SQL("SELECT series_id, t, v FROM {} ORDER BY series_id, t LIMIT {}").format(
                        part, sql.Literal(limit)
                    ),
                )
                if not len(ts):
                    conn.execute(sql.SQL("DROP TABLE {}").format(part))
                    continue
                n = len(ts)
                sids, ts, vs = chunks.sort_dedup(sids, ts, vs)
                row = conn.execute(f"SELECT nextval({_ID_SEQ})").fetchone()
                copy_chunks(cur, sids, ts, vs)
                cur.execute(_LOG_BATCH, (int(row[0]) if row else 0, 0))  # packed by compaction
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE (series_id, t) <= (%s, %s)").format(part),
                    (int(sids[-1]), int(ts[-1])),
                )
                break
            if not n:
                conn.execute("DROP TABLE points")
                if total is not None:
                    log.info("store.upgrade_done", schema=schema, points=moved)
                break
        moved += n
        log.info("store.upgrade_progress", schema=schema, points=moved, of=total, partition=name)
    return moved
