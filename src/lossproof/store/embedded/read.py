"""The embedded store's read path: queries, PromQL selectors, the ledger, agents, conflicts; each
read is one short read transaction."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from lossproof.log.base import LogGap
from lossproof.native_ext import _native
from lossproof.store import chunks
from lossproof.store import ledger as lg
from lossproof.store.base import (
    AgentSummary,
    Conflict,
    Ledger,
    Matcher,
    MetricMetadata,
    RatePiece,
    RateWindows,
    SeqRange,
    SeriesArrays,
    StoreWouldWait,
    matches_all,
)
from lossproof.store.embedded.common import (
    _LABELS_DECODER,
    _PART_ORDER,
    _SELECT_CHUNKS_OF,
    REPORT_TIMES_FROM,
    _LedgerRow,
)
from lossproof.store.embedded.core import SqliteCore
from lossproof.store.quarantine import TABLE
from lossproof.store.series_index import Found, TenantIndex


class PartBlock(NamedTuple):
    """Many series' slices of one part, read at once: ``ts``/``vs`` a range of the part's columns,
    slice k of the series at position ``found[k]`` (in the read's series) from ``starts[k]``,
    ``lens[k]`` points; ``order`` the part's rank among the series' chunks (after all of them)."""

    found: npt.NDArray[np.int64]
    order: int
    ts: chunks.I64
    vs: chunks.F64
    starts: npt.NDArray[np.int64]
    lens: npt.NDArray[np.int64]


# A live part's (id, layout, (series ids, each one's newest t, where each one's points start)).
_PartDir = tuple[int, chunks.PartLayout, tuple[chunks.I64, chunks.I64, chunks.I64]]


def _assemble(
    found: Sequence[Found],
    rows: list[tuple[int, int, int, int, bytes]],
    extra: dict[int, list[tuple[int, chunks.I64, chunks.F64]]],
    from_ms: int,
    to_ms: int,
    blocks: Sequence[PartBlock] = (),
    scratch: list[bytearray] | None = None,
) -> list[tuple[chunks.I64, chunks.F64]]:
    """Each series' points in [from_ms, to_ms] from its chunks ``rows``
    ``(series_id, id, t_min, t_max, data)`` (any order) and its slices of parts (``extra``:
    ``(order, ts, vs)`` by position in ``found``; ``blocks``: many series' slices of one part at
    once): what :func:`chunks.merge_arrays` answers, series by series.

    Every segment (a chunk, a part slice) is put in (series, time) order first, by the chunks' stored
    time ranges, and given its place in one pair of columns; the chunks are then decoded straight
    into their places (:func:`chunks.decode_into`: no second copy of their points) and the part
    slices copied into theirs. A chunk whose decoded first or last t is not its stored range is a
    ChunkError. A series whose segments follow one another in time (no t in two of them: the usual
    case) is then a slice of those columns; the others go through :func:`chunks.merge_arrays`.

    ``scratch`` (a list of one bytearray, the read's own): the columns are decoded into that
    buffer when it is large enough (else into a new one, which becomes the scratch) rather than
    fresh memory, and the arrays answered are views of it: good only until the next call with the
    same scratch."""
    empty_t, empty_v = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    n_found = len(found)
    ex = [(i, o, t, v) for i, segs in extra.items() for o, t, v in segs if len(t)]
    if not rows and not ex and not blocks:
        return [(empty_t, empty_v)] * n_found
    sid_of = np.array([sid for sid, _, _ in found], dtype=np.int64)
    # the rows' columns: at once by the native extension, raw and packed chunks alike, when every
    # header is one chunks.open_many accepts; else each chunk opened in Python, which raises the
    # ChunkError that says what is wrong
    heads = _native.row_heads(rows)
    items: list[chunks.OpenedChunk] | None = None
    if heads is not None:
        r_sid, r_id, r_tmin, r_tmax, counts = np.frombuffer(heads, dtype=np.int64).reshape(5, len(rows))
    else:
        items, counts = chunks.open_many([r[4] for r in rows])
        r_sid, r_id, r_tmin, r_tmax = (
            np.fromiter((r[c] for r in rows), dtype=np.int64, count=len(rows)) for c in range(4)
        )
    # segments: the chunks (source 0), the extra slices (source 1, put together), then each block
    # (source 2 + j); start: where in its source (chunks: not decoded yet)
    ex_ts = [e[2].astype(np.int64, copy=False) for e in ex]
    sid_l = [r_sid, sid_of[[e[0] for e in ex]]]
    order_l = [r_id, np.array([e[1] for e in ex], dtype=np.int64)]
    lens_l = [counts, np.array([len(t) for t in ex_ts], dtype=np.int64)]
    tmin_l = [r_tmin, np.array([int(t[0]) for t in ex_ts], dtype=np.int64)]
    tmax_l = [r_tmax, np.array([int(t[-1]) for t in ex_ts], dtype=np.int64)]
    start_l = [np.zeros(len(rows), dtype=np.int64), np.zeros(len(ex), dtype=np.int64)]
    if ex:
        np.cumsum(lens_l[1][:-1], out=start_l[1][1:])
    src_ts: list[chunks.I64] = [empty_t, np.concatenate(ex_ts) if ex else empty_t]
    src_vs: list[chunks.F64] = [
        empty_v,
        np.concatenate([e[3] for e in ex]).astype(np.float64) if ex else empty_v,
    ]
    src_l = [np.zeros(len(rows), dtype=np.int64), np.ones(len(ex), dtype=np.int64)]
    for b in blocks:
        has = b.lens > 0
        sid_l.append(sid_of[b.found])
        order_l.append(np.full(len(b.found), b.order, dtype=np.int64))
        lens_l.append(b.lens)
        start_l.append(b.starts)
        tmin_l.append(np.where(has, b.ts[np.minimum(b.starts, len(b.ts) - 1)] if len(b.ts) else 0, 0))
        tmax_l.append(np.where(has, b.ts[np.maximum(b.starts + b.lens - 1, 0)] if len(b.ts) else 0, 0))
        src_l.append(np.full(len(b.found), len(src_ts), dtype=np.int64))
        src_ts.append(b.ts)
        src_vs.append(b.vs)
    chunk_no = np.r_[np.arange(len(rows), dtype=np.int64), np.full(sum(len(x) for x in sid_l[1:]), -1)]
    sid, order_id, lens, start, src, tmin, tmax = (
        np.concatenate(x).astype(np.int64, copy=False)
        for x in (sid_l, order_l, lens_l, start_l, src_l, tmin_l, tmax_l)
    )
    keep = lens > 0
    sid, order_id, lens, start, src = sid[keep], order_id[keep], lens[keep], start[keep], src[keep]
    tmin, tmax, chunk_no = tmin[keep], tmax[keep], chunk_no[keep]
    if not len(sid):
        return [(empty_t, empty_v)] * n_found
    # segments by series, then time: each series' segments a run, laid out in that order
    order = np.lexsort((order_id, tmin, sid))
    sid, order_id, lens, start, src = sid[order], order_id[order], lens[order], start[order], src[order]
    tmin, tmax, chunk_no = tmin[order], tmax[order], chunk_no[order]
    dest = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=dest[1:])
    total = int(dest[-1] + lens[-1])
    # the chunks decoded into their places (chunks without points have none: any place will do)
    at = np.zeros(len(rows), dtype=np.int64)
    is_chunk = chunk_no >= 0
    at[chunk_no[is_chunk]] = dest[is_chunk]
    if items is None:
        # the chunks decoded (a packed one decompressed) and the part slices copied into their places
        # at once, their times checked on the way (what decode_into, the range check and the copies
        # below do)
        segs = ~is_chunk
        seg = [np.ascontiguousarray(x[segs], dtype=np.int64).tobytes() for x in (src - 1, start, dest, lens)]
        at_b = at.tobytes()
        more_ts = [np.ascontiguousarray(x, dtype=np.int64) for x in src_ts[1:]]
        more_vs = [np.ascontiguousarray(x, dtype=np.float64) for x in src_vs[1:]]
        try:
            cols: bytearray
            if scratch is None or len(scratch[0]) < 16 * total:
                cols, verdict = _native.assemble_rows(rows, at_b, total, more_ts, more_vs, *seg)
                if scratch is not None:  # the next piece's buffer (a new one: the old may be viewed)
                    scratch[0] = cols
            else:
                cols = scratch[0]
                verdict = _native.assemble_rows_into(cols, rows, at_b, total, more_ts, more_vs, *seg)
        except ValueError as e:  # row_heads checked every row: a mismatch left is a bug, said as damage
            raise chunks.ChunkError(str(e)) from None
        if verdict == 4:  # a packed body did not decompress: opened in Python, which says why
            items, _ = chunks.open_many([r[4] for r in rows])
        ts = np.frombuffer(cols, dtype="<i8", count=total).astype(np.int64, copy=False)
        vs = np.frombuffer(cols, dtype="<f8", count=total, offset=8 * total).astype(np.float64, copy=False)
        if verdict in (1, 3):
            raise chunks.ChunkError("a chunk's times are not increasing")
        if verdict == 2:
            raise chunks.ChunkError("a chunk's points are not its stored time range")
    if items is not None:
        ts, vs = chunks.decode_into(items, at, total)
        c_dest, c_len = dest[is_chunk], lens[is_chunk]
        if not (
            np.array_equal(ts[c_dest], tmin[is_chunk])
            and np.array_equal(ts[c_dest + c_len - 1], tmax[is_chunk])
        ):
            raise chunks.ChunkError("a chunk's points are not its stored time range")
        # the part slices copied into theirs, source by source
        for j in range(1, len(src_ts)):
            here = src == j
            if not here.any():
                continue
            n_ = lens[here]
            o_ = np.zeros(len(n_), dtype=np.int64)
            np.cumsum(n_[:-1], out=o_[1:])
            within = np.arange(int(n_.sum()), dtype=np.int64) - np.repeat(o_, n_)
            to_ = np.repeat(dest[here], n_) + within
            from_ = np.repeat(start[here], n_) + within
            ts[to_] = src_ts[j][from_]
            vs[to_] = src_vs[j][from_]
        if not is_chunk.all():  # the part slices' times strictly increasing too (decode_into checked chunks)
            chunks.check_increasing(ts, dest[~is_chunk], lens[~is_chunk])
    run_start = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    run_end = np.r_[run_start[1:], len(sid)]
    # a run is simple when its segments are in time order without overlap: no t is in two of them
    ok = np.ones(len(sid), dtype=bool)
    ok[1:] = ~((sid[1:] == sid[:-1]) & (tmax[:-1] >= tmin[1:]))
    simple = np.logical_and.reduceat(ok, run_start)
    # each simple run's points inside [from_ms, to_ms] (a binary search in each run, all at once)
    first_pt = dest[run_start][simple]
    last_pt = (dest[run_end - 1] + lens[run_end - 1])[simple]
    a_s = chunks.search_runs(ts, first_pt, last_pt, from_ms, right=False).tolist()
    b_s = chunks.search_runs(ts, first_pt, last_pt, to_ms, right=True).tolist()
    nth_simple = (np.cumsum(simple) - 1).tolist()
    simple_l = simple.tolist()
    by_sid = {s: r for r, s in enumerate(sid[run_start].tolist())}
    out: list[tuple[chunks.I64, chunks.F64]] = []
    for i in range(n_found):
        r = by_sid.get(found[i][0])
        if r is None:
            out.append((empty_t, empty_v))
        elif simple_l[r]:
            k = nth_simple[r]
            out.append((ts[a_s[k] : b_s[k]], vs[a_s[k] : b_s[k]]))
        else:
            parts = []
            for c in range(run_start[r], run_end[r]):
                d, n = int(dest[c]), int(lens[c])
                parts.append((int(order_id[c]), ts[d : d + n], vs[d : d + n]))
            out.append(chunks.merge_arrays(parts, from_ms, to_ms))
    return out


def _rate_rows(
    found: Sequence[Found],
    rows: list[tuple[int, int, int, int, bytes]],
    from_ms: int,
    to_ms: int,
    rate: RateWindows,
) -> RatePiece | None:
    """The windows of the series ``found`` from their chunk rows (all the points they have in
    ``[from_ms, to_ms]``, their slices of parts as rows of their own: :func:`_part_rows`), by
    ``_native.rate_rows_start``: each series decoded and its windows computed while its points are
    in the CPU's cache, which a piece's columns are not (:func:`_assemble` writes them all, then
    ``rate`` reads them all back). The answer is the same as ``rate.of_arrays`` of what
    :func:`_assemble` makes of the rows. None where that plain case does not hold (a row the
    extension does not read, a chunk without points, two chunks of a series that overlap in time,
    a chunk that does not decode as its row says): the caller then reads the piece as arrays,
    which says what is wrong if anything is."""
    begun = _rate_rows_start(found, rows, from_ms, to_ms, rate)
    return None if begun is None else _rate_rows_finish(found, begun)


def _rate_rows_start(
    found: Sequence[Found],
    rows: list[tuple[int, int, int, int, bytes]],
    from_ms: int,
    to_ms: int,
    rate: RateWindows,
    out: tuple[chunks.F64, npt.NDArray[np.bool_], npt.NDArray[np.int64]] | None = None,
) -> _Begun | None:
    """:func:`_rate_rows` begun (``_native.rate_rows_start``: another thread computes the series
    from now on, into arrays of zeros made here, or ``out``'s rows: calloc's, whose pages are
    faulted in by the threads that write them, not by this one), or None where the rows are not
    the plain case."""
    n_rows = len(rows)
    if not n_rows or not (-(2**63) <= from_ms <= to_ms < 2**63):
        return None
    heads = _native.row_heads(rows)
    if heads is None:
        return None
    r_sid, r_id, r_tmin, r_tmax, counts = np.frombuffer(heads, dtype=np.int64).reshape(5, n_rows)
    if not counts.all():
        return None
    # each series' chunks in time order, one after the other in one column: their places, as
    # _assemble lays them out
    order = np.lexsort((r_id, r_tmin, r_sid))
    sid, tmin, tmax, lens = r_sid[order], r_tmin[order], r_tmax[order], counts[order]
    same = sid[1:] == sid[:-1]
    if (same & (tmax[:-1] >= tmin[1:])).any():
        return None  # (merged by chunks.merge_arrays there)
    dest = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(lens[:-1], out=dest[1:])
    at = np.empty(n_rows, dtype=np.int64)
    at[order] = dest
    run_start = np.flatnonzero(np.r_[True, ~same])
    run_end = np.r_[run_start[1:], n_rows]
    run_of = {s: r for r, s in enumerate(sid[run_start].tolist())}
    starts, ends = dest[run_start], dest[run_end - 1] + lens[run_end - 1]
    rs = np.array([run_of.get(f[0], -1) for f in found], dtype=np.int64)
    has = rs >= 0
    firsts = np.where(has, starts[rs], 0)
    lasts = np.where(has, ends[rs], 0)
    m, n = len(found), len(rate.at)
    if out is None:
        values, present, points = np.zeros((m, n)), np.zeros((m, n), dtype=bool), np.zeros(m, dtype=np.int64)
    else:  # (rows of zeros of the caller's, one a series)
        values, present, points = out
    job = _native.rate_rows_start(
        values,
        present.view(np.uint8),
        points,
        rows,
        at.tobytes(),
        firsts.tobytes(),
        lasts.tobytes(),
        from_ms,
        to_ms,
        np.ascontiguousarray(rate.at, dtype=np.int64).tobytes(),
        rate.rng,
        rate.is_rate,
        rate.is_counter,
        rate.closed,
    )
    return _Begun(job, values, present, points)


# The most cells (series x windows) select_rate_each computes into one array for all its pieces
# (512 MB of values at most, of which only what has windows is ever touched).
_WHOLE_CELLS = 1 << 26


class _Begun(NamedTuple):
    """A begun :func:`_rate_rows`: its job, and the arrays it writes (not to be read before its
    ``finish``)."""

    job: _native.RateJob
    values: chunks.F64
    present: npt.NDArray[np.bool_]
    points: npt.NDArray[np.int64]


def _rate_rows_finish(found: Sequence[Found], begun: _Begun) -> RatePiece | None:
    """The piece of a begun :func:`_rate_rows`, None where some chunk did not decode as its row
    says."""
    if begun.job.finish():
        return None
    m = len(found)
    values, present, points = begun.values, begun.present, begun.points
    keep = np.flatnonzero(points > 0)  # (series without points are left out, as _arrays does)
    if len(keep) < m:
        values, present = values[keep], present[keep]
    return RatePiece([dict(found[i][2]) for i in keep.tolist()], int(points.sum()), values, present)


def _part_rows(
    found: Sequence[Found],
    extra: dict[int, list[tuple[int, chunks.I64, chunks.F64]]],
    blocks: Sequence[PartBlock],
    from_ms: int,
    to_ms: int,
) -> list[tuple[int, int, int, int, bytes]]:
    """The series' slices of live parts (:meth:`SqliteReader._part_slices`) as the chunk rows
    ``(series_id, rank, t_min, t_max, RAW data)`` that :func:`_rate_rows_start` reads alongside
    the series' chunk rows, each ranked after every chunk as :func:`_assemble` ranks it; only the
    slices that overlap ``[from_ms, to_ms]``, as the chunk rows are selected, and damaged ones. A
    series has its newest points in parts for the first seconds after they are stored, so every
    query up to "now" meets them while points arrive."""
    out: list[tuple[int, int, int, int, bytes]] = []
    one, zero = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    # a slice read alone is a block of one slice
    alone = [
        PartBlock(i * one, order, ts, vs, zero, len(ts) * one)
        for i, segs in extra.items()
        for order, ts, vs in segs
    ]
    if alone or blocks:
        sid_of = np.array([sid for sid, _, _ in found], dtype=np.int64)
        for b in (*alone, *blocks):
            out.extend(_block_rows(sid_of, b, from_ms, to_ms))
    return out


def _block_rows(
    sid_of: chunks.I64, b: PartBlock, from_ms: int, to_ms: int
) -> list[tuple[int, int, int, int, bytes]]:
    """:func:`_part_rows` of one block (``sid_of``: the read's series ids, by position), made by
    the extension (``_native.slice_rows``: the same tests and rows, in Python ~1 us a slice, a
    millisecond of a query over 200 series right after a load with 6 parts live)."""
    return _native.slice_rows(
        np.ascontiguousarray(sid_of[b.found], dtype=np.int64).tobytes(),
        b.order,
        b.ts.astype("<i8", copy=False).tobytes(),
        b.vs.astype("<f8", copy=False).tobytes(),
        np.ascontiguousarray(b.starts, dtype=np.int64).tobytes(),
        np.ascontiguousarray(b.lens, dtype=np.int64).tobytes(),
        from_ms,
        to_ms,
    )


def _read_whole(hits: int, series: int, span: int, wanted: int) -> bool:
    """Whether a part's slices of ``hits`` of its ``series`` series are read as one range of each
    column (``span`` points from the first hit series' to the last's, of which ``wanted`` are
    theirs) rather than a seek and a read a slice: where many of its series are wanted, or their
    points lie close together (a metric's series were mostly created together: their ids, and so
    their points, are near). A slice read alone costs a few microseconds in Python, a point read
    for nothing a few nanoseconds."""
    return hits * 16 > series or (hits > 1 and span <= 4 * wanted + 65_536)


class _PieceRead(NamedTuple):
    """What :meth:`SqliteReader.select_rate_each` read of a piece, as :func:`_assemble` takes it:
    its chunk rows and its slices of the live parts."""

    rows: list[tuple[int, int, int, int, bytes]]
    extra: dict[int, list[tuple[int, chunks.I64, chunks.F64]]]
    blocks: list[PartBlock]


def _series_arrays(found: Sequence[Found], points: list[tuple[chunks.I64, chunks.F64]]) -> list[SeriesArrays]:
    """The series ``found`` with their ``points`` (:func:`_assemble`'s), those without any left out."""
    return [
        SeriesArrays(metric, dict(lab), ts, vs)
        for (_, metric, lab), (ts, vs) in zip(found, points, strict=True)
        if len(ts)
    ]


# Brief reads (StoreReader.brief_reads) answer from the series index when at most BRIEF_MAX_NEW series
# are new since it last caught up (reading them: ~1-2 ms), the tenant has at most BRIEF_MAX_SERIES
# (numpy's work on the tenant's positions: ~0.1 ms), and the read's own work fits BRIEF_BUDGET units
# (TenantIndex.charge: about a microsecond each). Measured on a 20,000-series tenant: listing 11,000
# series took 125 ms, matching a regex against its 20,000 instances ~40 ms; within the budget, ~1-3 ms.
BRIEF_MAX_NEW = 1_000
BRIEF_MAX_SERIES = 100_000
BRIEF_BUDGET = 2_000


class _NoWaiting:
    """A brief handle's connection as the rest of the read path sees it: every use is refused, so that
    no read but the series index's (which uses the real connection, :meth:`SqliteReader._indexed`)
    can wait on the event loop."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def close(self) -> None:
        self.con.close()

    def __getattr__(self, name: str) -> Any:
        raise StoreWouldWait(f"{name}: not a brief read")


class SqliteReader(SqliteCore):
    """The read path of the embedded store."""

    _brief: _NoWaiting | None = None
    _brief_left = 0  # what the current brief request may still spend (TenantIndex.charge units)

    def brief_reads(self) -> bool:
        """See :meth:`StoreReader.brief_reads`: the series index's reads, without SQLite's busy wait
        (a reader in WAL mode waits only in rare moments: a WAL being recovered or reset), the index's
        lock taken only if free (a read thread may hold it for a long match), for a tenant of at most
        :data:`BRIEF_MAX_SERIES` series and reads within :data:`BRIEF_BUDGET`."""
        if self._brief is None and self.readonly:
            self._con.execute("PRAGMA busy_timeout = 0")
            self._brief = self._con = _NoWaiting(self._con)  # type: ignore[assignment]
        self._brief_left = BRIEF_BUDGET
        return self._brief is not None

    def charge_brief(self, units: int) -> None:
        if self._brief is not None:
            self._brief_left -= units
            if self._brief_left < 0:
                raise StoreWouldWait("too much work for a brief read")

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
            if self._older_than(REPORT_TIMES_FROM):  # a reader ahead of the writer's upgrade: no times yet
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

    def dead_letter_count(self, tenant: str | None = None) -> int:
        with self._lock:
            if tenant is None:
                return int(self._read("SELECT count(*) FROM dead_letters", ())[0][0])
            return int(self._read("SELECT count(*) FROM dead_letters WHERE tenant = ?", (tenant,))[0][0])

    def set_aside_count(self) -> tuple[int, int]:
        with self._lock:
            try:
                [(rows, points)] = self._read(f"SELECT count(*), coalesce(sum(n), 0) FROM {TABLE}", ())
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
                return 0, 0  # (a writer adds it when it opens the store)
        return int(rows), int(points)

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

    @contextlib.contextmanager
    def _indexed(self, tenant: str) -> Iterator[TenantIndex | None]:
        """The tenant's series index, brought up to date (see :mod:`lossproof.store.series_index`),
        used under its lock; None when it is disabled (too many series). Call under ``self._lock``."""
        index = self._index
        if self._brief is None:
            with index.lock:
                index.sync_sqlite(self._con.execute)
                yield index.tenant(tenant)
            return
        if not index.lock.acquire(blocking=False):
            raise StoreWouldWait("the series index is in use")
        try:
            try:
                current = index.sync_sqlite(self._brief.con.execute, most=BRIEF_MAX_NEW)
            except sqlite3.Error as e:  # busy, or anything a read thread should see and report
                raise StoreWouldWait(str(e)) from e
            t = index.tenant(tenant)
            if not current or t is None or len(t) > BRIEF_MAX_SERIES:
                raise StoreWouldWait("too much to do for a brief read")
            t.budget = self._brief_left  # one budget for all of the request's reads
            try:
                yield t
            finally:
                self._brief_left, t.budget = t.budget, None
        finally:
            index.lock.release()

    def _matching(self, tenant: str, matchers: Sequence[Matcher]) -> list[Found]:
        """(id, metric, labels) of the tenant's series matching all matchers, sorted by metric then
        labels; from the series index. Call under the lock."""
        with self._indexed(tenant) as t:
            if t is not None:
                return t.sorted_found(t.match(matchers))
        return self._matching_sql(tenant, matchers)

    def _matching_sql(self, tenant: str, matchers: Sequence[Matcher]) -> list[Found]:
        """:meth:`_matching` from the series table, without the index (when it is disabled, and as
        the reference the index is tested against). An equality matcher on the metric name narrows
        the scan to that metric (an index prefix); every other matcher is applied here."""
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
        out: list[Found] = []
        for sid, metric, labels_json in rows:
            lab = _LABELS_DECODER.decode(labels_json)
            if matches_all(matchers, metric, lab):
                out.append((sid, metric, tuple(sorted(lab.items()))))
        out.sort(key=lambda r: (r[1], r[2]))
        return out

    def series(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return [(metric, dict(lab)) for _, metric, lab in self._matching(tenant, matchers)]

    def label_names(self, tenant: str, selectors: Sequence[Sequence[Matcher]] | None = None) -> list[str]:
        with self._lock, self._indexed(tenant) as t:
            if t is not None:
                return t.sorted_label_names(t.match_any(selectors))
        return super().label_names(tenant, selectors)

    def label_values(
        self, tenant: str, name: str, selectors: Sequence[Sequence[Matcher]] | None = None
    ) -> list[str]:
        with self._lock, self._indexed(tenant) as t:
            if t is not None:
                return t.sorted_label_values(name, t.match_any(selectors))
        return super().label_values(tenant, name, selectors)

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
        return self.label_values(tenant, "__name__")

    def select_arrays(
        self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int
    ) -> list[SeriesArrays]:
        with self._lock, self._snapshot():
            return self._arrays(self._matching(tenant, matchers), from_ms, to_ms)

    def select_arrays_each(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        from_ms: int,
        to_ms: int,
        each: Callable[[list[SeriesArrays]], None],
        series_per_call: int = 256,
    ) -> None:
        """See :meth:`StoreReader.select_arrays_each`: the matching series read ``series_per_call``
        at a time, in one snapshot (``each`` is called under the lock: it must not use this handle).
        Every piece's columns are decoded into one buffer (:func:`_assemble`'s scratch): a piece's
        arrays are good until ``each`` returns, and the memory is not faulted in fresh for every
        piece (glibc maps a block of a piece's size afresh each time, and gives it back)."""
        with self._lock, self._snapshot():
            found = self._matching(tenant, matchers)
            step = max(1, series_per_call)
            scratch = [bytearray()]  # the pieces' columns, one buffer for all (each is done with one)
            for k in range(0, max(1, len(found)), step):
                each(self._arrays(found[k : k + step], from_ms, to_ms, scratch))

    def select_rate_each(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        from_ms: int,
        to_ms: int,
        rate: RateWindows,
        each: Callable[[RatePiece], None],
        series_per_call: int = 256,
    ) -> None:
        """See :meth:`StoreReader.select_rate_each`: :meth:`select_arrays_each`'s pieces, each
        piece's windows computed from its chunk rows as they are decoded (:func:`_rate_rows`),
        its slices of live parts read as rows too (:func:`_part_rows`), or from the piece's arrays
        where that plain case does not hold (a series' chunks or part slices overlapping in time).

        A piece's windows are begun on another thread before the next piece's rows are read here
        (:func:`_rate_rows_start`), and this thread then takes its share of them
        (:func:`_rate_rows_finish`): reading the rows (SQLite, a Python object a chunk) is a third
        of the work and one thread's alone; done while the other CPU computes, the two are busy
        together. (A thread of our own that read the next rows while both computed was slower:
        three threads for two CPUs, and the GIL passed between the two Python ones.)"""
        with self._lock, self._snapshot():
            found = self._matching(tenant, matchers)
            # at least two pieces from 64 series: the second's rows are read while the other
            # thread computes the first (one piece's rows were read with the other CPU idle)
            step = max(1, min(series_per_call, max(32, -(-len(found) // 2))))
            parts = self._parts_dirs(from_ms, to_ms) if found else []
            scratch = [bytearray()]  # the arrays' pieces' columns, as select_arrays_each has them

            def done(piece: Sequence[Found], job: _Begun | None, read: _PieceRead) -> RatePiece:
                got = None if job is None else _rate_rows_finish(piece, job)
                if got is None:  # (from what was read for the rows, not read again)
                    points_of = _assemble(piece, read.rows, read.extra, from_ms, to_ms, read.blocks, scratch)
                    arrays = _series_arrays(piece, points_of)
                    points = sum(len(s.t) for s in arrays)
                    got = RatePiece([dict(s.labels) for s in arrays], points, *rate.of_arrays(arrays))
                return got

            # every piece's windows in the rows of one array (of zeros, from calloc: the pages
            # no window is written to are never touched), not each in its own: the evaluator
            # then takes them as they are (promql's _rate_in_pieces), where it concatenated the
            # pieces (18 MB for a day of 1,400 series: fresh memory, then a copy). Not for reads
            # so large that their limits (max_series) are the caller's to refuse first.
            whole = None
            if found and len(found) * len(rate.at) <= _WHOLE_CELLS:
                m, n = len(found), len(rate.at)
                whole = (np.zeros((m, n)), np.zeros((m, n), dtype=bool), np.zeros(m, dtype=np.int64))
            begun: tuple[Sequence[Found], _Begun | None, _PieceRead] | None = None
            for k in range(0, max(1, len(found)), step):
                piece = found[k : k + step]
                rows_out = None
                if whole is not None:
                    rows_out = (whole[0][k : k + step], whole[1][k : k + step], whole[2][k : k + step])
                read = self._read_piece(piece, parts, from_ms, to_ms)  # (while the last is computed)
                rows = read.rows + _part_rows(piece, read.extra, read.blocks, from_ms, to_ms)
                if begun is not None:
                    each(done(*begun))
                # (past a limit: counted from arrays, of_arrays computing nothing; a refused query
                # once wrote every piece's windows, hundreds of MB, before its error)
                job = None
                if found and rate.wanted():
                    job = _rate_rows_start(piece, rows, from_ms, to_ms, rate, rows_out)
                begun = (piece, job, read)
            if begun is not None:
                each(done(*begun))

    def _arrays(
        self, found: Sequence[Found], from_ms: int, to_ms: int, scratch: list[bytearray] | None = None
    ) -> list[SeriesArrays]:
        """The points in [from_ms, to_ms] of the series ``found``; series without any are left
        out (``scratch``: see :func:`_assemble`). Call under the lock, in a snapshot."""
        return _series_arrays(found, self._series_points(found, from_ms, to_ms, scratch))

    def _series_points(
        self, found: Sequence[Found], from_ms: int, to_ms: int, scratch: list[bytearray] | None = None
    ) -> list[tuple[chunks.I64, chunks.F64]]:
        """Each series' points in [from_ms, to_ms]: its chunks that overlap the range (an index
        range each) and its slices of the parts that do (a seek into each part's directory)."""
        read = self._read_piece(found, self._parts_dirs(from_ms, to_ms) if found else [], from_ms, to_ms)
        return _assemble(found, read.rows, read.extra, from_ms, to_ms, read.blocks, scratch)

    def _read_piece(
        self, found: Sequence[Found], parts: Sequence[_PartDir], from_ms: int, to_ms: int
    ) -> _PieceRead:
        """The chunk rows of the series ``found`` that overlap [from_ms, to_ms] and their slices of
        the parts ``parts`` (:meth:`_parts_dirs`)."""
        ids = msgspec.json.encode([sid for sid, _, _ in found])
        rows = self._con.execute(_SELECT_CHUNKS_OF, (ids, from_ms, to_ms)).fetchall()
        return _PieceRead(rows, *self._part_slices(found, parts))

    def _part_slices(
        self, found: Sequence[Found], parts: Sequence[_PartDir]
    ) -> tuple[dict[int, list[tuple[int, chunks.I64, chunks.F64]]], list[PartBlock]]:
        """The slices of the parts ``parts`` (:meth:`_parts_dirs`) of the series ``found``, as
        :func:`_assemble` takes them: ``extra`` (by position in ``found``: (order, ts, vs)) and
        ``blocks``."""
        extra: dict[int, list[tuple[int, chunks.I64, chunks.F64]]] = {}
        blocks: list[PartBlock] = []
        if not found:
            return extra, blocks
        con = self._con
        want = np.array([sid for sid, _, _ in found], dtype=np.int64)
        for pid, layout, (psids, _, pstarts) in parts:
            if not len(psids):
                continue
            idx = np.minimum(np.searchsorted(psids, want), len(psids) - 1)
            hits = np.flatnonzero(psids[idx] == want)
            if not len(hits):
                continue
            lo_, hi_ = pstarts[idx[hits]], pstarts[idx[hits] + 1]
            a0, span = int(lo_.min()), int(hi_.max() - lo_.min())
            with con.blobopen("parts", "data", pid, readonly=True) as blob:
                if _read_whole(len(hits), layout.series, span, int((hi_ - lo_).sum())):
                    # the hit series' ranges of the columns, gathered at once from one read of
                    # each column from the first hit series to the last (a metric's series were
                    # mostly created together: their ids, and so their points, are near)
                    blob.seek(layout.ts_offset + 8 * a0)
                    p_ts = np.frombuffer(blob.read(8 * span), "<i8")
                    blob.seek(layout.vs_offset + 8 * a0)
                    p_vs = np.frombuffer(blob.read(8 * span), "<f8")
                    if len(p_ts) != span or len(p_vs) != span:
                        raise chunks.ChunkError(f"part {pid} cut short")
                    # the slices stay where they are in what was read (_assemble copies them)
                    g_ts = p_ts.astype(np.int64, copy=False)
                    g_vs = p_vs.astype(np.float64, copy=False)
                    blocks.append(PartBlock(hits, _PART_ORDER + pid, g_ts, g_vs, lo_ - a0, hi_ - lo_))
                    continue
                for i in hits.tolist():
                    a, b = int(pstarts[idx[i]]), int(pstarts[idx[i] + 1])
                    blob.seek(layout.ts_offset + 8 * a)
                    tb = blob.read(8 * (b - a))
                    blob.seek(layout.vs_offset + 8 * a)
                    vb = blob.read(8 * (b - a))
                    ts = np.frombuffer(tb, "<i8").astype(np.int64)
                    vs = np.frombuffer(vb, "<f8").astype(np.float64)
                    extra.setdefault(i, []).append((_PART_ORDER + pid, ts, vs))
        return extra, blocks

    def _parts_dirs(self, from_ms: int, to_ms: int) -> list[_PartDir]:
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
