"""PromQL's range functions beyond ``rate`` and the ``*_over_time`` sums (which live in
:mod:`lossproof.query.promql` with their per-window reference): ``idelta``, ``deriv``,
``predict_linear``, ``changes``, ``resets``, ``first_over_time``, ``mad_over_time``,
``double_exponential_smoothing`` and the ``ts_of_*_over_time`` ones (Prometheus 3).

Every function takes all windows of all series at once: the points of every series concatenated
(``t``, ``v``; series i's are ``[starts[i], starts[i + 1])``), and each window as indexes ``[lo, hi)``
into them (shaped series x steps); it answers the values and which windows have one. Functions that
walk a window in order (a regression, a smoothing) walk every window's j-th point together: one
numpy operation per point position, not per window.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
RangeArrays = Callable[[I64, F64, I64, I64, I64, I64, int, float], tuple[F64, Mask]]


def idelta(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
    ok = hi - lo >= 2
    i = hi - 1
    j = np.where(ok, hi - 2, i)
    out: F64 = v[i] - v[j]
    return out, ok


def first_over_time(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    out: F64 = v[lo]
    return out, hi > lo


def ts_of_first_over_time(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    """The time (seconds) of the window's first sample."""
    out: F64 = t[lo].astype(np.float64) / 1000
    return out, hi > lo


def ts_of_last_over_time(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    """The time (seconds) of the window's last sample."""
    out: F64 = t[np.maximum(hi - 1, lo)].astype(np.float64) / 1000
    return out, hi > lo


def ts_of_extreme(largest: bool) -> RangeArrays:
    """``ts_of_max_over_time`` (``largest``) / ``ts_of_min_over_time``: the time (seconds) of the
    window's largest (smallest) sample. Go's ``compareOverTime`` with ``>=`` (``<=``): the *last*
    sample equal to the extreme wins, and a NaN so far is replaced by whatever comes next. Walked
    point position by point position over every window at once."""

    def extreme(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        cnt = hi - lo
        best = v[lo].copy()
        best_t = t[lo].copy()
        for j in range(1, int(cnt.max(initial=0))):
            sel = np.nonzero(cnt > j)
            cur = v[lo[sel] + j]
            b = best[sel]
            take = ((cur >= b) if largest else (cur <= b)) | np.isnan(b)
            best[sel] = np.where(take, cur, b)
            best_t[sel] = np.where(take, t[lo[sel] + j], best_t[sel])
        out: F64 = best_t.astype(np.float64) / 1000
        return out, cnt > 0

    return extreme


def _pair_counts(pair: Mask, lo: I64, hi: I64) -> F64:
    """How many positions p with ``lo < p < hi`` have ``pair[p]`` (a property of points p-1 and p),
    for each window: a prefix sum, so a window never counts a pair across two series."""
    csum = np.zeros(len(pair) + 1, dtype=np.int64)
    np.cumsum(pair, out=csum[1:])
    # pairs at positions lo+1 .. hi-1: csum[hi] - csum[lo+1]
    top = np.maximum(hi, lo + 1)
    out: F64 = (csum[top] - csum[np.minimum(lo + 1, len(pair))]).astype(np.float64)
    return out


def changes(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
    """Go: ``current != prev && !(isNaN(current) && isNaN(prev))``."""
    prev = np.r_[math.nan, v[:-1]]
    nan = np.isnan(v)
    changed = (v != prev) & ~(nan & np.r_[True, nan[:-1]])
    return _pair_counts(changed, lo, hi), hi > lo


def resets(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
    prev = np.r_[math.nan, v[:-1]]
    return _pair_counts(v < prev, lo, hi), hi > lo


def _kahan_inc(inc: F64, total: F64, c: F64) -> tuple[F64, F64]:
    """Go's kahanSumInc for every entry."""
    new = total + inc
    c = np.where(
        np.isinf(new),
        0.0,
        np.where(np.abs(total) >= np.abs(inc), c + ((total - new) + inc), c + ((inc - new) + total)),
    )
    return new, c


def regression(t: I64, v: F64, lo: I64, hi: I64, intercept_ms: I64) -> tuple[F64, F64, Mask]:
    """Prometheus' ``linearRegression`` of every window with two points or more: the slope (per
    second) and the value at ``intercept_ms``, with its Kahan sums and its constant-series rule
    (slope 0 and the value itself; NaN for a constant infinity)."""
    cnt = hi - lo
    ok = cnt >= 2
    shape = lo.shape
    sums = {k: np.zeros(shape) for k in ("x", "cx", "y", "cy", "xy", "cxy", "x2", "cx2")}
    init_y = v[lo]
    const_y = ok.copy()
    for j in range(int(cnt.max(initial=0))):
        sel = np.nonzero(cnt > j)
        idx = lo[sel] + j
        x = (t[idx] - intercept_ms[sel]).astype(np.float64) / 1e3
        y = v[idx]
        if j:
            const_y[sel] &= y == init_y[sel]
        for name, inc in (("x", x), ("y", y), ("xy", x * y), ("x2", x * x)):
            s, c = _kahan_inc(inc, sums[name][sel], sums["c" + name][sel])
            sums[name][sel], sums["c" + name][sel] = s, c
    n = cnt.astype(np.float64)
    sx, sy = sums["x"] + sums["cx"], sums["y"] + sums["cy"]
    sxy, sx2 = sums["xy"] + sums["cxy"], sums["x2"] + sums["cx2"]
    cov = sxy - sx * sy / n
    var = sx2 - sx * sx / n
    slope = cov / var
    intercept = sy / n - slope * sx / n
    inf = np.isinf(init_y)
    slope = np.where(const_y, np.where(inf, math.nan, 0.0), slope)
    intercept = np.where(const_y, np.where(inf, math.nan, init_y), intercept)
    return slope, intercept, ok


def deriv(t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float) -> tuple[F64, Mask]:
    slope, _, ok = regression(t, v, lo, hi, t[lo])
    return slope, ok


def predict_linear(duration_s: float, eval_ms: I64) -> RangeArrays:
    """``slope * duration + intercept``, the intercept at each step's evaluation time ``eval_ms``
    (one a window column; Prometheus' ``enh.Ts``): not the window's end, which an offset moves back
    and an ``@`` fixes (predict_linear is one of the functions ``@`` does not make step-invariant)."""

    def predict(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        slope, intercept, ok = regression(t, v, lo, hi, np.broadcast_to(eval_ms, lo.shape))
        out: F64 = slope * duration_s + intercept
        return out, ok

    return predict


def double_exponential_smoothing(sf: float, tf: float) -> RangeArrays:
    """Holt's linear smoothing (Prometheus 2's ``holt_winters``), Go's loop for every window at once."""

    def smooth(
        t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
    ) -> tuple[F64, Mask]:
        cnt = hi - lo
        ok = cnt >= 2
        s0 = np.zeros(lo.shape)
        s1 = v[lo].copy()
        b = v[np.where(ok, lo + 1, lo)] - v[lo]
        for i in range(1, int(cnt.max(initial=0))):
            sel = np.nonzero(cnt > i)
            x = sf * v[lo[sel] + i]
            if i > 1:  # Go's calcTrendValue(i - 1, ...) is b itself for i - 1 == 0
                b[sel] = tf * (s1[sel] - s0[sel]) + (1 - tf) * b[sel]
            y = (1 - sf) * (s1[sel] + b[sel])
            s0[sel], s1[sel] = s1[sel], x + y
        return s1, ok

    return smooth


def mad_over_time(
    t: I64, v: F64, starts: I64, lo: I64, hi: I64, at: I64, rng: int, q: float
) -> tuple[F64, Mask]:
    """The median absolute deviation from the median, per window (a sort each, in numpy)."""
    ok = hi > lo
    out = np.zeros(lo.shape)
    idx = np.nonzero(ok)
    vals = []
    for a, b in zip(lo[idx].tolist(), hi[idx].tolist(), strict=True):
        w = v[a:b]
        med = median(w)
        vals.append(median(np.abs(w - med)))
    out[idx] = vals
    return out, ok


def median(w: F64) -> float:
    """Prometheus' quantile(0.5) of the values: sorted with NaN first (Go's sort.Float64s), then
    interpolated between the two middle ranks."""
    s = np.sort(w)
    nan = np.isnan(s)
    if nan.any():
        s = np.r_[s[nan], s[~nan]]
    rank = 0.5 * (len(s) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(s) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return float(s[lower] * (1 - weight) + s[upper] * weight)
