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

import contextlib
import dataclasses
import itertools
import operator
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from lossproof.faults import crash_point
from lossproof.log.base import LogGap
from lossproof.obs.logging import get
from lossproof.store import chunks
from lossproof.store import ledger as lg
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
from lossproof.store.plan import Plan, Prior, Summary, digests_wanted, plan_batch

log = get(__name__)

SCHEMA_VERSION = 4
# The oldest schema a reader works with as it is (version 4 only adds report times, which a reader
# of version 3 does without).
READABLE_FROM = 3
APPLICATION_ID = 0x4C505346  # "LPSF": marks the file as a lossproof store

# Metric metadata, one row per (tenant, metric); the last write wins. Also created in a store written
# before it existed (same schema version: an added table, nothing else changes).
METADATA_TABLE = """
CREATE TABLE IF NOT EXISTS metadata (
    tenant TEXT NOT NULL,
    metric TEXT NOT NULL,
    type   TEXT NOT NULL,
    help   TEXT NOT NULL,
    unit   TEXT NOT NULL,
    PRIMARY KEY (tenant, metric)
) STRICT, WITHOUT ROWID
"""
# An unchanged row is not rewritten (senders repeat their metadata every minute or so).
_UPSERT_METADATA = (
    "INSERT INTO metadata VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, metric) DO UPDATE"
    " SET type = excluded.type, help = excluded.help, unit = excluded.unit"
    " WHERE type != excluded.type OR help != excluded.help OR unit != excluded.unit"
)

# The per-agent tables, keyed by incarnation since schema version 2 (see base.py, "Incarnations").
# Version 1 files are rebuilt into these by _upgrade_v1 (their rows get incarnation '').
AGENTS_TABLE = """
CREATE TABLE agents (
    tenant          TEXT NOT NULL,
    agent           TEXT NOT NULL,
    incarnation     TEXT NOT NULL DEFAULT '',  -- '' = an agent that sends none
    max_seq         INTEGER NOT NULL,
    stored_reports  INTEGER NOT NULL,
    missing_reports INTEGER NOT NULL,
    lost_reports    INTEGER NOT NULL,
    last_stored_ms  INTEGER NOT NULL,
    delayed_reports INTEGER NOT NULL DEFAULT 0,
    -- the last SpoolState the agent reported, spool_reported_ms 0 = never
    spool_pending_reports INTEGER NOT NULL DEFAULT 0,
    spool_pending_bytes   INTEGER NOT NULL DEFAULT 0,
    spool_oldest_ms       INTEGER NOT NULL DEFAULT 0,
    spool_first_pending   INTEGER NOT NULL DEFAULT 0,
    spool_last_seq        INTEGER NOT NULL DEFAULT 0,
    spool_reported_ms     INTEGER NOT NULL DEFAULT 0,
    first_seq        INTEGER NOT NULL DEFAULT 1,  -- where the incarnation's seq space starts
    first_seen_ms    INTEGER NOT NULL DEFAULT 0,
    conflict_reports INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, agent, incarnation)
) STRICT, WITHOUT ROWID
"""
LEDGER_TABLE = """
CREATE TABLE ledger (
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    incarnation TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL CHECK (kind IN ('stored', 'missing', 'lost', 'delayed')),
    first       INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    since_ms    INTEGER,  -- missing: when the hole was first seen, delayed: oldest pending in the agent
    reason      TEXT,     -- lost: why
    PRIMARY KEY (tenant, agent, incarnation, kind, first)
) STRICT, WITHOUT ROWID
"""
# One row per stored report: its content digest, which tells a resend from a reused seq, and its time.
REPORTS_TABLE = """
CREATE TABLE reports (
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    time_ms     INTEGER NOT NULL DEFAULT 0,  -- when the agent made it (0: unknown), see report_times_around
    PRIMARY KEY (tenant, agent, incarnation, seq)
) STRICT, WITHOUT ROWID
"""
# Reports whose seq was already stored with other content, kept whole (canonical msgpack points).
CONFLICTS_TABLE = """
CREATE TABLE conflicts (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    points      BLOB NOT NULL,
    n_points    INTEGER NOT NULL,
    detected_ms INTEGER NOT NULL,
    applied_ms  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant, agent, incarnation, seq, digest)  -- a re-read report is kept once
) STRICT
"""
AGENT_TABLES = ";".join([AGENTS_TABLE, LEDGER_TABLE, REPORTS_TABLE, CONFLICTS_TABLE]) + ";"
_AGENT_COLUMNS = (
    "tenant, agent, incarnation, max_seq, stored_reports, missing_reports, lost_reports,"
    " last_stored_ms, delayed_reports, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq, first_seen_ms, conflict_reports"
)
_V1_AGENT_COLUMNS = (
    "tenant, agent, max_seq, stored_reports, missing_reports, lost_reports, last_stored_ms,"
    " delayed_reports, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms"
)
_SUMMARY = (
    "last_stored_ms, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq, first_seen_ms, conflict_reports"
)

# Batches land in ``parts`` (one row each, every series of the batch); compaction turns them into
# ``chunks``, one row per series per compaction, then one per series per window. See chunks.py.
CHUNKS_TABLE = """
CREATE TABLE IF NOT EXISTS chunks (
    id        INTEGER PRIMARY KEY,  -- write order: of two points with one (series, t) the lower id wins
    series_id INTEGER NOT NULL,
    t_min     INTEGER NOT NULL,
    t_max     INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    data      BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks (series_id, t_max, t_min);
CREATE TABLE IF NOT EXISTS parts (
    -- never reused (AUTOINCREMENT): ids order the parts, and readers cache directories by id
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    t_min INTEGER NOT NULL,
    t_max INTEGER NOT NULL,
    n     INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,     -- the batch's now_ms: compaction turns old parts into chunks
    data  BLOB NOT NULL
) STRICT;
"""

SCHEMA = f"""
CREATE TABLE series (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    labels_json TEXT NOT NULL,  -- canonical: sorted keys, compact
    UNIQUE (tenant, metric, labels_json)
) STRICT;

{CHUNKS_TABLE}

{AGENT_TABLES}

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY,
    partition  INTEGER NOT NULL,
    log_offset INTEGER NOT NULL,
    tenant     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    payload    BLOB NOT NULL,
    at_ms      INTEGER NOT NULL,
    UNIQUE (partition, log_offset)  -- a re-read record is dead-lettered once
) STRICT;

CREATE TABLE log_gaps (
    partition   INTEGER NOT NULL,
    first       INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    detected_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, first, last)
) STRICT, WITHOUT ROWID;
"""

_INSERT_CHUNK = "INSERT INTO chunks (series_id, t_min, t_max, n, data) VALUES (?, ?, ?, ?, ?)"
# The chunks of each series of a JSON array ?1 that may hold points in [?2, ?3]: one statement, an
# index range from (series, ?2) on for each.
_SELECT_CHUNKS_OF = (
    "SELECT c.series_id, c.id, c.data FROM json_each(?1) j CROSS JOIN chunks c"
    " ON c.series_id = j.value AND c.t_max >= ?2 AND c.t_min <= ?3"
)
# The newest t stored of each series in a JSON array: one index seek each (max() of an index suffix).
_NEWEST = "SELECT value, (SELECT max(t_max) FROM chunks WHERE series_id = value) FROM json_each(?)"
# Unpacked chunks after ?1, in id order, with the first byte of their data (the encoding).
_SCAN_RAW = (
    "SELECT id, series_id, t_min, t_max, n FROM chunks WHERE id > ?1 AND substr(data, 1, 1) = ?2"
    " ORDER BY id LIMIT ?3"
)
_SCAN_LIMIT = 200_000
_PACK_AGE_MS = 300_000
# The chunks to pack for a JSON array of [series, from, to]: an index range each.
_PACK_READ = (
    "SELECT c.id, c.series_id, c.data FROM json_each(?) j CROSS JOIN chunks c"
    " ON c.series_id = j.value ->> 0 AND c.t_max >= j.value ->> 1 AND c.t_min < j.value ->> 2"
)
# Parts are turned into chunks once there are this many, or this many points in them, or the oldest
# is this old: readers look into every part that overlaps their range, so there must be few.
_PART_FLUSH_COUNT = 8
_PART_FLUSH_POINTS = 2_000_000
_PART_FLUSH_AGE_MS = 30_000
# Points one flush takes at most (whole parts, one at least): its columns are held a few times over
# in memory (decoded, sorted, encoded), ~100 bytes a point in all.
_FLUSH_MAX_POINTS = 500_000
_PACK_MAX_POINTS = 200_000
_PART_ORDER = 1 << 62  # a part's rank among a series' chunks when merging: after all of them
_NONE = -(1 << 63)  # "no point stored" in the newest-t cache
_NEWEST_MAX = 2_000_000
_MIGRATE_POINTS = 1_000_000  # version 2 points moved into chunks per transaction (about)
_V2_SHIFT_DEFAULT = 16

_LABELS_DECODER = msgspec.json.Decoder(dict[str, str])

# in-memory key of a series: (tenant, metric, label items in the order the caller gave them)
_SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items())
_LedgerRow = lg.LedgerRow
_AgentKey = tuple[str, str, str]  # (tenant, agent, incarnation)


class SqliteStore(Store):
    """See the module docstring. One instance per process; use it from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._series = SeriesCache()
        self._labels: dict[int, dict[str, str]] = {}
        self._lock = threading.Lock()  # guards against accidental concurrent use
        # The newest t stored per series (_NONE: none), for the writer's first-write-wins check.
        # Valid while no other connection commits: PRAGMA data_version tells (see write_batch).
        self._newest: dict[int, int] = {}
        self._newest_seen = -1  # the data_version the cache is valid for
        self._newest_new: list[tuple[chunks.I64, chunks.I64]] = []  # this transaction's, until COMMIT
        # Parsed part directories by part id (parts never change; a deleted one is forgotten).
        self._dirs: dict[int, tuple[chunks.PartLayout, chunks.I64, chunks.I64, chunks.I64]] = {}
        # Compaction's packing work, (series, first window, last window), done a slice per call;
        # on restart the scan is made again from meta.compact_after.
        self._pack_queue: list[tuple[int, int, int, int]] = []  # (series, windows from, to, raw points)
        self._pack_mark = 0
        self._pack_scan_done = True
        if readonly and not self.path.exists():
            # Let a query process start before the worker: create the empty store once.
            SqliteStore(self.path, busy_timeout_ms=busy_timeout_ms).close()
        try:
            self._con = self._connect(busy_timeout_ms)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open the store: {e}") from e
        try:
            if readonly and self._older_than(READABLE_FROM):
                # A reader of a file written by a much older lossproof: upgrade it once (as the
                # worker would), so the query process can start first. A file it can read as it is
                # is left to the worker: an upgrade under a running older worker would stop it.
                self._con.close()
                SqliteStore(self.path, busy_timeout_ms=busy_timeout_ms).close()
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            con.execute("PRAGMA cache_size = -65536")  # KiB
            con.execute("PRAGMA temp_store = MEMORY")
            if not self.readonly:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
                con.execute("PRAGMA synchronous = FULL")
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
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if version is not None and version < 3:
            self._upgrade_v2()
        if version is not None and version < 4:
            self._upgrade_v3()

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
        total = con.execute("SELECT count(*) FROM points").fetchone()[0]
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
        self._con.close()

    # --- writes --------------------------------------------------------------------------------

    def write_batch(self, batch: WriteBatch) -> WriteResult:
        pending: dict[_SeriesKey, int] = {}
        with self._write(pending, "store.before_commit"):  # chaos scenario 2 kills -9 there
            return self._apply(batch, pending)

    @contextlib.contextmanager
    def _write(self, pending: dict[_SeriesKey, int], crash_at: str) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite's
        and the OS's errors become :class:`StoreUnavailable`), under the lock. After COMMIT, and
        only then, the series ids in ``pending`` and the newest t of what was written are cached:
        a rolled-back id could be handed out again."""
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            self._newest_new.clear()
            try:
                self._con.execute("BEGIN IMMEDIATE")
                seen = self._con.execute("PRAGMA data_version").fetchone()[0]
                if seen != self._newest_seen or len(self._newest) > _NEWEST_MAX:
                    self._newest.clear()  # another connection committed: what it stored is unknown here
                    self._newest_seen = seen
                yield
                crash_point(crash_at)
                self._con.execute("COMMIT")
            except (sqlite3.OperationalError, OSError) as e:
                self._rollback()
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            except BaseException:
                self._rollback()
                raise
            self._series.add_committed(pending)
            self._committed_newest()

    def _committed_newest(self) -> None:
        for sids, top in self._newest_new:
            self._newest.update(zip(sids.tolist(), top.tolist(), strict=True))
        self._newest_new.clear()

    def _apply(self, batch: WriteBatch, pending: dict[_SeriesKey, int]) -> WriteResult:
        con = self._con
        now = batch.now_ms
        work = lg.group_batch(batch)
        cols = Columns()
        resolve = partial(self._resolve, pending)
        plan = plan_batch(work, self._prior(work), now)
        for (tenant, _, _), r, _ in plan.reports:
            cols.add(tenant, r.points, self._series, resolve)
        if plan.reports:
            con.executemany(
                "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", plan.report_rows()
            )
        if plan.conflicts:
            con.executemany(
                "INSERT INTO conflicts (tenant, agent, incarnation, seq, digest, points, n_points,"
                " detected_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                plan.conflict_rows(),
            )
        self._save_plan(plan)
        for tenant, group in itertools.groupby(batch.samples, key=operator.itemgetter(0)):
            cols.add(tenant, (p for _, p in group), self._series, resolve)
        for tenant, runs in itertools.groupby(batch.series, key=operator.itemgetter(0)):
            cols.add_series(tenant, (x for _, x in runs), self._series, resolve)
        written = self._write_points(cols, now)

        if batch.dead_letters:
            con.executemany(
                "INSERT INTO dead_letters (partition, log_offset, tenant, reason, payload, at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(d.partition, d.offset, d.tenant, d.reason, d.payload, now) for d in batch.dead_letters],
            )
        if batch.gaps:
            con.executemany(
                "INSERT INTO log_gaps VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(g.partition, g.first, g.last, g.reason, g.detected_ms) for g in batch.gaps],
            )
        if batch.metadata:
            con.executemany(
                _UPSERT_METADATA,
                [(m.tenant, m.metric, m.type, m.help, m.unit) for m in latest_metadata(batch.metadata)],
            )
        return WriteResult(written, plan.stored, plan.duplicates, plan.conflicted)

    def _prior(self, work: dict[_AgentKey, lg.AgentWork]) -> Prior:
        """What :func:`plan_batch` needs, agent by agent: the summary and ledger rows of the batch's
        incarnations; of the other incarnations, with seqs still delayed, of an agent id that gets a
        new one; the stored digests of the seqs the batch repeats."""
        con = self._con
        prior = Prior()
        new_ids: set[tuple[str, str]] = set()
        for key in work:
            row = con.execute(
                f"SELECT {_SUMMARY} FROM agents WHERE tenant = ? AND agent = ? AND incarnation = ?", key
            ).fetchone()
            if row is None:
                new_ids.add(key[:2])
            else:
                prior.agents[key] = Summary.of(row)
                prior.ledgers[key] = self._ledger_rows(key)
        for tenant, agent in new_ids:
            for inc, *row in con.execute(
                f"SELECT incarnation, {_SUMMARY} FROM agents WHERE tenant = ? AND agent = ?"
                " AND delayed_reports > 0",
                (tenant, agent),
            ).fetchall():
                key = (tenant, agent, inc)
                if key not in work:
                    prior.agents[key] = Summary.of(row)
                    prior.ledgers[key] = self._ledger_rows(key)
        for key, seqs in digests_wanted(work, prior).items():
            prior.digests[key] = self._stored_digests(key, lg.from_seqs(seqs))
        return prior

    def _save_plan(self, plan: Plan) -> None:
        """The plan's ledger rows and agent rows (conflicts recounted where some were added)."""
        if gone := plan.ledger_deletes():
            self._con.executemany(
                "DELETE FROM ledger WHERE tenant = ? AND agent = ? AND incarnation = ? AND kind = ?"
                " AND first = ?",
                gone,
            )
        if added := plan.ledger_inserts():
            self._con.executemany(
                "INSERT INTO ledger (tenant, agent, incarnation, kind, first, last, since_ms, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                added,
            )
        rows = []
        for u in plan.agents:
            row = u.row
            if u.recount_conflicts:
                n = self._con.execute(
                    "SELECT count(*) FROM conflicts WHERE tenant = ? AND agent = ? AND incarnation = ?", u.key
                ).fetchone()[0]
                row = u.row_with(int(n))
            rows.append(row)
        if rows:
            self._con.executemany(
                f"INSERT OR REPLACE INTO agents ({_AGENT_COLUMNS}) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

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

    def _resolve(
        self,
        pending: dict[_SeriesKey, int],
        key: _SeriesKey,
        tenant: str,
        metric: str,
        labels: dict[str, str],
    ) -> int:
        sid = self._series.get(key)
        if sid is None:
            sid = pending.get(key)
            if sid is None:
                sid = self._series_id(key, tenant, metric, labels, pending)
        return sid

    def _write_points(self, cols: Columns, now_ms: int) -> int:
        """Write the columns as one part, minus the points already stored; returns how many points
        were written. Call inside the write transaction (``_write``)."""
        if not len(cols):
            return 0
        sids, ts, vs = cols.sorted()
        starts, ends = chunks.series_bounds(sids)
        batch_sids = sids[starts]
        newest = self._newest_of(batch_sids)
        maybe = ts[starts] <= newest
        if maybe.any():
            may = dict(zip(batch_sids[maybe].tolist(), newest[maybe].tolist(), strict=True))
            sids, ts, vs = drop_stored(sids, ts, vs, may, self._stored_ts)
            if not len(ts):
                return 0
            starts, ends = chunks.series_bounds(sids)
            newest = newest[np.searchsorted(batch_sids, sids[starts])]
        self._con.execute(
            "INSERT INTO parts (t_min, t_max, n, at_ms, data) VALUES (?, ?, ?, ?, ?)",
            (int(ts.min()), int(ts.max()), len(ts), now_ms, chunks.encode_part(sids, ts, vs)),
        )
        # the cache's new value, once committed: a backfill leaves a series' newest t as it was
        self._newest_new.append((sids[starts], np.maximum(newest, ts[ends - 1])))
        return len(ts)

    def _newest_of(self, sids: chunks.I64) -> chunks.I64:
        """The newest t stored of each series (_NONE: none), from the cache or else the store."""
        cache = self._newest
        ids = sids.tolist()
        missing = [sid for sid in ids if sid not in cache]
        if missing:
            rows = self._con.execute(_NEWEST, (msgspec.json.encode(missing),))
            top = np.array([_NONE if t is None else t for _, t in rows], dtype=np.int64)
            want = np.array(missing, dtype=np.int64)
            for _, _, (psids, ptmax, _) in self._parts_dirs(-(1 << 63), (1 << 63) - 1):
                if len(psids):
                    idx = np.minimum(np.searchsorted(psids, want), len(psids) - 1)
                    hit = psids[idx] == want
                    top[hit] = np.maximum(top[hit], ptmax[idx[hit]])
            cache.update(zip(missing, top.tolist(), strict=True))
        return np.array([cache[sid] for sid in ids], dtype=np.int64)

    def _stored_ts(self, items: list[tuple[int, int, int]]) -> list[chunks.I64]:
        """The stored timestamps of each ``(series, from_ms, to_ms)``: one pass over the parts for
        all of them (read over the union of their ranges, then cut)."""
        lo, hi = min(f for _, f, _ in items), max(t for _, _, t in items)
        got = self._series_points([(sid, "", {}) for sid, _, _ in items], lo, hi)
        out = []
        for (_, f, t), (ts, _) in zip(items, got, strict=True):
            out.append(ts[(ts >= f) & (ts <= t)])
        return out

    def _series_id(
        self,
        key: _SeriesKey,
        tenant: str,
        metric: str,
        labels: dict[str, str],
        pending: dict[_SeriesKey, int],
    ) -> int:
        text = labels_text(labels)
        row = self._con.execute(
            "SELECT id FROM series WHERE tenant = ? AND metric = ? AND labels_json = ?",
            (tenant, metric, text),
        ).fetchone()
        if row is None:
            row = self._con.execute(
                "INSERT INTO series (tenant, metric, labels_json) VALUES (?, ?, ?) RETURNING id",
                (tenant, metric, text),
            ).fetchone()
        sid = int(row[0])
        pending[key] = sid
        return sid

    def _ledger_rows(self, key: _AgentKey) -> list[_LedgerRow]:
        return self._con.execute(
            "SELECT kind, first, last, since_ms, reason FROM ledger"
            " WHERE tenant = ? AND agent = ? AND incarnation = ? ORDER BY kind, first",
            key,
        ).fetchall()

    # --- compaction ----------------------------------------------------------------------------

    def compact(self, now_ms: int, max_series: int = 2000) -> CompactResult:
        """See :meth:`Store.compact`. Two steps: parts become one raw chunk per series (a flush,
        ``_flush_parts``), and raw chunks are packed per series and window (``_pack_due``)."""
        with self._write({}, "store.compact_before_commit"):
            return self._compact(now_ms, max_series)

    def _flush_parts(self, now_ms: int) -> CompactResult | None:
        """Turn the oldest parts into one raw chunk per series, if they are due (see
        ``_PART_FLUSH_*``); None when they are not."""
        con = self._con
        live = con.execute("SELECT id, n, at_ms FROM parts ORDER BY id").fetchall()
        points = sum(n for _, n, _ in live)
        if not live or not (
            len(live) >= _PART_FLUSH_COUNT
            or points >= _PART_FLUSH_POINTS
            or live[0][2] <= now_ms - _PART_FLUSH_AGE_MS
        ):
            return None
        take: list[int] = []
        n = 0
        for pid, count, _ in live:  # the oldest ones: the parts left are newer than every chunk
            if take and n + count > _FLUSH_MAX_POINTS:
                break
            take.append(pid)
            n += count
        cols = []
        size = 0
        for pid in take:
            (data,) = con.execute("SELECT data FROM parts WHERE id = ?", (pid,)).fetchone()
            size += len(data)
            cols.append((pid, *chunks.decode_part(data)))
        order = np.concatenate([np.full(len(c[1]), c[0], dtype=np.int64) for c in cols])
        sids = np.concatenate([c[1] for c in cols])
        ts = np.concatenate([c[2] for c in cols])
        vs = np.concatenate([c[3] for c in cols])
        pick = np.lexsort((order, ts, sids))  # by series, t, and the older part first
        del order
        sids, ts, vs = chunks.dedup_sorted(sids[pick], ts[pick], vs[pick])
        rows = chunks.encode_batch(sids, ts, vs)
        con.executemany(_INSERT_CHUNK, rows)
        con.execute("DELETE FROM parts WHERE id <= ?", (take[-1],))
        flushes = int(self._meta("unpacked_flushes") or 0)
        self._meta_set(unpacked_flushes=flushes + 1)
        if not flushes:
            self._meta_set(unpacked_since_ms=now_ms)
        out = sum(len(r.data) for r in rows)
        # more: the parts left, and the chunks just made may fill a window to pack
        return CompactResult(len(rows), len(take), len(rows), size, out, len(ts), more=True)

    def _compact(self, now_ms: int, max_series: int) -> CompactResult:
        flushed = self._flush_parts(now_ms)
        if flushed is not None:
            return flushed
        if not self._pack_queue:
            if not self._pack_due(now_ms):
                return CompactResult()
            self._scan_unpacked()
        # at most max_series series, and about _PACK_MAX_POINTS raw points (memory: ~150 B a point)
        k, n = 0, 0
        queue = self._pack_queue
        while k < min(max_series, len(queue)) and (k == 0 or n + queue[k][3] <= _PACK_MAX_POINTS):
            n += queue[k][3]
            k += 1
        take = queue[:k]
        del queue[:k]
        res = [0, 0, 0, 0, 0]  # chunks in, chunks out, bytes in, bytes out, points
        self._pack(
            [(sid, lo * COMPACT_WINDOW_MS, (hi + 1) * COMPACT_WINDOW_MS) for sid, lo, hi, _ in take], res
        )
        more = bool(self._pack_queue)
        if not more:
            self._meta_set(compact_after=self._pack_mark)
            if self._pack_scan_done:
                self._meta_set(unpacked_flushes=0, unpacked_since_ms=0)
            else:
                more = True
        return CompactResult(len(take), res[0], res[1], res[2], res[3], res[4], more)

    def _pack_due(self, now_ms: int) -> bool:
        """Packing runs after every ``COMPACT_MIN_CHUNKS`` flushes (a series then has about that
        many raw chunks in its open window), or ``_PACK_AGE_MS`` after the first flush not packed
        yet, so that slow series and closed windows get packed too."""
        flushes = int(self._meta("unpacked_flushes") or 0)
        since = int(self._meta("unpacked_since_ms") or 0)
        return flushes >= COMPACT_MIN_CHUNKS or (flushes > 0 and since <= now_ms - _PACK_AGE_MS)

    def _scan_unpacked(self) -> None:
        """Queue every series with raw chunks written after ``meta.compact_after`` (ids only grow),
        with the windows they reach, ``_SCAN_LIMIT`` chunks at a time."""
        after = int(self._meta("compact_after") or 0)
        rows = self._con.execute(_SCAN_RAW, (after, bytes((chunks.RAW,)), _SCAN_LIMIT)).fetchall()
        self._pack_scan_done = len(rows) < _SCAN_LIMIT
        self._pack_mark = rows[-1][0] if rows else after
        if not rows:
            return
        cols = np.array(rows, dtype=np.int64)
        cols = cols[np.lexsort((cols[:, 0], cols[:, 1]))]
        starts, _ = chunks.series_bounds(cols[:, 1].copy())
        lo = np.minimum.reduceat(cols[:, 2] // COMPACT_WINDOW_MS, starts)
        hi = np.maximum.reduceat(cols[:, 3] // COMPACT_WINDOW_MS, starts)
        points = np.add.reduceat(cols[:, 4], starts)
        self._pack_queue = list(
            zip(cols[starts, 1].tolist(), lo.tolist(), hi.tolist(), points.tolist(), strict=True)
        )

    def _meta_set(self, **values: int) -> None:
        self._con.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()]
        )

    def _pack(self, items: Sequence[tuple[int, int, int]], res: list[int]) -> None:
        """For each ``(series, from_ms, to_ms)``: merge the series' chunks overlapping
        [from_ms, to_ms) into one packed chunk per window (a chunk reaching outside the range takes
        its other windows along; see :func:`chunks.pack`): one read, one delete and one insert
        statement for all of them."""
        con = self._con
        found = con.execute(_PACK_READ, (msgspec.json.encode(items),)).fetchall()
        if not found:
            return
        out, points = chunks.pack(found, COMPACT_WINDOW_MS)
        con.executemany("DELETE FROM chunks WHERE id = ?", [(cid,) for cid, _, _ in found])
        con.executemany(
            "INSERT INTO chunks (id, series_id, t_min, t_max, n, data) VALUES (?, ?, ?, ?, ?, ?)", out
        )
        res[0] += len(found)
        res[1] += len(out)
        res[2] += sum(len(r[2]) for r in found)
        res[3] += sum(len(r.data) for r in out)
        res[4] += points

    # --- reads ---------------------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any]) -> list[Any]:
        return self._con.execute(sql, tuple(params)).fetchall()

    def agents(self, tenant: str) -> list[AgentSummary]:
        with self._lock:
            rows = self._read(
                "SELECT agent, max_seq, stored_reports, missing_reports, lost_reports, last_stored_ms,"
                " delayed_reports, spool_reported_ms, incarnation, first_seq, first_seen_ms,"
                " conflict_reports FROM agents WHERE tenant = ? ORDER BY agent, first_seen_ms, incarnation",
                (tenant,),
            )
        return [AgentSummary(*r) for r in rows]

    def ledger(self, tenant: str, agent: str, incarnation: str | None = None) -> Ledger | None:
        with self._lock:
            self._con.execute("BEGIN")
            try:
                sql = (
                    "SELECT incarnation, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
                    " spool_first_pending, spool_last_seq, spool_reported_ms, first_seq"
                    " FROM agents WHERE tenant = ? AND agent = ?"
                )
                if incarnation is None:
                    latest = " ORDER BY first_seen_ms DESC, incarnation LIMIT 1"
                    known = self._read(sql + latest, (tenant, agent))
                else:
                    known = self._read(sql + " AND incarnation = ?", (tenant, agent, incarnation))
                rows: list[_LedgerRow] = []
                conflict_seqs: list[int] = []
                if known:
                    key = (tenant, agent, known[0][0])
                    rows = self._ledger_rows(key)
                    conflict_seqs = [
                        s
                        for (s,) in self._read(
                            "SELECT DISTINCT seq FROM conflicts WHERE tenant = ? AND agent = ?"
                            " AND incarnation = ? ORDER BY seq",
                            key,
                        )
                    ]
            finally:
                self._con.execute("COMMIT")
        if not known:
            return None
        inc, *sp, first_seq = known[0]
        spool = lg.spool_state(tenant, agent, inc, sp) if sp[5] else None
        return dataclasses.replace(
            lg.from_rows(rows, spool),
            incarnation=inc,
            first_seq=first_seq,
            conflicts=lg.from_seqs(conflict_seqs),
        )

    def replay_wanted(
        self, tenant: str, agent: str, seen_before_ms: int, incarnation: str = ""
    ) -> list[SeqRange]:
        with self._lock:
            rows = self._read(
                "SELECT first, last FROM ledger WHERE tenant = ? AND agent = ? AND incarnation = ?"
                " AND kind = 'missing' AND since_ms < ? ORDER BY first",
                (tenant, agent, incarnation, seen_before_ms),
            )
        return lg.normalize((a, b) for a, b in rows)

    def stored_digests(
        self, tenant: str, agent: str, incarnation: str, seqs: Sequence[SeqRange]
    ) -> dict[int, bytes]:
        with self._lock:
            self._con.execute("BEGIN")
            try:
                return self._stored_digests((tenant, agent, incarnation), seqs)
            finally:
                self._con.execute("COMMIT")

    def report_times_around(
        self, tenant: str, agent: str, incarnation: str, runs: Sequence[SeqRange]
    ) -> list[tuple[int, int]]:
        key = (tenant, agent, incarnation)
        pick = "SELECT time_ms FROM reports WHERE tenant = ? AND agent = ? AND incarnation = ?"
        out: list[tuple[int, int]] = []
        with self._lock:
            if self._older_than(SCHEMA_VERSION):  # a reader ahead of the writer's upgrade: no times yet
                return [(0, 0)] * len(runs)
            self._con.execute("BEGIN")
            try:
                for first, last in runs:
                    before = self._read(f"{pick} AND seq < ? ORDER BY seq DESC LIMIT 1", (*key, first))
                    after = self._read(f"{pick} AND seq > ? ORDER BY seq LIMIT 1", (*key, last))
                    out.append((before[0][0] if before else 0, after[0][0] if after else 0))
            finally:
                self._con.execute("COMMIT")
        return out

    def max_stored_seq(self, tenant: str, agent: str, incarnation: str) -> int:
        with self._lock:
            rows = self._read(
                "SELECT coalesce(max(seq), 0) FROM reports"
                " WHERE tenant = ? AND agent = ? AND incarnation = ?",
                (tenant, agent, incarnation),
            )
        return int(rows[0][0])

    def conflicts(self, tenant: str, agent: str | None = None) -> list[Conflict]:
        sql = (
            "SELECT id, tenant, agent, incarnation, seq, digest, n_points, detected_ms, applied_ms"
            " FROM conflicts WHERE tenant = ?"
        )
        params: list[Any] = [tenant]
        if agent is not None:
            sql += " AND agent = ?"
            params.append(agent)
        with self._lock:
            rows = self._read(sql + " ORDER BY id", params)
        return [Conflict(*r) for r in rows]

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

    def dead_letter_count(self, tenant: str | None = None) -> int:
        with self._lock:
            if tenant is None:
                return int(self._read("SELECT count(*) FROM dead_letters", ())[0][0])
            return int(self._read("SELECT count(*) FROM dead_letters WHERE tenant = ?", (tenant,))[0][0])

    def log_gaps(self) -> list[LogGap]:
        with self._lock:
            rows = self._read(
                "SELECT partition, first, last, reason, detected_ms FROM log_gaps ORDER BY partition, first",
                (),
            )
        return [LogGap(*r) for r in rows]

    def metadata(
        self, tenant: str, metric: str | None = None, limit: int | None = None
    ) -> list[MetricMetadata]:
        sql = "SELECT tenant, metric, type, help, unit FROM metadata WHERE tenant = ?"
        params: list[Any] = [tenant]
        if metric is not None:
            sql += " AND metric = ?"
            params.append(metric)
        sql += " ORDER BY metric"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(limit, 0))
        with self._lock:
            rows = self._read(sql, params)
        return [MetricMetadata(*r) for r in rows]

    # --- reads for PromQL selectors and the dashboard ----------------------------------------------

    def _matching(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[int, str, dict[str, str]]]:
        """(id, metric, labels) of the tenant's series matching all matchers, sorted; call under the lock.
        An equality matcher on the metric name narrows the scan to that metric (an index prefix);
        every other matcher is applied here, on the cached labels."""
        names = {m.value for m in matchers if m.name == "__name__" and m.op == "="}
        if len(names) > 1:
            return []
        if names:
            rows = self._read(
                "SELECT id, metric, labels_json FROM series WHERE tenant = ? AND metric = ?",
                (tenant, next(iter(names))),
            )
        else:
            rows = self._read("SELECT id, metric, labels_json FROM series WHERE tenant = ?", (tenant,))
        out: list[tuple[int, str, dict[str, str]]] = []
        for sid, metric, labels_json in rows:
            lab = self._labels.get(sid)
            if lab is None:
                lab = _LABELS_DECODER.decode(labels_json)
                if len(self._labels) > SERIES_CACHE_MAX:
                    self._labels.clear()
                self._labels[sid] = lab
            if matches_all(matchers, metric, lab):
                out.append((sid, metric, lab))
        out.sort(key=lambda r: (r[1], sorted(r[2].items())))
        return out

    def series(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return [(metric, dict(lab)) for _, metric, lab in self._matching(tenant, matchers)]

    def series_after(self, tenant: str, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        with self._lock:
            return self._read(
                "SELECT id, metric, labels_json FROM series WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
                (tenant, after_id, limit),
            )

    def series_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._read("SELECT tenant, count(*) FROM series GROUP BY tenant", ()))

    def metric_names(self, tenant: str) -> list[str]:
        with self._lock:
            rows = self._read(
                "SELECT DISTINCT metric FROM series WHERE tenant = ? ORDER BY metric", (tenant,)
            )
        return [m for (m,) in rows]

    def select_arrays(
        self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int
    ) -> list[SeriesArrays]:
        with self._lock, self._snapshot():
            return self._arrays(self._matching(tenant, matchers), from_ms, to_ms)

    def _arrays(
        self, found: Sequence[tuple[int, str, dict[str, str]]], from_ms: int, to_ms: int
    ) -> list[SeriesArrays]:
        """The points in [from_ms, to_ms] of the series ``found``; series without any are left
        out. Call under the lock, in a snapshot."""
        out: list[SeriesArrays] = []
        for (_, metric, lab), (ts, vs) in zip(found, self._series_points(found, from_ms, to_ms), strict=True):
            if len(ts):
                out.append(SeriesArrays(metric, dict(lab), ts, vs))
        return out

    def _series_points(
        self, found: Sequence[tuple[int, str, dict[str, str]]], from_ms: int, to_ms: int
    ) -> list[tuple[chunks.I64, chunks.F64]]:
        """Each series' points in [from_ms, to_ms]: its chunks that overlap the range (an index
        range each) and its slices of the parts that do (a seek into each part's directory)."""
        con = self._con
        extra: dict[int, list[tuple[int, chunks.I64, chunks.F64]]] = {}
        if found:
            want = np.array([sid for sid, _, _ in found], dtype=np.int64)
            for pid, layout, (psids, _, pstarts) in self._parts_dirs(from_ms, to_ms):
                if not len(psids):
                    continue
                idx = np.minimum(np.searchsorted(psids, want), len(psids) - 1)
                hits = np.flatnonzero(psids[idx] == want)
                if not len(hits):
                    continue
                with con.blobopen("parts", "data", pid, readonly=True) as blob:
                    whole = len(hits) * 16 > layout.series  # many series: one read beats many seeks
                    if whole:
                        blob.seek(layout.ts_offset)
                        cols = blob.read(16 * layout.points)
                    for i in hits.tolist():
                        a, b = int(pstarts[idx[i]]), int(pstarts[idx[i] + 1])
                        if whole:
                            tb = cols[8 * a : 8 * b]
                            vb = cols[8 * (layout.points + a) : 8 * (layout.points + b)]
                        else:
                            blob.seek(layout.ts_offset + 8 * a)
                            tb = blob.read(8 * (b - a))
                            blob.seek(layout.vs_offset + 8 * a)
                            vb = blob.read(8 * (b - a))
                        ts = np.frombuffer(tb, "<i8").astype(np.int64)
                        vs = np.frombuffer(vb, "<f8").astype(np.float64)
                        extra.setdefault(i, []).append((_PART_ORDER + pid, ts, vs))
        decoded: dict[int, list[tuple[int, chunks.I64, chunks.F64]]] = {}
        ids = msgspec.json.encode([sid for sid, _, _ in found])
        for sid, cid, data in con.execute(_SELECT_CHUNKS_OF, (ids, from_ms, to_ms)):
            decoded.setdefault(sid, []).append((cid, *chunks.decode(data)))
        return [
            chunks.merge_arrays(decoded.get(sid, []) + extra.get(i, []), from_ms, to_ms)
            for i, (sid, _, _) in enumerate(found)
        ]

    def _parts_dirs(
        self, from_ms: int, to_ms: int
    ) -> list[tuple[int, chunks.PartLayout, tuple[chunks.I64, chunks.I64, chunks.I64]]]:
        """(id, layout, (sids, tmax, starts)) of the parts overlapping [from_ms, to_ms]."""
        out = []
        live = self._con.execute("SELECT id, t_min, t_max FROM parts ORDER BY id").fetchall()
        for pid, t_min, t_max in live:
            if t_max < from_ms or t_min > to_ms:
                continue
            got = self._dirs.get(pid)
            if got is None:
                with self._con.blobopen("parts", "data", pid, readonly=True) as blob:
                    layout = chunks.part_layout(blob.read(16))
                    blob.seek(0)
                    got = (layout, *chunks.part_directory(blob.read(layout.dir_bytes), layout))
                self._dirs[pid] = got
            out.append((pid, got[0], got[1:]))
        if len(self._dirs) > 4 * len(live) + 64:  # forget the parts compaction removed
            ids = {pid for pid, _, _ in live}
            self._dirs = {k: v for k, v in self._dirs.items() if k in ids}
        return out

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction: every statement inside sees the same committed state."""
        self._con.execute("BEGIN")
        try:
            yield
        finally:
            self._con.execute("COMMIT")
