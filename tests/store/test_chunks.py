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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ts, st.booleans()), min_size=0, max_size=8), st.data())
def test_decode_many_is_decode_of_each(specs: list[tuple[list[int], bool]], data: st.DataObject) -> None:
    """Many chunks of both encodings (values of every kind: decimals, XOR'd, NaN payloads) decoded at
    once give each chunk's columns, bit for bit."""
    blobs = []
    for ts, packed in specs:
        vals = data.draw(st.lists(_floats | _ints, min_size=len(ts), max_size=len(ts)))
        if data.draw(st.booleans()):  # a decimal gauge
            vals = [round(x, 2) if math.isfinite(x) and abs(x) < 1e9 else 1.5 for x in vals]
        t, v = np.array(ts, dtype=np.int64), np.array(vals, dtype=np.float64)
        raw = chunks.encode_batch(np.zeros(len(t), np.int64), t, v)[0].data
        blobs.append(chunks.encode(t, v) if packed else raw)
    ts_all, vs_all, off = chunks.decode_many(blobs)
    assert len(off) == len(blobs) + 1 and off[-1] == len(ts_all) == len(vs_all)
    for i, blob in enumerate(blobs):
        t1, v1 = chunks.decode(blob)
        assert ts_all[off[i] : off[i + 1]].tolist() == t1.tolist()
        assert _bits(vs_all[off[i] : off[i + 1]]) == _bits(v1)


@pytest.mark.parametrize("blob", [b"", b"\x09abc", b"\x01" + b"\x00" * 15, b"\x02" + b"\x00" * 20])
def test_decode_many_refuses_what_decode_refuses(blob: bytes) -> None:
    with pytest.raises(chunks.ChunkError):
        chunks.decode(blob)
    with pytest.raises(chunks.ChunkError):
        chunks.decode_many([chunks.encode(np.array([1]), np.array([1.0])), blob])
