"""The native checks and searches over assembled columns (``_native.runs_increasing``,
``decode_checked``, ``search_runs``) against Python references: the times checked pair by pair and
with numpy, numpy's searchsorted. (The rows' layout: tests/unit/test_native_rowdecode.py.)"""

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
