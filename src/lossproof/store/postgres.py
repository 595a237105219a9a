"""The PostgreSQL store: workers on many machines write into one database (``store.backend = "postgres"``).

Same guarantees as every :class:`~lossproof.store.base.Store` (see ``base.py``), and the same
rules as the embedded store: the ledger transition is :func:`lossproof.store.ledger.advance`.

Writes
    One ``write_batch`` is one READ COMMITTED transaction: take a transaction-scoped advisory lock
    per (tenant, agent) of the batch, in a fixed order; read those agents' ledgers (now nobody
    else can change them until we commit); decide which reports are new; turn their points and the
    batch's samples into columns (:class:`~lossproof.store.columns.Columns`), series ids resolved
    in bulk; drop the points already stored (one statement: the newest t stored of every series of
    the batch, one index seek each; the chunks of the few series whose new points do not all come
    after it); COPY (binary) one chunk row per series; write ledger rows, agent summaries, dead
    letters, log gaps and metric metadata (upserted, the last write winning); commit. So with any
    number of writers in any number of processes and machines, a report is stored once: the second
    writer of the same seq waits on the lock, then sees it stored and skips it. Rows are inserted in
    key order everywhere, so writers do not deadlock on each other's rows; a deadlock or
    serialization failure anyway is retried as a fresh transaction.

Layout
    ``chunks`` holds one row per series per batch (see chunks.py): ``(id, series_id, t_min, t_max,
    n, data)``, found through the index (series_id, t_max, t_min). A sample is visible once per
    (series, t): writers drop what is stored (above), and readers merge a series' chunks keeping
    for each t the lowest chunk id. Two writers of *samples* (no agent seq, so no lock) of the same
    series and t racing may both insert it; readers still show it once (the chunk with the lower
    id, which is not necessarily the first committed one). :meth:`PostgresStore.compact` merges a
    series' chunks into one packed chunk per two-hour window.

Series ids
    ``series`` is unique on (tenant, metric, SHA-256 of the canonical labels JSON). Ids unknown to
    this process are resolved in bulk: select, ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (in
    key order), select again for the ones a concurrent writer inserted meanwhile. Ids are cached
    only after the transaction that used them committed.

Retention
    Every few minutes a writer (and ``lossproof store maintain``) deletes the chunks whose newest
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

import dataclasses
import hashlib
import itertools
import math
import operator
import re
import struct
import threading
import time
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format

from lossproof.faults import crash_point
from lossproof.log.base import LogGap
from lossproof.obs.logging import get
from lossproof.store import chunks
from lossproof.store import ledger as lg
from lossproof.store import pg_migrations as mig
from lossproof.store.base import (
    COMPACT_MIN_CHUNKS,
    COMPACT_WINDOW_MS,
    SERIES_CACHE_MAX,
    AgentSummary,
    CompactResult,
    Conflict,
    Ledger,
    Matcher,
    MetricMetadata,
    SeqRange,
    SeriesArrays,
    SeriesCache,
    Store,
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
    decode_points,
    labels_text,
    latest_metadata,
    matches_all,
)
from lossproof.store.columns import Columns, drop_stored
from lossproof.store.plan import Prior, Summary, digests_wanted, plan_batch

log = get(__name__)

DAY_MS = mig.DAY_MS
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1
MAINTENANCE_EVERY_S = 300.0
RETENTION_CHUNKS = 50_000  # chunks deleted by retention per transaction
MOVE_POINTS = 1_000_000  # version 3 points moved into chunks per transaction (see move_points)
TX_ATTEMPTS = 5  # deadlock / serialization failure: retried as a fresh transaction this many times

_LABELS_DECODER = msgspec.json.Decoder(dict[str, str])


def pg_text(s: str) -> str:
    """PostgreSQL text cannot hold NUL (SQLite can): it is stored as U+FFFD rather than refused, as a
    refused record would be acknowledged data never stored. Only new series and metadata pay."""
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


_SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items()) in the caller's label order
# a series new to this process: (key, tenant, metric, labels)
_Unresolved = tuple[_SeriesKey, str, str, dict[str, str]]
_LedgerRow = lg.LedgerRow
_AgentKey = tuple[str, str, str]  # (tenant, agent, incarnation)
_AGENT_COLUMNS = (
    "tenant, agent, incarnation, max_seq, stored_reports, missing_reports, lost_reports,"
    " last_stored_ms, delayed_reports, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq, first_seen_ms, conflict_reports"
)
_SUMMARY = (
    "a.last_stored_ms, a.spool_pending_reports, a.spool_pending_bytes, a.spool_oldest_ms,"
    " a.spool_first_pending, a.spool_last_seq, a.spool_reported_ms, a.first_seq, a.first_seen_ms,"
    " a.conflict_reports"
)
_Conn = psycopg.Connection[Any]

# SQLSTATE classes that mean "the data itself is refused": data exceptions, integrity
# constraint violations, program limits (e.g. an index row too large). Anything else from the
# server (connection, shutdown, resources, locks, privileges, read-only standby, ...) is transient.
_DATA_CLASSES = ("22", "23", "54")

_COPY_CHUNKS = "COPY chunks (series_id, t_min, t_max, n, data) FROM STDIN (FORMAT BINARY)"
_ID_SEQ = "pg_get_serial_sequence('chunks', 'id')"
# Of the series ?1[i] whose new points start at ?2[i]: those with a chunk ending at or after it,
# with that first t (one index seek each: in the common case it finds no entry, so no heap visit
# either; measured 25% cheaper than max(t_max) per series), and in the common case no row comes back.
# And a row (NULL, id) with an id taken from the chunks' sequence: the batch's chunks get higher
# ones (recorded in compact_log).
_NEWEST = (
    f"SELECT NULL::bigint, nextval({_ID_SEQ}) UNION ALL"
    " SELECT q.s, q.first FROM unnest(%b, %b) AS q(s, first)"
    " WHERE EXISTS (SELECT FROM chunks c WHERE c.series_id = q.s AND c.t_max >= q.first)"
)
_LOG_BATCH = f"INSERT INTO compact_log VALUES (%s, currval({_ID_SEQ}), %s)"
_COMPACT_BATCHES = 16  # compact_log rows (batches) worked off per round of compaction
_PACK_AGE_MS = 300_000  # a batch's chunks are packed at the latest this long after it was written
# The chunks to pack of series s[i] between a[i] and b[i] (end excluded): an index range each.
_PACK_READ = (
    "SELECT c.id, c.series_id, c.data FROM unnest(%b, %b, %b) AS q(s, a, b)"
    " JOIN chunks c ON c.series_id = q.s AND c.t_max >= q.a AND c.t_min < q.b"
)
_PACK_INSERT = (
    "INSERT INTO chunks (id, series_id, t_min, t_max, n, data) OVERRIDING SYSTEM VALUE"
    f" SELECT coalesce(x.i, nextval({_ID_SEQ})), x.s, x.a, x.b, x.n, x.d"
    " FROM unnest(%s::bigint[], %b, %b, %b, %s::integer[], %s::bytea[]) AS x(i, s, a, b, n, d)"
)
# The chunks of series s[i] that may hold points in [a[i], b[i]]: an index range per series.
_CHUNKS_IN = (
    "SELECT c.series_id, c.id, c.data FROM unnest(%b, %b, %b) AS q(s, a, b)"
    " JOIN chunks c ON c.series_id = q.s AND c.t_max >= q.a AND c.t_min <= q.b"
)
# The last write wins; an unchanged row is not rewritten (senders repeat their metadata every minute).
_UPSERT_METADATA = (
    "INSERT INTO metadata VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant, metric) DO UPDATE"
    " SET type = excluded.type, help = excluded.help, unit = excluded.unit"
    " WHERE (metadata.type, metadata.help, metadata.unit)"
    " IS DISTINCT FROM (excluded.type, excluded.help, excluded.unit)"
)


class Retention(NamedTuple):
    """What :meth:`PostgresStore.maintain` deleted: the chunks whose newest point was before
    ``before_ms`` (None: retention is off)."""

    before_ms: int | None
    chunks: int
    points: int


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN, without its password (for messages)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "?"
    user = str(d.get("user", ""))
    host = d.get("host") or d.get("hostaddr") or "localhost"
    port = d.get("port") or "5432"
    return f"{user}{'@' if user else ''}{host}:{port}/{d.get('dbname', '')}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts)


def _is_data_error(e: psycopg.Error) -> bool:
    if e.sqlstate is None:  # raised by the driver itself: a value it cannot send (e.g. a NUL in text)
        return isinstance(e, psycopg.DataError)
    return e.sqlstate[:2] in _DATA_CLASSES


_LIBPQ_NOISE = re.compile(
    r"connection (?:failed|is bad): |connection to server (?:at \"[^\"]*\"(?: \([^)]*\))?, port \d+"
    r"|on socket \"[^\"]*\") failed: |FATAL:\s+"
)


def connect_error(dsn: str, e: BaseException) -> StoreError:
    """One line for a failure to connect at start-up (bad DSN, password, database, server down)."""
    if isinstance(e, psycopg.ProgrammingError) and "connection info" in str(e).lower():
        return StoreError(f"store.dsn is not a valid PostgreSQL connection string: {_one_line(e)}")
    why = _LIBPQ_NOISE.sub("", _one_line(e))
    return StoreError(f"cannot connect to PostgreSQL {describe_dsn(dsn)}: {why}")


def open_connection(dsn: str, connect_timeout: float) -> _Conn:
    """An autocommit connection for start-up checks and ``store migrate``; errors as :class:`StoreError`."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, math.ceil(connect_timeout)),
            application_name="lossproof",
        )
    except psycopg.Error as e:
        raise connect_error(dsn, e) from None


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


# The head of a chunk row in binary COPY: field count, then each field's length and value
# (big-endian), up to the data's first byte, its kind (RAW); then the timestamps and the values.
_CHUNK_ROW_HEAD = np.dtype(
    [
        ("nf", ">i2"),
        ("l1", ">i4"),
        ("s", ">i8"),
        ("l2", ">i4"),
        ("a", ">i8"),
        ("l3", ">i4"),
        ("b", ">i8"),
        ("l4", ">i4"),
        ("n", ">i4"),
        ("l5", ">i4"),
        ("kind", "u1"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00"
_COPY_TRAILER = b"\xff\xff"


def chunk_rows(sids: chunks.I64, ts: chunks.I64, vs: chunks.F64) -> bytes:
    """The binary COPY data of one RAW chunk row per series, for columns sorted by (series, t)
    without duplicates: the rows of :func:`chunks.encode_batch`, built with numpy, with no Python
    object per row (a batch of one point per series has as many rows as points). Rows of equal
    length are built together, so they come grouped by length: that order does not matter, a batch
    has one chunk per series."""
    starts, ends = chunks.series_bounds(sids)
    n = ends - starts
    head = np.empty(len(starts), dtype=_CHUNK_ROW_HEAD)
    head["nf"] = 5
    head["l1"] = head["l2"] = head["l3"] = 8
    head["l4"] = 4
    head["s"] = sids[starts]
    head["a"] = ts[starts]
    head["b"] = ts[ends - 1]
    head["n"] = n
    head["l5"] = 1 + 16 * n
    head["kind"] = chunks.RAW
    tl = ts.astype("<i8", copy=False)
    vl = vs.astype("<f8", copy=False)
    parts = [_COPY_HEADER, bytes(8)]  # flags, header extension length
    order = np.argsort(n, kind="stable")
    sizes = n[order]
    cuts = np.flatnonzero(np.diff(sizes)) + 1
    for rows in np.split(order, cuts):
        k = int(n[rows[0]]) if len(rows) else 0
        if not k:
            continue
        idx = starts[rows][:, None] + np.arange(k)
        block = np.hstack(
            (
                head[rows].view(np.uint8).reshape(len(rows), _CHUNK_ROW_HEAD.itemsize),
                tl[idx].view(np.uint8).reshape(len(rows), 8 * k),
                vl[idx].view(np.uint8).reshape(len(rows), 8 * k),
            )
        )
        parts.append(block.tobytes())
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def copy_chunks(cur: psycopg.Cursor[Any], sids: chunks.I64, ts: chunks.I64, vs: chunks.F64) -> None:
    """Insert one RAW chunk per series of the columns (sorted by (series, t), no duplicates)."""
    with cur.copy(_COPY_CHUNKS) as copy:
        copy.write(chunk_rows(sids, ts, vs))


_INT8_OID = 20


class Int8Array:
    """A bigint[] query parameter (``%b``) in PostgreSQL's binary array format, built with numpy:
    a list of ints would be dumped one element at a time in Python."""

    __slots__ = ("data",)

    def __init__(self, values: npt.ArrayLike) -> None:
        a = np.asarray(values, dtype=np.int64)
        if not len(a):
            self.data = struct.pack(">iii", 0, 0, _INT8_OID)
            return
        body = np.empty(len(a), dtype=[("len", ">i4"), ("v", ">i8")])
        body["len"] = 8
        body["v"] = a
        self.data = struct.pack(">iiiii", 1, 0, _INT8_OID, len(a), 1) + body.tobytes()


class _Int8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1016  # bigint[]

    def dump(self, obj: Any) -> bytes:
        return bytes(obj.data)


psycopg.adapters.register_dumper(Int8Array, _Int8ArrayDumper)


# A row of ``COPY (SELECT series_id, t, v ...) TO STDOUT (FORMAT BINARY)``: field count, then
# each field's length and value, big-endian (none is NULL: the columns are NOT NULL).
_POINT_ROW = np.dtype(
    [("nf", ">i2"), ("l1", ">i4"), ("s", ">i8"), ("l2", ">i4"), ("t", ">i8"), ("l3", ">i4"), ("v", ">f8")]
)


def _copy_out(cur: psycopg.Cursor[Any], query: sql.Composable, row: np.dtype[Any]) -> npt.NDArray[Any]:
    """The rows of a query whose columns are all fixed-size and NOT NULL, read as binary COPY
    straight into a numpy array of ``row`` (field count and lengths included, big-endian)."""
    with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as copy:
        data = b"".join(bytes(block) for block in copy)
    if not data.startswith(_COPY_HEADER):
        raise StoreError("unexpected binary COPY output")
    head = len(_COPY_HEADER) + 4
    head += 4 + int.from_bytes(data[head : head + 4], "big")  # header extension
    count = (len(data) - head - 2) // row.itemsize
    return np.frombuffer(data, dtype=row, count=count, offset=head)


def _read_points(
    cur: psycopg.Cursor[Any], query: sql.Composable
) -> tuple[chunks.I64, chunks.I64, chunks.F64]:
    """(series ids, times, values) of a query over ``points``, read as binary COPY into numpy."""
    rows = _copy_out(cur, query, _POINT_ROW)
    return rows["s"].astype(np.int64), rows["t"].astype(np.int64), rows["v"].astype(np.float64)


# (id, series_id, t_min, t_max) of a chunk, as binary COPY sends it
_CHUNK_META = np.dtype(
    [("nf", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"), ("s", ">i8"), ("l3", ">i4"), ("a", ">i8"),
     ("l4", ">i4"), ("b", ">i8")]
)  # fmt: skip


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


class PostgresStore(Store):
    """See the module docstring. One instance per process; writes from one thread at a time,
    reads from any thread (each read takes its own pooled connection)."""

    def __init__(
        self,
        dsn: str,
        *,
        readonly: bool = False,
        schema: str = "lossproof",
        pool_size: int = 4,
        retention_days: float = 0.0,
        connect_timeout: float = 10.0,
        pool_timeout: float = 3.0,
    ) -> None:
        self.dsn = dsn
        self.readonly = readonly
        self.schema = schema
        self.retention_days = retention_days
        self.pool_timeout = pool_timeout
        self._where = describe_dsn(dsn)
        self._series = SeriesCache()
        self._labels: dict[int, dict[str, str]] = {}
        self._pack_queue: list[tuple[int, int, int]] = []  # compaction: (series, first, last window)
        self._pack_log: list[int] = []  # compaction: the compact_log rows of the queued round
        self._lock = threading.Lock()  # one write at a time
        self._next_maintenance = 0.0

        conn = open_connection(dsn, connect_timeout)
        try:
            self._check_schema(conn)
            if not readonly:
                self._warn_if_not_durable(conn)
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL {self._where}: {_one_line(e)}") from None
        finally:
            conn.close()

        self._pool_size = max(1, pool_size)
        self._connect_timeout = max(1, math.ceil(connect_timeout))
        self._pool_lock = threading.Lock()
        self._down_until = 0.0  # while the server is unreachable: fail fast until then
        self._down_msg = ""
        self._pool = self._new_pool()

    # --- connection and schema -----------------------------------------------------------------

    def _configure(self, conn: _Conn) -> None:
        conn.autocommit = True
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        else:
            # A commit must be on disk before the worker commits its log offsets past the batch:
            # with synchronous_commit=off (a common server, role or PGOPTIONS tweak) a power loss
            # drops recent commits whose log records may already be gone. "local" and the
            # remote_* levels all flush locally, so only "off" is raised.
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row[0] == "off":
                conn.execute("SET synchronous_commit = on")
        conn.autocommit = False

    def _warn_if_not_durable(self, conn: _Conn) -> None:
        row = conn.execute("SHOW fsync").fetchone()
        if row is not None and row[0] == "off":
            log.error(
                "store.server_fsync_off",
                db=self._where,
                why="the server runs with fsync=off: a power loss can drop committed batches",
            )

    def _check_schema(self, conn: _Conn) -> None:
        version = mig.schema_state(conn, self.schema)
        if version is None and not self.readonly:
            before, after = mig.migrate(conn, self.schema)
            move_points(conn, self.schema)  # nothing to move in an empty database: drops the empty table
            if before == 0:
                log.info("store.schema_installed", schema=self.schema, version=after, db=self._where)
            version = after
        if version is None:
            raise StoreSchemaError(
                f'PostgreSQL {self._where}: schema "{self.schema}" is not a lossproof store yet;'
                " run `lossproof store migrate` (or start a worker)"
            )
        if version < mig.LATEST:
            raise StoreSchemaError(
                f'PostgreSQL {self._where}: schema "{self.schema}" is at version {version}, this'
                f" lossproof needs {mig.LATEST}; run `lossproof store migrate`"
            )
        if mig.points_pending(conn, self.schema):
            raise StoreSchemaError(
                f'PostgreSQL {self._where}: schema "{self.schema}" still holds points of version 3 not'
                " yet moved into chunks; run `lossproof store migrate` (it goes on where it stopped)"
            )

    def _new_pool(self) -> psycopg_pool.ConnectionPool[_Conn]:
        pool: psycopg_pool.ConnectionPool[_Conn] = psycopg_pool.ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs={
                "connect_timeout": self._connect_timeout,
                "application_name": "lossproof-reader" if self.readonly else "lossproof-writer",
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
            configure=self._configure,
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=self.pool_timeout,
            reconnect_timeout=3600.0,
            name=f"lossproof-{'r' if self.readonly else 'w'}",
            open=False,
        )
        pool.open(wait=False)
        return pool

    def _pool_for_use(self) -> psycopg_pool.ConnectionPool[_Conn]:
        """The pool, unless the server was found unreachable: then fail fast for a second, and
        afterwards probe it with one direct connection; once it answers again, start a fresh pool
        (the old one's reconnection attempts back off exponentially: after a minute of outage they
        come a minute apart)."""
        with self._pool_lock:
            if not self._down_until:
                return self._pool
            if time.monotonic() < self._down_until:
                raise StoreUnavailable(self._down_msg)
            try:
                probe = psycopg.connect(self.dsn, connect_timeout=self._connect_timeout)
            except psycopg.Error as e:
                why = _LIBPQ_NOISE.sub("", _one_line(e))
                self._mark_down(f"PostgreSQL {self._where}: unreachable: {why}")
                raise StoreUnavailable(self._down_msg) from e
            probe.close()
            old, self._pool = self._pool, self._new_pool()
            self._down_until = 0.0
            log.info("store.reconnected", db=self._where)
        old.close(timeout=0)
        return self._pool

    def _mark_down(self, msg: str) -> None:
        self._down_until = time.monotonic() + 1.0
        self._down_msg = msg

    @contextmanager
    def _conn(self) -> Iterator[_Conn]:
        """A pooled connection; driver failures outside the caller's own handling become
        :class:`StoreUnavailable` / :class:`StoreError`."""
        pool = self._pool_for_use()
        try:
            with pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as e:
            with self._pool_lock:
                self._mark_down(f"PostgreSQL {self._where}: no connection: {_one_line(e)}")
            raise StoreUnavailable(self._down_msg) from e
        except psycopg_pool.PoolClosed as e:
            if pool is not self._pool:  # replaced meanwhile by a reconnection: retry
                raise StoreUnavailable(f"PostgreSQL {self._where}: reconnected, retry") from e
            raise StoreError("store is closed") from e
        except psycopg.Error as e:
            raise self._translate(e) from e

    def _translate(self, e: psycopg.Error) -> StoreError:
        msg = f"PostgreSQL {self._where}: {_one_line(e)}"
        if _is_data_error(e):
            return StoreError(msg)
        return StoreUnavailable(msg)

    def close(self) -> None:
        self._pool.close()

    # --- writes --------------------------------------------------------------------------------

    def write_batch(self, batch: WriteBatch) -> WriteResult:
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            for attempt in range(1, TX_ATTEMPTS + 1):
                pending: dict[_SeriesKey, int] = {}
                with self._conn() as conn:
                    try:
                        with conn.transaction():
                            result = self._apply(conn, batch, pending)
                            crash_point("store.before_commit")  # chaos scenario 2: kill -9 in the transaction
                    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as e:
                        if attempt == TX_ATTEMPTS:
                            raise
                        log.warning("store.tx_retry", error=_one_line(e), attempt=attempt)
                        continue
                # Only ids of committed series may be cached.
                self._series.add_committed(pending)
                self._maybe_maintain()
                return result
        raise AssertionError("unreachable")

    def _apply(self, conn: _Conn, batch: WriteBatch, pending: dict[_SeriesKey, int]) -> WriteResult:
        now = batch.now_ms
        work = lg.group_batch(batch)
        cur = conn.cursor()
        plan = plan_batch(work, self._prior(cur, work), now)

        cols = Columns()
        unresolved: list[_Unresolved] = []
        resolve = partial(self._resolve, {}, unresolved)
        for (tenant, _, _), r, _ in plan.reports:
            cols.add(tenant, r.points, self._series, resolve)
        conflict_counts: dict[_AgentKey, int] = {}
        if plan.conflicts:
            conflict_rows = sorted(plan.conflict_rows(), key=lambda r: r[:5])
            cur.executemany(
                "INSERT INTO conflicts (tenant, agent, incarnation, seq, digest, points, n_points,"
                " detected_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                conflict_rows,
            )
            hit = sorted({u.key for u in plan.agents if u.recount_conflicts})
            cur.execute(
                "SELECT c.tenant, c.agent, c.incarnation, count(*) FROM conflicts c"
                " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, agent, incarnation)"
                " USING (tenant, agent, incarnation) GROUP BY 1, 2, 3",
                ([k[0] for k in hit], [k[1] for k in hit], [k[2] for k in hit]),
            )
            conflict_counts = {(t, a, i): int(n) for t, a, i, n in cur.fetchall()}
        if plan.reports:
            digest_rows = sorted(plan.report_rows(), key=lambda r: r[:4])
            cur.executemany(
                "INSERT INTO reports VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", digest_rows
            )

        # key order: writers do not deadlock on each other's rows
        updates = sorted(plan.agents, key=lambda u: u.key)
        gone = [(*u.key, kind, first) for u in updates for kind, first in u.gone]
        added = [(*u.key, *r) for u in updates for r in u.added]
        agent_rows = [
            u.row_with(conflict_counts[u.key]) if u.key in conflict_counts else u.row for u in updates
        ]
        for tenant, group in itertools.groupby(batch.samples, key=operator.itemgetter(0)):
            cols.add(tenant, (p for _, p in group), self._series, resolve)
        for tenant, runs in itertools.groupby(batch.series, key=operator.itemgetter(0)):
            cols.add_series(tenant, (x for _, x in runs), self._series, resolve)
        if unresolved:
            self._resolve_series(cur, unresolved, pending)
        written = self._write_points(cur, cols, [pending[u[0]] for u in unresolved], now)

        if gone:
            cur.executemany(
                "DELETE FROM ledger WHERE tenant = %s AND agent = %s AND incarnation = %s AND kind = %s"
                " AND first = %s",
                gone,
            )
        if added:
            cur.executemany(
                "INSERT INTO ledger (tenant, agent, incarnation, kind, first, last, since_ms, reason)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                added,
            )
        if agent_rows:
            cur.executemany(
                f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES ({', '.join(['%s'] * 18)})"
                " ON CONFLICT (tenant, agent, incarnation) DO UPDATE SET max_seq = excluded.max_seq,"
                " stored_reports = excluded.stored_reports, missing_reports = excluded.missing_reports,"
                " lost_reports = excluded.lost_reports, last_stored_ms = excluded.last_stored_ms,"
                " delayed_reports = excluded.delayed_reports,"
                " spool_pending_reports = excluded.spool_pending_reports,"
                " spool_pending_bytes = excluded.spool_pending_bytes,"
                " spool_oldest_ms = excluded.spool_oldest_ms,"
                " spool_first_pending = excluded.spool_first_pending,"
                " spool_last_seq = excluded.spool_last_seq, spool_reported_ms = excluded.spool_reported_ms,"
                " first_seq = excluded.first_seq, first_seen_ms = excluded.first_seen_ms,"
                " conflict_reports = excluded.conflict_reports",
                agent_rows,
            )
        if batch.dead_letters:
            cur.executemany(
                "INSERT INTO dead_letters (partition, log_offset, tenant, reason, payload, at_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(d.partition, d.offset, d.tenant, d.reason, d.payload, now) for d in batch.dead_letters],
            )
        if batch.gaps:
            cur.executemany(
                "INSERT INTO log_gaps VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(g.partition, g.first, g.last, g.reason, g.detected_ms) for g in batch.gaps],
            )
        if batch.metadata:
            # in key order, like every other row (writers do not deadlock on each other's)
            meta = sorted(latest_metadata(batch.metadata), key=lambda m: (m.tenant, m.metric))
            cur.executemany(
                _UPSERT_METADATA,
                [
                    (m.tenant, pg_text(m.metric), pg_text(m.type), pg_text(m.help), pg_text(m.unit))
                    for m in meta
                ],
            )
        return WriteResult(written, plan.stored, plan.duplicates, plan.conflicted)

    def _prior(self, cur: psycopg.Cursor[Any], work: dict[_AgentKey, lg.AgentWork]) -> Prior:
        """What :func:`plan_batch` needs, in bulk for all agents of the batch, under their locks: the
        summary and ledger rows of the batch's incarnations; of the other incarnations, with seqs
        still delayed, of an agent id that gets a new one; the stored digests of the seqs the batch
        repeats."""
        prior = Prior()
        keys = list(work)
        if not keys:
            return prior
        # One lock per agent id (all its incarnations: a new one changes the others' ledgers),
        # always taken in the same order: writers of disjoint agents run in parallel, writers
        # of the same agent one after the other.
        locks = sorted({_lock_key(self.schema, t, a) for t, a, _ in keys})
        cur.execute(
            "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(k, i)",
            (locks,),
        )
        self._read_agents(cur, keys, prior)
        new_keys = [k for k in keys if k not in prior.agents]
        if new_keys:
            # Other incarnations of agent ids that have a new one, with seqs still delayed.
            cur.execute(
                "SELECT a.tenant, a.agent, a.incarnation FROM agents a"
                " JOIN unnest(%s::text[], %s::text[]) AS k(tenant, agent) USING (tenant, agent)"
                " WHERE a.delayed_reports > 0",
                ([k[0] for k in new_keys], [k[1] for k in new_keys]),
            )
            others = [(t, a, i) for t, a, i in cur.fetchall() if (t, a, i) not in work]
            self._read_agents(cur, others, prior)
        wanted = digests_wanted(work, prior)
        if wanted:
            flat = [(k, seq) for k, seqs in wanted.items() for seq in seqs]
            cur.execute(
                "SELECT r.tenant, r.agent, r.incarnation, r.seq, r.digest FROM reports r"
                " JOIN unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])"
                " AS k(tenant, agent, incarnation, seq) USING (tenant, agent, incarnation, seq)",
                (
                    [k[0] for k, _ in flat],
                    [k[1] for k, _ in flat],
                    [k[2] for k, _ in flat],
                    [seq for _, seq in flat],
                ),
            )
            for t, a, i, seq, d in cur.fetchall():
                prior.digests.setdefault((t, a, i), {})[int(seq)] = bytes(d)
        return prior

    def _read_agents(self, cur: psycopg.Cursor[Any], keys: Sequence[_AgentKey], prior: Prior) -> None:
        """The agent rows and ledger rows of ``keys`` (those that exist) into ``prior``."""
        if not keys:
            return
        cols = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
        cur.execute(
            f"SELECT a.tenant, a.agent, a.incarnation, {_SUMMARY} FROM agents a"
            " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, agent, incarnation)"
            " USING (tenant, agent, incarnation)",
            cols,
        )
        found: list[_AgentKey] = []
        for r in cur.fetchall():
            key = (r[0], r[1], r[2])
            prior.agents[key] = Summary.of(r[3:])
            prior.ledgers[key] = []
            found.append(key)
        if not found:
            return
        cur.execute(
            "SELECT l.tenant, l.agent, l.incarnation, l.kind, l.first, l.last, l.since_ms, l.reason"
            " FROM ledger l JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, agent, incarnation)"
            " USING (tenant, agent, incarnation) ORDER BY l.tenant, l.agent, l.incarnation, l.kind, l.first",
            ([k[0] for k in found], [k[1] for k in found], [k[2] for k in found]),
        )
        for t, a, i, *rest in cur.fetchall():
            prior.ledgers[(t, a, i)].append(tuple(rest))

    def _resolve(
        self,
        provisional: dict[_SeriesKey, int],
        unresolved: list[_Unresolved],
        key: _SeriesKey,
        tenant: str,
        metric: str,
        labels: dict[str, str],
    ) -> int:
        """The id of a series not in the cache, for :class:`Columns`: a provisional one, ``-1 - k``
        for ``unresolved[k]`` (resolved afterwards in bulk by :meth:`_resolve_series`)."""
        sid = provisional.get(key)
        if sid is None:
            sid = provisional[key] = -1 - len(unresolved)
            unresolved.append((key, tenant, metric, labels))
        return sid

    def _write_points(self, cur: psycopg.Cursor[Any], cols: Columns, ids: Sequence[int], now_ms: int) -> int:
        """Write the columns (provisional series ids mapped through ``ids``) as one chunk per series,
        minus the points already stored, and the batch's row of compact_log; returns how many
        points were written."""
        if not len(cols):
            return 0
        sids, ts, vs = cols.sorted(ids)
        starts, ends = chunks.series_bounds(sids)
        cur.execute(_NEWEST, (Int8Array(sids[starts]), Int8Array(ts[starts])))
        # series -> a t stored at or after its first new point (what drop_stored needs to look)
        newest: dict[int, int] = {}
        first_id = 0
        for sid, t in cur.fetchall():
            if sid is None:
                first_id = int(t)
            else:
                newest[int(sid)] = int(t)
        if newest:
            stored = self._chunks_of(cur.connection, newest, sids, ts, starts, ends)
            sids, ts, vs = drop_stored(
                sids,
                ts,
                vs,
                newest,
                lambda items: [chunks.merge(stored.get(sid, ()), a, b)[0] for sid, a, b in items],
            )
        if len(ts):
            copy_chunks(cur, sids, ts, vs)
            cur.execute(_LOG_BATCH, (first_id, now_ms))
        return len(ts)

    @staticmethod
    def _chunks_of(
        conn: _Conn,
        which: Container[int],
        sids: chunks.I64,
        ts: chunks.I64,
        starts: chunks.I64,
        ends: chunks.I64,
    ) -> dict[int, list[tuple[int, bytes]]]:
        """The stored chunks ``(id, data)`` overlapping the new points of the series in ``which``
        (columns sorted by series), per series: one statement."""
        pick = [i for i, sid in enumerate(sids[starts].tolist()) if sid in which]
        out: dict[int, list[tuple[int, bytes]]] = {}
        bcur = conn.cursor(binary=True)
        bcur.execute(
            _CHUNKS_IN,
            (Int8Array(sids[starts[pick]]), Int8Array(ts[starts[pick]]), Int8Array(ts[ends[pick] - 1])),
        )
        for sid, cid, data in bcur:
            out.setdefault(int(sid), []).append((int(cid), bytes(data)))
        return out

    def _resolve_series(
        self,
        cur: psycopg.Cursor[Any],
        unresolved: list[_Unresolved],
        pending: dict[_SeriesKey, int],
    ) -> None:
        """Ids for the series keys in ``unresolved`` into ``pending``: existing rows, else new ones."""
        by_ident: dict[tuple[str, str, bytes], list[_SeriesKey]] = {}
        labels_of: dict[tuple[str, str, bytes], str] = {}
        for skey, tenant, metric, labels in unresolved:
            if skey in pending:
                continue
            labels_json = labels_text(labels).encode()  # NUL is escaped in JSON: kept as is
            ident = (tenant, pg_text(metric), hashlib.sha256(labels_json).digest())
            keys = by_ident.setdefault(ident, [])
            if not keys:
                labels_of[ident] = labels_json.decode()
            keys.append(skey)

        def found(rows: list[tuple[Any, ...]]) -> None:
            for sid, tenant, metric, h in rows:
                for skey in by_ident.pop((tenant, metric, bytes(h)), ()):
                    pending[skey] = int(sid)

        def lookup() -> None:
            if not by_ident:
                return
            idents = sorted(by_ident)
            cur.execute(
                "SELECT s.id, s.tenant, s.metric, s.labels_hash FROM series s"
                " JOIN unnest(%s::text[], %s::text[], %s::bytea[]) AS k(tenant, metric, labels_hash)"
                " USING (tenant, metric, labels_hash)",
                ([i[0] for i in idents], [i[1] for i in idents], [i[2] for i in idents]),
            )
            found(cur.fetchall())

        lookup()
        if by_ident:
            idents = sorted(by_ident)  # key order: concurrent inserters cannot deadlock
            cur.execute(
                "INSERT INTO series (tenant, metric, labels_json, labels_hash)"
                " SELECT k.tenant, k.metric, k.labels_json, k.labels_hash"
                " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[])"
                " WITH ORDINALITY AS k(tenant, metric, labels_json, labels_hash, i) ORDER BY i"
                " ON CONFLICT DO NOTHING RETURNING id, tenant, metric, labels_hash",
                (
                    [i[0] for i in idents],
                    [i[1] for i in idents],
                    [labels_of[i] for i in idents],
                    [i[2] for i in idents],
                ),
            )
            found(cur.fetchall())
        lookup()  # inserted by a concurrent writer meanwhile (a new statement sees its commit)
        if by_ident:
            raise StoreUnavailable(f"PostgreSQL {self._where}: could not resolve {len(by_ident)} series ids")

    # --- maintenance ---------------------------------------------------------------------------

    def _maybe_maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + MAINTENANCE_EVERY_S
        try:
            self.maintain()
        except StoreError as e:
            log.warning("store.maintenance_failed", error=str(e))

    def compact(self, now_ms: int, max_series: int = 2000) -> CompactResult:
        """See :meth:`Store.compact`. Batches are found through ``compact_log`` (one row each,
        written with the batch): once it holds ``COMPACT_MIN_CHUNKS`` of them, or one older than
        ``_PACK_AGE_MS``, a round starts: the series of up to ``_COMPACT_BATCHES`` of them are
        queued with the windows their raw chunks reach, and each call packs ``max_series`` of them
        (every chunk of the series overlapping those windows merged into one packed chunk per
        window), one transaction each; the round's last one deletes its compact_log rows (a crash
        before leaves them: the next round packs them again, which changes nothing). One
        compaction transaction at a time per database (an advisory lock; a second compactor's call
        returns at once). Open windows are packed again as batches come (a series' window then
        holds its packed chunk and the raw chunks of at most a round's batches)."""
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._conn() as conn, conn.transaction():
            locked = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s, %s)", (mig.LOCK_CLASS, mig.LOCK_COMPACT)
            ).fetchone()
            if not locked or not locked[0]:
                return CompactResult(more=bool(self._pack_queue))
            if not self._pack_queue and not self._queue_round(conn, now_ms):
                return CompactResult()
            take = self._pack_queue[:max_series]
            del self._pack_queue[:max_series]
            res = [0, 0, 0, 0, 0]  # chunks in, chunks out, bytes in, bytes out, points
            self._pack(conn, take, res)
            more = bool(self._pack_queue)
            if not more:
                conn.execute("DELETE FROM compact_log WHERE first_id = ANY(%b)", (Int8Array(self._pack_log),))
                self._pack_log = []
                more = True  # more batches may be due: the next call looks
            crash_point("store.compact_before_commit")
        return CompactResult(len(take), res[0], res[1], res[2], res[3], res[4], more)

    def _queue_round(self, conn: _Conn, now_ms: int) -> bool:
        """Start a round if one is due: queue ``(series, first window, last window)`` of the raw
        chunks of the oldest batches in compact_log. Whether one was."""
        rows = conn.execute(
            "SELECT first_id, last_id, at_ms FROM compact_log ORDER BY first_id LIMIT %s", (_COMPACT_BATCHES,)
        ).fetchall()
        if not rows:
            return False
        if len(rows) < COMPACT_MIN_CHUNKS and min(int(r[2]) for r in rows) > now_ms - _PACK_AGE_MS:
            return False
        cur = conn.cursor()
        found = _copy_out(
            cur,
            sql.SQL(
                "SELECT c.id, c.series_id, c.t_min, c.t_max"
                " FROM unnest({}::bigint[], {}::bigint[]) AS r(a, b)"
                " JOIN chunks c ON c.id > r.a AND c.id <= r.b"
            ).format(sql.Literal([int(r[0]) for r in rows]), sql.Literal([int(r[1]) for r in rows])),
            _CHUNK_META,
        )
        self._pack_log = [int(r[0]) for r in rows]
        if not len(found):
            self._pack_queue = []
            return True
        sids = found["s"].astype(np.int64)
        order = np.argsort(sids, kind="stable")
        sids = sids[order]
        starts, _ = chunks.series_bounds(sids)
        lo = np.minimum.reduceat(found["a"].astype(np.int64)[order] // COMPACT_WINDOW_MS, starts)
        hi = np.maximum.reduceat(found["b"].astype(np.int64)[order] // COMPACT_WINDOW_MS, starts)
        self._pack_queue = list(zip(sids[starts].tolist(), lo.tolist(), hi.tolist(), strict=True))
        return True

    def _pack(self, conn: _Conn, items: Sequence[tuple[int, int, int]], res: list[int]) -> None:
        """For each ``(series, first window, last window)``: merge the series' chunks overlapping
        those windows into one packed chunk per window (a chunk reaching outside takes its other
        windows along), as the embedded store does: one read, columns merged and encoded together
        (:func:`chunks.encode_many`), one delete and one insert statement. Each series' lowest
        input ids go to its oldest windows (first write wins on), a merge yielding more chunks than
        it read gives the rest new ids."""
        if not items:
            return
        cur = conn.cursor(binary=True)
        cur.execute(
            _PACK_READ,
            (
                Int8Array([s for s, _, _ in items]),
                Int8Array([lo * COMPACT_WINDOW_MS for _, lo, _ in items]),
                Int8Array([(hi + 1) * COMPACT_WINDOW_MS for _, _, hi in items]),
            ),
        )
        found = [(int(cid), int(sid), bytes(data)) for cid, sid, data in cur]
        by_series: dict[int, list[tuple[int, bytes]]] = {}
        for cid, sid, data in found:
            by_series.setdefault(sid, []).append((cid, data))
        # a window already packed into one chunk is left as it is
        found = [
            (cid, sid, data)
            for cid, sid, data in found
            if len(by_series[sid]) > 1 or by_series[sid][0][1][:1] != bytes((chunks.PACKED,))
        ]
        if not found:
            return
        rows, points = chunks.pack([(cid, sid, data) for cid, sid, data in found], COMPACT_WINDOW_MS)
        conn.execute("DELETE FROM chunks WHERE id = ANY(%b)", (Int8Array([r[0] for r in found]),))
        conn.execute(
            _PACK_INSERT,
            (
                [r.id for r in rows],
                Int8Array([r.series_id for r in rows]),
                Int8Array([r.t_min for r in rows]),
                Int8Array([r.t_max for r in rows]),
                [r.n for r in rows],
                [r.data for r in rows],
            ),
        )
        res[0] += len(found)
        res[1] += len(rows)
        res[2] += sum(len(r[2]) for r in found)
        res[3] += sum(len(r.data) for r in rows)
        res[4] += points

    def maintain(self, now_ms: int | None = None) -> Retention:
        """Delete the chunks whose newest point is older than ``retention_days`` (0: nothing), in
        transactions of at most ``RETENTION_CHUNKS`` chunks. Returns what was deleted."""
        if self.retention_days <= 0:
            return Retention(None, 0, 0)
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        horizon = max(now_ms - int(self.retention_days * DAY_MS), INT8_MIN)
        deleted = points = 0
        with self._conn() as conn:
            while True:
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '5s'")
                    rows = conn.execute(
                        "DELETE FROM chunks WHERE id IN"
                        " (SELECT id FROM chunks WHERE t_max < %s LIMIT %s) RETURNING n",
                        (horizon, RETENTION_CHUNKS),
                    ).fetchall()
                deleted += len(rows)
                points += sum(int(n) for (n,) in rows)
                if len(rows) < RETENTION_CHUNKS:
                    break
        if deleted:
            log.info("store.retention_deleted", chunks=deleted, points=points, before_ms=horizon)
        return Retention(horizon, deleted, points)

    # --- reads ---------------------------------------------------------------------------------

    def _fetch(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._conn() as conn, conn.transaction():
            rows = conn.execute(query, params).fetchall()
        return rows

    # --- reads for PromQL selectors and the dashboard ----------------------------------------------

    def _labels_of(self, sid: int, labels_json: str) -> dict[str, str]:
        lab = self._labels.get(sid)
        if lab is None:
            lab = _LABELS_DECODER.decode(labels_json)
            if len(self._labels) > SERIES_CACHE_MAX:
                self._labels.clear()
            self._labels[sid] = lab
        return lab

    def _matching(
        self, conn: _Conn, tenant: str, matchers: Sequence[Matcher]
    ) -> list[tuple[int, str, dict[str, str]]]:
        """(id, metric, labels) of the tenant's series matching all matchers, sorted by metric then
        labels. An equality matcher on the metric name narrows the read to that metric (an index
        prefix); every matcher is applied here, in Python with RE2 (never in SQL), like the embedded store."""
        names = {m.value for m in matchers if m.name == "__name__" and m.op == "="}
        if len(names) > 1:
            return []
        if names:
            rows = conn.execute(
                "SELECT id, metric, labels_json FROM series WHERE tenant = %s AND metric = %s",
                (tenant, next(iter(names))),
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT id, metric, labels_json FROM series WHERE tenant = %s", (tenant,)
            ).fetchall()
        out: list[tuple[int, str, dict[str, str]]] = []
        for sid, metric, labels_json in rows:
            lab = self._labels_of(sid, labels_json)
            if matches_all(matchers, metric, lab):
                out.append((sid, metric, lab))
        out.sort(key=lambda r: (r[1], sorted(r[2].items())))
        return out

    def series(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
        with self._conn() as conn, conn.transaction():
            found = self._matching(conn, tenant, matchers)
        return [(metric, dict(lab)) for _, metric, lab in found]

    def series_after(self, tenant: str, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        rows = self._fetch(
            "SELECT id, metric, labels_json FROM series WHERE tenant = %s AND id > %s ORDER BY id LIMIT %s",
            (tenant, after_id, limit),
        )
        return [(int(i), m, lab) for i, m, lab in rows]

    def series_counts(self) -> dict[str, int]:
        return {t: int(n) for t, n in self._fetch("SELECT tenant, count(*) FROM series GROUP BY tenant", ())}

    def metric_names(self, tenant: str) -> list[str]:
        rows = self._fetch("SELECT DISTINCT metric FROM series WHERE tenant = %s", (tenant,))
        return sorted(m for (m,) in rows)  # Python's order (code points), whatever the collation

    def select_arrays(
        self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int
    ) -> list[SeriesArrays]:
        from_ms, to_ms = max(from_ms, INT8_MIN), min(to_ms, INT8_MAX)
        if from_ms > to_ms:
            return []
        by_series: dict[int, list[tuple[int, bytes]]] = {}
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            found = self._matching(conn, tenant, matchers)
            if found:
                # one index range per series: the chunks that may hold points in the range
                cur = conn.cursor(binary=True)
                cur.execute(
                    "SELECT series_id, id, data FROM chunks WHERE series_id = ANY(%b)"
                    " AND t_max >= %s AND t_min <= %s",
                    (Int8Array([sid for sid, _, _ in found]), from_ms, to_ms),
                )
                for sid, cid, data in cur:
                    by_series.setdefault(sid, []).append((cid, bytes(data)))
        out: list[SeriesArrays] = []
        for sid, metric, lab in found:
            rows = by_series.get(sid)
            if rows:
                ts, vs = chunks.merge(rows, from_ms, to_ms)
                if len(ts):
                    out.append(SeriesArrays(metric, dict(lab), ts, vs))
        return out

    def agents(self, tenant: str) -> list[AgentSummary]:
        rows = self._fetch(
            "SELECT agent, max_seq, stored_reports, missing_reports, lost_reports, last_stored_ms,"
            " delayed_reports, spool_reported_ms, incarnation, first_seq, first_seen_ms, conflict_reports"
            " FROM agents WHERE tenant = %s"
            ' ORDER BY agent COLLATE "C", first_seen_ms, incarnation COLLATE "C"',
            (tenant,),
        )
        return [AgentSummary(*r) for r in rows]

    def ledger(self, tenant: str, agent: str, incarnation: str | None = None) -> Ledger | None:
        # One statement: one snapshot of the agent row, its ledger rows and its conflicts.
        which = (
            'ORDER BY first_seen_ms DESC, incarnation COLLATE "C" LIMIT 1'
            if incarnation is None
            else "AND incarnation = %s"
        )
        params: tuple[Any, ...] = (tenant, agent) if incarnation is None else (tenant, agent, incarnation)
        rows = self._fetch(
            "WITH a AS (SELECT * FROM agents WHERE tenant = %s AND agent = %s " + which + ")"
            " SELECT a.incarnation, a.spool_pending_reports, a.spool_pending_bytes, a.spool_oldest_ms,"
            " a.spool_first_pending, a.spool_last_seq, a.spool_reported_ms, a.first_seq,"
            " (SELECT array_agg(DISTINCT c.seq) FROM conflicts c WHERE (c.tenant, c.agent, c.incarnation)"
            " = (a.tenant, a.agent, a.incarnation)),"
            " l.kind, l.first, l.last, l.since_ms, l.reason"
            " FROM a LEFT JOIN ledger l USING (tenant, agent, incarnation) ORDER BY l.kind, l.first",
            params,
        )
        if not rows:
            return None
        head = rows[0]
        inc = str(head[0])
        spool = lg.spool_state(tenant, agent, inc, head[1:7]) if head[6] else None
        ledger_rows: list[_LedgerRow] = [tuple(r[9:]) for r in rows if r[9] is not None]
        return dataclasses.replace(
            lg.from_rows(ledger_rows, spool),
            incarnation=inc,
            first_seq=int(head[7]),
            conflicts=lg.from_seqs(int(x) for x in head[8] or ()),
        )

    def replay_wanted(
        self, tenant: str, agent: str, seen_before_ms: int, incarnation: str = ""
    ) -> list[SeqRange]:
        rows = self._fetch(
            "SELECT first, last FROM ledger WHERE tenant = %s AND agent = %s AND incarnation = %s"
            " AND kind = 'missing' AND since_ms < %s ORDER BY first",
            (tenant, agent, incarnation, seen_before_ms),
        )
        return lg.normalize((a, b) for a, b in rows)

    def stored_digests(
        self, tenant: str, agent: str, incarnation: str, seqs: Sequence[SeqRange]
    ) -> dict[int, bytes]:
        if not seqs:
            return {}
        rows = self._fetch(
            "SELECT r.seq, r.digest FROM unnest(%s::bigint[], %s::bigint[]) AS q(first, last)"
            " JOIN reports r ON r.tenant = %s AND r.agent = %s AND r.incarnation = %s"
            " AND r.seq BETWEEN q.first AND q.last",
            ([a for a, _ in seqs], [b for _, b in seqs], tenant, agent, incarnation),
        )
        return {int(seq): bytes(d) for seq, d in rows}

    def report_times_around(
        self, tenant: str, agent: str, incarnation: str, runs: Sequence[SeqRange]
    ) -> list[tuple[int, int]]:
        if not runs:
            return []
        # one statement: two index seeks per run, in a lateral join over the runs
        pick = "SELECT time_ms FROM reports WHERE tenant = %s AND agent = %s AND incarnation = %s"
        key = (tenant, agent, incarnation)
        rows = self._fetch(
            "SELECT coalesce(b.time_ms, 0), coalesce(a.time_ms, 0)"
            " FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS r(first, last, i)"
            f" LEFT JOIN LATERAL ({pick} AND seq < r.first ORDER BY seq DESC LIMIT 1) b ON true"
            f" LEFT JOIN LATERAL ({pick} AND seq > r.last ORDER BY seq LIMIT 1) a ON true"
            " ORDER BY r.i",
            ([a for a, _ in runs], [b for _, b in runs], *key, *key),
        )
        return [(int(b), int(a)) for b, a in rows]

    def max_stored_seq(self, tenant: str, agent: str, incarnation: str) -> int:
        rows = self._fetch(
            "SELECT coalesce(max(seq), 0) FROM reports WHERE tenant = %s AND agent = %s AND incarnation = %s",
            (tenant, agent, incarnation),
        )
        return int(rows[0][0])

    def conflicts(self, tenant: str, agent: str | None = None) -> list[Conflict]:
        query = (
            "SELECT id, tenant, agent, incarnation, seq, digest, n_points, detected_ms, applied_ms"
            " FROM conflicts WHERE tenant = %s"
        )
        params: tuple[Any, ...] = (tenant,)
        if agent is not None:
            query += " AND agent = %s"
            params = (tenant, agent)
        rows = self._fetch(query + " ORDER BY id", params)
        return [
            Conflict(int(r[0]), r[1], r[2], r[3], int(r[4]), bytes(r[5]), int(r[6]), int(r[7]), int(r[8]))
            for r in rows
        ]

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

    def dead_letter_count(self, tenant: str | None = None) -> int:
        if tenant is None:
            return int(self._fetch("SELECT count(*) FROM dead_letters", ())[0][0])
        return int(self._fetch("SELECT count(*) FROM dead_letters WHERE tenant = %s", (tenant,))[0][0])

    def metadata(
        self, tenant: str, metric: str | None = None, limit: int | None = None
    ) -> list[MetricMetadata]:
        query = "SELECT tenant, metric, type, help, unit FROM metadata WHERE tenant = %s"
        params: list[Any] = [tenant]
        if metric is not None:
            query += " AND metric = %s"
            params.append(metric)
        query += ' ORDER BY metric COLLATE "C"'  # code point order, as the embedded store
        if limit is not None:
            query += " LIMIT %s"
            params.append(max(limit, 0))
        return [MetricMetadata(*r) for r in self._fetch(query, tuple(params))]

    def log_gaps(self) -> list[LogGap]:
        rows = self._fetch(
            "SELECT partition, first, last, reason, detected_ms FROM log_gaps ORDER BY partition, first", ()
        )
        return [LogGap(*r) for r in rows]


def _lock_key(schema: str, tenant: str, agent: str) -> int:
    digest = hashlib.blake2b(f"{schema}\0{tenant}\0{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
