"""Property tests: the vectorised evaluator against a slow, obviously-correct reference written here
from Prometheus' definitions (``promql/functions.go``, ``engine.go``), on random small series stored
in a real SQLite store: one loop per step, per series, per sample; no numpy, nothing shared with
``lossproof.query``.

Covered: instant selectors (lookback, staleness markers), the range functions with extrapolation
(rate, increase, delta) and the ``*_over_time`` family, changes/resets/deriv/idelta, aggregations
(with ``by``/``without``, topk/bottomk/quantile), binary operators between vectors with
``on``/``ignoring`` and ``group_left``, with scalars, and the set operators — over range queries
whose steps, ranges and data are all drawn at random; each with Prometheus 3's left-open windows and
with Prometheus 2's closed ones (``closed``: ``[query] windows = "prometheus2"``)."""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.query import promhash, promql
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_767_225_600_000
LOOKBACK = 300_000
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]

Labels = tuple[tuple[str, str], ...]
Samples = list[tuple[int, float]]
Data = dict[Labels, Samples]
Result = dict[Labels, float]


def is_stale(v: float) -> bool:
    return struct.pack("<d", v) == struct.pack("<d", STALE)


# --- the reference -----------------------------------------------------------------------------------


def inside(ts: int, t: int, length: int, closed: bool) -> bool:
    """Whether a sample at ``ts`` is in the window of ``length`` ending at ``t``: ``(t - length, t]``
    (Prometheus 3), or ``[t - length, t]`` (Prometheus 2, ``closed``)."""
    return (t - length <= ts if closed else t - length < ts) and ts <= t


def select(data: Data, name: str) -> Data:
    return {lab: pts for lab, pts in data.items() if dict(lab)["__name__"] == name}


def instant(data: Data, name: str, t: int, closed: bool = False) -> Result:
    out = {}
    for lab, pts in select(data, name).items():
        found = [(ts, v) for ts, v in pts if inside(ts, t, LOOKBACK, closed)]
        if found and not is_stale(found[-1][1]):
            out[lab] = found[-1][1]
    return out


def window(pts: Samples, t: int, rng: int, closed: bool = False) -> Samples:
    return [(ts, v) for ts, v in pts if inside(ts, t, rng, closed) and not is_stale(v)]


def extrapolated_rate(
    pts: Samples, t: int, rng: int, is_counter: bool, is_rate: bool, prom2: bool = False
) -> float | None:
    """Go's extrapolatedRate, statement by statement: Prometheus 3's (since its PR 13725: the
    threshold first, then the counter's zero point), or 2's (``prom2``: the other way round)."""
    if len(pts) < 2:
        return None
    result = pts[-1][1] - pts[0][1]
    if is_counter:
        last = 0.0
        for _, v in pts:
            if v < last:
                result += last
            last = v
    to_start = (pts[0][0] - (t - rng)) / 1000
    to_end = (t - pts[-1][0]) / 1000
    sampled = (pts[-1][0] - pts[0][0]) / 1000
    avg = sampled / (len(pts) - 1)
    threshold = avg * 1.1
    if prom2:
        if is_counter and result > 0 and pts[0][1] >= 0:
            to_zero = sampled * (pts[0][1] / result)
            to_start = min(to_start, to_zero)
        interval = (
            sampled
            + (to_start if to_start < threshold else avg / 2)
            + (to_end if to_end < threshold else avg / 2)
        )
        factor = interval / sampled  # (2.40+: one factor, the range divided into it first)
        if is_rate:
            factor /= rng / 1000
        return result * factor
    if to_start >= threshold:
        to_start = avg / 2
    if is_counter and result > 0 and pts[0][1] >= 0:
        to_zero = sampled * (pts[0][1] / result)
        if to_zero < to_start:
            to_start = to_zero
    if to_end >= threshold:
        to_end = avg / 2
    factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= rng / 1000
    return result * factor


def quantile(q: float, xs: list[float]) -> float:
    s = [x for x in xs if math.isnan(x)] + sorted(x for x in xs if not math.isnan(x))
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * (len(s) - 1)
    lo = max(0, math.floor(rank))
    hi = min(len(s) - 1, lo + 1)
    w = rank - math.floor(rank)
    return s[lo] * (1 - w) + s[hi] * w


def variance(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)


def slope(pts: Samples) -> float:
    xs = [(ts - pts[0][0]) / 1000 for ts, _ in pts]
    ys = [v for _, v in pts]
    if all(y == ys[0] for y in ys):
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


RANGE_REF: dict[str, Callable[[Samples, int, int], float | None]] = {
    "rate": lambda p, t, r: extrapolated_rate(p, t, r, True, True),
    "increase": lambda p, t, r: extrapolated_rate(p, t, r, True, False),
    "delta": lambda p, t, r: extrapolated_rate(p, t, r, False, False),
    "irate": lambda p, t, r: (
        None
        if len(p) < 2
        else ((p[-1][1] if p[-1][1] < p[-2][1] else p[-1][1] - p[-2][1]) / ((p[-1][0] - p[-2][0]) / 1000))
    ),
    "idelta": lambda p, t, r: None if len(p) < 2 else p[-1][1] - p[-2][1],
    "sum_over_time": lambda p, t, r: math.fsum(v for _, v in p),
    "avg_over_time": lambda p, t, r: math.fsum(v for _, v in p) / len(p),
    "count_over_time": lambda p, t, r: float(len(p)),
    "min_over_time": lambda p, t, r: min((v for _, v in p if not math.isnan(v)), default=math.nan),
    "max_over_time": lambda p, t, r: max((v for _, v in p if not math.isnan(v)), default=math.nan),
    "last_over_time": lambda p, t, r: p[-1][1],
    "first_over_time": lambda p, t, r: p[0][1],
    "stdvar_over_time": lambda p, t, r: variance([v for _, v in p]),
    "stddev_over_time": lambda p, t, r: math.sqrt(variance([v for _, v in p])),
    "present_over_time": lambda p, t, r: 1.0,
    "changes": lambda p, t, r: float(
        sum(
            1
            for a, b in itertools.pairwise(p)
            if a[1] != b[1] and not (math.isnan(a[1]) and math.isnan(b[1]))
        )
    ),
    "resets": lambda p, t, r: float(sum(1 for a, b in itertools.pairwise(p) if b[1] < a[1])),
    "deriv": lambda p, t, r: None if len(p) < 2 else slope(p),
    "quantile_over_time": lambda p, t, r: quantile(0.3, [v for _, v in p]),
    "ts_of_first_over_time": lambda p, t, r: p[0][0] / 1000,
    "ts_of_last_over_time": lambda p, t, r: p[-1][0] / 1000,
    "ts_of_max_over_time": lambda p, t, r: ts_of_extreme(p, lambda cur, best: cur >= best),
    "ts_of_min_over_time": lambda p, t, r: ts_of_extreme(p, lambda cur, best: cur <= best),
}


def ts_of_extreme(p: Samples, better: Callable[[float, float], bool]) -> float:
    """Go's compareOverTime returning the time: a later equal value wins, and anything beats NaN."""
    best, best_t = p[0][1], p[0][0]
    for ts, v in p:
        if better(v, best) or math.isnan(best):
            best, best_t = v, ts
    return best_t / 1000


KEEPS_NAME = ("last_over_time", "first_over_time")


def drop_name(lab: Labels) -> Labels:
    return tuple((k, v) for k, v in lab if k != "__name__")


def range_ref(data: Data, fn: str, name: str, rng: int, t: int, closed: bool = False) -> Result:
    out = {}
    for lab, pts in select(data, name).items():
        w = window(pts, t, rng, closed)
        if not w:
            continue
        if fn in ("rate", "increase", "delta"):  # (their extrapolation differs between the modes)
            got = extrapolated_rate(w, t, rng, fn != "delta", fn == "rate", prom2=closed)
        else:
            got = RANGE_REF[fn](w, t, rng)
        if got is not None:
            out[lab if fn in KEEPS_NAME else drop_name(lab)] = got
    return out


def group_key(lab: Labels, by: list[str] | None, without: list[str] | None) -> Labels:
    if by is not None:
        return tuple((k, v) for k, v in lab if k in by)
    if without is None:
        return ()
    drop = {"__name__", *(without or [])}
    return tuple((k, v) for k, v in lab if k not in drop)


def aggregate_ref(
    op: str, vec: Result, by: list[str] | None, without: list[str] | None, param: float
) -> Result:
    if op == "count_values":
        return count_values_ref(vec, by, without, "v" if param >= 0 else "a")
    groups: dict[Labels, list[tuple[Labels, float]]] = {}
    for lab in sorted(vec):
        groups.setdefault(group_key(lab, by, without), []).append((lab, vec[lab]))
    out: Result = {}
    for g, members in groups.items():
        xs = [v for _, v in members]
        if op == "limit_ratio":
            r = max(-1.0, min(1.0, param))
            for lab, v in members:
                off = ratio_offset(lab)
                if (r >= 0 and off < r) or (r < 0 and off >= 1 + r):
                    out[lab] = v
            continue
        if op in ("topk", "bottomk"):
            sign = -1 if op == "topk" else 1
            ranked = sorted(
                members, key=lambda m: (math.isnan(m[1]), 0.0 if math.isnan(m[1]) else sign * m[1])
            )
            out.update(ranked[: int(param)])
            continue
        out[g] = reduce_group(op, xs, param)
    return out


def count_values_ref(vec: Result, by: list[str] | None, without: list[str] | None, label: str) -> Result:
    """Prometheus' count_values: the value label set on each series first, then the grouping key (by
    the ``by`` labels and the value label, or all but the ``without`` ones and the name)."""
    out: Result = {}
    for lab, x in vec.items():
        text = "NaN" if math.isnan(x) else repr(x).removesuffix(".0")
        lab = tuple(sorted((*((k, v) for k, v in lab if k != label), (label, text))))
        key = group_key(lab, [*(by or []), label], None) if without is None else group_key(lab, None, without)
        out[key] = out.get(key, 0.0) + 1
    return out


def ratio_offset(lab: Labels) -> float:
    """Prometheus' sampleOffset: the label set's hash (xxHash64 of its stringlabels bytes, each name
    and value after its length; tests/unit/test_promhash.py checks the hash against the reference
    digests) over 2^64."""
    data = b"".join(bytes([len(x.encode())]) + x.encode() for kv in sorted(lab) for x in kv)
    return promhash.xxh64(data) / 2.0**64


def reduce_group(op: str, xs: list[float], param: float) -> float:
    return {
        "sum": lambda: math.fsum(xs),
        "avg": lambda: math.fsum(xs) / len(xs),
        "count": lambda: float(len(xs)),
        "min": lambda: min((x for x in xs if not math.isnan(x)), default=math.nan),
        "max": lambda: max((x for x in xs if not math.isnan(x)), default=math.nan),
        "stdvar": lambda: variance(xs),
        "stddev": lambda: math.sqrt(variance(xs)),
        "group": lambda: 1.0,
        "quantile": lambda: quantile(param, xs),
    }[op]()


ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: (
        a / b
        if b != 0
        else (math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b))
    ),
}
CMP: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
}


def sig(lab: Labels, on: list[str] | None, ignoring: list[str]) -> Labels:
    if on is not None:
        return tuple((k, v) for k, v in lab if k in on)
    return tuple((k, v) for k, v in lab if k not in ("__name__", *ignoring))


def binary_ref(
    op: str,
    lhs: Result,
    rhs: Result,
    on: list[str] | None,
    ignoring: list[str],
    group_left: list[str] | None,
    return_bool: bool = False,
) -> Result:
    """One-to-one, or many-to-one with group_left; None marks an error the evaluator must raise.
    Prometheus' order (``VectorBinop``): nothing when either side is empty, before any check; the
    right side's duplicates; one-to-one, the duplicates among the samples a comparison keeps."""
    if not lhs or not rhs:
        return {}
    right: dict[Labels, Labels] = {}
    for lab in rhs:
        s = sig(lab, on, ignoring)
        if s in right:
            raise MatchingError
        right[s] = lab
    out: Result = {}
    seen: set[Labels] = set()
    for lab, lv in lhs.items():
        s = sig(lab, on, ignoring)
        if s not in right:
            continue
        rlab = right[s]
        rv = rhs[rlab]
        if op in CMP and return_bool:
            value = 1.0 if CMP[op](lv, rv) else 0.0
            res = dict(lab)
        elif op in CMP:
            if not CMP[op](lv, rv):
                continue
            value = lv
            res = dict(lab)
        else:
            value = ARITH[op](lv, rv)
            res = dict(drop_name(lab))
        if group_left is None:
            if s in seen:
                raise MatchingError
            seen.add(s)
        if group_left is not None:
            for k in group_left:
                if dict(rlab).get(k):
                    res[k] = dict(rlab)[k]
                else:
                    res.pop(k, None)
        elif on is not None:
            res = {k: v for k, v in res.items() if k in on}
        else:
            res = {k: v for k, v in res.items() if k not in ignoring}
        if return_bool:
            res.pop("__name__", None)
        key = tuple(sorted(res.items()))
        if key in out:
            raise MatchingError
        out[key] = value
    return out


def set_ref(op: str, lhs: Result, rhs: Result, on: list[str] | None) -> Result:
    rs = {sig(lab, on, []) for lab in rhs}
    if op == "and":
        return {lab: v for lab, v in lhs.items() if sig(lab, on, []) in rs}
    if op == "unless":
        return {lab: v for lab, v in lhs.items() if sig(lab, on, []) not in rs}
    ls = {sig(lab, on, []) for lab in lhs}
    out = dict(lhs)
    out.update({lab: v for lab, v in rhs.items() if sig(lab, on, []) not in ls})
    return out


class MatchingError(Exception):
    pass


# --- data, queries and the comparison -------------------------------------------------------------------

LABELSETS = [(("a", a), ("b", b)) for a in ("x", "y") for b in ("1", "2")]


@st.composite
def series_data(draw: st.DrawFn, counter: bool) -> Data:
    data: Data = {}
    for name in ("m", "n"):
        for ls in draw(st.lists(st.sampled_from(LABELSETS), min_size=1, max_size=4, unique=True)):
            # on a 5 s grid, or anywhere to the millisecond (windows that end exactly on a sample, and
            # extrapolation thresholds crossed by a little)
            scale = draw(st.sampled_from([5000, 1]))
            times = sorted(draw(st.sets(st.integers(0, 240 * 5000 // scale), min_size=1, max_size=25)))
            vals: list[float] = []
            level = float(draw(st.integers(0, 5)))
            for _ in times:
                kind = draw(
                    st.sampled_from(
                        ["up"] * 8 + ["reset", "stale", "nan"] if counter else ["any"] * 9 + ["stale", "nan"]
                    )
                )
                if kind == "up":
                    level += draw(st.integers(0, 10))
                    vals.append(level)
                elif kind == "reset":
                    level = float(draw(st.integers(0, 3)))
                    vals.append(level)
                elif kind == "stale":
                    vals.append(STALE)
                elif kind == "nan":
                    vals.append(math.nan)
                else:
                    vals.append(float(draw(st.integers(-20, 20))) / draw(st.sampled_from([1, 2, 4])))
            lab = tuple(sorted((("__name__", name), *ls)))
            data[lab] = [(T0 + s * scale, v) for s, v in zip(times, vals, strict=True)]
    return data


class Stores:
    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(path)
        self.n = 0

    def load(self, data: Data) -> str:
        self.n += 1
        tenant = f"t{self.n}"
        pts = [
            (tenant, Point(dict(lab)["__name__"], dict(drop_name(lab)), t, v))
            for lab, s in data.items()
            for t, v in s
        ]
        self.store.write_batch(WriteBatch(samples=pts, now_ms=T0))
        return tenant


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    return Stores(tmp_path_factory.mktemp("promql-ref") / "store.db")


# grid starts on whole 5 s (windows and subquery steps that start exactly on samples and multiples of
# the step) or anywhere to the millisecond
starts = st.one_of(st.integers(-20, 260).map(lambda k: k * 5000), st.integers(-100_000, 1_300_000))
grids = st.tuples(starts, st.integers(0, 12), st.sampled_from([1, 5, 7, 10, 30])).map(
    lambda g: (T0 + g[0], T0 + g[0] + g[1] * g[2] * 1000, g[2] * 1000)
)


def evaluate(
    stores: Stores, data: Data, query: str, grid: tuple[int, int, int], closed: bool = False
) -> list[Result] | str:
    tenant = stores.load(data)
    g = promql.Grid(*grid)
    try:
        v = promql.Evaluator(stores.store, tenant, g, closed=closed).eval(promql.parse(query))
    except promql.ExecutionError:
        return "error"
    assert isinstance(v, promql.Vector)
    out: list[Result] = [{} for _ in range(g.n)]
    for lab, vals in v.series.values():
        for k, x in enumerate(vals):
            if x is not None:
                out[k][promql.key_of(lab)] = x
    return out


def same(got: list[Result] | str, want: list[Result] | str, rel: float = 1e-9) -> bool:
    if isinstance(got, str) or isinstance(want, str):
        return got == want
    if [set(g) for g in got] != [set(w) for w in want]:
        return False
    for g, w in zip(got, want, strict=True):
        for k, x in w.items():
            y = g[k]
            if math.isnan(x) or math.isnan(y):
                if not (math.isnan(x) and math.isnan(y)):
                    return False
            elif x != y and not math.isclose(x, y, rel_tol=rel, abs_tol=1e-12):
                return False
    return True


def steps(grid: tuple[int, int, int]) -> list[int]:
    return list(range(grid[0], grid[1] + 1, grid[2]))


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def starting_counters(draw: st.DrawFn) -> Data:
    """Counters that start inside the windows: a first value small against the increase, regular
    samples. Where the first sample is past 1.1 intervals from a window's start and the counter's
    zero point between half an interval and 1.1 intervals before it, Prometheus 2 and 3 extrapolate
    differently (the random series of test_range_functions almost never fall there)."""
    every = draw(st.sampled_from([5, 10, 15])) * 1000
    first = draw(st.integers(0, 40))
    steps = draw(st.integers(2, 8))
    level, step = float(draw(st.integers(0, 6))), float(draw(st.integers(1, 6)))
    pts = [(T0 + first * 1000 + k * every, level + k * step) for k in range(steps)]
    return {(("__name__", "m"),): pts}


@SETTINGS
@given(
    data=starting_counters(),
    grid=grids,
    fn=st.sampled_from(["rate", "increase"]),
    rng_s=st.sampled_from([30, 60, 90]),
    closed=st.booleans(),
)
def test_counters_that_start_inside_the_window(
    stores: Stores, data: Data, grid: tuple[int, int, int], fn: str, rng_s: int, closed: bool
) -> None:
    want = [range_ref(data, fn, "m", rng_s * 1000, t, closed) for t in steps(grid)]
    assert same(evaluate(stores, data, f"{fn}(m[{rng_s}s])", grid, closed), want)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=series_data(counter=True),
    grid=grids,
    fn=st.sampled_from(sorted(RANGE_REF)),
    rng_s=st.sampled_from([5, 10, 20, 30, 60, 90, 300]),
    closed=st.booleans(),
)
def test_range_functions(
    stores: Stores, data: Data, grid: tuple[int, int, int], fn: str, rng_s: int, closed: bool
) -> None:
    arg = "0.3, " if fn == "quantile_over_time" else ""
    query = f"{fn}({arg}m[{rng_s}s])"
    want = [range_ref(data, fn, "m", rng_s * 1000, t, closed) for t in steps(grid)]
    got = evaluate(stores, data, query, grid, closed)
    rel = 1e-6 if fn == "deriv" else 1e-9
    assert same(got, want, rel), (query, got, want)


@SETTINGS
@given(data=series_data(counter=False), grid=grids, closed=st.booleans())
def test_instant_selectors(stores: Stores, data: Data, grid: tuple[int, int, int], closed: bool) -> None:
    want = [instant(data, "m", t, closed) for t in steps(grid)]
    assert same(evaluate(stores, data, "m", grid, closed), want)


@SETTINGS
@given(
    data=series_data(counter=False),
    grid=grids,
    op=st.sampled_from(
        [
            "sum",
            "avg",
            "count",
            "min",
            "max",
            "stdvar",
            "stddev",
            "group",
            "topk",
            "bottomk",
            "quantile",
            "count_values",
            "limit_ratio",
        ]
    ),
    mod=st.sampled_from(
        [None, ("by", ["a"]), ("by", []), ("without", ["b"]), ("without", ["a"]), ("by", ["a", "b"])]
    ),
    param=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, -0.3, -0.7]),
    closed=st.booleans(),
)
def test_aggregations(
    stores: Stores,
    data: Data,
    grid: tuple[int, int, int],
    op: str,
    mod: tuple[str, list[str]] | None,
    param: float,
    closed: bool,
) -> None:
    by = mod[1] if mod and mod[0] == "by" else None
    without = mod[1] if mod and mod[0] == "without" else None
    clause = f" {mod[0]} ({', '.join(mod[1])})" if mod else ""
    p = f"{param}, " if op in ("topk", "bottomk", "quantile", "limit_ratio") else ""
    # (a negative param: the value label is one the series have, "a")
    p = ('"v", ' if param >= 0 else '"a", ') if op == "count_values" else p
    query = f"{op}{clause} ({p}m)"
    want = [aggregate_ref(op, instant(data, "m", t, closed), by, without, param) for t in steps(grid)]
    got = evaluate(stores, data, query, grid, closed)
    assert same(got, want), (query, got, want)


@SETTINGS
@given(
    data=series_data(counter=False),
    grid=grids,
    op=st.sampled_from(["+", "-", "*", "/", ">", "<=", "==", "> bool", "== bool"]),
    matching=st.sampled_from(
        [("", None, []), (" on(a)", ["a"], []), (" ignoring(b)", None, ["b"]), (" on(a, b)", ["a", "b"], [])]
    ),
    group_left=st.sampled_from(["", "b", "__name__"]),
    summed=st.booleans(),
    closed=st.booleans(),
)
def test_binary_operators(
    stores: Stores,
    data: Data,
    grid: tuple[int, int, int],
    op: str,
    matching: tuple[str, list[str] | None, list[str]],
    group_left: str,
    summed: bool,
    closed: bool,
) -> None:
    text, on, ignoring = matching
    gl = f" group_left({group_left})" if group_left and text and group_left not in (on or []) else ""
    # the right side without its name (sum) or with it (for group_left(__name__) to copy)
    query = f"m {op}{text}{gl} {'sum by (a, b) (n)' if summed else 'n'}"
    cmp, _, with_bool = op.partition(" ")
    want: list[Result] | str = []
    try:
        rows = []
        for t in steps(grid):
            rhs = instant(data, "n", t, closed)
            if summed:
                rhs = aggregate_ref("sum", rhs, ["a", "b"], None, 0)
            lhs = instant(data, "m", t, closed)
            include = [group_left] if gl else None
            rows.append(binary_ref(cmp, lhs, rhs, on, ignoring, include, bool(with_bool)))
        want = rows
    except MatchingError:
        want = "error"
    got = evaluate(stores, data, query, grid, closed)
    assert same(got, want), (query, got, want)


@SETTINGS
@given(
    data=series_data(counter=False),
    grid=grids,
    op=st.sampled_from(["and", "or", "unless"]),
    on=st.sampled_from([None, ["a"], ["b"], []]),
    scalar_op=st.sampled_from(["+", "*", ">", "/"]),
    closed=st.booleans(),
)
def test_set_operators_and_scalars(
    stores: Stores,
    data: Data,
    grid: tuple[int, int, int],
    op: str,
    on: list[str] | None,
    scalar_op: str,
    closed: bool,
) -> None:
    clause = "" if on is None else f" on({', '.join(on)})"
    query = f"(m {scalar_op} 2) {op}{clause} n"
    want = []
    for t in steps(grid):
        lhs: Result = {}
        for lab, v in instant(data, "m", t, closed).items():
            if scalar_op in CMP:
                if CMP[scalar_op](v, 2.0):
                    lhs[lab] = v
            else:
                lhs[drop_name(lab)] = ARITH[scalar_op](v, 2.0)
        want.append(set_ref(op, lhs, instant(data, "n", t, closed), on))
    got = evaluate(stores, data, query, grid, closed)
    if op == "or" and isinstance(got, str):
        pytest.fail(f"{query}: {got}")
    assert same(got, want), (query, got, want)


@SETTINGS
@given(
    data=series_data(counter=False),
    grid=grids,
    fn=st.sampled_from(["max_over_time", "count_over_time", "sum_over_time", "last_over_time", "changes"]),
    rng_s=st.sampled_from([10, 30, 60, 95]),
    step_s=st.sampled_from([5, 7, 10, 60]),
    offset_s=st.sampled_from([0, 10, -10]),
    closed=st.booleans(),
)
def test_subqueries(
    stores: Stores,
    data: Data,
    grid: tuple[int, int, int],
    fn: str,
    rng_s: int,
    step_s: int,
    offset_s: int,
    closed: bool,
) -> None:
    """``fn(m[range:step] offset o)``: the inner query at every multiple of the step in
    ``(t - o - range, t - o]`` (closed: ``[t - o - range, t - o]``), then ``fn`` over those points."""
    offset = f" offset {offset_s}s" if offset_s else ""  # (the parser refuses "offset 0s")
    query = f"{fn}(m[{rng_s}s:{step_s}s]{offset})"
    want = []
    for t in steps(grid):
        end = t - offset_s * 1000
        step = step_s * 1000
        inner = [u for u in range(end - end % step, end - rng_s * 1000 - 1, -step)][::-1]
        inner = [u for u in inner if inside(u, end, rng_s * 1000, closed)]
        points: dict[Labels, Samples] = {}
        for u in inner:
            for lab, v in instant(data, "m", u, closed).items():
                points.setdefault(lab, []).append((u, v))
        row: Result = {}
        for lab, pts in points.items():
            got = RANGE_REF[fn](pts, end, rng_s * 1000)
            if got is not None:
                row[lab if fn in KEEPS_NAME else drop_name(lab)] = got
        want.append(row)
    got = evaluate(stores, data, query, grid, closed)
    assert same(got, want), (query, got, want)


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus 2's bucketQuantile, statement by statement (buckets: (upper bound, count))."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets, key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]):
        return math.nan
    merged: list[list[float]] = []
    for ub, c in buckets:  # coalesceBuckets
        if merged and merged[-1][0] == ub:
            merged[-1][1] += c
        else:
            merged.append([ub, c])
    top = -math.inf  # ensureMonotonic
    for b in merged:
        if b[1] > top:
            top = b[1]
        elif b[1] < top:
            b[1] = top
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * go_div(rank, count)


def go_div(a: float, b: float) -> float:
    """a / b as Go (IEEE) divides: no ZeroDivisionError."""
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b)
    return a / b


LES = ["-1", "0", "0.1", "0.5", "1", "1.0", "2.5", "10", "+Inf", "+inf", "junk"]


@st.composite
def histograms(draw: st.DrawFn) -> Data:
    data: Data = {}
    for job in ("a", "b"):
        for le in draw(st.lists(st.sampled_from(LES), min_size=1, max_size=8, unique=True)):
            times = sorted(draw(st.sets(st.integers(0, 60), min_size=1, max_size=8)))
            vals = [float(draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 20]))) for _ in times]
            if draw(st.integers(0, 9)) == 0:
                vals[0] = math.nan
            lab = (("__name__", "h_bucket"), ("job", job), ("le", le))
            data[lab] = [(T0 + s * 5000, v) for s, v in zip(times, vals, strict=True)]
    return data


@SETTINGS
@given(
    data=histograms(),
    grid=grids,
    q=st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99, 1.0, -0.5, 1.5, math.nan]),
    closed=st.booleans(),
)
def test_histogram_quantile(
    stores: Stores, data: Data, grid: tuple[int, int, int], q: float, closed: bool
) -> None:
    want = []
    for t in steps(grid):
        groups: dict[Labels, list[tuple[float, float]]] = {}
        for lab, v in instant(data, "h_bucket", t, closed).items():
            try:
                le = float(dict(lab)["le"])
            except ValueError:
                continue  # not a bound: Prometheus leaves the series out
            groups.setdefault((("job", dict(lab)["job"]),), []).append((le, v))
        want.append({g: bucket_quantile(q, b) for g, b in groups.items()})
    got = evaluate(stores, data, f"histogram_quantile({q}, h_bucket)", grid, closed)
    assert same(got, want), (q, got, want)


# --- info() -----------------------------------------------------------------------------------------


@st.composite
def info_data(draw: st.DrawFn) -> Data:
    """Series ``m`` and info series (``target_info``, ``build_info``) with identifying labels
    (instance, job) present or not, data labels, samples on a 5 s grid (stale markers too)."""
    data: Data = {}
    # mostly both identifying labels; sometimes one only (which, in Prometheus, keeps the info series
    # without the other label from being read at all)
    both = [(("instance", i), ("job", "j")) for i in ("1", "2")]
    ids = both * 4 + [(("instance", "1"),), (("job", "j"),)]
    for name, extra in (
        ("m", ("a", ("x", "y"))),
        ("target_info", ("r", ("eu", "us"))),
        ("build_info", ("v", ("1", "2"))),
    ):
        n = draw(st.integers(0 if name == "build_info" else 1, 4))
        for _ in range(n):
            ident = draw(st.sampled_from(ids))
            ls = (*ident, (extra[0], draw(st.sampled_from(extra[1]))))
            if name == "target_info" and draw(st.booleans()):
                ls = (*ls, ("a", "from_info"))  # a label the series may have already
            lab = tuple(sorted((("__name__", name), *ls)))
            times = sorted(draw(st.sets(st.integers(0, 240), min_size=1, max_size=20)))
            vals = [STALE if draw(st.integers(0, 9)) == 0 else 1.0 for _ in times]
            data[lab] = [(T0 + s * 5000, v) for s, v in zip(times, vals, strict=True)]
    return data


IDENT = ("instance", "job")


def info_ref(
    data: Data,
    selector: list[tuple[str, str, Callable[[str], bool]]],
    t: int,
    ids: dict[str, set[str]],
    closed: bool,
) -> Result | str:
    """Prometheus 3's info.go, for one step: the info series read (name matchers, or target_info;
    the identifying labels' values of the base series over the whole query; the data matchers),
    the newest sample of each within the lookback, then per base series the data labels of the info
    series of each name with the same identifying labels."""
    if not instant(data, "m", t, closed):
        return {}  # nothing to enrich: Prometheus looks no further (no duplicate error either)
    names = [m for m in selector if m[0] == "__name__"]
    data_ms = [m for m in selector if m[0] != "__name__"]
    out: Result = {}
    if not names:
        names = [("__name__", "=", lambda v: v == "target_info")]
    info: dict[Labels, tuple[Labels, float]] = {}  # signature -> (labels, sample time)
    if ids:
        for lab, pts in data.items():
            d = dict(lab)
            if not all(f(d.get(k, "")) for k, _, f in names + data_ms):
                continue
            if not all(d.get(k, "") in vals for k, vals in ids.items()):
                continue
            found = [(ts, v) for ts, v in pts if inside(ts, t, LOOKBACK, closed)]
            if not found or is_stale(found[-1][1]):
                continue
            ts = found[-1][0]
            sig = (d["__name__"], tuple((k, d[k]) for k in IDENT if d.get(k)))
            if sig in info:
                if info[sig][1] == ts:
                    return "error"
                if info[sig][1] > ts:
                    continue
            info[sig] = (lab, ts)
    info_names = sorted(
        {dict(lab)["__name__"] for lab in data if any(s[0] == dict(lab)["__name__"] for s in info)}
        | {s[0] for s in info}
    )
    del info_names
    fetched_names = {sig[0] for sig in info}
    for lab, v in instant(data, "m", t, closed).items():
        d = dict(lab)
        added: dict[str, str] = {}
        matched = False
        for name in sorted(fetched_names):
            sig = (name, tuple((k, d[k]) for k in IDENT if d.get(k)))
            if sig not in info:
                continue
            matched = True
            for k, x in info[sig][0]:
                if k == "__name__" or (data_ms and k not in {m[0] for m in data_ms}):
                    continue
                if added.get(k, x) != x:
                    return "error"
                if k not in d:
                    added[k] = x
        if not matched and any(not f("") for _, _, f in data_ms):
            continue
        out[tuple(sorted({**d, **added}.items()))] = v
    return out


SELECTORS: dict[str, list[tuple[str, str, Callable[[str], bool]]]] = {
    "": [],
    '{r=~"e.*"}': [("r", "=~", lambda v: v.startswith("e"))],
    '{r="us"}': [("r", "=", lambda v: v == "us")],
    '{__name__=~".+_info"}': [("__name__", "=~", lambda v: v.endswith("_info") and len(v) > 5)],
    '{__name__="build_info", v!="2"}': [
        ("__name__", "=", lambda v: v == "build_info"),
        ("v", "!=", lambda v: v != "2"),
    ],
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=info_data(), grid=grids, selector=st.sampled_from(sorted(SELECTORS)), closed=st.booleans())
def test_info(stores: Stores, data: Data, grid: tuple[int, int, int], selector: str, closed: bool) -> None:
    query = f"info(m, {selector})" if selector else "info(m)"
    ids: dict[str, set[str]] = {}
    for t in steps(grid):
        for lab in instant(data, "m", t, closed):
            for k, x in lab:
                if k in IDENT:
                    ids.setdefault(k, set()).add(x)
    rows = [info_ref(data, SELECTORS[selector], t, ids, closed) for t in steps(grid)]
    want: list[Result] | str = "error" if "error" in rows else [r for r in rows if not isinstance(r, str)]
    got = evaluate(stores, data, query, grid, closed)
    assert same(got, want), (query, got, want)


def test_prometheus2_rate_divides_its_factor_by_the_range_first(stores: Stores) -> None:
    """Prometheus 2.40+ (Debian's 2.42, the conformance reference) computes one factor, divides it by
    the range and multiplies the result by it; lossproof multiplied, then divided. Equal to 1e-15,
    but a rate of rates saw a one-ulp "reset" in one and not the other (0.0207 against 0.00167)."""
    pts = [(0, 2.83), (13760, 9.39), (24879, 43.28), (42703, 76.23), (51690, 83.58)]
    at = T0 + 51759
    got = evaluate(
        stores, {(("__name__", "m"),): [(T0 + t, v) for t, v in pts]}, "rate(m[1m])", (at, at, 1000), True
    )
    assert not isinstance(got, str) and len(got[0]) == 1
    value = next(iter(got[0].values()))
    # Go's extrapolatedRate, statement by statement, for this window of [at - 1m, at]
    result, sampled = 83.58 - 2.83, 51.69
    avg = sampled / 4
    to_start = min((0 - (51759 - 60000)) / 1000, sampled * (2.83 / result))
    to_end = (51759 - 51690) / 1000
    interval = sampled
    interval += to_start if to_start < avg * 1.1 else avg / 2
    interval += to_end if to_end < avg * 1.1 else avg / 2
    factor = interval / sampled
    factor /= 60
    assert value == result * factor
    assert value != result * (interval / sampled) / 60  # the order before: this case tells them apart
