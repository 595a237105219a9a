"""PromQL's per-window definitions, in plain Python: the reference that the array code
(:mod:`~lossproof.query.promwindows`, ``promql.aggregate``) matches bit for bit, and its fallback
where vectorising does not pay (a window with a NaN or an infinity in a sum, ``quantile_over_time``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import promql_parser as pp


def unparen(e: pp.Expr) -> pp.Expr:
    """``e`` without the parentheses around it."""
    while isinstance(e, pp.ParenExpr):
        e = e.expr
    return e


def _agg(op: str, xs: list[float]) -> float:
    if op == "sum":
        return _sum(xs)
    if op == "avg":
        return _mean(xs)
    if op == "count":
        return float(len(xs))
    if op == "min":
        real = [x for x in xs if not math.isnan(x)]
        return min(real) if real else math.nan
    real = [x for x in xs if not math.isnan(x)]
    return max(real) if real else math.nan


# The per-window definitions: the reference that promwindows.py matches (see the module doc).
RangeFn = Callable[[list[int], list[float], int, int, int, int], "float | None"]


def _range_fn(name: str, args: Sequence[pp.Expr], prom2: bool = False) -> RangeFn:
    """``prom2``: Prometheus 2's extrapolation for rate, increase and delta (see
    :func:`_extrapolated_rate`)."""
    if name in ("rate", "increase"):
        is_rate = name == "rate"

        def rate(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _extrapolated_rate(ts, vs, lo, hi, at, rng, is_rate, prom2=prom2)

        return rate
    if name == "delta":

        def delta(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _extrapolated_rate(ts, vs, lo, hi, at, rng, False, is_counter=False, prom2=prom2)

        return delta
    if name == "irate":
        return _irate
    if name in _MORE_REFERENCES:
        return _MORE_REFERENCES[name]
    if name == "quantile_over_time":
        q_expr = unparen(args[0])
        assert isinstance(q_expr, pp.NumberLiteral)
        q = float(q_expr.val)

        def quantile(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
            return _quantile(q, vs[lo:hi])

        return quantile
    simple: dict[str, Callable[[list[float]], float]] = {
        "avg_over_time": _mean,
        "min_over_time": lambda xs: min((x for x in xs if not math.isnan(x)), default=math.nan),
        "max_over_time": lambda xs: max((x for x in xs if not math.isnan(x)), default=math.nan),
        "sum_over_time": _sum,
        "count_over_time": lambda xs: float(len(xs)),
        "last_over_time": lambda xs: xs[-1],
        "stddev_over_time": lambda xs: math.sqrt(_stdvar(xs)),
        "stdvar_over_time": _stdvar,
        "present_over_time": lambda xs: 1.0,
    }
    f = simple[name]

    def over(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
        return f(vs[lo:hi])

    return over


def _sum(xs: list[float]) -> float:
    """Compensated sum; fsum refuses infinities and NaN, and raises OverflowError when a partial sum
    leaves the float range (two values of 1e308), where plain sum gives the IEEE answer (+Inf, as
    Prometheus answers)."""
    if not all(map(math.isfinite, xs)):
        return sum(xs)
    try:
        return math.fsum(xs)
    except OverflowError:
        return sum(xs)


def _mean(xs: list[float]) -> float:
    """The sum over the count, but finite where every value is: where the sum of finite values
    leaves the float range (two of 1e308), the values scaled down by a power of two first (exact, but
    for bits below the smallest normal, far below the sum's last bit), as Prometheus, which switches
    to an incremental mean there, answers a finite mean (1e308, not +Inf)."""
    total = _sum(xs)
    if math.isfinite(total) or not all(map(math.isfinite, xs)):
        return total / len(xs)
    k = len(xs).bit_length() + 1  # sum(|x| / 2**k) < len(xs) * 2**1024 / 2**k <= 2**1023: no overflow
    return math.ldexp(math.fsum(math.ldexp(x, -k) for x in xs) / len(xs), k)


def _stdvar(xs: list[float]) -> float:
    """The mean squared deviation from :func:`_mean`, but exactly 0 for a window of one finite value
    repeated: the mean of equal values is rounded (0.1 six times sums to 0.6000000000000001), and a
    deviation of an ulp squared is not 0 (``stddev_over_time(x) == 0`` alerts on a flat line) and may
    overflow for large values (1e300). Prometheus' running (Welford) mean stays exactly the value."""
    if math.isfinite(xs[0]) and all(x == xs[0] for x in xs):
        return 0.0
    mean = _mean(xs)
    # d * d, not d ** 2: float ** raises OverflowError where * gives +Inf
    return sum((x - mean) * (x - mean) for x in xs) / len(xs)


def _quantile(q: float, xs: list[float]) -> float:
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    s = [x for x in xs if math.isnan(x)] + sorted(x for x in xs if not math.isnan(x))  # Go: NaN first
    rank = q * (len(s) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(s) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return s[lower] * (1 - weight) + s[upper] * weight


def _irate(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    if hi - lo < 2:
        return None
    last, prev = vs[hi - 1], vs[hi - 2]
    dt = (ts[hi - 1] - ts[hi - 2]) / 1000
    if dt == 0:
        return None
    return (last if last < prev else last - prev) / dt


def _extrapolated_rate(
    ts: list[int],
    vs: list[float],
    lo: int,
    hi: int,
    at: int,
    rng: int,
    is_rate: bool,
    is_counter: bool = True,
    prom2: bool = False,
) -> float | None:
    """Prometheus' extrapolatedRate: for counters (rate and increase) and gauges (delta).
    ``prom2``: Prometheus 2's (the start moved to the counter's zero point before the threshold is
    applied), else Prometheus 3's (the threshold first, then the zero point, which only shortens;
    since its PR 13725)."""
    if hi - lo < 2:
        return None
    first_t, last_t = ts[lo], ts[hi - 1]
    first_v = vs[lo]
    result = vs[hi - 1] - first_v
    prev = first_v
    for i in range(lo + 1, hi):
        v = vs[i]
        if v < prev and is_counter:
            result += prev
        prev = v
    range_start = at - rng
    duration_to_start = (first_t - range_start) / 1000
    duration_to_end = (at - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    if sampled <= 0:
        return None
    average_between = sampled / (hi - lo - 1)
    threshold = average_between * 1.1
    if prom2:
        if is_counter and result > 0 and first_v >= 0:
            duration_to_zero = sampled * (first_v / result)
            if duration_to_zero < duration_to_start:
                duration_to_start = duration_to_zero
        interval = sampled
        interval += duration_to_start if duration_to_start < threshold else average_between / 2
        interval += duration_to_end if duration_to_end < threshold else average_between / 2
        # 2.40+: one factor (native histograms are scaled by it), the range divided into it first
        factor = interval / sampled
        if is_rate:
            factor /= rng / 1000
        return result * factor
    if duration_to_start >= threshold:
        duration_to_start = average_between / 2
    if is_counter and result > 0 and first_v >= 0:
        duration_to_start = min(duration_to_start, sampled * (first_v / result))
    if duration_to_end >= threshold:
        duration_to_end = average_between / 2
    factor = (sampled + duration_to_start + duration_to_end) / sampled
    if is_rate:
        factor /= rng / 1000
    return result * factor


def _idelta(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    return vs[hi - 1] - vs[hi - 2] if hi - lo >= 2 else None


def _changes(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    n = 0
    for i in range(lo + 1, hi):
        cur, prev = vs[i], vs[i - 1]
        if cur != prev and not (math.isnan(cur) and math.isnan(prev)):
            n += 1
    return float(n)


def _resets(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    return float(sum(1 for i in range(lo + 1, hi) if vs[i] < vs[i - 1]))


def _median(xs: list[float]) -> float:
    s = [x for x in xs if math.isnan(x)] + sorted(x for x in xs if not math.isnan(x))
    rank = 0.5 * (len(s) - 1)
    lower = max(0, math.floor(rank))
    upper = min(len(s) - 1, lower + 1)
    weight = rank - math.floor(rank)
    return s[lower] * (1 - weight) + s[upper] * weight


def _mad(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    med = _median(vs[lo:hi])
    return _median([abs(x - med) for x in vs[lo:hi]])


def _kahan(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if math.isinf(t):
        c = 0.0
    elif abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def linear_regression(ts: list[int], vs: list[float], intercept_ms: int) -> tuple[float, float]:
    """Prometheus' linearRegression, line by line: the reference of :func:`promrange.regression`."""
    n = 0.0
    sx = cx = sy = cy = sxy = cxy = sx2 = cx2 = 0.0
    init_y = vs[0]
    const_y = True
    for i, (t, y) in enumerate(zip(ts, vs, strict=True)):
        if const_y and i > 0 and y != init_y:
            const_y = False
        n += 1.0
        x = (t - intercept_ms) / 1e3
        sx, cx = _kahan(x, sx, cx)
        sy, cy = _kahan(y, sy, cy)
        sxy, cxy = _kahan(x * y, sxy, cxy)
        sx2, cx2 = _kahan(x * x, sx2, cx2)
    if const_y:
        return (math.nan, math.nan) if math.isinf(init_y) else (0.0, init_y)
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    with np.errstate(all="ignore"):  # Go's float division: x/0 is ±Inf or NaN, never an error
        f = np.float64
        cov = f(sxy) - f(sx) * f(sy) / f(n)
        var = f(sx2) - f(sx) * f(sx) / f(n)
        slope = cov / var
        intercept = f(sy) / f(n) - slope * f(sx) / f(n)
    return float(slope), float(intercept)


def _deriv(ts: list[int], vs: list[float], lo: int, hi: int, at: int, rng: int) -> float | None:
    if hi - lo < 2:
        return None
    return linear_regression(ts[lo:hi], vs[lo:hi], ts[lo])[0]


_MORE_REFERENCES: dict[str, RangeFn] = {
    "idelta": _idelta,
    "changes": _changes,
    "resets": _resets,
    "first_over_time": lambda ts, vs, lo, hi, at, rng: vs[lo],
    "mad_over_time": _mad,
    "deriv": _deriv,
    "ts_of_first_over_time": lambda ts, vs, lo, hi, at, rng: ts[lo] / 1000,
    "ts_of_last_over_time": lambda ts, vs, lo, hi, at, rng: ts[hi - 1] / 1000,
    "ts_of_max_over_time": lambda ts, vs, lo, hi, at, rng: _ts_of_extreme(ts, vs, lo, hi, True),
    "ts_of_min_over_time": lambda ts, vs, lo, hi, at, rng: _ts_of_extreme(ts, vs, lo, hi, False),
}


def _ts_of_extreme(ts: list[int], vs: list[float], lo: int, hi: int, largest: bool) -> float:
    """Go's compareOverTime returning the time: the last point at the extreme (``>=``/``<=``)."""
    best, best_t = vs[lo], ts[lo]
    for t, v in zip(ts[lo:hi], vs[lo:hi], strict=True):
        if (v >= best if largest else v <= best) or math.isnan(best):
            best, best_t = v, t
    return best_t / 1000
