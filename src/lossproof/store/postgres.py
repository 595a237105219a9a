"""The PostgreSQL store: workers on many machines write into one database (``store.backend = "postgres"``).

Same guarantees as every :class:`~lossproof.store.base.Store` (see ``base.py``), and the same
rules as the embedded store: the ledger transition is :func:`lossproof.store.ledger.advance`.

Writes
    One ``write_batch`` is one READ COMMITTED transaction: take a transaction-scoped advisory lock
    per (tenant, agent) of the batch, in a fixed order; read those agents' ledgers (now nobody
    else can change them until we commit); decide which reports are new; resolve series ids; COPY
    the new points (binary) into a per-connection temp staging table; ``INSERT INTO points SELECT
    ... ORDER BY series_id, t, ctid ON CONFLICT DO NOTHING`` (first write wins, also inside the
    batch); write ledger rows, agent summaries, dead letters, log gaps and metric metadata
    (upserted, the last write winning); commit. So with any number of writers in any number of
    processes and machines, a report is stored once: the second writer of the same seq waits on the
    lock, then sees it stored and skips it. Rows are inserted in key order everywhere, so writers do
    not deadlock on each other's rows; a deadlock or serialization failure anyway is retried as a
    fresh transaction.

Series ids
    ``series`` is unique on (tenant, metric, SHA-256 of the canonical labels JSON). Ids unknown to
    this process are resolved in bulk: select, ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (in
    key order), select again for the ones a concurrent writer inserted meanwhile. Ids are cached
    only after the transaction that used them committed.

Partitions
    ``points`` is range-partitioned by UTC day of ``t``. Before the data transaction, any day the
    batch needs that this process has not seen yet is created in its own short transaction under
    an advisory lock (create table, then ``ATTACH PARTITION``, which only takes SHARE UPDATE
    EXCLUSIVE on ``points``, so writers and readers go on meanwhile). Every few minutes a writer
    also creates today's and tomorrow's partitions ahead and drops those older than
    ``retention_days`` (0: keep everything).

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
    version is refused until it is migrated, one at a newer version always.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from lossproof.faults import crash_point
from lossproof.log.base import LogGap
from lossproof.obs.logging import get
from lossproof.store import ledger as lg
from lossproof.store import pg_migrations as mig
from lossproof.store.base import (
    SERIES_CACHE_BYTES,
    AgentSummary,
    Conflict,
    Ledger,
    Matcher,
    MetricMetadata,
    PointLike,
    SeqRange,
    Series,
    SpoolState,
    SteppedSeries,
    Store,
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
    decode_points,
    encode_points,
    latest_metadata,
    matches_all,
    series_key_bytes,
)

log = get(__name__)

LOCK_PARTITIONS = 2
DAY_MS = mig.DAY_MS
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1
# partitions are named by date: years 1..9999
MIN_DAY = (datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
MAX_DAY = (datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
MAINTENANCE_EVERY_S = 300.0
TX_ATTEMPTS = 5  # deadlock / serialization failure: retried as a fresh transaction this many times

_LABELS_ENCODER = msgspec.json.Encoder(order="sorted")
_LABELS_DECODER = msgspec.json.Decoder(dict[str, str])
_SERIES_CACHE_MAX = 2_000_000


def pg_text(s: str) -> str:
    """PostgreSQL text cannot hold NUL (SQLite can): it is stored as U+FFFD rather than refused, as a
    refused record would be acknowledged data never stored. Only new series and metadata pay."""
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


_SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items()) in the caller's label order
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
_NO_PARTITION = "no partition of relation"

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS lp_staging"
    " (series_id bigint, t bigint, v double precision) ON COMMIT DELETE ROWS"
)
_MERGE = (
    "INSERT INTO points (series_id, t, v) SELECT series_id, t, v FROM lp_staging"
    " ORDER BY series_id, t, ctid ON CONFLICT DO NOTHING"
)
# The last write wins; an unchanged row is not rewritten (senders repeat their metadata every minute).
_UPSERT_METADATA = (
    "INSERT INTO metadata VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant, metric) DO UPDATE"
    " SET type = excluded.type, help = excluded.help, unit = excluded.unit"
    " WHERE (metadata.type, metadata.help, metadata.unit)"
    " IS DISTINCT FROM (excluded.type, excluded.help, excluded.unit)"
)


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
    return e.sqlstate[:2] in _DATA_CLASSES and _NO_PARTITION not in str(e)


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
    """Apply pending migrations; returns (version before, version after)."""
    conn = open_connection(dsn, connect_timeout)
    try:
        before, after = mig.migrate(conn, schema)
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            days = {time.time_ns() // 1_000_000 // DAY_MS + k for k in (0, 1)}
            _create_partitions(conn, days)
        return before, after
    except StoreError:
        raise
    except psycopg.Error as e:
        raise StoreError(f"migrating PostgreSQL {describe_dsn(dsn)}: {_one_line(e)}") from None
    finally:
        conn.close()


def _partition_name(day: int) -> str:
    return "points_p" + datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y%m%d")


def _create_partitions(conn: _Conn, days: Iterable[int]) -> list[int]:
    """Create the missing day partitions (inside the caller's transaction); returns those created.

    Race-free: serialized by an advisory lock, each checked again under it."""
    created: list[int] = []
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (mig.LOCK_CLASS, LOCK_PARTITIONS))
    existing = set(_existing_partitions(conn))
    for day in sorted(set(days)):
        if day in existing:
            continue
        name = sql.Identifier(_partition_name(day))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE points INCLUDING ALL)").format(name))
        conn.execute(
            sql.SQL("ALTER TABLE points ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                name, sql.Literal(day * DAY_MS), sql.Literal((day + 1) * DAY_MS)
            )
        )
        created.append(day)
    return created


def _existing_partitions(conn: _Conn) -> list[int]:
    """Day numbers of the partitions of ``points`` in the current schema."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'points'::regclass"
    ).fetchall()
    days = []
    for (name,) in rows:
        stamp = str(name).removeprefix("points_p")
        try:
            dt = datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue
        days.append(int(dt.timestamp()) // 86_400)
    return days


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
        self._series: dict[_SeriesKey, int] = {}
        self._series_bytes = 0  # series_key_bytes of the entries
        self._labels: dict[int, dict[str, str]] = {}
        self._partitions: set[int] = set()
        self._lock = threading.Lock()  # one write at a time
        self._next_maintenance = 0.0

        conn = open_connection(dsn, connect_timeout)
        try:
            self._check_schema(conn)
            if not readonly:
                self._warn_if_not_durable(conn)
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                self._partitions = set(_existing_partitions(conn))
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
            conn.execute(_STAGING)
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

    def _cache_series(self, new: dict[_SeriesKey, int]) -> None:
        """Cache the ids of committed series, starting over when the cache is too long or too big."""
        if not new:
            return
        size = sum(map(series_key_bytes, new))
        if len(self._series) + len(new) > _SERIES_CACHE_MAX or self._series_bytes + size > SERIES_CACHE_BYTES:
            self._series.clear()
            self._series_bytes = 0
        self._series.update(new)
        self._series_bytes += size

    def close(self) -> None:
        self._pool.close()

    # --- writes --------------------------------------------------------------------------------

    def write_batch(self, batch: WriteBatch) -> WriteResult:
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            try:
                return self._write(batch)
            except StoreUnavailable:
                self._partitions.clear()  # the database may have been restored or replaced
                raise

    def _write(self, batch: WriteBatch) -> WriteResult:
        self._ensure_partitions(batch)
        for attempt in range(1, TX_ATTEMPTS + 1):
            pending: dict[_SeriesKey, int] = {}
            retry = False
            with self._conn() as conn:
                try:
                    with conn.transaction():
                        result = self._apply(conn, batch, pending)
                        crash_point("store.before_commit")  # chaos scenario 2: kill -9 in the transaction
                except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as e:
                    if attempt == TX_ATTEMPTS:
                        raise
                    log.warning("store.tx_retry", error=_one_line(e), attempt=attempt)
                    retry = True
                except psycopg.Error as e:
                    if _NO_PARTITION not in str(e) or attempt == TX_ATTEMPTS:
                        raise
                    retry = True  # dropped by retention meanwhile (old data): look again
                    self._partitions.clear()
            if retry:
                self._ensure_partitions(batch)
                continue
            # Only ids of committed series may be cached.
            self._cache_series(pending)
            self._maybe_maintain()
            return result
        raise AssertionError("unreachable")

    def _ensure_partitions(self, batch: WriteBatch) -> None:
        days: set[int] = set()
        for r in batch.reports:
            days.update({p.t // DAY_MS for p in r.points})
        days.update({p.t // DAY_MS for _, p in batch.samples})
        need = days - self._partitions
        if not need:
            return
        if min(need) < MIN_DAY or max(need) > MAX_DAY:
            bad = min(need) if min(need) < MIN_DAY else max(need)
            raise StoreError(f"a point's time (day {bad} since 1970) is outside the years 1-9999")
        with self._conn() as conn, conn.transaction():
            created = _create_partitions(conn, need)
            known = _existing_partitions(conn)
        self._partitions.update(known)
        if created:
            log.info("store.partitions_created", days=[_partition_name(d) for d in created])

    def _apply(self, conn: _Conn, batch: WriteBatch, pending: dict[_SeriesKey, int]) -> WriteResult:
        now = batch.now_ms
        work = lg.group_batch(batch)
        keys = list(work)  # batch order: first write wins

        cur = conn.cursor()
        old_rows: dict[_AgentKey, list[_LedgerRow]] = {}
        summaries: dict[_AgentKey, tuple[Any, ...]] = {}
        if keys:
            # One lock per agent id (all its incarnations: a new one changes the others' ledgers),
            # always taken in the same order: writers of disjoint agents run in parallel, writers
            # of the same agent one after the other.
            locks = sorted({_lock_key(self.schema, t, a) for t, a, _ in keys})
            cur.execute(
                "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(k, i)",
                (locks,),
            )
            self._read_agents(cur, keys, summaries, old_rows)
            new_keys = [k for k in keys if k not in summaries]
            if new_keys:
                # Other incarnations of agent ids that have a new one, with seqs still delayed.
                cur.execute(
                    "SELECT a.tenant, a.agent, a.incarnation FROM agents a"
                    " JOIN unnest(%s::text[], %s::text[]) AS k(tenant, agent) USING (tenant, agent)"
                    " WHERE a.delayed_reports > 0",
                    ([k[0] for k in new_keys], [k[1] for k in new_keys]),
                )
                others = [tuple(r) for r in cur.fetchall() if tuple(r) not in work]
                self._read_agents(cur, others, summaries, old_rows)

        rows: list[tuple[int | None, int, float]] = []
        unresolved: list[tuple[int, _SeriesKey, str, str, dict[str, str]]] = []
        stored_count = duplicates = conflicts = 0
        ledgers: dict[_AgentKey, tuple[Ledger, SpoolState | None, int, int, int]] = {}
        digest_rows: list[tuple[str, str, str, int, bytes]] = []
        conflict_rows: list[tuple[Any, ...]] = []
        reset: set[tuple[str, str]] = set()
        for key in keys:
            tenant, agent, inc = key
            reports, lost, spool_in, first_seq_in = work[key]
            summary = summaries.get(key)
            if summary is None and (tenant, agent) not in reset:
                reset.add((tenant, agent))
                for other in [k for k in summaries if k[:2] == (tenant, agent) and k not in work]:
                    o = summaries[other]
                    o_spool = lg.spool_state(tenant, agent, other[2], o[1:7]) if o[6] else None
                    old = lg.from_rows(old_rows.get(other, []))
                    new = lg.advance(old, [], lg.spool_reset(old), now, o_spool, int(o[7]))
                    ledgers[other] = (new, o_spool, int(o[0]), int(o[8]), int(o[9]))
            spool = spool_in
            if spool is None and summary and summary[6]:
                spool = lg.spool_state(tenant, agent, inc, summary[1:7])
            first_seq = int(summary[7]) if summary else first_seq_in
            old = lg.from_rows(old_rows.get(key, []))
            got = lg.sort_reports(reports, old.stored, partial(self._digests, cur, key))
            duplicates += got.duplicates
            conflicts += len(got.conflicts)
            for r, _ in got.new.values():
                self._point_rows(tenant, r.points, rows, pending, unresolved)
            digest_rows += [(tenant, agent, inc, seq, d) for seq, (_, d) in got.new.items()]
            conflict_rows += [
                (tenant, agent, inc, r.seq, d, encode_points(r.points), len(r.points), now)
                for r, d in got.conflicts
            ]
            stored_count += len(got.new)
            new = lg.advance(old, lg.from_seqs(got.new), lost, now, spool, first_seq)
            last_stored = now if got.new else (int(summary[0]) if summary else 0)
            first_seen = int(summary[8]) if summary else now
            ledgers[key] = (new, spool, last_stored, first_seen, int(summary[9]) if summary else 0)

        if conflict_rows:
            conflict_rows.sort(key=lambda r: r[:5])
            cur.executemany(
                "INSERT INTO conflicts (tenant, agent, incarnation, seq, digest, points, n_points,"
                " detected_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                conflict_rows,
            )
            hit = sorted({r[:3] for r in conflict_rows})
            cur.execute(
                "SELECT c.tenant, c.agent, c.incarnation, count(*) FROM conflicts c"
                " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, agent, incarnation)"
                " USING (tenant, agent, incarnation) GROUP BY 1, 2, 3",
                ([k[0] for k in hit], [k[1] for k in hit], [k[2] for k in hit]),
            )
            for t, a, i, n in cur.fetchall():
                new, spool, last_stored, first_seen, _ = ledgers[(t, a, i)]
                ledgers[(t, a, i)] = (new, spool, last_stored, first_seen, int(n))
        if digest_rows:
            digest_rows.sort(key=lambda r: r[:4])
            cur.executemany(
                "INSERT INTO reports VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", digest_rows
            )

        gone: list[tuple[str, str, str, str, int]] = []
        added: list[tuple[str, str, str, str, int, int, int | None, str | None]] = []
        agent_rows: list[tuple[Any, ...]] = []
        for key in sorted(ledgers):  # key order: writers do not deadlock on each other's rows
            tenant, agent, inc = key
            new, spool, last_stored, first_seen, conflict_count = ledgers[key]
            old_list = old_rows.get(key, [])
            new_list = lg.to_rows(new)
            old_set, new_set = set(old_list), set(new_list)
            gone += [(*key, r[0], r[1]) for r in old_list if r not in new_set]
            added += [(*key, *r) for r in new_list if r not in old_set]
            sp = spool or SpoolState(tenant, agent, 0, 0, 0, 0, 0, 0)
            agent_rows.append(
                (
                    tenant,
                    agent,
                    inc,
                    lg.max_seq(new, spool),
                    lg.count(new.stored),
                    lg.count(new.missing),
                    lg.count(new.lost),
                    last_stored,
                    lg.count(new.delayed),
                    sp.pending_reports,
                    sp.pending_bytes,
                    sp.oldest_pending_ms,
                    sp.first_pending_seq,
                    sp.last_seq,
                    sp.reported_ms,
                    new.first_seq,
                    first_seen,
                    conflict_count,
                )
            )
        for tenant, p in batch.samples:
            self._point_rows(tenant, (p,), rows, pending, unresolved)
        for tenant, series in batch.series:
            self._point_rows(tenant, series.points(), rows, pending, unresolved)
        if unresolved:
            self._resolve_series(cur, unresolved, pending)
            for i, skey, *_ in unresolved:
                _, t, v = rows[i]
                rows[i] = (pending[skey], t, v)

        written = 0
        if rows:
            with cur.copy("COPY lp_staging (series_id, t, v) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "float8"])
                write = copy.write_row
                for row in rows:
                    write(row)
            cur.execute(_MERGE)
            written = cur.rowcount

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
        return WriteResult(written, stored_count, duplicates, conflicts)

    def _read_agents(
        self,
        cur: psycopg.Cursor[Any],
        keys: Sequence[_AgentKey],
        summaries: dict[_AgentKey, tuple[Any, ...]],
        old_rows: dict[_AgentKey, list[_LedgerRow]],
    ) -> None:
        """The agent rows and ledger rows of ``keys`` (those that exist) into the two dicts."""
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
            summaries[(r[0], r[1], r[2])] = tuple(r[3:])
            found.append((r[0], r[1], r[2]))
        if not found:
            return
        cur.execute(
            "SELECT l.tenant, l.agent, l.incarnation, l.kind, l.first, l.last, l.since_ms, l.reason"
            " FROM ledger l JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, agent, incarnation)"
            " USING (tenant, agent, incarnation) ORDER BY l.tenant, l.agent, l.incarnation, l.kind, l.first",
            ([k[0] for k in found], [k[1] for k in found], [k[2] for k in found]),
        )
        for t, a, i, *rest in cur.fetchall():
            old_rows.setdefault((t, a, i), []).append(tuple(rest))

    def _digests(self, cur: psycopg.Cursor[Any], key: _AgentKey, seqs: list[int]) -> dict[int, bytes]:
        cur.execute(
            "SELECT seq, digest FROM reports WHERE tenant = %s AND agent = %s AND incarnation = %s"
            " AND seq = ANY(%s::bigint[])",
            (*key, seqs),
        )
        return {int(seq): bytes(d) for seq, d in cur.fetchall()}

    def _point_rows(
        self,
        tenant: str,
        points: Iterable[PointLike],
        out: list[tuple[int | None, int, float]],
        pending: dict[_SeriesKey, int],
        unresolved: list[tuple[int, _SeriesKey, str, str, dict[str, str]]],
    ) -> None:
        # The hot loop: one dict lookup per point; unknown series are resolved afterwards in bulk.
        get = self._series.get
        append = out.append
        for p in points:
            key = (tenant, p.metric, *p.labels.items())
            sid = get(key)
            if sid is None:
                sid = pending.get(key)
                if sid is None:
                    unresolved.append((len(out), key, tenant, p.metric, p.labels))
            append((sid, p.t, p.v))

    def _resolve_series(
        self,
        cur: psycopg.Cursor[Any],
        unresolved: list[tuple[int, _SeriesKey, str, str, dict[str, str]]],
        pending: dict[_SeriesKey, int],
    ) -> None:
        """Ids for the series keys in ``unresolved`` into ``pending``: existing rows, else new ones."""
        by_ident: dict[tuple[str, str, bytes], list[_SeriesKey]] = {}
        labels_of: dict[tuple[str, str, bytes], str] = {}
        for _, skey, tenant, metric, labels in unresolved:
            if skey in pending:
                continue
            labels_json = _LABELS_ENCODER.encode(labels)  # NUL is escaped in JSON: kept as is
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

    def maintain(self, now_ms: int | None = None) -> tuple[list[str], list[str]]:
        """Create today's and tomorrow's partitions, drop those past retention.

        Returns (created, dropped) partition names."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        today = now_ms // DAY_MS
        dropped: list[str] = []
        with self._conn() as conn:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '5s'")
                created = _create_partitions(conn, [today, today + 1])
                existing = _existing_partitions(conn)
            if self.retention_days > 0:
                horizon = now_ms - int(self.retention_days * DAY_MS)
                for day in sorted(existing):
                    if (day + 1) * DAY_MS > horizon:
                        continue
                    name = _partition_name(day)
                    with conn.transaction():
                        conn.execute("SET LOCAL lock_timeout = '5s'")
                        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
                    dropped.append(name)
            with conn.transaction():
                self._partitions = set(_existing_partitions(conn))
        if created or dropped:
            log.info(
                "store.partitions_maintained",
                created=[_partition_name(d) for d in created],
                dropped=dropped,
            )
        return [_partition_name(d) for d in created], dropped

    # --- reads ---------------------------------------------------------------------------------

    def _fetch(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._conn() as conn, conn.transaction():
            rows = conn.execute(query, params).fetchall()
        return rows

    def query(
        self, tenant: str, metric: str, from_ms: int, to_ms: int, labels: dict[str, str]
    ) -> list[Series]:
        from_ms, to_ms = max(from_ms, INT8_MIN), min(to_ms, INT8_MAX)
        out: list[Series] = []
        if from_ms > to_ms:
            return out
        want = labels.items()
        chosen: dict[int, dict[str, str]] = {}
        rows: list[tuple[Any, ...]] = []
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            candidates = conn.execute(
                "SELECT id, labels_json FROM series WHERE tenant = %s AND metric = %s", (tenant, metric)
            ).fetchall()
            for sid, labels_json in candidates:
                lab = self._labels_of(sid, labels_json)
                if want <= lab.items():
                    chosen[sid] = lab
            if chosen:
                cur = conn.cursor(binary=True)
                cur.execute(
                    "SELECT series_id, array_agg(t ORDER BY t), array_agg(v ORDER BY t) FROM points"
                    " WHERE series_id = ANY(%s) AND t >= %s AND t <= %s GROUP BY series_id",
                    (list(chosen), from_ms, to_ms),
                )
                rows = cur.fetchall()
        for sid, ts, vs in rows:
            out.append(Series(metric=metric, labels=dict(chosen[sid]), points=list(zip(ts, vs, strict=True))))
        out.sort(key=lambda s: sorted(s.labels.items()))
        return out

    # --- reads for PromQL selectors and the dashboard ----------------------------------------------

    def _labels_of(self, sid: int, labels_json: str) -> dict[str, str]:
        lab = self._labels.get(sid)
        if lab is None:
            lab = _LABELS_DECODER.decode(labels_json)
            if len(self._labels) > _SERIES_CACHE_MAX:
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

    def series_counts(self) -> dict[str, int]:
        return {t: int(n) for t, n in self._fetch("SELECT tenant, count(*) FROM series GROUP BY tenant", ())}

    def metric_names(self, tenant: str) -> list[str]:
        rows = self._fetch("SELECT DISTINCT metric FROM series WHERE tenant = %s", (tenant,))
        return sorted(m for (m,) in rows)  # Python's order (code points), whatever the collation

    def select(self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int) -> list[Series]:
        from_ms, to_ms = max(from_ms, INT8_MIN), min(to_ms, INT8_MAX)
        if from_ms > to_ms:
            return []
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            found = self._matching(conn, tenant, matchers)
            points: dict[int, list[tuple[int, float]]] = {}
            if found:
                cur = conn.cursor(binary=True)
                cur.execute(
                    "SELECT series_id, array_agg(t ORDER BY t), array_agg(v ORDER BY t) FROM points"
                    " WHERE series_id = ANY(%s) AND t >= %s AND t <= %s GROUP BY series_id",
                    ([sid for sid, _, _ in found], from_ms, to_ms),
                )
                for sid, ts, vs in cur:
                    points[sid] = list(zip(ts, vs, strict=True))
        return [
            Series(metric=metric, labels=dict(lab), points=points[sid])
            for sid, metric, lab in found
            if sid in points
        ]

    def select_last(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        start_ms: int,
        end_ms: int,
        step_ms: int,
        window_ms: int,
    ) -> list[SteppedSeries]:
        if step_ms <= 0 or window_ms <= 0:
            raise ValueError("step_ms and window_ms must be positive")
        if end_ms < start_ms:
            return []
        n = (end_ms - start_ms) // step_ms + 1
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            found = self._matching(conn, tenant, matchers)
            samples: dict[int, list[tuple[int, float] | None]] = {}
            if found:
                # One backward index seek per series and step (run-time partition pruning keeps
                # each to the partition(s) its window touches).
                cur = conn.cursor(binary=True)
                cur.execute(
                    "SELECT s.id, g.k, p.t, p.v FROM unnest(%(ids)s::bigint[]) AS s(id)"
                    " CROSS JOIN generate_series(0::bigint, %(last)s::bigint) AS g(k)"
                    " CROSS JOIN LATERAL (SELECT t, v FROM points WHERE series_id = s.id"
                    "   AND t <= %(start)s::bigint + g.k * %(step)s::bigint"
                    "   AND t > %(start)s::bigint + g.k * %(step)s::bigint - %(window)s::bigint"
                    "   ORDER BY t DESC LIMIT 1) AS p",
                    {
                        "ids": [sid for sid, _, _ in found],
                        "last": n - 1,
                        "start": start_ms,
                        "step": step_ms,
                        "window": window_ms,
                    },
                )
                for sid, k, t, v in cur:
                    row = samples.get(sid)
                    if row is None:
                        row = samples[sid] = [None] * n
                    row[k] = (t, v)
        return [
            SteppedSeries(metric, dict(lab), samples[sid]) for sid, metric, lab in found if sid in samples
        ]

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

    def max_stored_seq(self, tenant: str, agent: str, incarnation: str) -> int:
        rows = self._fetch(
            "SELECT coalesce(max(seq), 0) FROM reports"
            " WHERE tenant = %s AND agent = %s AND incarnation = %s",
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
