"""Exact sums of float64 values, vectorised: bit for bit what :func:`math.fsum` answers.

PromQL's sums (``sum``, ``avg``, ``sum_over_time``, ``avg_over_time``) are compensated
(:func:`lossproof.query.promref._sum`: ``math.fsum``, the correctly rounded exact sum). ``fsum`` is a
Python loop per sum; here many sums are done at once, exactly, with integers:

Every finite double is an integer multiple of ``2**c0`` for ``c0`` the lowest set bit among the values.
Split into *limbs* of ``L`` bits (int64 arrays, one per ``L`` bits of ``value / 2**c0``), a sum of up
to ``2**31`` values is an exact int64 sum per limb, so prefix sums (for sliding windows) and sums over
an axis are exact; :func:`to_float` then rounds the multi-limb integer once, to nearest even, as
``fsum`` does. fsum gives +0.0 for an exact zero, and so does this.

Callers keep ``fsum``'s exceptions to themselves: :func:`split` answers None (use the Python path)
when a value is not finite, when the values' bits span more than ``MAX_LIMBS * L`` bits, or when the
sum of their magnitudes could reach the float range's end (where ``fsum`` raises OverflowError and
``_sum`` answers the plain sum instead).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lossproof.native_ext import _native

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

L = 32  # bits per limb
MAX_LIMBS = 30  # 960 bits: value / 2**c0 stays well inside the float range while it is split
_SAFE_TOTAL = 2.0**1020  # sum of |values| below this: no partial sum of fsum overflows


def split(x: F64) -> tuple[I64, int] | None:
    """``(limbs, c0)`` with ``x == sum(limbs[j] * 2**(c0 + L*j))`` exactly, limbs shaped
    ``(K, *x.shape)`` with ``|limbs| < 2**L``; None when ``x`` cannot be summed this way (see the
    module doc: then every sum over it must take the Python path)."""
    ax = np.abs(x)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(ax.sum())
    if not total < _SAFE_TOTAL:  # a NaN, an infinity or too large
        return None
    nz = ax != 0
    if not nz.any():
        return np.zeros((1, *x.shape), dtype=np.int64), 0
    m, e = np.frexp(ax[nz])
    mant = np.ldexp(m, 53).astype(np.int64)  # exact: [2**52, 2**53)
    lowbit = (mant & -mant).astype(np.float64)
    tz = np.frexp(lowbit)[1] - 1  # trailing zero bits of the mantissa
    c0 = int((e.astype(np.int64) - 53 + tz).min())
    top = int(e.max())  # every |x| < 2**top
    k = (top - c0) // L + 1
    if k > MAX_LIMBS:
        return None
    y = np.ldexp(ax, -c0)  # exact integers below 2**(top - c0)
    out = np.empty((k, *x.shape), dtype=np.int64)
    for j in range(k - 1, -1, -1):
        q = np.floor(np.ldexp(y, -L * j))  # the bits at and above L*j: exact
        out[j] = q.astype(np.int64)
        y = y - np.ldexp(q, L * j)  # the bits below: exact (a subset of y's bits)
    neg = x < 0
    if neg.any():
        out[:, neg] = -out[:, neg]
    return out, c0


def to_float(s: I64, c0: int) -> F64:
    """The float64 nearest (ties to even) to ``sum(s[j] * 2**(c0 + L*j))``, per column of ``s``
    (shaped ``(K, ...)``, each entry an exact int64 sum of limbs), as :func:`math.fsum` rounds."""
    k = s.shape[0]
    shape = s.shape[1:]
    a = np.zeros((k + 4, int(np.prod(shape, dtype=np.int64))), dtype=np.int64)
    a[2 : k + 2] = s.reshape(k, -1)  # two zero limbs below (the window below reads three), two above
    base = c0 - 2 * L
    _normalise(a)
    neg = a[-1] < 0
    if neg.any():
        a[:, neg] = -a[:, neg]
        _normalise(a)
    nzl = a != 0
    anynz = nzl.any(axis=0)
    rows = a.shape[0]
    h = rows - 1 - np.argmax(nzl[::-1], axis=0)  # the highest non-zero limb
    h = np.where(anynz, h, 2)
    cols = np.arange(a.shape[1])
    l0 = a[h, cols].astype(np.uint64)
    l1 = a[h - 1, cols].astype(np.uint64)
    l2 = a[h - 2, cols].astype(np.uint64)
    below = np.logical_or.accumulate(nzl, axis=0)
    sticky_below = np.where(h >= 3, below[np.maximum(h - 3, 0), cols], False)
    b = np.where(anynz, np.frexp(l0.astype(np.float64))[1], 1).astype(np.int64)  # bit length of l0
    one = np.uint64(1)
    low = b <= 30
    sh_l1 = np.where(low, 30 - b, 0).astype(np.uint64)
    sh_r1 = np.where(low, 0, b - 30).astype(np.uint64)
    sh_r2 = np.where(low, b + 2, 0).astype(np.uint64)
    # The 62 bits from the top of the magnitude, then a sticky bit for everything below them.
    u = (l0 << (62 - b).astype(np.uint64)) | ((l1 << sh_l1) >> sh_r1)
    u = u | np.where(low, l2 >> sh_r2, np.uint64(0))
    lost1 = np.where(low, np.uint64(0), l1 & ((one << sh_r1) - one))
    lost2 = np.where(low, l2 & ((one << sh_r2) - one), l2)
    sticky = (lost1 != 0) | (lost2 != 0) | sticky_below
    u = u | sticky.astype(np.uint64)
    r = u.astype(np.int64).astype(np.float64)  # below 2**62: one rounding, to nearest even
    exp = (base + L * h + b - 62).astype(np.int32)
    out = np.ldexp(r, exp)  # exact: a subnormal result is exactly representable (a sum of doubles)
    out = np.where(anynz, np.where(neg, -out, out), 0.0)
    return out.reshape(shape)


def _normalise(a: I64) -> None:
    """Carry so that every limb but the last is in [0, 2**L) (the value is unchanged)."""
    mask = np.int64((1 << L) - 1)
    for j in range(a.shape[0] - 1):
        carry = a[j] >> L  # floor division by 2**L
        a[j] &= mask
        a[j + 1] += carry


def window_sums(x: F64, lo: I64, hi: I64) -> F64 | None:
    """``fsum(x[lo[i]:hi[i]])`` for every i (windows may overlap; empty ones give 0.0), or None when
    ``x`` cannot be summed exactly this way (see :func:`split`)."""
    got = split(x)
    if got is None:
        return None
    limbs, c0 = got
    prefix = np.zeros((limbs.shape[0], limbs.shape[1] + 1), dtype=np.int64)
    np.cumsum(limbs, axis=1, out=prefix[:, 1:])
    return to_float(prefix[:, hi] - prefix[:, lo], c0)


Mask = npt.NDArray[np.bool_]


def fsum_windows(x: F64, lo: I64, hi: I64) -> tuple[F64, Mask]:
    """``fsum(x[lo[i]:hi[i]])`` for every window (any shape; windows may overlap, empty ones give
    0.0) by the native extension (CPython's fsum, one window after the other), and which windows it
    did not sum: those with a NaN or an infinity, or where fsum raises OverflowError (their sum is
    the caller's to take another way). Costs the windows' total length, where :func:`window_sums`
    costs a few passes over ``x`` per limb: this is the way for windows that do not overlap much."""
    shape = lo.shape
    sums, flags = _native.fsum_windows(
        np.ascontiguousarray(x, dtype=np.float64).tobytes(),
        np.ascontiguousarray(lo, dtype=np.int64).tobytes(),
        np.ascontiguousarray(hi, dtype=np.int64).tobytes(),
    )
    out = np.frombuffer(sums, dtype=np.float64).reshape(shape)
    bad = np.frombuffer(flags, dtype=np.uint8).reshape(shape).astype(bool)
    return out, bad
