"""The embedded store's compaction: parts flushed into chunks, chunks packed per series and window."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from lossproof.store import chunks, quarantine
from lossproof.store.base import (
    COMPACT_MIN_CHUNKS,
    COMPACT_WINDOW_MS,
    CompactResult,
    StoreError,
    StoreUnavailable,
)
from lossproof.store.embedded.common import (
    _FLUSH_MAX_POINTS,
    _INSERT_CHUNK_AT,
    _MERGE_AFTER_MS,
    _MERGE_HEADS,
    _MERGE_MAX_POINTS,
    _MERGE_PASS_WINDOWS,
    _MERGE_WINDOW_MS,
    _PACK_AGE_MS,
    _PACK_AT_FLUSH,
    _PACK_IDLE_MS,
    _PACK_MAX_POINTS,
    _PACK_READ,
    _PART_FLUSH_AGE_MS,
    _PART_FLUSH_COUNT,
    _PART_FLUSH_POINTS,
    _SCAN_LIMIT,
    _SCAN_UNPACKED,
    _WINDOWS_TAKEN,
    _SeriesKey,
)
from lossproof.store.embedded.core import SqliteCore

_PACKED = chunks.Windows(COMPACT_WINDOW_MS)  # the windows flushes and packing cut chunks at
_MERGE_END = 1 << 62  # windows from here on are never merged (meta.remerge_from: none due)

# Free pages given back per write transaction once all is packed (8 MiB of 4 KiB pages: ~0.1 s
# of the worker's writes waiting), and kept at least (what a few batches will soon use again).
_RECLAIM_STEP_PAGES = 2048
_RECLAIM_MIN_PAGES = 2048
_TRUNCATE_WAIT_MS = 200


class _Flush(NamedTuple):
    take: list[int]  # part ids, ascending
    rows: list[chunks.ChunkRow]  # ids from first_id on
    first_id: int
    size: int  # bytes read
    out: int  # bytes written
    points: int
    gen: int  # meta.compact_gen when read
    damaged: list[quarantine.Damaged]  # parts taken that are set aside, not flushed


class _Pack(NamedTuple):
    take: list[tuple[int, int, int, int]]  # the pack queue's entries
    found: list[tuple[int, int]]  # (chunk id, bytes) read
    rows: list[chunks.PackRow]
    points: int
    gen: int  # meta.compact_gen when read
    merge: tuple[tuple[str, int], ...] = ()  # a merge step's: meta to set (see _merge_read)
    damaged: tuple[quarantine.Damaged, ...] = ()  # chunks read that are set aside, not packed


class SqliteCompaction(SqliteCore):
    """Compaction of the embedded store (see :meth:`SqliteStore.compact`)."""

    if TYPE_CHECKING:  # the write path's (SqliteWriter)

        def _write(
            self, pending: dict[_SeriesKey, int], crash_at: str, by: str = "write"
        ) -> contextlib.AbstractContextManager[None]: ...

    # --- compaction ----------------------------------------------------------------------------

    def compact(self, now_ms: int, max_series: int = 2000) -> CompactResult:
        """See :meth:`Store.compact`. Two steps: parts become chunks per series (a flush,
        ``_flush_parts``: raw, pending or packed, see :func:`chunks.flush_parts`), and raw and
        pending chunks are packed per series and window (``_pack_due``).

        The step's inputs are read and its outputs computed in a read transaction (WAL: writers go
        on meanwhile); only deleting the inputs and inserting the outputs takes the write lock, once
        it is checked that no other compaction committed since (another worker's may have
        taken them: the step is then dropped and made again). The worker's writes used to wait for
        the whole step (38 % of the worker's time under remote-write load)."""
        if self.readonly:
            raise StoreError("store opened readonly")
        with self._lock:
            try:
                self._con.execute("BEGIN")  # deferred: a read snapshot, no lock taken on writers
                job = self._compact_read(now_ms, max_series)
            except (sqlite3.OperationalError, OSError) as e:
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e
            finally:
                self._rollback()
        if job is None:
            return self._reclaim()
        with self._write({}, "store.compact_before_commit", by="compaction"):
            return self._compact_write(job, now_ms)

    def _flush_parts(self, now_ms: int) -> _Flush | None:
        """The oldest parts turned into chunks per series (:func:`chunks.flush_parts`), if they are
        due (see ``_PART_FLUSH_*``); None when they are not. Reads only."""
        con = self._con
        live = con.execute("SELECT id, n, at_ms FROM parts ORDER BY id").fetchall()
        self._parts_left = bool(live)
        self._last_part_ms = max([self._last_part_ms, *(at for _, _, at in live)])
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
        got = [
            (pid, *con.execute("SELECT t_min, t_max, n, data FROM parts WHERE id = ?", (pid,)).fetchone())
            for pid in take
        ]
        # every part checked whole first: a damaged one is set aside (one would fail every flush, or
        # be flushed into chunks that read as damaged); the others are flushed
        damaged = quarantine.damaged_parts(got)
        gone = {d.id for d in damaged}
        datas = [data for pid, _, _, _, data in got if pid not in gone]
        first = self._next_chunk_id()
        rows: list[chunks.ChunkRow] = []
        points = out = 0
        if datas:
            rows, points, out = chunks.flush_parts(datas, first, _PACK_AT_FLUSH, _PACKED, self._windows_empty)
        size = sum(len(d) for d in datas)
        return _Flush(take, rows, first, size, out, points, int(self._meta("compact_gen") or 0), damaged)

    def _windows_empty(self, sids: chunks.I64, lo: chunks.I64, hi: chunks.I64) -> npt.NDArray[np.bool_]:
        """For each (series, lo, hi): whether none of the series' chunks holds a point in it (one
        index seek each, in one statement)."""
        items = msgspec.json.encode(list(zip(sids.tolist(), lo.tolist(), hi.tolist(), strict=True)))
        empty = np.ones(len(sids), dtype=bool)
        taken = [k for (k,) in self._con.execute(_WINDOWS_TAKEN, (items,))]
        empty[taken] = False
        return empty

    def _next_chunk_id(self) -> int:
        """The id a flush's chunk takes: above every id a chunk ever had (meta.chunk_id_top), not
        SQLite's max(id) + 1: packing deletes the highest ids, and a raw or pending chunk given one
        of those again would sit at or below meta.compact_after, where the scan for them never
        looks."""
        top = self._con.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0]
        return max(int(top), int(self._meta("chunk_id_top") or 0)) + 1

    def _pack_reach(
        self, reach: dict[int, tuple[int, int]], windows: chunks.Windows, cap: int = 0
    ) -> tuple[list[tuple[int, int, int, int, bytes]], list[chunks.PackRow], int, list[quarantine.Damaged]]:
        """Every chunk of the windows ``reach`` (series: first, last window), read and packed
        one per series and window: (chunks packed, rows, points, chunks read that are damaged: set
        aside by the step, not packed)."""
        while True:  # see chunks.widen
            items = [(sid, windows.start(lo), windows.end(hi)) for sid, (lo, hi) in reach.items()]
            read = self._con.execute(_PACK_READ, (msgspec.json.encode(items),)).fetchall() if items else []
            if not chunks.widen(reach, ((sid, a, b) for _, sid, a, b, _ in read), windows):
                break
        out, points, damaged = quarantine.pack_checked(read, windows, cap)
        gone = {d.id for d in damaged}
        return [r for r in read if r[0] not in gone], out, points, damaged

    def _compact_read(self, now_ms: int, max_series: int) -> _Flush | _Pack | None:
        """The next step's work, computed in a read transaction (see :meth:`compact`)."""
        flush = self._flush_parts(now_ms)
        if flush is not None:
            return flush
        if not self._pack_queue:
            if not self._pack_due(now_ms):
                return self._merge_read(now_ms, max_series)
            self._scan_unpacked()
        # at most max_series series, and about _PACK_MAX_POINTS raw points (memory: ~150 B a point)
        k, n = 0, 0
        queue = self._pack_queue
        while k < min(max_series, len(queue)) and (k == 0 or n + queue[k][3] <= _PACK_MAX_POINTS):
            n += queue[k][3]
            k += 1
        take = queue[:k]
        del queue[:k]
        found, out, points, damaged = self._pack_reach({sid: (lo, hi) for sid, lo, hi, _ in take}, _PACKED)
        gen = int(self._meta("compact_gen") or 0)
        sizes = [(cid, len(data)) for cid, _, _, _, data in found]
        return _Pack(take, sizes, out, points, gen, damaged=tuple(damaged))

    def _merge_read(self, now_ms: int, max_series: int) -> _Pack | None:
        """The next step of merging windows (see ``_MERGE_WINDOW_MS``), once every flush is packed;
        None when nothing is due. A pass merges the windows in ``[meta.merge_from,
        meta.merge_to)`` series by series (``meta.merge_sid``: the last series done, -1 when no
        pass runs): its first step picks the windows, at most ``_MERGE_PASS_WINDOWS`` from the
        first that holds a chunk: those a late chunk went into (``meta.remerge_from``, below
        ``meta.merged_until``), else those that ended since ``meta.merged_until`` (from the
        oldest chunk on, the first time), which it then raises; then each step merges the windows
        of the next ``max_series`` series that hold more than one chunk, about
        ``_PACK_MAX_POINTS`` points at most. A window of more than ``_MERGE_MAX_POINTS`` points of
        a series keeps that series' chunks (``chunks.pack``'s ``cap``). Windows before 1970 or past
        2^62 ms are not merged.

        Packing and flushing keep to 2 h windows: a late chunk in a merged window is packed with
        the window's chunk cut back to 2 h pieces (every chunk of the windows a step packs is read:
        see :func:`chunks.widen`), which a pass merges again. Under 12 h windows they would
        rewrite a whole 12 h of a series at each pack of a load of old points (``bench compare``'s
        ingest: 111 h of points 1 s apart)."""
        con = self._con
        if int(self._meta("unpacked_flushes") or 0):
            # raw chunks wait to be packed: a load of old points (a backfill, `bench compare`'s) had
            # its windows merged, then cut back by packing, then merged again, all while queried
            return None
        large = _MERGE_WINDOW_MS
        merged = self._meta("merged_until")
        cursor = int(self._meta("merge_sid") or -1)
        gen = int(self._meta("compact_gen") or 0)
        if cursor < 0:
            target = min(max(0, (now_ms - _MERGE_AFTER_MS) // large * large), _MERGE_END)
            high = 0 if merged is None else int(merged)
            again = int(self._meta("remerge_from") or _MERGE_END)
            meta: list[tuple[str, int]] = []
            if again < high:
                start, end = self._merge_start(again, high), high
                meta.append(("remerge_from", _MERGE_END))
            elif target > high:
                start, end = self._merge_start(high, target), target
            else:
                return None
            until = min(end, start + _MERGE_PASS_WINDOWS * large)
            if again < high:
                if until < high:  # (the rest of the late windows: the next pass)
                    meta[0] = ("remerge_from", until)
            else:
                meta.append(("merged_until", until))
            meta += [("merge_from", start), ("merge_to", until), ("merge_sid", 0 if start < until else -1)]
            return _Pack([], [], [], 0, gen, tuple(meta))
        since, until = int(self._meta("merge_from") or 0), int(self._meta("merge_to") or 0)
        sids = [
            sid
            for (sid,) in con.execute(
                "SELECT id FROM series WHERE id > ? ORDER BY id LIMIT ?", (cursor, max_series)
            )
        ]
        if not sids:
            return _Pack([], [], [], 0, gen, (("merge_sid", -1),))
        windows = chunks.Windows(COMPACT_WINDOW_MS, large, until)
        held: dict[int, dict[int, list[int]]] = {}  # series: window: [chunks, points]
        for sid, t_min, _, n in con.execute(_MERGE_HEADS, (msgspec.json.encode(sids), since, until)):
            w = held.setdefault(sid, {}).setdefault(windows.of_one(max(t_min, since)), [0, 0])
            w[0] += 1
            w[1] += n
        reach: dict[int, tuple[int, int]] = {}
        points, done = 0, sids[-1]
        for k, sid in enumerate(sids):
            mine = held.get(sid, {})
            due = [w for w, (c, n) in mine.items() if c > 1 and n <= _MERGE_MAX_POINTS]
            if not due:
                continue
            lo, hi = min(due), max(due)
            more = sum(n for w, (_, n) in mine.items() if lo <= w <= hi)
            if reach and points + more > _PACK_MAX_POINTS:
                done = sids[k - 1]
                break
            reach[sid] = (lo, hi)
            points += more
        found, out, points, damaged = self._pack_reach(reach, windows, _MERGE_MAX_POINTS)
        merge = (("merge_sid", done),)
        sizes = [(cid, len(data)) for cid, _, _, _, data in found]
        return _Pack([], sizes, out, points, gen, merge, tuple(damaged))

    def _merge_start(self, lo: int, hi: int) -> int:
        """The first window from ``lo`` on (below ``hi``) that holds a chunk, else ``hi``: a pass
        never walks empty years (a point of 1970 and the rest of today's). One scan of the chunks'
        index."""
        first = self._con.execute("SELECT min(t_min) FROM chunks WHERE t_max >= ?", (lo,)).fetchone()[0]
        return hi if first is None else min(hi, max(lo, int(first) // _MERGE_WINDOW_MS * _MERGE_WINDOW_MS))

    def _late(self, t_mins: list[int]) -> None:
        """Chunks of the times ``t_mins`` were written: those in merged windows make the next pass
        merge them again (``meta.remerge_from``). In the write transaction."""
        merged = self._meta("merged_until")
        t_mins = [t for t in t_mins if t >= 0]  # (never merged: see _merge_read)
        if merged is None or not t_mins or min(t_mins) >= int(merged):
            return
        first = min(t_mins) // _MERGE_WINDOW_MS * _MERGE_WINDOW_MS
        if first < int(self._meta("remerge_from") or _MERGE_END):
            self._meta_set(remerge_from=first)

    def _compact_write(self, job: _Flush | _Pack, now_ms: int) -> CompactResult:
        """Apply a step computed by :meth:`_compact_read`, in the write transaction, if its inputs
        are as read; else nothing (``more``: the step is made again)."""
        con = self._con
        # Only a compaction deletes parts and chunks (and reuses chunk ids): if none committed since
        # the read, the inputs are as read. Else (another worker's) the step is dropped, made again.
        gen = int(self._meta("compact_gen") or 0)
        if gen != job.gen:
            if isinstance(job, _Pack):
                self._pack_queue[:0] = job.take
            return CompactResult(more=True)
        self._meta_set(compact_gen=gen + 1)
        aside = self._set_aside(job.damaged)
        if isinstance(job, _Flush):
            # The rows were numbered in the read transaction; only a chunk inserted since (not by a
            # compaction: gen is unchanged; an upgrade's) makes them renumbered.
            base = self._next_chunk_id()
            rows = job.rows if base == job.first_id else [(base + i, *r[1:]) for i, r in enumerate(job.rows)]
            con.executemany(_INSERT_CHUNK_AT, rows)
            self._meta_set(chunk_id_top=max(base - 1, base + len(rows) - 1))
            self._late([r[2] for r in rows])
            con.execute("DELETE FROM parts WHERE id <= ?", (job.take[-1],))
            flushes = int(self._meta("unpacked_flushes") or 0)
            self._meta_set(unpacked_flushes=flushes + 1)
            if not flushes:
                self._meta_set(unpacked_since_ms=now_ms)
            # more: the parts left, and the chunks just made may fill a window to pack
            return CompactResult(
                len(job.rows), len(job.take), len(job.rows), job.size, job.out, job.points, True, aside
            )
        if job.found:
            con.executemany("DELETE FROM chunks WHERE id = ?", [(cid,) for cid, _ in job.found])
            con.executemany(_INSERT_CHUNK_AT, job.rows)
        if job.merge:
            self._meta_set(**dict(job.merge))
            self._wal_small = False  # (what it wrote: the WAL is truncated again once all is done)
            return self._packed(job, True, aside)
        self._late([r.t_min for r in job.rows])
        more = bool(self._pack_queue)
        if not more:
            self._meta_set(compact_after=self._pack_mark)
            # Nothing left to pack only when no flush (this worker's between two slices of the
            # queue, or another's) committed since the scan: its raw chunks are above the mark, and
            # with unpacked_flushes 0 no scan would look for them until the next flush.
            if self._pack_scan_done and int(self._meta("chunk_id_top") or 0) <= self._pack_top:
                self._meta_set(unpacked_flushes=0, unpacked_since_ms=0)
            # more: the rest of the scan, or (all packed) giving free space back, ``_reclaim``
            more = True
        return self._packed(job, more, aside)

    @staticmethod
    def _packed(job: _Pack, more: bool, aside: int) -> CompactResult:
        return CompactResult(
            len(job.take),
            len(job.found),
            len(job.rows),
            sum(size for _, size in job.found),
            sum(len(r.data) for r in job.rows),
            job.points,
            more,
            aside,
        )

    def _pack_due(self, now_ms: int) -> bool:
        """Packing runs after every ``COMPACT_MIN_CHUNKS`` flushes (a series then has about that
        many raw or pending chunks in its open window), or ``_PACK_AGE_MS`` after the first flush not packed
        yet, so that slow series and closed windows get packed too, or once no part is left and none
        was written for ``_PACK_IDLE_MS`` (the load stopped: a drained backlog waited up to 5
        minutes for its last flushes to be packed)."""
        flushes = int(self._meta("unpacked_flushes") or 0)
        if not flushes:
            return False
        since = int(self._meta("unpacked_since_ms") or 0)
        idle = not self._parts_left and self._last_part_ms <= now_ms - _PACK_IDLE_MS
        return flushes >= COMPACT_MIN_CHUNKS or since <= now_ms - _PACK_AGE_MS or idle

    def _scan_unpacked(self) -> None:
        """Queue every series with raw or pending chunks written after ``meta.compact_after`` (ids
        only grow), with the windows they reach, ``_SCAN_LIMIT`` chunks at a time."""
        after = int(self._meta("compact_after") or 0)
        self._pack_top = int(self._meta("chunk_id_top") or 0)
        kinds = [bytes((k | sealed,)) for k in (chunks.RAW, chunks.PENDING) for sealed in (0, chunks.SEALED)]
        rows = self._con.execute(_SCAN_UNPACKED, (after, *kinds, _SCAN_LIMIT)).fetchall()
        self._pack_scan_done = len(rows) < _SCAN_LIMIT
        self._pack_mark = rows[-1][0] if rows else after
        if not rows:
            return
        cols = np.array(rows, dtype=np.int64)
        cols = cols[np.lexsort((cols[:, 0], cols[:, 1]))]
        starts, _ = chunks.series_bounds(cols[:, 1].copy())
        lo = np.minimum.reduceat(_PACKED.of(cols[:, 2]), starts)
        hi = np.maximum.reduceat(_PACKED.of(cols[:, 3]), starts)
        points = np.add.reduceat(cols[:, 4], starts)
        self._pack_queue = list(
            zip(cols[starts, 1].tolist(), lo.tolist(), hi.tolist(), points.tolist(), strict=True)
        )

    def _reclaim(self) -> CompactResult:
        """Once every point is packed (no part, no raw or pending chunk due), give the file's free pages back,
        ``_RECLAIM_STEP_PAGES`` per write transaction (``more`` while some are left), then shrink
        the WAL. The pages a load's parts and raw chunks used were left free by compaction: 13 of a
        store's 14 bytes per sample after a 24 h load. Under steady load the next batches reuse
        them, so nothing is given back while parts exist, and a round starts only once over a
        quarter of the file is free (it then goes down to a tenth). Stores created before
        incremental auto-vacuum (``PRAGMA auto_vacuum`` 0) are converted by ``lossproof store
        migrate``; until then only the WAL is shrunk."""
        con = self._con
        with self._lock:
            try:
                if con.execute("SELECT EXISTS (SELECT 1 FROM parts)").fetchone()[0] or int(
                    self._meta("unpacked_flushes") or 0
                ):
                    self._reclaiming = self._wal_small = False
                    return CompactResult()
                if con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                    free = con.execute("PRAGMA freelist_count").fetchone()[0]
                    total = con.execute("PRAGMA page_count").fetchone()[0]
                    keep = max(_RECLAIM_MIN_PAGES, total // 10)
                    if free > keep and (self._reclaiming or free > max(_RECLAIM_MIN_PAGES, total // 4)):
                        self._reclaiming = True
                        step = min(_RECLAIM_STEP_PAGES, free - keep)
                        # executescript steps the pragma to its end (execute() frees one page a call)
                        con.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(step)}); COMMIT;")
                        # more only while it frees pages: never a busy loop of steps that do nothing
                        return CompactResult(more=con.execute("PRAGMA freelist_count").fetchone()[0] < free)
                    self._reclaiming = False
                if not self._wal_small:
                    self._wal_small = self._truncate_wal()
                return CompactResult()
            except (sqlite3.OperationalError, OSError) as e:
                self._rollback()
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e

    def _truncate_wal(self) -> bool:
        """Checkpoint the WAL and truncate it to nothing (``journal_size_limit`` keeps 64 MiB);
        whether that was done. It waits at most ``_TRUNCATE_WAIT_MS`` for readers and writers, as
        it blocks the worker's writes while it waits: a long query makes it give up, and the next
        idle call tries again."""
        con = self._con
        con.execute(f"PRAGMA busy_timeout = {_TRUNCATE_WAIT_MS}")
        ours = self._checkpointer.lock if self._checkpointer is not None else contextlib.nullcontext()
        try:
            with ours:
                busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return not busy

