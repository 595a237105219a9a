"""Real brokers killed with SIGKILL under continuous appends through KafkaLogWriter.

The appender (tests/kafka/kafka_appender.py) prints every acknowledged append (partition, offset,
time) and every refused one. The contract: an acknowledged record is never lost, and no append is
acknowledged while the topic cannot meet min.insync.replicas.
"""

from __future__ import annotations

import signal
import time

from lossproof.dev.kafka import DevCluster
from lptest.kafka import Appender, new_topic, read_everything
from lptest.log_harness import make_value

VALUE_SIZE = 1000


def check_all_readable(cfg, appender: Appender) -> None:  # type: ignore[no-untyped-def]
    records, gaps = read_everything(cfg, "audit")
    assert not gaps, gaps
    by_pos = {(r.partition, r.offset): r for r in records}
    positions = [(a.partition, a.offset) for a in appender.acks]
    assert len(set(positions)) == len(positions), "a position was acknowledged twice"
    missing = [p for p in positions if p not in by_pos]
    assert not missing, f"{len(missing)} of {len(positions)} acknowledged records lost, e.g. {missing[:5]}"
    for a in appender.acks:
        r = by_pos[(a.partition, a.offset)]
        assert (r.key, r.value) == (a.key, make_value(a.tag, VALUE_SIZE))


def leader_of(cluster: DevCluster, topic: str, partition: int) -> int:
    from lptest.kafka import admin

    md = admin(cluster).list_topics(topic=topic, timeout=10)
    return int(md.topics[topic].partitions[partition].leader)


def test_one_broker_down_then_two_then_back(cluster: DevCluster) -> None:
    cfg = new_topic(cluster, prefix="kill", partitions=3)
    app = Appender.spawn(cfg, concurrency=8, value_size=VALUE_SIZE)
    try:
        app.wait_acks(300)

        # One broker down (the leader of partition 0): a brief window, then appends succeed again.
        victim = leader_of(cluster, cfg.topic, 0)
        t1 = time.time()
        cluster.kill(victim)
        app.run_for(30)
        t1_end = time.time()
        late = app.acks_between(t1_end - 8, t1_end)
        assert len(late) > 50, f"appends did not recover with one broker down ({len(late)} acks in 8 s)"
        assert not app.fails_between(t1_end - 8, t1_end), "failures long after one broker died"
        assert {a.partition for a in late} == {0, 1, 2}
        window = [f.t - t1 for f in app.fails_between(t1, t1_end)]
        last = max(window, default=0)
        print(f"one broker down: {len(window)} refused appends, the last {last:.1f}s after the kill")

        # Two brokers down: min.insync.replicas=2 cannot be met. Appends fail, never succeed.
        second = next(n.id for n in cluster.nodes() if n.id != victim)
        t2 = time.time()
        cluster.kill(second)
        app.run_for(20)
        t2_end = time.time()
        assert app.fails_between(t2 + 2, t2_end), "no append was refused with two of three brokers down"
        acked_during = app.acks_between(t2 + 2, t2_end)
        assert not acked_during, f"{len(acked_during)} appends acknowledged while min ISR could not be met"
        assert all("Kafka" in f.reason for f in app.fails_between(t2, t2_end))

        # Both back: appends succeed again.
        t3 = time.time()
        cluster.start_node(victim, heap="384m")
        cluster.start_node(second, heap="384m")
        cluster.wait_healthy(120)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(app.acks_between(t3, time.time())) < 200:
            app.run_for(1)
        recovered = app.acks_between(t3, time.time())
        assert len(recovered) >= 200, f"only {len(recovered)} acks after both brokers came back"
        print(f"two brokers back: first ack {min(a.t for a in recovered) - t3:.1f}s after restart")
    finally:
        app.kill9()
    check_all_readable(cfg, app)


def test_all_brokers_killed_at_once(cluster: DevCluster) -> None:
    cfg = new_topic(cluster, prefix="killall", partitions=3)
    app = Appender.spawn(cfg, concurrency=8, value_size=VALUE_SIZE)
    try:
        app.wait_acks(500)
        pids = [p for p in (cluster._pid(n.id) for n in cluster.nodes()) if p is not None]
        import os

        for pid in pids:  # as close to "at once" as signals get
            os.kill(pid, signal.SIGKILL)
        t_kill = time.time()
        for n in cluster.nodes():
            cluster.kill(n.id)  # waits until each is gone
        app.run_for(5)
        acked_down = app.acks_between(t_kill + 1, time.time())
        assert not acked_down, "appends acknowledged with every broker dead"
        t_up = time.time()
        cluster.up(3, port=0, heap="384m", timeout=180)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(app.acks_between(t_up, time.time())) < 200:
            app.run_for(1)
        assert len(app.acks_between(t_up, time.time())) >= 200, "appends did not resume after restart"
    finally:
        app.kill9()
    check_all_readable(cfg, app)
