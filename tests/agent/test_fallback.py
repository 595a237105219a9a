"""Primary down → the agent spools → after ``fallback_after_seconds`` it sends to the fallback →
primary back → the agent returns to it. Then the primary's ledger has holes where the fallback
took the reports; it asks for them and the agent resends them from its replay window, so the
primary ends up complete without waiting for ``lossproof replay``.

Runs against a stand-in fallback (records what it gets) and, when available, the real
``lossproof fallback`` receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lptest.agent import (
    HTTP,
    AgentProc,
    StandIn,
    base_config,
    free_port,
    spool_records,
    wait_for,
    write_config,
)
from lptest.pipeline import Pipeline


def _real_fallback_argv() -> list[str] | None:
    from lossproof.cli import cli

    if "fallback" in getattr(cli, "commands", {}):
        return [sys.executable, "-m", "lossproof", "fallback"]
    try:
        r = subprocess.run(
            [sys.executable, "-m", "lossproof.fallback", "fallback", "--help"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [sys.executable, "-m", "lossproof.fallback", "fallback"] if r.returncode == 0 else None


class RealFallback:
    def __init__(self, argv: list[str], data_dir: Path, key: str) -> None:
        self.port = free_port()
        self.log = data_dir.with_suffix(".log")
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(
                [*argv, "--data-dir", str(data_dir), "--port", str(self.port), "--api-key", key],
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LOSSPROOF_API_KEY": key},
            )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(
            lambda: HTTP.request("GET", self.url + "/healthz").status == 200, 30, "the fallback to start"
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(params=["stand-in", "real"])
def fallback(request: pytest.FixtureRequest, tmp_path: Path, pipeline: Pipeline) -> Iterator[object]:
    if request.param == "stand-in":
        fb = StandIn().start()
        yield fb
        fb.stop()
        return
    argv = _real_fallback_argv()
    assert argv is not None, "`lossproof fallback` is not available"
    real = RealFallback(argv, tmp_path / "fallback-data", pipeline.key)
    yield real
    real.stop()


def test_fallback_and_back(pipeline: Pipeline, fallback: StandIn | RealFallback, tmp_path: Path) -> None:
    p = pipeline
    cfg = base_config(
        tmp_path,
        p.url,
        p.key,
        agent_id="fb-agent",
        fallback_urls=[fallback.url],
        fallback_after_seconds=2.0,
        probe_interval_seconds=0.5,
    )
    agent = AgentProc(write_config(tmp_path / "agent.toml", **cfg), cfg)
    try:
        agent.start()
        agent.wait_started()
        wait_for(lambda: p.ledger("fb-agent")["stored"], 20, "reports stored by the primary")

        p.kill9()
        down_at = time.monotonic()

        def on_fallback() -> bool:
            m = agent.metrics()
            return (
                m.get('lossproof_agent_destination{destination="fallback"}') == 1
                and m.get('lossproof_agent_reports_acked_total{destination="fallback"}', 0) >= 5
            )

        wait_for(on_fallback, 30, "the agent to use the fallback")
        # (the primary answered 200 until the kill, so its failures started then)
        assert time.monotonic() - down_at >= 1.9, "switched before fallback_after_seconds"
        if isinstance(fallback, StandIn):
            assert len(fallback.acked_seqs()) >= 5

        p.start()
        wait_for(
            lambda: agent.metrics().get('lossproof_agent_destination{destination="primary"}') == 1,
            30,
            "the agent to return to the primary",
        )
        # keep the agent running: the primary asks for the fallback's reports and the agent resends
        # them from its replay window
        upto = int(agent.metrics()["lossproof_agent_last_seq"])
        p.wait_stored("fb-agent", set(range(1, upto + 1)), timeout=60)
        m = agent.metrics()
        assert m["lossproof_agent_reports_replayed_total"] > 0
        assert agent.stop() == 0
    finally:
        if agent.alive():
            agent.kill9()

    last = max(spool_records(agent.spool_dir))
    ledger = p.wait_stored("fb-agent", set(range(1, last + 1)), timeout=30)
    assert ledger["stored"] == [[1, last]] and ledger["missing"] == [] and ledger["lost"] == [], ledger
