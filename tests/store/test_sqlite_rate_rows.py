"""The embedded store's rate windows straight from chunk rows (read._rate_rows, _native.rate_rows)
answer what the two-call way answers (the rows assembled into arrays by _assemble, then
promwindows.rate_windows), bit for bit; where the plain case does not hold, they answer None and
the caller takes the two-call way. And a compacted store's select_rate_each is the default one
(select_arrays_each, then the windows of each piece's arrays)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.points import SeriesSamples
from lossproof.query import promql
from lossproof.query.promql import STALE_NAN
from lossproof.query.promwindows import NATIVE_RATE, rate_windows, window_first
from lossproof.store import chunks
from lossproof.store.base import Matcher, RatePiece, RateWindows, SeriesArrays, StoreReader, WriteBatch
from lossproof.store.embedded.read import _assemble, _rate_rows
from lossproof.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
Row = tuple[int, int, int, int, bytes]
Found = tuple[int, str, tuple[tuple[str, str], ...]]


def raw(ts: list[int], vs: list[float]) -> bytes:
    return bytes((chunks.RAW,)) + np.array(ts, "<i8").tobytes() + np.array(vs, "<f8").tobytes()


def windows(fn: str, at: np.ndarray, rng: int, closed: bool = False) -> RateWindows:
    def of_arrays(piece: list[SeriesArrays]) -> tuple[np.ndarray, np.ndarray]:
        return rate_windows(piece, at, rng, *NATIVE_RATE[fn], skip_stale=True, closed=closed)

    return RateWindows(at, rng, *NATIVE_RATE[fn], of_arrays, closed=closed)


def two_calls(found: list[Found], rows: list[Row], from_ms: int, to_ms: int, rate: RateWindows) -> RatePiece:
    """What the store answers from a piece's arrays (SqliteReader._arrays, then of_arrays)."""
    got = _assemble(found, rows, {}, from_ms, to_ms)
    arrays = [
        SeriesArrays(metric, dict(lab), ts, vs)
        for (_, metric, lab), (ts, vs) in zip(found, got, strict=True)
        if len(ts)
    ]
    points = sum(len(s.t) for s in arrays)
    return RatePiece([dict(s.labels) for s in arrays], points, *rate.of_arrays(arrays))


def same(a: RatePiece, b: RatePiece) -> None:
    assert a.labels == b.labels
    assert a.points == b.points
    assert np.array_equal(a.present, b.present)
    # bit for bit, NaN included, where present (absent cells are 0.0 in both)
    assert np.array_equal(a.values.view(np.int64), b.values.view(np.int64))


VALUES = st.one_of(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, float("nan"), STALE_NAN, float("inf"), -1.0]),
)


@st.composite
def pieces(draw: st.DrawFn) -> tuple[list[Found], list[Row]]:
    """Series of chunks one after the other in time, raw or packed, in any row order; some series
    without rows."""
    found: list[Found] = []
    rows: list[Row] = []
    cid = 0
    for sid in range(1, draw(st.integers(1, 5)) + 1):
        found.append((sid, "m", (("i", str(sid)),)))
        n = draw(st.integers(0, 120))
        steps = draw(st.lists(st.sampled_from([1, 7_000, 15_000, 15_000, 60_000]), min_size=n, max_size=n))
        ts = (T0 + np.cumsum(np.array(steps, dtype=np.int64))).tolist()
        vs = draw(st.lists(VALUES, min_size=n, max_size=n))
        p = 0
        while p < n:
            q = min(n, p + draw(st.integers(1, 50)))
            if draw(st.booleans()):
                data = raw(ts[p:q], vs[p:q])
            else:
                data = chunks.encode(np.array(ts[p:q], dtype=np.int64), np.array(vs[p:q]))
            rows.append((sid, cid, ts[p], ts[q - 1], data))
            cid += 1
            p = q
    return found, draw(st.permutations(rows))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces(),
    st.sampled_from(["rate", "increase", "delta"]),
    st.integers(0, 3_000_000),
    st.integers(0, 3_000_000),
    st.sampled_from([15_000, 60_000, 300_000]),
    st.booleans(),
)
def test_rate_rows_are_the_two_call_way(
    piece: tuple[list[Found], list[Row]], fn: str, a: int, b: int, rng: int, closed: bool
) -> None:
    """(``closed``: Prometheus 2's windows, ``[query] windows``)"""
    found, rows = piece
    at = T0 + np.arange(min(a, b), max(a, b) + 1, 60_000, dtype=np.int64)
    from_ms, to_ms = window_first(int(at[0]), rng, closed), int(at[-1])
    rate = windows(fn, at, rng, closed)
    got = _rate_rows(found, rows, from_ms, to_ms, rate)
    if not rows:
        assert got is None
        return
    assert got is not None
    same(got, two_calls(found, rows, from_ms, to_ms, rate))


def test_rows_that_are_not_the_plain_case_answer_none() -> None:
    found: list[Found] = [(1, "m", ())]
    rate = windows("rate", np.array([T0 + 60_000], dtype=np.int64), 300_000)
    a = (1, 1, T0, T0 + 30_000, raw([T0, T0 + 15_000, T0 + 30_000], [1.0, 2.0, 3.0]))
    overlapping = (1, 2, T0 + 30_000, T0 + 45_000, raw([T0 + 30_000, T0 + 45_000], [9.0, 9.0]))
    wrong_range = (1, 2, T0 + 40_000, T0 + 45_000, raw([T0 + 41_000, T0 + 45_000], [4.0, 5.0]))
    backwards = (1, 2, T0 + 40_000, T0 + 45_000, raw([T0 + 45_000, T0 + 40_000], [4.0, 5.0]))
    not_a_chunk = (1, 2, T0 + 40_000, T0 + 45_000, b"\x07junk")
    for second in (overlapping, wrong_range, backwards, not_a_chunk):
        assert _rate_rows(found, [a, second], T0, T0 + 60_000, rate) is None
    assert _rate_rows(found, [], T0, T0 + 60_000, rate) is None
    # the plain case itself
    good = (1, 2, T0 + 40_000, T0 + 45_000, raw([T0 + 40_000, T0 + 45_000], [4.0, 5.0]))
    got = _rate_rows(found, [good, a], T0, T0 + 60_000, rate)
    assert got is not None
    same(got, two_calls(found, [good, a], T0, T0 + 60_000, rate))


def _compact_all(store: SqliteStore, now: int) -> None:
    for later in (now, now + 60_000, now + 600_000, now + 3_600_000):
        for _ in range(10_000):
            if not store.compact(later).more:
                break
        else:
            raise AssertionError("compaction never finished")


def _counters_store(tmp_path: Path, state: str) -> SqliteStore:
    """40 series of 600 points at 15 s: counters with resets, some with a staleness marker, some
    gauges. ``state``: "compacted" (packed chunks, no parts), "parts" (as written: parts only),
    "mixed" (the first 400 points compacted, the newest in parts: a store while points arrive),
    "between" (mixed, and then points between stored ones in parts: a series' part slice and chunk
    overlap in time) or "parts-between" (mixed, and points between those of a part in another)."""
    store = SqliteStore(tmp_path / "s.db")
    rng_ = np.random.default_rng(7)
    now = T0

    def write(b: int, shift: int = 0) -> None:
        nonlocal now
        ts = [T0 + (20 * b + k) * 15_000 + shift for k in range(20)]
        batch = []
        for i in range(40):
            vs = np.cumsum(rng_.integers(0, 5, 20)).astype(float) + 100.0 * b
            if i % 7 == 0:
                vs[rng_.integers(0, 20)] = STALE_NAN
            if i % 5 == 0:
                vs = rng_.normal(size=20)
            batch.append(("t", SeriesSamples("m", {"i": str(i), "j": str(i % 3)}, ts, vs.tolist())))
        store.write_batch(WriteBatch(series=batch, now_ms=now))
        now += 1000

    for b in range(30):
        if b == 20 and state in ("mixed", "between", "parts-between"):
            _compact_all(store, now)
        write(b)
    if state == "between":
        write(3, shift=7_000)
    if state == "parts-between":
        write(25, shift=7_000)
    if state == "compacted":
        _compact_all(store, now)
        assert not store._parts_dirs(0, 1 << 62)
    else:
        assert store._parts_dirs(0, 1 << 62)
    return store


@pytest.mark.parametrize("state", ["compacted", "parts", "mixed", "between", "parts-between"])
def test_select_rate_each_is_the_default_on_arrays(tmp_path: Path, state: str) -> None:
    """A store of counters with resets, staleness markers and gauges, compacted (packed chunks, no
    parts), as written (parts), both (chunks and, newer, parts: the parts' slices read as rows
    too) or with part slices overlapping chunks (those series from arrays): the pieces' windows
    are those of the default select_rate_each, in pieces of any size."""
    store = _counters_store(tmp_path, state)
    ends = T0 + np.arange(0, 600 * 15_000, 60_000, dtype=np.int64)
    ms = [Matcher("__name__", "=", "m"), Matcher("j", "!=", "2")]
    for fn in ("rate", "increase", "delta"):
        for rng in (60_000, 300_000):
            rate = windows(fn, ends, rng)
            from_ms, to_ms = int(ends[0]) - rng + 1, int(ends[-1])
            want: list[RatePiece] = []
            StoreReader.select_rate_each(store, "t", ms, from_ms, to_ms, rate, want.append)
            for per_call in (1, 5, 256):
                got: list[RatePiece] = []
                store.select_rate_each("t", ms, from_ms, to_ms, rate, got.append, series_per_call=per_call)
                same(
                    RatePiece(
                        [lab for p in got for lab in p.labels],
                        sum(p.points for p in got),
                        np.concatenate([p.values for p in got]),
                        np.concatenate([p.present for p in got]),
                    ),
                    want[0],
                )
    store.close()


def test_part_slices_are_read_as_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While points arrive (chunks, and newer points in parts), a rate read takes the rows' way for
    every piece, the parts' slices among its rows; where a part slice overlaps a chunk, that
    piece is read from arrays."""
    from lossproof.store.embedded import read as rd

    calls = {"rows": 0, "arrays": 0}
    real_finish, real_arrays = rd._rate_rows_finish, rd._series_arrays

    def finish(*a: object) -> object:
        got = real_finish(*a)  # type: ignore[arg-type]
        calls["rows"] += got is not None
        return got

    def arrays(*a: object) -> object:
        calls["arrays"] += 1
        return real_arrays(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(rd, "_rate_rows_finish", finish)
    monkeypatch.setattr(rd, "_series_arrays", arrays)
    ends = T0 + np.arange(0, 600 * 15_000, 60_000, dtype=np.int64)
    rate = windows("rate", ends, 300_000)
    for state, want_rows, want_arrays in (("mixed", 4, 0), ("between", 0, 4), ("parts-between", 0, 4)):
        calls.update(rows=0, arrays=0)
        store = _counters_store(tmp_path / state, state)
        store.select_rate_each(
            "t", [Matcher("__name__", "=", "m")], T0, int(ends[-1]), rate, lambda p: None, 10
        )
        store.close()
        assert (calls["rows"], calls["arrays"]) == (want_rows, want_arrays), state


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_damaged_part_slice_outside_the_range_is_still_damage(tmp_path: Path, where: str) -> None:
    """A part slice whose times do not increase is a ChunkError whatever its first and last t say
    of its range (the arrays' way says so of every slice it reads): damage that put its first t
    past the read's end, or its last before the read's start, is not read as a slice outside it."""
    import sqlite3

    store = SqliteStore(tmp_path / "s.db")
    ts = [T0 + k * 15_000 for k in range(40)]
    series = [("t", SeriesSamples("m", {"i": str(i)}, ts, [float(k) for k in range(40)])) for i in range(3)]
    store.write_batch(WriteBatch(series=series, now_ms=T0))
    store.close()
    con = sqlite3.connect(tmp_path / "s.db")
    pid, data = con.execute("SELECT id, data FROM parts").fetchone()
    layout = chunks.part_layout(data[:64])
    _, _, starts = chunks.part_directory(data, layout)
    at = int(starts[0]) if where == "first" else int(starts[1]) - 1  # series 0's first or last t
    bad = T0 + 10**9 if where == "first" else T0 - 10**9
    b = bytearray(data)
    b[layout.ts_offset + 8 * at : layout.ts_offset + 8 * at + 8] = np.int64(bad).tobytes()
    con.execute("UPDATE parts SET data = ? WHERE id = ?", (bytes(b), pid))
    con.commit()
    con.close()
    store = SqliteStore(tmp_path / "s.db")
    ends = T0 + np.arange(300_000, 500_000, 60_000, dtype=np.int64)
    rate = windows("rate", ends, 300_000)
    ms = [Matcher("__name__", "=", "m")]
    for read in (StoreReader.select_rate_each, SqliteStore.select_rate_each):
        with pytest.raises(chunks.ChunkError, match="not increasing"):
            read(store, "t", ms, int(ends[0]) - 300_000 + 1, int(ends[-1]), rate, lambda p: None)
    store.close()


def test_part_rows_only_overlapping_slices() -> None:
    """A part slice outside the read's range is not a row (the chunks' rows are selected alike);
    the others are RAW rows of their points, ranked as the part."""
    from lossproof.store.embedded.read import PartBlock, _part_rows

    found: list[Found] = [(5, "m", ()), (6, "m", ()), (7, "m", ())]
    ts = np.array([10, 20, 30, 40, 50], dtype=np.int64)
    vs = ts * 1.5
    block = PartBlock(np.array([0, 1]), 99, ts, vs, np.array([0, 2]), np.array([2, 3]))
    extra = {2: [(98, np.array([5], dtype=np.int64), np.array([STALE_NAN]))]}
    got = _part_rows(found, extra, [block], 25, 45)
    assert got == [(6, 99, 30, 50, raw([30, 40, 50], [45.0, 60.0, 75.0]))]
    got = _part_rows(found, extra, [block], 0, 100)
    assert [r[:4] for r in got] == [(7, 98, 5, 5), (5, 99, 10, 20), (6, 99, 30, 50)]
    assert got[0][4] == raw([5], [STALE_NAN])  # bit for bit: the staleness marker's payload kept
    # outside the range but not increasing (damage): kept, for the arrays' way to say so; a slice
    # of no point is no row; one past the part's columns is a bug, said at once
    bad_ts = np.array([60, 70, 70, 80, 90], dtype=np.int64)
    bad = PartBlock(np.array([0, 1, 2]), 97, bad_ts, bad_ts * 1.0, np.array([0, 2, 4]), np.array([3, 0, 1]))
    got = _part_rows(found, {}, [bad], 0, 50)
    assert got == [(5, 97, 60, 70, raw([60, 70, 70], [60.0, 70.0, 70.0]))]
    past = PartBlock(np.array([0]), 97, bad_ts, bad_ts * 1.0, np.array([4]), np.array([2]))
    with pytest.raises(ValueError, match="slice 0"):
        _part_rows(found, {}, [past], 0, 100)


def test_rate_rows_on_two_threads_are_the_two_call_way() -> None:
    """A piece of enough points for two threads (the job's and finish's), packed chunks."""
    gen = np.random.default_rng(11)
    found: list[Found] = []
    rows: list[Row] = []
    for sid in range(1, 301):
        found.append((sid, "m", (("i", str(sid)),)))
        ts = T0 + 15_000 * np.arange(900, dtype=np.int64) + gen.integers(0, 2, 900)
        vs = np.cumsum(gen.integers(0, 9, 900)).astype(float)
        vs[gen.integers(0, 900, 3)] = 0.0  # resets
        if sid % 10 == 0:
            vs[gen.integers(0, 900)] = STALE_NAN
        for p in range(0, 900, 480):
            q = min(900, p + 480)
            rows.append((sid, sid * 10 + p, int(ts[p]), int(ts[q - 1]), chunks.encode(ts[p:q], vs[p:q])))
    at = T0 + np.arange(0, 900 * 15_000, 60_000, dtype=np.int64)
    for fn in ("rate", "increase", "delta"):
        rate = windows(fn, at, 300_000)
        from_ms, to_ms = int(at[0]) - 300_000 + 1, int(at[-1]) - 7_000_000
        got = _rate_rows(found, rows[::-1], from_ms, to_ms, rate)
        assert got is not None
        same(got, two_calls(found, rows, from_ms, to_ms, rate))


@pytest.mark.parametrize("state", ["compacted", "parts", "mixed", "between", "parts-between"])
def test_rate_queries_are_the_generic_range_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """rate / increase / delta and their sums, read in pieces of any size (one array for all of
    them, or the pieces concatenated), answer what the generic range-function path computes from
    one read of arrays."""
    store = _counters_store(tmp_path, state)
    grid = promql.Grid(T0, T0 + 599 * 15_000, 60_000)
    queries = ["rate(m[5m])", "sum by (j) (increase(m[2m]))", "delta(m[5m] offset 1m)", "avg(rate(m[1m]))"]

    def run(q: str) -> promql.Vector:
        v = promql.Evaluator(store, "t", grid).eval(promql.parse(q))
        assert isinstance(v, promql.Vector)
        return v

    want = {}
    with monkeypatch.context() as mp:
        mp.setattr(promql, "NATIVE_RATE", {})
        want = {q: run(q) for q in queries}
    each = SqliteStore.select_rate_each
    for per_call in (1, 7, 256):
        monkeypatch.setattr(
            SqliteStore,
            "select_rate_each",
            lambda self, *a, per_call=per_call, **kw: each(self, *a, **{**kw, "series_per_call": per_call}),
        )
        for q in queries:
            got = run(q)
            assert got.labels == want[q].labels
            assert np.array_equal(got.present, want[q].present)
            # bit for bit (NaN included)
            assert np.array_equal(
                got.values[got.present].view(np.int64), want[q].values[want[q].present].view(np.int64)
            )
    store.close()


@pytest.mark.parametrize("state", ["compacted", "mixed"])
def test_limits_refuse_rate_read_the_rows_way_as_the_arrays_way(tmp_path: Path, state: str) -> None:
    """The limits count a piece computed from rows as one read as arrays: the same errors."""
    store = _counters_store(tmp_path, state)
    grid = promql.Grid(T0, T0 + 599 * 15_000, 60_000)

    def run(q: str, limits: promql.Limits) -> object:
        return promql.Evaluator(store, "t", grid, limits=limits).eval(promql.parse(q))

    too_many = "read 40 series with one selector, more than max_series = 5"
    with pytest.raises(promql.LimitExceeded, match=too_many):
        run("sum(rate(m[5m]))", promql.Limits(max_series=5))
    with pytest.raises(promql.LimitExceeded, match="max_samples = 1000"):
        run("rate(m[5m])", promql.Limits(max_samples=1000))
    assert isinstance(run("sum(rate(m[5m]))", promql.Limits(max_series=40)), promql.Vector)
    store.close()


def test_no_piece_windows_are_computed_past_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces past a limit are only counted: at most the piece that crossed it is computed from
    rows (a refused day of 40,000 series once computed every window, ~600 MB, before its 422)."""
    from lossproof.store.embedded import read

    store = _counters_store(tmp_path, "compacted")
    started: list[int] = []
    real = read._rate_rows_start

    def counting(piece: list[Found], *args: object) -> object:
        started.append(len(piece))
        return real(piece, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(read, "_rate_rows_start", counting)
    monkeypatch.setattr(store, "select_rate_each", partial(store.select_rate_each, series_per_call=4))
    grid = promql.Grid(T0, T0 + 599 * 15_000, 60_000)
    ev = promql.Evaluator(store, "t", grid, limits=promql.Limits(max_series=5))
    with pytest.raises(promql.LimitExceeded, match="more than max_series = 5"):
        ev.eval(promql.parse("sum(rate(m[5m]))"))
    assert sum(started) == 8, started  # 4 within the limit, then the 4 that crossed it; not 40
    started.clear()
    ev = promql.Evaluator(store, "t", grid, limits=promql.Limits(max_series=40))
    assert isinstance(ev.eval(promql.parse("sum(rate(m[5m]))")), promql.Vector)
    assert sum(started) == 40
    store.close()
