"""The compactor's scrub (worker/scrub.py): every stored chunk and part checked again in the
background and the damaged ones set aside, as `lossproof store check --set-aside` does, so that a
damaged row nothing else reads (a packed chunk of a closed window) stops failing the queries of its
metric without an operator. Before, only that command found such a row."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import WriteBatch
from lossproof.worker.compactor import Compactor, CompactorMetrics, Step, record
from lossproof.worker.scrub import FIRST_PASS_AFTER_S, Scrub
from lptest.damaged_store import HOUR, SERIES, T0, batch, compact_all, first_chunk, points, stored
from lptest.store_backends import StoreBackend

_QUARANTINED = "SELECT source, source_id, reason FROM damaged_chunks ORDER BY source"


def _damaged_store(backend: StoreBackend) -> tuple[int, str, int]:
    """A store of m (packed chunks of a closed window) and a part of another metric, the oldest
    chunk and the part damaged: (chunk id, its series' label, part id)."""
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    store.write_batch(WriteBatch(series=[("t", SeriesSamples("other", {}, [T0], [1.0]))], now_ms=T0))
    cid, hit = first_chunk(backend)
    [(pid,)] = backend.fetch("SELECT id FROM parts")
    backend.damage_first("chunks")
    backend.damage_first("parts")
    return cid, hit, int(pid)


def test_a_pass_sets_aside_the_damaged_rows_and_the_next_starts_an_interval_later(
    backend: StoreBackend,
) -> None:
    cid, hit, pid = _damaged_store(backend)
    with pytest.raises(chunks.ChunkError):
        stored(backend.open(readonly=True))
    store = backend.open()
    scrub = Scrub(3600.0, now=0.0)
    assert not scrub.due(0.0) and not scrub.due(FIRST_PASS_AFTER_S - 1) and scrub.due(FIRST_PASS_AFTER_S)
    # one batch a round at most here: a pass is several rounds, each going on from the last
    total = {"chunks": 0, "parts": 0}
    moved = rounds = 0
    while scrub.due(FIRST_PASS_AFTER_S):
        got = scrub.run(store, FIRST_PASS_AFTER_S, slice_s=0.0)
        rounds += 1
        moved += got.moved
        for t, n in got.checked.items():
            total[t] += n
        assert got.passes == (0 if scrub.due(FIRST_PASS_AFTER_S) else 1)
    assert total == {"chunks": SERIES, "parts": 1} and moved == 2 and rounds > 2
    got_rows = backend.fetch(_QUARANTINED)
    assert [(s, int(i)) for s, i, _ in got_rows] == [("chunks", cid), ("parts", pid)]
    assert all("checksum" in reason for _, _, reason in got_rows), got_rows
    # the queries of m work again, without the damaged chunk's points (until a replay stores them)
    # (its one chunk held every point of that series)
    assert stored(backend.open(readonly=True)) == {
        str(i): points(*range(10)) for i in range(SERIES) if str(i) != hit
    }
    # the next pass: an interval after this one began, and it finds nothing more
    assert not scrub.due(FIRST_PASS_AFTER_S + 3599) and scrub.due(FIRST_PASS_AFTER_S + 3600)
    again = scrub.run(store, FIRST_PASS_AFTER_S + 3600, slice_s=60.0)
    assert (again.checked, again.moved, again.passes) == ({"chunks": SERIES - 1, "parts": 0}, 0, 1)


def test_the_compactor_scrubs_only_when_idle_and_the_worker_is_not_behind(backend: StoreBackend) -> None:
    cid, _, pid = _damaged_store(backend)
    steps: list[Step] = []
    behind = threading.Event()
    compactor = Compactor(
        backend.open, steps.append, 2.0, threading.Event(), behind, scrub=Scrub(10.0, now=-20.0)
    )
    store = backend.open()
    behind.set()
    compactor._scrub(store)
    assert steps == [] and backend.fetch(_QUARANTINED) == []
    behind.clear()
    while compactor.scrub is not None and compactor.scrub.due(0.0):
        compactor._scrub(store)
    assert [(s, int(i)) for s, i, _ in backend.fetch(_QUARANTINED)] == [("chunks", cid), ("parts", pid)]
    registry = CollectorRegistry()
    metrics = CompactorMetrics(registry)
    for step in steps:
        record(metrics, step)

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert value("lossproof_store_scrubbed_rows_total", table="chunks") == SERIES
    assert value("lossproof_store_scrubbed_rows_total", table="parts") == 1
    assert value("lossproof_store_scrub_passes_total") == 1
    assert value("lossproof_store_chunks_quarantined_total", by="scrub") == 2
    assert value("lossproof_store_scrub_seconds_total") > 0
    assert value("lossproof_store_compaction_seconds_total") == 0  # (a scrub is not a compaction)
    assert len(stored(backend.open(readonly=True))) == SERIES - 1  # (one series lost its one chunk)


def test_no_scrub_with_an_interval_of_0() -> None:
    assert not Scrub(0.0, now=0.0).due(1e12)


def test_a_scrub_that_fails_is_tried_again_from_where_it_was(backend: StoreBackend) -> None:
    _damaged_store(backend)
    store = backend.open()
    scrub = Scrub(3600.0, now=-FIRST_PASS_AFTER_S)
    first = scrub.run(store, 0.0, slice_s=0.0)
    assert first.checked["chunks"] > 0

    class Failing:
        def check_rows(self, *args: object) -> object:
            raise chunks.ChunkError("boom")

    with pytest.raises(chunks.ChunkError):
        scrub.run(Failing(), 1.0)  # type: ignore[arg-type]
    rest = scrub.run(store, 2.0, slice_s=60.0)
    assert first.checked["chunks"] + rest.checked["chunks"] == SERIES and rest.passes == 1
    assert len(backend.fetch(_QUARANTINED)) == 2
