"""The PostgreSQL store's write path: ``write_batch`` (see :mod:`lossproof.store.postgres`, *Writes*).
What a batch does to reports, conflicts and the ledger is :func:`lossproof.store.plan.plan_batch`;
this loads the prior state in bulk, applies the plan and writes the points as one part.

Stored times
    First write wins, and a batch's points are almost always all new: each writer keeps per series a
    time at or after the newest point stored (:class:`~lossproof.store.pg.parts.StoredTops`), so
    that only the series whose new points do not all come after it have stored points read. It
    comes from the series' newest chunk (probed once, one index seek) and the directories of every
    part this writer has seen (each batch lists the live parts and reads the directories new to
    it). A part this writer never saw may have become chunks meanwhile (another writer's, compacted):
    each transaction removing parts counts up ``meta.parts_removed``, read in the same snapshot as the
    list of parts, and when it changed every series is probed again. The probe comes before the
    look, so a part committed after the probe is either seen or counted (the first look compares
    with the counter read before the first probe). A time too high (a rolled
    back part, a part retention deleted) costs a read, never a point."""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors

from lossproof.faults import crash_point
from lossproof.store import chunks, quarantine
from lossproof.store import ledger as lg
from lossproof.store.base import (
    CHECKED_TABLES,
    StoreError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
    labels_text,
    latest_metadata,
)
from lossproof.store.columns import Columns, not_stored, reads_stored
from lossproof.store.pg import parts
from lossproof.store.pg.binary import Int8Array
from lossproof.store.pg.common import (
    _AGENT_COLUMNS,
    _CHUNKS_IN,
    _SUMMARY,
    _UPSERT_METADATA,
    _AgentKey,
    _Conn,
    _one_line,
    _SeriesKey,
    _Unresolved,
    log,
    pg_text,
    set_aside,
)
from lossproof.store.pg.core import PgCore
from lossproof.store.plan import Plan, Prior, Summary, digests_wanted, plan_batch

TX_ATTEMPTS = 5  # deadlock / serialization failure: retried as a fresh transaction this many times
_LOOK_ATTEMPTS = 8  # looks at the parts per batch while compactions keep removing some meanwhile
_TOPS_MAX = 4_000_000  # series in the stored-times table (~17 bytes each) before it starts over
# The newest t stored in chunks of each series of the batch it was not known for: one index seek
# each, from the top.
_NEWEST_CHUNK = (
    "SELECT q.s, m.t FROM unnest(%b) AS q(s) CROSS JOIN LATERAL"
    " (SELECT c.t_max FROM chunks c WHERE c.series_id = q.s ORDER BY c.t_max DESC LIMIT 1) AS m(t)"
)


class PgWriter(PgCore):
    """The write path of the PostgreSQL store (see :mod:`lossproof.store.postgres`, *Writes*)."""

    if TYPE_CHECKING:

        def _maybe_maintain(self) -> None: ...  # PgMaintenance

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
                quarantine.logged(self._aside, "postgres", "write")
                self._maybe_maintain()
                return result
        raise AssertionError("unreachable")

    def set_aside_rows(
        self, rows: Sequence[quarantine.Damaged], by: str = "check"
    ) -> list[quarantine.Damaged]:
        """See :meth:`Store.set_aside_rows`: one READ COMMITTED transaction that reads the rows
        again and moves those still damaged (:func:`set_aside`: a chunk only if it is still the
        row read), retried like a write on a deadlock. The writers' caches stay valid (they keep
        upper bounds of what is stored, which a row gone leaves true)."""
        if self.readonly:
            raise StoreError("store opened readonly")
        if not rows:
            return []
        with self._lock:
            for attempt in range(1, TX_ATTEMPTS + 1):
                with self._conn() as conn:
                    try:
                        with conn.transaction():
                            moved = self._set_aside_rows(conn, rows)
                            crash_point("store.set_aside_before_commit")
                    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as e:
                        if attempt == TX_ATTEMPTS:
                            raise
                        log.warning("store.tx_retry", error=_one_line(e), attempt=attempt)
                        continue
                quarantine.logged(moved, "postgres", by)
                return moved
        raise AssertionError("unreachable")

    def _set_aside_rows(self, conn: _Conn, rows: Sequence[quarantine.Damaged]) -> list[quarantine.Damaged]:
        still: list[quarantine.Damaged] = []
        data: dict[int, bytes] = {}
        bcur = conn.cursor(binary=True)
        for table in CHECKED_TABLES:
            ids = sorted({d.id for d in rows if d.table == table})
            if not ids:
                continue
            # read again in the transaction: a row packed, set aside or deleted since the check is
            # gone; a chunk id reused by packing holds a new chunk, checked as it is now
            bcur.execute(
                f"SELECT {quarantine.ROW_COLUMNS[table]} FROM {table} WHERE id = ANY(%b) ORDER BY id",
                (Int8Array(ids),),
            )
            now: list[tuple[Any, ...]] = [(*(int(v) for v in r[:-1]), bytes(r[-1])) for r in bcur.fetchall()]
            still += quarantine.damaged_rows(table, now)
            if table == "chunks":
                data.update((int(r[0]), r[-1]) for r in now)
        return set_aside(conn, still, data)

    def _apply(self, conn: _Conn, batch: WriteBatch, pending: dict[_SeriesKey, int]) -> WriteResult:
        now = batch.now_ms
        self._aside = []
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
            conflict_rows = sorted(plan.conflict_rows(partial(_conflict_digests, cur)), key=lambda r: r[:5])
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
        offered = len(cols)
        written, part = self._new_part(cur, cols, [pending[u[0]] for u in unresolved])

        # The rest needs no answer but the part's id: one round trip (pipeline mode) for all of it.
        pcur = conn.cursor()
        with conn.pipeline():
            self._write_rows(cur, batch, plan, gone, added, agent_rows)
            if part is not None:
                pcur.execute(parts.INSERT_PART, (*part[:4], now, part[4]))
        if part is not None:
            row = pcur.fetchone()
            assert row is not None
            self._tops.seen.add(int(row[0]))
        return WriteResult(
            written, plan.stored, plan.duplicates, plan.conflicted, offered - written, len(self._aside)
        )

    def _write_rows(
        self,
        cur: psycopg.Cursor[Any],
        batch: WriteBatch,
        plan: Plan,
        gone: list[tuple[Any, ...]],
        added: list[tuple[Any, ...]],
        agent_rows: list[tuple[Any, ...]],
    ) -> None:
        """The batch's rows other than points: reports, the ledger, agents, dead letters, log
        gaps, metadata (rows in key order: writers do not deadlock on each other's)."""
        now = batch.now_ms
        if plan.reports:
            digest_rows = sorted(plan.report_rows(), key=lambda r: r[:4])
            cur.executemany(
                "INSERT INTO reports VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", digest_rows
            )
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

    @reads_stored
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

    def _new_part(
        self, cur: psycopg.Cursor[Any], cols: Columns, ids: Sequence[int]
    ) -> tuple[int, tuple[int, int, int, int, bytes] | None]:
        """The columns (provisional series ids mapped through ``ids``) minus the points already
        stored, as a part's row (t_min, t_max, points, series, data) to insert (None: nothing
        new), and how many points it holds."""
        if not len(cols):
            return 0, None
        sids, ts, vs = cols.sorted(ids)
        starts, ends = chunks.series_bounds(sids)
        usids = sids[starts]
        tops = self._stored_tops(cur, usids)
        # a series' top is at or after its newest stored t: only its points at or before it may be
        # stored, and those are looked up
        check = np.flatnonzero(ts <= np.repeat(tops, ends - starts))
        if len(check):
            keep = np.ones(len(ts), dtype=bool)
            conn = cur.connection
            for _ in range(quarantine.ATTEMPTS):
                try:
                    keep[check] = not_stored(
                        sids[check], ts[check], lambda ids, lo, hi: self._stored_ts(conn, ids, lo, hi)
                    )
                    break
                except quarantine.SetAside:
                    # the whole look-up again: a span judged before may have read a part set aside
                    # now (its points were "stored" there, and are no longer)
                    continue
            else:
                raise StoreUnavailable(f"PostgreSQL {self._where}: damaged rows keep turning up")
            if not keep.all():
                sids, ts, vs = sids[keep], ts[keep], vs[keep]
                if not len(ts):
                    return 0, None
                starts, ends = chunks.series_bounds(sids)
        # what this writer stores is stored, whether or not the transaction commits (a rolled back
        # part leaves a top too high: a read, not a duplicate)
        self._tops.raise_to(sids[starts], ts[ends - 1], None)
        data = chunks.encode_part(sids, ts, vs)
        return len(ts), (
            int(ts[0] if len(starts) == 1 else ts.min()),
            int(ts.max()),
            len(ts),
            len(starts),
            data,
        )

    @reads_stored
    def _stored_tops(self, cur: psycopg.Cursor[Any], usids: chunks.I64) -> chunks.I64:
        """For each series of ``usids`` (sorted, unique), a t at or after the newest stored of it
        (``parts.NONE``: nothing stored); see the module docstring, *Stored times*."""
        tops = self._tops
        if len(tops) > _TOPS_MAX:
            tops.clear()
        if tops.removed is None:
            # No earlier look to compare with: the counter as it is before the first probe, so that
            # a part compacted away between the probe and the look (in neither) is counted.
            row = cur.execute(parts.REMOVED).fetchone()
            tops.removed = str(row[0]) if row is not None else ""
        for _ in range(_LOOK_ATTEMPTS):
            idx, hit = tops.find(usids)
            probe = usids[~hit] if len(tops) == 0 else usids[~(hit & tops.probed[idx])]
            if len(probe):
                cur.execute(_NEWEST_CHUNK, (Int8Array(probe),))
                newest = np.full(len(probe), parts.NONE, dtype=np.int64)
                found = {int(s): int(t) for s, t in cur.fetchall()}
                if found:
                    newest = np.array([found.get(s, parts.NONE) for s in probe.tolist()], dtype=np.int64)
                tops.raise_to(probe, newest, True)
            removed, live, dirs = self._look(cur.connection, tops.seen)
            for psids, ptmax, _ in dirs.values():
                tops.raise_to(psids, ptmax, None)
            tops.seen.intersection_update(live)
            tops.seen.update(dirs)
            changed = removed != tops.removed
            tops.removed = removed
            if not changed:
                break
            tops.probed[:] = False  # parts this writer did not see may have become chunks
        else:
            # compactions kept removing parts between probe and look: what is stored is not known
            # without a read, so every series' stored points are read (not one written twice)
            return np.full(len(usids), np.iinfo(np.int64).max, dtype=np.int64)
        idx, hit = tops.find(usids)
        return np.where(hit, tops.top[idx], parts.NONE)

    def _look(self, conn: _Conn, seen: set[int]) -> tuple[str, list[int], dict[int, parts.Directory]]:
        """:func:`parts.look`, a part whose directory is damaged set aside first."""
        for _ in range(quarantine.ATTEMPTS):
            try:
                return parts.look(conn, seen)
            except ValueError:  # ChunkError, or numpy's on a directory cut short
                if not self._set_aside_in(conn, [], -(1 << 63), (1 << 63) - 1, seen):
                    raise
        raise StoreUnavailable(f"PostgreSQL {self._where}: damaged parts keep turning up")

    @reads_stored
    def _stored_ts(self, conn: _Conn, sids: list[int], lo: int, hi: int) -> list[chunks.I64]:
        """The stored timestamps in [lo, hi] of each series of ``sids`` (sorted, unique;
        ``columns.not_stored``). A damaged chunk or part among them is set aside and
        :class:`quarantine.SetAside` raised: the caller asks again, for every span."""
        try:
            return self._read_stored_ts(conn, sids, lo, hi)
        except ValueError:  # ChunkError, or numpy's on a part cut short
            if self._set_aside_in(conn, sids, lo, hi):
                raise quarantine.SetAside() from None
            raise

    def _set_aside_in(
        self, conn: _Conn, sids: Sequence[int], lo: int, hi: int, skip_parts: set[int] | None = None
    ) -> bool:
        """After a read of what is stored failed: set aside the damaged chunks of ``sids`` and the
        damaged parts (but ``skip_parts``) that overlap [lo, hi], each decoded alone
        (:mod:`~lossproof.store.quarantine`); whether there were some."""
        bcur = conn.cursor(binary=True)
        damaged: list[quarantine.Damaged] = []
        data: dict[int, bytes] = {}
        if len(sids):
            n = len(sids)
            bcur.execute(_CHUNKS_IN, (Int8Array(sids), Int8Array(np.full(n, lo)), Int8Array(np.full(n, hi))))
            rows = [(int(cid), int(a), int(b), bytes(d)) for _, cid, a, b, d in bcur.fetchall()]
            damaged += quarantine.damaged_chunks(rows)
            data = {cid: d for cid, _, _, d in rows}
        got = [
            (int(i), int(a), int(b), int(n), bytes(d))
            for i, a, b, n, d in conn.execute(
                "SELECT id, t_min, t_max, n, data FROM parts"
                " WHERE t_max >= %s::bigint AND t_min <= %s::bigint AND NOT id = ANY(%s::bigint[])",
                (lo, hi, sorted(skip_parts or ())),
            ).fetchall()
        ]
        damaged += quarantine.damaged_parts(got)
        self._aside += set_aside(conn, damaged, data)
        # (a row another session moved first is gone all the same: read again)
        return bool(damaged)

    def _read_stored_ts(self, conn: _Conn, sids: list[int], lo: int, hi: int) -> list[chunks.I64]:
        """The stored timestamps in [lo, hi] of each series of ``sids``: the chunks overlapping
        (one statement), and the parts' slices."""
        wanted = np.array(sids, dtype=np.int64)
        # parts first: one removed meanwhile has become chunks, committed before the chunks are read
        segs = parts.part_points(conn, self._part_dirs, wanted, lo, hi)
        bcur = conn.cursor(binary=True)
        n = len(wanted)
        bcur.execute(_CHUNKS_IN, (Int8Array(wanted), Int8Array(np.full(n, lo)), Int8Array(np.full(n, hi))))
        rows = bcur.fetchall()
        decoded = chunks.decode_stored([(a, b, bytes(data)) for _, _, a, b, data in rows])
        for (sid, cid, *_), (ts, vs) in zip(rows, decoded, strict=True):
            segs.setdefault(int(sid), []).append((int(cid), ts, vs))
        return [chunks.merge_arrays(segs.get(sid, ()), lo, hi)[0] for sid in sids]

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
            # A transaction id before any series id is drawn: the read side's series index moves its
            # bound past an id only once every transaction older than a snapshot that showed a higher
            # one has ended (store/series_index.py, sync_pg). Without it, an insert that drew its ids
            # and then waited on a concurrent writer's row (ON CONFLICT) which rolled back got its
            # transaction id only then, newer than those snapshots: its series went unseen.
            cur.execute("SELECT txid_current()")
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


def _lock_key(schema: str, tenant: str, agent: str) -> int:
    digest = hashlib.blake2b(f"{schema}\0{tenant}\0{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _conflict_digests(cur: Any, key: tuple[str, str, str, int]) -> list[bytes]:
    cur.execute(
        "SELECT digest FROM conflicts WHERE tenant = %s AND agent = %s AND incarnation = %s AND seq = %s", key
    )
    return [bytes(d) for (d,) in cur.fetchall()]
