"""The Kafka side of a chaos topology: a 3-node local cluster whose brokers the scenarios kill -9,
pause and restart like any other process, one topic per scenario, and the second post-mortem's
data loss done the way Kafka can lose data (records past the committed offsets deleted).

The cluster is ``lossproof dev kafka``'s :class:`~lossproof.dev.kafka.DevCluster`: started here
when the run owns it, or an existing one (``TopologySpec.kafka_dir``) shared by several scenarios;
either way every broker is running again when a scenario ends (:meth:`KafkaSide.heal`).
"""

from __future__ import annotations

import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossproof.chaos.faultable import Faultable
from lossproof.config import KafkaLogConfig
from lossproof.dev.kafka import DevCluster

NODES = 3
HEAP = "384m"
PARTITIONS = 2


@dataclass
class Broker(Faultable):
    """One broker with the same handles as :class:`~lossproof.chaos.topology.Proc`, so a scenario can
    kill, pause or restart it without caring what it is."""

    cluster: DevCluster
    node: int
    paused: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.name = f"broker{self.node}"

    @property
    def pid(self) -> int | None:
        return next((s.pid for s in self.cluster.status() if s.id == self.node), None)

    def alive(self) -> bool:
        return self.cluster.running(self.node)

    def start(self, wait: bool = True, timeout: float = 120.0) -> None:
        self.cluster.start_node(self.node, heap=HEAP)
        self.paused = False
        if wait:
            self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 120.0) -> bool:
        self.cluster.wait_healthy(timeout)
        return True

    def kill9(self) -> None:
        """SIGKILL (a paused broker dies too) and wait for its death."""
        self.cluster.kill(self.node, signal.SIGKILL)
        self.paused = False


@dataclass
class KafkaSide:
    """The cluster (owned or shared), this topology's topic, and its brokers as faultable processes."""

    root: Path
    shared_dir: str = ""
    topic: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:10]}")
    cluster: DevCluster | None = None
    brokers: list[Broker] = field(default_factory=list)

    @property
    def owned(self) -> bool:
        return not self.shared_dir

    def start(self) -> KafkaLogConfig:
        from lossproof.log.kafka.admin import create_topic

        directory = Path(self.shared_dir) if self.shared_dir else self.root / "kafka"
        # detach=False: brokers this run starts stay in its process group (a Ctrl-C stops them too)
        self.cluster = DevCluster(directory, detach=False)
        self.cluster.up(NODES, port=0, heap=HEAP, timeout=180)
        self.brokers = [Broker(self.cluster, n.id) for n in self.cluster.nodes()]
        cfg = KafkaLogConfig(
            bootstrap_servers=self.cluster.bootstrap,
            topic=self.topic,
            partitions=PARTITIONS,
            replication_factor=NODES,
            min_insync_replicas=2,
            session_timeout_seconds=6.0,
        )
        create_topic(self.admin(), cfg)
        return cfg

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        assert self.cluster is not None
        return AdminClient({"bootstrap.servers": self.cluster.bootstrap, "log_level": 0})

    def heal(self) -> None:
        """Every broker running and unpaused, and the cluster healthy."""
        for b in self.brokers:
            if b.paused:
                b.resume()
        if self.cluster is not None:
            self.cluster.up(NODES, port=0, heap=HEAP, timeout=180)

    def delete_past_committed(self) -> int:
        """Delete every record of the topic up to its end (``AdminClient.delete_records``): whatever
        lay past the workers' committed offsets (acknowledged, never stored) is gone, as in an
        all-broker crash that loses data. Returns how many records past the commits vanished."""
        from confluent_kafka import TopicPartition

        from lossproof.log.kafka.admin import committed_floor, end_offsets

        admin = self.admin()
        parts = list(range(PARTITIONS))
        ends = end_offsets(admin, self.topic, parts, timeout=30)
        floor = committed_floor(admin, self.topic, parts, timeout=30)
        targets = [TopicPartition(self.topic, p, end) for p, end in ends.items() if end > 0]
        for f in admin.delete_records(targets, request_timeout=30).values():
            f.result(timeout=30)
        return sum(max(0, end - floor.get(p, 0)) for p, end in ends.items())

    def close(self) -> None:
        if self.cluster is None:
            return
        if self.owned:
            for b in self.brokers:
                b.kill9()
            shutil.rmtree(self.root / "kafka", ignore_errors=True)
        else:
            # a shared cluster outlives this scenario: leave it whole, drop this scenario's topic
            self.heal()
            try:
                for f in self.admin().delete_topics([self.topic], operation_timeout=30).values():
                    f.result(timeout=30)
            except Exception:  # a leftover topic in a test cluster is harmless
                pass
