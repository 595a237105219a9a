"""Real agents with markers, for a pipeline a test runs itself (e.g. ``lossproof up``).

Each is the chaos driver (:mod:`lossproof.chaos.driver`): the real :class:`lossproof.agent.Agent`
with its real spool, making one report per tick with a marker point of its own, so that the chaos
audit (:mod:`lossproof.chaos.audit`) can say of every report it made whether the store holds it
exactly once, from the agent's own files rather than from what the pipeline claims.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from lossproof.chaos.audit import AgentTruth, AuditReport
from lossproof.chaos.remote import PipelineClient, run_audit
from lossproof.chaos.topology import Proc
from lossproof.chaos.truth import read_truth
from lptest import subprocess_env


class MarkerAgent:
    def __init__(self, root: Path, agent_id: str, url: str, key: str, tick: float = 0.1) -> None:
        self.agent_id = agent_id
        self.dir = root / agent_id
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "agent_id": agent_id,
            "api_key": key,
            "primary_url": url,
            "spool_dir": str(self.dir / "spool"),
            "interval_seconds": 3600.0,  # only the driver makes reports
            "spool_segment_bytes": 64 * 1024,
            "max_in_flight": 2,
            "request_timeout_seconds": 5.0,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "statsd_port": 0,
            "metrics_port": 0,
            "collect_host": False,
            "shutdown_drain_seconds": 3.0,
            "log_level": "WARNING",
        }
        (self.dir / "agent.toml").write_text(tomli_w.dumps(cfg))
        argv = [
            sys.executable,
            "-m",
            "lossproof.chaos.driver",
            "--config",
            str(self.dir / "agent.toml"),
            "--tick",
            str(tick),
            "--status",
            str(self.dir / "status.json"),
        ]
        self.proc = Proc(agent_id, argv, subprocess_env(), self.dir, stale=self.dir / "status.json")

    def start(self) -> None:
        self.proc.start(wait=False)

    def wait_running(self, timeout: float = 60) -> None:
        """Until the driver writes its status: its signal handlers are installed by then (a SIGUSR1
        that comes earlier kills the process: the default action)."""
        deadline = time.monotonic() + timeout
        while not self.status().get("run"):
            assert self.alive(), f"{self.agent_id} exited: {self.log()}"
            assert time.monotonic() < deadline, f"{self.agent_id} not running after {timeout}s"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: it stops making reports and sends what is pending for up to its drain time."""
        self.proc.stop(30)

    def alive(self) -> bool:
        return self.proc.alive()

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.dir / "status.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def truth(self) -> AgentTruth:
        return read_truth(self.agent_id, self.dir / "spool")

    def last_seq(self) -> int:
        """The last seq the agent has handed out (its spool's durable counter)."""
        return max((b for _, b in self.truth().created), default=0)

    def acked(self) -> set[int]:
        """Seqs the agent holds acknowledged: made, neither pending in its spool nor dropped by it."""
        t = self.truth()
        out = {s for a, b in t.created for s in range(a, b + 1)}
        out -= {s for a, b in t.pending for s in range(a, b + 1)}
        out -= {s for a, b, _ in t.dropped for s in range(a, b + 1)}
        return out

    def log(self) -> str:
        return self.proc.tail(3000)


def stored(client: PipelineClient, agent: str) -> set[int]:
    """Seqs the pipeline's ledger calls stored for ``agent``."""
    return {s for a, b in client.ledger(agent).get("stored", []) for s in range(int(a), int(b) + 1)}


def audit(client: PipelineClient, agents: list[MarkerAgent]) -> AuditReport:
    """The chaos audit over every agent (each must be stopped: its spool at rest)."""
    return run_audit(client, [a.truth() for a in agents])
