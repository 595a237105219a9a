"""The chunk codec: every encoding gives back exactly what went in (bit for bit), and merging
chunks keeps one point per t, the first written."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.store import chunks

STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def _bits(vs: np.ndarray) -> list[int]:
    return vs.view(np.uint64).tolist()


_ts = st.lists(st.integers(-(1 << 62), 1 << 62), min_size=1, max_size=300, unique=True).map(sorted)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.just(STALE_NAN) | st.just(-0.0)
_ints = st.integers(-(1 << 53), 1 << 53).map(float)


@settings(max_examples=300, deadline=None)
@given(_ts, st.data())
def test_packed_and_raw_round_trip_bit_exact(ts: list[int], data: st.DataObject) -> None:
    vals = data.draw(st.lists(_floats | _ints, min_size=len(ts), max_size=len(ts)))
    t = np.array(ts, dtype=np.int64)
    v = np.array(vals, dtype=np.float64)
    for blob in (chunks.encode(t, v), chunks.encode_batch(np.zeros(len(t), np.int64), t, v)[0].data):
        t2, v2 = chunks.decode(blob)
        assert t2.tolist() == ts
        assert _bits(v2) == _bits(v)


def test_a_regular_scrape_packs_under_two_bytes_a_sample() -> None:
    t = np.arange(5760, dtype=np.int64) * 15_000 + 1_700_000_000_000
    counter = np.cumsum(np.random.default_rng(1).integers(0, 100, 5760)).astype(np.float64)
    gauge = np.round(np.random.default_rng(2).normal(50, 1, 5760), 1)
    assert len(chunks.encode(t, counter)) / 5760 < 2
    assert len(chunks.encode(t, gauge)) / 5760 < 2  # one decimal: stored as integers
    noisy = np.random.default_rng(3).normal(50, 1, 5760)  # all 53 bits of mantissa: XOR
    assert len(chunks.encode(t, noisy)) / 5760 < 8


def test_batch_sort_dedup_first_occurrence_wins() -> None:
    sids = np.array([2, 1, 2, 1, 2], dtype=np.int64)
    ts = np.array([10, 5, 10, 6, 9], dtype=np.int64)
    vs = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    s, t, v = chunks.sort_dedup(sids, ts, vs)
    assert (s.tolist(), t.tolist(), v.tolist()) == ([1, 1, 2, 2], [5, 6, 9, 10], [2.0, 4.0, 5.0, 1.0])
    out = chunks.encode_batch(s, t, v)
    assert [(c.series_id, c.t_min, c.t_max, c.n) for c in out] == [(1, 5, 6, 2), (2, 9, 10, 2)]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-3, 3) | st.sampled_from([-(1 << 63), (1 << 63) - 1]), st.integers(0, 8)),
        max_size=60,
    ),
    st.booleans(),
)
def test_sort_dedup_is_a_stable_sort_keeping_each_first(keys: list[tuple[int, int]], bodies: bool) -> None:
    """Against the obvious way (numpy's stable lexsort, then the first of each key), for any input,
    and for inputs made of runs as a batch of bodies is (the native sort orders runs, not points)."""
    if bodies:  # each key a body of its own series and times 10*t .. 10*t + 4
        keys = [(s, 10 * t + k) for s, t in keys for k in range(5)]
    sids = np.array([s for s, _ in keys], dtype=np.int64)
    ts = np.array([t for _, t in keys], dtype=np.int64)
    vs = np.arange(len(keys), dtype=np.float64)
    order = np.lexsort((ts, sids))
    want = chunks.dedup_sorted(sids[order], ts[order], vs[order])
    got = chunks.sort_dedup(sids, ts, vs)
    assert [x.tolist() for x in got] == [x.tolist() for x in want]


def test_merge_keeps_the_first_written_and_the_range() -> None:
    a = chunks.encode(np.array([1, 2, 3]), np.array([1.0, 1.0, 1.0]))
    later = np.array([9.0, 9.0, math.nan])
    b = chunks.encode_batch(np.zeros(3, np.int64), np.array([2, 3, 4]), later)[0].data
    t, v = chunks.merge([(7, b), (3, a)], 2, 4)
    assert t.tolist() == [2, 3, 4]
    assert v[:2].tolist() == [1.0, 1.0] and math.isnan(v[2])


@pytest.mark.parametrize("blob", [b"", b"\x09abc", b"\x01" + b"x" * 15, b"\x02" + b"\x00" * 13 + b"junk"])
def test_damaged_chunks_raise_chunk_error(blob: bytes) -> None:
    with pytest.raises(chunks.ChunkError):
        chunks.decode(blob)


def test_part_round_trip_and_directory() -> None:
    sids = np.array([1, 1, 4, 9, 9, 9], dtype=np.int64)
    ts = np.array([5, 6, 1, 2, 3, 10], dtype=np.int64)
    vs = np.array([0.5, STALE_NAN, 1.0, 2.0, 3.0, -0.0])
    blob = chunks.encode_part(sids, ts, vs)
    layout = chunks.part_layout(blob[:16])
    assert (layout.series, layout.points) == (3, 6)
    usids, tmax, starts = chunks.part_directory(blob[: layout.dir_bytes], layout)
    assert (usids.tolist(), tmax.tolist(), starts.tolist()) == ([1, 4, 9], [6, 1, 10], [0, 2, 3, 6])
    s2, t2, v2 = chunks.decode_part(blob)
    assert s2.tolist() == sids.tolist() and t2.tolist() == ts.tolist() and _bits(v2) == _bits(vs)
    with pytest.raises(chunks.ChunkError):
        chunks.decode_part(blob[:-1])


@pytest.mark.parametrize(
    "damage",
    [
        ("starts", 1, 4),  # series 1's points after series 2's start: bounds out of order
        ("starts", 0, 1),  # not from the part's first point
        ("starts", 3, 5),  # not to its last
        ("sids", 1, 1),  # ids not ascending (a repeat)
        ("sids", 2, 0),  # ids not ascending
    ],
)
def test_a_damaged_part_directory_is_a_chunk_error(damage: tuple[str, int, int]) -> None:
    """A directory that encode_part would not write is damage, said at once (readers search its
    ids and cut its columns by its bounds: a bound going backwards made a slice of negative length,
    skipped without a word)."""
    blob = bytearray(
        chunks.encode_part(np.array([1, 1, 4, 9, 9, 9]), np.array([5, 6, 1, 2, 3, 10]), np.ones(6))
    )
    layout = chunks.part_layout(bytes(blob[:16]))
    column, k, value = damage
    at = 16 + (0 if column == "sids" else 16 * layout.series) + 8 * k
    blob[at : at + 8] = np.int64(value).tobytes()
    with pytest.raises(chunks.ChunkError, match="part directory damaged"):
        chunks.part_directory(bytes(blob[: layout.dir_bytes]), layout)
    with pytest.raises(chunks.ChunkError):
        chunks.decode_part(bytes(blob))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ts, min_size=1, max_size=8), st.data())
def test_encode_many_round_trips_each_run(runs: list[list[int]], data: st.DataObject) -> None:
    decimals = st.integers(-(10**12), 10**12).map(lambda m: m / 10**3)
    vals = [
        data.draw(
            st.lists(_floats | _ints | decimals, min_size=len(r), max_size=len(r))
            | st.just([x % 97 / 10 for x in r])
        )
        for r in runs
    ]
    ts = np.array([t for r in runs for t in r], dtype=np.int64)
    vs = np.array([v for r in vals for v in r], dtype=np.float64)
    ends = np.cumsum([len(r) for r in runs]).astype(np.int64)
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    for blob, a, b in zip(chunks.encode_many(ts, vs, starts, ends), starts, ends, strict=True):
        t2, v2 = chunks.decode(blob)
        assert t2.tolist() == ts[a:b].tolist() and _bits(v2) == _bits(vs[a:b])


def test_merge_of_chunks_apart_in_time_in_any_order() -> None:
    early = chunks.encode(np.array([1, 2]), np.array([1.0, 2.0]))
    late = chunks.encode_batch(np.zeros(2, np.int64), np.array([5, 9]), np.array([5.0, 9.0]))[0].data
    empty_range = chunks.merge([(1, late), (2, early)], 3, 4)
    assert empty_range[0].tolist() == []
    t, v = chunks.merge([(1, late), (2, early)], 2, 9)
    assert (t.tolist(), v.tolist()) == ([2, 5, 9], [2.0, 5.0, 9.0])


def _unshuffle(data: bytes, n: int) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(8, n)
    return np.ascontiguousarray(planes.T).view("<u8").reshape(n).astype(np.uint64, copy=False)


def _undod(first: int, z: np.ndarray) -> np.ndarray:
    zi = z.view(np.int64)
    dd = (z >> np.uint64(1)).view(np.int64) ^ -(zi & 1)
    out = np.empty(len(z) + 1, dtype=np.int64)
    out[0] = first
    with np.errstate(over="ignore"):
        np.cumsum(np.cumsum(dd), out=out[1:])
        out[1:] += np.int64(first)
    return out


def reference_decode(
    kind: int, n: int, mode: int, first: int, payload: bytes
) -> tuple[np.ndarray, np.ndarray]:
    """The numpy decoder that ``_native.decode_chunks`` replaced (chunks.decode before it), one chunk
    from its opened header and payload (a raw chunk's data, a packed chunk's decompressed body)."""
    if kind == chunks.RAW:
        ts = np.frombuffer(payload, dtype="<i8", count=n, offset=1).astype(np.int64)
        return ts, np.frombuffer(payload, dtype="<f8", count=n, offset=1 + 8 * n).astype(np.float64)
    ts = _undod(first, _unshuffle(payload[: 8 * (n - 1)], n - 1))
    vwords = _unshuffle(payload[8 * (n - 1) :], n)
    if mode >= 1:
        ints = _undod(int(vwords[0].view(np.int64)), vwords[1:])
        with np.errstate(over="ignore"):
            return ts, ints.astype(np.float64) / 10.0 ** (mode - 1)
    return ts, np.bitwise_xor.accumulate(vwords).view(np.float64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ts, st.booleans()), min_size=0, max_size=8), st.data())
def test_decode_many_is_the_reference_decode_of_each(
    specs: list[tuple[list[int], bool]], data: st.DataObject
) -> None:
    """Many chunks of both encodings (values of every kind: decimals, XOR'd, NaN payloads) decoded at
    once give each chunk's columns, bit for bit what the numpy reference decodes, and what went in."""
    blobs = []
    for ts, packed in specs:
        vals = data.draw(st.lists(_floats | _ints, min_size=len(ts), max_size=len(ts)))
        if data.draw(st.booleans()):  # a decimal gauge
            vals = [round(x, 2) if math.isfinite(x) and abs(x) < 1e9 else 1.5 for x in vals]
        t, v = np.array(ts, dtype=np.int64), np.array(vals, dtype=np.float64)
        raw = chunks.encode_batch(np.zeros(len(t), np.int64), t, v)[0].data
        blobs.append((chunks.encode(t, v) if packed else raw, t, v))
    ts_all, vs_all, off = chunks.decode_many([b for b, _, _ in blobs])
    assert len(off) == len(blobs) + 1 and off[-1] == len(ts_all) == len(vs_all)
    for i, (blob, t, v) in enumerate(blobs):
        kind, n, mode, first, body = chunks._opened(blob)
        t1, v1 = reference_decode(kind, n, mode, first, blob if kind == chunks.RAW else body)
        assert ts_all[off[i] : off[i + 1]].tolist() == t1.tolist() == t.tolist()
        assert _bits(vs_all[off[i] : off[i + 1]]) == _bits(v1) == _bits(v)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 40), st.integers(0, 10), st.integers(-(1 << 63), (1 << 63) - 1), st.randoms()
        ),
        max_size=6,
    )
)
def test_native_decode_of_any_body_is_the_reference(specs: list[tuple[int, int, int, object]]) -> None:
    """Packed bodies of arbitrary bytes (what a damaged chunk that still decompresses would hold:
    delta-of-deltas that overflow, any value bits) decode natively as the numpy reference does,
    wrapping as numpy wraps; writable columns."""
    from lossproof import _native

    items = []
    for n, mode, first, rnd in specs:
        body = bytes(rnd.getrandbits(8) for _ in range(16 * n - 8))  # type: ignore[attr-defined]
        items.append((chunks.PACKED, n, mode, first, body))
    total = sum(item[1] for item in items)
    cols = _native.decode_chunks(
        items, np.cumsum([0] + [it[1] for it in items])[:-1].astype(np.int64).tobytes(), total
    )
    ts = np.frombuffer(cols, "<i8", count=total)
    vs = np.frombuffer(cols, "<f8", count=total, offset=8 * total)
    assert len(cols) == 16 * total
    assert ts.flags.writeable and vs.flags.writeable
    at = 0
    for item in items:
        t1, v1 = reference_decode(*item)
        assert ts[at : at + item[1]].tolist() == t1.tolist()
        assert _bits(vs[at : at + item[1]]) == _bits(v1)
        at += item[1]
    assert at == len(ts) == len(vs)


@pytest.mark.parametrize(
    "item",
    [
        (chunks.PACKED, 0, 0, 0, b""),
        (chunks.PACKED, 3, 0, 0, b"\x00" * 39),
        (chunks.PACKED, 2, 11, 0, b"\x00" * 24),
        (chunks.RAW, 2, 0, 0, b"\x01" + b"\x00" * 31),
        (chunks.RAW, 1 << 62, 0, 0, b"\x01"),
        (9, 1, 0, 0, b"\x00" * 8),
    ],
)
def test_native_decode_refuses_a_payload_unlike_its_header(item: tuple[int, int, int, int, bytes]) -> None:
    """A chunk whose payload does not match its header, or that does not fit where it is to go, is
    a ValueError naming it, never a crash."""
    from lossproof import _native

    ok = (chunks.PACKED, 1, 0, 5, b"\x00" * 8)
    with pytest.raises(ValueError, match="chunk 1"):
        _native.decode_chunks([ok, item], np.array([0, 1], dtype=np.int64).tobytes(), 1 + min(item[1], 64))


@pytest.mark.parametrize("blob", [b"", b"\x09abc", b"\x01" + b"\x00" * 15, b"\x02" + b"\x00" * 20])
def test_decode_many_refuses_what_decode_refuses(blob: bytes) -> None:
    with pytest.raises(chunks.ChunkError):
        chunks.decode(blob)
    with pytest.raises(chunks.ChunkError):
        chunks.decode_many([chunks.encode(np.array([1]), np.array([1.0])), blob])


def test_native_decode_puts_each_chunk_where_asked_and_refuses_what_does_not_fit() -> None:
    from lossproof import _native

    a = chunks._opened(chunks.encode(np.array([5, 7]), np.array([0.5, 0.25])))
    b = chunks._opened(chunks.encode_batch(np.zeros(1, np.int64), np.array([9]), np.array([2.0]))[0].data)
    items = [
        (k, n, m, f, body if k == chunks.PACKED else data)
        for (k, n, m, f, body), data in (
            (a, b""),
            # (opened items hold a raw chunk without its seal: open_many takes it off)
            (
                b,
                chunks._unsealed(
                    chunks.encode_batch(np.zeros(1, np.int64), np.array([9]), np.array([2.0]))[0].data
                ),
            ),
        )
    ]
    cols = _native.decode_chunks(items, np.array([3, 0], dtype=np.int64).tobytes(), 6)
    ts = np.frombuffer(cols, "<i8", count=6)
    vs = np.frombuffer(cols, "<f8", count=6, offset=48)
    assert ts.tolist() == [9, 0, 0, 5, 7, 0] and vs.tolist() == [2.0, 0, 0, 0.5, 0.25, 0]
    for at, total in (([5, 0], 6), ([-1, 0], 6), ([0], 6), ([0, 2], 2)):
        with pytest.raises(ValueError):
            _native.decode_chunks(items, np.array(at, dtype=np.int64).tobytes(), total)


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_a_packed_body_declaring_more_than_its_points_is_refused_before_decompressing(n: int) -> None:
    """zstd's max_output_size bounds only a frame without a content size: one that declares its size
    is decompressed whole whatever it says. A damaged (or hostile) chunk of a few kB declaring 256 MiB
    must be a ChunkError without 256 MiB being allocated (a few such chunks in one read, or a larger
    declared size, and the process runs out of memory)."""
    import tracemalloc

    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (256 << 20))
    blob = struct.pack("<BBIq", chunks.PACKED, 0, n, 0) + bomb
    tracemalloc.start()
    try:
        with pytest.raises(chunks.ChunkError):
            chunks.decode(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_chunks_encode_and_decode_on_several_threads_at_once() -> None:
    """The store reads on a pool of threads (access.StoreAccess) and python-zstandard works without
    the GIL: one zstd context shared by them made reads refuse good chunks as damaged ("Data
    corruption detected", "Destination buffer is too small") and corrupted the heap."""
    import threading

    gen = np.random.default_rng(1)
    cols = []
    for i in range(8):
        ts = np.cumsum(gen.integers(1, 30_000, 20_000)).astype(np.int64)
        cols.append((ts, gen.standard_normal(len(ts)) * (i + 1)))
    blobs = [chunks.encode_many(ts, vs, np.array([0]), np.array([len(ts)]))[0] for ts, vs in cols]
    failures: list[str] = []

    def work(k: int) -> None:
        for it in range(60):
            j = (k + it) % len(cols)
            try:
                if it % 3 == 0:
                    blob = chunks.encode_many(*cols[j], np.array([0]), np.array([len(cols[j][0])]))[0]
                    assert blob == blobs[j]
                t, v = chunks.decode(blobs[j])
                assert np.array_equal(t, cols[j][0]) and np.array_equal(v, cols[j][1])
            except Exception as e:  # every failure is reported
                failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []


@pytest.mark.parametrize("n", [1, (1 << 32) - 1])
def test_a_packed_body_not_declaring_its_size_is_refused(n: int) -> None:
    """Chunks are compressed in one shot, which declares the frame's size; for a frame without one,
    max_output_size (16 bytes a point of the header's count) was allocated up front: a damaged count
    of 2**32 - 1 made the read a MemoryError (a 500) instead of a ChunkError."""
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * 8)
    with pytest.raises(chunks.ChunkError):
        chunks.decode(struct.pack("<BBIq", chunks.PACKED, 0, n, 0) + frame)


# --- flush: parts merged into one raw chunk per series --------------------------------------------


def _packable(mod: int) -> chunks.PackableWindows:
    """A packable() of the flush's caller: some windows already hold a chunk, by (series, window)."""

    def packable(sids: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.asarray((sids + lo // (hi - lo + 1)) % mod != 1, dtype=bool)

    return packable


def _flush_reference(
    datas: list[bytes],
    first_id: int,
    pack_min: int,
    windows: chunks.Windows,
    packable: chunks.PackableWindows,
) -> list[chunks.ChunkRow]:
    """What the flush made before the native merge: every part decoded, concatenated oldest first,
    sorted by (series, t) keeping the first of each pair (the oldest part's), one RAW chunk per
    series; then the series of at least ``pack_min`` points cut per window instead, each piece
    PENDING where ``packable`` says no, else PACKED; numbered raw ones first, then the pending
    pieces, then the packed ones."""
    cols = [chunks.decode_part(d) for d in datas]
    sids, ts, vs = (np.concatenate([c[k] for c in cols]) for k in range(3))
    sids, ts, vs = chunks.sort_dedup(sids, ts, vs)
    raw, pieces, packed = [], [], []
    for r in chunks.encode_batch(sids, ts, vs):
        if r.n < pack_min:
            raw.append(tuple(r))
            continue
        rts, rvs = chunks.decode(r.data)
        of = windows.of(rts)
        for w in np.unique(of).tolist():
            at = of == w
            wts, wvs = rts[at], rvs[at]
            ok = packable(
                np.array([r.series_id]), np.array([windows.start(w)]), np.array([windows.end(w) - 1])
            )[0]
            kind = chunks.PACKED if ok else chunks.PENDING
            [data] = chunks.encode_many(wts, wvs, np.array([0]), np.array([len(wts)]), kind)
            (packed if ok else pieces).append((r.series_id, int(wts[0]), int(wts[-1]), len(wts), data))
    return [(first_id + i, *r) for i, r in enumerate([*raw, *pieces, *packed])]


def _part(points: dict[tuple[int, int], float]) -> bytes:
    keys = sorted(points)
    sids = np.array([k[0] for k in keys], dtype=np.int64)
    ts = np.array([k[1] for k in keys], dtype=np.int64)
    vs = np.array([points[k] for k in keys], dtype=np.float64)
    return chunks.encode_part(sids, ts, vs)


_values = st.sampled_from([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 2.0**60, -3.25])
# small windows only; and large ones below a time (merged: 0, 21 or far, or below a negative time)
_WINDOWS = [
    chunks.Windows(7),
    chunks.Windows(2**61),
    chunks.Windows(7, 21, 0),
    chunks.Windows(7, 21, 21),
    chunks.Windows(7, 28, -28),
    chunks.Windows(7, 21, 2**62 // 21 * 21),
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.tuples(st.integers(1, 12), st.integers(-(2**62), 2**62) | st.integers(0, 40)),
            _values,
            max_size=40,
        ),
        min_size=1,
        max_size=9,
    ),
    st.integers(1, 2**40),
    st.sampled_from([1, 3, 10**9]),
    st.sampled_from(_WINDOWS),
    st.sampled_from([1, 2, 3]),
)
def test_flush_is_the_sorted_merge_of_its_parts_oldest_first(
    parts: list[dict[tuple[int, int], float]],
    first_id: int,
    pack_min: int,
    windows: chunks.Windows,
    mod: int,
) -> None:
    datas = [_part(p) for p in parts]
    rows, points, size = chunks.flush_parts(datas, first_id, pack_min, windows, _packable(mod))
    want = _flush_reference(datas, first_id, pack_min, windows, _packable(mod))
    assert rows == want  # bytes equal: NaN payloads and -0.0 kept bit for bit
    assert points == sum(r[4] for r in want)
    assert size == sum(len(r[5]) for r in want)


def test_flush_keeps_the_oldest_parts_value_of_a_time() -> None:
    old = _part({(7, 10): 1.0, (7, 20): 2.0})
    new = _part({(7, 20): 99.0, (7, 30): 3.0, (8, 5): 4.0})
    rows, points, _ = chunks.flush_parts([old, new], 100, 10**9, chunks.Windows(10**9), _packable(1))
    assert points == 4
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [(100, 7, 10, 30, 3), (101, 8, 5, 5, 1)]
    ts, vs = chunks.decode(rows[0][5])
    assert ts.tolist() == [10, 20, 30] and vs.tolist() == [1.0, 2.0, 3.0]


def _damaged_parts() -> list[bytes]:
    good = _part({(1, 10): 1.0, (1, 20): 2.0, (2, 5): 3.0})
    head = chunks._PART_HEAD.size
    out = [b"", b"\x01" + good[1:], good[:-1], good + b"\0" * 8]
    swapped = bytearray(good)  # series not ascending
    swapped[head : head + 16] = good[head + 8 : head + 16] + good[head : head + 8]
    out.append(bytes(swapped))
    back = bytearray(good)  # a series' times going back
    ts_at = chunks.part_layout(good[:head]).ts_offset
    back[ts_at : ts_at + 16] = struct.pack("<qq", 20, 10)
    out.append(bytes(back))
    bounds = bytearray(good)  # its series' bounds not covering its points
    starts_at = head + 16 * 2
    bounds[starts_at + 16 : starts_at + 24] = struct.pack("<q", 2)
    out.append(bytes(bounds))
    # a bound in the middle past its points, the last one right, the times increasing throughout (so
    # that only the bound can stop a read past the part's end)
    middle = bytearray(_part({(1, 10): 1.0, (1, 20): 2.0, (2, 30): 3.0}))
    middle[starts_at + 8 : starts_at + 16] = struct.pack("<q", 100)
    out.append(bytes(middle))
    huge = bytearray(good)  # a series count whose directory overflows
    huge[4:16] = struct.pack("<IQ", 2**32 - 1, 2**63)
    out.append(bytes(huge))
    return out


@pytest.mark.parametrize("damaged", _damaged_parts())
def test_flush_refuses_a_damaged_part(damaged: bytes) -> None:
    good = _part({(1, 10): 1.0})
    with pytest.raises(chunks.ChunkError):
        chunks.flush_parts([good, damaged], 1, 1, chunks.Windows(10**9), _packable(1))


def test_flush_packs_big_series_a_slice_at_a_time_as_it_would_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(7)
    parts = [
        {
            (int(s), int(t)): float(rng.integers(0, 5))
            for s, t in zip(rng.integers(1, 30, 300), rng.integers(0, 200, 300), strict=True)
        }
        for _ in range(4)
    ]
    datas = [_part(p) for p in parts]
    whole = chunks.flush_parts(datas, 1, 4, chunks.Windows(50), _packable(3))
    monkeypatch.setattr(chunks, "_ENCODE_MAX_POINTS", 7)
    assert chunks.flush_parts(datas, 1, 4, chunks.Windows(50), _packable(3)) == whole
    assert whole == (_flush_reference(datas, 1, 4, chunks.Windows(50), _packable(3)), *whole[1:])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_WINDOWS), st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20))
def test_a_window_of_one_time_is_the_window_of_it_among_many(windows: chunks.Windows, ts: list[int]) -> None:
    many = windows.of(np.array(ts, dtype=np.int64)).tolist()
    assert [windows.of_one(t) for t in ts] == many
    for i, t in zip(many, ts, strict=True):
        assert windows.start(i) <= t < windows.end(i)
