"""The chaos scenarios that apply to Kafka, on a real 3-node cluster, with real processes.

The cluster is the session's shared one (``tests/kafka/kafka_support.py``); each scenario gets a
fresh topic, kills and pauses real brokers, and leaves every broker running when it returns.
Scenario 10 (the embedded log's fsync hook) does not apply to Kafka and must say so.
"""

from __future__ import annotations

import pytest

from lossproof.chaos.runner import run_scenario
from lossproof.chaos.scenarios import SCENARIOS, Scenario
from lossproof.chaos.topology import TopologySpec
from lptest.kafka import ensure_all_up, session_cluster
from lptest.verdict import assert_passed

pytestmark = [pytest.mark.chaos, pytest.mark.kafka]

DURATION = 5.0
KAFKA_SCENARIOS = [s for s in SCENARIOS if "kafka" in s.backends]


@pytest.fixture
def spec() -> TopologySpec:
    c = session_cluster()
    ensure_all_up(c)
    return TopologySpec(log="kafka", kafka_dir=str(c.directory))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scn", KAFKA_SCENARIOS, ids=[s.name for s in KAFKA_SCENARIOS])
def test_scenario_on_kafka(scn: Scenario, spec: TopologySpec) -> None:
    lines: list[str] = []
    r = run_scenario(scn, duration=DURATION, seed=11, agents=2, say=lines.append, spec=spec)
    log = assert_passed(r, lines)
    assert any("Kafka topic" in line for line in lines), log  # it really ran on Kafka
    assert r.peak_rss.get("broker", 0) > 0, log
    if scn.name == "log-loses-data":
        assert any("Kafka lost" in line and "Kafka lost 0 " not in line for line in lines), log
    if scn.name == "kill-all":
        assert any("Kafka brokers at once" in line for line in lines), log
    assert all(b.running for b in session_cluster().status()), "a scenario left a broker down"


def test_slow_disk_says_why_it_does_not_apply_to_kafka(spec: TopologySpec) -> None:
    scn = next(s for s in SCENARIOS if s.name == "slow-disk")
    r = run_scenario(scn, duration=1, seed=1, agents=1, say=lambda _m: None, spec=spec)
    assert r.verdict == "SKIP" and "embedded log" in r.why
