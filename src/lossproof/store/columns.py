"""Points to columns: what a store's write path does before it encodes chunks (see chunks.py).

A batch's points (any :class:`~lossproof.store.base.PointLike`) become three numpy columns, series id,
timestamp and value, sorted by (series, t) with the batch's own duplicates dropped (first write wins).
Series ids come from the store through ``resolve``; a series seen before costs one dict lookup.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from lossproof.native_ext import _native
from lossproof.points import PointsBlock
from lossproof.store import chunks
from lossproof.store.base import COMPACT_WINDOW_MS, PointLike, SeriesBlock, SeriesSamples, StoreUnavailable
from lossproof.store.quarantine import SetAside

SeriesKey = tuple[Any, ...]  # (tenant, metric, *labels.items()) in the order the sender gave them
# resolve(key, tenant, metric, labels) -> series id: the store's cache, then its series table
Resolver = Callable[[SeriesKey, str, str, dict[str, str]], int]


class Columns:
    """Accumulates points as columns, in the order they are added (that order decides which of two
    points with the same series and t is kept)."""

    __slots__ = ("_pieces", "_sids", "_spilled", "_ts", "_vs")

    def __init__(self) -> None:
        # Columns as they came (a body's or a report's, as bytes), joined once by :meth:`sorted`:
        # growing one array by each body's columns reallocated it again and again (~5 % of the
        # worker draining remote write). The arrays gather what comes a series at a time.
        self._pieces: list[tuple[bytes | bytearray, bytes | bytearray, bytes | bytearray]] = []
        self._spilled = 0  # points in the pieces
        self._sids = array("q")
        self._ts = array("q")
        self._vs = array("d")

    def __len__(self) -> int:
        return self._spilled + len(self._ts)

    def _put(self, sids: bytes, ts: bytes, vs: bytes) -> None:
        """Append columns (native-endian int64, int64, float64 bytes), after the arrays' points."""
        self._spill()
        self._pieces.append((sids, ts, vs))
        self._spilled += len(ts) // 8

    def _spill(self) -> None:
        """The arrays' points into a piece (the arrays emptied in place: their bound methods stay
        valid)."""
        if len(self._ts):
            self._pieces.append((self._sids.tobytes(), self._ts.tobytes(), self._vs.tobytes()))
            self._spilled += len(self._ts)
            del self._sids[:], self._ts[:], self._vs[:]

    def add(
        self, tenant: str, points: Iterable[PointLike], known: dict[SeriesKey, int], resolve: Resolver
    ) -> None:
        """Append ``points``; a series is looked up in ``known`` (the store's cache), else resolved.

        The hot loop, in Rust (``lossproof._native.point_columns``, native/src/lib.rs): per point it
        read four attributes and built the series key tuple to look up, most of a batch's cost in
        Python (docs/store.md, "Native code"). A decoder may hand over one labels dict for a series'
        points in a row (as OTLP does): such a run is looked up once. Nothing is appended when a
        point cannot be stored (a ``t`` that is not an int64, a ``v`` that is not a float). A native
        report decoded in Rust (:class:`PointsBlock`) is looked up once per series
        (``lossproof._native.report_columns``, native/src/reports.rs), its columns copied as they are."""
        if isinstance(points, PointsBlock):
            sids, ts, vs = _native.report_columns(tenant, points.block, known, resolve)
        else:
            pts = points if isinstance(points, list) else list(points)
            sids, ts, vs = _native.point_columns(tenant, pts, known, resolve)
        self._put(sids, ts, vs)

    def add_series(
        self,
        tenant: str,
        series: Iterable[SeriesSamples | SeriesBlock],
        known: dict[SeriesKey, int],
        resolve: Resolver,
    ) -> None:
        """Append each series' columns: one look-up per series, the samples copied in C, the
        series ids repeated by numpy once for all of them. A block (a remote-write body's series,
        decoded in Rust) becomes its columns in ``lossproof._native.block_columns`` (native/src/rwcols.rs):
        per series its key tuple is found by the key's text (as in :meth:`add`) and looked up once."""
        ids: list[int] = []
        counts: list[int] = []
        ts_extend, vs_extend = self._ts.extend, self._vs.extend
        try:
            for s in series:
                if isinstance(s, SeriesBlock):
                    # the series before it first (the columns stay in the batch's order)
                    self._sids.frombytes(np.repeat(np.array(ids, dtype=np.int64), counts).tobytes())
                    ids.clear()
                    counts.clear()
                    self._put(*_native.block_columns(tenant, s.block, s.first, s.last, known, resolve))
                    continue
                key = (tenant, s.metric, *s.labels.items())
                sid = known.get(key)
                if sid is None:
                    sid = resolve(key, tenant, s.metric, s.labels)
                # converted first: a bad value refuses the series before either column grows
                ts_s, vs_s = array("q", s.t), array("d", s.v)
                n = len(ts_s)
                if len(vs_s) != n:
                    raise ValueError(f"series {s.metric}: {n} timestamps, {len(vs_s)} values")
                ts_extend(ts_s)
                vs_extend(vs_s)
                ids.append(sid)
                counts.append(n)
        finally:  # the ids of the series appended (the columns stay aligned)
            self._sids.frombytes(np.repeat(np.array(ids, dtype=np.int64), counts).tobytes())

    def in_order(self) -> tuple[array[int], array[int], array[float]]:
        """The columns as they were added (not sorted, duplicates kept)."""
        self._spill()
        sids, ts, vs = array("q"), array("q"), array("d")
        for s, t, v in self._pieces:
            sids.frombytes(s)
            ts.frombytes(t)
            vs.frombytes(v)
        return sids, ts, vs

    def sorted(self, provisional: Sequence[int] = ()) -> tuple[chunks.I64, chunks.I64, chunks.F64]:
        """(series ids, timestamps, values) sorted by (series, t), one point per (series, t); the
        arrays may be read-only and share the columns' memory (never write into them).

        A resolver may hand out provisional ids for series it resolves later in bulk (PostgreSQL):
        ``-1 - k`` stands for ``provisional[k]``, replaced before sorting (so the batch's first
        write still wins when two keys, labels in another order, turn out to be one series)."""
        self._spill()
        if len(self._pieces) > 1:  # (one copy)
            s, t, v = zip(*self._pieces, strict=True)
            self._pieces[:] = [(bytearray().join(s), bytearray().join(t), bytearray().join(v))]
        sids_b, ts_b, vs_b = self._pieces[0] if self._pieces else (b"", b"", b"")
        sids = np.frombuffer(sids_b, dtype=np.int64)
        if len(provisional):
            neg = sids < 0
            if neg.any():
                sids = sids.copy()
                sids[neg] = np.asarray(provisional, dtype=np.int64)[-1 - sids[neg]]
        ts, vs = np.frombuffer(ts_b, dtype=np.int64), np.frombuffer(vs_b, dtype=np.float64)
        return chunks.sort_dedup(sids, ts, vs)


# Spans of time a first-write-wins check reads at most for one batch (see time_spans).
MAX_SPANS = 16


def time_spans(
    ts: chunks.I64, max_spans: int = MAX_SPANS, min_gap: int = COMPACT_WINDOW_MS
) -> list[tuple[int, int]]:
    """The times ``ts`` (any order) covered by at most ``max_spans`` spans ``(lo, hi)``, cut at the
    widest gaps between them longer than ``min_gap``: what a store reads to learn which of them are
    stored. Points from a few far-apart times (bodies resent from the start and the end of a
    backlog) become a span each, so the read skips what is stored between them; closer ones stay
    one span, as a packed chunk holds a window of ``COMPACT_WINDOW_MS`` (two spans in one window
    would decode it twice; the embedded store's merged chunks hold 12 h, which spans 2-12 h apart
    then decode more than once: only for points older than the writer remembers)."""
    u = np.unique(ts)
    if not len(u):
        return []
    gaps = np.diff(u)
    wide = np.flatnonzero(gaps > min_gap)
    if len(wide) >= max_spans:
        wide = np.sort(wide[np.argsort(gaps[wide], kind="stable")[len(wide) - max_spans + 1 :]])
    los = [int(u[0]), *u[wide + 1].tolist()]
    his = [*u[wide].tolist(), int(u[-1])]
    return list(zip(los, his, strict=True))


# stored_ts(series ids, lo, hi) -> the stored timestamps of each in [lo, hi], sorted
StoredTimes = Callable[[list[int], int, int], list[chunks.I64]]


_T = TypeVar("_T")
_P = ParamSpec("_P")


def reads_stored(read: Callable[_P, _T]) -> Callable[_P, _T]:
    """A write's read of what is already stored (the ledger, the newest times, stored points), in
    either store: a failure there is the store's (a damaged part or chunk), never the batch's,
    whatever its type (a part cut short raised ValueError, which the worker took for the batch's
    fault and dead-lettered acknowledged records on). It becomes :class:`StoreUnavailable`: the
    batch is kept. (:class:`~lossproof.store.quarantine.SetAside` goes through: damaged rows were
    set aside, the write reads again.)"""

    @functools.wraps(read)
    def reading(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return read(*args, **kwargs)
        except (StoreUnavailable, SetAside):
            raise
        except Exception as e:
            raise StoreUnavailable(f"stored data unreadable: {type(e).__name__}: {e}") from e

    return reading


def not_stored(sids: chunks.I64, ts: chunks.I64, stored_ts: StoredTimes) -> npt.NDArray[np.bool_]:
    """Which of the points (sorted by series, then t) are not stored yet (first write wins), asking
    ``stored_ts`` once per span of their times (:func:`time_spans`) for the span's series. One read
    over the range of all of them read everything stored in between: a batch holding bodies resent
    from far apart in time (a client's retries, a pool of bodies sent again) read and decoded most of
    the store, for each batch."""
    out = np.ones(len(ts), dtype=bool)
    for lo, hi in time_spans(ts):
        at = np.flatnonzero((ts >= lo) & (ts <= hi))
        s, t = sids[at], ts[at]
        starts, ends = chunks.series_bounds(s)
        olds = stored_ts(s[starts].tolist(), lo, hi)
        width = hi - lo + 1
        if len(starts) * width < 1 << 62:
            # every series of the span at once: (series position, t - lo) as one sorted int64 key
            old_key = np.repeat(np.arange(len(olds), dtype=np.int64) * width, [len(o) for o in olds])
            if len(old_key):
                old_key += np.concatenate(olds) - lo
                new_key = np.repeat(np.arange(len(starts), dtype=np.int64) * width, ends - starts) + (t - lo)
                idx = np.minimum(np.searchsorted(old_key, new_key), len(old_key) - 1)
                out[at] = old_key[idx] != new_key
            continue
        for a, b, old in zip(starts.tolist(), ends.tolist(), olds, strict=True):
            if len(old):
                out[at[a:b]] = ~np.isin(t[a:b], old, assume_unique=True)
    return out
