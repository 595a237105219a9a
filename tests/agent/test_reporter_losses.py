"""The reporter's losses before the spool, recorded as dropped seqs: a loss's reason carries the
spool's OSError text, which carries its path, and a path that is not UTF-8 must not poison the
spool's state (msgpack refuses surrogate-escaped text; found by review); a StatsD drop storm is
recorded once a minute, not once a report."""
from __future__ import annotations

import os
from pathlib import Path

from lossproof.agent.metrics import AgentMetrics
from lossproof.agent.report import Buffer, Point
from lossproof.agent.reporter import Reporter
from lossproof.agent.request import encode_request
from lossproof.agent.spool import Spool
from lossproof.segments.fs import FaultyFS


class Faults(dict):
    def get(self, name, default=None):  # type: ignore[override]
        return super().get(name, default)


def test_a_spool_dir_whose_name_is_not_utf8_keeps_the_agent_reporting(tmp_path: Path) -> None:
    # a directory name that is not UTF-8 (Python hands it over surrogate-escaped): it worked as a
    # spool before; the new reason embeds it, and msgpack cannot encode a lone surrogate
    d = Path(os.fsdecode(bytes(tmp_path) + b"/spool-\xff"))
    faults = Faults()
    spool = Spool(d, fs=FaultyFS(faults, "spool"))
    buf = Buffer(1000)
    r = Reporter(3600, 5, buf, spool, AgentMetrics(), lambda: None, [])
    faults["spool.write"] = {"mode": "enospc"}
    buf.extend([Point("m", 1_700_000_000_000 + i, 1.0, {}) for i in range(200)])  # > 10 reports' worth
    assert r.report(include_sources=False) == []
    assert r._unspooled > 0
    del faults["spool.write"]
    buf.extend([Point("m", 1_800_000_000_000, 1.0, {})])
    # the disk is back: the report is spooled and the drop recorded; nothing may raise
    seqs = r.report(include_sources=False)
    assert seqs, seqs
    drops = spool.unreported_drops()
    assert drops
    encode_request("a", [], drops, spool.stats())  # what every later request carries
    spool.ack(seqs)  # every later state save
    spool.close()


def test_statsd_drops_are_recorded_at_once_then_at_most_once_a_minute(tmp_path: Path) -> None:
    # a drop storm while the spool works: one lost range a minute, not one per report interval
    spool = Spool(tmp_path / "spool")
    r = Reporter(3600, 5, Buffer(1000), spool, AgentMetrics(), lambda: None, [])
    r.start()
    r.statsd_dropped(5)
    r.report(include_sources=False)
    assert [d[2][:32] for d in spool.unreported_drops()] == ["statsd_dropped: 5 StatsD packets"]
    r.statsd_dropped(3)
    r.report(include_sources=False)
    r.statsd_dropped(4)
    r.report(include_sources=False)
    assert len(spool.unreported_drops()) == 1  # counted on, not recorded yet
    r.stop()  # the agent stops: what it counted is recorded
    assert [d[2][:32] for d in spool.unreported_drops()] == [
        "statsd_dropped: 5 StatsD packets",
        "statsd_dropped: 7 StatsD packets",
    ]
    spool.close()
