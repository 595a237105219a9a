"""The compactor's scrub (worker/scrub.py): every stored chunk and part checked again in the
background and the damaged ones set aside, as `lossproof store check --set-aside` does, so that a
damaged row nothing else reads (a packed chunk of a closed window) stops failing the queries of its
metric without an operator. Before, only that command found such a row."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import CompactResult, RowsChecked, Store, StoreUnavailable, WriteBatch
from lossproof.store.quarantine import Damaged
from lossproof.worker import scrub as scrub_mod
from lossproof.worker.compactor import Compactor, CompactorMetrics, Step, record
from lossproof.worker.scrub import BACKOFF_S, FIRST_PASS_AFTER_S, Scrub
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


def _pass(
    scrub: Scrub, store: Store, now: float, slice_s: float = 0.0
) -> tuple[dict[str, int], int, int, float]:
    """Rounds of the scrub until a pass ends, the clock 100 s on at each (its rest after a round is
    20 times the round): rows checked by table, rows set aside, rounds, the clock at the last."""
    total = {"chunks": 0, "parts": 0}
    moved = rounds = 0
    while True:
        assert scrub.due(now)
        got = scrub.run(store, now, slice_s=slice_s)
        rounds += 1
        moved += got.moved
        for t, n in got.checked.items():
            total[t] += n
        if got.passes:
            assert not scrub.running
            return total, moved, rounds, now
        assert scrub.running
        now += 100.0


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
    total, moved, rounds, _ = _pass(scrub, store, FIRST_PASS_AFTER_S)
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


def test_the_compactor_scrubs_only_when_idle_and_the_worker_is_not_behind(
    backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scrub_mod, "REST", 0.0)  # (the rounds back to back)
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
    compactor._scrub(store)
    while compactor.scrub is not None and compactor.scrub.running:
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


def test_a_scrub_that_fails_is_tried_again_from_where_it_was_after_a_backoff(backend: StoreBackend) -> None:
    _damaged_store(backend)
    store = backend.open()
    scrub = Scrub(3600.0, now=-FIRST_PASS_AFTER_S)
    first = scrub.run(store, 0.0, slice_s=0.0)
    assert first.checked["chunks"] > 0

    class Failing:
        def check_rows(self, *args: object) -> object:
            raise chunks.ChunkError("boom")

    with pytest.raises(chunks.ChunkError):
        scrub.run(Failing(), 100.0)  # type: ignore[arg-type]
    scrub.failed(100.0)
    assert not scrub.due(100.0 + BACKOFF_S - 0.01) and scrub.due(100.0 + BACKOFF_S)
    scrub.failed(200.0)  # (again: twice as long)
    assert not scrub.due(200.0 + 2 * BACKOFF_S - 0.01) and scrub.due(200.0 + 2 * BACKOFF_S)
    rest = scrub.run(store, 300.0, slice_s=60.0)
    assert first.checked["chunks"] + rest.checked["chunks"] == SERIES and rest.passes == 1
    assert len(backend.fetch(_QUARANTINED)) == 2


class _Recorded:
    """A store whose compaction has ``busy`` calls of work left, and which notes what was called;
    its ``fail_check`` th check_rows call fails (0: none)."""

    def __init__(self, store: Store, busy: int, fail_check: int = 0) -> None:
        self.store, self.busy, self.fail_check = store, busy, fail_check
        self.calls: list[str] = []

    def compact(self, now_ms: int) -> CompactResult:
        self.calls.append("compact")
        self.busy -= 1
        return CompactResult(more=self.busy > 0)

    def check_rows(self, table: str, after_id: int | None, limit: int) -> RowsChecked:
        self.calls.append("check")
        if self.calls.count("check") == self.fail_check:
            raise StoreUnavailable("busy")
        return self.store.check_rows(table, after_id, limit)

    def set_aside_rows(self, rows: list[Damaged], by: str = "check") -> list[Damaged]:
        return self.store.set_aside_rows(rows, by=by)

    def close(self) -> None:
        pass


def test_the_compactors_loop_scrubs_only_once_compaction_has_nothing_left(backend: StoreBackend) -> None:
    _damaged_store(backend)
    store = _Recorded(backend.open(), busy=3)
    stop = threading.Event()
    steps: list[Step] = []

    def report(step: Step) -> None:
        steps.append(step)
        if step.scrub_seconds:
            stop.set()

    Compactor(lambda: store, report, 0.01, stop, scrub=Scrub(10.0, now=-20.0)).run()  # type: ignore[arg-type,return-value]
    assert store.calls[:4] == ["compact"] * 3 + ["check"], store.calls


def test_a_round_that_fails_part_way_is_reported_with_what_it_did(
    backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk set aside before the round failed is counted (it was not: the failed round's Step
    carried nothing), and the failure is logged, not raised out of the compactor's loop."""
    monkeypatch.setattr(scrub_mod, "REST", 0.0)
    monkeypatch.setattr(scrub_mod, "BACKOFF_S", 0.0)
    _damaged_store(backend)
    steps: list[Step] = []
    compactor = Compactor(
        backend.open, steps.append, 2.0, threading.Event(), threading.Event(), scrub=Scrub(10.0, now=-20.0)
    )
    store = _Recorded(backend.open(), busy=0, fail_check=2)
    compactor._scrub(store)  # type: ignore[arg-type]
    while compactor.scrub is not None and compactor.scrub.running:
        compactor._scrub(store)  # type: ignore[arg-type]
    assert len(backend.fetch(_QUARANTINED)) == 2 and any(s.scrub_error for s in steps)
    registry = CollectorRegistry()
    metrics = CompactorMetrics(registry)
    for step in steps:
        record(metrics, step)
    assert registry.get_sample_value("lossproof_store_chunks_quarantined_total", {"by": "scrub"}) == 2
    assert registry.get_sample_value("lossproof_store_scrubbed_rows_total", {"table": "chunks"}) == SERIES
    assert registry.get_sample_value("lossproof_store_scrub_errors_total") == 1
    assert registry.get_sample_value("lossproof_store_compaction_errors_total") == 0


def test_a_pass_sets_aside_at_most_its_limit_and_leaves_the_rest_counted(
    backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More damage in one pass than a write would set aside (a failing disk, or a reader taking good
    rows for damaged) is not all moved out of the queries' sight: the rest is counted and left."""
    monkeypatch.setattr(scrub_mod, "MAX_ASIDE", 1)
    cid, _, _ = _damaged_store(backend)
    total, moved, _, now = _pass(Scrub(3600.0, now=-FIRST_PASS_AFTER_S), backend.open(), 0.0, slice_s=60.0)
    assert total == {"chunks": SERIES, "parts": 1} and moved == 1
    assert [(s, int(i)) for s, i, _ in backend.fetch(_QUARANTINED)] == [("chunks", cid)]
    assert backend.fetch("SELECT count(*) FROM parts") == [(1,)]  # the damaged part, left
    scrub = Scrub(3600.0, now=-FIRST_PASS_AFTER_S)
    got = scrub.run(backend.open(), now, slice_s=60.0)
    assert (got.moved, got.left, got.passes) == (1, 0, 1)  # the next pass: its own limit
    steps = [Step(0.0, scrub_seconds=1.0, scrub_left=1)]
    registry = CollectorRegistry()
    metrics = CompactorMetrics(registry)
    for step in steps:
        record(metrics, step)
    assert registry.get_sample_value("lossproof_store_scrub_damaged_left_total") == 1


def test_a_round_rests_twenty_times_as_long_as_it_took() -> None:
    class Slow:
        def check_rows(self, table: str, after_id: int | None, limit: int) -> RowsChecked:
            time.sleep(0.05)
            return RowsChecked(1, None if after_id else 1, [])

    scrub = Scrub(3600.0, now=-FIRST_PASS_AFTER_S)
    scrub.run(Slow(), 1000.0, slice_s=0.0)  # type: ignore[arg-type]
    assert scrub.running and not scrub.due(1000.0 + 20 * 0.05 - 0.01) and scrub.due(1000.0 + 20 * 5.0)
