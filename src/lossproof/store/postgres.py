"""The PostgreSQL store: workers on many machines write into one database (``store.backend = "postgres"``).

Same guarantees as every :class:`~lossproof.store.base.Store` (see ``base.py``), and the same
rules as the embedded store: the ledger transition is :func:`lossproof.store.ledger.advance`.

Writes
    One ``write_batch`` is one READ COMMITTED transaction: take a transaction-scoped advisory lock
    per (tenant, agent) of the batch, in a fixed order; read those agents' ledgers (now nobody
    else can change them until we commit); decide which reports are new; turn their points and the
    batch's samples into columns (:class:`~lossproof.store.columns.Columns`), series ids resolved
    in bulk; drop the points already stored (the writer's stored times, see store/pg/write.py;
    the stored points of the few series whose new points do not all come after them); insert one
    part (all the batch's series in one row); write ledger rows, agent summaries, dead
    letters, log gaps and metric metadata (upserted, the last write winning); commit. So with any
    number of writers in any number of processes and machines, a report is stored once: the second
    writer of the same seq waits on the lock, then sees it stored and skips it. Rows are inserted in
    key order everywhere, so writers do not deadlock on each other's rows; a deadlock or
    serialization failure anyway is retried as a fresh transaction.

Layout
    ``parts`` holds one row per batch (see chunks.py, store/pg/parts.py): every series of the batch,
    a directory first, so a reader fetches one series' slices alone. :meth:`PostgresStore.compact`
    turns the oldest parts into ``chunks``, one row per series: ``(id, series_id, t_min, t_max, n,
    data)``, found through the index (series_id, t_max, t_min), and merges a series' chunks into one
    packed chunk per two-hour window. A sample is visible once per (series, t): writers drop what is
    stored (above), and readers merge a series' chunks and part slices keeping for each t the lowest
    chunk id, then the lowest part id (parts come after every chunk). Two writers of *samples* (no
    agent seq, so no lock) of the same series and t racing may both insert it; readers still show
    it once (the lower one, which is not necessarily the first committed).

Series ids
    ``series`` is unique on (tenant, metric, SHA-256 of the canonical labels JSON). Ids unknown to
    this process are resolved in bulk: select, ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (in
    key order), select again for the ones a concurrent writer inserted meanwhile. Ids are cached
    only after the transaction that used them committed.

Retention
    Every few minutes a writer (and ``lossproof store maintain``) deletes the chunks and parts whose newest
    point is older than ``retention_days`` (0: keep everything), a bounded transaction at a time.
    Any int64 time is stored; nothing needs creating ahead of time.

Failures
    Connection errors, server shutdown or restart, timeouts, lock or resource trouble, read-only
    servers and missing privileges raise :class:`StoreUnavailable` (nothing was written: retry
    the batch). Data the database refuses (classes 22, 23, 54: bad values, limits) raise
    :class:`StoreError`; values the driver cannot even encode raise the driver's exception. The
    pool replaces broken connections and reconnects in the background after an outage.

Schema
    Versioned migrations in :mod:`lossproof.store.pg_migrations`, applied by ``lossproof store
    migrate``. A writer opening an empty database (the schema does not exist or holds nothing)
    installs the current version itself, like the embedded store does; a database at an older
    version is refused until it is migrated, one at a newer version always. From version 3 (one
    row per point in ``points``, partitioned by day) ``store migrate`` also moves the points into
    chunks (:func:`move_points`: resumable, a bounded transaction at a time); until that is done a
    worker or reader refuses the schema as it refuses an older version, with the same advice, and
    ``store migrate`` run again goes on where it stopped.
"""

from __future__ import annotations

from lossproof.store.base import (
    StoreError,
    WriteBatch,
    decode_points,
)
from lossproof.store.pg.binary import (
    Int8Array,
    chunk_rows,
)
from lossproof.store.pg.common import (
    DAY_MS,
    Retention,
    connect_error,
    describe_dsn,
    open_connection,
    pg_text,
)
from lossproof.store.pg.maintain import PgMaintenance
from lossproof.store.pg.migrate import migrate, move_points
from lossproof.store.pg.read import PgReader
from lossproof.store.pg.write import PgWriter

__all__ = [
    "DAY_MS",
    "Int8Array",
    "PostgresStore",
    "Retention",
    "chunk_rows",
    "connect_error",
    "describe_dsn",
    "migrate",
    "move_points",
    "open_connection",
    "pg_text",
]


class PostgresStore(PgWriter, PgMaintenance, PgReader):
    """See the module docstring. One instance per process; writes from one thread at a time,
    reads from any thread (each read takes its own pooled connection).

    Built from :mod:`lossproof.store.pg`: connections and schema (:class:`~.pg.core.PgCore`), the
    write path (:class:`~.pg.write.PgWriter`), compaction and retention
    (:class:`~.pg.maintain.PgMaintenance`), the read path (:class:`~.pg.read.PgReader`)."""

    def apply_conflict(self, tenant: str, conflict_id: int, now_ms: int) -> int:
        if self.readonly:
            raise StoreError("store opened readonly")
        rows = self._fetch(
            "SELECT points FROM conflicts WHERE tenant = %s AND id = %s", (tenant, conflict_id)
        )
        if not rows:
            raise KeyError(conflict_id)
        points = decode_points(bytes(rows[0][0]))
        written = self.write_batch(
            WriteBatch(samples=[(tenant, p) for p in points], now_ms=now_ms)
        ).points_written
        with self._conn() as conn, conn.transaction():
            conn.execute(
                "UPDATE conflicts SET applied_ms = %s WHERE id = %s AND applied_ms = 0", (now_ms, conflict_id)
            )
        return written
