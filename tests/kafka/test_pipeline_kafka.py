"""End to end: a real ``lossproof up`` with ``log.backend = "kafka"`` on the 3-node dev cluster.

Reports go through the ingest API into Kafka and through the worker into the store. With two of
three brokers down the API answers 503 + Retry-After (never 200); once they are back, everything
acknowledged is stored.
"""

from __future__ import annotations

import time

from lossproof import config as config_mod
from lossproof.dev.kafka import DevCluster
from lptest.kafka import new_topic
from lptest.pipeline import Pipeline, expand, report


def test_up_with_kafka_log(cluster: DevCluster, pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(cluster, prefix="e2e", partitions=3)
    p: Pipeline = pipeline_factory("kdata")
    cfg, _ = config_mod.init_data_dir(p.data_dir, p.key, p.port)
    cfg.log.backend = "kafka"
    cfg.log.kafka = topic
    config_mod.save(cfg)
    p.start()

    acked: set[int] = set()
    for seq in range(1, 41):
        r = p.post_reports("agent-k", [report(seq)])
        assert r.status == 200, r.data
        acked.add(seq)
    p.wait_stored("agent-k", acked, timeout=60)

    # Two brokers down: min.insync.replicas cannot be met. 503 with Retry-After, never 200.
    nodes = [n.id for n in cluster.nodes()]
    cluster.kill(nodes[0])
    cluster.kill(nodes[1])
    for seq in range(41, 45):
        r = p.post_reports("agent-k", [report(seq)])
        assert r.status == 503, (r.status, r.data)
        assert r.headers.get("Retry-After")
    cluster.start_node(nodes[0], heap="384m")
    cluster.start_node(nodes[1], heap="384m")
    cluster.wait_healthy(120)

    # The agent retries what was refused; everything is stored once the log is back.
    deadline = time.monotonic() + 120
    pending = list(range(41, 61))
    while pending and time.monotonic() < deadline:
        seq = pending[0]
        r = p.post_reports("agent-k", [report(seq)])
        if r.status == 200:
            acked.add(seq)
            pending.pop(0)
        else:
            assert r.status == 503, (r.status, r.data)
            time.sleep(1)
    assert not pending, f"appends did not resume: {pending[:3]}..."
    ledger = p.wait_stored("agent-k", acked, timeout=90)
    assert expand(ledger["stored"]) >= acked
    metrics = p.metrics()
    assert "lossproof_log_append_errors_total" in metrics
