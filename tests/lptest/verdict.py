"""What every chaos scenario test asserts about a run's result."""

from __future__ import annotations

from lossproof.chaos.runner import Result, table
from lptest import require


def assert_passed(r: Result, lines: list[str]) -> str:
    """The scenario passed on its own terms and the audit's totals add up; returns the run's log."""
    log = "\n".join([*lines, *table([r])])
    if r.verdict == "SKIP":  # what the machine lacks (network namespaces): never counted as a pass
        require(False, r.why)
    assert r.verdict == "PASS", log
    assert r.faults > 0, log
    t = r.totals
    assert t["created"] > 0, log
    if r.scenario.expect_silent_loss:
        assert t["unaccounted"] > 0, log
    else:
        assert t["duplicated"] == 0 and t["unaccounted"] == 0 and t["delayed"] == 0, log
        assert t["created"] == t["stored_once"] + t["lost_accounted"], log
    if r.scenario.name == "spool-full":
        assert r.lost_reasons.get("spool_full", 0) > 0, log
    if r.scenario.name == "primary-down":
        assert any("on the fallback" in n and not n.startswith("0/") for n in r.notes), log
    return log
