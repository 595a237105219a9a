"""The embedded store: one SQLite file in WAL mode, no service to run.

Durability
    WAL with ``synchronous=FULL``: a ``write_batch`` that returned has its WAL frames fsync'd, so it
    survives a power loss and the worker may commit its log position right after. One fsync per
    batch (plus one per checkpoint).

Processes
    One writer process (the worker) opens ``SqliteStore(path)``; any number of reader processes (the
    query / ingest API) open ``SqliteStore(path, readonly=True)``. WAL readers see every committed
    transaction, read a consistent snapshot per call and never block the writer (nor does the writer
    block them). Several writers are safe too (``BEGIN IMMEDIATE`` serializes them; the ledger is
    re-read inside each transaction) but they queue on the write lock. A busy database waits up to
    ``busy_timeout_ms`` before raising. Each read method is one short read transaction: a reader
    that held one open for long would keep checkpoints from recycling the WAL, which then grows.

Layout (schema version 3)
    ``series`` maps (tenant, metric, canonical labels JSON) to an integer id. Points live in
    ``chunks``: one row per series per batch, holding that series' points of the batch as columns
    (see chunks.py), with its time range and count; rows are appended in id order (the rowid), so a
    batch writes few pages, and found through the index (series_id, t_max, t_min). A sample is
    stored once per (series, t): the writer drops points already stored before it writes (one index
    seek per series for points newer than what is stored), readers keep the lowest chunk id for a t.
    Compaction (:meth:`SqliteStore.compact`) merges a series' chunks into one packed chunk per
    two-hour window, in the background. ``ledger`` holds one
    row per stored / missing / lost range per agent, ``agents`` a summary row per agent. ``metadata``
    holds one row per (tenant, metric): type, help, unit, the last write winning.
    The per-agent tables (``agents``, ``ledger``) are keyed by (tenant, agent, incarnation);
    ``reports`` holds each stored report's content digest, ``conflicts`` the reports that reused a
    stored seq with other content, kept whole. Older files are upgraded on open: version 1 gains the
    incarnation keys; version 2's per-point table is moved into chunks a few million points per
    transaction (resumable: a transaction moves points and deletes them together), with progress
    logged.
"""

from __future__ import annotations

from functools import partial

from lossproof.store.base import (
    decode_points,
)
from lossproof.store.columns import Columns
from lossproof.store.embedded.common import (
    APPLICATION_ID,
    READABLE_FROM,
    SCHEMA_VERSION,
    _SeriesKey,
)
from lossproof.store.embedded.compact import SqliteCompaction
from lossproof.store.embedded.read import SqliteReader
from lossproof.store.embedded.write import SqliteWriter

__all__ = ["APPLICATION_ID", "READABLE_FROM", "SCHEMA_VERSION", "SqliteStore"]


class SqliteStore(SqliteWriter, SqliteCompaction, SqliteReader):
    """See the module docstring. One instance per process; use it from one thread at a time.

    Built from :mod:`lossproof.store.embedded`: connection and schema
    (:class:`~.embedded.core.SqliteCore`), the write path (:class:`~.embedded.write.SqliteWriter`),
    compaction (:class:`~.embedded.compact.SqliteCompaction`), the read path
    (:class:`~.embedded.read.SqliteReader`)."""

    def apply_conflict(self, tenant: str, conflict_id: int, now_ms: int) -> int:
        pending: dict[_SeriesKey, int] = {}
        with self._write(pending, "store.apply_conflict_before_commit"):
            row = self._con.execute(
                "SELECT points FROM conflicts WHERE tenant = ? AND id = ?", (tenant, conflict_id)
            ).fetchone()
            if row is None:
                raise KeyError(conflict_id)
            cols = Columns()
            cols.add(tenant, decode_points(row[0]), self._series, partial(self._resolve, pending))
            written = self._write_points(cols, now_ms)
            self._con.execute(
                "UPDATE conflicts SET applied_ms = ? WHERE id = ? AND applied_ms = 0", (now_ms, conflict_id)
            )
        return int(written)
