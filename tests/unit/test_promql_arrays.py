"""PromQL's vectorised evaluation (numpy, every step and series at once) answers bit for bit what the
per-window Python definitions answer (``promref._range_fn``, ``_agg``, ``_binop``), on random data
with the awkward values: NaN, infinities, both zeros, counter resets, huge and tiny numbers, single
samples, empty windows."""

from __future__ import annotations

import math
import os
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.query import exact, promql, promref, promwindows
from lossproof.query.promapi import _ts
from lossproof.query.promql import STALE_NAN
from lossproof.store.base import SeriesArrays

Gen = Callable[[np.random.Generator, int], np.ndarray]


def _bits(x: float | None) -> object:
    """What must be equal: the value's bits (any NaN is the same NaN)."""
    if x is None:
        return None
    return "NaN" if math.isnan(x) else struct.pack("<d", x)


GENERATORS: dict[str, Gen] = {
    "int counter with resets": lambda r, n: _resets(r, np.cumsum(r.integers(0, 10, n)).astype(float)),
    "float counter": lambda r, n: _resets(r, np.cumsum(r.exponential(3.3, n))),
    "gauge decimals": lambda r, n: np.round(r.uniform(-50, 100, n), 2),
    "gauge normal": lambda r, n: r.normal(size=n) * 10.0 ** r.integers(-5, 5),
    "wide exponents": lambda r, n: r.normal(size=n) * 10.0 ** r.integers(-200, 200, n),
    "specials": lambda r, n: r.choice(
        np.array([0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 2.5, 1e308, -1e308, 5e-324]), n
    ),
    "zeros and nan": lambda r, n: r.choice(np.array([0.0, -0.0, math.nan, 3.0]), n),
    "huge": lambda r, n: r.choice(np.array([1e308, -1e308, 1.7e308, 1.0]), n),
}


def _resets(r: np.random.Generator, v: np.ndarray) -> np.ndarray:
    for at in r.integers(0, len(v), 2):
        v[at:] -= v[at] * r.uniform(0.5, 1.0)
    return v


def _series(r: np.random.Generator, gen: Gen, t0: int) -> SeriesArrays:
    n = int(r.choice([1, 2, 3, int(r.integers(4, 120))]))
    gaps = r.choice(np.array([1, 500, 1000, 15_000, 15_000, 15_000, 60_000, 400_000]), n)
    t = t0 + np.cumsum(gaps).astype(np.int64)
    return SeriesArrays("m", {"i": str(int(r.integers(1 << 30)))}, t, gen(r, n).astype(np.float64))


def _reference(
    name: str, found: list[SeriesArrays], at: list[int], rng: int, q: float, closed: bool = False
) -> list[list[float | None]]:
    """The evaluator's loop before it was vectorised: bisect per step, ``_range_fn`` per window
    (``(a - rng, a]``, or ``[a - rng, a]`` when ``closed``)."""
    fn = promref._range_fn("count_over_time" if name == "quantile_over_time" else name, [], prom2=closed)
    if name == "quantile_over_time":

        def fn(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return promref._quantile(q, vs[lo:hi])

    out = []
    for s in found:
        ts, vs = s.t.tolist(), s.v.tolist()
        row: list[float | None] = []
        for a in at:
            hi = bisect_right(ts, a)
            lo = (bisect_left if closed else bisect_right)(ts, a - rng, 0, hi)
            row.append(fn(ts, vs, lo, hi, a, rng) if hi > lo else None)
        out.append(row)
    return out


@pytest.fixture(params=[promql.BLOCK, 7], ids=["one block", "blocks of 7"])
def block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Windows computed at a time: all at once, and a few at a time (series and steps in blocks)."""
    monkeypatch.setattr(promql, "BLOCK", request.param)  # aggregations
    monkeypatch.setattr(promwindows, "BLOCK", request.param)  # range functions
    return int(request.param)


# the range functions without scalar arguments besides quantile_over_time (predict_linear,
# double_exponential_smoothing and absent_over_time: tests/unit/test_promql_reference.py)
REFERENCED = [
    n
    for n in promql.RANGE_FUNCS
    if n not in ("predict_linear", "double_exponential_smoothing", "holt_winters", "absent_over_time")
]


@pytest.mark.parametrize("name", REFERENCED)
@pytest.mark.parametrize("kind", list(GENERATORS))
def test_range_functions_match_the_python_definitions(name: str, kind: str, block: int) -> None:
    r = np.random.default_rng(abs(hash((name, kind))) % (1 << 32))
    for _ in range(int(os.environ.get("LP_PROMQL_TRIALS", "6"))):
        t0 = 1_767_225_600_000 + int(r.integers(-100_000, 100_000))
        found = [_series(r, GENERATORS[kind], t0) for _ in range(int(r.integers(1, 6)))]
        rng = int(r.choice([1, 1000, 15_000, 30_000, 60_000, 300_000, 3_600_000]))
        step = int(r.choice([1, 1000, 15_000, 60_000, 250_000]))
        n = int(r.integers(1, 60))
        start = t0 + int(r.integers(-400_000, 1_000_000))
        at = [start + k * step for k in range(n)]
        q = float(r.choice([0.0, 0.25, 0.5, 0.9, 1.0, -1.0, 2.0, math.nan]))
        closed = bool(r.integers(0, 2))
        at_a = np.array(at, dtype=np.int64)
        values, present = promwindows.range_function(name, found, at_a, rng, q, closed=closed)
        got = [
            [_bits(v if p else None) for v, p in zip(vr, pr, strict=True)]
            for vr, pr in zip(values.tolist(), present.tolist(), strict=True)
        ]
        want = [[_bits(v) for v in row] for row in _reference(name, found, at, rng, q, closed)]
        assert got == want, (name, kind, rng, step, closed, [s.v.tolist() for s in found])


@pytest.mark.parametrize("op", promql.AGGREGATIONS)
@pytest.mark.parametrize("kind", list(GENERATORS))
def test_aggregations_match_agg(op: str, kind: str, block: int) -> None:
    r = np.random.default_rng(abs(hash((op, kind))) % (1 << 32))
    for _ in range(10):
        m, n = int(r.integers(1, 30)), int(r.integers(1, 20))
        values = GENERATORS[kind](r, m * n).reshape(m, n).astype(np.float64)
        present = r.random((m, n)) < 0.7
        groups = int(r.integers(1, m + 1))
        gid = r.integers(0, groups, m)
        gid = np.unique(gid, return_inverse=True)[1].astype(np.int64)  # every group has a member
        groups = int(gid.max()) + 1
        out, out_present = promql.aggregate(op, values, present, gid, groups)
        for g in range(groups):
            for k in range(n):
                xs = [float(values[i, k]) for i in range(m) if gid[i] == g and present[i, k]]
                want = promref._agg(op, xs) if xs else None
                got = float(out[g, k]) if out_present[g, k] else None
                assert _bits(got) == _bits(want), (op, kind, xs)


@pytest.mark.parametrize("op", promql.ARITH + promql.COMPARE)
def test_binary_operators_match_binop(op: str) -> None:
    specials = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 3.7, -8.0, 1e308, -1e308, 5e-324, 1e-300]
    specials += [math.nan, math.inf, -math.inf, 1000.0, -0.5, 1 / 3]
    a = np.array(specials)[:, None] * np.ones((1, len(specials)))
    b = a.T.copy()
    got = promql.binop_arrays(op, a, b, np.ones(a.shape, dtype=bool))
    fn = promql.binop(op)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            assert _bits(float(got[i, j])) == _bits(fn(float(a[i, j]), float(b[i, j]))), (a[i, j], b[i, j])


def test_exact_sums_are_fsum() -> None:
    r = np.random.default_rng(7)
    for trial in range(300):
        n = int(r.integers(1, 200))
        kind = trial % 4
        if kind == 0:
            x = r.normal(size=n) * 10.0 ** r.integers(-30, 30, n)
        elif kind == 1:  # cancellation: the exact sum is tiny
            half = r.normal(size=n // 2 + 1)
            x = np.concatenate([half, -half])[:n] + r.normal(size=n) * 1e-18
        elif kind == 2:  # halfway cases: 2**53 + small integers
            x = r.choice(np.array([2.0**53, 1.0, -1.0, 3.0, 2.0**-60, 1e16]), n)
        else:
            x = np.ldexp(r.integers(-(2**53), 2**53, n).astype(float), r.integers(-1074, -1000, n))
        lo = r.integers(0, n + 1, 50)
        hi = r.integers(0, n + 1, 50)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        got = exact.window_sums(x, lo, hi)
        assert got is not None
        xl = x.tolist()
        for a, b, g in zip(lo.tolist(), hi.tolist(), got.tolist(), strict=True):
            assert _bits(g) == _bits(math.fsum(xl[a:b])), (xl[a:b], g)


def test_exact_refuses_what_fsum_would_not_do_exactly() -> None:
    assert exact.split(np.array([1.0, math.nan])) is None
    assert exact.split(np.array([1.0, math.inf])) is None
    assert exact.split(np.array([1e308, 1e308, -1e308])) is None  # fsum: intermediate overflow
    assert exact.split(np.array([1e300, 5e-324])) is None  # spans too many bits


def test_format_values_is_format_value() -> None:
    r = np.random.default_rng(11)
    vs = np.concatenate(
        [
            r.normal(size=20_000) * 10.0 ** r.integers(-30, 30, 20_000),
            r.integers(-(10**7), 10**7, 5_000).astype(float),
            np.round(r.uniform(-100, 100, 5_000), 3),
            [0.0, -0.0, 1e16, 1e15, 1e21, 1.5e-7, 1e-5, 1e-4, 5e-324, 2.0**53, 2.0**63, 123.0, 0.1],
            [math.nan, math.inf, -math.inf, 1.7976931348623157e308, -1e-300],
        ]
    ).tolist()
    assert promql.format_values(vs) == [promql.format_value(v) for v in vs]
    assert promql.format_values([]) == []
    assert promql.format_values([1.0, 2.5]) == ["1", "2.5"]


def test_matrix_rows_are_the_json_as_before() -> None:
    """What query_range answered before (a list per point, format_value each), point for point."""
    times = [1_000, 2_500, 4_000]
    labels = [{"b": "2"}, {"a": "1"}, {"c": "3"}]
    values = np.array([[1.0, math.nan, 3.0], [0.5, 1e21, -0.0], [7.0, 8.0, 9.0]])
    present = np.array([[True, True, False], [False, True, True], [False, False, False]])
    rows = promql.matrix_rows(promql.Vector(labels, values, present), times, lambda t: t / 1000)
    assert [(lab, msgspec.json.decode(pts)) for lab, pts in rows] == [
        ({"a": "1"}, [[2.5, "1e+21"], [4.0, "-0"]]),
        ({"b": "2"}, [[1.0, "1"], [2.5, "NaN"]]),
    ]
    scalar = promql.matrix_rows(promql.Scalar([1.0, 2.0, math.inf]), times, lambda t: t)
    assert [(lab, msgspec.json.decode(pts)) for lab, pts in scalar] == [
        ({}, [[1_000, "1"], [2_500, "2"], [4_000, "+Inf"]])
    ]
    # byte for byte what msgspec wrote for the tuples before
    odd = [1_796_449_140_500, 1_796_449_141_000, 5]
    vals = np.array([[1.5, -2e-7, 3.25]])
    got = promql.matrix_rows(promql.Vector([{"x": "y"}], vals, np.ones((1, 3), dtype=bool)), odd, _ts)
    before = [(_ts(t), promql.format_value(v)) for t, v in zip(odd, vals[0].tolist(), strict=True)]
    assert msgspec.json.encode(got) == msgspec.json.encode([({"x": "y"}, before)])


def test_matrix_rows_write_every_value_as_format_value() -> None:
    """The extension's text of each point (``_native.points_json``) is :func:`format_value`'s, for
    values across the whole float range, the specials, and present cells chosen at random."""
    r = np.random.default_rng(12)
    n = 3_000
    pools = [
        r.normal(size=n) * 10.0 ** r.integers(-320, 308, n),
        r.integers(-(10**7), 10**7, n).astype(float),
        np.round(r.uniform(-100, 100, n), 3),
        np.ldexp(r.integers(1, 2**52, n).astype(float), r.integers(-1126, -1074, n)),  # subnormals
        r.choice(
            np.array([0.0, -0.0, 1e16, 1e21, 1e22, 1.5e-7, 5e-324, 2.0**63, math.nan, math.inf, -math.inf]), n
        ),
    ]
    values = np.vstack(pools)
    present = r.random(values.shape) < 0.9
    times = [1_700_000_000_000 + 15_000 * k + (500 if k % 7 == 0 else 0) for k in range(n)]
    labels = [{"pool": str(i)} for i in range(len(pools))]
    rows = promql.matrix_rows(promql.Vector(labels, values, present), times, _ts)
    assert [lab for lab, _ in rows] == labels
    for i, (_, pts) in enumerate(rows):
        want = [
            [_ts(t), promql.format_value(v)]
            for t, v, p in zip(times, values[i].tolist(), present[i], strict=True)
            if p
        ]
        assert msgspec.json.decode(pts) == want


def test_native_fsum_windows_is_fsum_or_says_it_is_not() -> None:
    """``exact.fsum_windows`` (CPython's fsum in the extension): fsum's float for every window fsum
    sums; flagged where fsum would not (a NaN or an infinity: ``_sum`` takes those) or raises
    OverflowError."""
    r = np.random.default_rng(11)
    pools = [
        lambda n: r.normal(size=n) * 10.0 ** r.integers(-30, 30, n),
        lambda n: r.choice(np.array([2.0**53, 1.0, -1.0, 3.0, 2.0**-60, 1e16, -0.0, 0.0]), n),
        lambda n: np.ldexp(r.integers(-(2**53), 2**53, n).astype(float), r.integers(-1074, -1000, n)),
        lambda n: r.choice(np.array([1e308, -1e308, 1.7e308, 1.0, math.nan, math.inf, -math.inf, 5e-324]), n),
        lambda n: r.normal(size=n) * 10.0 ** r.integers(-300, 300, n),
        # within the native exact-integer fast path (a narrow span of bits): gauges of a few
        # decimals, counters, and sums that land half-way between two floats
        lambda n: np.round(r.uniform(-100, 100, n), 2),
        lambda n: 1e6 + r.integers(0, 10**6, n) * 0.5,
        lambda n: r.choice(np.array([2.0**53, 1.0, 0.5, -0.5, 2.0**52, -(2.0**53), 1.5, 0.25]), n),
        lambda n: r.choice(np.array([1e308, 1.7e308, -1e308]), n),
    ]
    for trial in range(900):
        n = int(r.integers(0, 120))
        x = pools[trial % len(pools)](n).astype(np.float64)
        lo = r.integers(0, n + 1, (5, 8))
        hi = r.integers(0, n + 1, (5, 8))
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        sums, bad = exact.fsum_windows(x, lo, hi)
        assert sums.shape == bad.shape == lo.shape
        xl = x.tolist()
        for a, b, s, f in zip(
            lo.ravel().tolist(), hi.ravel().tolist(), sums.ravel().tolist(), bad.ravel().tolist(), strict=True
        ):
            try:
                want = math.fsum(xl[a:b]) if all(map(math.isfinite, xl[a:b])) else None
            except OverflowError:
                want = None
            assert (None if f else _bits(s)) == (None if want is None else _bits(want)), xl[a:b]
    with pytest.raises(ValueError):
        exact.fsum_windows(np.zeros(3), np.array([1]), np.array([4]))
    with pytest.raises(ValueError):
        exact.fsum_windows(np.zeros(3), np.array([2]), np.array([1]))


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("each", [0, 10**9])
def test_window_sums_either_way_is_sum(kind: str, each: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``window_sums`` answers ``_sum`` of each window whichever way it takes (each window natively,
    or prefix sums of limbs)."""
    monkeypatch.setattr(promwindows, "FSUM_EACH", each)
    r = np.random.default_rng(abs(hash((kind, each))) % (1 << 32))
    for _ in range(10):
        v = GENERATORS[kind](r, int(r.integers(1, 80))).astype(np.float64)
        lo = r.integers(0, len(v) + 1, (1, 12))  # one series: a row
        hi = np.maximum(lo, r.integers(0, len(v) + 1, (1, 12)))
        ok = (hi > lo) & (r.random(lo.shape) < 0.8)
        got = promwindows.window_sums(v, np.array([0, len(v)]), lo, hi, ok)
        vl = v.tolist()
        for (i, k), g in np.ndenumerate(got):
            if ok[i, k]:
                assert _bits(float(g)) == _bits(promref._sum(vl[lo[i, k] : hi[i, k]])), (kind, each)


@pytest.mark.parametrize("name", ["rate", "increase", "delta"])
@pytest.mark.parametrize("kind", list(GENERATORS))
def test_native_rate_windows_are_the_numpy_ones(name: str, kind: str) -> None:
    """The extension's rate/increase/delta (each series walked once) answer bit for bit what the
    numpy version (``_rate_arrays``, window bounds searched) answers, for evaluation times in order
    and, as an ``@``-less caller never sends them, out of order."""
    r = np.random.default_rng(abs(hash(("native", name, kind))) % (1 << 32))
    for _ in range(8):
        t0 = 1_767_225_600_000
        found = [_series(r, GENERATORS[kind], t0) for _ in range(int(r.integers(0, 6)))]
        rng = int(r.choice([1, 1000, 15_000, 60_000, 300_000, 3_600_000]))
        at = t0 + np.sort(r.integers(-400_000, 3_000_000, int(r.integers(1, 40))))
        if r.random() < 0.3:
            r.shuffle(at)
        closed = bool(r.integers(0, 2))
        got = promwindows.range_function(name, found, at, rng, closed=closed)
        want = promwindows.range_function(
            name, found, at, rng, fn=promwindows.rate_arrays(name, closed), closed=closed
        )
        assert got[1].tolist() == want[1].tolist()
        assert [_bits(x) for x in got[0][got[1]].tolist()] == [_bits(x) for x in want[0][want[1]].tolist()]


@pytest.mark.parametrize("name", ["rate", "increase", "delta"])
@pytest.mark.parametrize("shuffled", [False, True])
def test_native_rate_windows_of_many_series_are_the_numpy_ones(name: str, shuffled: bool) -> None:
    """Enough windows for the extension to compute on two threads (each its own rows): every kind
    of series at once (resets, NaN, the infinities, staleness markers, -0.0, huge values), some of
    their columns strided views; bit for bit the numpy version, with evaluation times in order or not."""
    r = np.random.default_rng(abs(hash(("many", name, shuffled))) % (1 << 32))
    t0 = 1_767_225_600_000
    kinds = list(GENERATORS)
    found = []
    for i in range(401):
        s = _series(r, GENERATORS[kinds[i % len(kinds)]], t0)
        v = s.v.copy()
        v[r.random(len(v)) < 0.05] = STALE_NAN
        if i % 7 == 0:  # strided views of longer columns
            t2, v2 = np.repeat(s.t, 2), np.repeat(v, 2)
            s = SeriesArrays(s.metric, s.labels, t2[::2], v2[::2])
        else:
            s = SeriesArrays(s.metric, s.labels, s.t, v)
        found.append(s)
    at = t0 + np.sort(r.integers(-400_000, 3_000_000, 300))
    if shuffled:
        r.shuffle(at)
    for rng, closed in ((15_000, False), (300_000, False), (300_000, True)):
        got = promwindows.range_function(name, found, at, rng, closed=closed)
        want = promwindows.range_function(
            name, found, at, rng, fn=promwindows.rate_arrays(name, closed), closed=closed
        )
        assert got[0].shape == (401, 300)
        assert got[1].tolist() == want[1].tolist()
        assert [_bits(x) for x in got[0][got[1]].tolist()] == [_bits(x) for x in want[0][want[1]].tolist()]


@pytest.mark.parametrize("mode", [(True, True), (False, True), (False, False)])
def test_native_rate_windows_skip_staleness_markers_as_without_stale(mode: tuple[bool, bool]) -> None:
    """``skip_stale``: each series' staleness markers left out natively answer what
    ``without_stale`` then ``rate_windows`` answer, bit for bit; a series of markers only (which
    without_stale drops) has no window; on one thread and on two."""
    r = np.random.default_rng(abs(hash(("skip_stale", mode))) % (1 << 32))
    t0 = 1_767_225_600_000
    kinds = list(GENERATORS)
    for count in (7, 401):
        found = []
        for i in range(count):
            s = _series(r, GENERATORS[kinds[i % len(kinds)]], t0)
            v = s.v.copy()
            v[r.random(len(v)) < (1.0 if i % 50 == 3 else 0.1)] = STALE_NAN
            found.append(SeriesArrays(s.metric, s.labels, s.t, v))
        at = t0 + np.sort(r.integers(-400_000, 3_000_000, 300))
        got_v, got_p = promwindows.rate_windows(found, at, 300_000, *mode, skip_stale=True)
        kept = promql.without_stale(found)
        want_v, want_p = promwindows.rate_windows(kept, at, 300_000, *mode)
        rows = iter(range(len(kept)))
        for i, s in enumerate(found):
            if not (s.v.view(np.uint64) != promql.STALE_NAN_BITS).any():
                assert not got_p[i].any()
                continue
            j = next(rows)
            assert got_p[i].tolist() == want_p[j].tolist()
            assert [_bits(x) for x in got_v[i][got_p[i]].tolist()] == [
                _bits(x) for x in want_v[j][want_p[j]].tolist()
            ]
        assert next(rows, None) is None


def test_native_rate_windows_refuse_columns_unlike() -> None:
    from lossproof import _native

    at = np.array([5], dtype=np.int64).tobytes()
    t, v = np.arange(3, dtype=np.int64), np.zeros(3)
    for ts, vs in (([t], [v[:2]]), ([t], []), ([t.astype(np.float64)], [v]), ([t], [v.astype(np.float32)])):
        with pytest.raises((ValueError, BufferError, TypeError)):
            _native.rate_windows(ts, vs, at, 10, True, True)
    got, pres = _native.rate_windows([t[::2].copy()], [v[::2].copy()], at, 10, True, True)
    assert len(got) == 8 and len(pres) == 1


@pytest.mark.parametrize("op", ["sum", "avg"])
@pytest.mark.parametrize("kind", list(GENERATORS))
def test_native_group_sums_are_the_numpy_blocks(op: str, kind: str) -> None:
    """``sum`` / ``avg`` by the extension's ``group_sums`` (one pass over the matrix) answer bit for
    bit what the numpy blocks (``_aggregate_block``: reduceat and ``fsum_windows``) answer, on
    matrices of the size a day-long query makes and with specials (NaN, infinities, -0.0, 1e308)."""
    r = np.random.default_rng(abs(hash(("group_sums", op, kind))) % (1 << 32))
    for m, n in ((300, 97), (1, 1), (7, 3)):
        values = GENERATORS[kind](r, m * n).reshape(m, n).astype(np.float64)
        present = r.random((m, n)) < 0.9
        gid = np.unique(r.integers(0, 12, m), return_inverse=True)[1].astype(np.int64)
        groups = int(gid.max()) + 1
        got = promql._sum_by_group(op, values, present, gid, groups)
        want = promql._aggregate_block(op, values, present, gid, groups)
        assert got[1].tolist() == want[1].tolist()
        assert [_bits(x) for x in got[0][got[1]].tolist()] == [_bits(x) for x in want[0][want[1]].tolist()]


@pytest.mark.parametrize("kind", ["float counter", "specials", "wide exponents", "huge"])
def test_native_group_sums_of_a_large_matrix_are_the_numpy_blocks(kind: str) -> None:
    """A matrix large enough for the extension to sum on two threads (each its own steps, a block
    of steps at a time): groups of one series to hundreds, steps not a multiple of the block; bit
    for bit the numpy blocks, and ``sum`` without ``by`` (one group) too."""
    r = np.random.default_rng(abs(hash(("group_sums_large", kind))) % (1 << 32))
    m, n = 700, 301
    values = GENERATORS[kind](r, m * n).reshape(m, n).astype(np.float64)
    present = r.random((m, n)) < 0.9
    gid = np.minimum(r.integers(0, 40, m), r.integers(0, 40, m))  # uneven groups
    gid = np.unique(gid, return_inverse=True)[1].astype(np.int64)
    for g, groups in ((gid, int(gid.max()) + 1), (np.zeros(m, dtype=np.int64), 1)):
        got = promql._sum_by_group("sum", values, present, g, groups)
        want = promql._aggregate_block("sum", values, present, g, groups)
        assert got[1].tolist() == want[1].tolist()
        assert [_bits(x) for x in got[0][got[1]].tolist()] == [_bits(x) for x in want[0][want[1]].tolist()]


def test_native_group_sums_refuse_shapes_unlike_and_groups_out_of_range() -> None:
    from lossproof import _native

    v, p = np.zeros((3, 2)), np.ones((3, 2), dtype=np.uint8)
    gid = np.array([0, 1, 0], dtype=np.int64).tobytes()
    for args in (
        (v, p[:2], gid, 2),
        (v[0], p[0], gid, 2),
        (v, p, gid[:8], 2),
        (v, p, np.array([0, 2, 0], dtype=np.int64).tobytes(), 2),
        (v, p, np.array([0, -1, 0], dtype=np.int64).tobytes(), 2),
        (v, p, gid, (1 << 62) // 2),  # (was a PanicException, capacity overflow; 1 << 40 an abort)
    ):
        with pytest.raises(ValueError):
            _native.group_sums(*args)
    sums, counts, flags = _native.group_sums(v + 1.5, p, gid, 2)
    assert np.frombuffer(sums).tolist() == [3.0, 3.0, 1.5, 1.5]
    assert np.frombuffer(counts, dtype=np.int64).tolist() == [2, 2, 1, 1] and bytes(flags) == bytes(4)


# values whose sums round (ties to even at 2**-53 of 1.0), cancel to zero, reach the i128's reach
# (exponents 2**-40 .. 2**60 apart) or pass it, are subnormal, or are not finite
_SUM_ATOMS = [1.0, -1.0, 2.0**-53, -(2.0**-53), 2.0**-54, 3 * 2.0**-53, 0.1, 1e-30, 2.0**60, -(2.0**60)]
_SUM_ATOMS += [1e300, -1e-300, 5e-324, 2.2250738585072014e-308, 0.0, -0.0, math.nan, math.inf, -math.inf]
_SUM_ATOMS += [1.5 * 2.0**1022, -1.5 * 2.0**1022, 1e307, -1e307]  # running sums past the float range


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 300),
    st.integers(1, 6),
    st.lists(st.integers(0, len(_SUM_ATOMS) - 1), min_size=1, max_size=64),
    st.integers(0, 2**32 - 1),
)
def test_native_group_sums_are_fsum_cell_by_cell(
    m: int, n: int, groups: int, atoms: list[int], seed: int
) -> None:
    """``group_sums`` against ``math.fsum`` of each cell's run (the group's present finite values in
    series order): the same float, bit for bit, where neither flags it; the counts; flag 1 exactly
    where a present value is a NaN or an infinity, flag 2 exactly where fsum overflows. Rows of
    more than 256 steps cross its blocks of steps (the two threads: the large-matrix test)."""
    from lossproof import _native

    r = np.random.default_rng(seed)
    pool = np.array([_SUM_ATOMS[i] for i in atoms])
    with np.errstate(over="ignore"):  # (3 * 1.5 * 2**1022: an infinity, as wanted)
        values = r.choice(pool, (m, n)) * r.choice([1.0, 1.0, 3.0, 2.0**-30], (m, 1))
    present = (r.random((m, n)) < 0.8).astype(np.uint8)
    groups = min(groups, m)
    gid = np.concatenate([np.arange(groups), r.integers(0, groups, m - groups)]).astype(np.int64)
    sums_b, counts_b, flags_b = _native.group_sums(values, present, gid.tobytes(), groups)
    sums = np.frombuffer(sums_b).reshape(groups, n)
    counts = np.frombuffer(counts_b, dtype=np.int64).reshape(groups, n)
    flags = np.frombuffer(bytes(flags_b), dtype=np.uint8).reshape(groups, n)
    for g in range(groups):
        rows = np.flatnonzero(gid == g)
        for k in range(n):
            run = [float(values[i, k]) for i in rows if present[i, k]]
            assert counts[g, k] == len(run)
            assert bool(flags[g, k] & 1) == any(not math.isfinite(x) for x in run)
            try:
                want = math.fsum(x if math.isfinite(x) else 0.0 for x in run)
            except OverflowError:
                assert flags[g, k] & 2, (g, k, run)
                continue
            assert not flags[g, k] & 2, (g, k, run)
            assert _bits(float(sums[g, k])) == _bits(want), (g, k, run)


def test_native_sums_flag_a_running_sum_past_the_float_range() -> None:
    """``math.fsum`` raises where a running sum overflows, even when later values bring the sum back
    into range (and PromQL's sum then answers the plain sum, +Inf here): ``group_sums`` and
    ``fsum_windows`` flag those sums rather than answer the exact one (a reviewer's case: an exact
    i128 sum had answered 6.7e307 for x, x, x, -x, -x with x = 1.5 * 2**1022)."""
    from lossproof import _native

    x = 1.5 * 2.0**1022
    for run in ([x, x, x, -x, -x], [1e307] * 18 + [-1e307] * 17):
        with pytest.raises(OverflowError):
            math.fsum(run)
        values = np.array(run).reshape(-1, 1)
        present = np.ones_like(values, dtype=np.uint8)
        _, _, flags = _native.group_sums(values, present, np.zeros(len(run), dtype=np.int64).tobytes(), 1)
        assert bytes(flags) == b"\x02"
        v = np.array(run).tobytes()
        _, wflags = _native.fsum_windows(
            v, np.array([0], dtype=np.int64).tobytes(), np.array([len(run)]).tobytes()
        )
        assert bytes(wflags) == b"\x01"
        vals = np.array(run).reshape(-1, 1)
        got, present_out = promql._sum_by_group(
            "sum", vals, np.ones_like(vals, dtype=bool), np.zeros(len(run), dtype=np.int64), 1
        )
        assert present_out[0, 0] and got[0, 0] == promref._sum(run) == math.inf
