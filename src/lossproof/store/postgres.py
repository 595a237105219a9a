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
from collections.abc import Sequence
from typing import Any

from lossproof.log.base import LogGap
from lossproof.store import chunks
from lossproof.store import ledger as lg
from lossproof.store.base import (
    SERIES_CACHE_MAX,
    AgentSummary,
    Conflict,
    Ledger,
    Matcher,
    MetricMetadata,
    SeqRange,
    SeriesArrays,
    StoreError,
    WriteBatch,
    decode_points,
    matches_all,
)
from lossproof.store.pg.binary import (
    Int8Array,
    chunk_rows,
)
from lossproof.store.pg.common import (
    _LABELS_DECODER,
    DAY_MS,
    INT8_MAX,
    INT8_MIN,
    Retention,
    _Conn,
    _LedgerRow,
    connect_error,
    describe_dsn,
    open_connection,
    pg_text,
)
from lossproof.store.pg.maintain import PgMaintenance
from lossproof.store.pg.migrate import migrate, move_points
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


class PostgresStore(PgWriter, PgMaintenance):
    """See the module docstring. One instance per process; writes from one thread at a time,
    reads from any thread (each read takes its own pooled connection).

    Built from :mod:`lossproof.store.pg`: connections and schema (:class:`~.pg.core.PgCore`), the
    write path (:class:`~.pg.write.PgWriter`), compaction and retention
    (:class:`~.pg.maintain.PgMaintenance`); the read path is here."""

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
