"""PromQL's range functions over numpy arrays: every window of every series at once, bit for bit
what the per-window reference (``promref._range_fn``) answers (tests/unit/test_promql_arrays.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from lossproof.native_ext import _native
from lossproof.query import exact, promrange
from lossproof.query.promref import _mean, _quantile, _sum
from lossproof.query.promvalues import F64, I64, Mask
from lossproof.store import chunks
from lossproof.store.base import SeriesArrays


def range_function(
    name: str,
    found: Sequence[SeriesArrays],
    at: I64,
    rng: int,
    q: float = 0.0,
    fn: RangeArrays | None = None,
    closed: bool = False,
    tick: Callable[[], None] | None = None,
) -> tuple[F64, Mask]:
    """``name`` (a range function) over the windows ``(at[k] - rng, at[k]]`` of every series of
    ``found`` (``closed``: ``[at[k] - rng, at[k]]``, see :func:`window_first`): values and
    presence, shaped (series, steps). Exactly (bit for bit) what ``_range_fn`` answers window by
    window. ``tick`` is called before each block of windows (the query's timeout and cancellation).

    The series are concatenated (series i's points are ``t[starts[i]:starts[i + 1]]``) with one
    sentinel point at the end (t 0, v NaN), so that ``lo`` and ``hi - 1`` of any window, empty or
    not, index a point: the functions gather for every window and mask the result."""
    m, n = len(found), len(at)
    native = NATIVE_RATE.get(name) if fn is None else None
    if native is not None:
        return rate_windows(found, at, rng, *native, closed=closed)
    values = np.empty((m, n))
    present = np.zeros((m, n), dtype=bool)
    block = max(1, BLOCK // n)  # series at a time: the temporaries stay in the CPU's cache
    for r0 in range(0, m, block):
        if tick is not None:
            tick()
        r1 = min(m, r0 + block)
        values[r0:r1], present[r0:r1] = _range_block(fn or _RANGE[name], found[r0:r1], at, rng, q, closed)
    return values, present


_End = TypeVar("_End", int, I64)


def window_first(end: _End, length: int, closed: bool) -> _End:
    """The first millisecond of the window of ``length`` ms that ends at ``end``: Prometheus 3's
    windows are left-open, ``(end - length, end]`` (``closed`` false); Prometheus 2's are closed,
    ``[end - length, end]``. Times are whole ms, so either is ``[window_first, end]``: the one place
    the two differ (range selectors, the lookback, subquery steps, store reads)."""
    return end - length + (0 if closed else 1)


BLOCK = 16_384  # windows computed at a time

# rate, increase and delta: (is_rate, is_counter) of the extension's rate_windows
NATIVE_RATE = {"rate": (True, True), "increase": (False, True), "delta": (False, False)}


def rate_windows(
    found: Sequence[SeriesArrays],
    at: I64,
    rng: int,
    is_rate: bool,
    is_counter: bool,
    skip_stale: bool = False,
    closed: bool = False,
) -> tuple[F64, Mask]:
    """``rate`` / ``increase`` / ``delta`` of every window by the native extension
    (``_native.rate_windows``): each series walked once, each window computed with
    ``_extrapolated_rate``'s operations in its order (the numpy :func:`_rate_arrays` is the same
    computation, kept for the tests). ``skip_stale``: of ``found`` without its staleness markers
    (what ``promql.without_stale`` makes of it, a row of no window for a series left empty).
    ``closed``: the windows are ``[at[k] - rng, at[k]]``, extrapolated to the same start."""
    m, n = len(found), len(at)
    # (read in place by the extension, without the GIL: these arrays are this read's own)
    ts = [np.ascontiguousarray(s.t, dtype=np.int64) for s in found]
    vs = [np.ascontiguousarray(s.v, dtype=np.float64) for s in found]
    at_b = np.ascontiguousarray(at, dtype=np.int64).tobytes()
    vals, pres = _native.rate_windows(ts, vs, at_b, rng, is_rate, is_counter, skip_stale, closed)
    return np.frombuffer(vals, dtype=np.float64).reshape(m, n), np.frombuffer(pres, dtype=bool).reshape(m, n)


def _range_block(
    fn: RangeArrays, found: Sequence[SeriesArrays], at: I64, rng: int, q: float, closed: bool
) -> tuple[F64, Mask]:
    m = len(found)
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum([len(s.t) for s in found], out=starts[1:])
    t = np.concatenate([*(s.t for s in found), np.zeros(1, dtype=np.int64)]).astype(np.int64, copy=False)
    v = np.concatenate([*(s.v for s in found), np.full(1, math.nan)]).astype(np.float64, copy=False)
    if len(at) <= FEW_STEPS:
        lo, hi = _bounds_few(t, starts, at, rng, closed)
    else:
        lo, hi = _bounds(found, at, rng, starts[:-1, None], closed)
    with np.errstate(all="ignore"):
        return fn(t, v, starts, lo, hi, at, rng, q)


FEW_STEPS = 4  # up to this many evaluation times, window bounds are searched in every series at once


def _bounds_few(t: I64, starts: I64, at: I64, rng: int, closed: bool) -> tuple[I64, I64]:
    """:func:`_bounds` for a few evaluation times (an instant query): per time and bound, one binary
    search over every series at once (``chunks.search_runs``) instead of a search per series."""
    m, n = len(starts) - 1, len(at)
    lo = np.empty((m, n), dtype=np.int64)
    hi = np.empty((m, n), dtype=np.int64)
    first = window_first(at, rng, closed)
    for k in range(n):
        lo[:, k] = chunks.search_runs(t, starts[:-1], starts[1:], int(first[k]), right=False)
        hi[:, k] = chunks.search_runs(t, starts[:-1], starts[1:], int(at[k]), right=True)
    return lo, hi


def _bounds(found: Sequence[SeriesArrays], at: I64, rng: int, offset: I64, closed: bool) -> tuple[I64, I64]:
    """Each window ``[window_first(at[k], rng, closed), at[k]]`` of each series i as indexes
    ``[lo, hi)`` into its points, plus ``offset[i]`` (lo and hi may be views of one array).
    When the range is a multiple ``r`` of the (regular) step and the windows are left-open,
    ``at[k] - rng`` is ``at[k - r]``: one search over the grid extended ``r`` steps back answers
    both (not for closed windows: ``at[k - r]`` is then their first ms, not the last before them)."""
    m, n = len(found), len(at)
    step = int(at[1] - at[0]) if n > 1 else 0
    r = rng // step if step > 0 and rng % step == 0 else 0
    if not closed and 0 < r <= n and bool(np.all(np.diff(at) == step)):
        ext = int(at[0]) - rng + step * np.arange(n + r, dtype=np.int64)
        both = np.empty((m, n + r), dtype=np.int64)
        for i in range(m):  # per series: its points stay in the cache while searched
            both[i] = np.searchsorted(found[i].t, ext, side="right")
        both += offset
        return both[:, :n], both[:, r:]
    lo = np.empty((m, n), dtype=np.int64)
    hi = np.empty((m, n), dtype=np.int64)
    first = window_first(at, rng, closed)
    for i in range(m):
        hi[i] = np.searchsorted(found[i].t, at, side="right")
        lo[i] = np.searchsorted(found[i].t, first, side="left")
    lo += offset
    hi += offset
    return lo, hi


RangeArrays = Callable[[I64, F64, I64, I64, I64, I64, int, float], tuple[F64, Mask]]


def _rate_arrays(is_rate: bool, is_counter: bool = True, prom2: bool = False) -> RangeArrays:
    def rate(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
        """``_extrapolated_rate`` for every window, the same operations in the same order."""
        cnt = hi - lo
        ok = cnt >= 2
        last = hi - 1
        # Times as floats, exact in any window with points: stored times are at most year 2100
        # (MAX_TIME_MS of the protocols), ranges at most ~292 years, so at and at - rng of such a
        # window are below 2**53 ms too; their differences are then exact, as in Python.
        tf = t.astype(np.float64)
        first_t, last_t = tf[lo], tf[last]
        first_v = v[lo]
        result = v[last]
        result -= first_v
        if is_counter:
            _add_resets(result, v, starts, lo, hi, ok)
        duration_to_start = first_t - (at - rng).astype(np.float64)
        duration_to_start /= 1000
        duration_to_end = at.astype(np.float64) - last_t
        duration_to_end /= 1000
        sampled = last_t - first_t
        sampled /= 1000
        ok &= sampled > 0
        average_between = sampled / np.maximum(cnt - 1, 1)
        duration_to_zero = first_v / result
        duration_to_zero *= sampled
        zero_first = (result > 0) & (first_v >= 0) if is_counter else np.zeros(result.shape, dtype=bool)
        threshold = average_between * 1.1
        half = average_between / 2
        if prom2:
            np.copyto(
                duration_to_start, duration_to_zero, where=zero_first & (duration_to_zero < duration_to_start)
            )
            interval = np.where(duration_to_start < threshold, duration_to_start, half)
            interval += sampled  # (sampled + to start) + to end, as _extrapolated_rate adds them
            interval += np.where(duration_to_end < threshold, duration_to_end, half)
            interval /= sampled  # the factor, divided by the range before it scales the result (2.40+)
            if is_rate:
                interval /= rng / 1000
            result *= interval
            return result, ok
        duration_to_start = np.where(duration_to_start < threshold, duration_to_start, half)
        np.copyto(
            duration_to_start, duration_to_zero, where=zero_first & (duration_to_zero < duration_to_start)
        )
        factor = sampled + duration_to_start
        factor += np.where(duration_to_end < threshold, duration_to_end, half)
        factor /= sampled
        if is_rate:
            factor /= rng / 1000
        result *= factor
        return result, ok

    return rate


def rate_arrays(name: str, closed: bool) -> RangeArrays:
    """The numpy ``rate`` / ``increase`` / ``delta`` of a window mode (``closed``: Prometheus 2's
    windows and extrapolation): what the extension computes (``NATIVE_RATE``), for its tests."""
    is_rate, is_counter = NATIVE_RATE[name]
    return _rate_arrays(is_rate, is_counter, prom2=closed)


def _add_resets(result: F64, v: F64, starts: I64, lo: I64, hi: I64, ok: Mask) -> None:
    """Counter resets: to each window's ``result`` add, in order, the value before each drop
    (``v[i] < v[i - 1]``) inside the window, as ``_extrapolated_rate`` does."""
    points = v[: starts[-1]]
    drop = np.flatnonzero(points[1:] < points[:-1]) + 1
    drop = drop[~np.isin(drop, starts)]  # not across two series
    if not len(drop):
        return
    rows = np.unique(np.searchsorted(starts, drop, side="right") - 1)  # series with a drop
    lo_r, hi_r = lo[rows], hi[rows]
    a = np.searchsorted(drop, lo_r + 1, side="left")
    nd = np.where(ok[rows], np.searchsorted(drop, hi_r, side="left") - a, 0)
    before = v[drop - 1]
    sub = result[rows]
    for j in range(int(nd.max(initial=0))):
        sel = nd > j
        sub[sel] += before[a[sel] + j]
    result[rows] = sub


def _irate_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    ok = hi - lo >= 2
    i = hi - 1
    j = np.where(ok, hi - 2, i)
    last, prev = v[i], v[j]
    dt = (t[i] - t[j]) / 1000
    ok &= dt != 0
    return np.where(last < prev, last, last - prev) / dt, ok


def _count_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    cnt = hi - lo
    return cnt.astype(np.float64), cnt > 0


def _present_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    ok = hi > lo
    return np.ones(ok.shape), ok


def _last_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    return v[hi - 1], hi > lo


def _extreme_arrays(is_min: bool) -> RangeArrays:
    def extreme(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        ok = hi > lo
        return window_extremes(v, lo, hi, ok, is_min), ok

    return extreme


def window_extremes(v: F64, lo: I64, hi: I64, ok: Mask, is_min: bool) -> F64:
    """``min(x for x in v[lo:hi] if not isnan(x))`` (max), NaN when all are NaN, for the non-empty
    windows ``ok``: a sparse table (``level[k][i]`` the extreme of ``v[i : i + 2**k]``), two look-ups
    a window. Like Python's min, the first of equal values wins (which matters for -0.0 and 0.0)."""
    f = np.fmin if is_min else np.fmax
    out = np.full(lo.shape, math.nan)
    if not ok.any():
        return out
    cnt = np.where(ok, hi - lo, 1)
    level = np.frexp(cnt.astype(np.float64))[1] - 1  # floor(log2(cnt))
    table = v
    for k in range(int(level.max()) + 1):
        if k:
            w = 1 << (k - 1)
            table = f(table[:-w], table[w:])
        sel = ok & (level == k)
        if sel.any():
            out[sel] = f(table[lo[sel]], table[hi[sel] - (1 << k)])
    zero = v == 0
    if zero.any() and np.signbit(v[zero]).any() and not np.signbit(v[zero]).all():
        # both signs of zero: the extreme is the window's first zero
        zeros = np.flatnonzero(zero)
        fix = ok & (out == 0)
        out[fix] = v[zeros[np.searchsorted(zeros, lo[fix])]]
    return out


def _sum_arrays(is_avg: bool) -> RangeArrays:
    def total(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
        ok = hi > lo
        if is_avg:
            return window_means(v, starts, lo, hi, ok), ok
        return window_sums(v, starts, lo, hi, ok), ok

    return total


def window_means(v: F64, starts: I64, lo: I64, hi: I64, ok: Mask) -> F64:
    """``_mean(v[lo:hi])`` for the windows ``ok``: :func:`window_sums` over the count, and the few
    windows whose mean that makes infinite (an infinity in them, or a sum of finite values past the
    float range) again by ``_mean``, one by one, which keeps the latter finite."""
    means = window_sums(v, starts, lo, hi, ok) / np.where(ok, hi - lo, 1)
    redo = ok & ~np.isfinite(means)
    if redo.any():
        rows_i, cols_k = np.nonzero(redo)
        lo_l, hi_l = lo[rows_i, cols_k].tolist(), hi[rows_i, cols_k].tolist()
        means[rows_i, cols_k] = [_mean(v[a:b].tolist()) for a, b in zip(lo_l, hi_l, strict=True)]
    return means


FSUM_EACH = 8  # windows summing up to this many points a point are summed one by one (exact.fsum_windows)


def window_sums(v: F64, starts: I64, lo: I64, hi: I64, ok: Mask) -> F64:
    """``_sum(v[lo:hi])`` for the windows ``ok`` (rows: series), exactly. Windows that overlap
    little (an instant query, a range no longer than a few steps) are each summed natively
    (:func:`exact.fsum_windows`); otherwise by prefix sums of limbs: :mod:`exact` where it
    applies, ``_sum`` on the window otherwise (a window with a NaN or an infinity, or values whose
    exact sum does not fit; see :func:`exact.split`). Series are taken in blocks of about a million
    points, so that the limbs of one block are in memory at a time."""
    out = np.zeros(lo.shape)
    if int((hi - lo)[ok].sum()) <= FSUM_EACH * len(v):  # windows that overlap little: each summed
        sums, unsummed = exact.fsum_windows(v, np.where(ok, lo, 0), np.where(ok, hi, 0))
        out[ok] = sums[ok]
        _sum_one_by_one(out, v, lo, hi, ok & unsummed)
        return out
    finite = np.isfinite(v)
    bad = np.zeros(len(v) + 1, dtype=np.int64)
    np.cumsum(~finite, out=bad[1:])
    slow = ok & (bad[hi] - bad[lo] > 0)
    fast = ok & ~slow
    clean = np.where(finite, v, 0.0)
    m = len(starts) - 1
    i = 0
    while i < m:
        j = int(np.searchsorted(starts, starts[i] + 1_000_000, side="right")) - 1
        j = min(max(j, i + 1), m)
        s0, s1 = int(starts[i]), int(starts[j])
        rows = fast[i:j]
        if rows.any():
            got = exact.window_sums(clean[s0:s1], lo[i:j][rows] - s0, hi[i:j][rows] - s0)
            if got is None:
                slow[i:j] |= rows
            else:
                out[i:j][rows] = got
        i = j
    _sum_one_by_one(out, v, lo, hi, slow)
    return out


def _sum_one_by_one(out: F64, v: F64, lo: I64, hi: I64, slow: Mask) -> None:
    """``out``'s windows marked ``slow`` summed window by window (those the fast paths refused)."""
    if slow.any():
        vl = v.tolist()
        rows_i, cols_k = np.nonzero(slow)
        lo_l, hi_l = lo[rows_i, cols_k].tolist(), hi[rows_i, cols_k].tolist()
        out[rows_i, cols_k] = [_sum(vl[a:b]) for a, b in zip(lo_l, hi_l, strict=True)]


def _stdvar_arrays(is_dev: bool) -> RangeArrays:
    def spread(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        """``_stdvar``: the mean as ``avg_over_time``, then the squared deviations summed in order,
        one sample position at a time over every window; exactly 0 for a window of one finite value
        repeated (its rounded mean would leave a deviation of an ulp)."""
        ok = hi > lo
        cnt = np.where(ok, hi - lo, 0)
        mean = window_means(v, starts, lo, hi, ok)
        acc = np.zeros(lo.shape)
        for j in range(int(cnt.max(initial=0))):
            sel = cnt > j
            d = v[lo[sel] + j] - mean[sel]
            acc[sel] += d * d
        var = acc / np.maximum(cnt, 1)
        # a point unlike the one before it (NaN is unlike anything) anywhere inside the window
        # (pairs within it only: never across two series)
        flat = (promrange._pair_counts(np.r_[True, v[1:] != v[:-1]], lo, hi) == 0) & np.isfinite(v[lo])
        var[flat] = 0.0
        return (np.sqrt(var) if is_dev else var), ok

    return spread


def _quantile_arrays(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    """Per window in Python (a sort each): ``_quantile``."""
    ok = hi > lo
    out = np.zeros(lo.shape)
    if ok.any():
        vl = v.tolist()
        idx = np.nonzero(ok)
        pairs = zip(lo[idx].tolist(), hi[idx].tolist(), strict=True)
        out[idx] = [_quantile(q, vl[a:b]) for a, b in pairs]
    return out, ok


_RANGE: dict[str, RangeArrays] = {
    "rate": _rate_arrays(True),
    "increase": _rate_arrays(False),
    "irate": _irate_arrays,
    "avg_over_time": _sum_arrays(True),
    "sum_over_time": _sum_arrays(False),
    "min_over_time": _extreme_arrays(True),
    "max_over_time": _extreme_arrays(False),
    "count_over_time": _count_arrays,
    "last_over_time": _last_arrays,
    "stddev_over_time": _stdvar_arrays(True),
    "stdvar_over_time": _stdvar_arrays(False),
    "quantile_over_time": _quantile_arrays,
    "present_over_time": _present_arrays,
    "delta": _rate_arrays(False, is_counter=False),
    "idelta": promrange.idelta,
    "deriv": promrange.deriv,
    "changes": promrange.changes,
    "resets": promrange.resets,
    "first_over_time": promrange.first_over_time,
    "mad_over_time": promrange.mad_over_time,
    "ts_of_first_over_time": promrange.ts_of_first_over_time,
    "ts_of_last_over_time": promrange.ts_of_last_over_time,
    "ts_of_max_over_time": promrange.ts_of_extreme(True),
    "ts_of_min_over_time": promrange.ts_of_extreme(False),
}
