"""Property tests of the native PromQL kernels against the plain-Python references, on adversarial
inputs: windows bounded exactly on samples, NaN, the infinities, -0.0, subnormals, counter resets
(``rate_windows`` vs ``promref._extrapolated_rate``, windows left-open and closed); values spanning
few or many binary places, cancelling signs, overflow (``fsum_windows`` vs ``math.fsum``)."""

from __future__ import annotations

import bisect
import math
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native
from lossproof.query import exact, promref

_SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 2.0**-1022, 1.7976931348623157e308, -1.7976931348623157e308]
_VALS = st.floats() | st.sampled_from([*_SPECIAL, 1.0, 2.0, 1e308, -1e308])
_FINITE = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([*_SPECIAL, 2.0**1023, 2.0**-52, 2.0**52, 0.1, 3.0])
    | st.builds(math.ldexp, st.integers(-(1 << 53), 1 << 53), st.integers(-1100, 960))
)


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.integers(-50, 50), unique=True, max_size=10).map(sorted),
    st.data(),
    st.lists(st.integers(-70, 70), min_size=1, max_size=8),
    st.integers(1, 60),
    st.sampled_from([(True, True), (False, True), (False, False)]),
    st.integers(-(1 << 40), 1 << 40),
    st.integers(1, 10**6),
    st.booleans(),
)
def test_rate_windows_are_the_reference(
    ts: list[int],
    data: st.DataObject,
    at: list[int],
    rng: int,
    mode: tuple[bool, bool],
    shift: int,
    scale: int,
    closed: bool,
) -> None:
    ts = [t * scale + shift for t in ts]
    at = [a * scale + shift for a in at]
    rng *= scale
    vs = data.draw(st.lists(_VALS, min_size=len(ts), max_size=len(ts)))
    _check_rate_windows(ts, vs, at, rng, mode, closed)


def _check_rate_windows(
    ts: list[int], vs: list[float], at: list[int], rng: int, mode: tuple[bool, bool], closed: bool
) -> None:
    """rate_windows of one series is the reference's window by window, bit for bit."""
    columns = [np.array(ts, dtype=np.int64)], [np.array(vs)], np.array(at, dtype=np.int64).tobytes()
    out, pres = _native.rate_windows(*columns, rng, *mode, closed=closed)
    got = np.frombuffer(out).tolist()
    for k, a in enumerate(at):
        # (a - rng, a], or [a - rng, a]
        lo = (bisect.bisect_left if closed else bisect.bisect_right)(ts, a - rng)
        hi = bisect.bisect_right(ts, a)
        want = promref._extrapolated_rate(ts, vs, lo, hi, a, rng, mode[0], is_counter=mode[1], prom2=closed)
        assert pres[k] == (want is not None), (k, a)
        if want is not None:
            assert _bits(got[k]) == _bits(want) or (math.isnan(got[k]) and math.isnan(want))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.integers(-20, 120), unique=True, max_size=40).map(sorted),
    st.data(),
    st.integers(-10, 10),
    st.integers(1, 12),
    st.integers(1, 6),
    st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from([(True, True), (False, True), (False, False)]),
    st.booleans(),
)
def test_rate_windows_on_a_step_grid_are_the_reference(
    ts: list[int],
    data: st.DataObject,
    first: int,
    steps: int,
    lag: int,
    nudges: list[int],
    mode: tuple[bool, bool],
    closed: bool,
) -> None:
    """Evaluation times a step apart and a range a whole number of steps (Grafana's, and most
    rules'): a window starts on an earlier step's end, whose points rows_windows reuses; points
    lie on those starts, and a few steps are moved off the grid."""
    step = 10
    at = [(first + k) * step for k in range(steps)]
    for i in nudges:  # an irregular step now and then, still ascending
        at = [a + (3 if k >= i else 0) for k, a in enumerate(at)]
    ts = [t * step // 2 for t in ts]
    vs = data.draw(st.lists(_VALS, min_size=len(ts), max_size=len(ts)))
    _check_rate_windows(ts, vs, at, lag * step, mode, closed)


def _check_fsum(xs: list[float]) -> None:
    s, bad = exact.fsum_windows(np.array(xs, dtype=np.float64), np.array([0]), np.array([len(xs)]))
    try:
        want: float | None = math.fsum(xs)
    except OverflowError:
        want = None
    if bad[0]:
        assert want is None, xs
    else:
        assert want is not None and _bits(float(s[0])) == _bits(want), xs


@settings(max_examples=1000, deadline=None)
@given(st.lists(_FINITE, max_size=12))
def test_fsum_windows_is_fsum(xs: list[float]) -> None:
    _check_fsum(xs)


@settings(max_examples=1000, deadline=None)
@given(
    st.integers(-1080, 900),
    st.lists(st.tuples(st.integers(-(1 << 53), 1 << 53), st.integers(0, 70)), max_size=40),
)
def test_fsum_windows_of_a_narrow_span_is_fsum(e0: int, ms: list[tuple[int, int]]) -> None:
    """Values within ~120 binary places: the i128 fast path (or its refusal near the limits)."""
    _check_fsum([math.ldexp(m, e0 + d) for m, d in ms])
