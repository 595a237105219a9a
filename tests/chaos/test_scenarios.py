"""Every chaos scenario, for a few seconds of load, on the embedded log with real processes.

Each run starts 2 ingest + 2 worker processes (one per log partition), a fallback receiver and two
real agents, injects the scenario's faults, drains and audits. Scenario 5 is the deliberate bug:
it passes only when the audit *detects* the silent loss.
"""

from __future__ import annotations

import pytest

from lossproof.chaos.runner import run_scenario, table
from lossproof.chaos.scenarios import SCENARIOS, Scenario

DURATION = 4.0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scn", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scn: Scenario) -> None:
    lines: list[str] = []
    r = run_scenario(scn, duration=DURATION, seed=7, agents=2, say=lines.append)
    log = "\n".join([*lines, *table([r])])
    if r.verdict == "SKIP":
        pytest.skip(r.why)  # a skip is never counted as a pass
    assert r.verdict == "PASS", log
    assert r.faults > 0, log
    t = r.totals
    assert t["created"] > 0, log
    if scn.expect_silent_loss:
        assert t["unaccounted"] > 0, log
    else:
        assert t["duplicated"] == 0 and t["unaccounted"] == 0 and t["delayed"] == 0, log
        assert t["created"] == t["stored_once"] + t["lost_accounted"], log
    if scn.name == "spool-full":
        assert r.lost_reasons.get("spool_full", 0) > 0, log
    if scn.name == "primary-down":
        assert any("on the fallback" in n and not n.startswith("0/") for n in r.notes), log
