"""Reviewer B: _assemble's native path (row_heads, assemble_rows) against a reference
first-write-wins merge, at the edges: duplicates across chunks and parts, one point, int64 ends."""

from __future__ import annotations

import numpy as np
import pytest

from lossproof import _native
from lossproof.store import chunks
from lossproof.store.embedded.read import PartBlock, _assemble

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def raw(ts: list[int], vs: list[float]) -> bytes:
    return bytes((chunks.RAW,)) + np.array(ts, "<i8").tobytes() + np.array(vs, "<f8").tobytes()


def row(sid: int, cid: int, ts: list[int], vs: list[float]) -> tuple[int, int, int, int, bytes]:
    return (sid, cid, ts[0], ts[-1], raw(ts, vs))


def reference(segs: list[tuple[int, list[int], list[float]]], lo: int, hi: int) -> dict[int, float]:
    out: dict[int, tuple[int, float]] = {}
    for order, ts, vs in segs:
        for t, v in zip(ts, vs, strict=True):
            if lo <= t <= hi and (t not in out or order < out[t][0]):
                out[t] = (order, v)
    return {t: v for t, (_, v) in sorted(out.items())}


def test_duplicates_across_raw_chunks_lower_id_wins_whatever_the_row_order() -> None:
    found = [(7, "m", ()), (8, "m", ())]
    rows = [
        row(7, 50, [10, 20, 30], [5.0, 5.0, 5.0]),
        row(7, 3, [20, 30, 40], [3.0, 3.0, 3.0]),
        row(8, 9, [I64_MIN, 0, I64_MAX], [1.0, 2.0, 3.0]),
        row(8, 2, [I64_MAX], [9.0]),
    ]
    extra = {
        0: [
            (
                chunks._PART_ORDER if hasattr(chunks, "_PART_ORDER") else 1 << 62,
                np.array([30, 35], dtype=np.int64),
                np.array([7.0, 7.0]),
            )
        ]
    }
    got = _assemble(found, rows, extra, I64_MIN, I64_MAX)
    want0 = reference(
        [(50, [10, 20, 30], [5.0] * 3), (3, [20, 30, 40], [3.0] * 3), (1 << 62, [30, 35], [7.0] * 2)],
        I64_MIN,
        I64_MAX,
    )
    assert dict(zip(got[0][0].tolist(), got[0][1].tolist(), strict=True)) == want0
    want1 = reference([(9, [I64_MIN, 0, I64_MAX], [1.0, 2.0, 3.0]), (2, [I64_MAX], [9.0])], I64_MIN, I64_MAX)
    assert dict(zip(got[1][0].tolist(), got[1][1].tolist(), strict=True)) == want1


@pytest.mark.parametrize("seed", range(40))
def test_random_raw_rows_and_blocks_match_reference_and_packed_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    found = [(s, "m", ()) for s in range(1, 5)]
    rows, segs = [], {s: [] for s in range(1, 5)}
    ids = rng.permutation(1000)[:12] + 1
    for cid in ids.tolist():
        s = int(rng.integers(1, 5))
        n = int(rng.integers(1, 6))
        ts = sorted(set(rng.integers(-5, 30, n).tolist()))
        vs = rng.normal(size=len(ts)).round(3).tolist()
        rows.append(row(s, cid, ts, vs))
        segs[s].append((cid, ts, vs))
    # a part block holding slices of series 1 and 3
    bts = np.array([0, 4, 9, 2, 3], dtype=np.int64)
    bvs = np.array([0.5, 0.25, 0.125, 8.0, 16.0])
    blocks = [PartBlock(np.array([0, 2]), (1 << 62) + 1, bts, bvs, np.array([0, 3]), np.array([3, 2]))]
    segs[1].append(((1 << 62) + 1, [0, 4, 9], [0.5, 0.25, 0.125]))
    segs[3].append(((1 << 62) + 1, [2, 3], [8.0, 16.0]))
    lo, hi = int(rng.integers(-6, 10)), int(rng.integers(10, 31))
    got = _assemble(found, rows, {}, lo, hi, blocks)
    # the same rows packed: the other (open_many, decode_into) path
    packed = [
        (
            s,
            c,
            a,
            b,
            chunks.encode(
                np.frombuffer(d[1 : 1 + 8 * ((len(d) - 1) // 16)], "<i8").copy(),
                np.frombuffer(d[1 + 8 * ((len(d) - 1) // 16) :], "<f8").copy(),
            ),
        )
        for s, c, a, b, d in rows
    ]
    other = _assemble(found, packed, {}, lo, hi, blocks)
    for k, (sid, _, _) in enumerate(found):
        want = reference(segs[sid], lo, hi)
        assert dict(zip(got[k][0].tolist(), got[k][1].tolist(), strict=True)) == want
        assert got[k][0].tolist() == list(want)
        assert other[k][0].tolist() == got[k][0].tolist() and other[k][1].tolist() == got[k][1].tolist()


def test_damaged_raw_chunks_are_chunk_errors_not_panics() -> None:
    found = [(1, "m", ())]
    # times going back
    with pytest.raises(chunks.ChunkError):
        _assemble(found, [(1, 1, 5, 3, raw([5, 3], [1.0, 2.0]))], {}, 0, 10)
    # stored range not the chunk's
    with pytest.raises(chunks.ChunkError):
        _assemble(found, [(1, 1, 4, 5, raw([3, 5], [1.0, 2.0]))], {}, 0, 10)
    # a length not 1 + 16 n: row_heads says None, open_many says what is wrong
    with pytest.raises(chunks.ChunkError):
        _assemble(found, [(1, 1, 3, 5, raw([3, 5], [1.0, 2.0])[:-1])], {}, 0, 10)


def test_native_entry_points_refuse_bad_offsets_without_panicking() -> None:
    d = raw([1, 2], [1.0, 2.0])
    rows = [(1, 1, 1, 2, d)]
    e = b""
    for at in (-1, 2**62, 2**63 - 1, 1):
        with pytest.raises(ValueError):
            _native.assemble_rows(rows, np.array([at], dtype=np.int64).tobytes(), 2, [], [], e, e, e, e)
    ts = np.arange(10, dtype=np.int64)
    for lo, hi in ((-1, 3), (3, 2), (0, 11), (2**62, 2**62 + 1), (0, 2**63 - 1)):
        with pytest.raises(ValueError):
            _native.search_runs(ts, np.array([lo]).tobytes(), np.array([hi]).tobytes(), 0, False)
    for a, c in ((-1, 2), (9, 2), (2**63 - 1, 2), (1, 2**63 - 1)):
        with pytest.raises(ValueError):
            _native.runs_increasing(ts, np.array([a]).tobytes(), np.array([c]).tobytes())
    for x, right in ((I64_MIN, False), (I64_MIN, True), (I64_MAX, False), (I64_MAX, True)):
        got = np.frombuffer(
            _native.search_runs(ts, np.array([2]).tobytes(), np.array([7]).tobytes(), x, right), np.int64
        )
        assert got.tolist() == [int(np.searchsorted(ts[2:7], x, "right" if right else "left")) + 2]
    with pytest.raises(ValueError):
        _native.decode_checked([(1, 2**62, 0, 0, d)], np.array([0]).tobytes(), 2)
    with pytest.raises(ValueError):
        _native.decode_checked([(2, 3, 0, 0, b"\0" * 39)], np.array([0]).tobytes(), 3)
    with pytest.raises(ValueError):
        _native.decode_checked([(1, 1, 0, 0, d)], np.array([0]).tobytes(), 2**63)


def test_search_runs_on_an_unaligned_int64_view_falls_back_or_answers() -> None:
    buf = bytearray(8 * 6 + 1)
    ts = np.frombuffer(buf, dtype=np.int64, offset=1)
    ts[:] = np.arange(6)
    assert ts.flags.c_contiguous and not ts.flags.aligned
    got = chunks.search_runs(ts, np.array([0]), np.array([6]), 3, right=False)
    assert got.tolist() == [3]


def test_check_increasing_on_an_unaligned_int64_view() -> None:
    buf = bytearray(8 * 6 + 1)
    ts = np.frombuffer(buf, dtype=np.int64, offset=1)
    ts[:] = np.arange(6)
    chunks.check_increasing(ts, np.array([0, 3]), np.array([3, 3]))
    ts[4] = 0
    with pytest.raises(chunks.ChunkError):
        chunks.check_increasing(ts, np.array([0, 3]), np.array([3, 3]))


def test_two_part_blocks_and_part_slices_older_part_wins() -> None:
    found = [(1, "m", ()), (2, "m", ())]
    p = 1 << 62
    rows = [row(1, 9, [5, 6], [90.0, 91.0])]
    extra = {0: [(p + 1, np.array([6, 7], dtype=np.int64), np.array([10.0, 11.0]))]}
    b_new = PartBlock(
        np.array([0, 1]),
        p + 3,
        np.array([6, 7, 8, 1], dtype=np.int64),
        np.array([30.0, 31.0, 32.0, 33.0]),
        np.array([0, 3]),
        np.array([3, 1]),
    )
    b_old = PartBlock(
        np.array([0, 1]),
        p + 2,
        np.array([7, 8, 1], dtype=np.int64),
        np.array([20.0, 21.0, 22.0]),
        np.array([0, 2]),
        np.array([2, 1]),
    )
    got = _assemble(found, rows, extra, 0, 100, [b_new, b_old])
    assert list(zip(got[0][0].tolist(), got[0][1].tolist(), strict=True)) == [
        (5, 90.0),
        (6, 91.0),
        (7, 11.0),
        (8, 21.0),
    ]
    assert list(zip(got[1][0].tolist(), got[1][1].tolist(), strict=True)) == [(1, 22.0)]
