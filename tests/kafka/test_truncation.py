"""Every broker loses power at once: Kafka comes back with a shorter log and hands the lost offsets
out again. A reader must never start past records that are still in the log.

The power cut is emulated on disk (``lptest.kafka.truncate_partitions``): every broker is killed
with SIGKILL and every replica of the topic keeps only the head of its log, as when all page caches
are lost together; the checkpoints Kafka fsyncs still name the longer log. New records are then
appended at the reused offsets before the reader is (re)assigned, by a producer that stops
afterwards: like a stopped agent's reports, they exist only in Kafka, nobody would replay them.
``test_power_cut_cluster.py`` does the same for real: the brokers' data on the power-cut file
system, ``lossproof up`` and real agents.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from lossproof.config import KafkaLogConfig
from lossproof.dev.kafka import DevCluster
from lossproof.log.base import LogGap, LogRecord
from lossproof.log.kafka import KafkaLogReader
from lptest.kafka import ensure_all_up, new_topic, truncate_partitions

READ = 100  # records per partition the worker read and committed before the power cut
UNREAD = 40  # appended after that, never read, lost with the tail
KEPT = 60  # each partition's log end after the power cut
NEW = {0: 30, 1: 50}  # appended after the restart: p0 ends below the committed offset, p1 above it


def produce(cfg: KafkaLogConfig, partition: int, tag: str, n: int) -> dict[int, bytes]:
    """``n`` records on ``partition``, at most 10 per batch (so a cut at a multiple of 10 is exact);
    returns offset -> value."""
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "message.timeout.ms": 60_000,
        }
    )
    out: dict[int, bytes] = {}
    failed: list[str] = []

    def done(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            out[msg.offset()] = msg.value()  # type: ignore[attr-defined]

    for i in range(n):
        p.produce(cfg.topic, value=f"{tag}-{partition}-{i}".encode(), partition=partition, on_delivery=done)
        if i % 10 == 9:
            assert p.flush(60) == 0
    assert p.flush(60) == 0 and not failed, failed
    return out


def drain(
    r: KafkaLogReader, ends: dict[int, int], timeout: float = 90.0
) -> tuple[list[LogRecord], list[LogGap]]:
    """Poll and commit (as the worker does) until every partition is read up to ``ends``."""
    records: list[LogRecord] = []
    gaps: list[LogGap] = []
    pos: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while any(pos.get(p, 0) < e for p, e in ends.items()):
        assert time.monotonic() < deadline, f"not read to the end after {timeout}s: {pos} < {ends}"
        res = r.poll(500, 1.0)
        records += res.records
        gaps += res.gaps
        if res.records or res.gaps:
            r.commit(res.next_offsets())
        for rec in res.records:
            pos[rec.partition] = rec.offset + 1
    return records, gaps


def power_cut(cluster: DevCluster, topic: str) -> dict[int, int]:
    for n in cluster.nodes():
        cluster.kill(n.id)
    ends = truncate_partitions(cluster, topic, dict.fromkeys(NEW, KEPT))
    ensure_all_up(cluster)
    return ends


def setup(cluster: DevCluster, prefix: str) -> tuple[KafkaLogConfig, KafkaLogReader, CollectorRegistry]:
    cfg = new_topic(cluster, prefix=prefix, partitions=len(NEW))
    for p in NEW:
        produce(cfg, p, "read", READ)
    reg = CollectorRegistry()
    r = KafkaLogReader(cfg, "workers", registry=reg)
    drain(r, dict.fromkeys(NEW, READ))
    for p in NEW:
        produce(cfg, p, "unread", UNREAD)
    return cfg, r, reg


def check(
    cfg: KafkaLogConfig,
    records: list[LogRecord],
    gaps: list[LogGap],
    new: dict[int, dict[int, bytes]],
    ends: dict[int, int],
    reg: CollectorRegistry,
) -> None:
    assert ends == dict.fromkeys(NEW, KEPT)
    got = {(x.partition, x.offset): x.value for x in records}
    want = {(p, o): v for p, vals in new.items() for o, v in vals.items()}
    assert sorted(o for (_, o) in want) == sorted(o for p, n in NEW.items() for o in range(KEPT, KEPT + n)), (
        "the new records reuse the lost offsets"
    )
    missing = sorted(set(want) - set(got))
    assert not missing, f"records still in Kafka were skipped: {missing[:10]} ({len(missing)} in all)"
    assert {k: got[k] for k in want} == want
    assert all(o >= KEPT for (_, o) in got), "records processed before the loss were returned again"
    reused = sorted((g.partition, g.first, g.last) for g in gaps if g.reused)
    assert reused == [(p, KEPT, READ - 1) for p in sorted(NEW)], gaps
    assert all(cfg.topic in g.reason and "truncated" in g.reason for g in gaps)
    count = reg.get_sample_value("lossproof_log_kafka_truncations_total", {"group": "workers"})
    assert count == len(NEW), count
    offsets = reg.get_sample_value("lossproof_log_kafka_truncated_offsets_total", {"group": "workers"})
    assert offsets == len(NEW) * (READ - KEPT)


def test_reassigned_reader_reads_every_record_at_reused_offsets(cluster: DevCluster) -> None:
    """The worker is down during the power cut and starts again once new records were appended."""
    cfg, r, _ = setup(cluster, "powercut")
    r.close()
    ends = power_cut(cluster, cfg.topic)
    new = {p: produce(cfg, p, "new", n) for p, n in NEW.items()}

    reg = CollectorRegistry()
    r = KafkaLogReader(cfg, "workers", registry=reg)
    try:
        records, gaps = drain(r, {p: KEPT + n for p, n in NEW.items()})
        check(cfg, records, gaps, new, ends, reg)
    finally:
        r.close()
    # The commits now carry the new epoch: a restarted reader neither re-reads nor reports again.
    r = KafkaLogReader(cfg, "workers")
    try:
        res = r.poll(100, 3.0)
        assert not res.records and not res.gaps, res
    finally:
        r.close()


def test_running_reader_across_a_power_cut_of_every_broker(cluster: DevCluster) -> None:
    """`lossproof up` keeps running; only the brokers go down and come back (the reader's group
    loses its partitions or librdkafka finds the log truncated)."""
    cfg, r, reg = setup(cluster, "powercut-live")
    try:
        ends = power_cut(cluster, cfg.topic)
        new = {p: produce(cfg, p, "new", n) for p, n in NEW.items()}
        records, gaps = drain(r, {p: KEPT + n for p, n in NEW.items()})
        check(cfg, records, gaps, new, ends, reg)
    finally:
        r.close()
