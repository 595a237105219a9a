"""The PostgreSQL store's connections: pool, schema check, error translation."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from lossproof.config import PG_WRITE_LOCK_TIMEOUT_S
from lossproof.store import pg_migrations as mig
from lossproof.store import quarantine, series_index
from lossproof.store.base import (
    CHECKED_TABLES,
    RowsChecked,
    SeriesCache,
    Store,
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
)
from lossproof.store.pg import parts
from lossproof.store.pg.common import (
    _LIBPQ_NOISE,
    INT8_MIN,
    _Conn,
    _is_data_error,
    _one_line,
    describe_dsn,
    log,
    open_connection,
)
from lossproof.store.pg.migrate import move_points


class PgCore(Store):
    """The state of a :class:`~lossproof.store.postgres.PostgresStore` and its connections: the pool
    (failing fast while the server is down, replaced once it is back), the schema check at start,
    driver errors translated. The write path (:mod:`.write`), compaction and retention
    (:mod:`.maintain`) and the read path build on it."""

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
        self._index = series_index.shared(("pg", dsn, schema))  # the read side's (store/series_index.py)
        self._pack_queue: list[tuple[int, int, int]] = []  # compaction: (series, first, last window)
        self._pack_log: list[int] = []  # compaction: the compact_batches rows of the queued round
        self._lock = threading.Lock()  # one write at a time
        self._tops = parts.StoredTops()  # the write path's, under _lock
        self._part_dirs = parts.PartDirectories()
        self._aside: list[quarantine.Damaged] = []  # damaged rows the write transaction set aside
        self._next_maintenance = 0.0

        conn = open_connection(dsn, connect_timeout)
        try:
            # the schema check waits on a migration's or a stranded session's lock no longer than a
            # write does; then it is an outage, waited out (worker/main.py), not a setup problem
            conn.execute(f"SET lock_timeout = '{PG_WRITE_LOCK_TIMEOUT_S}s'")
            self._check_schema(conn)
            if not readonly:
                self._warn_if_not_durable(conn)
        except psycopg.Error as e:
            transient = isinstance(e, psycopg.OperationalError | psycopg.errors.LockNotAvailable)
            raise (StoreUnavailable if transient else StoreError)(
                f"PostgreSQL {self._where}: {_one_line(e)}"
            ) from None
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
            # A write waiting on a lock (another session's stranded transaction, VACUUM FULL, a
            # migration) gives up and is retried, with the worker's heartbeat in between; waiting
            # on, it would be killed as stuck and leave its session queued for the lock.
            conn.execute(f"SET lock_timeout = '{PG_WRITE_LOCK_TIMEOUT_S}s'")
        # A session whose client died (killed as stuck, or by an operator) ends while it waits on
        # a lock or runs, instead of holding its place until it would next write to the socket.
        # PostgreSQL 14 and later; older servers do without.
        # (a server built without the check, e.g. on Windows, knows the name but refuses a value)
        with contextlib.suppress(psycopg.errors.UndefinedObject, psycopg.errors.InvalidParameterValue):
            conn.execute("SET client_connection_check_interval = '5s'")
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

    def check_rows(self, table: str, after_id: int | None, limit: int) -> RowsChecked:
        """See :meth:`Store.check_rows`: one statement (its own snapshot, READ COMMITTED) of up to
        ``limit`` rows by the primary key, in binary (no bytea as hex text)."""
        if table not in CHECKED_TABLES:
            raise ValueError(f"no such table to check: {table!r}")
        lo = INT8_MIN if after_id is None else after_id
        with self._conn() as conn:
            bcur = conn.cursor(binary=True)
            bcur.execute(
                f"SELECT {quarantine.ROW_COLUMNS[table]} FROM {table}"
                " WHERE id > %s::bigint ORDER BY id LIMIT %s::bigint",
                (lo, max(1, limit)),
            )
            rows: list[tuple[Any, ...]] = [(*(int(v) for v in r[:-1]), bytes(r[-1])) for r in bcur.fetchall()]
        if not rows:
            return RowsChecked(0, None, [])
        return RowsChecked(len(rows), int(rows[-1][0]), quarantine.damaged_rows(table, rows))

    def close(self) -> None:
        self._pool.close()
