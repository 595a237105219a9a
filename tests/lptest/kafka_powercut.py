"""A 3-node ``lossproof dev kafka`` cluster with every broker's data on one power-cut file system.

    cluster = PowerCutCluster(tmp_path)
    cluster.start()              # mount lptest.pcfs, create and start the cluster on it
    cluster.kill_all()           # SIGKILL every broker at once
    cluster.power_cut()          # the whole cluster loses power: only what Kafka fsync'd survives
    cluster.restart()            # the brokers come back on the remounted file system
    cluster.close()

Each node's ``data`` directory (``log.dirs``, which also holds the KRaft metadata log,
``meta.properties`` and ``bootstrap.checkpoint``) is a symlink into the mount; configs, pid files
and the brokers' own logs stay on the ordinary disk, so what a cut takes is the brokers' data and
nothing the test needs to read afterwards.

Kafka fsyncs a partition's records only when it rolls a segment (``flush.messages`` and
``flush.ms`` are unset by default) and its checkpoints when it writes them. :func:`set_rolls` makes
the rolls frequent, as they are on a busy production cluster; without it a cut loses every record
of the active segment, i.e. the whole test's records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    OffsetSpec,
    ResourceType,
)

from lossproof.dev.kafka import DevCluster
from lossproof.durable import make_dirs
from lossproof.protocol.native import decode_envelope
from lptest.kafka import retry_admin
from lptest.powercut import PowerCutFS

NODES = 3
HEAP = "384m"
OFFSETS_TOPIC = "__consumer_offsets"


class PowerCutCluster:
    def __init__(self, base: Path, seed: int = 0) -> None:
        self.fs = PowerCutFS(base / "pcfs", seed=seed)
        self.cluster = DevCluster(base / "kafka", detach=False)

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def start(self) -> None:
        self.fs.mount()
        for i in range(1, NODES + 1):
            make_dirs(self.fs.root / f"node-{i}")
            ndir = self.cluster.node_dir(i)
            ndir.mkdir(parents=True, exist_ok=True)
            (ndir / "data").symlink_to(self.fs.root / f"node-{i}", target_is_directory=True)
        self.cluster.up(NODES, port=0, heap=HEAP, timeout=180)

    def kill_all(self) -> None:
        """kill -9 every broker at once (all signals first, then wait for each death)."""
        pids = [s.pid for s in self.cluster.status() if s.running and s.pid is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for n in self.cluster.nodes():
            self.cluster.kill(n.id)
        for n in self.cluster.nodes():
            assert not self.cluster.running(n.id), f"broker {n.id} survived kill -9"

    def power_cut(self, how: str = "clean") -> None:
        """Every unsynced write of every broker is gone (``pages``: but random pages written since
        their file's last sync reach the disk, out of order); the file system is mounted again."""
        for n in self.cluster.nodes():
            assert not self.cluster.running(n.id), "a power cut takes the brokers too: kill_all first"
        self.fs.power_cut(how)

    def restart(self, timeout: float = 180) -> float:
        """Start every broker on the (remounted) file system; seconds until the cluster is healthy."""
        t = time.monotonic()
        self.cluster.up(NODES, port=0, heap=HEAP, timeout=timeout)
        return time.monotonic() - t

    def server_logs(self) -> str:
        out = []
        for n in self.cluster.nodes():
            p = self.cluster.node_dir(n.id) / "server.log"
            if p.exists():
                out.append(f"--- node {n.id} ---\n" + p.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for n in self.cluster.nodes():
                self.cluster.kill(n.id)
        self.fs.close()


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def set_rolls(bootstrap: str, topic: str, *, topic_ms: int, offsets_ms: int) -> None:
    """Roll (and so fsync) ``topic``'s segments every ``topic_ms`` and the consumer offsets' every
    ``offsets_ms``. Kept in the KRaft metadata log, which Kafka fsyncs: they survive every cut."""

    def alter(name: str, ms: int) -> None:
        entry = ConfigEntry("segment.ms", str(ms), incremental_operation=AlterConfigOpType.SET)
        res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
        a = admin(bootstrap)  # held until its futures are resolved: a dropped client never resolves them
        for f in a.incremental_alter_configs([res]).values():
            f.result(timeout=30)

    retry_admin(f"segment.ms of {topic}", lambda: alter(topic, topic_ms))
    retry_admin(f"segment.ms of {OFFSETS_TOPIC}", lambda: alter(OFFSETS_TOPIC, offsets_ms))


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    def ask() -> dict[int, int]:
        tps = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)}
        a = admin(bootstrap)
        fs = a.list_offsets(tps, request_timeout=10)
        return {tp.partition: f.result(timeout=15).offset for tp, f in fs.items()}

    out: dict[int, int] = retry_admin(f"end offsets of {topic}", ask)
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (-1001 where none), read with a throwaway consumer that never
    joins the group."""

    def ask() -> dict[int, int]:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        finally:
            c.close()
        return {tp.partition: tp.offset for tp in tps}

    out: dict[int, int] = retry_admin(f"committed offsets of {group}", ask)
    return out


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    ts_ms: int  # the broker's append time (lossproof topics use LogAppendTime)
    agent: str
    seqs: list[tuple[int, int]]


def read_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> list[TopicRecord]:
    """Every record of ``topic`` up to its end offsets as they are now, with a plain consumer that
    belongs to no group: what is in Kafka, independently of lossproof's reader."""
    ends = end_offsets(bootstrap, topic, partitions)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "lptest-independent-read",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "error",
        }
    )
    out: list[TopicRecord] = []
    pos = dict.fromkeys(range(partitions), 0)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in pos):
            assert time.monotonic() < deadline, f"read_topic: not at the end after {timeout}s: {pos} < {ends}"
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    continue  # transient (a leader moving); the partition is fetched again
                p, off = m.partition(), m.offset()
                assert p is not None and off is not None
                if off >= ends[p]:
                    continue
                env = decode_envelope(m.value() or b"")
                out.append(TopicRecord(p, off, m.timestamp()[1], env.agent, [tuple(r) for r in env.seqs]))  # type: ignore[misc]
                pos[p] = max(pos[p], off + 1)
    finally:
        c.close()
    return out


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (the Java client's, librdkafka's ``murmur2_random``,
    which lossproof's writer uses) gives a keyed record: murmur2 of the key, made positive, modulo."""
    m = 0x5BD1E995
    n = len(key)
    h = (0x9747B28C ^ n) & 0xFFFFFFFF
    for i in range(0, n - n % 4, 4):
        k = (int.from_bytes(key[i : i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = key[n - n % 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def worker_pid(up_pid: int) -> int:
    """The pid of ``lossproof up``'s worker child."""
    import psutil

    for child in psutil.Process(up_pid).children():
        if "worker" in child.cmdline():
            return int(child.pid)
    raise AssertionError(f"no worker child of lossproof up ({up_pid})")
