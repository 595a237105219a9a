"""Skylight's case: the committed offset points at data that no longer exists.

Records past the group's committed offset are deleted (``AdminClient.delete_records``, which is
what an all-broker crash that loses data looks like to a consumer) while no worker runs. A new
reader must report the missing range as a gap, must not raise or loop, and must go on from the
earliest record that still exists.
"""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import TopicPartition

from lossproof.config import KafkaLogConfig
from lossproof.dev.kafka import DevCluster
from lossproof.log.kafka import KafkaLogReader, KafkaLogWriter
from lptest.kafka import admin, new_topic
from lptest.log_harness import make_value


def append(cfg: KafkaLogConfig, n: int, tag: str = "", partitions: int = 1) -> dict[tuple[int, int], bytes]:
    async def main() -> dict[tuple[int, int], bytes]:
        w = KafkaLogWriter(cfg, retention_check_seconds=3600)
        await w.start()
        out: dict[tuple[int, int], bytes] = {}
        for i in range(n):
            v = make_value(f"{tag}{i}", 100)
            pos = await w.append(f"agent{i % (partitions * 3)}".encode(), v)
            out[(pos.partition, pos.offset)] = v
        await w.close()
        return out

    return asyncio.run(main())


def delete_before(c: DevCluster, topic: str, offsets: dict[int, int]) -> None:
    a = admin(c)  # keep the client alive until its futures are resolved
    fs = a.delete_records([TopicPartition(topic, p, o) for p, o in offsets.items()])
    for f in fs.values():
        f.result(timeout=30)


def test_committed_offset_pointing_at_deleted_data_is_a_gap(cluster: DevCluster) -> None:
    cfg = new_topic(cluster, prefix="skylight", partitions=2)
    written = append(cfg, 200, partitions=2)
    per_p = {p: sorted(o for (q, o) in written if q == p) for p in (0, 1)}
    assert all(len(v) > 40 for v in per_p.values())

    # A worker stores and commits the first 20 records of each partition, then goes away.
    r = KafkaLogReader(cfg, "workers")
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while min(seen.get(0, 0), seen.get(1, 0)) < 20 and time.monotonic() < deadline:
        for rec in r.poll(10, 0.5).records:
            seen[rec.partition] = max(seen.get(rec.partition, 0), rec.offset + 1)
    r.commit({0: 20, 1: 20})
    r.close()

    # The data past the committed offsets vanishes while no worker runs.
    delete_before(cluster, cfg.topic, {0: 35, 1: 30})

    r = KafkaLogReader(cfg, "workers")
    records, gaps = [], []
    started = time.monotonic()
    polls = 0
    while time.monotonic() - started < 30:
        res = r.poll(100, 0.5)
        polls += 1
        records += res.records
        gaps += res.gaps
        if res.gaps or res.records:
            r.commit(res.next_offsets())
        if len(records) >= (len(per_p[0]) - 35) + (len(per_p[1]) - 30):
            break
    by_p = {g.partition: g for g in gaps}
    assert set(by_p) == {0, 1}, gaps
    assert (by_p[0].first, by_p[0].last) == (20, 34)
    assert (by_p[1].first, by_p[1].last) == (20, 29)
    for g in gaps:
        assert g.reason and cfg.topic in g.reason and g.detected_ms > 0
    got = {(x.partition, x.offset) for x in records}
    want = {(p, o) for p in (0, 1) for o in per_p[p] if o >= (35 if p == 0 else 30)}
    assert got == want, "every record that still exists is read, nothing before it"
    assert all(written[(x.partition, x.offset)] == x.value for x in records)
    # It carries on: new data arrives, and a restarted reader neither re-reports the gap nor re-reads.
    later = append(cfg, 10, tag="later", partitions=2)
    more, _ = [], []
    deadline = time.monotonic() + 20
    while len(more) < 10 and time.monotonic() < deadline:
        res = r.poll(100, 0.5)
        assert not res.gaps
        more += res.records
        r.commit(res.next_offsets())
    assert {(x.partition, x.offset) for x in more} == set(later)
    assert r.lag().records == 0
    r.close()
    r = KafkaLogReader(cfg, "workers")
    res = r.poll(100, 1.0)
    assert not res.records and not res.gaps
    r.close()


def test_data_deleted_while_reading_is_a_gap(cluster: DevCluster) -> None:
    """The reader is behind (small fetches) when records ahead of its position are deleted."""
    cfg = new_topic(cluster, prefix="skylight-live", partitions=1)
    written = append(cfg, 300)
    small_fetches = {
        "fetch.max.bytes": "1000",
        "message.max.bytes": "1000",
        "max.partition.fetch.bytes": "1000",
        "queued.max.messages.kbytes": "1",
    }
    r = KafkaLogReader(cfg.model_copy(update={"client": small_fetches}), "workers")
    first = r.poll(20, 5.0)
    assert [x.offset for x in first.records] == list(range(20))
    r.commit(first.next_offsets())
    delete_before(cluster, cfg.topic, {0: 250})
    records, gaps = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        res = r.poll(50, 0.5)
        records += res.records
        gaps += res.gaps
        if res.records or res.gaps:
            r.commit(res.next_offsets())
        if records and records[-1].offset == 299:
            break
    r.close()
    offsets = [x.offset for x in records]
    assert offsets == sorted(offsets) and offsets[-1] == 299
    lost = set(range(20, 250)) - set(offsets)
    covered: set[int] = set()
    for g in gaps:
        covered.update(range(g.first, g.last + 1))
    assert lost <= covered, "records deleted under the reader were skipped silently"
    assert not covered & set(offsets)
    assert all(written[(0, o)] == x.value for o, x in zip(offsets, records, strict=True))
