"""``lossproof dev kafka`` (1 node) and ``lossproof kafka init``: safe settings, or an explicit --unsafe."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from lossproof.config import KafkaLogConfig
from lossproof.dev.kafka import DevCluster, dev_group
from lossproof.log.base import LogUnavailable
from lossproof.log.kafka import KafkaLogWriter, KafkaTopicUnsafe
from lossproof.log.kafka.cli import kafka_group


def test_one_node_dev_cluster_needs_unsafe(tmp_path: Path) -> None:
    d = tmp_path / "k1"
    runner = CliRunner()
    up = runner.invoke(
        dev_group, ["kafka", "up", "--nodes", "1", "--port", "0", "--dir", str(d), "--heap", "256m"]
    )
    try:
        assert up.exit_code == 0, up.output
        bootstrap = up.output.strip().splitlines()[-1]
        assert bootstrap.startswith("127.0.0.1:")
        status = runner.invoke(dev_group, ["kafka", "status", "--dir", str(d)])
        assert "node 1" in status.output and "running" in status.output

        base = [
            "init",
            "--data-dir",
            str(tmp_path / "nodata"),
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            "t1",
        ]
        # The safe default (RF 3) cannot be created on one broker; RF 1 is refused without --unsafe.
        r = runner.invoke(kafka_group, base)
        assert r.exit_code != 0
        r = runner.invoke(kafka_group, [*base, "--replication-factor", "1", "--min-insync-replicas", "1"])
        assert r.exit_code != 0 and "unsafe" in r.output
        r = runner.invoke(
            kafka_group, [*base, "--replication-factor", "1", "--min-insync-replicas", "1", "--unsafe"]
        )
        assert r.exit_code == 0, r.output
        assert "created topic 't1'" in r.output
        r = runner.invoke(kafka_group, base)  # validating the existing topic: still refused
        assert r.exit_code != 0 and "replication factor 1 < 3" in r.output

        cfg = KafkaLogConfig(
            bootstrap_servers=bootstrap, topic="t1", replication_factor=1, min_insync_replicas=1
        )

        async def start(unsafe: bool) -> int:
            w = KafkaLogWriter(cfg.model_copy(update={"unsafe": unsafe}), retention_check_seconds=3600)
            await w.start()
            try:
                return (await w.append(b"k", b"v")).offset
            finally:
                await w.close()

        with pytest.raises(KafkaTopicUnsafe, match="replication factor 1"):
            asyncio.run(start(False))
        assert asyncio.run(start(True)) == 0

        # A topic that does not exist: the writer starts, refuses appends, says why.
        async def missing() -> tuple[bool, str]:
            w = KafkaLogWriter(cfg.model_copy(update={"topic": "nope"}), retention_check_seconds=3600)
            await w.start()
            try:
                with pytest.raises(LogUnavailable, match="does not exist"):
                    await w.append(b"k", b"v")
                return w.healthy()
            finally:
                await w.close()

        ok, why = asyncio.run(missing())
        assert not ok and "kafka init" in why

        kill = runner.invoke(dev_group, ["kafka", "kill", "1", "--dir", str(d)])
        assert kill.exit_code == 0
        assert not DevCluster(d).running(1)
        again = runner.invoke(dev_group, ["kafka", "up", "--nodes", "1", "--dir", str(d), "--heap", "256m"])
        assert again.exit_code == 0, again.output
        assert DevCluster(d).running(1)
    finally:
        runner.invoke(dev_group, ["kafka", "down", "--dir", str(d)])
    assert not DevCluster(d).running(1)
