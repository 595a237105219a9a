"""Store reads that the query API relies on, for every backend (SQLite and PostgreSQL): NaN comes back
as NaN from ``select_last`` too (not 0), regex matchers are RE2, fully anchored and linear-time, and
a bad regex is an :class:`InvalidMatcher` with a readable message."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof.store.base import InvalidMatcher, Matcher, Point, Store, WriteBatch
from lptest.store_backends import BACKENDS

T = 1_767_225_600_000
EVIL = "a" * 40 + "!"


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = BACKENDS[request.param](tmp_path)
    try:
        s = backend.open()
        s.write_batch(
            WriteBatch(
                samples=[
                    ("t", Point("m", {"k": "v"}, T, 1.5)),
                    ("t", Point("m", {"k": "v"}, T + 1000, math.nan)),
                    ("t", Point("m", {"k": "v"}, T + 2000, math.inf)),
                    ("t", Point("m", {"k": "v"}, T + 3000, -math.inf)),
                    ("t", Point("m", {"k": "v"}, T + 4000, 0.1)),
                    ("t", Point("rx", {"k": EVIL}, T, 1.0)),
                    ("t", Point("rx", {"k": "b\nc"}, T, 2.0)),
                    ("t", Point("rx", {"k": "é"}, T, 3.0)),
                ],
                now_ms=T,
            )
        )
        yield s
    finally:
        backend.close_all()


def _values(store: Store, matchers: list[Matcher], start: int, end: int, step: int, window: int) -> list:
    [s] = store.select_last("t", matchers, start, end, step, window)
    return [None if x is None else x[1] for x in s.samples]


@pytest.mark.parametrize("window", [1000, 300_000, 10**9])  # an index seek per step, and a scan
def test_select_last_keeps_nan_and_infinities(store: Store, window: int) -> None:
    got = _values(store, [Matcher("__name__", "=", "m")], T, T + 4000, 1000, window)
    assert got[0] == 1.5
    assert math.isnan(got[1])  # was 0.0 from SQLite's printf('%!.17g', NULL)
    assert got[2:] == [math.inf, -math.inf, 0.1]


def _keys(store: Store, *matchers: Matcher) -> list[str]:
    return sorted(labels["k"] for _, labels in store.series("t", [Matcher("__name__", "=", "rx"), *matchers]))


def test_regex_matchers_are_re2_and_anchored(store: Store) -> None:
    assert _keys(store, Matcher("k", "=~", "a+!")) == [EVIL]
    assert _keys(store, Matcher("k", "=~", "a+")) == []
    assert _keys(store, Matcher("k", "=~", "b|a+")) == []
    assert _keys(store, Matcher("k", "=~", "b.c")) == ["b\nc"]  # . matches a newline, as Prometheus
    assert _keys(store, Matcher("k", "=~", r"\pL")) == ["é"]  # a Unicode class; one character
    assert _keys(store, Matcher("k", "!~", ".*!")) == ["b\nc", "é"]
    assert _keys(store, Matcher("k", "=~", "")) == []
    assert _keys(store, Matcher("nope", "=~", "")) == [EVIL, "b\nc", "é"]


def test_pathological_regex_is_linear(store: Store) -> None:
    t0 = time.monotonic()
    assert _keys(store, Matcher("k", "=~", "(a+)+")) == []
    assert _keys(store, Matcher("k", "=~", "(a|a)*b")) == []
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("(", "missing )"), ("(?=a)", "perl operator"), ("a{1001}", "repetition"), ("a)|(b", "unexpected )")],
)
def test_bad_regex_is_invalid_matcher(pattern: str, why: str) -> None:
    with pytest.raises(InvalidMatcher) as e:
        Matcher("k", "=~", pattern)
    assert why in str(e.value) and ": b'" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_nul_in_metric_label_and_metadata_is_stored_not_refused(store: Store) -> None:
    """Every protocol may carry a NUL in a string; PostgreSQL text cannot hold one. The point must be
    stored all the same (a refused record would be acknowledged data never stored): labels keep it
    (escaped in their JSON), a metric name or metadata text gets U+FFFD there."""
    from lossproof.store.base import MetricMetadata

    res = store.write_batch(
        WriteBatch(
            samples=[("t", Point("nul\x00m", {"k\x00": "v\x00"}, T, 7.0))],
            metadata=[MetricMetadata("t", "nul\x00m", "gauge", "help\x00", "")],
            now_ms=T,
        )
    )
    assert res.points_written == 1
    found = [(m, labels) for m, labels in store.series("t", [Matcher("__name__", "=~", "nul.m")])]
    assert len(found) == 1 and found[0][1] == {"k\x00": "v\x00"}
    assert found[0][0] in ("nul\x00m", "nul\ufffdm")
