"""PromQL's functions of instant vectors, over numpy arrays: one row per series, one column per step.

Each follows the Go function of Prometheus' ``promql/functions.go`` operation for operation (Go's
``math`` and numpy both use the platform's IEEE operations; the transcendental ones may differ in the
last bit, far inside the 1e-9 that the conformance test allows). Nothing here knows about labels:
:mod:`lossproof.query.promql` picks the rows and names the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def _sgn(x: F64) -> F64:
    # Go: -1 below zero, 1 above, else the value itself (0, -0 and NaN stay)
    out: F64 = np.where(x < 0, -1.0, np.where(x > 0, 1.0, x))
    return out


def _deg(x: F64) -> F64:
    out: F64 = x * 180 / math.pi  # (x * 180) / pi, in Go's order
    return out


def _rad(x: F64) -> F64:
    out: F64 = x * math.pi / 180
    return out


MATH: dict[str, Callable[[F64], F64]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "ln": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sgn": _sgn,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "deg": _deg,
    "rad": _rad,
}


def apply_math(name: str, x: F64) -> F64:
    with np.errstate(all="ignore"):
        return MATH[name](x)


def round_to(x: F64, to_nearest: F64) -> F64:
    """``round(v, to_nearest)``: Go's ``math.Floor(v*inv+0.5) / inv`` with ``inv = 1 / to_nearest``
    (halves round up, as Prometheus does, not to even)."""
    with np.errstate(all="ignore"):
        inv = 1.0 / to_nearest
        out: F64 = np.floor(x * inv + 0.5) / inv
        return out


def clamp(x: F64, lo: F64, hi: F64) -> F64:
    """Go's ``math.Max(lo, math.Min(hi, v))`` (see :func:`go_max`, :func:`go_min`)."""
    return go_max(lo, go_min(hi, x))


def go_max(a: F64, b: F64) -> F64:
    """Go's ``math.Max``, element-wise: +Inf if either is +Inf (even with a NaN: Go checks the infinity
    first, so ``clamp_min(NaN, +Inf)`` is +Inf), else NaN if either is NaN, else the larger (+0 over
    -0)."""
    with np.errstate(invalid="ignore"):
        larger = np.where((a == 0) & (b == 0), np.where(np.signbit(a), b, a), np.maximum(a, b))
    out: F64 = np.where((a == math.inf) | (b == math.inf), math.inf, larger)
    return out


def go_min(a: F64, b: F64) -> F64:
    """Go's ``math.Min``, element-wise: -Inf if either is -Inf (even with a NaN), else NaN if either is
    NaN, else the smaller (-0 under +0)."""
    with np.errstate(invalid="ignore"):
        smaller = np.where((a == 0) & (b == 0), np.where(np.signbit(a), a, b), np.minimum(a, b))
    out: F64 = np.where((a == -math.inf) | (b == -math.inf), -math.inf, smaller)
    return out


# --- dates: the value is a unix time in seconds, read in UTC ------------------------------------------

DATE_FUNCS = (
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "hour",
    "minute",
    "month",
    "year",
)
# datetime64[s] holds any int64 seconds, but its calendar arithmetic is only sane well inside that
_MAX_DATE_S = 1e14


def date_part(name: str, x: F64) -> F64:
    """One calendar field of each time ``x`` (unix seconds, truncated toward zero as Go's
    ``time.Unix(int64(v), 0)``); NaN for NaN, the infinities and times outside ±1e14 s."""
    ok = np.isfinite(x) & (np.abs(x) < _MAX_DATE_S)
    s = np.where(ok, np.trunc(np.where(ok, x, 0.0)), 0.0).astype(np.int64)
    sec = s.astype("datetime64[s]")
    day = sec.astype("datetime64[D]")
    month = sec.astype("datetime64[M]")
    got: npt.NDArray[np.int64]
    if name == "year":
        got = sec.astype("datetime64[Y]").astype(np.int64) + 1970
    elif name == "month":
        got = month.astype(np.int64) % 12 + 1
    elif name == "day_of_month":
        got = (day - month.astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_year":
        got = (day - sec.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_week":
        got = (day.astype(np.int64) + 4) % 7  # 1970-01-01 was a Thursday; Sunday is 0
    elif name == "days_in_month":
        got = ((month + 1).astype("datetime64[D]") - month.astype("datetime64[D]")).astype(np.int64)
    elif name == "hour":
        got = s // 3600 % 24
    elif name == "minute":
        got = s // 60 % 60
    else:
        raise KeyError(name)
    return np.where(ok, got.astype(np.float64), math.nan)


# --- histogram_quantile over classic buckets ----------------------------------------------------------


def bucket_quantile(q: F64, upper: F64, counts: F64, present: Mask) -> F64:
    """Prometheus' ``bucketQuantile`` for one histogram over every step at once: ``upper`` the
    buckets' upper bounds (``le``, sorted, distinct), ``counts[b, k]`` bucket b's cumulative count at
    step k where ``present[b, k]``; ``q[k]`` the quantile. NaN where there is no answer: no ``+Inf``
    bucket as the highest present one, fewer than two buckets, or no observations.

    As Prometheus: counts are first made monotonic (each at least the one below it: a scrape that
    caught the buckets mid-update must not give a negative bucket), then the quantile is interpolated
    linearly inside the bucket where the rank falls; in the ``+Inf`` bucket the answer is the highest
    finite bound; in a first bucket with a bound <= 0 it is that bound."""
    nb, n = counts.shape
    out = np.full(n, math.nan)
    if nb == 0:
        return out
    nan = present & np.isnan(counts)
    # Go's ensureMonotonic: a running maximum over the present buckets; a NaN count stays NaN in its
    # place and does not take part. An absent bucket gets the running maximum but is never chosen.
    mono = np.maximum.accumulate(np.where(present & ~nan, counts, -math.inf), axis=0)
    mono = np.where(nan, math.nan, mono)
    npres = present.sum(axis=0)
    idx = np.arange(nb)[:, None]
    last = np.where(present, idx, -1).max(axis=0)  # the highest present bucket
    second = np.where(present & (idx < last[None, :]), idx, -1).max(axis=0)
    cols = np.arange(n)
    lastc = np.maximum(last, 0)
    ok = (npres >= 2) & (last >= 0) & np.isposinf(upper[lastc])
    observations = mono[lastc, cols]
    ok &= observations != 0
    with np.errstate(all="ignore"):
        rank = q * observations
        # b: the first present bucket below the highest with count >= rank (Go's sort.Search)
        cand = present & (mono >= rank[None, :]) & (idx < last[None, :])
        b = np.where(cand.any(axis=0), np.argmax(cand, axis=0), last)
        prev = np.where(present & (idx < b[None, :]), idx, -1).max(axis=0)  # present, just below b
        bc, pc = np.maximum(b, 0), np.maximum(prev, 0)
        bucket_end = upper[bc]
        start = np.where(prev >= 0, upper[pc], 0.0)
        below = np.where(prev >= 0, mono[pc, cols], 0.0)
        count = mono[bc, cols] - below
        interp = start + (bucket_end - start) * ((rank - below) / count)
        res = np.where(b == last, upper[np.maximum(second, 0)], interp)
        res = np.where((b != last) & (prev < 0) & (bucket_end <= 0), bucket_end, res)
    res = np.where(ok, res, math.nan)
    res = np.where(q < 0, -math.inf, np.where(q > 1, math.inf, res))
    return np.where(np.isnan(q), math.nan, res)
