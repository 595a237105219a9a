"""Columnar chunks: how both stores lay points out on disk.

A chunk holds the points of one series over a time range, as two columns: timestamps (int64 unix ms,
strictly increasing) and values (float64, bit-exact: NaN payloads such as Prometheus' staleness
marker survive). A store keeps one row per chunk: ``(series_id, t_min, t_max, n, data)``.

Three kinds, told apart by the first byte (two encodings: PENDING is PACKED's):

``RAW`` (written by the worker)
    ``n`` little-endian int64 timestamps, then ``n`` float64 values. Encoding a whole batch costs a
    few numpy calls plus a slice per series (:func:`encode_batch`), so storing costs about what
    decoding the request cost.

``PACKED`` (written by compaction)
    One zstd frame over: timestamps as delta-of-delta, zigzag; values, when every one of them is an
    integer divided by 10**k for some k <= 9 (counters, and gauges with a few decimals: what most
    exporters send), as those integers, delta-of-delta too (VictoriaMetrics' idea), else each XOR'd
    with the one before (Gorilla's; bit-exact). Both columns are byte-shuffled (the k-th byte of
    every word together) so that zstd sees long runs of zeros: a regular scrape of a counter costs a
    fraction of a byte a sample, a two-decimal gauge one or two. All of it is vectorised with numpy
    over many series at once (:func:`encode_many`); no per-point Python.

``PENDING`` (written by compaction's flush)
    A ``PACKED`` chunk, byte for byte but its first byte, that a flush wrote into a window where the
    series already had a chunk: read as ``PACKED``, and merged with the window's other chunks by
    the next packing, as a ``RAW`` one is (packing finds the chunks to merge by their first byte).
    A load's points are then ~1-2 bytes each from their flush on, not 16 until packing: right after
    a load of remote-write bodies, a query over them read ~40 MB of raw chunks for 1,400 series.

Sealed
    Every chunk and part is written *sealed*: its first byte with ``SEALED`` (0x80) set, its kind's
    layout unchanged, then the little-endian CRC-32C (Castagnoli, as Prometheus' chunks and Kafka's
    record batches) of every byte before it (native/src/seal.rs). The other checks (sizes, headers,
    times increasing, a chunk's stored time range) find most damage, but not a flipped bit of a
    value or of a packed chunk's value mode, which would be answered as data: the checksum does.
    It is verified wherever a chunk is decoded (queries, packing, ``store check``) and wherever a
    part is read whole (flush, ``store check``); a query that reads one series' slice of a part
    does not verify the whole part (parts live seconds to minutes, until their flush, which
    verifies them before anything is made of them). A chunk without the bit (written before
    there was one) is read as it is.

First write wins
    A sample is visible at most once per (series, t). Writers drop points whose t is already stored
    before writing (the common case costs one index seek per series: nothing stored at or after the
    batch's first t), and readers merge a series' chunks with :func:`merge`, keeping, for every t,
    the value of the chunk written first (lowest id): so two writers racing, or a crash between a
    compaction's insert and delete (which cannot happen inside one transaction, but costs nothing to
    tolerate), still never show a sample twice.
"""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import zstandard

from lossproof.native_ext import _native

RAW = 1
PACKED = 2
PENDING = 4
PART = 3
SEALED = 0x80

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_PACKED_HEAD = struct.Struct("<BBIq")  # kind, value mode, n, first t
_V_XOR = 0
_V_DECIMAL = 1  # + k: values m / 10**k, the integers m stored
_MAX_DECIMALS = 9
_ZSTD_LEVEL = 3
_MAX_EXACT = float(1 << 53)
_ENCODE_MAX_POINTS = 200_000  # encoded at once by flush_parts (memory: see encode_many's temporaries)
# a zstd block regenerates at most 128 KiB and takes at least 4 bytes of its frame (an RLE block:
# 3 bytes of header, 1 of content), so a frame of f bytes holds at most 128 KiB * (f // 4 + 1)
_MAX_BLOCK = 128 * 1024


def _frame_can_hold(declared: int, frame_len: int) -> bool:
    """Whether a zstd frame of ``frame_len`` bytes can decompress to ``declared`` bytes (the bound of
    the format: a few damaged bytes of header can declare GBs, which are then allocated)."""
    return declared <= _MAX_BLOCK * (frame_len // 4 + 1)


# zstd contexts are not thread-safe, and python-zstandard releases the GIL while it works in one:
# one shared by the store's read threads made concurrent reads see "damaged" chunks and corrupt the
# heap (free(): invalid next size). One of each per thread.
_contexts = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_contexts, "c", None)
    if c is None:
        c = _contexts.c = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_contexts, "d", None)
    if d is None:
        d = _contexts.d = zstandard.ZstdDecompressor()
    return d


class ChunkError(ValueError):
    """A chunk's bytes are not a valid chunk (damaged, or written by a newer lossproof)."""


class EncodedChunk(NamedTuple):
    """A chunk row as the stores insert it (a tuple: ``executemany`` takes it as it is)."""

    series_id: int
    t_min: int
    t_max: int
    n: int
    data: bytes


# --- batches: columns in, one RAW chunk per series out ------------------------------------------


def sort_dedup(sids: I64, ts: I64, vs: F64) -> tuple[I64, I64, F64]:
    """The columns sorted by (series, t), keeping only the first occurrence of each (series, t) in
    the input order: the batch's own first write wins. By the native extension
    (``_native.sort_dedup``: it orders the runs a batch is made of, each body's series already in
    time order, not the points; numpy's ``lexsort`` cost ~15 % of the worker). Columns already in
    that order come back as they are: the arrays returned may be the inputs, or read-only."""
    sids, ts, vs = (
        np.require(x, dt, ("C", "A")) for x, dt in ((sids, np.int64), (ts, np.int64), (vs, np.float64))
    )
    got = _native.sort_dedup(sids, ts, vs)
    if got is None:
        return sids, ts, vs
    s, t, v = got
    return (
        np.frombuffer(s, dtype=np.int64),
        np.frombuffer(t, dtype=np.int64),
        np.frombuffer(v, dtype=np.float64),
    )


def dedup_sorted(sids: I64, ts: I64, vs: F64) -> tuple[I64, I64, F64]:
    """Columns already sorted by (series, t) less all but the first point of each (series, t)."""
    if len(ts) > 1:
        keep = np.empty(len(ts), dtype=bool)
        keep[0] = True
        np.logical_or(sids[1:] != sids[:-1], ts[1:] != ts[:-1], out=keep[1:])
        if not keep.all():
            sids, ts, vs = sids[keep], ts[keep], vs[keep]
    return sids, ts, vs


def series_bounds(sids: I64) -> tuple[I64, I64]:
    """For columns sorted by series: the start and end index of each series' run."""
    if len(sids) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    starts = np.flatnonzero(np.concatenate(([True], sids[1:] != sids[:-1])))
    ends = np.append(starts[1:], len(sids))
    return starts.astype(np.int64), ends.astype(np.int64)


def encode_batch(sids: I64, ts: I64, vs: F64) -> list[EncodedChunk]:
    """One RAW chunk per series of columns sorted by (series, t) without duplicates."""
    starts, ends = series_bounds(sids)
    tb = ts.astype("<i8", copy=False).tobytes()
    vb = vs.astype("<f8", copy=False).tobytes()
    kind = bytes((RAW,))
    out: list[EncodedChunk] = []
    tl = ts.tolist()
    sl = sids.tolist()
    seal = _native.seal
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        data = seal(kind + tb[a * 8 : b * 8] + vb[a * 8 : b * 8])
        out.append(EncodedChunk(sl[a], tl[a], tl[b - 1], b - a, data))
    return out


# --- columns of many runs ----


def search_runs(ts: I64, lo: I64, hi: I64, x: int, right: bool) -> I64:
    """For each run ``ts[lo[k]:hi[k]]`` (each sorted): where ``x`` goes in it, as an index into ``ts``
    (``np.searchsorted(ts[lo[k]:hi[k]], x, side) + lo[k]``, side "right" when ``right``). One binary
    search over every run at once, by the native extension (``_native.search_runs``, the times read
    in place); :func:`_search_runs_numpy` where ``x`` is not an int64 or ``ts`` not contiguous and
    aligned (the native side refuses an unaligned buffer: a BufferError)."""
    if -(2**63) <= x < 2**63 and ts.dtype == np.int64 and ts.flags.c_contiguous and ts.flags.aligned:
        lo_b = np.ascontiguousarray(lo, dtype=np.int64).tobytes()
        hi_b = np.ascontiguousarray(hi, dtype=np.int64).tobytes()
        got = _native.search_runs(ts, lo_b, hi_b, int(x), right)
        return np.frombuffer(got, dtype=np.int64)
    return _search_runs_numpy(ts, lo, hi, x, right)


def _search_runs_numpy(ts: I64, lo: I64, hi: I64, x: int, right: bool) -> I64:
    """:func:`search_runs` in numpy: a few numpy calls a halving, over arrays of one entry a run
    (running sums over the whole column cost a pass over every point)."""
    lo = lo.astype(np.int64, copy=True)
    hi = hi.astype(np.int64, copy=True)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) >> 1
        got = ts[np.where(active, mid, 0)]  # mid < hi <= len(ts) where active
        after = active & ((got <= x) if right else (got < x))
        lo = np.where(after, mid + 1, lo)
        hi = np.where(active & ~after, mid, hi)


# --- one chunk ------------------------------------------------------------------------------------


def encode(ts: I64, vs: F64) -> bytes:
    """A PACKED chunk of one series' points (ts strictly increasing, at least one point)."""
    if len(ts) == 0:
        raise ValueError("a chunk holds at least one point")
    return encode_many(ts, vs, np.array([0]), np.array([len(ts)]))[0]


def _decimal_exponents(vs: F64, starts: I64) -> npt.NDArray[np.int64]:
    """For each run: the smallest k <= _MAX_DECIMALS such that every value is an integer divided by
    10**k, exactly as :func:`decode` computes it (bit for bit: -0.0, NaN and the infinities are
    not), or -1 (its values are stored XOR'd instead)."""
    bits = vs.view(np.uint64)
    k_of = np.full(len(starts), -1, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(vs)
        for k in range(_MAX_DECIMALS + 1):
            scale = 10.0**k
            m = np.round(vs * scale)
            ok = finite & (np.abs(m) <= _MAX_EXACT)
            ints = np.where(ok, m, 0).astype(np.int64)
            ok &= (ints.astype(np.float64) / scale).view(np.uint64) == bits
            runs_ok = np.logical_and.reduceat(ok, starts) & (k_of < 0)
            k_of[runs_ok] = k
            if (k_of >= 0).all():
                break
    return k_of


def encode_many(ts: I64, vs: F64, starts: I64, ends: I64, kind: int = PACKED) -> list[bytes]:
    """:func:`encode` of each run ``[starts[k], ends[k])`` of the columns (each strictly increasing
    in t), computed for all runs at once: the per-run Python work is a few slices and one zstd call,
    which is what makes packing a million series affordable. ``kind``: PACKED, or PENDING (the
    same bytes but the first)."""
    if kind not in (PACKED, PENDING):
        raise ValueError(f"chunk kind {kind} is not a packed one")
    n_all = len(ts)
    if not len(starts):
        return []
    starts = starts.astype(np.int64, copy=False)
    ends = ends.astype(np.int64, copy=False)
    ts = ts.astype(np.int64, copy=False)
    vs = vs.astype(np.float64, copy=False)
    first = np.zeros(n_all, dtype=bool)
    first[starts] = True
    second = starts + 1
    second = second[second < ends]  # runs of two or more: where the first delta is
    # timestamps: delta-of-delta within each run (the first delta as it is), zigzag
    with np.errstate(over="ignore"):
        delta = np.diff(ts, prepend=ts[:1])
        dod = np.diff(delta, prepend=np.int64(0))
        dod[second] = delta[second]
    tz = ((dod << 1) ^ (dod >> 63)).view(np.uint64)
    # values: decimals (integers, counters, gauges with a few decimals) as the integers m of
    # v = m / 10**k, delta-of-delta (the first one as it is); others XOR'd with the one before
    k_of = _decimal_exponents(vs, starts)
    k_each = np.repeat(k_of, ends - starts)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.round(vs * 10.0 ** np.maximum(k_each, 0))
        iv = np.where(k_each >= 0, m, 0).astype(np.int64)
        idelta = np.diff(iv, prepend=iv[:1])
        idod = np.diff(idelta, prepend=np.int64(0))
        idod[second] = idelta[second]
    iz = ((idod << 1) ^ (idod >> 63)).view(np.uint64)
    iz[first] = iv[first].view(np.uint64)
    bits = vs.view(np.uint64)
    xz = bits ^ np.concatenate((bits[:1], bits[:-1]))
    xz[first] = bits[first]
    tplanes = tz.astype("<u8", copy=False).view(np.uint8).reshape(n_all, 8).T
    iplanes = iz.astype("<u8", copy=False).view(np.uint8).reshape(n_all, 8).T
    xplanes = xz.astype("<u8", copy=False).view(np.uint8).reshape(n_all, 8).T
    out: list[bytes] = []
    compress = _compressor().compress
    seal = _native.seal
    for a, b, k, t0 in zip(starts.tolist(), ends.tolist(), k_of.tolist(), ts[starts].tolist(), strict=True):
        body = tplanes[:, a + 1 : b].tobytes() + (iplanes if k >= 0 else xplanes)[:, a:b].tobytes()
        head = _PACKED_HEAD.pack(kind, _V_XOR if k < 0 else _V_DECIMAL + k, b - a, t0)
        out.append(seal(head + compress(body)))
    return out


def kind_of(data: bytes) -> int:
    """A chunk's kind (RAW, PACKED, PENDING, PART), sealed or not; 0 for no bytes."""
    return data[0] & ~SEALED if data else 0


def _unsealed(data: bytes) -> bytes:
    """A sealed chunk or part as it was before it was sealed (its checksum verified), or ``data``
    as it is if it is not sealed. Raises ChunkError."""
    if not data or not data[0] & SEALED:
        return data
    if _native.first_broken([data]) >= 0:
        raise ChunkError("its checksum does not match its bytes")
    return bytes((data[0] & ~SEALED,)) + data[1:-4]


def _opened(data: bytes) -> tuple[int, int, int, int, bytes]:
    """A chunk's ``(kind, points, value mode, first t, packed body)``, checked (the body
    decompressed; a raw chunk has mode and first t 0 and no body; a PENDING one is PACKED here).
    Raises ChunkError."""
    data = _unsealed(data)
    if not data:
        raise ChunkError("empty chunk")
    kind = data[0]
    if kind == RAW:
        n, rest = divmod(len(data) - 1, 16)
        if rest:
            raise ChunkError(f"raw chunk of {len(data)} bytes")
        return RAW, n, 0, 0, b""
    if kind not in (PACKED, PENDING) or len(data) < _PACKED_HEAD.size:
        raise ChunkError(f"unknown chunk kind {kind}")
    _, mode, n, first = _PACKED_HEAD.unpack_from(data)
    if not (mode == _V_XOR or _V_DECIMAL <= mode <= _V_DECIMAL + _MAX_DECIMALS):
        raise ChunkError(f"unknown value mode {mode}")
    if n == 0:
        raise ChunkError("packed chunk of 0 points")
    frame = data[_PACKED_HEAD.size :]
    try:
        # max_output_size bounds only a frame that does not declare its size (and is allocated
        # whole up front: n of 2**32 - 1 is a MemoryError); one that declares a size is decompressed
        # whole, whatever it declares (a damaged header, a few kB asking for GBs). Every chunk is
        # written by one-shot compress(), which declares it: it must be the body's.
        declared = zstandard.frame_content_size(frame)
        if declared != 16 * n - 8:
            raise ChunkError(f"chunk body declaring {declared} bytes for {n} points")
        if not _frame_can_hold(declared, len(frame)):
            raise ChunkError(f"chunk of {n} points in a frame of {len(frame)} bytes")
        # (nothing after the frame: no writer put bytes there; a sealed chunk whose seal bit was
        # cleared would otherwise be read with its checksum taken for trailing bytes, unverified)
        body = _decompressor().decompress(frame, max_output_size=16 * n, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise ChunkError(f"damaged chunk: {e}") from None
    if len(body) != 8 * (n - 1) + 8 * n:
        raise ChunkError(f"chunk body of {len(body)} bytes for {n} points")
    return PACKED, n, mode, first, body


def decode(data: bytes) -> tuple[I64, F64]:
    """The (timestamps, values) columns of a chunk of either encoding."""
    ts, vs, _ = decode_many([data])
    return ts, vs


def decode_stored(rows: Sequence[tuple[int, int, bytes]]) -> list[tuple[I64, F64]]:
    """Each stored chunk's columns from its rows ``(t_min, t_max, data)``, decoded in one pass and
    checked against the time range each row says it holds (:func:`check_stored`)."""
    if not rows:
        return []
    ts, vs, offsets = decode_many([r[2] for r in rows])
    check_stored(ts, offsets, [r[0] for r in rows], [r[1] for r in rows])
    bounds = offsets.tolist()
    return [(ts[a:b], vs[a:b]) for a, b in itertools.pairwise(bounds)]


def check_stored(ts: I64, offsets: I64, t_mins: Sequence[int], t_maxs: Sequence[int]) -> None:
    """Raise :class:`ChunkError` unless each decoded chunk (``ts[offsets[i]:offsets[i + 1]]``)
    begins at its row's ``t_min`` and ends at its ``t_max``: a damaged body can decode to points
    that were never written (a flipped byte of a delta), and a read or a packing would otherwise
    answer or keep them as data. (Times increasing are checked by the decode.)"""
    starts, ends = offsets[:-1], offsets[1:]
    if (ends <= starts).any():
        raise ChunkError("a stored chunk of no points")
    if not (
        np.array_equal(ts[starts], np.asarray(t_mins, dtype=np.int64))
        and np.array_equal(ts[ends - 1], np.asarray(t_maxs, dtype=np.int64))
    ):
        raise ChunkError("a chunk's points are not its stored time range")


OpenedChunk = tuple[int, int, int, int, bytes]  # kind, points, value mode, first t, payload


def open_many(datas: Sequence[bytes]) -> tuple[list[OpenedChunk], I64]:
    """Each chunk opened (checksum verified, header checked, a packed body decompressed:
    :func:`_opened`) as :func:`decode_into` takes it, and each chunk's number of points."""
    items: list[OpenedChunk] = []
    ns: list[int] = []
    if _native.first_broken(datas if isinstance(datas, list) else list(datas)) >= 0:
        raise ChunkError("a chunk's checksum does not match its bytes")
    # _opened's checks inlined for the usual packed chunk (a day of 10,000 series is 120,000 of them:
    # the calls cost more than the decompression); anything else goes through _opened itself
    head = _PACKED_HEAD.size
    unpack = _PACKED_HEAD.unpack_from
    declared_size = zstandard.frame_content_size
    decompress = _decompressor().decompress
    modes = range(_V_DECIMAL, _V_DECIMAL + _MAX_DECIMALS + 1)
    block = _MAX_BLOCK
    sealed_raw = RAW | SEALED
    packed = (PACKED, PENDING, PACKED | SEALED, PENDING | SEALED)
    for data in datas:
        if data and data[0] == RAW and len(data) % 16 == 1:  # (_opened's raw case, inlined too)
            n = len(data) >> 4
            ns.append(n)
            items.append((RAW, n, 0, 0, data))
            continue
        if data and data[0] == sealed_raw and len(data) % 16 == 5:
            n = len(data) >> 4
            ns.append(n)
            items.append((RAW, n, 0, 0, data[:-4]))
            continue
        if len(data) > head + 4 and data[0] in packed:
            _, mode, n, first = unpack(data)
            frame = data[head:-4] if data[0] & SEALED else data[head:]
            if n and (mode == _V_XOR or mode in modes):
                try:
                    # (_frame_can_hold inlined)
                    ok = declared_size(frame) == 16 * n - 8 <= block * (len(frame) // 4 + 1)
                    body = decompress(frame, max_output_size=16 * n, allow_extra_data=False) if ok else b""
                except zstandard.ZstdError:
                    ok = False
                if ok and len(body) == 16 * n - 8:
                    ns.append(n)
                    items.append((PACKED, n, mode, first, body))
                    continue
        kind, n, mode, first, body = _opened(data)
        ns.append(n)
        items.append((kind, n, mode, first, data if kind == RAW else body))
    return items, np.array(ns, dtype=np.int64)


def decode_into(items: list[OpenedChunk], at: I64, total: int) -> tuple[I64, F64]:
    """Columns of ``total`` points (zeros where no chunk goes) with opened chunk i's points at
    ``at[i]`` onwards, decoded in one pass over the bytes by the native extension
    (``_native.decode_chunks``: the byte planes unshuffled, delta-of-delta undone, values scaled or
    XOR-accumulated, as :func:`encode_many` laid them out), which took a dozen numpy passes per chunk
    length before; ``_native.decode_checked`` is ``decode_chunks`` that also checks each chunk's times
    (:func:`check_increasing`) as it writes them. Writable arrays."""
    try:
        cols, increasing = _native.decode_checked(
            items, np.ascontiguousarray(at, dtype=np.int64).tobytes(), total
        )
    except ValueError as e:  # _opened checked every header; a mismatch left is a bug, said as damage
        raise ChunkError(str(e)) from None
    if not increasing:  # as check_increasing: checked by the decoder on each chunk's times
        raise ChunkError("a chunk's times are not increasing")
    ts = np.frombuffer(cols, dtype="<i8", count=total).astype(np.int64, copy=False)
    vs = np.frombuffer(cols, dtype="<f8", count=total, offset=8 * total).astype(np.float64, copy=False)
    return ts, vs


def check_increasing(ts: I64, at: I64, counts: I64) -> None:
    """Every chunk's times strictly increasing (chunk i: ``ts[at[i] : at[i] + counts[i]]``; chunks do
    not overlap), else a ChunkError: reads binary-search a series' points, so a damaged chunk (a zstd
    frame has no checksum) whose times go back or repeat would answer points outside the range asked,
    miss some inside it, or give one t two values. One comparison a point, each chunk walked by the
    native extension (``_native.runs_increasing``; numpy compared every pair of neighbours of the whole
    read, and looked up each place where they did not increase: every position not yet filled)."""
    if len(ts) < 2:
        return
    at_b = np.ascontiguousarray(at, dtype=np.int64).tobytes()
    counts_b = np.ascontiguousarray(counts, dtype=np.int64).tobytes()
    # aligned too: the native side refuses an unaligned buffer (ascontiguousarray keeps one)
    if not _native.runs_increasing(np.require(ts, np.int64, ("C", "A")), at_b, counts_b):
        raise ChunkError("a chunk's times are not increasing")


def decode_many(datas: Sequence[bytes]) -> tuple[I64, F64, I64]:
    """:func:`decode` of many chunks at once: every chunk's timestamps and values, one chunk after the
    other, and where each starts (``offsets[i]:offsets[i + 1]`` is chunk i's; one more offset than
    chunks): :func:`open_many`, then :func:`decode_into`."""
    items, counts = open_many(datas)
    offsets = np.zeros(len(datas) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    ts, vs = decode_into(items, offsets[:-1], int(offsets[-1]))
    return ts, vs, offsets


def merge(chunks: Sequence[tuple[int, bytes]], from_ms: int, to_ms: int) -> tuple[I64, F64]:
    """The points of one series' chunks ``(id, data)`` with ``from_ms <= t <= to_ms``, in t order,
    one per t: the chunk with the lowest id (written first) wins."""
    return merge_arrays([(cid, *decode(data)) for cid, data in chunks], from_ms, to_ms)


def merge_arrays(parts: Sequence[tuple[int, I64, F64]], from_ms: int, to_ms: int) -> tuple[I64, F64]:
    """:func:`merge` of decoded columns ``(order, ts, vs)``: the lowest order wins a t."""
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    if len(parts) == 1:
        _, ts, vs = parts[0]
        a = int(np.searchsorted(ts, from_ms, "left"))
        b = int(np.searchsorted(ts, to_ms, "right"))
        return ts[a:b], vs[a:b]
    # The usual case once packed: chunks that follow one another in time. Then the concatenation is
    # already in order, one point per t, and needs no sort.
    by_time = sorted((p for p in parts if len(p[1])), key=lambda p: int(p[1][0]))
    if all(int(a[1][-1]) < int(b[1][0]) for a, b in itertools.pairwise(by_time)):
        if not by_time:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        ts = np.concatenate([p[1] for p in by_time])
        vs = np.concatenate([p[2] for p in by_time])
        a = int(np.searchsorted(ts, from_ms, "left"))
        b = int(np.searchsorted(ts, to_ms, "right"))
        return ts[a:b], vs[a:b]
    ids = np.concatenate([np.full(len(ts), cid, dtype=np.int64) for cid, ts, _ in parts])
    ts = np.concatenate([p[1] for p in parts])
    vs = np.concatenate([p[2] for p in parts])
    keep = (ts >= from_ms) & (ts <= to_ms)
    ids, ts, vs = ids[keep], ts[keep], vs[keep]
    order = np.lexsort((ids, ts))
    ts, vs = ts[order], vs[order]
    if len(ts) > 1:
        first = np.concatenate(([True], ts[1:] != ts[:-1]))
        ts, vs = ts[first], vs[first]
    return ts, vs


class PackRow(NamedTuple):
    """A packed chunk to insert: ``id`` one of the ids of the chunks it replaces, or None for a new
    one (a merge can yield more chunks than it read: a chunk spanning windows)."""

    id: int | None
    series_id: int
    t_min: int
    t_max: int
    n: int
    data: bytes


class Windows(NamedTuple):
    """The windows compaction packs each series' points into, one chunk per series and window:
    ``small_ms`` long, and below ``merged_until`` (a multiple of ``large_ms``) ``large_ms`` long,
    ``large_ms`` a multiple of ``small_ms``. A window is named by the index of its first small
    window (``t // small_ms`` for a small one), so indices grow with time whichever the size.

    Packing and widening in one compaction step must take the same windows; which ones does not
    matter to what a query sees (each step reads every chunk of the windows it packs: see
    :func:`widen`), only to how many chunks a series has."""

    small_ms: int
    large_ms: int = 0
    merged_until: int = -(1 << 63)

    def of(self, t: I64) -> I64:
        """The window of each time."""
        small = t // self.small_ms
        if not self.large_ms:
            return small
        per = self.large_ms // self.small_ms
        return np.where(t < self.merged_until, small // per * per, small)

    def of_one(self, t: int) -> int:
        """:meth:`of` of one time, in Python ints (``widen`` asks it of every chunk a step reads:
        a numpy array each cost 20x the division)."""
        small = t // self.small_ms
        if self.large_ms and t < self.merged_until:
            per = self.large_ms // self.small_ms
            return small // per * per
        return small

    def start(self, index: int) -> int:
        """The first ms of window ``index``."""
        return index * self.small_ms

    def end(self, index: int) -> int:
        """The first ms after window ``index`` (a Python int: past int64's end for the last)."""
        first = self.start(index)
        return first + (self.large_ms if self.large_ms and first < self.merged_until else self.small_ms)

    def ends(self, index: I64) -> I64:
        """The first ms after each window."""
        first = index * self.small_ms
        if not self.large_ms:
            return first + self.small_ms
        return first + np.where(first < self.merged_until, self.large_ms, self.small_ms)


def widen(reach: dict[int, tuple[int, int]], spans: Iterable[tuple[int, int, int]], windows: Windows) -> bool:
    """Widen each series' windows ``reach`` (first, last: :meth:`Windows.of`) in place to every
    window that one of its chunks ``spans`` (series, t_min, t_max) reaches; whether any was widened.

    A pack step reads the chunks of the windows the scan found, but a raw chunk flushed since may
    reach past them. :func:`pack` makes a piece of it for each window it reaches, and gives it an
    id from the chunks it read; in a window not read, that id could rank above a chunk written
    after it, whose point of the same (series, t) would then win. Read again with the windows
    widened until every chunk read lies within them: each piece is made with all of its window's
    chunks."""
    wider = False
    for sid, t_min, t_max in spans:
        lo, hi = reach[sid]
        a, b = windows.of_one(t_min), windows.of_one(t_max)
        if a < lo or b > hi:
            reach[sid] = (min(lo, a), max(hi, b))
            wider = True
    return wider


def pack(
    found: Sequence[tuple[int, int, int, int, bytes]], windows: Windows, cap: int = 0
) -> tuple[list[PackRow], int]:
    """Merge chunks ``(id, series, t_min, t_max, data)`` into one packed chunk per series and window
    (first write wins); returns the rows, those that keep an id first, and the number of points.
    Each series' lowest ids go to its oldest windows: which write came first is kept. All the series
    at once: the columns are merged and encoded together (:func:`encode_many`). ``cap``: a series'
    large window (``windows.large_ms``) of more points is cut at the small windows in it.

    Every chunk is checked against its stored range (:func:`check_stored`), else a ChunkError:
    packing re-encoded damage into a chunk that looked valid. The stores set the damaged rows aside
    and pack the others (:func:`lossproof.store.quarantine.pack_checked`)."""
    if not found:
        return [], 0
    ids = np.array([r[0] for r in found], dtype=np.int64)
    # every chunk in one native pass (a decode call per chunk cost more than its points here)
    ts, vs, offsets = decode_many([r[4] for r in found])
    check_stored(ts, offsets, [r[2] for r in found], [r[3] for r in found])
    sizes = np.diff(offsets)
    order = np.repeat(ids, sizes)
    sids = np.repeat(np.array([r[1] for r in found], dtype=np.int64), sizes)
    pick = np.lexsort((order, ts, sids))  # by series and t, the chunk written first first
    sids, ts, vs = dedup_sorted(sids[pick], ts[pick], vs[pick])
    index = windows.of(ts)
    cut = np.flatnonzero((sids[1:] != sids[:-1]) | (index[1:] != index[:-1])) + 1
    if cap and windows.large_ms:
        # a series' large window of more than ``cap`` points: cut at the small windows instead
        sizes = np.diff(np.concatenate(([0], cut, [len(ts)])))
        big = (sizes > cap) & (index[np.concatenate(([0], cut))] * windows.small_ms < windows.merged_until)
        if big.any():
            index = np.where(np.repeat(big, sizes), ts // windows.small_ms, index)
            cut = np.flatnonzero((sids[1:] != sids[:-1]) | (index[1:] != index[:-1])) + 1
    starts = np.concatenate(([0], cut)).astype(np.int64)
    ends = np.append(cut, len(ts)).astype(np.int64)
    datas = encode_many(ts, vs, starts, ends)
    free: dict[int, list[int]] = {}
    for cid, sid, *_ in found:
        free.setdefault(sid, []).append(cid)
    for left in free.values():
        left.sort(reverse=True)
    rows = []
    for a, b, data in zip(starts.tolist(), ends.tolist(), datas, strict=True):
        mine = free[int(sids[a])]
        rows.append(
            PackRow(mine.pop() if mine else None, int(sids[a]), int(ts[a]), int(ts[b - 1]), b - a, data)
        )
    # kept ids first: a new id (the largest plus one, in SQLite) could otherwise take a kept one
    rows.sort(key=lambda r: r.id is None)
    return rows, len(ts)


# --- parts: one batch of many series in one row ----------------------------------------------------
#
# The worker writes a batch as one *part*: a row holding every series of the batch, so that a batch
# with one point per series (an agent or Prometheus scraping every 10 s: the common case) costs one
# row, not one per point. Layout, all little-endian, sections 8-byte aligned:
#   header  kind (PART), 3 pad bytes, u32 series count S, u64 point count N
#   sids    int64[S]    the series, ascending
#   tmax    int64[S]    each series' newest t in the part
#   starts  int64[S+1]  where each series' points start in the columns
#   ts      int64[N]    by series, then t
#   vs      float64[N]
# A reader seeks to one series' slice of ts and vs (SQLite incremental blob I/O) after reading the
# directory (sids, tmax, starts), so it never reads the other series' points.
# Compaction (``Store.compact``) turns parts into per-series chunks.

_PART_HEAD = struct.Struct("<B3xIQ")


class PartLayout(NamedTuple):
    series: int
    points: int

    @property
    def dir_bytes(self) -> int:
        return _PART_HEAD.size + 8 * (3 * self.series + 1)

    @property
    def ts_offset(self) -> int:
        return self.dir_bytes

    @property
    def vs_offset(self) -> int:
        return self.dir_bytes + 8 * self.points


def encode_part(sids: I64, ts: I64, vs: F64) -> bytes:
    """A part of columns sorted by (series, t), one point per (series, t), sealed."""
    starts, ends = series_bounds(sids)
    bounds = np.append(starts, len(ts)).astype("<i8")
    pieces = [
        _PART_HEAD.pack(PART | SEALED, len(starts), len(ts)),
        sids[starts].astype("<i8").tobytes(),
        ts[ends - 1].astype("<i8").tobytes() if len(ts) else b"",
        bounds.tobytes(),
        ts.astype("<i8", copy=False).tobytes(),
        vs.astype("<f8", copy=False).tobytes(),
    ]
    crc = 0
    for piece in pieces:  # (summed piece by piece: a part is MBs, not joined twice)
        crc = _native.crc32c(piece, crc)
    pieces.append(crc.to_bytes(4, "little"))
    return b"".join(pieces)


ChunkRow = tuple[int, int, int, int, int, bytes]  # id, series, t_min, t_max, n, data


# which of the chunks (series, from, to) to make may be packed: none of the series' chunks there yet
PackableWindows = Callable[[I64, I64, I64], npt.NDArray[np.bool_]]


def flush_parts(
    datas: list[bytes], first_id: int, pack_min: int, windows: Windows, packable: PackableWindows
) -> tuple[list[ChunkRow], int, int]:
    """Parts (oldest first) merged into chunk rows, ids from ``first_id`` on; the points and the
    rows' data bytes in all. Of two points of a series with the same t, the older part's is kept
    (first write wins). A series of fewer than ``pack_min`` points becomes one RAW chunk (packing
    merges it later with the next flushes' ones). A longer one is cut per window (``windows``),
    and each piece is packed now: PACKED where ``packable`` says that window holds none of the
    series' chunks yet (written once, not raw and then again packed), else PENDING, which the next
    packing merges with the window's other chunks as it merges RAW ones (one chunk per series and
    window in the end). The merge is a k-way merge of the parts' sorted series by the native
    extension, without the GIL (``_native.flush_rows``); a part whose layout or order is not what
    :func:`encode_part` makes is a ChunkError."""
    try:
        rows, points, size, big = _native.flush_rows(datas, first_id, pack_min)
    except ValueError as e:
        raise ChunkError(str(e)) from None
    sids, run_ends, ts_b, vs_b = (np.frombuffer(b, dtype="<i8") for b in big)
    if not len(sids):
        return rows, points, size
    ts, vs = ts_b.astype(np.int64, copy=False), vs_b.view("<f8").astype(np.float64, copy=False)
    # the pieces: one per series and window, as pack() cuts them
    index = windows.of(ts)
    cut = np.zeros(len(ts), dtype=bool)
    cut[run_ends[:-1]] = True
    cut[1:] |= index[1:] != index[:-1]
    starts = np.flatnonzero(np.concatenate(([True], cut[1:])))
    ends = np.append(starts[1:], len(ts))
    sid_of = np.repeat(sids, np.diff(run_ends, prepend=0))
    first = index[starts]
    pack_now = packable(sid_of[starts], first * windows.small_ms, windows.ends(first) - 1)
    for kind, these in ((PENDING, ~pack_now), (PACKED, pack_now)):
        # the pieces of this kind, their points together
        lens = (ends - starts)[these]
        keep = np.repeat(these, ends - starts)
        pts, pvs, psid = ts[keep], vs[keep], sid_of[keep]
        k_ends = np.cumsum(lens)
        k_starts = k_ends - lens
        # a slice of the pieces at a time: encode_many holds ~100 bytes a point of temporaries
        k = 0
        while k < len(k_starts):
            j = max(k + 1, int(np.searchsorted(k_ends, k_starts[k] + _ENCODE_MAX_POINTS, side="right")))
            lo, hi = int(k_starts[k]), int(k_ends[j - 1])
            datas_out = encode_many(pts[lo:hi], pvs[lo:hi], k_starts[k:j] - lo, k_ends[k:j] - lo, kind)
            for a, b, data in zip(k_starts[k:j].tolist(), k_ends[k:j].tolist(), datas_out, strict=True):
                rows.append((first_id + len(rows), int(psid[a]), int(pts[a]), int(pts[b - 1]), b - a, data))
                size += len(data)
            k = j
    return rows, points, size


def part_layout(head: bytes) -> PartLayout:
    """The layout a part's header gives (of a sealed part too: its checksum is at its end)."""
    if len(head) < _PART_HEAD.size or head[0] & ~SEALED != PART:
        raise ChunkError("not a part")
    _, series, points = _PART_HEAD.unpack_from(head)
    return PartLayout(series, points)


def part_directory(data: bytes, layout: PartLayout) -> tuple[I64, I64, I64]:
    """(sids, tmax, starts) from the first ``layout.dir_bytes`` bytes of a part."""
    if len(data) < layout.dir_bytes:
        raise ChunkError("part directory cut short")
    s = layout.series
    o = _PART_HEAD.size
    sids = np.frombuffer(data, "<i8", s, o).astype(np.int64)
    tmax = np.frombuffer(data, "<i8", s, o + 8 * s).astype(np.int64)
    starts = np.frombuffer(data, "<i8", s + 1, o + 16 * s).astype(np.int64)
    # what encode_part writes: series in ascending order, each one's points after the last one's,
    # all of the part's points; readers search the ids and cut slices by these bounds
    if starts[0] != 0 or starts[-1] != layout.points or (starts[1:] < starts[:-1]).any():
        raise ChunkError("part directory damaged: its series' bounds are out of order")
    if (sids[1:] <= sids[:-1]).any():
        raise ChunkError("part directory damaged: its series ids are out of order")
    return sids, tmax, starts


def decode_part(data: bytes) -> tuple[I64, I64, F64]:
    """A whole part as columns (series ids, timestamps, values), its checksum verified."""
    sum_size = 4 if data and data[0] & SEALED else 0
    if sum_size and _native.first_broken([data]) >= 0:
        raise ChunkError("part: its checksum does not match its bytes")
    layout = part_layout(data[: _PART_HEAD.size])
    if len(data) != layout.vs_offset + 8 * layout.points + sum_size:
        raise ChunkError(f"part of {len(data)} bytes for {layout.points} points")
    usids, _, starts = part_directory(data, layout)
    sids = np.repeat(usids, np.diff(starts))
    # views of ``data``, not copies (little-endian is numpy's int64 and float64 here)
    ts = np.frombuffer(data, "<i8", layout.points, layout.ts_offset).astype(np.int64, copy=False)
    vs = np.frombuffer(data, "<f8", layout.points, layout.vs_offset).astype(np.float64, copy=False)
    return sids, ts, vs
