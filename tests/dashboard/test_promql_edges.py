"""Edge cases of PromQL's window arithmetic over a real SQLite store, against values computed by hand:
empty windows, NaN samples, counter resets on a window's first and last sample, a series with one
sample, offsets, and -0.0 against 0.0."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lossproof.query import promql
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

T = 1_767_225_600_000
S = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(Path(tmp_path_factory.mktemp("promql-edges")) / "store.db")
    pts: list[tuple[str, Point]] = []

    def add(metric: str, labels: dict[str, str], samples: list[tuple[int, float]]) -> None:
        pts.extend(("t", Point(metric, labels, T + sec * S, v)) for sec, v in samples)

    add("c", {}, [(0, 5.0), (10, 10.0), (20, 2.0), (30, 4.0), (40, 8.0)])  # reset at 20 s
    add("one", {}, [(30, 7.0)])
    add("g", {}, [(0, 1.0), (10, math.nan), (20, 3.0), (30, math.nan)])
    add("z", {"first": "plus"}, [(0, 0.0), (10, -0.0), (20, 1.0)])
    add("z", {"first": "minus"}, [(0, -0.0), (10, 0.0), (20, 1.0)])
    # a counter whose target failed one scrape (staleness marker at 30 s) and came back at 40 s
    stale = promql.STALE_NAN
    add("s", {}, [(0, 100.0), (10, 110.0), (20, 120.0), (30, stale), (40, 130.0), (50, stale)])
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    return s


def grid(store: SqliteStore, q: str, start_s: int, end_s: int, step_s: int) -> dict[str, list[float | None]]:
    g = promql.Grid(T + start_s * S, T + end_s * S, step_s * S)
    v = promql.Evaluator(store, "t", g).eval(promql.parse(q))
    assert isinstance(v, promql.Vector)
    return {promql._fmt(lab): vals for lab, vals in v.series.values()}


def at(store: SqliteStore, q: str, s: int) -> dict[str, float]:
    return {k: vals[0] for k, vals in grid(store, q, s, s, 1).items() if vals[0] is not None}


def test_increase_over_a_grid_with_empty_windows(store: SqliteStore) -> None:
    # (at - 20 s, at]: one sample at 0 s and at 50 s, none at 60 s; the reset (10 -> 2 at 20 s)
    # counts at 20 s (the window's last sample) but not at 30 s (its first)
    assert grid(store, "increase(c[20s])", 0, 60, 10) == {"{}": [None, 10.0, 4.0, 4.0, 8.0, None, None]}
    assert grid(store, "rate(c[20s])", 20, 20, 10) == {"{}": [0.2]}
    assert grid(store, "irate(c[20s])", 20, 30, 10) == {"{}": [0.2, 0.2]}  # 2 / 10 s, then (4 - 2) / 10 s
    # (0, 30]: 10, 2, 4: 4 - 10 + 10 (reset) = 4 over 20 s sampled, + 10 s to the start: 4 * 30/20
    assert at(store, "increase(c[30s])", 30) == {"{}": 6.0}


def test_offset(store: SqliteStore) -> None:
    assert at(store, "c offset 10s", 40) == {'{__name__="c"}': 4.0}
    assert grid(store, "increase(c[20s] offset 10s)", 10, 70, 10) == {
        "{}": [None, 10.0, 4.0, 4.0, 8.0, None, None]
    }
    assert at(store, "count_over_time(c[1h] offset 35s)", 40) == {"{}": 1.0}  # (-3595 s, 5 s]: 0 s


def test_one_sample(store: SqliteStore) -> None:
    assert at(store, "rate(one[1m])", 60) == {}
    assert at(store, "irate(one[1m])", 60) == {}
    assert at(store, "increase(one[1m])", 60) == {}
    for fn, want in [
        ("count_over_time", 1.0),
        ("avg_over_time", 7.0),
        ("sum_over_time", 7.0),
        ("min_over_time", 7.0),
        ("max_over_time", 7.0),
        ("last_over_time", 7.0),
        ("stddev_over_time", 0.0),
        ("stdvar_over_time", 0.0),
        ("present_over_time", 1.0),
    ]:
        assert list(at(store, f"{fn}(one[1m])", 60).values()) == [want], fn
    assert at(store, "quantile_over_time(0.9, one[1m])", 60) == {"{}": 7.0}
    # only the windows (at - 10 s, at] holding 30 s
    assert grid(store, "count_over_time(one[10s])", 0, 50, 10) == {"{}": [None, None, None, 1.0, None, None]}


def test_nan_samples(store: SqliteStore) -> None:
    assert at(store, "min_over_time(g[40s])", 30) == {"{}": 1.0}  # NaN is skipped
    assert at(store, "max_over_time(g[40s])", 30) == {"{}": 3.0}
    assert math.isnan(at(store, "min_over_time(g[5s])", 10)["{}"])  # only NaN: NaN
    assert math.isnan(at(store, "sum_over_time(g[40s])", 30)["{}"])
    assert math.isnan(at(store, "avg_over_time(g[40s])", 30)["{}"])
    assert at(store, "count_over_time(g[40s])", 30) == {"{}": 4.0}
    assert math.isnan(at(store, "last_over_time(g[40s])", 30)['{__name__="g"}'])
    assert at(store, "sum_over_time(g[5s])", 20) == {"{}": 3.0}  # (15, 20]: 3 alone
    assert math.isnan(at(store, "sum(g)", 10)["{}"])
    assert at(store, "max(g)", 20) == {"{}": 3.0}


def test_zero_signs(store: SqliteStore) -> None:
    # like Prometheus, the first of equal values wins: 0.0 and -0.0 print differently
    got = {k: promql.format_value(v) for k, v in at(store, "min_over_time(z[20s])", 10).items()}
    assert got == {'{first="plus"}': "0", '{first="minus"}': "-0"}
    got = {k: promql.format_value(v) for k, v in at(store, "max_over_time(z[20s])", 10).items()}
    assert got == {'{first="plus"}': "0", '{first="minus"}': "-0"}
    # across series too, in the store's order (first="minus" before first="plus")
    assert promql.format_value(at(store, "min(z)", 0)["{}"]) == "-0"
    assert promql.format_value(at(store, "min(z)", 10)["{}"]) == "0"
    assert promql.format_value(at(store, "max(z)", 10)["{}"]) == "0"


def test_staleness_markers_are_not_values(store: SqliteStore) -> None:
    assert math.isnan(promql.STALE_NAN) and promql.is_stale(promql.np.array([promql.STALE_NAN])).all()
    assert not promql.is_stale(promql.np.array([math.nan])).any()  # an ordinary NaN is a value
    # range windows skip the marker: (0, 50]: 110, 120, 130 over 30 s, no reset, no NaN
    assert at(store, "count_over_time(s[50s])", 50) == {"{}": 3.0}
    assert at(store, "avg_over_time(s[50s])", 50) == {"{}": 120.0}
    assert at(store, "last_over_time(s[15s])", 50) == {'{__name__="s"}': 130.0}
    assert at(store, "max_over_time(s[50s])", 50) == {"{}": 130.0}
    # 20 over 30 s sampled; 10 s to each end (< 1.1 x 15 s): 20 * 50/30
    assert at(store, "increase(s[50s])", 50) == pytest.approx({"{}": 20 * 50 / 30})
    assert at(store, "count_over_time(s[5s])", 30) == {}  # a window holding only the marker
    # an instant selector: the marker ends the lookback; the next real sample starts it again
    want = [100.0, 110.0, 120.0, None, 130.0, None, None, None]
    assert grid(store, "s", 0, 70, 10) == {'{__name__="s"}': want}
    assert at(store, "s", 35) == {}
    # an ordinary NaN stays a value: g's NaN at 30 s is returned as NaN
    assert math.isnan(at(store, "g", 35)['{__name__="g"}'])


def test_staleness_in_a_raw_range_selector(store: SqliteStore) -> None:
    raw = promql.instant_raw(store, "t", promql.parse("s[60s]"), T + 60 * S)  # type: ignore[arg-type]
    assert [[v for _, v in pts] for _, pts in raw.series] == [[110.0, 120.0, 130.0]]
