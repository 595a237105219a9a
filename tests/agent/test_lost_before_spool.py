"""What an agent loses before it reaches its spool reaches the server's accounting (real processes).

- Points dropped from memory: the agent's spool is on a small tmpfs that the test fills; reports
  cannot be written, the points wait in the agent's memory up to a bound, and past it the oldest are
  dropped.
- StatsD packets the kernel drops because the agent did not read them in time (here: it is stopped).
Neither ever had a seq, so before, the server never learned of them: the per-agent ledger showed
nothing lost while data was gone. Now each loss gets a seq recorded as dropped, with its count and why.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from lptest.agent import AgentProc, base_config, free_port, wait_for, write_config
from lptest.pipeline import Pipeline

pytestmark = pytest.mark.process

AGENT = "tiny-disk-agent"


def fill(mnt: Path) -> Path:
    """Fill the file system to the last byte; returns the file that does it."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def lost(p: Pipeline, kind: str = "unspooled", agent: str = AGENT) -> int:
    """How much the agent's ledger says it lost before the spool, for one reason: ``unspooled``
    (points) or ``statsd_dropped`` (packets)."""
    reasons = [r["reason"] for r in p.ledger(agent)["lost"]]
    return sum(int(m.group(1)) for r in reasons if (m := re.match(rf"{kind}: (\d+) ", r)))


def test_points_dropped_before_the_spool_are_counted_lost_by_the_server(
    pipeline: Pipeline, tiny_fs: Path, tmp_path: Path
) -> None:
    cfg = base_config(
        tmp_path,
        pipeline.url,
        pipeline.key,
        agent_id=AGENT,
        spool_dir=str(tiny_fs / "spool"),
        max_points_per_report=5,  # a memory bound of 50 points: host metrics pass it at once
    )
    agent = AgentProc(write_config(tmp_path / "agent.toml", **cfg), cfg)
    agent.start()
    try:
        agent.wait_started()
        wait_for(
            lambda: pipeline.get(f"/v1/agents/{AGENT}/ledger")[0] == 200, 30, "the agent's first reports"
        )
        filler = fill(tiny_fs)
        dropped = wait_for(
            lambda: agent.metrics().get("lossproof_agent_points_dropped_total", 0) or None,
            30,
            "points dropped in the agent while its spool cannot be written",
        )
        assert dropped > 0
        time.sleep(1.0)  # more drops while the disk stays full
        filler.unlink()

        # once the spool takes reports again no more points are dropped: the server's count must
        # come to the agent's own, every one of them
        def settled() -> int | None:
            total = agent.metrics()["lossproof_agent_points_dropped_total"]
            return int(total) if lost(pipeline) == total else None

        total = wait_for(settled, 30, "the server counting the dropped points as lost")
        assert total >= dropped
        ledger = pipeline.ledger(AGENT)
        assert ledger["missing"] == [], ledger  # a seq with no report is lost, not missing
        assert agent.stop() == 0, agent.logs()[-3000:]
    finally:
        if agent.alive():
            agent.kill9()


def test_statsd_packets_the_kernel_dropped_are_counted_lost_by_the_server(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    port = free_port(socket.SOCK_DGRAM)
    name = "statsd-agent"
    cfg = base_config(
        tmp_path, pipeline.url, pipeline.key, agent_id=name, collect_host=False, statsd_port=port
    )
    agent = AgentProc(write_config(tmp_path / "agent.toml", **cfg), cfg)
    agent.start()
    try:
        agent.wait_started()
        packet = b"lp.test.counter:1|c|#pad:" + b"x" * 900  # one line a packet
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(packet, ("127.0.0.1", port))
            sent += 1
            lines = "lossproof_agent_statsd_lines_total"
            wait_for(lambda: agent.metrics().get(lines, 0) >= 1, 10, "the first line read")
            assert agent.proc is not None
            os.kill(agent.proc.pid, signal.SIGSTOP)  # reads nothing: the receive buffer fills
            try:
                for _ in range(30_000):  # ~28 MB: over any receive buffer the kernel grants
                    s.sendto(packet, ("127.0.0.1", port))
                    sent += 1
            finally:
                os.kill(agent.proc.pid, signal.SIGCONT)
            time.sleep(1.0)
            for _ in range(10):  # packets queued after the drops carry their count
                s.sendto(packet, ("127.0.0.1", port))
                sent += 1
                time.sleep(0.05)

        def accounted() -> tuple[int, int] | None:
            read = int(agent.metrics().get("lossproof_agent_statsd_lines_total", 0))
            dropped = lost(pipeline, "statsd_dropped", name)
            return (read, dropped) if read + dropped == sent else None

        read, dropped = wait_for(accounted, 30, f"every one of {sent} packets read or counted lost")
        assert dropped > 0 and read > 0
        assert agent.metrics()["lossproof_agent_statsd_packets_dropped_total"] == dropped
        assert agent.stop() == 0, agent.logs()[-3000:]
    finally:
        if agent.alive():
            agent.kill9()
