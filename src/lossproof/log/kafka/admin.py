"""Topic creation and validation, and committed-aware deletion (lossproof's retention on Kafka).

Safe topic settings (what "acknowledged" must mean; anything weaker needs ``unsafe``):

- replication factor >= 3 and ``min.insync.replicas`` >= 2 (with ``acks=all`` a record is
  acknowledged only once at least two brokers have it);
- ``unclean.leader.election.enable=false`` (an out-of-sync replica never becomes leader and
  truncates acknowledged records away);
- ``cleanup.policy=delete`` (compaction would drop older records of the same key, i.e. earlier
  reports of the same agent), ``retention.ms=-1`` and ``retention.bytes=-1``: Kafka itself never
  deletes a record; lossproof's writer deletes (``delete_records``) only what every lossproof
  consumer group of the topic has committed and what is older than ``log.retention_seconds``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, not declared in stubs
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from lossproof.config import KafkaLogConfig
from lossproof.log.base import LogUnavailable

SAFE_RF = 3
SAFE_MIN_ISR = 2
CHECKED_CONFIGS = (
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "message.timestamp.type",
)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    replication_factor: int  # the smallest over all partitions
    configs: dict[str, str] = field(default_factory=dict)

    @property
    def min_insync_replicas(self) -> int:
        return int(self.configs.get("min.insync.replicas", "1"))


def topic_configs(cfg: KafkaLogConfig, min_isr: int | None = None) -> dict[str, str]:
    """The topic-level settings ``kafka init`` creates the topic with."""
    return {
        "min.insync.replicas": str(min_isr if min_isr is not None else cfg.min_insync_replicas),
        "unclean.leader.election.enable": "false",
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "max.message.bytes": str(cfg.max_message_bytes),
        # LogRecord.timestamp_ms is the append time: let the broker stamp it.
        "message.timestamp.type": "LogAppendTime",
    }


def describe_topic(admin: AdminClient, topic: str, timeout: float = 10.0) -> TopicInfo | None:
    """The topic's partition count, replication factor and checked configs; None if it does not exist.

    Raises LogUnavailable if the cluster does not answer.
    """
    try:
        md = admin.list_topics(topic=topic, timeout=timeout)
    except KafkaException as e:
        raise LogUnavailable(f"cannot read metadata of topic {topic!r}: {e.args[0].str()}") from None
    tmd = md.topics.get(topic)
    if tmd is None:
        return None
    if tmd.error is not None:
        if tmd.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            return None
        raise LogUnavailable(f"topic {topic!r}: {tmd.error.str()}")
    if not tmd.partitions:
        return None
    rf = min(len(p.replicas) for p in tmd.partitions.values())
    res = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([res], request_timeout=timeout)[res].result(timeout=timeout)
    except KafkaException as e:
        raise LogUnavailable(f"cannot read the settings of topic {topic!r}: {e.args[0].str()}") from None
    configs = {k: str(v.value) for k, v in entries.items() if k in CHECKED_CONFIGS}
    return TopicInfo(topic, len(tmd.partitions), rf, configs)


def safety_problems(info: TopicInfo, cfg: KafkaLogConfig) -> list[str]:
    """Why acknowledged records on this topic would be less safe than the contract says (empty: safe)."""
    out: list[str] = []
    want_rf = max(SAFE_RF, cfg.replication_factor)
    want_isr = max(SAFE_MIN_ISR, cfg.min_insync_replicas)
    if info.replication_factor < want_rf:
        out.append(f"replication factor {info.replication_factor} < {want_rf}")
    if info.min_insync_replicas < want_isr:
        out.append(f"min.insync.replicas={info.min_insync_replicas} < {want_isr}")
    if info.configs.get("unclean.leader.election.enable", "false") != "false":
        out.append("unclean.leader.election.enable=true (an out-of-sync replica may truncate acked records)")
    if "compact" in info.configs.get("cleanup.policy", "delete"):
        out.append(
            f"cleanup.policy={info.configs['cleanup.policy']} (compaction drops older reports of an agent)"
        )
    for key in ("retention.ms", "retention.bytes"):
        v = info.configs.get(key, "-1")
        if v != "-1":
            out.append(f"{key}={v}: Kafka would delete records no worker has stored (must be -1)")
    return out


def availability_warnings(info: TopicInfo, cfg: KafkaLogConfig) -> list[str]:
    """Settings that are not unsafe but make appends fail (503) in foreseeable cases."""
    out: list[str] = []
    if info.min_insync_replicas >= info.replication_factor > 1:
        out.append(
            f"min.insync.replicas={info.min_insync_replicas} with replication factor "
            f"{info.replication_factor}: one broker down stops all appends"
        )
    mmb = int(info.configs.get("max.message.bytes", "0") or 0)
    if 0 < mmb < cfg.max_message_bytes:
        out.append(
            f"max.message.bytes={mmb} < log.kafka.max_message_bytes={cfg.max_message_bytes}: "
            "large requests will be refused with 503"
        )
    if info.partitions < cfg.partitions:
        out.append(f"{info.partitions} partitions, the configuration says {cfg.partitions}")
    return out


def create_topic(
    admin: AdminClient,
    cfg: KafkaLogConfig,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    timeout: float = 30.0,
) -> None:
    """Create the topic with lossproof's settings. Raises KafkaException (e.g. TOPIC_ALREADY_EXISTS)."""
    nt = NewTopic(
        cfg.topic,
        num_partitions=partitions or cfg.partitions,
        replication_factor=replication_factor or cfg.replication_factor,
        config=topic_configs(cfg, min_insync_replicas),
    )
    admin.create_topics([nt], request_timeout=timeout)[cfg.topic].result(timeout=timeout)
    # Wait until the metadata shows every partition with a leader, so the first append does not race it.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=cfg.topic, timeout=5).topics.get(cfg.topic)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == nt.num_partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return
        time.sleep(0.1)


# --- retention ---------------------------------------------------------------------------------------


def committed_floor(admin: AdminClient, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
    """Per partition, the lowest offset committed by any lossproof group of ``topic`` (``<topic>.*``).

    A group without a commit for a partition counts as 0 (it holds back deletion of everything);
    a partition no group committed is absent (nothing may be deleted there).
    """
    listing = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
    groups = [g.group_id for g in listing.valid if g.group_id.startswith(topic + ".")]
    floor: dict[int, int] = {}
    any_commit: set[int] = set()
    for g in groups:
        req = ConsumerGroupTopicPartitions(g, [TopicPartition(topic, p) for p in partitions])
        res = admin.list_consumer_group_offsets([req], request_timeout=timeout)[g].result(timeout=timeout)
        for tp in res.topic_partitions or []:
            off = tp.offset if tp.offset >= 0 else 0
            if tp.offset >= 0:
                any_commit.add(tp.partition)
            floor[tp.partition] = min(floor.get(tp.partition, off), off)
    return {p: o for p, o in floor.items() if p in any_commit}


def delete_committed(
    admin: AdminClient, topic: str, retention_seconds: float, timeout: float = 10.0
) -> dict[int, int]:
    """Delete records every lossproof group has committed past and older than ``retention_seconds``.

    Returns {partition: new low watermark} for the partitions where something was deleted.
    """
    md = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None:
        return {}
    partitions = sorted(md.partitions)
    floor = committed_floor(admin, topic, partitions, timeout)
    if not floor:
        return {}
    cutoff_ms = int((time.time() - retention_seconds) * 1000)
    specs: dict[TopicPartition, OffsetSpec] = {}
    for p in floor:
        specs[TopicPartition(topic, p)] = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    earliest = {
        tp.partition: f.result(timeout=timeout).offset for tp, f in _list_offsets(admin, specs, timeout)
    }
    by_time = {
        tp.partition: f.result(timeout=timeout).offset
        for tp, f in _list_offsets(
            admin, {TopicPartition(topic, p): OffsetSpec.for_timestamp(cutoff_ms) for p in floor}, timeout
        )
    }
    latest = end_offsets(admin, topic, list(floor), timeout)
    targets: list[TopicPartition] = []
    for p, committed in floor.items():
        # for_timestamp: the first offset whose timestamp >= cutoff (-1: every record is older).
        old_enough = by_time[p] if by_time[p] >= 0 else latest[p]
        target = min(committed, old_enough, latest[p])
        if target > earliest[p]:
            targets.append(TopicPartition(topic, p, target))
    if not targets:
        return {}
    out: dict[int, int] = {}
    for tp, f in admin.delete_records(targets, request_timeout=timeout).items():
        out[tp.partition] = f.result(timeout=timeout).low_watermark
    return out


def end_offsets(
    admin: AdminClient, topic: str, partitions: list[int], timeout: float = 10.0
) -> dict[int, int]:
    """Per partition, the offset the next record will get (the high watermark)."""
    return {
        tp.partition: f.result(timeout=timeout).offset
        for tp, f in _list_offsets(admin, {TopicPartition(topic, p): _latest() for p in partitions}, timeout)
    }


def _list_offsets(
    admin: AdminClient, specs: dict[TopicPartition, OffsetSpec], timeout: float
) -> list[tuple[TopicPartition, Future[Any]]]:
    return list(admin.list_offsets(specs, request_timeout=timeout).items())


def _latest() -> Any:
    return OffsetSpec.latest()  # type: ignore[no-untyped-call]
