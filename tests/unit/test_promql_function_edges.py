"""PromQL functions at their edges, as Debian's Prometheus 2.42 answers them (a differential test
found each): the spread of a flat line, means past the float range, ``clamp`` with NaN bounds (Go's
``math.Max``/``math.Min``), the labels of ``absent``, and ``predict_linear`` under ``@``."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from lossproof.query import promql, promref
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T0 = 1_772_323_000_000  # ms
Result = dict[tuple[tuple[str, str], ...], list[float | None]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    """``gg{inst="1"}``: a gauge rising unevenly every 15 s for 20 minutes from T0; ``flat``: 0.1 and
    1e15 + 0.5 every 15 s; ``huge``: 1e308 (twice) and 1.7e308."""
    s = SqliteStore(tmp_path_factory.mktemp("edges") / "store.db")
    pts = []
    for i in range(81):
        t = T0 + i * 15_000
        pts.append(("t", Point("gg", {"inst": "1"}, t, float(i * i % 17 + i))))
        pts.append(("t", Point("flat", {"case": "tenth"}, t, 0.1)))
        pts.append(("t", Point("flat", {"case": "big"}, t, 1e15 + 0.5)))
        pts.append(("t", Point("huge", {"case": "a"}, t, 1e308)))
        pts.append(("t", Point("huge", {"case": "b"}, t, 1e308)))
        pts.append(("t", Point("huge", {"case": "c"}, t, 1.7e308)))
    s.write_batch(WriteBatch(samples=pts, now_ms=T0))
    return s


def run(
    store: SqliteStore, query: str, start_s: float, end_s: float | None = None, step_s: int = 60
) -> Result:
    """The query's series (labels sorted) and their values at each step (None: none)."""
    end = start_s if end_s is None else end_s
    g = promql.Grid(round(start_s * 1000), round(end * 1000), step_s * 1000)
    v = promql.Evaluator(store, "t", g).eval(promql.parse(query))
    assert isinstance(v, promql.Vector)
    return {tuple(sorted(lab.items())): list(vals) for lab, vals in v.series.values()}


E = T0 / 1000 + 1000  # a time with 16 minutes of data before it


@pytest.mark.parametrize("fn", ["stddev_over_time", "stdvar_over_time"])
@pytest.mark.parametrize("case", ["tenth", "big"])
def test_the_spread_of_a_flat_line_is_exactly_zero(store: SqliteStore, fn: str, case: str) -> None:
    # six times 0.1 over six is not 0.1: a mean an ulp off, a spread of 1.4e-17 (0.125 for 1e15 + 0.5)
    got = run(store, f'{fn}(flat{{case="{case}"}}[90s])', E - 600, E, 30)
    assert got == {(("case", case),): [0.0] * 21}
    sub = run(store, f'{fn}((flat{{case="{case}"}} * 0 + 0.1)[6m:1m]) > 0', E)
    assert sub == {}


@pytest.mark.parametrize("fn", ["stddev_over_time", "stdvar_over_time"])
def test_the_spread_of_huge_equal_values_is_zero_not_infinite(store: SqliteStore, fn: str) -> None:
    got = run(store, f"{fn}(huge[5m])", E)
    assert got == {(("case", c),): [0.0] for c in "abc"}
    assert run(store, f"{fn}((vector(1e300))[5m:1m])", E) == {(): [0.0]}


def test_a_window_with_a_nan_or_an_infinity_still_spreads_as_before(store: SqliteStore) -> None:
    got = run(store, "stddev_over_time((vector(1/0))[5m:1m])", E)
    assert math.isnan(got[()][0])  # inf - inf, as Prometheus' running mean gives
    got = run(store, "stdvar_over_time((vector(time()))[5m:1m])", E)
    assert got == {(): [7200.0]}  # 5 steps a minute apart (Prometheus 3's left-open window)


def test_a_mean_of_finite_values_past_the_float_range_is_finite(store: SqliteStore) -> None:
    got = run(store, "avg_over_time(huge[5m])", E - 120, E, 60)
    assert got == {
        (("case", "a"),): [1e308] * 3,
        (("case", "b"),): [1e308] * 3,
        (("case", "c"),): [1.7e308] * 3,
    }
    assert run(store, 'avg(huge{case!="c"})', E - 120, E, 60) == {(): [1e308] * 3}
    assert run(store, "avg(huge)", E) == {
        (): [pytest.approx(float((2 * Fraction(1e308) + Fraction(1.7e308)) / 3), rel=1e-15)]
    }
    # an infinity in it still makes it infinite; the sum is not a mean
    assert run(store, "avg_over_time((vector(1/0))[5m:1m])", E) == {(): [math.inf]}
    assert run(store, "sum(huge)", E) == {(): [math.inf]}


SPECIAL = [-math.inf, -1.0, -0.0, 0.0, 2.5, math.inf, math.nan]


def go_max(a: float, b: float) -> float:
    """Go's math.Max by its documented special cases: Max(x, +Inf) = Max(+Inf, x) = +Inf, Max(x, NaN)
    = Max(NaN, x) = NaN, Max(+0, ±0) = Max(±0, +0) = +0, Max(-0, -0) = -0."""
    if math.inf in (a, b):
        return math.inf
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a == 0 and b == 0:
        return a if not math.copysign(1, a) < 0 else b
    return a if a > b else b


def go_min(a: float, b: float) -> float:
    """Go's math.Min: Min(x, -Inf) = Min(-Inf, x) = -Inf, Min(x, NaN) = Min(NaN, x) = NaN, Min(-0, ±0)
    = Min(±0, -0) = -0."""
    if -math.inf in (a, b):
        return -math.inf
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a == 0 and b == 0:
        return a if math.copysign(1, a) < 0 else b
    return a if a < b else b


def bits(x: float) -> str:
    return "NaN" if math.isnan(x) else repr(x)  # repr tells -0.0 from 0.0


@pytest.mark.parametrize("v", SPECIAL, ids=bits)
def test_clamp_is_go_max_of_min_with_every_special_value(store: SqliteStore, v: float) -> None:
    def one(q: str) -> str:
        got = run(store, q, E)
        assert list(got) == [()]
        x = got[()][0]
        assert x is not None
        return bits(x)

    lit = {math.inf: "(1/0)", -math.inf: "(-1/0)"}
    for lo in SPECIAL:
        for hi in SPECIAL:
            args = [lit.get(x, "(0/0)" if math.isnan(x) else f"({x!r})") for x in (v, lo, hi)]
            vec = f"vector{args[0]}"
            assert one(f"clamp_min({vec}, {args[1]})") == bits(go_max(lo, v))
            assert one(f"clamp_max({vec}, {args[2]})") == bits(go_min(hi, v))
            if not hi < lo:  # (else none: clamp's max below its min)
                assert one(f"clamp({vec}, {args[1]}, {args[2]})") == bits(go_max(lo, go_min(hi, v)))


def test_clamp_with_nan_bounds_as_prometheus_answers(store: SqliteStore) -> None:
    # Debian's Prometheus 2.42
    assert run(store, "clamp_max(vector(-1/0), 0/0)", E) == {(): [-math.inf]}
    assert run(store, "clamp(vector(-1/0), 1, 0/0)", E) == {(): [1.0]}
    assert run(store, "clamp_max(vector(0/0), -1/0)", E) == {(): [-math.inf]}
    assert run(store, "clamp_min(vector(0/0), 1/0)", E) == {(): [math.inf]}


@pytest.mark.parametrize(
    ("query", "labels"),
    [  # Debian's Prometheus 2.42 answers
        ('absent(nonexistent{a=""})', {}),
        ('absent(nonexistent{a="", b="x"})', {"b": "x"}),
        ('absent(nonexistent{a="", a="y"})', {}),
        ('absent(nonexistent{a!="z", a="y"})', {"a": "y"}),
        ('absent(nonexistent{a="x", a!="z", a="y"})', {}),
        ('absent((nonexistent{a="y"}))', {"a": "y"}),
        ('absent_over_time(nonexistent{a="b"}[5m])', {"a": "b"}),
        ('absent_over_time((nonexistent{a="b"}[5m]))', {"a": "b"}),
        ('absent_over_time(nonexistent{a="b"}[5m:1m])', {}),
        ('absent_over_time((nonexistent{a="b"})[5m:1m])', {}),
    ],
)
def test_absent_labels_as_prometheus(store: SqliteStore, query: str, labels: dict[str, str]) -> None:
    assert run(store, query, E) == {tuple(sorted(labels.items())): [1.0]}


def test_predict_linear_under_at_predicts_from_each_step_not_from_the_at_time(store: SqliteStore) -> None:
    # Debian's Prometheus 2.42: the line through 2 * time() predicted 30 s before each step's time
    q = "predict_linear((vector(time()) * 2)[5m:1m] @ 1772323000, -30)"
    assert run(store, q, 1772323440) == {(): [2 * (1772323440 - 30)]}
    assert run(store, q, 1772323400, 1772323520, 60) == {
        (): [2 * (t - 30) for t in (1772323400, 1772323460, 1772323520)]
    }
    q = "predict_linear((vector(time()) * 2)[5m:1m] offset 10m, -30)"
    assert run(store, q, 1772323440) == {(): [2 * (1772323440 - 30)]}


def test_predict_linear_of_a_selector_under_at_is_the_regression_at_each_step(store: SqliteStore) -> None:
    at_s = T0 // 1000 + 600
    steps = [at_s + 440, at_s + 500, at_s + 560]
    got = run(store, f'predict_linear(gg{{inst="1"}}[1m] @ {at_s}, -30)', steps[0], steps[-1], 60)
    # the window's points (left-open: after at - 1m, up to at), by Prometheus' linearRegression
    pts = [(T0 + i * 15_000, float(i * i % 17 + i)) for i in range(81)]
    w = [(t, v) for t, v in pts if at_s * 1000 - 60_000 < t <= at_s * 1000]
    want = []
    for s in steps:
        slope, intercept = promref.linear_regression([t for t, _ in w], [v for _, v in w], s * 1000)
        want.append(slope * -30 + intercept)
    assert got == {(("inst", "1"),): want}
    assert len(set(want)) == 3
