"""The Store's read methods for PromQL and the dashboard (series, metric_names, select, select_last),
on every backend of the store contract suite; the defaults in ``Store`` must agree with each backend's
own implementation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof.store.base import Matcher, Point, Store, WriteBatch
from lptest.store_backends import BACKENDS, StoreBackend

T = 1_767_225_600_000


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: StoreBackend = BACKENDS[request.param](tmp_path)
    s = backend.open()  # a backend whose server is missing here: lptest.require decides
    pts = []
    for i in range(200):  # every 10 s, across several of the store's time buckets
        pts.append(("t", Point("cpu.user", {"host": "a", "dc": "eu"}, T + i * 10_000, float(i))))
        if i % 2 == 0:
            pts.append(("t", Point("cpu.user", {"host": "b"}, T + i * 10_000, float(-i))))
    pts.append(("t", Point("mem", {"host": "a"}, T, math.nan)))
    pts.append(("u", Point("cpu.user", {"host": "a", "dc": "eu"}, T, 42.0)))
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    yield s
    backend.close_all()


def test_series_and_matchers(store: Store) -> None:
    assert store.series("t", []) == [
        ("cpu.user", {"dc": "eu", "host": "a"}),
        ("cpu.user", {"host": "b"}),
        ("mem", {"host": "a"}),
    ]
    assert store.series("t", [Matcher("__name__", "=", "cpu.user"), Matcher("dc", "=", "")]) == [
        ("cpu.user", {"host": "b"})
    ]
    assert store.series("t", [Matcher("host", "!~", "b|c")]) == [
        ("cpu.user", {"dc": "eu", "host": "a"}),
        ("mem", {"host": "a"}),
    ]
    assert store.series("t", [Matcher("__name__", "=~", "cpu\\..*"), Matcher("host", "!=", "a")]) == [
        ("cpu.user", {"host": "b"})
    ]
    assert store.series("u", []) == [("cpu.user", {"dc": "eu", "host": "a"})]
    assert store.metric_names("t") == ["cpu.user", "mem"]
    assert store.series("nobody", []) == []
    with pytest.raises(ValueError):
        Matcher("x", "==", "y")


def test_select(store: Store) -> None:
    got = store.select("t", [Matcher("host", "=", "b")], T + 20_000, T + 60_000)
    assert [(s.metric, s.labels, s.points) for s in got] == [
        ("cpu.user", {"host": "b"}, [(T + 20_000, -2.0), (T + 40_000, -4.0), (T + 60_000, -6.0)])
    ]
    [nan] = store.select("t", [Matcher("__name__", "=", "mem")], T, T)
    assert math.isnan(nan.points[0][1])
    assert Store.select(store, "t", [Matcher("host", "=", "b")], T + 20_000, T + 60_000) == got


@pytest.mark.parametrize(
    ("step", "window"), [(10_000, 10_000), (25_000, 25_000), (7_000, 300_000), (600_000, 600_000)]
)
def test_select_last_agrees_with_the_default(store: Store, step: int, window: int) -> None:
    ms = [Matcher("__name__", "=", "cpu.user")]
    start, end = T - 30_000, T + 2_100_000
    fast = store.select_last("t", ms, start, end, step, window)
    slow = Store.select_last(store, "t", ms, start, end, step, window)
    assert fast == slow
    assert len(fast) == 2 and all(len(s.samples) == (end - start) // step + 1 for s in fast)


def test_select_last_values(store: Store) -> None:
    [a] = store.select_last("t", [Matcher("dc", "=", "eu")], T, T + 60_000, 30_000, 30_000)
    # T: the point at T; T+30s: the latest in (T, T+30s] is at T+30s; T+60s likewise
    assert a.samples == [(T, 0.0), (T + 30_000, 3.0), (T + 60_000, 6.0)]
    [b] = store.select_last("t", [Matcher("host", "=", "b")], T + 10_000, T + 30_000, 10_000, 10_000)
    assert b.samples == [None, (T + 20_000, -2.0), None]  # b has a point every 20 s
