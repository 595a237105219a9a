"""The PromQL language beyond selectors, rate and sums, over a real SQLite store, against values worked
out by hand: the other aggregations, histogram_quantile, label functions, absent, the math, date and
range functions, set operators, group_left/right, subqueries, @ and negative offsets, sort order,
errors in Prometheus' words, and the query limits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lossproof.query import params, promql
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday
S = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(Path(tmp_path_factory.mktemp("promql-lang")) / "store.db")
    pts: list[tuple[str, Point]] = []

    def add(metric: str, labels: dict[str, str], samples: list[tuple[int, float]]) -> None:
        pts.extend(("t", Point(metric, labels, T + sec * S, v)) for sec, v in samples)

    add("http.requests", {"host": "a"}, [(i * 10, 10.0 * i) for i in range(7)])  # +1/s
    add("http.requests", {"host": "b"}, [(0, 0.0), (10, 10.0), (20, 20.0), (30, 5.0), (40, 15.0)])
    add("cpu", {"host": "a", "dc": "eu"}, [(0, 1.0), (10, 3.0), (20, 5.0), (30, 7.0)])
    add("cpu", {"host": "b", "dc": "eu"}, [(0, 2.0), (10, 2.0), (20, 8.0), (30, 4.0)])
    add("cpu", {"host": "c", "dc": "us"}, [(30, 10.0)])
    for le, c in [("0.1", 1.0), ("0.5", 5.0), ("1", 8.0), ("+Inf", 10.0)]:
        add("lat_bucket", {"le": le, "job": "x"}, [(30, c)])
    # buckets that went down mid-scrape (0.5 < 0.1): made monotonic before interpolating
    for le, c in [("0.1", 4.0), ("0.5", 2.0), ("1", 6.0), ("+Inf", 8.0)]:
        add("lat_bucket", {"le": le, "job": "bad"}, [(30, c)])
    add("lat_bucket", {"le": "1", "job": "noinf"}, [(30, 3.0)])  # no +Inf bucket: NaN
    add("info", {"host": "a", "version": "1"}, [(30, 1.0)])
    add("info", {"host": "b", "version": "2"}, [(30, 1.0)])
    add("dup", {"host": "a", "i": "1"}, [(0, 1.0)])  # two series with one host (for the errors)
    add("dup", {"host": "a", "i": "2"}, [(0, 2.0)])
    add("nanm", {}, [(30, math.nan)])
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    return s


def ev(store: SqliteStore, q: str, start_s: int, end_s: int | None = None, step_s: int = 10) -> promql.Value:
    end_s = start_s if end_s is None else end_s
    g = promql.Grid(T + start_s * S, T + end_s * S, step_s * S)
    return promql.Evaluator(store, "t", g).eval(promql.parse(q))


def at(store: SqliteStore, q: str, s: int = 30) -> dict[str, float]:
    v = ev(store, q, s)
    if isinstance(v, promql.Scalar):
        return {"scalar": v.values[0]}
    return {promql.fmt_labels(lab): vals[0] for lab, vals in v.series.values() if vals[0] is not None}


def grid(
    store: SqliteStore, q: str, start_s: int, end_s: int, step_s: int = 10
) -> dict[str, list[float | None]]:
    v = ev(store, q, start_s, end_s, step_s)
    assert isinstance(v, promql.Vector)
    return {promql.fmt_labels(lab): vals for lab, vals in v.series.values()}


CPU_A = '{__name__="cpu", dc="eu", host="a"}'
CPU_B = '{__name__="cpu", dc="eu", host="b"}'
CPU_C = '{__name__="cpu", dc="us", host="c"}'


def test_aggregations(store: SqliteStore) -> None:
    # at 30 s: a=7, b=4 (eu), c=10 (us)
    assert at(store, "topk(2, cpu)") == {CPU_A: 7.0, CPU_C: 10.0}
    assert at(store, "bottomk(1, cpu)") == {CPU_B: 4.0}
    assert at(store, "topk by (dc) (1, cpu)") == {CPU_A: 7.0, CPU_C: 10.0}
    assert at(store, "topk(0, cpu)") == {}
    assert at(store, "quantile(0.5, cpu)") == {"{}": 7.0}
    assert at(store, "quantile(0.25, cpu)") == {"{}": 5.5}  # rank 0.5 between 4 and 7
    assert at(store, "quantile(2, cpu)") == {"{}": math.inf}
    mean = 7.0
    assert at(store, "stdvar(cpu)") == pytest.approx({"{}": ((7 - mean) ** 2 + 9 + 9) / 3})
    assert at(store, "stddev by (dc) (cpu)") == {'{dc="eu"}': 1.5, '{dc="us"}': 0.0}
    assert at(store, 'count_values("v", cpu)') == {'{v="4"}': 1.0, '{v="7"}': 1.0, '{v="10"}': 1.0}
    assert at(store, 'count_values by (dc) ("v", cpu > 1)') == {
        '{dc="eu", v="4"}': 1.0,
        '{dc="eu", v="7"}': 1.0,
        '{dc="us", v="10"}': 1.0,
    }
    assert at(store, "group by (dc) (cpu)") == {'{dc="eu"}': 1.0, '{dc="us"}': 1.0}
    assert len(at(store, "limitk(2, cpu)")) == 2
    # topk over a range: the top series changes with the step (b leads at 20 s, a at 30 s)
    assert grid(store, "topk(1, cpu{dc='eu'})", 0, 30) == {
        CPU_A: [None, 3.0, None, 7.0],
        CPU_B: [2.0, None, 8.0, None],
    }


def test_topk_prefers_numbers_to_nan(store: SqliteStore) -> None:
    assert at(store, 'topk(1, cpu{host="a"} or nanm)') == {CPU_A: 7.0}
    assert at(store, 'bottomk(1, cpu{host="a"} or nanm)') == {CPU_A: 7.0}


def test_histogram_quantile(store: SqliteStore) -> None:
    got = at(store, "histogram_quantile(0.5, lat_bucket)")
    # rank 5 of 10: the 0.5 bucket (5 >= 5), from 0.1 (count 1): 0.1 + 0.4 * (4 / 4)
    assert got['{job="x"}'] == pytest.approx(0.5)
    # made monotonic: 4, 4, 6, 8; rank 0.5 * 8 = 4: the first bucket (4 >= 4): 0 + 0.1 * 4/4
    assert got['{job="bad"}'] == pytest.approx(0.1)
    assert math.isnan(got['{job="noinf"}'])
    # rank 9.5 falls in +Inf: the highest finite bound
    assert at(store, 'histogram_quantile(0.95, lat_bucket{job="x"})') == {'{job="x"}': 1.0}
    assert at(store, 'histogram_quantile(0.1, lat_bucket{job="x"})') == {'{job="x"}': pytest.approx(0.1)}
    assert at(store, 'histogram_quantile(-1, lat_bucket{job="x"})') == {'{job="x"}': -math.inf}
    # q 0.3: rank 3 in (0.1, 0.5]: 0.1 + 0.4 * (3 - 1) / (5 - 1)
    assert at(store, 'histogram_quantile(0.3, lat_bucket{job="x"})') == {'{job="x"}': pytest.approx(0.3)}
    # the usual shape: over rates, summed by le
    assert at(store, 'histogram_quantile(0.5, sum by (le) (lat_bucket{job="x"}))') == {
        "{}": pytest.approx(0.5)
    }


def test_label_functions(store: SqliteStore) -> None:
    assert at(store, 'label_replace(cpu{host="a"}, "dst", "x-$1-${2}", "dc", "(e)(.)")') == {
        '{__name__="cpu", dc="eu", dst="x-e-u", host="a"}': 7.0
    }
    # not matching (anchored): unchanged; an empty result deletes the label
    assert at(store, 'label_replace(cpu{host="a"}, "dst", "$1", "dc", "u")') == {CPU_A: 7.0}
    assert at(store, 'label_replace(cpu{host="a"}, "dc", "", "dc", ".*")') == {
        '{__name__="cpu", host="a"}': 7.0
    }
    assert at(store, 'label_join(cpu{host="a"}, "j", "/", "host", "dc", "none")') == {
        '{__name__="cpu", dc="eu", host="a", j="a/eu/"}': 7.0
    }
    with pytest.raises(promql.PromQLError, match="invalid regular expression in label_replace"):
        at(store, 'label_replace(cpu, "d", "$1", "dc", "(")')
    with pytest.raises(promql.ExecutionError, match="same labelset"):
        at(store, 'label_replace(cpu, "host", "same", "host", ".*")')


def test_absent(store: SqliteStore) -> None:
    assert at(store, 'absent(nope{job="a", env=~"p.*", x="1", x="2"})') == {'{job="a"}': 1.0}
    assert at(store, "absent(cpu)") == {}
    assert at(store, 'absent(sum(nope{job="a"}))') == {"{}": 1.0}
    assert at(store, 'absent_over_time(nope{job="a"}[1m])') == {'{job="a"}': 1.0}
    # c has one sample, at 30 s: absent over (t - 15 s, t] before and 15 s after it
    assert grid(store, 'absent_over_time(cpu{host="c"}[15s])', 0, 60) == {
        '{host="c"}': [1.0, 1.0, 1.0, None, None, 1.0, 1.0]
    }


def test_scalars_and_time(store: SqliteStore) -> None:
    assert at(store, "time()") == {"scalar": (T + 30 * S) / 1000}
    assert at(store, 'scalar(cpu{host="a"})') == {"scalar": 7.0}
    assert math.isnan(at(store, "scalar(cpu)")["scalar"])  # three series: NaN
    assert at(store, "vector(2) * 3") == {"{}": 6.0}
    assert at(store, "pi()") == {"scalar": math.pi}
    # the sample's own time, not the evaluation time
    assert at(store, 'timestamp(cpu{host="a"})', s=35) == {'{dc="eu", host="a"}': (T + 30 * S) / 1000}
    assert at(store, 'timestamp(sum(cpu{host="a"}))', s=35) == {"{}": (T + 35 * S) / 1000}


def test_math_and_dates(store: SqliteStore) -> None:
    assert at(store, 'abs(-cpu{host="a"})') == {'{dc="eu", host="a"}': 7.0}
    assert at(store, 'round(cpu{host="a"} / 3, 0.5)') == {'{dc="eu", host="a"}': 2.5}  # 2.333 -> 2.5
    assert at(store, 'round(cpu{host="a"} / 2)') == {'{dc="eu", host="a"}': 4.0}  # 3.5 rounds up
    assert at(store, "clamp(cpu, 5, 8)") == {
        '{dc="eu", host="a"}': 7.0,
        '{dc="eu", host="b"}': 5.0,
        '{dc="us", host="c"}': 8.0,
    }
    assert at(store, "clamp(cpu, 8, 5)") == {}  # max below min: nothing
    assert at(store, 'clamp_min(cpu{host="b"}, 5)') == {'{dc="eu", host="b"}': 5.0}
    assert at(store, 'clamp_max(cpu{host="c"}, 5)') == {'{dc="us", host="c"}': 5.0}
    assert at(store, 'ln(cpu{host="a"}) - scalar(ln(vector(7)))') == {'{dc="eu", host="a"}': 0.0}
    assert at(store, 'sgn(cpu{host="b"} - 5)') == {'{dc="eu", host="b"}': -1.0}
    assert at(store, "deg(vector(pi()))") == {"{}": pytest.approx(180.0)}
    # 2026-01-01T00:00:30Z, a Thursday
    assert at(store, "year()") == {"{}": 2026.0}
    assert at(store, "month()") == {"{}": 1.0}
    assert at(store, "day_of_month()") == {"{}": 1.0}
    assert at(store, "day_of_year()") == {"{}": 1.0}
    assert at(store, "day_of_week()") == {"{}": 4.0}
    assert at(store, "days_in_month()") == {"{}": 31.0}
    assert at(store, "hour()") == {"{}": 0.0}
    assert at(store, "minute(vector(3600 * 25 + 60 * 7))") == {"{}": 7.0}
    assert at(store, "days_in_month(vector(86400 * 40))") == {"{}": 28.0}  # 1970-02-10
    assert at(store, "day_of_week(vector(-1))") == {"{}": 3.0}  # 1969-12-31T23:59:59, a Wednesday
    assert math.isnan(at(store, "year(nanm)")["{}"])


def test_range_functions(store: SqliteStore) -> None:
    # cpu a in (0, 30]: 3, 5, 7 at 10, 20, 30 s; b: 2, 8, 4
    assert at(store, 'delta(cpu{host="a"}[30s])') == {'{dc="eu", host="a"}': 6.0}  # 4 over 20 s, * 30/20
    assert at(store, 'idelta(cpu{host="b"}[30s])') == {'{dc="eu", host="b"}': -4.0}
    assert at(store, 'deriv(cpu{host="a"}[30s])') == {'{dc="eu", host="a"}': pytest.approx(0.2)}
    assert at(store, 'deriv(cpu{host="b"}[30s])') == {'{dc="eu", host="b"}': pytest.approx(0.1)}
    assert at(store, 'predict_linear(cpu{host="a"}[30s], 60)') == {'{dc="eu", host="a"}': pytest.approx(19.0)}
    assert at(store, 'changes(cpu{host="b"}[1m])') == {'{dc="eu", host="b"}': 2.0}  # 2 2 8 4
    assert at(store, "resets(http_requests[1m])", s=40) == {'{host="a"}': 0.0, '{host="b"}': 1.0}
    assert at(store, 'first_over_time(cpu{host="b"}[25s])') == {CPU_B: 2.0}
    assert at(store, 'mad_over_time(cpu{host="b"}[1m])') == {'{dc="eu", host="b"}': 1.0}  # med 3; |d| 1 1 5 1
    # double exponential smoothing of 3, 5, 7 (sf = tf = 0.5): s1 = 3, b = 2; then 5: s1 = 5, then
    # b = 0.5 * 2 + 0.5 * 2 = 2: s1 = 0.5 * 7 + 0.5 * 7 = 7
    assert at(store, 'double_exponential_smoothing(cpu{host="a"}[30s], 0.5, 0.5)') == {
        '{dc="eu", host="a"}': 7.0
    }
    with pytest.raises(promql.PromQLError, match="invalid smoothing factor"):
        at(store, "double_exponential_smoothing(cpu[30s], 1, 0.5)")
    assert at(store, 'quantile_over_time(scalar(vector(0.5)), cpu{host="a"}[30s])') == {
        '{dc="eu", host="a"}': 5.0
    }


def test_set_operators(store: SqliteStore) -> None:
    assert at(store, "cpu and on(host) info") == {CPU_A: 7.0, CPU_B: 4.0}
    assert at(store, "cpu unless on(host) info") == {CPU_C: 10.0}
    assert set(at(store, "cpu or info")) == {
        CPU_A,
        CPU_B,
        CPU_C,
        '{__name__="info", host="a", version="1"}',
        '{__name__="info", host="b", version="2"}',
    }
    # over a range, 'or' takes the right side where the left has nothing with its signature at that
    # step (c is us, b eu: all of b)
    assert grid(store, 'cpu{host="c"} or on(dc) cpu{host="b"}', 0, 30) == {
        CPU_C: [None, None, None, 10.0],
        CPU_B: [2.0, 2.0, 8.0, 4.0],
    }
    assert grid(store, 'cpu{host="b"} unless on(dc) cpu{host="a"}', 0, 30) == {}
    assert grid(store, 'cpu{host="a"} and cpu{host="c"}', 0, 30) == {}
    # the same labels from both sides at different steps are one series
    assert grid(store, 'cpu{host="c"} or on() vector(1)', 10, 30) == {
        CPU_C: [None, None, 10.0],
        "{}": [1.0, 1.0, None],
    }


def test_vector_matching(store: SqliteStore) -> None:
    assert at(store, "cpu * on(host) group_left(version) info") == {
        '{dc="eu", host="a", version="1"}': 7.0,
        '{dc="eu", host="b", version="2"}': 4.0,
    }
    assert at(store, "info * on(host) group_right(version) cpu") == {
        '{dc="eu", host="a", version="1"}': 7.0,
        '{dc="eu", host="b", version="2"}': 4.0,
    }
    # a filtering comparison keeps the left side's value (the "one" side with group_right)
    assert at(store, "info < on(host) group_right cpu") == {CPU_A: 1.0, CPU_B: 1.0}
    assert at(store, 'cpu{host="a"} / ignoring(dc, version) info') == {'{host="a"}': 7.0}
    assert at(store, "cpu > bool on(host) info") == {'{host="a"}': 1.0, '{host="b"}': 1.0}
    # atan2 keeps the name (as Prometheus: it is not among the operators that drop it)
    assert at(store, "cpu atan2 ignoring(dc, version) info") == {
        '{__name__="cpu", host="a"}': math.atan2(7, 1),
        '{__name__="cpu", host="b"}': math.atan2(4, 1),
    }
    assert at(store, "cpu atan2 on(host) info") == {
        '{host="a"}': math.atan2(7, 1),
        '{host="b"}': math.atan2(4, 1),
    }
    assert at(store, 'cpu{host="a"} atan2 2') == {CPU_A: math.atan2(7, 2)}
    assert at(store, "2 ^ cpu{host='b'}") == {'{dc="eu", host="b"}': 16.0}
    assert at(store, "cpu{host='a'} % 3") == {'{dc="eu", host="a"}': 1.0}


def test_matching_errors_in_prometheus_words(store: SqliteStore) -> None:
    with pytest.raises(promql.ExecutionError, match="many-to-many matching not allowed"):
        at(store, "cpu * on(host) dup", s=0)
    with pytest.raises(promql.ExecutionError, match="many-to-one matching must be explicit"):
        at(store, "dup * on(host) cpu", s=0)
    with pytest.raises(promql.ExecutionError, match="found duplicate series for the match group"):
        at(store, "cpu * on(host) group_left dup", s=0)


def test_subqueries(store: SqliteStore) -> None:
    # rate over [20s] every 10 s of (0, 30]: steps 10, 20, 30 s, aligned to multiples of 10 s
    assert at(store, 'max_over_time(rate(http_requests{host="a"}[20s])[30s:10s])') == {'{host="a"}': 1.0}
    assert at(store, 'count_over_time(cpu{host="a"}[30s:10s])') == {'{dc="eu", host="a"}': 3.0}
    # 5 s steps over (5, 30]: 10, 15, 20, 25, 30 (the lookback repeats 3 at 15 s, 5 at 25 s)
    assert at(store, 'sum_over_time(cpu{host="a"}[25s:5s])') == {'{dc="eu", host="a"}': 3 + 3 + 5 + 5 + 7.0}
    # the step is aligned to the epoch, not to the evaluation time: at 33 s, (3, 33] has 10, 20, 30
    assert at(store, 'count_over_time(cpu{host="a"}[30s:10s])', s=33) == {'{dc="eu", host="a"}': 3.0}
    # over a range query, a subquery per step; its offset shifts it
    assert grid(store, 'last_over_time(cpu{host="a"}[10s:10s] offset 10s)', 10, 40) == {
        CPU_A: [1.0, 3.0, 5.0, 7.0]
    }
    # a nested subquery
    assert at(store, 'max_over_time(max_over_time(cpu{host="b"}[10s:10s])[30s:10s])') == {
        '{dc="eu", host="b"}': 8.0
    }


def test_at_modifier_and_negative_offset(store: SqliteStore) -> None:
    t10 = (T + 10 * S) / 1000
    assert grid(store, f'cpu{{host="a"}} @ {t10}', 0, 30) == {CPU_A: [3.0] * 4}
    assert grid(store, 'cpu{host="a"} @ start()', 10, 30) == {CPU_A: [3.0] * 3}
    assert grid(store, 'cpu{host="a"} @ end()', 10, 30) == {CPU_A: [7.0] * 3}
    assert grid(store, f'rate(http_requests{{host="a"}}[20s] @ {t10 + 30})', 0, 20) == {
        '{host="a"}': [1.0] * 3
    }
    assert at(store, 'cpu{host="a"} offset -20s', s=10) == {CPU_A: 7.0}
    assert at(store, f'cpu{{host="a"}} offset 10s @ {t10 + 20}', s=0) == {CPU_A: 5.0}
    assert at(store, 'max_over_time(cpu{host="a"}[30s:10s] @ end())') == {'{dc="eu", host="a"}': 7.0}


def test_instant_order(store: SqliteStore) -> None:
    def order(q: str) -> list[float]:
        v = ev(store, q, 30)
        assert isinstance(v, promql.Vector)
        return [float(v.values[i, 0]) for i in promql.instant_order(promql.parse(q), v)]

    assert order("sort(cpu)") == [4.0, 7.0, 10.0]
    assert order("sort_desc(cpu)") == [10.0, 7.0, 4.0]
    assert order('sort_by_label_desc(cpu, "host")') == [10.0, 4.0, 7.0]
    assert order("cpu") == [7.0, 4.0, 10.0]  # by labels


def test_limits(store: SqliteStore) -> None:
    def run(q: str, limits: promql.Limits) -> promql.Value:
        g = promql.Grid(T, T + 60 * S, 10 * S)
        return promql.Evaluator(store, "t", g, limits=limits).eval(promql.parse(q))

    with pytest.raises(promql.LimitExceeded, match="max_series = 2") as e:
        run("cpu", promql.Limits(max_series=2))
    assert e.value.status == 422
    with pytest.raises(promql.LimitExceeded, match="max_samples = 5"):
        run("sum_over_time(cpu[1m])", promql.Limits(max_samples=5))  # 9 points
    with pytest.raises(promql.LimitExceeded, match="max_samples = 100"):
        run("max_over_time(cpu[1h:1s])", promql.Limits(max_samples=100))  # the subquery's points
    # rate() reads its series in pieces (select_arrays_each): the same limits, the same errors
    with pytest.raises(
        promql.LimitExceeded, match="read 3 series with one selector, more than max_series = 2"
    ):
        run("rate(cpu[1m])", promql.Limits(max_series=2))
    with pytest.raises(promql.LimitExceeded, match="max_samples = 5"):
        run("sum(rate(cpu[1m]))", promql.Limits(max_samples=5))
    with pytest.raises(promql.LimitExceeded, match="timed out") as e:
        run("cpu", promql.Limits(timeout_s=1e-9))
    assert e.value.error_type == "timeout"
    assert isinstance(run("cpu", promql.Limits(max_series=3, max_samples=100)), promql.Vector)


def test_staleness_marker_ends_a_subquery_lookback(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "s.db")
    pts = [("t", Point("g", {}, T + sec * S, v)) for sec, v in [(0, 1.0), (10, promql.STALE_NAN)]]
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    g = promql.Grid(T + 30 * S, T + 30 * S, 1)
    v = promql.Evaluator(s, "t", g).eval(promql.parse("count_over_time(g[30s:5s])"))
    assert isinstance(v, promql.Vector)
    # steps 5 s (1.0) only: from 10 s on the marker ends the lookback
    assert np.asarray(v.values).tolist() == [[1.0]]


def test_power_where_python_raises_is_gos_math_pow(store: SqliteStore) -> None:
    pow_ = promql.binop("^")
    assert pow_(-2.5, 1e9 + 1) == -math.inf  # an overflow keeps the sign of an odd power
    assert pow_(-2.5, 1e9) == math.inf
    assert pow_(-0.0, -1.0) == -math.inf and pow_(0.0, -1.0) == math.inf and pow_(-0.0, -2.0) == math.inf
    assert math.isnan(pow_(-8.0, 1 / 3))
    assert at(store, 'cpu{host="b"} ^ 1e9 * -1') == {'{dc="eu", host="b"}': -math.inf}
    assert at(store, '(-cpu{host="b"}) ^ (1e9 + 1)') == {'{dc="eu", host="b"}': -math.inf}


def test_holt_winters_is_double_exponential_smoothing(store: SqliteStore) -> None:
    q = 'cpu{host="b"}[1m], 0.3, 0.6)'
    assert at(store, "holt_winters(" + q) == at(store, "double_exponential_smoothing(" + q)
    assert at(store, "holt_winters(" + q) != {}


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("cpu @ -1", "@ time before 1970"),
        ("cpu[5m:1m] @ -0.5", "@ time before 1970"),
        ("rate(cpu[5m] @ 1e30)", "out of range"),
    ],
)
def test_at_times_the_parser_cannot_hold_are_4xx(store: SqliteStore, query: str, says: str) -> None:
    with pytest.raises((promql.PromQLError, params.ParamError), match=says):
        promql.parse(query)


def test_at_times_past_year_9999_within_the_bounds_work(store: SqliteStore) -> None:
    # year 10000 and later: the parser's datetime cannot hold them; no data, but an answer
    assert at(store, "cpu @ 253402300800") == {}
    assert at(store, "max_over_time(cpu[1m:10s] @ 1e12)") == {}


def test_unary_minus_drops_the_name_and_refuses_duplicates(store: SqliteStore) -> None:
    assert at(store, '-cpu{host="a"}') == {'{dc="eu", host="a"}': -7.0}
    # info{host="a"} and cpu{host="a"} once "version" and "dc" are gone: one labelset without names
    inner = 'label_replace({__name__=~"info|cpu", host="a"}, "dc", "", "", "")'
    both = f'label_replace({inner}, "version", "", "", "")'
    assert len(at(store, both)) == 2
    with pytest.raises(promql.ExecutionError, match="same labelset"):
        at(store, "-" + both)


@pytest.mark.parametrize("q", ["rate(cpu[1m])", "increase(cpu[30s] offset 10s)", "sum(delta(cpu[1m]))"])
def test_rate_in_pieces(store: SqliteStore, monkeypatch: pytest.MonkeyPatch, q: str) -> None:
    """rate / increase / delta read a series at a time (a piece each) answer what one read does, and
    what the generic range-function path computes from the whole read."""
    g = promql.Grid(T, T + 60 * S, 10 * S)

    def run() -> promql.Vector:
        v = promql.Evaluator(store, "t", g).eval(promql.parse(q))
        assert isinstance(v, promql.Vector)
        return v

    whole = run()
    each = SqliteStore.select_arrays_each
    monkeypatch.setattr(
        SqliteStore,
        "select_arrays_each",
        lambda self, *a, **kw: each(self, *a, **{**kw, "series_per_call": 1}),
    )
    pieces = run()
    monkeypatch.setattr(promql, "NATIVE_RATE", {})
    generic = run()
    for v in (pieces, generic):
        assert v.labels == whole.labels
        assert np.array_equal(v.present, whole.present)
        assert np.array_equal(v.values[v.present], whole.values[whole.present])


def _peak_bytes(fn: object) -> tuple[BaseException | None, int]:
    """What ``fn()`` raised, and the most memory it held at once (numpy's arrays included: numpy
    reports them to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        raised = None
    except BaseException as e:
        raised = e
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, peak


@pytest.mark.parametrize(
    "q",
    [
        "max_over_time(cpu[1h:1ms])",  # a subquery of 3.6 M steps over 3 series: 10.8 M values
        "max_over_time((cpu @ 1767225630)[1h:1ms])",  # the same, fixed by @ and widened
        "count_values(\"v\", cpu + time())",  # a series per distinct value: 15 x 6,001 steps
        "last_over_time(cpu[1h])",  # 3 series x 6,001 steps
        " or ".join(f'label_replace(vector(1), "k", "{i}", "", "")' for i in range(40)),  # 40 x 6,001
    ],
)
def test_arrays_past_max_values_are_refused_before_they_are_made(store: SqliteStore, q: str) -> None:
    """A (series x steps) array larger than max_values ends the query with a 422 naming the limit
    before its memory is taken (or, for an operator, once it has made it: `or` adds the series of
    both sides): a subquery with a tiny step took gigabytes (or a 500 from numpy's allocation
    failure) before any limit was checked, and count_values or a chain of `or` had no bound."""
    limits = promql.Limits(max_values=5_000_000)  # more than the subquery's steps
    grid = promql.Grid(T, T + 6000 * S, S) if "1h:" not in q else promql.Grid(T + 30 * S, T + 30 * S, S)
    if "1h:" not in q:
        limits = promql.Limits(max_values=15_000)  # 3 series x 6,001 steps is 18,003

    def run() -> None:
        promql.Evaluator(store, "t", grid, limits=limits).eval(promql.parse(q))

    raised, peak = _peak_bytes(run)
    assert isinstance(raised, promql.LimitExceeded) and "max_values" in str(raised), raised
    # the refused arrays would be 9 bytes a value (97 MB for the subqueries); the subquery's step
    # times (8 bytes a step: 29 MB) are made before its series are known, within max_samples
    assert peak < 40 * 2**20, peak


def test_sparse_series_are_not_refused_for_the_steps_they_do_not_fill(store: SqliteStore) -> None:
    """max_samples counts points, as Prometheus does: series that each hold a point at a few steps of
    a long range query are answered, though their (series x steps) arrays are larger (those count
    against max_values). The answer's points count too."""
    grid = promql.Grid(T, T + 6000 * S, S)  # cpu: 3 series, points in the first 30 s only

    def run(q: str, limits: promql.Limits) -> promql.Value:
        return promql.Evaluator(store, "t", grid, limits=limits).answer(promql.parse(q))

    for q in ("cpu", "max_over_time(cpu[1m])", "cpu > 0"):
        v = run(q, promql.Limits(max_samples=1_000))  # 18,003 values, at most 3 x 330 points
        assert isinstance(v, promql.Vector) and 0 < v.present.sum() <= 1_000, q
    with pytest.raises(promql.LimitExceeded, match="max_samples = 500"):
        run("max_over_time(cpu[5m])", promql.Limits(max_samples=500))  # the answer: 3 x ~320 points


def test_a_long_function_stops_at_the_timeout_and_when_cancelled(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout is checked inside a function's work (a block of windows at a time), not only
    between the nodes of the expression: one slow ``quantile_over_time`` ran to its end, 7x past
    the timeout. A cancelled query (its client gone) stops the same way."""
    import time

    from lossproof.query import promwindows

    monkeypatch.setattr(promwindows, "BLOCK", 1)  # a series a block
    real = promwindows._range_block
    calls = [0]

    def slow(*args: object, **kw: object) -> object:
        calls[0] += 1
        time.sleep(0.25)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(promwindows, "_range_block", slow)
    grid = promql.Grid(T, T + 600 * S, S)  # 3 series: 3 blocks, 0.75 s
    q = promql.parse("quantile_over_time(0.5, cpu[1m])")
    t0 = time.monotonic()
    with pytest.raises(promql.LimitExceeded, match="timed out"):
        promql.Evaluator(store, "t", grid, limits=promql.Limits(timeout_s=0.3)).eval(q)
    assert time.monotonic() - t0 < 0.7 and calls[0] == 2
    budget = promql.Budget(promql.Limits())
    ev = promql.Evaluator(store, "t", grid, budget=budget)
    calls[0] = 0
    import threading

    threading.Timer(0.1, budget.cancel).start()
    with pytest.raises(promql.QueryCancelled):
        ev.eval(q)
    assert calls[0] == 1
