"""The PromQL subset over a real SQLite store, against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lossproof.query import promql
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T = 1_767_225_600_000  # a round minute
S = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(Path(tmp_path_factory.mktemp("promql")) / "store.db")
    pts: list[tuple[str, Point]] = []

    def add(metric: str, labels: dict[str, str], samples: list[tuple[int, float]], tenant: str = "t") -> None:
        pts.extend((tenant, Point(metric, labels, T + sec * S, v)) for sec, v in samples)

    # a counter, 10 per 10 s from 0 at T
    add("http.requests", {"host": "a", "code": "200"}, [(i * 10, 10.0 * i) for i in range(7)])
    # a counter that resets after 20 s
    add(
        "http.requests",
        {"host": "b", "code": "500"},
        [(0, 0.0), (10, 10.0), (20, 20.0), (30, 5.0), (40, 15.0)],
    )
    # gauges
    add("cpu.user", {"host": "a", "dc": "eu"}, [(0, 1.0), (10, 3.0), (20, 5.0), (30, 7.0)])
    add("cpu.user", {"host": "b", "dc": "eu"}, [(0, 2.0), (10, 2.0), (20, 8.0), (30, 4.0)])
    add("cpu.user", {"host": "c", "dc": "us"}, [(30, 10.0)])
    add("mem_free", {"host": "a"}, [(30, 100.0)])
    add("mem_total", {"host": "a"}, [(30, 400.0)])
    add("cpu.user", {"host": "z"}, [(30, 99.0)], tenant="other")  # another tenant: never seen
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    return s


def instant(store: SqliteStore, q: str, at_s: int = 30) -> dict[str, float]:
    """Evaluate at T + at_s: {'{labels}': value}."""
    v = promql.Evaluator(store, "t", promql.Grid(T + at_s * S, T + at_s * S, 1)).eval(promql.parse(q))
    if isinstance(v, promql.Scalar):
        return {"scalar": v.values[0]}
    return {promql.fmt_labels(lab): vals[0] for lab, vals in v.series.values() if vals[0] is not None}


def one(store: SqliteStore, q: str, at_s: int = 30) -> float:
    r = instant(store, q, at_s)
    assert len(r) == 1, r
    return next(iter(r.values()))


def test_selectors_and_name_mapping(store: SqliteStore) -> None:
    assert set(instant(store, "cpu_user")) == {
        '{__name__="cpu_user", dc="eu", host="a"}',
        '{__name__="cpu_user", dc="eu", host="b"}',
        '{__name__="cpu_user", dc="us", host="c"}',
    }
    assert instant(store, '{__name__="cpu.user", host="a"}') == {
        '{__name__="cpu_user", dc="eu", host="a"}': 7.0
    }
    assert one(store, 'cpu_user{host="b"}') == 4.0
    assert sorted(instant(store, 'cpu_user{host!="b"}').values()) == [7.0, 10.0]
    assert sorted(instant(store, 'cpu_user{host=~"a|c"}').values()) == [7.0, 10.0]
    assert sorted(instant(store, 'cpu_user{host!~"a|c"}').values()) == [4.0]
    assert sorted(instant(store, 'cpu_user{dc=""}').values()) == []  # every series has dc
    assert sorted(instant(store, '{__name__=~"mem_.*"}').values()) == [100.0, 400.0]
    assert instant(store, "no_such_metric") == {}


def test_lookback_and_offset(store: SqliteStore) -> None:
    # the last sample of host a is at 30 s: still there 5 min later, gone after that
    assert one(store, 'cpu_user{host="a"}', at_s=30 + 299) == 7.0
    assert instant(store, 'cpu_user{host="a"}', at_s=30 + 300) == {}
    assert one(store, 'cpu_user{host="a"} offset 20s') == 3.0


def test_rate_increase_irate(store: SqliteStore) -> None:
    # At 60 s, [60s] covers (0, 60]: samples at 10..60 s, values 10..60. Extrapolated to the window
    # start (the first sample is 10 s in, under 1.1 x the 10 s spacing): 50 * 60/50 = 60.
    assert one(store, 'increase(http_requests{host="a"}[60s])', at_s=60) == pytest.approx(60.0)
    assert one(store, 'rate(http_requests{host="a"}[60s])', at_s=60) == pytest.approx(1.0)
    assert one(store, 'irate(http_requests{host="a"}[60s])', at_s=60) == pytest.approx(1.0)
    # Reset at 30 s: (0,40] holds 10, 20, 5, 15: 15 - 10 + 20 (reset) = 25 over 30 s sampled; the first
    # sample is 10 s after the window start (< 11 s): extrapolate, but only to where the counter would
    # be 0: 30 * 10/25 = 12 s > 10 s, so 10 s; end at 40 s exactly: 25 * 40/30.
    assert one(store, 'increase(http_requests{host="b"}[40s])', at_s=40) == pytest.approx(25 * 40 / 30)
    assert one(store, 'irate(http_requests{host="b"}[40s])', at_s=40) == pytest.approx(1.0)  # 15-5 / 10 s
    # one sample in the window: no rate
    assert instant(store, 'rate(http_requests{host="a"}[5s])', at_s=60) == {}


def test_over_time(store: SqliteStore) -> None:
    # host b cpu in (0, 30]: 2, 8, 4
    q = 'cpu_user{host="b"}[30s]'
    assert one(store, f"avg_over_time({q})") == pytest.approx(14 / 3)
    assert one(store, f"min_over_time({q})") == 2.0
    assert one(store, f"max_over_time({q})") == 8.0
    assert one(store, f"sum_over_time({q})") == 14.0
    assert one(store, f"count_over_time({q})") == 3.0
    assert one(store, f"last_over_time({q})") == 4.0
    mean = 14 / 3
    var = ((2 - mean) ** 2 + (8 - mean) ** 2 + (4 - mean) ** 2) / 3
    assert one(store, f"stdvar_over_time({q})") == pytest.approx(var)
    assert one(store, f"stddev_over_time({q})") == pytest.approx(math.sqrt(var))
    assert one(store, f"quantile_over_time(0.5, {q})") == 4.0
    assert one(store, f"quantile_over_time(0.75, {q})") == pytest.approx(6.0)  # 4 + 0.5 * (8 - 4)
    assert one(store, f"present_over_time({q})") == 1.0
    assert set(instant(store, f"avg_over_time({q})")) == {'{dc="eu", host="b"}'}  # name dropped


def test_aggregations(store: SqliteStore) -> None:
    # at 30 s: a=7, b=4, c=10 (dc eu, eu, us)
    assert one(store, "sum(cpu_user)") == 21.0
    assert one(store, "avg(cpu_user)") == 7.0
    assert one(store, "min(cpu_user)") == 4.0
    assert one(store, "max(cpu_user)") == 10.0
    assert one(store, "count(cpu_user)") == 3.0
    assert instant(store, "sum by (dc) (cpu_user)") == {'{dc="eu"}': 11.0, '{dc="us"}': 10.0}
    assert instant(store, "max without (host) (cpu_user)") == {'{dc="eu"}': 7.0, '{dc="us"}': 10.0}
    assert instant(store, "count by (dc) (cpu_user > 5)") == {'{dc="eu"}': 1.0, '{dc="us"}': 1.0}
    # host b at 60 s: 10, 20, 5, 15 at 10..40 s: 25 over 30 s sampled, + 10 s to the start (under 11 s),
    # + 5 s (half the spacing) to the end (20 s away): 25 * 45/30 = 37.5 over 60 s
    assert instant(store, "sum by (code) (rate(http_requests[60s]))", at_s=60) == {
        '{code="200"}': pytest.approx(1.0),
        '{code="500"}': pytest.approx(0.625),
    }


def test_arithmetic(store: SqliteStore) -> None:
    assert instant(store, "1 + 2 * 3") == {"scalar": 7.0}
    assert instant(store, "2 ^ 3 ^ 2") == {"scalar": 512.0}  # right-associative
    assert instant(store, "10 % 3 - -1") == {"scalar": 2.0}
    assert instant(store, "(1 + 2) / 4") == {"scalar": 0.75}
    assert instant(store, "1 / 0")["scalar"] == math.inf
    assert instant(store, "2 > bool 1") == {"scalar": 1.0}
    assert instant(store, 'cpu_user{host="a"} * 2 + 1') == {'{dc="eu", host="a"}': 15.0}
    assert instant(store, '100 - cpu_user{host="a"}') == {'{dc="eu", host="a"}': 93.0}
    assert instant(store, '-cpu_user{host="a"}') == {'{dc="eu", host="a"}': -7.0}
    # comparisons filter and keep the name; with bool they give 0/1
    assert instant(store, "cpu_user > 5") == {
        '{__name__="cpu_user", dc="eu", host="a"}': 7.0,
        '{__name__="cpu_user", dc="us", host="c"}': 10.0,
    }
    assert instant(store, 'cpu_user{host="b"} > bool 5') == {'{dc="eu", host="b"}': 0.0}
    # vector / vector, matched on the labels other than the name
    assert instant(store, "mem_free / mem_total") == {'{host="a"}': 0.25}
    assert instant(store, "sum(cpu_user) / count(cpu_user)") == {"{}": 7.0}
    assert instant(store, 'cpu_user{host="a"} - on(host) mem_free') == {'{host="a"}': -93.0}


def test_range_grid(store: SqliteStore) -> None:
    v = promql.Evaluator(store, "t", promql.Grid(T, T + 30 * S, 10 * S)).eval(
        promql.parse('cpu_user{host="a"}')
    )
    assert isinstance(v, promql.Vector)
    [(_, values)] = v.series.values()
    assert values == [1.0, 3.0, 5.0, 7.0]


def test_tenancy(store: SqliteStore) -> None:
    assert 99.0 not in instant(store, "cpu_user").values()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ('histogram_quantiles(cpu_user, "q", 0.5)', "function histogram_quantiles()"),
        ("integral(cpu_user[5m])", "function integral()"),
        ("step()", "function step()"),
        ('cpu_user{host="a" or host="b"}', "'or' inside a selector"),
    ],
)
def test_unsupported_names_the_part(query: str, named: str) -> None:
    with pytest.raises(promql.Unsupported) as e:
        promql.parse(query)
    assert named in str(e.value) and "not supported" in str(e.value)


@pytest.mark.parametrize("query", ["", "cpu_user{", "sum(", "rate(cpu_user)", "1 +"])
def test_invalid(query: str) -> None:
    with pytest.raises(promql.PromQLError):
        promql.parse(query)


def test_format_value() -> None:
    assert promql.format_value(1.0) == "1"
    assert promql.format_value(0.1) == "0.1"
    # Prometheus' jsonutil.MarshalValue: 'f', but 'e' below 1e-6 and from 1e21 on
    assert promql.format_value(1e20) == "100000000000000000000"
    assert promql.format_value(123456789012345680.0) == "123456789012345680"
    assert promql.format_value(1e21) == "1e+21"
    assert promql.format_value(-1.5e300) == "-1.5e+300"
    assert promql.format_value(1e-6) == "0.000001"
    assert promql.format_value(1.5e-7) == "1.5e-07"
    assert promql.format_value(5e-324) == "5e-324"
    assert promql.format_value(-0.0) == "-0"
    assert promql.format_value(math.nan) == "NaN"
    assert promql.format_value(-math.inf) == "-Inf"


@pytest.mark.parametrize(
    "query",
    [
        "histogram_count(cpu_user)",
        "histogram_sum(cpu_user)",
        "histogram_avg(cpu_user)",
        "histogram_stddev(cpu_user)",
        "histogram_stdvar(cpu_user)",
        "histogram_fraction(0, 10, cpu_user)",
        "histogram_count(rate(http_requests[1m]))",
    ],
)
def test_native_histogram_functions_ignore_floats(store: SqliteStore, query: str) -> None:
    # every stored sample is a float (native histograms are stored as classic buckets)
    assert instant(store, query) == {}


def test_limit_ratio(store: SqliteStore) -> None:
    everything = instant(store, "cpu_user")
    assert instant(store, "limit_ratio(1, cpu_user)") == everything
    assert instant(store, "limit_ratio(-1, cpu_user)") == everything
    assert instant(store, "limit_ratio(1.5, cpu_user)") == everything  # clamped, as Prometheus
    assert instant(store, "limit_ratio(0, cpu_user)") == {}
    for r in (0.1, 0.3, 0.5, 0.7, 0.9):
        some, rest = (
            instant(store, f"limit_ratio({r}, cpu_user)"),
            instant(store, f"limit_ratio({r - 1}, cpu_user)"),
        )
        assert not set(some) & set(rest) and {**some, **rest} == everything
    # a series is in or out by its labels alone: the same at every step, whatever the value
    assert (
        instant(store, "limit_ratio(0.5, cpu_user)", 20).keys()
        <= instant(store, "limit_ratio(0.5, cpu_user)", 30).keys()
    )
    with pytest.raises(promql.PromQLError, match="NaN"):
        instant(store, "limit_ratio(0/0, cpu_user)")


@pytest.fixture(scope="module")
def info_store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(Path(tmp_path_factory.mktemp("promql-info")) / "store.db")
    pts: list[tuple[str, Point]] = []

    def add(metric: str, labels: dict[str, str], samples: list[tuple[int, float]]) -> None:
        pts.extend(("t", Point(metric, labels, T + sec * S, v)) for sec, v in samples)

    up = [(i * 10, 1.0) for i in range(7)]
    add("up", {"job": "node", "instance": "a"}, up)
    add("up", {"job": "node", "instance": "b"}, up)
    add("up", {"job": "node", "instance": "c"}, up)
    add("target_info", {"job": "node", "instance": "a", "region": "eu", "k8s_pod": "p1"}, up)
    # b's info changes at 30 s: the newer one wins from then on
    add("target_info", {"job": "node", "instance": "b", "region": "us"}, [(0, 1.0), (10, 1.0), (20, 1.0)])
    add("target_info", {"job": "node", "instance": "b", "region": "ap"}, [(30, 1.0), (40, 1.0)])
    add("build_info", {"job": "node", "instance": "a", "version": "1.2"}, up)
    add("down", {"job": "node", "instance": "d"}, up)
    add("target_info", {"job": "node", "instance": "d", "region": "eu"}, up)
    add("target_info", {"job": "node", "instance": "d", "region": "us"}, up)
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    return s


def test_info(info_store: SqliteStore) -> None:
    def q(query: str, at_s: int = 40) -> dict[str, float]:
        return instant(info_store, query, at_s)

    assert q("info(up)") == {
        '{__name__="up", instance="a", job="node", k8s_pod="p1", region="eu"}': 1.0,
        '{__name__="up", instance="b", job="node", region="ap"}': 1.0,
        '{__name__="up", instance="c", job="node"}': 1.0,
    }
    assert '{__name__="up", instance="b", job="node", region="us"}' in q("info(up)", 20)
    # only the data labels the selector names; a series without a match is dropped when a matcher
    # does not match ""
    assert q('info(up, {region=~"e.*"})') == {'{__name__="up", instance="a", job="node", region="eu"}': 1.0}
    # another info metric, by name; and several at once
    assert q('info(up{instance="a"}, {__name__="build_info"})') == {
        '{__name__="up", instance="a", job="node", version="1.2"}': 1.0
    }
    assert q('info(up{instance="a"}, {__name__=~".+_info"})') == {
        '{__name__="up", instance="a", job="node", k8s_pod="p1", region="eu", version="1.2"}': 1.0
    }
    # info series themselves are left as they are
    assert q('info(target_info{instance="a"})') == {
        '{__name__="target_info", instance="a", job="node", k8s_pod="p1", region="eu"}': 1.0
    }
    # a label the series has already is kept
    assert q('info(label_replace(up{instance="a"}, "region", "home", "", ""))') == {
        '{__name__="up", instance="a", job="node", k8s_pod="p1", region="home"}': 1.0
    }
    # two info series with the same identifying labels and sample time: Prometheus' error
    with pytest.raises(promql.ExecutionError, match="duplicate series for info metric"):
        q("info(down)")
