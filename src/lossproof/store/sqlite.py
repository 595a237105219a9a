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

Layout (schema version 1)
    ``series`` maps (tenant, metric, canonical labels JSON) to an integer id. ``points`` is keyed
    (bucket, series_id, t) with bucket = t >> ``bucket_shift`` (65.5 s): a batch carries about one
    point per series, and clustering by series alone made every batch dirty one page per series
    (WAL write amplification: 64k pages per 64k points, throughput falling as the file grew);
    clustering by a short time bucket first keeps a batch's inserts on few, recent pages. A read
    seeks once per bucket per series. The key is still unique per (series_id, t) (bucket is a
    function of t), inserts are ``ON CONFLICT DO NOTHING``: first write wins. ``ledger`` holds one
    row per stored / missing / lost range per agent, ``agents`` a summary row per agent. NaN values
    are stored as NULL (SQLite turns a bound NaN into NULL) and read back as NaN. ``metadata``
    holds one row per (tenant, metric): type, help, unit, the last write winning.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

from lossproof.faults import crash_point
from lossproof.log.base import LogGap
from lossproof.store import ledger as lg
from lossproof.store.base import (
    AgentSummary,
    Ledger,
    Matcher,
    MetricMetadata,
    PointLike,
    ReportWrite,
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
    latest_metadata,
    matches_all,
)

SCHEMA_VERSION = 1
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

SCHEMA_V1 = """
CREATE TABLE series (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    labels_json TEXT NOT NULL,  -- canonical: sorted keys, compact
    UNIQUE (tenant, metric, labels_json)
) STRICT;

CREATE TABLE points (
    bucket    INTEGER NOT NULL,  -- t >> meta.bucket_shift
    series_id INTEGER NOT NULL,
    t         INTEGER NOT NULL,  -- unix ms
    v         REAL,              -- NULL = NaN
    PRIMARY KEY (bucket, series_id, t)
) STRICT, WITHOUT ROWID;

CREATE TABLE agents (
    tenant          TEXT NOT NULL,
    agent           TEXT NOT NULL,
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
    PRIMARY KEY (tenant, agent)
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger (
    tenant   TEXT NOT NULL,
    agent    TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('stored', 'missing', 'lost', 'delayed')),
    first    INTEGER NOT NULL,
    last     INTEGER NOT NULL,
    since_ms INTEGER,  -- missing: when the hole was first seen, delayed: oldest pending in the agent
    reason   TEXT,     -- lost: why
    PRIMARY KEY (tenant, agent, kind, first)
) STRICT, WITHOUT ROWID;

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

BUCKET_SHIFT = 16  # for new files; an existing file's own value is read from meta
# ON CONFLICT DO NOTHING only skips key conflicts; OR IGNORE would also skip NOT NULL violations.
_INSERT_POINT = "INSERT INTO points (bucket, series_id, t, v) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
# The buckets in [?1, ?2] holding any point, one primary-key seek each (empty ones are skipped).
_SELECT_BUCKETS = (
    "WITH RECURSIVE b(x) AS (SELECT (SELECT min(bucket) FROM points WHERE bucket >= ?1)"
    " UNION ALL SELECT (SELECT min(bucket) FROM points WHERE bucket > x) FROM b WHERE x < ?2)"
    " SELECT x FROM b WHERE x <= ?2"
)
# One series over the buckets ?1..?2: a primary-key seek per bucket. Rows come out in t order in
# practice (the CTE counts up, each seek walks t upwards); _finish checks it in the pass it makes
# anyway rather than paying for an ORDER BY sort.
_SELECT_POINTS = (
    "WITH RECURSIVE b(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM b WHERE x < ?2)"
    " SELECT p.t, ifnull(p.v, 'NaN') FROM b CROSS JOIN points p"
    " ON p.bucket = b.x AND p.series_id = ?3 AND p.t >= ?4 AND p.t <= ?5"
)
_RUN_GAP = 64  # empty buckets worth seeking rather than starting another statement

_LABELS_ENCODER = msgspec.json.Encoder(order="sorted")
_LABELS_DECODER = msgspec.json.Decoder(dict[str, str])
_SERIES_CACHE_MAX = 2_000_000

# in-memory key of a series: (tenant, metric, label items in the order the caller gave them)
_SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items())
_LedgerRow = lg.LedgerRow


class SqliteStore(Store):
    """See the module docstring. One instance per process; use it from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._series: dict[_SeriesKey, int] = {}
        self._labels: dict[int, dict[str, str]] = {}
        self._lock = threading.Lock()  # guards against accidental concurrent use
        self._shift = BUCKET_SHIFT
        if readonly and not self.path.exists():
            # Let a query process start before the worker: create the empty store once.
            SqliteStore(self.path, busy_timeout_ms=busy_timeout_ms).close()
        try:
            self._con = self._connect(busy_timeout_ms)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open the store: {e}") from e
        try:
            self._check_schema()
            self._shift = int(self._meta("bucket_shift") or BUCKET_SHIFT)
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
                for stmt in SCHEMA_V1.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("bucket_shift", str(BUCKET_SHIFT))],
                )
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            else:
                self._refuse_newer(version)
                # (future) migrations from older versions go here, inside this transaction
            con.execute(METADATA_TABLE)
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

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
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            pending: dict[_SeriesKey, int] = {}
            self._con.execute("BEGIN IMMEDIATE")
            try:
                result = self._apply(batch, pending)
                crash_point("store.before_commit")  # chaos scenario 2: kill -9 inside the transaction
                self._con.execute("COMMIT")
            except (sqlite3.OperationalError, OSError) as e:
                self._rollback()
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            except BaseException:
                self._rollback()
                raise
            # Only ids of committed series may be cached: a rolled-back id could be handed out again.
            if len(self._series) + len(pending) > _SERIES_CACHE_MAX:
                self._series.clear()
            self._series.update(pending)
            return result

    def _apply(self, batch: WriteBatch, pending: dict[_SeriesKey, int]) -> WriteResult:
        con = self._con
        now = batch.now_ms
        reports: dict[tuple[str, str], list[ReportWrite]] = {}
        for r in batch.reports:
            reports.setdefault((r.tenant, r.agent), []).append(r)
        lost: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
        for lr in batch.lost:
            lost.setdefault((lr.tenant, lr.agent), []).append((lr.first, lr.last, lr.reason))
        spools = {(s.tenant, s.agent): s for s in batch.spool}

        rows: list[tuple[int, int, int, float]] = []
        stored_count = duplicates = 0
        for key in dict.fromkeys([*reports, *lost, *spools]):  # batch order: first write wins
            tenant, agent = key
            summary = con.execute(
                "SELECT last_stored_ms, spool_pending_reports, spool_pending_bytes, spool_oldest_ms,"
                " spool_first_pending, spool_last_seq, spool_reported_ms"
                " FROM agents WHERE tenant = ? AND agent = ?",
                key,
            ).fetchone()
            spool = spools.get(key)
            if spool is None and summary and summary[6]:
                spool = SpoolState(tenant, agent, *summary[1:])
            old_rows = self._ledger_rows(tenant, agent) if summary else []
            old = lg.from_rows(old_rows)
            new_seqs: set[int] = set()
            for r in reports.get(key, ()):
                if r.seq in new_seqs or lg.contains(old.stored, r.seq):
                    duplicates += 1
                    continue
                new_seqs.add(r.seq)
                self._point_rows(tenant, r.points, rows, pending)
            stored_count += len(new_seqs)
            new = lg.advance(old, lg.from_seqs(new_seqs), lost.get(key, ()), now, spool)
            self._save_ledger(tenant, agent, old_rows, lg.to_rows(new))
            last_stored = now if new_seqs else (summary[0] if summary else 0)
            max_seq = max(
                new.stored[-1][1] if new.stored else 0,
                new.lost[-1][1] if new.lost else 0,
                spool.last_seq if spool else 0,
            )
            sp = spool or SpoolState(tenant, agent, 0, 0, 0, 0, 0, 0)
            con.execute(
                "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tenant,
                    agent,
                    max_seq,
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
                ),
            )
        for tenant, p in batch.samples:
            self._point_rows(tenant, (p,), rows, pending)
        written = con.executemany(_INSERT_POINT, rows).rowcount if rows else 0

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
        return WriteResult(points_written=written, reports_stored=stored_count, reports_duplicate=duplicates)

    def _point_rows(
        self,
        tenant: str,
        points: Iterable[PointLike],
        out: list[tuple[int, int, int, float]],
        pending: dict[_SeriesKey, int],
    ) -> None:
        # The hot loop: one dict lookup per point; labels are canonicalized only on a cache miss.
        get = self._series.get
        append = out.append
        shift = self._shift
        for p in points:
            key = (tenant, p.metric, *p.labels.items())
            sid = get(key)
            if sid is None:
                sid = pending.get(key)
                if sid is None:
                    sid = self._series_id(key, tenant, p.metric, p.labels, pending)
            t = p.t
            append((t >> shift, sid, t, p.v))

    def _series_id(
        self,
        key: _SeriesKey,
        tenant: str,
        metric: str,
        labels: dict[str, str],
        pending: dict[_SeriesKey, int],
    ) -> int:
        labels_json = _LABELS_ENCODER.encode(labels).decode()
        row = self._con.execute(
            "SELECT id FROM series WHERE tenant = ? AND metric = ? AND labels_json = ?",
            (tenant, metric, labels_json),
        ).fetchone()
        if row is None:
            row = self._con.execute(
                "INSERT INTO series (tenant, metric, labels_json) VALUES (?, ?, ?) RETURNING id",
                (tenant, metric, labels_json),
            ).fetchone()
        sid = int(row[0])
        pending[key] = sid
        return sid

    def _ledger_rows(self, tenant: str, agent: str) -> list[_LedgerRow]:
        return self._con.execute(
            "SELECT kind, first, last, since_ms, reason FROM ledger"
            " WHERE tenant = ? AND agent = ? ORDER BY kind, first",
            (tenant, agent),
        ).fetchall()

    def _save_ledger(self, tenant: str, agent: str, old: list[_LedgerRow], new: list[_LedgerRow]) -> None:
        old_set, new_set = set(old), set(new)
        gone = [(tenant, agent, r[0], r[1]) for r in old if r not in new_set]
        added = [(tenant, agent, *r) for r in new if r not in old_set]
        if gone:
            self._con.executemany(
                "DELETE FROM ledger WHERE tenant = ? AND agent = ? AND kind = ? AND first = ?", gone
            )
        if added:
            self._con.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)", added)

    # --- reads ---------------------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any]) -> list[Any]:
        return self._con.execute(sql, tuple(params)).fetchall()

    def query(
        self, tenant: str, metric: str, from_ms: int, to_ms: int, labels: dict[str, str]
    ) -> list[Series]:
        out: list[Series] = []
        with self._lock:
            self._con.execute("BEGIN")  # one snapshot for the whole answer
            try:
                runs = _runs(
                    x for (x,) in self._read(_SELECT_BUCKETS, (from_ms >> self._shift, to_ms >> self._shift))
                )
                want = labels.items()
                candidates = self._read(
                    "SELECT id, labels_json FROM series WHERE tenant = ? AND metric = ?", (tenant, metric)
                )
                for sid, labels_json in candidates:
                    lab = self._labels.get(sid)
                    if lab is None:
                        lab = _LABELS_DECODER.decode(labels_json)
                        if len(self._labels) > _SERIES_CACHE_MAX:
                            self._labels.clear()
                        self._labels[sid] = lab
                    if not runs or not want <= lab.items():
                        continue
                    pts = []
                    for first, last in runs:
                        pts += self._read(_SELECT_POINTS, (first, last, sid, from_ms, to_ms))
                    if pts:
                        out.append(Series(metric=metric, labels=dict(lab), points=_finish(pts)))
            finally:
                self._con.execute("COMMIT")
        out.sort(key=lambda s: sorted(s.labels.items()))
        return out

    def agents(self, tenant: str) -> list[AgentSummary]:
        with self._lock:
            rows = self._read(
                "SELECT agent, max_seq, stored_reports, missing_reports, lost_reports, last_stored_ms,"
                " delayed_reports, spool_reported_ms FROM agents WHERE tenant = ? ORDER BY agent",
                (tenant,),
            )
        return [AgentSummary(*r) for r in rows]

    def ledger(self, tenant: str, agent: str) -> Ledger | None:
        with self._lock:
            self._con.execute("BEGIN")
            try:
                known = self._read(
                    "SELECT spool_pending_reports, spool_pending_bytes, spool_oldest_ms, spool_first_pending,"
                    " spool_last_seq, spool_reported_ms FROM agents WHERE tenant = ? AND agent = ?",
                    (tenant, agent),
                )
                rows = self._ledger_rows(tenant, agent) if known else []
            finally:
                self._con.execute("COMMIT")
        if not known:
            return None
        spool = SpoolState(tenant, agent, *known[0]) if known[0][5] else None
        return lg.from_rows(rows, spool)

    def replay_wanted(self, tenant: str, agent: str, seen_before_ms: int) -> list[SeqRange]:
        with self._lock:
            rows = self._read(
                "SELECT first, last FROM ledger WHERE tenant = ? AND agent = ? AND kind = 'missing'"
                " AND since_ms < ? ORDER BY first",
                (tenant, agent, seen_before_ms),
            )
        return lg.normalize((a, b) for a, b in rows)

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
                if len(self._labels) > _SERIES_CACHE_MAX:
                    self._labels.clear()
                self._labels[sid] = lab
            if matches_all(matchers, metric, lab):
                out.append((sid, metric, lab))
        out.sort(key=lambda r: (r[1], sorted(r[2].items())))
        return out

    def series(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return [(metric, dict(lab)) for _, metric, lab in self._matching(tenant, matchers)]

    def metric_names(self, tenant: str) -> list[str]:
        with self._lock:
            rows = self._read(
                "SELECT DISTINCT metric FROM series WHERE tenant = ? ORDER BY metric", (tenant,)
            )
        return [m for (m,) in rows]

    def select(self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int) -> list[Series]:
        out: list[Series] = []
        with self._lock:
            self._con.execute("BEGIN")  # one snapshot for the whole answer
            try:
                found = self._matching(tenant, matchers)
                runs = _runs(
                    x for (x,) in self._read(_SELECT_BUCKETS, (from_ms >> self._shift, to_ms >> self._shift))
                )
                for sid, metric, lab in found if runs else ():
                    pts: list[tuple[int, Any]] = []
                    for first, last in runs:
                        pts += self._read(_SELECT_POINTS, (first, last, sid, from_ms, to_ms))
                    if pts:
                        out.append(Series(metric=metric, labels=dict(lab), points=_finish(pts)))
            finally:
                self._con.execute("COMMIT")
        return out

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
        # A window spans at most this many buckets; past that, one seek per bucket costs more than
        # reading the points.
        spanned = ((window_ms - 1) >> self._shift) + 2
        if spanned > _MAX_LAST_SEEKS:
            return super().select_last(tenant, matchers, start_ms, end_ms, step_ms, window_ms)
        if end_ms < start_ms:
            return []
        sql = _select_last_sql(self._shift, spanned)
        out: list[SteppedSeries] = []
        with self._lock:
            self._con.execute("BEGIN")
            try:
                for sid, metric, lab in self._matching(tenant, matchers):
                    rows = self._read(sql, (start_ms, step_ms, sid, end_ms, window_ms))
                    samples = [None if r is None else _sample(r) for (r,) in rows]
                    if any(x is not None for x in samples):
                        out.append(SteppedSeries(metric, dict(lab), samples))
            finally:
                self._con.execute("COMMIT")
        return out


_MAX_LAST_SEEKS = 48


@lru_cache(maxsize=64)
def _select_last_sql(shift: int, spanned: int) -> str:
    """For each step end e (?1, ?1 + ?2, ... <= ?4): the latest point of series ?3 with
    e - ?5 < t <= e, as text "t v" (v printed so that it reads back bit for bit; NaN for NULL: not
    with ifnull(), as printf() of NULL gives '0.0', not NULL).
    coalesce() stops at the first bucket (newest first) holding one: usually one index seek."""
    subs = ", ".join(
        f"(SELECT t || ' ' || CASE WHEN v IS NULL THEN 'NaN' ELSE printf('%!.17g', v) END FROM points"
        f" WHERE bucket = (s.e >> {shift}) - {k} AND series_id = ?3 AND t > s.e - ?5 AND t <= s.e"
        " ORDER BY t DESC LIMIT 1)"
        for k in range(spanned)
    )
    # (the CTE column must not be called t or T: SQLite names are case-insensitive and an inner
    # reference would silently bind to points.t)
    return (
        "WITH RECURSIVE s(e) AS (SELECT ?1 UNION ALL SELECT e + ?2 FROM s WHERE e + ?2 <= ?4)"
        f" SELECT coalesce({subs}) FROM s"
    )


def _sample(text: str) -> tuple[int, float]:
    t, _, v = text.partition(" ")
    return int(t), float(v)


def _runs(buckets: Iterable[int]) -> list[tuple[int, int]]:
    """Group sorted bucket numbers into (first, last) runs, bridging short stretches of empty ones."""
    out: list[tuple[int, int]] = []
    for x in buckets:
        if out and x - out[-1][1] <= _RUN_GAP:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return out


def _finish(pts: list[tuple[int, Any]]) -> list[tuple[int, float]]:
    """NULL ('NaN' text) back to NaN, and make sure the points are in t order (one pass)."""
    prev = -1 << 63
    ordered = True
    for i, (t, v) in enumerate(pts):
        if v.__class__ is str:
            pts[i] = (t, math.nan)
        if t < prev:
            ordered = False
        prev = t
    if not ordered:
        pts.sort(key=lambda r: r[0])
    return pts
