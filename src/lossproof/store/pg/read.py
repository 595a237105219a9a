"""The PostgreSQL store's read path: queries, PromQL selectors, the ledger, agents, conflicts."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lossproof.log.base import LogGap
from lossproof.store import chunks
from lossproof.store import ledger as lg
from lossproof.store.base import (
    AgentSummary,
    Conflict,
    Ledger,
    Matcher,
    MetricMetadata,
    SeqRange,
    SeriesArrays,
    matches_all,
)
from lossproof.store.pg import parts
from lossproof.store.pg.binary import Int8Array
from lossproof.store.pg.common import (
    _LABELS_DECODER,
    INT8_MAX,
    INT8_MIN,
    _Conn,
    _LedgerRow,
)
from lossproof.store.pg.core import PgCore
from lossproof.store.quarantine import TABLE
from lossproof.store.series_index import Found, TenantIndex


class PgReader(PgCore):
    """The read path of the PostgreSQL store: each read takes its own pooled connection."""

    # --- reads ---------------------------------------------------------------------------------

    def _fetch(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._conn() as conn, conn.transaction():
            rows = conn.execute(query, params).fetchall()
        return rows

    # --- reads for PromQL selectors and the dashboard ----------------------------------------------

    @contextlib.contextmanager
    def _indexed(self, conn: _Conn, tenant: str) -> Iterator[TenantIndex | None]:
        """The tenant's series index, brought up to date over ``conn`` (see
        :mod:`lossproof.store.series_index`), used under its lock; None when it is disabled."""
        index = self._index
        with index.lock:
            index.sync_pg(conn.execute)
            yield index.tenant(tenant)

    def _matching(self, conn: _Conn, tenant: str, matchers: Sequence[Matcher]) -> list[Found]:
        """(id, metric, labels) of the tenant's series matching all matchers, sorted by metric then
        labels, from the series index (the same one as the embedded store's: matchers applied with
        RE2, never in SQL)."""
        with self._indexed(conn, tenant) as t:
            if t is not None:
                return t.sorted_found(t.match(matchers))
        return self._matching_sql(conn, tenant, matchers)

    def _matching_sql(self, conn: _Conn, tenant: str, matchers: Sequence[Matcher]) -> list[Found]:
        """:meth:`_matching` from the series table (the index disabled; the tests' reference). An
        equality matcher on the metric name narrows the read to that metric (an index prefix)."""
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
        out: list[Found] = []
        for sid, metric, labels_json in rows:
            lab = _LABELS_DECODER.decode(labels_json)
            if matches_all(matchers, metric, lab):
                out.append((int(sid), metric, tuple(sorted(lab.items()))))
        out.sort(key=lambda r: (r[1], r[2]))
        return out

    def series(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
        with self._conn() as conn, conn.transaction():
            found = self._matching(conn, tenant, matchers)
        return [(metric, dict(lab)) for _, metric, lab in found]

    def label_names(self, tenant: str, selectors: Sequence[Sequence[Matcher]] | None = None) -> list[str]:
        with self._conn() as conn, conn.transaction(), self._indexed(conn, tenant) as t:
            if t is not None:
                return t.sorted_label_names(t.match_any(selectors))
        return super().label_names(tenant, selectors)

    def label_values(
        self, tenant: str, name: str, selectors: Sequence[Sequence[Matcher]] | None = None
    ) -> list[str]:
        with self._conn() as conn, conn.transaction(), self._indexed(conn, tenant) as t:
            if t is not None:
                return t.sorted_label_values(name, t.match_any(selectors))
        return super().label_values(tenant, name, selectors)

    def series_after(self, tenant: str, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        rows = self._fetch(
            "SELECT id, metric, labels_json FROM series WHERE tenant = %s AND id > %s ORDER BY id LIMIT %s",
            (tenant, after_id, limit),
        )
        return [(int(i), m, lab) for i, m, lab in rows]

    def series_counts(self) -> dict[str, int]:
        return {t: int(n) for t, n in self._fetch("SELECT tenant, count(*) FROM series GROUP BY tenant", ())}

    def metric_names(self, tenant: str) -> list[str]:
        return self.label_values(tenant, "__name__")  # Python's order (code points), whatever the collation

    def select_arrays(
        self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int
    ) -> list[SeriesArrays]:
        from_ms, to_ms = max(from_ms, INT8_MIN), min(to_ms, INT8_MAX)
        if from_ms > to_ms:
            return []
        by_series: dict[int, list[tuple[int, chunks.I64, chunks.F64]]] = {}
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            found = self._matching(conn, tenant, matchers)
            if found:
                # one index range per series: the chunks that may hold points in the range
                cur = conn.cursor(binary=True)
                cur.execute(
                    "SELECT series_id, id, t_min, t_max, data FROM chunks WHERE series_id = ANY(%b)"
                    " AND t_max >= %s AND t_min <= %s",
                    (Int8Array([sid for sid, _, _ in found]), from_ms, to_ms),
                )
                got = cur.fetchall()
                # decoded in one pass (a call per chunk cost more than the decode: +48 % over 49,000)
                decoded = chunks.decode_stored([(a, b, bytes(data)) for _, _, a, b, data in got])
                for (sid, cid, *_), (ts, vs) in zip(got, decoded, strict=True):
                    by_series.setdefault(sid, []).append((cid, ts, vs))
                wanted = np.unique(np.array([sid for sid, _, _ in found], dtype=np.int64))
                for sid, slices in parts.part_points(conn, self._part_dirs, wanted, from_ms, to_ms).items():
                    by_series.setdefault(sid, []).extend(slices)
        out: list[SeriesArrays] = []
        for sid, metric, lab in found:
            rows = by_series.get(sid)
            if rows:
                ts, vs = chunks.merge_arrays(rows, from_ms, to_ms)
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

    def dead_letter_count(self, tenant: str | None = None) -> int:
        if tenant is None:
            return int(self._fetch("SELECT count(*) FROM dead_letters", ())[0][0])
        return int(self._fetch("SELECT count(*) FROM dead_letters WHERE tenant = %s", (tenant,))[0][0])

    def set_aside_count(self) -> tuple[int, int]:
        rows, points = self._fetch(f"SELECT count(*), coalesce(sum(n), 0) FROM {TABLE}", ())[0]
        return int(rows), int(points)

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
