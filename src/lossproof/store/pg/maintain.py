"""The PostgreSQL store's background work: compaction (``compact``) and retention (``maintain``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from psycopg import sql

from lossproof.faults import crash_point
from lossproof.store import chunks, quarantine
from lossproof.store import pg_migrations as mig
from lossproof.store.base import (
    COMPACT_MIN_CHUNKS,
    COMPACT_WINDOW_MS,
    CompactResult,
    StoreError,
)
from lossproof.store.pg.binary import (
    _CHUNK_META,
    Int8Array,
    _copy_out,
    copy_chunks,
)
from lossproof.store.pg.common import (
    _COMPACT_BATCHES,
    _ID_SEQ,
    _LOG_BATCH,
    _PACK_AGE_MS,
    _PACK_INSERT,
    _PACK_READ,
    DAY_MS,
    INT8_MIN,
    Retention,
    _Conn,
    log,
    set_aside,
)
from lossproof.store.pg.core import PgCore
from lossproof.store.pg.parts import PARTS_REMOVED

MAINTENANCE_EVERY_S = 300.0
RETENTION_CHUNKS = 50_000  # chunks deleted by retention per transaction
_UNPART_PARTS = 16  # parts turned into chunks per compaction transaction


class PgMaintenance(PgCore):
    """Compaction and retention of the PostgreSQL store."""

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
        """See :meth:`Store.compact`. Batches are found through ``compact_batches`` (one row each,
        written with the batch): once it holds ``COMPACT_MIN_CHUNKS`` of them, or one older than
        ``_PACK_AGE_MS``, a round starts: the series of up to ``_COMPACT_BATCHES`` of them are
        queued with the windows their raw chunks reach, and each call packs ``max_series`` of them
        (every chunk of the series overlapping those windows merged into one packed chunk per
        window), one transaction each; the round's last one deletes its compact_batches rows (a crash
        before leaves them: the next round packs them again, which changes nothing). One
        compaction transaction at a time per database (an advisory lock; a second compactor's call
        returns at once). Open windows are packed again as batches come (a series' window then
        holds its packed chunk and the raw chunks of at most a round's batches)."""
        if self.readonly:
            raise StoreError("store opened readonly")
        aside: list[quarantine.Damaged] = []  # damaged rows the step set aside
        with self._conn() as conn, conn.transaction():
            locked = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s, %s)", (mig.LOCK_CLASS, mig.LOCK_COMPACT)
            ).fetchone()
            if not locked or not locked[0]:
                return CompactResult(more=bool(self._pack_queue))
            done = self._compact_step(conn, now_ms, max_series, aside)
            crash_point("store.compact_before_commit")
        quarantine.logged(aside, "postgres", "compaction")
        return done

    def _compact_step(
        self, conn: _Conn, now_ms: int, max_series: int, aside: list[quarantine.Damaged]
    ) -> CompactResult:
        """:meth:`compact`'s work, in its transaction (the damaged rows it sets aside added to
        ``aside``)."""
        if not self._pack_queue:
            turned, parts_left = self._unpart(conn, now_ms, aside)
            # parts turned were due, so are their chunks (one compact_batches row for many batches)
            if not self._queue_round(conn, now_ms, due=turned):
                return CompactResult(more=parts_left, quarantined=len(aside))
        take = self._pack_queue[:max_series]
        del self._pack_queue[:max_series]
        res = [0, 0, 0, 0, 0]  # chunks in, chunks out, bytes in, bytes out, points
        self._pack(conn, take, res, aside)
        more = bool(self._pack_queue)
        if not more:
            conn.execute("DELETE FROM compact_batches WHERE first_id = ANY(%b)", (Int8Array(self._pack_log),))
            self._pack_log = []
            more = True  # more batches may be due: the next call looks
        return CompactResult(len(take), res[0], res[1], res[2], res[3], res[4], more, len(aside))

    def _unpart(self, conn: _Conn, now_ms: int, aside: list[quarantine.Damaged]) -> tuple[bool, bool]:
        """Turn the oldest parts into chunks, when due (as batches are for packing: enough of them,
        or one old enough): their points, merged (of one (series, t) the lowest part's wins), one
        raw chunk per series, with ids above every chunk's (parts come after chunks) and a
        compact_batches row so that packing finds them; the parts deleted, ``parts_removed`` counted up
        (writers that did not see them probe the chunks again). Whether some were turned, and whether
        parts are left to turn. Each part is checked whole first: a damaged one is set aside (into
        ``aside``), the others turned."""
        rows = conn.execute("SELECT id, at_ms FROM parts ORDER BY id LIMIT %s", (_UNPART_PARTS,)).fetchall()
        if not rows:
            return False, False
        if len(rows) < COMPACT_MIN_CHUNKS and min(int(r[1]) for r in rows) > now_ms - _PACK_AGE_MS:
            return False, False
        ids = [int(r[0]) for r in rows]
        cur = conn.cursor(binary=True)
        cur.execute(
            "SELECT id, t_min, t_max, n, data FROM parts WHERE id = ANY(%b) ORDER BY id", (Int8Array(ids),)
        )
        got = [(int(i), int(a), int(b), int(n), bytes(d)) for i, a, b, n, d in cur]
        damaged = quarantine.damaged_parts(got)
        aside += set_aside(conn, damaged, {})
        gone = {d.id for d in damaged}
        cols = [chunks.decode_part(data) for pid, _, _, _, data in got if pid not in gone]
        # (the empty columns first: every part may have been set aside)
        none = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
        joined = (np.concatenate([none[k], *(c[k] for c in cols)]) for k in range(3))
        sids, ts, vs = chunks.sort_dedup(*joined)
        if len(ts):
            first = conn.execute(f"SELECT nextval({_ID_SEQ})").fetchone()
            assert first is not None
            copy_chunks(cur, sids, ts, vs)
            conn.execute(_LOG_BATCH, (int(first[0]), min(int(r[1]) for r in rows)))
        conn.execute("DELETE FROM parts WHERE id = ANY(%b)", (Int8Array(ids),))
        conn.execute(PARTS_REMOVED)
        return True, len(rows) == _UNPART_PARTS

    def _queue_round(self, conn: _Conn, now_ms: int, due: bool = False) -> bool:
        """Start a round if one is due (or ``due``): queue ``(series, first window, last window)`` of the raw
        chunks of the oldest batches in compact_batches. Whether one was."""
        rows = conn.execute(
            "SELECT first_id, last_id, at_ms FROM compact_batches ORDER BY first_id LIMIT %s",
            (_COMPACT_BATCHES,),
        ).fetchall()
        if not rows:
            return False
        if (
            not due
            and len(rows) < COMPACT_MIN_CHUNKS
            and min(int(r[2]) for r in rows) > now_ms - _PACK_AGE_MS
        ):
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

    def _pack(
        self,
        conn: _Conn,
        items: Sequence[tuple[int, int, int]],
        res: list[int],
        aside: list[quarantine.Damaged],
    ) -> None:
        """For each ``(series, first window, last window)``: merge the series' chunks overlapping
        those windows into one packed chunk per window (a chunk reaching outside takes its other
        windows along), as the embedded store does: one read, columns merged and encoded together
        (:func:`chunks.encode_many`), one delete and one insert statement. Each series' lowest
        input ids go to its oldest windows (first write wins on), a merge yielding more chunks than
        it read gives the rest new ids. A damaged chunk read is set aside (into ``aside``), not packed."""
        if not items:
            return
        cur = conn.cursor(binary=True)
        windows = chunks.Windows(COMPACT_WINDOW_MS)
        reach = {sid: (lo, hi) for sid, lo, hi in items}
        while True:  # see chunks.widen
            cur.execute(
                _PACK_READ,
                (
                    Int8Array(list(reach)),
                    Int8Array([windows.start(lo) for lo, _ in reach.values()]),
                    Int8Array([windows.end(hi) for _, hi in reach.values()]),
                ),
            )
            read = [(int(cid), int(sid), int(a), int(b), bytes(data)) for cid, sid, a, b, data in cur]
            if not chunks.widen(reach, ((sid, a, b) for _, sid, a, b, _ in read), windows):
                break
        by_series: dict[int, list[bytes]] = {}
        for _, sid, _, _, data in read:
            by_series.setdefault(sid, []).append(data)
        # a window already packed into one chunk is left as it is
        found = [
            r for r in read if len(by_series[r[1]]) > 1 or chunks.kind_of(by_series[r[1]][0]) != chunks.PACKED
        ]
        if not found:
            return
        rows, points, damaged = quarantine.pack_checked(found, windows)
        if damaged:
            aside += set_aside(conn, damaged, {r[0]: r[4] for r in found})
            gone = {d.id for d in damaged}
            found = [r for r in found if r[0] not in gone]
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
        res[2] += sum(len(r[4]) for r in found)
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
        # Chunks, then parts wholly past the horizon (one reaching past it waits to become chunks).
        # Parts deleted here are not counted in parts_removed: a writer that did not see one only
        # thinks more is stored than is, which costs it a read, not a point.
        with self._conn() as conn:
            for table in ("chunks", "parts"):
                while True:
                    with conn.transaction():
                        conn.execute("SET LOCAL lock_timeout = '5s'")
                        rows = conn.execute(
                            f"DELETE FROM {table} WHERE id IN"
                            f" (SELECT id FROM {table} WHERE t_max < %s LIMIT %s) RETURNING n",
                            (horizon, RETENTION_CHUNKS),
                        ).fetchall()
                    deleted += len(rows)
                    points += sum(int(n) for (n,) in rows)
                    if len(rows) < RETENTION_CHUNKS:
                        break
        if deleted:
            log.info("store.retention_deleted", chunks=deleted, points=points, before_ms=horizon)
        return Retention(horizon, deleted, points)
