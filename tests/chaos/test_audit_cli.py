"""`lossproof audit` against a running pipeline: the agents' spools against the ledger and the store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lossproof.agent.spool import Spool
from lossproof.chaos.cli import audit_command
from lossproof.chaos.topology import Topology, TopologySpec


@pytest.mark.process
def test_audit_command_passes_a_clean_run_and_fails_on_a_silent_loss(tmp_path: Path) -> None:
    topo = Topology(tmp_path / "t", TopologySpec(agents=2, ingests=1, workers=1))
    try:
        topo.start()
        time.sleep(2)
        assert topo.drain(60)
        topo.stop_agents()
        spools = [f"{agent}={d}" for agent, d in topo.spool_dirs()]
        runner = CliRunner()
        base = ["--url", topo.url, "--api-key", topo.key]
        res = runner.invoke(audit_command, [*base, *[a for s in spools for a in ("--spool", s)], "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["ok"] and out["totals"]["created"] > 0
        assert out["totals"]["stored_once"] == out["totals"]["created"]

        # An agent that believes 5 reports were acknowledged, which the pipeline never saw: silent loss.
        ghost = tmp_path / "ghost"
        with Spool(ghost) as s:
            s.append([lambda seq: os.urandom(20)] * 5)
            s.ack(range(1, 6))
        res = runner.invoke(audit_command, [*base, "--spool", f"ghost={ghost}", "--spool", spools[0]])
        assert res.exit_code == 1, res.output
        assert "audit: FAIL" in res.output
        ghost_line = next(line for line in res.output.splitlines() if line.startswith("ghost"))
        assert ghost_line.split()[-1] == "5"  # UNACCT
    finally:
        topo.close()
