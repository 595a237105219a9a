"""Data acknowledged and then lost inside the pipeline comes back from the agent's replay window.

The agent streams to an ingest process with no worker running, so its reports are acknowledged
(durable in the log) but not yet stored. Then the log loses a range of records on purpose and the
whole pipeline starts: the worker stores what is left, the ledger finds the holes, a response asks
the agent to replay them, and the agent resends them from its window: the store ends up complete.

Also, against a scripted server: a replay of seqs that left the window is answered with a
``replay_window_expired`` drop instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from lossproof import config as config_mod
from lossproof.agent import Agent, AgentConfig
from lossproof.log.embedded.damage import lose_records, record_locations
from lptest.agent import (
    HTTP,
    AgentProc,
    Received,
    StandIn,
    base_config,
    spool_records,
    wait_for,
    write_config,
)
from lptest.pipeline import Pipeline


def test_log_loses_acknowledged_range_and_agent_replays_it(pipeline_factory: Any, tmp_path: Path) -> None:
    p: Pipeline = pipeline_factory()
    config_mod.init_data_dir(p.data_dir, p.key, p.port)
    with open(tmp_path / "ingest-only.log", "wb") as ingest_log:
        # the ingest API alone: reports are acknowledged (durable in the log) but nothing stores them
        ingest = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lossproof",
                "ingest",
                "--data-dir",
                str(p.data_dir),
                "--port",
                str(p.port),
            ],
            env={**os.environ, "LOSSPROOF_API_KEY": p.key},
            stdout=ingest_log,
            stderr=subprocess.STDOUT,
        )
    cfg = base_config(tmp_path, p.url, p.key, agent_id="replayer", collect_host=True)
    agent = AgentProc(write_config(tmp_path / "agent.toml", **cfg), cfg)
    try:
        wait_for(lambda: HTTP.request("GET", p.url + "/healthz").status == 200, 30, "ingest to start")
        agent.start()
        agent.wait_started()
        wait_for(
            lambda: (
                agent.metrics().get('lossproof_agent_reports_acked_total{destination="primary"}', 0) >= 40
            ),
            30,
            "40 reports acknowledged",
        )
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(30)

        log_dir = p.data_dir / "log"
        offsets = [loc.offset for loc in record_locations(log_dir)]
        assert len(offsets) >= 20
        first, last = offsets[5], offsets[12]
        assert lose_records(log_dir, first, last) == last - first + 1

        p.start()  # the whole pipeline: the worker now reads the damaged log
        upto = int(agent.metrics()["lossproof_agent_last_seq"])
        ledger = p.wait_stored("replayer", set(range(1, upto + 1)), timeout=60)
        assert ledger["lost"] == [], ledger
        m = agent.metrics()
        assert m["lossproof_agent_reports_replayed_total"] >= 1, m
        requested = [
            float(line.split()[-1])
            for line in p.metrics().splitlines()
            if line.startswith("lossproof_ingest_replay_requested_total")
        ]
        assert requested and requested[0] > 0, "the ingest API never asked for a replay"
        assert agent.stop() == 0
    finally:
        if ingest.poll() is None:
            ingest.kill()
        if agent.alive():
            agent.kill9()
    final = max(spool_records(agent.spool_dir))
    ledger = p.wait_stored("replayer", set(range(1, final + 1)), timeout=30)
    assert ledger["stored"] == [[1, final]] and ledger["missing"] == [], ledger
    assert "agent.replay_requested" in agent.logs()


def test_replay_outside_the_window_is_reported_as_expired(tmp_path: Path) -> None:
    asked: dict[str, bool] = {}

    def policy(srv: StandIn, req: Received) -> tuple[int, dict[str, Any], dict[str, str]]:
        acked = [[s, s] for s in req.seqs]
        # once seq 40 exists, ask (once) for 1..3 (long gone) and 39 (still in the window)
        if 40 in req.seqs and not asked:
            asked["yes"] = True
            return 200, {"acked": acked, "replay": [[1, 3], [39, 39]]}, {}
        return 200, {"acked": acked, "replay": []}, {}

    srv = StandIn(policy).start()
    cfg = AgentConfig(
        agent_id="win",
        api_key="k",
        primary_url=srv.url,
        spool_dir=tmp_path / "spool",
        interval_seconds=3600,
        statsd_port=0,
        metrics_port=0,
        collect_host=False,
        replay_window_seconds=0,  # acknowledged files go as soon as they are full
        spool_segment_bytes=4096,
        max_batch_reports=1,
    )
    try:
        with Agent(cfg) as agent:
            for i in range(40):
                agent.record("m", i, {"pad": "x" * 200})
                agent.flush()
                wait_for(
                    lambda: agent.spool is not None and agent.spool.stats().pending_reports == 0, 10, "ack"
                )
                assert agent.spool is not None
                agent.spool.maintain()
            wait_for(lambda: (1, 3, "replay_window_expired") in srv.reported_drops(), 10, "the expired drop")
            wait_for(lambda: [r for r in srv.snapshot() if r.seqs == [39]], 10, "seq 39 resent")
            spool = agent.spool
            assert spool is not None
            wait_for(lambda: spool.unreported_drops() == [], 10, "the drop to be confirmed")
    finally:
        srv.stop()
    seqs = [s for r in srv.snapshot() for s in r.seqs]
    assert seqs.count(39) == 2 and seqs.count(1) == 1
