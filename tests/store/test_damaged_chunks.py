"""A damaged chunk or part (a flipped bit: a bad sector) in either store is an error, never
points that were not written: a read, and a write's look-up of what is stored, check every chunk
they decode against the time range its row says it holds. Before, PostgreSQL answered a damaged
packed chunk with made-up timestamps in place of the real ones (found by an outside review)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import Matcher, Store, StoreUnavailable, WriteBatch
from lptest.store_backends import BACKENDS, StoreBackend

T0 = 1_700_000_000_000
HOUR = 3_600_000


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    b: StoreBackend = BACKENDS[request.param](tmp_path)
    yield b
    b.close_all()


def batch(b: int, series: int = 20) -> WriteBatch:
    ts = [T0 + (10 * b + k) * 15_000 for k in range(10)]
    values = [b * 100.0 + k for k in range(10)]
    runs = [("t", SeriesSamples("m", {"i": str(i)}, ts, values)) for i in range(series)]
    return WriteBatch(series=runs, now_ms=T0)


def compact_all(store: Store, now: int) -> None:
    for k in range(200):
        if not store.compact(now + k).more:
            return
    raise AssertionError("compaction never ran out of work")


def test_a_damaged_chunk_is_an_error_not_other_points(backend: StoreBackend) -> None:
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    backend.damage_first("chunks")
    with pytest.raises(chunks.ChunkError):
        store.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62)
    # a replay over the damaged chunk cannot tell which of its points are stored: the store's
    # failure, not the batch's (kept and retried, never dead-lettered). (A new writer: this one
    # remembers what it stored and asks the store nothing.)
    with pytest.raises(StoreUnavailable, match="ChunkError"):
        backend.open().write_batch(batch(0))
    with pytest.raises(chunks.ChunkError):
        backend.open(readonly=True).select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62)


def test_a_damaged_part_seen_by_a_writer_is_store_unavailable(backend: StoreBackend) -> None:
    store = backend.open()
    store.write_batch(batch(0, series=5))
    # the top byte of the part's second series id: the ids are then out of order
    backend.damage_first("parts", at=16 + 8 + 7)
    # another metric, by a writer that has not seen the part: its look reads the part's directory.
    # The store's failure, not the batch's: StoreUnavailable (kept, retried), never the ChunkError
    # the worker takes for the batch's fault and dead-letters acknowledged records on (PostgreSQL,
    # found by review)
    other = WriteBatch(series=[("t", SeriesSamples("other", {}, [T0], [1.0]))], now_ms=T0)
    with pytest.raises(StoreUnavailable):
        backend.open().write_batch(other)
