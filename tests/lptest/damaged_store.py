"""A small store of one metric ``m`` for the tests of damaged rows (``tests/store/test_damaged_chunks.py``,
``tests/store/test_store_check.py``): batches of 10 points a series, all in one 2 h (and one 12 h)
window, compacted on demand, read back whole."""

from __future__ import annotations

import json

from lossproof.points import SeriesSamples
from lossproof.store.base import Matcher, Store, WriteBatch
from lptest.store_backends import StoreBackend

T0 = 1_700_000_000_000  # the batches' points all lie in one 2 h (and one 12 h) window
HOUR = 3_600_000
SERIES = 20
M = [Matcher("__name__", "=", "m")]


def batch(b: int, series: int = SERIES) -> WriteBatch:
    runs = [("t", SeriesSamples("m", {"i": str(i)}, *points(b))) for i in range(series)]
    return WriteBatch(series=runs, now_ms=T0)


def points(*bs: int) -> tuple[list[int], list[float]]:
    """Every series' points of the batches ``bs``: (times, values)."""
    ts = [T0 + (10 * b + k) * 15_000 for b in bs for k in range(10)]
    return ts, [b * 100.0 + k for b in bs for k in range(10)]


def compact_all(store: Store, now: int) -> int:
    """Compact until nothing is left to do; the damaged rows set aside on the way."""
    aside = 0
    for k in range(200):
        res = store.compact(now + k)
        aside += getattr(res, "quarantined", 0)  # (so that code from before the field fails on it)
        if not res.more:
            return aside
    raise AssertionError("compaction never ran out of work")


def stored(store: Store) -> dict[str, tuple[list[int], list[float]]]:
    """Each series' points of ``m`` (by its label ``i``), every one of them."""
    got = store.select("t", M, 0, 1 << 62)
    return {s.labels["i"]: ([t for t, _ in s.points], [v for _, v in s.points]) for s in got}


def first_chunk(backend: StoreBackend) -> tuple[int, str]:
    """(id, series label ``i``) of the oldest chunk row: the one ``damage_first`` damages."""
    [(cid, labels)] = backend.fetch(
        "SELECT c.id, s.labels_json FROM chunks c JOIN series s ON s.id = c.series_id ORDER BY c.id LIMIT 1"
    )
    return int(cid), json.loads(labels)["i"]
