"""The embedded store's connection and schema: opening the file, creating, checking and upgrading
the schema."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lossproof import heartbeat
from lossproof.durable import make_dirs
from lossproof.native_ext import _native
from lossproof.store import chunks, quarantine, series_index
from lossproof.store.base import (
    CHECKED_TABLES,
    RowsChecked,
    SeqRange,
    SeriesCache,
    Store,
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
)
from lossproof.store.embedded.checkpoint import LIMIT_FRAMES, Checkpointer
from lossproof.store.embedded.common import (
    _AGENT_COLUMNS,
    _INSERT_CHUNK,
    _QUARANTINE_FROM,
    _STORED_MAX,
    _V1_AGENT_COLUMNS,
    _V2_SHIFT_DEFAULT,
    AGENT_TABLES,
    APPLICATION_ID,
    CHUNKS_TABLE,
    METADATA_TABLE,
    QUARANTINE_TABLE,
    READABLE_FROM,
    SCHEMA,
    SCHEMA_VERSION,
    _AgentKey,
    _LedgerRow,
    log,
)

# SQLite's page cache per connection, in KiB. The worker's and the query process' connections keep
# the default; the compactor's connection reads each part and chunk once, so a big cache buys it
# nothing, and it is a second one in the worker: with 64 MiB it filled up while compacting big bodies
# and was most of the worker's peak RSS above its storing (tests/worker/test_worker_memory.py).
CACHE_KIB = 65536
COMPACTOR_CACHE_KIB = 2048
_MIGRATE_POINTS = 1_000_000  # version 2 points moved into chunks per transaction (about)


class SqliteCore(Store):
    """The state of a :class:`~lossproof.store.sqlite.SqliteStore`, its connection and its schema
    (created, checked, older versions upgraded). The write path (:mod:`.write`) and compaction
    (:mod:`.compact`) and the read path (:mod:`.read`) build on it."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        busy_timeout_ms: int = 30_000,
        cache_kib: int = CACHE_KIB,
        sync_commits: bool = True,
    ) -> None:
        self.path = Path(path)
        self._cache_kib = int(cache_kib)
        self._sync_commits = sync_commits
        self.readonly = readonly
        self._series = SeriesCache()
        self._lock = threading.Lock()  # guards against accidental concurrent use
        # What this writer knows it stored, for the first-write-wins check without reading the store
        # (per series a floor, the newest t stored when first looked up, and the (series, t) stored
        # since: see native/src/stored_times.rs). Valid while no other connection stores points: at
        # each write, when PRAGMA data_version says another connection committed, the parts' id
        # sequence tells whether it stored points (compaction only moves them; see write.py _write).
        self._stored = _native.StoredTimes(_STORED_MAX)
        self._newest_seen = -1  # the data_version the cache is valid for
        self._parts_seq = -1  # the parts' AUTOINCREMENT sequence it is valid for
        # this transaction's points written (series, t, part id), until COMMIT
        self._newest_new: list[tuple[chunks.I64, chunks.I64, int]] = []
        self._txn_bytes = 0  # what this transaction wrote to the WAL, about (checkpoint.py)
        # damaged rows this transaction set aside (logged once it commits), and the quarantine
        # table's newest id when the stored-times cache was last checked (see write.py)
        self._aside: list[quarantine.Damaged] = []
        self._aside_top = -1
        # Parsed part directories by part id (parts never change; a deleted one is forgotten).
        self._dirs: dict[int, tuple[chunks.PartLayout, chunks.I64, chunks.I64, chunks.I64]] = {}
        # Compaction's packing work, (series, first window, last window), done a slice per call;
        # on restart the scan is made again from meta.compact_after.
        self._pack_queue: list[tuple[int, int, int, int]] = []  # (series, windows from, to, raw points)
        self._pack_mark = 0
        self._pack_scan_done = True
        self._pack_top = 0  # meta.chunk_id_top when the scan was made (a flush since raises it)
        self._reclaiming = False  # giving free pages back (compact.py, _reclaim)
        self._wal_small = False  # the WAL truncated since the last compaction work
        # what compaction last saw of the parts: whether some were left, the newest one's at_ms
        self._parts_left = True
        self._last_part_ms = 0
        self._busy_timeout_ms = int(busy_timeout_ms)
        if readonly and not self.path.exists():
            # Let a query process start before the worker: create the empty store once.
            type(self)(self.path, busy_timeout_ms=busy_timeout_ms).close()
        try:
            self._con = self._connect(busy_timeout_ms)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open the store: {e}") from e
        # the writer's WAL checkpoints, off its thread (see checkpoint.py); not the compactor's
        # (a process of its own already) nor a reader's
        # (SQLite's own autocheckpoint stays, at the bound: it is what runs should the thread die)
        self._checkpointer: Checkpointer | None = None
        if not readonly and sync_commits:
            self._con.execute(f"PRAGMA wal_autocheckpoint = {LIMIT_FRAMES}")
            self._checkpointer = Checkpointer(self.path, busy_timeout_ms, owner=self)
        # The read side's series index, one per file in this process (see store/series_index.py).
        st = self.path.stat()
        self._index = series_index.shared(("sqlite", str(self.path.resolve()), st.st_dev, st.st_ino))
        try:
            if readonly and self._older_than(READABLE_FROM):
                # A reader of a file written by a much older lossproof: upgrade it once (as the
                # worker would), so the query process can start first. A file it can read as it is
                # is left to the worker: an upgrade under a running older worker would stop it.
                self._con.close()
                type(self)(self.path, busy_timeout_ms=busy_timeout_ms).close()
                self._con = self._connect(busy_timeout_ms)
            self._check_schema()
        except sqlite3.DatabaseError as e:
            self._con.close()
            raise StoreError(f"{self.path}: cannot open the store: {e}") from e
        except BaseException:
            self._con.close()
            raise

    # --- connection and schema ---------------------------------------------------------------

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            make_dirs(self.path.parent)  # durable: a store in new directories survives a power cut
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            con.execute(f"PRAGMA cache_size = -{self._cache_kib}")  # KiB
            con.execute("PRAGMA temp_store = MEMORY")
            if not self.readonly:
                # Takes effect only when the file is created (an existing store keeps its mode until
                # `lossproof store migrate` converts it): compaction gives free pages back.
                con.execute("PRAGMA auto_vacuum = INCREMENTAL")
                mode = _wal(con, busy_timeout_ms)
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
                # A handle that only compacts (the compactor's: ``sync_commits`` False) needs no
                # fsync per commit: compaction only moves points, and recovery keeps the WAL up to
                # its first bad frame, so a commit lost to a power cut leaves the old parts and
                # chunks; a commit of the worker (FULL, before it acknowledges anything to the log)
                # fsyncs the whole WAL, the compactor's frames included. The compactor's fsync was a
                # sixth of its time, all of it holding the write lock that the worker waits for.
                con.execute(f"PRAGMA synchronous = {'FULL' if self._sync_commits else 'NORMAL'}")
                con.execute("PRAGMA journal_size_limit = 67108864")
        except BaseException:
            con.close()
            raise
        return con

    def _check_schema(self) -> None:
        con = self._con
        if self.readonly:
            version = self._read_version()
            if version is None:
                raise StoreSchemaError(f"{self.path}: not an initialised lossproof store")
            self._refuse_newer(version)
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            version = self._read_version()
            if version is None:
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                tables = con.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()[0]
                if tables or app_id not in (0, APPLICATION_ID):
                    raise StoreSchemaError(f"{self.path}: database is not a lossproof store")
                con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT")
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            else:
                self._refuse_newer(version)
                if version == 1:
                    self._upgrade_v1()
            con.execute(METADATA_TABLE)
            con.execute(QUARANTINE_TABLE)
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if version is not None and version < 3:
            self._upgrade_v2()
        if version is not None and version < 4:
            self._upgrade_v3()
        if version is not None and version < SCHEMA_VERSION:
            self._set_version(SCHEMA_VERSION)
        self._rescan_raw_once()

    def enable_reclaim(self) -> bool:
        """Convert a store created before incremental auto-vacuum, whose compaction cannot give free
        pages back (compact.py, ``_reclaim``): a VACUUM, which rewrites the file. It needs about
        twice the file's size in free disk space (a copy in the temp directory, and a WAL that grows
        to about the store's size), and holds the write lock throughout: a worker's writes wait
        their busy timeout, then fail unacknowledged (nothing is lost; run it with the pipeline
        stopped). False, doing nothing, when the store already has it."""
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            try:
                if self._con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                    return False
                self._con.execute("PRAGMA auto_vacuum = INCREMENTAL")
                # VACUUM builds the new file in a temp database: on disk (the temp directory), not
                # in memory as _connect's temp_store = MEMORY would (a copy of the whole store)
                self._con.execute("PRAGMA temp_store = FILE")
                try:
                    self._con.execute("VACUUM")
                finally:
                    self._con.execute("PRAGMA temp_store = MEMORY")
            except (sqlite3.OperationalError, OSError) as e:
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            return True

    def _rescan_raw_once(self) -> None:
        """A store from before ``meta.chunk_id_top`` (see compact.py, the flush) may hold raw chunks
        at or below ``meta.compact_after``, which compaction's scan skips: scan once from the start."""
        if self._meta("chunk_id_top") is not None:
            return
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            if self._meta("chunk_id_top") is None:
                top, any_chunk = con.execute(
                    "SELECT coalesce(max(id), 0), EXISTS (SELECT 1 FROM chunks) FROM chunks"
                ).fetchone()
                values = [("chunk_id_top", str(top)), ("compact_after", "0")]
                if any_chunk and not int(self._meta("unpacked_flushes") or 0):
                    values += [("unpacked_flushes", "1"), ("unpacked_since_ms", "0")]  # due now
                con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values)
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _upgrade_v3(self) -> None:
        """Version 3 -> 4: reports gain their time (older ones keep 0, unknown)."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in con.execute("PRAGMA table_info(reports)")}
            if "time_ms" not in columns:  # a version 1 store got it when its tables were rebuilt
                con.execute("ALTER TABLE reports ADD COLUMN time_ms INTEGER NOT NULL DEFAULT 0")
            con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _set_version(self, version: int) -> None:
        """An upgrade that changes nothing stored, only what may be written from now on (version 4
        -> 5: PENDING chunks; 5 -> 6: sealed chunks and parts)."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _upgrade_v2(self) -> None:
        """Version 2 -> 3: the per-point table becomes chunks, about ``_MIGRATE_POINTS`` points (whole
        time buckets) per transaction, each moving the points into one chunk per series and deleting them
        together, so that a crash or kill leaves every point in exactly one of the two tables and
        the next open goes on from there. The last transaction drops the old table."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in CHUNKS_TABLE.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        shift = int(self._meta("bucket_shift") or _V2_SHIFT_DEFAULT)
        heartbeat.beat()  # (what comes before the first batch's beat can be slow on a cold disk)
        total = con.execute("SELECT count(*) FROM points").fetchone()[0]
        heartbeat.beat()
        log.info("store.upgrade_started", path=str(self.path), from_version=2, to_version=3, points=total)
        moved = 0
        while True:
            con.execute("BEGIN IMMEDIATE")
            try:
                first = con.execute("SELECT min(bucket) FROM points").fetchone()[0]
                if first is None:
                    con.execute("DROP TABLE points")
                    con.execute("DELETE FROM meta WHERE key = 'bucket_shift'")
                    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
                    con.execute("COMMIT")
                    break
                # up to _MIGRATE_POINTS points, whole buckets (one bucket at least)
                row = con.execute(
                    "SELECT bucket FROM points ORDER BY bucket LIMIT 1 OFFSET ?", (_MIGRATE_POINTS,)
                ).fetchone()
                if row is None:
                    row = con.execute("SELECT max(bucket) + 1 FROM points").fetchone()
                end = max(int(row[0]), first + 1)
                rows = con.execute(
                    "SELECT series_id, t, ifnull(v, 'NaN') FROM points WHERE bucket >= ? AND bucket < ?",
                    (first, end),
                ).fetchall()
                cols = np.array([(r[0], r[1]) for r in rows], dtype=np.int64).reshape(-1, 2)
                vs = np.array([float(r[2]) for r in rows], dtype=np.float64)
                sids, ts, vs = chunks.sort_dedup(cols[:, 0].copy(), cols[:, 1].copy(), vs)
                con.executemany(_INSERT_CHUNK, chunks.encode_batch(sids, ts, vs))
                con.execute("DELETE FROM points WHERE bucket >= ? AND bucket < ?", (first, end))
                con.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            moved += len(rows)
            log.info("store.upgrade_progress", path=str(self.path), points=moved, of=total, t=first << shift)
            heartbeat.beat()  # an upgrade of a large store takes minutes: a slow start, not a hung one
        log.info("store.upgrade_done", path=str(self.path), points=moved)

    def _upgrade_v1(self) -> None:
        """Version 1 -> 2, inside the opening transaction: the per-agent tables gain the incarnation
        in their key (rebuilt: SQLite cannot change a primary key in place; existing rows become
        incarnation ''), and the reports (digests) and conflicts tables are added. Reports stored
        before have no digest: a resend of one counts as a duplicate, as it did."""
        con = self._con
        con.execute("ALTER TABLE agents RENAME TO agents_v1")
        con.execute("ALTER TABLE ledger RENAME TO ledger_v1")
        for stmt in AGENT_TABLES.split(";"):
            if stmt.strip():
                con.execute(stmt)
        con.execute(
            f"INSERT INTO agents ({_AGENT_COLUMNS})"
            f" SELECT tenant, agent, '', {_V1_AGENT_COLUMNS.split(', ', 2)[2]}, 1, 0, 0 FROM agents_v1"
        )
        con.execute(
            "INSERT INTO ledger (tenant, agent, incarnation, kind, first, last, since_ms, reason)"
            " SELECT tenant, agent, '', kind, first, last, since_ms, reason FROM ledger_v1"
        )
        con.execute("DROP TABLE agents_v1")
        con.execute("DROP TABLE ledger_v1")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _older_than(self, version: int) -> bool:
        got = self._read_version()
        return got is not None and got < version

    def _meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _meta_set(self, **values: int) -> None:
        self._con.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
        )

    def _read_version(self) -> int | None:
        has_meta = self._con.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return None
        version = self._meta("schema_version")
        if version is None:
            raise StoreSchemaError(f"{self.path}: meta table has no schema_version")
        return int(version)

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{self.path}: store schema version {version} is newer than this lossproof "
                f"supports ({SCHEMA_VERSION}); upgrade lossproof or use another store path"
            )

    def _rollback(self) -> None:
        if self._con.in_transaction:
            self._con.execute("ROLLBACK")

    def close(self) -> None:
        try:
            if self._checkpointer is not None:
                self._checkpointer.close()
        finally:
            self._con.close()

    # --- helpers of the write and the read path ----------------------------------------------------

    def _set_aside(self, damaged: Sequence[quarantine.Damaged]) -> int:
        """Move the damaged rows into the quarantine table (store/quarantine.py), in the write
        transaction; how many were moved. What this writer knows it stored is forgotten (its points
        in them are no longer stored: a replay must store them again), and ``compact_gen`` counted
        up, so that a compaction step computed from them meanwhile is made again. Refused if a newer
        lossproof upgraded the store since it was opened: rows this code takes for damage may be
        ones it cannot read (a format it does not know, as sealed rows were to version 5)."""
        self._refuse_newer(self._read_version() or 0)
        now = time.time_ns() // 1_000_000
        moved = 0
        for d in damaged:
            cur = self._con.execute(
                f"INSERT INTO {quarantine.TABLE} ({quarantine.COLUMNS}) SELECT {_QUARANTINE_FROM[d.table]}",
                (d.reason, now, d.id),
            )
            if cur.rowcount:
                self._con.execute(f"DELETE FROM {d.table} WHERE id = ?", (d.id,))
                self._aside.append(d)
                moved += 1
            if d.table == "parts":
                self._dirs.pop(d.id, None)
        if moved:
            self._stored.clear()
            self._meta_set(compact_gen=int(self._meta("compact_gen") or 0) + 1)
        return moved

    def check_rows(self, table: str, after_id: int | None, limit: int) -> RowsChecked:
        """See :meth:`Store.check_rows`: one read (its own snapshot) of up to ``limit`` rows, by
        the rowid."""
        if table not in CHECKED_TABLES:
            raise ValueError(f"no such table to check: {table!r}")
        lo = -(1 << 63) if after_id is None else after_id
        with self._lock:
            try:
                rows = self._con.execute(
                    f"SELECT {quarantine.ROW_COLUMNS[table]} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
                    (lo, max(1, limit)),
                ).fetchall()
            except sqlite3.DatabaseError as e:  # busy, or SQLite's own pages damaged ("malformed")
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
        if not rows:
            return RowsChecked(0, None, [])
        return RowsChecked(len(rows), int(rows[-1][0]), quarantine.damaged_rows(table, rows))

    def _ledger_rows(self, key: _AgentKey) -> list[_LedgerRow]:
        return self._con.execute(
            "SELECT kind, first, last, since_ms, reason FROM ledger"
            " WHERE tenant = ? AND agent = ? AND incarnation = ? ORDER BY kind, first",
            key,
        ).fetchall()

    def _stored_digests(self, key: _AgentKey, ranges: Sequence[SeqRange]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for first, last in ranges:
            out.update(
                self._con.execute(
                    "SELECT seq, digest FROM reports WHERE tenant = ? AND agent = ? AND incarnation = ?"
                    " AND seq BETWEEN ? AND ?",
                    (*key, first, last),
                ).fetchall()
            )
        return out


def _wal(con: sqlite3.Connection, busy_timeout_ms: int) -> str:
    """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler, when
    another connection is creating the same new file at that moment (a query process and a worker
    starting together): retried until the busy timeout, like any other lock."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            return str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
