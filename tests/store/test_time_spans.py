"""columns.time_spans: the spans of time a first-write-wins check reads for one batch."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.store.columns import MAX_SPANS, time_spans


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(2**62), 2**62) | st.integers(0, 1000), max_size=200),
    st.integers(1, 20),
    st.integers(0, 2**40),
)
def test_spans_cover_every_time_in_order_and_at_most_the_limit(
    times: list[int], limit: int, min_gap: int
) -> None:
    ts = np.array(times, dtype=np.int64)
    spans = time_spans(ts, limit, min_gap)
    assert len(spans) <= limit
    assert all(lo <= hi for lo, hi in spans)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))  # ordered, disjoint
    for t in times:
        assert sum(lo <= t <= hi for lo, hi in spans) == 1
    if times:  # each span starts and ends on a time of the batch: nothing read beyond them
        assert {lo for lo, _ in spans} | {hi for _, hi in spans} <= set(times)


def test_far_apart_times_are_read_apart_and_close_ones_together() -> None:
    step = 15_000
    resent = [t * step for t in range(10)] + [t * step for t in range(5_000, 5_010)]
    assert time_spans(np.array(resent, dtype=np.int64)) == [(0, 9 * step), (5_000 * step, 5_009 * step)]
    hourly = np.arange(0, 1_000 * 3_600_000, 3_600_000, dtype=np.int64)  # gaps within a packed window
    assert time_spans(hourly) == [(0, 999 * 3_600_000)]
    many = np.array([k * 10**9 + j for k in range(40) for j in range(3)], dtype=np.int64)
    spans = time_spans(many)
    assert len(spans) == MAX_SPANS  # gaps all alike: 15 of them cut, each between two clusters
    assert all(lo % 10**9 == 0 and hi % 10**9 == 2 for lo, hi in spans)
