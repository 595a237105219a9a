"""kill -9 the agent process at random moments while it streams; restart it each time.

Every seq it ever created is stored exactly once (the ledger's stored ranges are exactly 1..last seq,
nothing missing, nothing lost) and no seq is ever reused: after each kill the spool is read as it
lies on disk and each seq must always hold the same report, and every restart resumes above every
seq seen before.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from pathlib import Path

from lptest.agent import AgentProc, base_config, free_port, spool_records, wait_for, write_config
from lptest.pipeline import Pipeline


def test_kill9_agent_while_streaming(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    statsd = free_port(socket.SOCK_DGRAM)
    cfg = base_config(tmp_path, p.url, p.key, agent_id="k9", interval_seconds=0.05, statsd_port=statsd)
    agent = AgentProc(write_config(tmp_path / "agent.toml", **cfg), cfg)
    rng = random.Random(1234)
    seen: dict[int, str] = {}
    stop = threading.Event()

    def feed() -> None:
        # an application pushing StatsD the whole time, through every kill and restart
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            n = 0
            while not stop.is_set():
                n += 1
                s.sendto(
                    f"app.n:{n}|g\napp.hits:1|c|#k:v\napp.lat:{n % 97}|ms".encode(), ("127.0.0.1", statsd)
                )
                time.sleep(0.002)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()

    def check_spool() -> None:
        for seq, payload in spool_records(agent.spool_dir).items():
            digest = hashlib.sha256(payload).hexdigest()
            assert seen.setdefault(seq, digest) == digest, f"seq {seq} was reused for another report"

    try:
        agent.start()
        agent.wait_started()
        for _ in range(7):
            time.sleep(rng.uniform(0.2, 1.5))
            agent.kill9()
            check_spool()
            agent.start()
            started = agent.wait_started()
            assert started["next_seq"] > max(seen, default=0), (started, max(seen))
            assert started["lost_on_recovery"] == [], started
        time.sleep(1.0)
        assert agent.stop() == 0
        check_spool()
    finally:
        stop.set()
        if agent.alive():
            agent.kill9()

    last = max(seen)
    assert sorted(seen) == list(range(1, last + 1)), "a created seq is missing from the spool"
    assert last > 50, last
    ledger = p.wait_stored("k9", set(range(1, last + 1)), timeout=30)
    assert ledger["stored"] == [[1, last]], ledger
    assert ledger["missing"] == [] and ledger["lost"] == [], ledger
    # exactly once: the agent's own seq count is what the store counted (a duplicate would be a
    # second stored report for one seq, which the store refuses; a reused seq would have failed above)
    status, agents = p.get("/v1/agents")
    assert status == 200
    me = next(a for a in agents["agents"] if a["agent"] == "k9")
    assert me["max_seq"] == last
    wait_for(lambda: "agent.stopped" in agent.run_log(), 5, "a clean stop")
