"""Scaled out: two worker processes consume one Kafka topic into one PostgreSQL, with kill -9s.

Every report acknowledged by the ingest API ends up stored exactly once: the ledger covers it and
each of its points is in its series once, however often a killed worker's batch was re-read.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from lossproof import config as config_mod
from lossproof.dev.kafka import DevCluster
from lptest.kafka import new_topic
from lptest.pg_cluster import available, shared_cluster
from lptest.pipeline import Pipeline, Sender, expand

pytestmark = pytest.mark.postgres  # and kafka, by its directory


def _worker(p: Pipeline) -> subprocess.Popen[bytes]:
    log = open(p.data_dir.parent / f"worker2-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "lossproof", "worker", "--data-dir", str(p.data_dir), "--http-port", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )


def test_two_workers_one_topic_one_postgres_with_kill9(cluster: DevCluster, pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    if not available():
        pytest.fail("PostgreSQL is not installed: run scripts/deps/postgres.sh")
    pg = shared_cluster()
    topic = new_topic(cluster, prefix="pgw", partitions=4)
    p: Pipeline = pipeline_factory("kpg")
    cfg, _ = config_mod.init_data_dir(p.data_dir, p.key, p.port)
    cfg.log.backend = "kafka"
    cfg.log.kafka = topic
    cfg.store.backend = "postgres"
    cfg.store.dsn = pg.dsn()
    cfg.store.pg_schema = "w_" + uuid.uuid4().hex[:12]
    config_mod.save(cfg)
    p.start()  # ingest + worker 1 (restarted by `up` when killed)
    second = _worker(p)

    rng = random.Random(5)
    stop = threading.Event()
    senders = [Sender(p, f"kpg-{i}", stop, points=5) for i in range(4)]
    for s in senders:
        s.start()
    import psutil

    try:
        for _ in range(3):
            time.sleep(rng.uniform(2.0, 4.0))
            second.send_signal(signal.SIGKILL)
            second.wait()
            assert p.proc is not None
            for c in psutil.Process(p.proc.pid).children():
                if c.cmdline()[3:4] == ["worker"]:
                    c.kill()  # `up` restarts it
            time.sleep(rng.uniform(0.0, 1.0))
            second = _worker(p)
        time.sleep(2.0)
    finally:
        stop.set()
        for s in senders:
            s.join(30)
    try:
        for s in senders:
            assert len(s.acked) > 10, (s.agent, s.statuses)
            ledger = p.wait_stored(s.agent, s.acked, timeout=120)
            stored = expand(ledger["stored"])
            assert ledger["missing"] == [], ledger
            for i in (0, s.points - 1):
                status, q = p.get(
                    f"/v1/query?metric=cpu.user&from=0&to=9999999999999&label=host:{s.agent}&label=i:{i}"
                )
                assert status == 200 and len(q["series"]) == 1, q
                ts = [pt[0] for pt in q["series"][0]["points"]]
                assert ts == sorted(1_767_225_600_000 + seq * 1000 for seq in stored)
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()
