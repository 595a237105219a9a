"""The embedded store's compaction: parts flushed into chunks, chunks packed per series and window."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from lossproof.store import chunks
from lossproof.store.base import (
    COMPACT_MIN_CHUNKS,
    COMPACT_WINDOW_MS,
    CompactResult,
)
from lossproof.store.embedded.common import (
    _FLUSH_MAX_POINTS,
    _INSERT_CHUNK,
    _PACK_AGE_MS,
    _PACK_MAX_POINTS,
    _PACK_READ,
    _PART_FLUSH_AGE_MS,
    _PART_FLUSH_COUNT,
    _PART_FLUSH_POINTS,
    _SCAN_LIMIT,
    _SCAN_RAW,
    _SeriesKey,
)
from lossproof.store.embedded.core import SqliteCore


class SqliteCompaction(SqliteCore):
    """Compaction of the embedded store (see :meth:`SqliteStore.compact`)."""

    if TYPE_CHECKING:  # the write path's (SqliteWriter)

        def _write(
            self, pending: dict[_SeriesKey, int], crash_at: str
        ) -> contextlib.AbstractContextManager[None]: ...

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
