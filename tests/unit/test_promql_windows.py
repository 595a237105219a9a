"""Prometheus 3's left-open windows against Prometheus 2's closed ones (``[query] windows``), where they
differ: a sample exactly on a range window's start, on the lookback's start, and a subquery step on
``T - range``. Values computed by hand; every path that decides a boundary is taken (the store's
native rate windows, the evaluator's, the numpy range functions, the instant lookup, a top-level
range vector, subquery steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lossproof.query import promql, promwindows
from lossproof.store.base import Point, SeriesArrays, WriteBatch
from lossproof.store.sqlite import SqliteStore

T = 1_767_225_600_000
S = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    s = SqliteStore(Path(tmp_path_factory.mktemp("promql-windows")) / "store.db")
    pts: list[tuple[str, Point]] = []

    def add(metric: str, samples: list[tuple[int, float]]) -> None:
        pts.extend(("t", Point(metric, {}, T + sec * S, v)) for sec, v in samples)

    add("g", [(0, 1.0), (10, 2.0), (20, 3.0)])
    add("c", [(0, 5.0), (10, 10.0), (20, 30.0)])
    add("lone", [(0, 7.0)])
    s.write_batch(WriteBatch(samples=pts, now_ms=T))
    return s


def at(store: SqliteStore, q: str, sec: int, closed: bool) -> list[float]:
    """The values of ``q`` at ``T + sec`` (one step), by series."""
    ev = promql.Evaluator(store, "t", promql.Grid(T + sec * S, T + sec * S, 1), closed=closed)
    v = ev.eval(promql.parse(q))
    assert isinstance(v, promql.Vector)
    return [vals[0] for _, vals in v.series.values() if vals[0] is not None]


@pytest.mark.parametrize(
    ("query", "sec", "prometheus3", "prometheus2"),
    [
        # (0, 20] holds the samples at 10 s and 20 s; [0, 20] the one at 0 s too
        ("count_over_time(g[20s])", 20, 2.0, 3.0),
        ("sum_over_time(g[20s])", 20, 5.0, 6.0),
        ("count_over_time(g[20s] offset 10s)", 30, 2.0, 3.0),
        # left-open: 10 -> 30 over 10 s, extrapolated 5 s back to where it would be 0 (before the
        # window's start): 20 * 15 / 10; closed: 5 -> 30, nothing to extrapolate
        ("increase(c[20s])", 20, 30.0, 25.0),
        ("rate(c[20s])", 20, 1.5, 1.25),
        (f"increase(c[20s] @ {(T + 20 * S) / 1000})", 20, 30.0, 25.0),  # (not the store's way)
        ("delta(c[20s])", 20, 40.0, 25.0),  # (no zero to stop at: the whole 10 s back)
        ("changes(c[20s])", 20, 1.0, 2.0),
        # the lookback (5 minutes) from 300 s reaches back to the sample at 0 s only when closed
        ("lone", 300, None, 7.0),
        ("timestamp(lone)", 300, None, T / 1000),
        # subquery steps: 10 s and 20 s after (0, 20]'s open start; 0 s too at [0, 20]'s
        ("count_over_time(g[20s:10s])", 20, 2.0, 3.0),
        ("sum_over_time(g[20s:10s])", 20, 5.0, 6.0),
    ],
)
def test_a_sample_on_a_windows_start_counts_only_with_prometheus2_windows(
    store: SqliteStore, query: str, sec: int, prometheus3: float | None, prometheus2: float
) -> None:
    assert at(store, query, sec, closed=False) == ([] if prometheus3 is None else [prometheus3])
    assert at(store, query, sec, closed=True) == [prometheus2]


def test_the_extrapolation_to_a_counters_start_is_each_versions(tmp_path: Path) -> None:
    """A counter that starts 30 s into a 60 s window, at 1, rising by 1 every 10 s. Prometheus 2
    moves the window's start to the counter's zero point first (10 s before its first sample),
    then finds that within the threshold (1.1 x 10 s): it extrapolates 10 s, 3 x 40 / 30 = 4.
    Prometheus 3 (PR 13725) applies the threshold first (30 s is past it: half a step, 5 s), then
    the zero point (10 s, not shorter): 3 x 35 / 30 = 3.5. Both store paths of rate windows (the
    store's native rows, and windows of arrays: the @ modifier) and the numpy functions agree."""
    s = SqliteStore(tmp_path / "store.db")
    s.write_batch(
        WriteBatch(
            samples=[
                ("t", Point("late", {}, T + sec * S, float(k + 1))) for k, sec in enumerate((30, 40, 50, 60))
            ],
            now_ms=T,
        )
    )
    for q in ("increase(late[60s])", f"increase(late[60s] @ {(T + 60 * S) / 1000})"):
        assert at(s, q, 60, closed=False) == [pytest.approx(3.5, rel=1e-15)], q
        assert at(s, q, 60, closed=True) == [pytest.approx(4.0, rel=1e-15)], q
    assert at(s, "rate(late[60s])", 60, closed=False) == [pytest.approx(3.5 / 60, rel=1e-15)]
    assert at(s, "rate(late[60s])", 60, closed=True) == [pytest.approx(4.0 / 60, rel=1e-15)]
    found = [
        SeriesArrays("late", {}, np.array([T + sec * S for sec in (30, 40, 50, 60)]), np.arange(1.0, 5.0))
    ]
    end = np.array([T + 60 * S])
    for closed, want in ((False, 3.5), (True, 4.0)):
        got, _ = promwindows.range_function(
            "increase", found, end, 60 * S, fn=promwindows.rate_arrays("increase", closed), closed=closed
        )
        assert got[0, 0] == pytest.approx(want, rel=1e-15)


def test_a_range_query_has_the_windows_at_every_step(store: SqliteStore) -> None:
    g = promql.Grid(T + 10 * S, T + 30 * S, 10 * S)

    def rows(q: str, closed: bool) -> list[list[float | None]]:
        v = promql.Evaluator(store, "t", g, closed=closed).eval(promql.parse(q))
        assert isinstance(v, promql.Vector)
        return [vals for _, vals in v.series.values()]

    # at 10 s: (0, 10] / [0, 10]; at 20 s: (10, 20] / [10, 20]; at 30 s: (20, 30] / [20, 30]
    assert rows("count_over_time(g[10s])", False) == [[1.0, 1.0, None]]
    assert rows("count_over_time(g[10s])", True) == [[2.0, 2.0, 1.0]]
    assert rows("increase(c[10s])", False) == []  # one sample a window: no series
    assert rows("increase(c[10s])", True) == [[5.0, 20.0, None]]


def raw_points(store: SqliteStore, q: str, sec: int, **kw: Any) -> list[tuple[int, float]]:
    """The points of the range vector ``q`` at the top of an instant query at ``T + sec``."""
    expr = promql.parse(q)
    assert isinstance(expr, (promql.pp.MatrixSelector, promql.pp.SubqueryExpr))
    raw = promql.instant_raw(store, "t", expr, T + sec * S, **kw)
    return [pt for _, pts in raw.series for pt in pts]


def test_a_range_vector_at_the_top_of_an_instant_query(store: SqliteStore) -> None:
    assert raw_points(store, "g[20s]", 20, closed=False) == [(T + 10 * S, 2.0), (T + 20 * S, 3.0)]
    assert raw_points(store, "g[20s]", 20, closed=True) == [(T, 1.0), (T + 10 * S, 2.0), (T + 20 * S, 3.0)]


def test_a_subquery_at_the_top_of_an_instant_query_takes_the_lookback_asked(store: SqliteStore) -> None:
    """``lookback_delta`` reaches a top-level subquery's instant selectors (it took 5 minutes)."""
    # steps at 10, 20 and 30 s; at 30 s the newest sample (20 s) is 10 s old
    three = [(T + 10 * S, 2.0), (T + 20 * S, 3.0), (T + 30 * S, 3.0)]
    assert raw_points(store, "g[30s:10s]", 35, lookback_ms=promql.LOOKBACK_MS) == three
    assert raw_points(store, "g[30s:10s]", 35, lookback_ms=5 * S) == three[:2]
