"""The native read of raw chunks (``_native.chunk_heads``, ``_native.assemble_into``,
``_native.runs_increasing``) against Python references: the chunk opened by :func:`chunks._opened`,
the columns laid out with numpy, the times checked pair by pair."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native
from lossproof.store import chunks


def _raw(ts: list[int], vs: list[float]) -> bytes:
    return bytes((chunks.RAW,)) + np.array(ts, dtype="<i8").tobytes() + np.array(vs, dtype="<f8").tobytes()


def _columns(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A raw chunk's columns, unchecked (chunks.decode refuses times that do not increase)."""
    n = (len(data) - 1) // 16
    return np.frombuffer(data, "<i8", n, 1).astype(np.int64), np.frombuffer(data, "<f8", n, 1 + 8 * n)


def _increasing(ts: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(ts))


def _i64(xs: list[int]) -> bytes:
    return np.array(xs, dtype=np.int64).tobytes()


times = st.lists(st.integers(-(2**62), 2**62), max_size=9)
values = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def raw_rows(draw: st.DrawFn) -> list[tuple[int, int, int, int, bytes]]:
    """Rows of raw chunks: times sorted mostly (sometimes not), the row's range mostly theirs."""
    rows = []
    for cid in range(draw(st.integers(0, 6))):
        ts = draw(times)
        if draw(st.integers(0, 3)):
            ts = sorted(set(ts))
        vs = [draw(values) for _ in ts]
        t_min, t_max = (ts[0], ts[-1]) if ts else (0, 0)
        if not draw(st.integers(0, 5)):
            t_min += draw(st.sampled_from([-1, 1]))
        rows.append((draw(st.integers(0, 2**40)), cid, t_min, t_max, _raw(ts, vs)))
    return rows


@settings(max_examples=300, deadline=None)
@given(raw_rows(), st.data())
def test_chunk_heads_are_the_rows_columns_and_the_opened_counts(
    rows: list[tuple[int, int, int, int, bytes]], data: st.DataObject
) -> None:
    """Five columns (series, id, t_min, t_max, points as _opened counts them); None as soon as one
    row's data is not a well-formed raw chunk (empty, packed, a length that is not 1 + 16 n)."""
    broken = data.draw(st.sampled_from([None, b"", b"\x01\x00", b"\x02" + bytes(16), b"\x03"]))
    if broken is not None and rows:
        k = data.draw(st.integers(0, len(rows) - 1))
        rows[k] = (*rows[k][:4], broken)
    got = _native.chunk_heads(rows)
    if broken is not None and rows:
        assert got is None
        return
    assert got is not None
    cols = np.frombuffer(got, dtype=np.int64).reshape(5, len(rows))
    for c in range(4):
        assert cols[c].tolist() == [r[c] for r in rows]
    assert cols[4].tolist() == [chunks._opened(r[4])[1] for r in rows]


@settings(max_examples=300, deadline=None)
@given(raw_rows(), st.data())
def test_assemble_into_lays_out_and_checks_as_numpy_does(
    rows: list[tuple[int, int, int, int, bytes]], data: st.DataObject
) -> None:
    """Chunks and source segments at their places (a permutation of the places, gaps allowed), the
    same columns numpy makes; the verdict the reference's checks give, in their order."""
    decoded = [_columns(r[4]) for r in rows]
    nsrc = data.draw(st.integers(0, 3))
    src_ts = [np.array(data.draw(times), dtype=np.int64) for _ in range(nsrc)]
    src_vs = [np.array([data.draw(values) for _ in t], dtype=np.float64) for t in src_ts]
    segs = []  # (source, start, length)
    for j in range(nsrc):
        for _ in range(data.draw(st.integers(0, 2))):
            a = data.draw(st.integers(0, len(src_ts[j])))
            segs.append((j, a, data.draw(st.integers(0, len(src_ts[j]) - a))))
    pieces = [("c", i, len(d[0])) for i, d in enumerate(decoded)]
    pieces += [("s", k, s[2]) for k, s in enumerate(segs)]
    pieces = data.draw(st.permutations(pieces))
    gap = data.draw(st.integers(0, 2))
    place, pos = {}, 0
    for kind, i, n in pieces:
        pos += data.draw(st.integers(0, gap))
        place[kind, i] = pos
        pos += n
    total = pos + data.draw(st.integers(0, gap))
    want_t, want_v = np.zeros(total, dtype=np.int64), np.zeros(total, dtype=np.float64)
    for i, (t, v) in enumerate(decoded):
        want_t[place["c", i] : place["c", i] + len(t)] = t
        want_v[place["c", i] : place["c", i] + len(t)] = v
    for k, (j, a, n) in enumerate(segs):
        want_t[place["s", k] : place["s", k] + n] = src_ts[j][a : a + n]
        want_v[place["s", k] : place["s", k] + n] = src_vs[j][a : a + n]
    if not all(_increasing(t.tolist()) for t, _ in decoded):
        want = 1
    elif not all(r[2] == t[0] and r[3] == t[-1] for r, (t, _) in zip(rows, decoded, strict=True) if len(t)):
        want = 2
    elif not all(_increasing(src_ts[j][a : a + n].tolist()) for j, a, n in segs):
        want = 3
    else:
        want = 0
    cols, verdict = _native.assemble_into(
        rows,
        _i64([place["c", i] for i in range(len(rows))]),
        total,
        src_ts,
        src_vs,
        _i64([s[0] for s in segs]),
        _i64([s[1] for s in segs]),
        _i64([place["s", k] for k in range(len(segs))]),
        _i64([s[2] for s in segs]),
    )
    assert verdict == want
    got_t = np.frombuffer(cols, dtype="<i8", count=total)
    got_v = np.frombuffer(cols, dtype="<f8", count=total, offset=8 * total)
    assert got_t.tolist() == want_t.tolist()
    assert got_v.view(np.uint64).tolist() == want_v.view(np.uint64).tolist()  # NaNs bit for bit


def test_assemble_into_refuses_what_does_not_fit() -> None:
    row = (1, 1, 10, 20, _raw([10, 20], [1.0, 2.0]))
    t, v = np.array([1, 2], dtype=np.int64), np.array([1.0, 2.0])
    e = _i64([])
    with pytest.raises(ValueError):
        _native.assemble_into([row], _i64([1]), 2, [], [], e, e, e, e)  # the chunk past the end
    with pytest.raises(ValueError):
        _native.assemble_into([(1, 1, 0, 0, b"\x02" + bytes(16))], _i64([0]), 9, [], [], e, e, e, e)
    with pytest.raises(ValueError):  # a segment past its source
        _native.assemble_into([], e, 9, [t], [v], _i64([0]), _i64([1]), _i64([0]), _i64([2]))
    with pytest.raises(ValueError):  # a segment past the columns
        _native.assemble_into([], e, 1, [t], [v], _i64([0]), _i64([0]), _i64([0]), _i64([2]))
    with pytest.raises(ValueError):  # an unknown source
        _native.assemble_into([], e, 9, [t], [v], _i64([1]), _i64([0]), _i64([0]), _i64([1]))
    with pytest.raises(ValueError):
        _native.assemble_into([], e, 9, [t], [v[:1]], e, e, e, e)


def _check_increasing_numpy(ts: np.ndarray, at: np.ndarray, counts: np.ndarray) -> bool:
    """The numpy check chunks.check_increasing made before (True: no chunk's times go down)."""
    if len(ts) < 2:
        return True
    down = np.flatnonzero(ts[1:] <= ts[:-1])
    if not len(down):
        return True
    has = counts > 0
    at, counts = at[has], counts[has]
    if not len(at):
        return True
    by_at = np.argsort(at)
    starts, ends = at[by_at], at[by_at] + counts[by_at]
    k = np.searchsorted(starts, down, "right") - 1
    return not bool(((k >= 0) & (down + 1 < ends[np.maximum(k, 0)])).any())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=30), st.data())
def test_runs_increasing_is_the_numpy_check(ts_l: list[int], data: st.DataObject) -> None:
    """Runs that do not overlap (gaps between them allowed, some empty): the verdict the numpy check
    gave, and chunks.check_increasing raises exactly when it is False."""
    ts = np.array(ts_l, dtype=np.int64)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ts)), max_size=8)))
    bounds = [0, *cuts, len(ts)]
    runs = [(a, b - a) for a, b in itertools.pairwise(bounds) if data.draw(st.integers(0, 3))]
    at = np.array([a for a, _ in runs], dtype=np.int64)
    counts = np.array([n for _, n in runs], dtype=np.int64)
    want = _check_increasing_numpy(ts, at, counts)
    if len(ts) >= 2:
        assert _native.runs_increasing(ts, at.tobytes(), counts.tobytes()) == want
    if want:
        chunks.check_increasing(ts, at, counts)
    else:
        with pytest.raises(chunks.ChunkError):
            chunks.check_increasing(ts, at, counts)
    with pytest.raises(ValueError):
        _native.runs_increasing(ts, _i64([len(ts)]), _i64([1]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40), max_size=5), st.data())
def test_decode_checked_is_decode_chunks_and_the_numpy_check(
    ts_lists: list[list[int]], data: st.DataObject
) -> None:
    """Packed and raw chunks (times sometimes not increasing: written here without the encoder's
    checks) decoded as decode_chunks decodes them; the verdict the numpy check of each chunk gives."""
    items, counts = [], []
    for ts_l in ts_lists:
        ts = np.array(ts_l if data.draw(st.integers(0, 2)) else sorted(set(ts_l)), dtype=np.int64)
        vs = np.array([float(data.draw(st.integers(-99, 99))) / 4 for _ in ts])
        if data.draw(st.booleans()):
            blob = _raw(ts.tolist(), vs.tolist())
        else:
            blob = chunks.encode_many(ts, vs, np.array([0]), np.array([len(ts)]))[0]
        item = chunks._opened(blob)
        items.append((item[0], item[1], item[2], item[3], blob if item[0] == chunks.RAW else item[4]))
        counts.append(item[1])
    at = np.zeros(len(items), dtype=np.int64)
    if counts:
        np.cumsum(counts[:-1], out=at[1:])
    total = int(sum(counts))
    want = _native.decode_chunks(items, at.tobytes(), total)
    got, increasing = _native.decode_checked(items, at.tobytes(), total)
    assert bytes(got) == bytes(want)
    ts_all = np.frombuffer(want, dtype="<i8", count=total).astype(np.int64)
    assert increasing == _check_increasing_numpy(ts_all, at, np.array(counts, dtype=np.int64))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(-50, 50), max_size=12, unique=True).map(sorted), max_size=6),
    st.integers(-60, 60),
    st.booleans(),
)
def test_native_search_runs_is_the_numpy_search(runs: list[list[int]], x: int, right: bool) -> None:
    """chunks.search_runs (native) lands where the numpy binary search over every run lands."""
    ts = np.array([t for r in runs for t in r], dtype=np.int64)
    ends = np.cumsum([len(r) for r in runs], dtype=np.int64)
    starts = ends - np.array([len(r) for r in runs], dtype=np.int64)
    want = chunks._search_runs_numpy(ts, starts, ends, x, right).tolist()
    assert chunks.search_runs(ts, starts, ends, x, right).tolist() == want
    got = _native.search_runs(ts, starts.tobytes(), ends.tobytes(), x, right)
    assert np.frombuffer(got, dtype=np.int64).tolist() == want
    with pytest.raises(ValueError):
        _native.search_runs(ts, _i64([0]), _i64([len(ts) + 1]), x, right)
