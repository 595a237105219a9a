"""Every chaos scenario, for a few seconds of load, on the embedded log with real processes.

Each run starts 2 ingest + 2 worker processes (one per log partition), a fallback receiver and two
real agents, injects the scenario's faults, drains and audits. Scenario 5 is the deliberate bug:
it passes only when the audit *detects* the silent loss.
"""

from __future__ import annotations

import pytest

from lossproof.chaos.runner import run_scenario
from lossproof.chaos.scenarios import SCENARIOS, Scenario
from lptest.verdict import assert_passed

pytestmark = pytest.mark.chaos

DURATION = 4.0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scn", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scn: Scenario) -> None:
    lines: list[str] = []
    r = run_scenario(scn, duration=DURATION, seed=7, agents=2, say=lines.append)
    assert_passed(r, lines)
