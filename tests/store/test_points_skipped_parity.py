"""``WriteResult.points_skipped`` is the same in both stores on the same batches
(in-batch duplicates, two label orders of one series, samples and series runs overlapping,
replays over parts, over chunks, through a new writer, duplicate and conflicting reports)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lossproof.store.base import Point, ReportWrite, SeriesSamples, Store, WriteBatch, WriteResult
from lptest.store_backends import BACKENDS, StoreBackend

T0 = 1_700_000_000_000
HOUR = 3_600_000


def pt(t: int, v: float = 1.0, **labels: str) -> Point:
    return Point("cpu", labels or {"host": "h1"}, t, v)


def compact_all(store: Store, now: int) -> None:
    for k in range(200):
        if not store.compact(now + k).more:
            return
    raise AssertionError("compaction never ran out of work")


def scenario(backend: StoreBackend) -> list[tuple[str, WriteResult]]:
    store = backend.open()
    out: list[tuple[str, WriteResult]] = []

    def w(name: str, b: WriteBatch, s: Store | None = None) -> None:
        out.append((name, (s or store).write_batch(b)))

    # in-batch duplicate (same series, same t): the first wins, the second skipped
    dup = [("t", pt(T0, 1.0)), ("t", pt(T0, 2.0)), ("t", pt(T0 + 1))]
    w("in-batch dup", WriteBatch(samples=dup, now_ms=1))
    # one series under two label orders in one batch (PostgreSQL: provisional ids)
    w(
        "label order",
        WriteBatch(
            samples=[
                ("t", Point("mem", {"a": "1", "b": "2"}, T0, 1.0)),
                ("t", Point("mem", {"b": "2", "a": "1"}, T0, 2.0)),
                ("t", Point("mem", {"b": "2", "a": "1"}, T0 + 5, 2.0)),
            ],
            now_ms=1,
        ),
    )
    # a sample and a series run of the same series and t in one batch
    w(
        "sample+run",
        WriteBatch(
            samples=[("t", pt(T0 + 10))],
            series=[("t", SeriesSamples("cpu", {"host": "h1"}, [T0 + 10, T0 + 11], [5.0, 6.0]))],
            now_ms=1,
        ),
    )
    # replay while the points are in parts
    again = [("t", pt(T0, 9.0)), ("t", pt(T0 + 1)), ("t", pt(T0 + 2))]
    w("replay parts", WriteBatch(samples=again, now_ms=1))
    # a native report whose points collide with stored samples; then its duplicate; then a conflict
    r = ReportWrite("t", "a1", 1, [pt(T0 + 10, 7.0), pt(T0 + 20, 7.0)])
    w("report collides", WriteBatch(reports=[r], now_ms=1))
    w("report duplicate", WriteBatch(reports=[r], now_ms=1))
    w("report conflict", WriteBatch(reports=[ReportWrite("t", "a1", 1, [pt(T0 + 30, 8.0)])], now_ms=1))
    # the same via a new writer (asks the store: nothing remembered)
    w("new writer", WriteBatch(samples=[("t", pt(T0, 9.0)), ("t", pt(T0 + 3))], now_ms=1), backend.open())
    # everything into chunks, then replay through the old and a new writer
    compact_all(store, T0 + 30 * HOUR)
    w("replay chunks", WriteBatch(samples=[("t", pt(T0 + 1)), ("t", pt(T0 + 4))], now_ms=1))
    w(
        "replay chunks, new writer",
        WriteBatch(samples=[("t", pt(T0 + 2)), ("t", pt(T0 + 4)), ("t", pt(T0 + 5))], now_ms=1),
        backend.open(),
    )
    return out


EXPECTED = [
    ("in-batch dup", WriteResult(2, 0, 0, 0, 1)),
    ("label order", WriteResult(2, 0, 0, 0, 1)),
    ("sample+run", WriteResult(2, 0, 0, 0, 1)),
    ("replay parts", WriteResult(1, 0, 0, 0, 2)),
    ("report collides", WriteResult(1, 1, 0, 0, 1)),
    ("report duplicate", WriteResult(0, 0, 1, 0, 0)),
    ("report conflict", WriteResult(0, 0, 0, 1, 0)),
    ("new writer", WriteResult(1, 0, 0, 0, 1)),
    ("replay chunks", WriteResult(1, 0, 0, 0, 1)),
    ("replay chunks, new writer", WriteResult(1, 0, 0, 0, 2)),
]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_points_skipped_same_in_both_stores(name: str, tmp_path: Path) -> None:
    backend = BACKENDS[name](tmp_path)
    try:
        got = scenario(backend)
    finally:
        backend.close_all()
    assert got == EXPECTED
