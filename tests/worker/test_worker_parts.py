"""A record bigger than a store batch is stored over several transactions; the log position never
passes a record that is only partly stored, and a store outage in between loses and doubles nothing."""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import cramjam
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from lossproof.log.base import LogLag, LogReader, LogRecord, PollResult
from lossproof.points import SeriesSamples
from lossproof.protocol import native, promrw
from lossproof.store import chunks
from lossproof.store.base import StoreUnavailable, WriteBatch, WriteResult
from lossproof.store.sqlite import SqliteStore
from lossproof.worker.compactor import Compactor, CompactorMetrics, record
from lossproof.worker.loop import Worker
from lptest.pipeline import report

T0 = 1_767_225_600_000


def _rw_record(offset: int, series: int, samples: int) -> LogRecord:
    req = promrw.WriteRequest()
    for i in range(series):
        ts = req.timeseries.add()
        for k, v in (("__name__", "parts_m"), ("i", str(i))):
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for j in range(samples):
            s = ts.samples.add()
            s.timestamp, s.value = T0 + j, float(j)
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    env = native.Envelope(1, "default", "prom-rw", promrw.V1, "snappy", 0, "", [], body)
    return LogRecord(0, offset, b"k", native.encode_envelope(env), 0)


def _native_record(offset: int, seqs: range, points: int) -> LogRecord:
    body = json.dumps({"agent": "a", "reports": [report(s, n=points) for s in seqs]}).encode()
    env = native.Envelope(1, "default", "native", native.JSON, "", 0, "a", [(seqs[0], seqs[-1])], body)
    return LogRecord(0, offset, b"k", native.encode_envelope(env), 0)


class ListReader(LogReader):
    def __init__(self, records: list[LogRecord]) -> None:
        self.records = records
        self.commits: list[int] = []

    def poll(self, max_records: int, timeout: float) -> PollResult:
        return PollResult([], [])

    def commit(self, offsets: Mapping[int, int]) -> None:
        self.commits.append(offsets[0])

    def lag(self) -> LogLag:
        return LogLag(0, 0.0)

    def close(self) -> None:
        pass


class FlakyStore(SqliteStore):
    """Fails (as an outage) on the n-th write."""

    fail_on = 0
    writes = 0

    def write_batch(self, batch: WriteBatch) -> WriteResult:
        self.writes += 1
        if self.writes == self.fail_on:
            raise StoreUnavailable("injected outage")
        return super().write_batch(batch)


@pytest.mark.parametrize("fail_on", [0, 2, 3])
def test_a_big_record_spans_transactions_and_commits_only_when_whole(tmp_path: Path, fail_on: int) -> None:
    records = [
        _native_record(0, range(1, 3), 10),
        _rw_record(1, 50, 100),  # 5,000 samples: five store batches of at most 1,000 points
        _native_record(2, range(3, 13), 300),  # ten reports of 300 points: never split
    ]
    store = FlakyStore(tmp_path / "s.db")
    store.fail_on = fail_on
    reader = ListReader(records)
    worker = Worker(reader, store, CollectorRegistry(), batch_points=1000)
    polled = PollResult(list(records), [])
    if fail_on:
        with pytest.raises(StoreUnavailable):
            worker.process(polled)
        # what was committed stops at the first record not stored whole, which is kept for the retry
        assert reader.commits and max(reader.commits) <= polled.records[0].offset
        assert polled.records == records[polled.records[0].offset :]
    worker.process(polled)
    assert reader.commits == sorted(reader.commits) and reader.commits[-1] == 3
    assert store.writes > 5  # the big record did span several transactions
    series = store.query("default", "parts_m", 0, T0 + 1000, {})
    assert sum(len(s.points) for s in series) == 5000
    ledger = store.ledger("default", "a")
    assert ledger is not None and ledger.stored == [(1, 12)] and not ledger.missing
    native_points = store.query("default", "cpu.user", 0, T0 * 2, {})
    assert sum(len(s.points) for s in native_points) == 2 * 10 + 10 * 300
    store.close()


def test_a_part_the_flush_refuses_is_set_aside_by_the_compactor(tmp_path: Path) -> None:
    """A damaged part is set aside into damaged_chunks by the flush, which goes on (counted by the
    compactor's steps). It was refused (ChunkError) on every try, for as long as it was there, and no
    other part was flushed; before that the compactor died of a panic in the native flush."""
    path = tmp_path / "s.db"
    s = SqliteStore(path)
    s.write_batch(WriteBatch(series=[("t", SeriesSamples("m", {}, [1_700_000_000_000], [1.0]))], now_ms=0))
    s.close()
    good = chunks.encode_part(
        np.array([1, 2], dtype=np.int64), np.array([10, 20, 30], dtype=np.int64), np.zeros(3)
    )
    bad = bytearray(good)
    struct.pack_into("<q", bad, chunks._PART_HEAD.size + 16 * 2 + 8, 100)  # series 1 ends past the points
    con = sqlite3.connect(path)
    con.execute("UPDATE parts SET data = ?", (bytes(bad),))
    con.commit()
    con.close()
    stop = threading.Event()
    registry = CollectorRegistry()
    metrics = CompactorMetrics(registry)
    c = Compactor(lambda: SqliteStore(path), lambda step: record(metrics, step), 0.05, stop)
    c.start()
    try:
        deadline = time.monotonic() + 10
        name = "lossproof_store_chunks_quarantined_total"
        while (registry.get_sample_value(name, {"by": "compaction"}) or 0) < 1:
            assert time.monotonic() < deadline, "the part was not set aside"
            time.sleep(0.05)
        assert c._thread.is_alive()
        assert (registry.get_sample_value("lossproof_store_compaction_errors_total") or 0) == 0
    finally:
        stop.set()
        c.join(5)
    con = sqlite3.connect(path)
    assert con.execute("SELECT source, data FROM damaged_chunks").fetchall() == [("parts", bytes(bad))]
    assert con.execute("SELECT count(*) FROM parts").fetchone() == (0,)
    con.close()
