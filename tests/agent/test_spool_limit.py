"""A long outage with a small spool: the oldest unacknowledged reports are dropped, and exactly
those seqs are reported to the server as dropped (``spool_full``) — and, with the real pipeline,
marked lost with that reason in the ledger while everything else is stored."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lossproof.agent import Agent, AgentConfig
from lptest.agent import Received, StandIn, expand, wait_for
from lptest.pipeline import Pipeline


def _config(tmp_path: Path, url: str, key: str, agent_id: str) -> AgentConfig:
    return AgentConfig(
        agent_id=agent_id,
        api_key=key,
        primary_url=url,
        spool_dir=tmp_path / "spool",
        interval_seconds=3600,  # reports are made by hand with flush()
        statsd_port=0,
        metrics_port=0,
        collect_host=False,
        max_spool_bytes=8192,
        spool_segment_bytes=4096,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.3,
        labels={"host": "limited"},
    )


def _report(agent: Agent, i: int) -> int:
    # random label values do not compress: every report takes ~700 bytes of spool
    agent.record("outage.value", float(i), {"noise": os.urandom(300).hex()})
    seqs = agent.flush()
    assert len(seqs) == 1
    return seqs[0]


def test_spool_full_reports_exactly_the_dropped_seqs(tmp_path: Path) -> None:
    state = {"up": False}

    def policy(srv: StandIn, req: Received) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not state["up"]:
            return 503, {"error": "log cannot accept data durably: test outage"}, {"Retry-After": "1"}
        return 200, {"acked": [[s, s] for s in req.seqs], "replay": []}, {}

    srv = StandIn(policy).start()
    try:
        with Agent(_config(tmp_path, srv.url, "k", "limited")) as agent:
            spool = agent.spool
            assert spool is not None
            made = [_report(agent, i) for i in range(40)]
            assert made == list(range(1, 41))
            st = spool.stats()
            assert st.pending_bytes <= 8192
            kept = spool.pending_seqs(1000)
            k = 40 - len(kept)
            assert k >= 20 and kept == list(range(k + 1, 41)), kept
            assert spool.dropped() == [(1, k, "spool_full")]

            state["up"] = True
            wait_for(lambda: spool.stats().pending_reports == 0 and not spool.unreported_drops(), 20, "drain")
    finally:
        srv.stop()
    dropped = srv.reported_drops()
    assert {why for _, _, why in dropped} == {"spool_full"}
    assert expand(dropped) == set(range(1, k + 1))
    acked = srv.acked_seqs()
    # Every kept report is acknowledged. A batch built just before its reports were dropped may still
    # go out (its bytes were read already) and be acknowledged too: harmless, the ledger's "stored
    # wins" rule keeps such a report stored although it was also reported dropped.
    assert set(range(k + 1, 41)) <= acked <= set(range(1, 41)), (k, acked)
    # every request carried the agent's spool state; the first answered one knew about the backlog
    answered = [r for r in srv.snapshot() if r.status == 200]
    assert all(r.spool is not None and r.spool["last_seq"] == 40 for r in answered)
    assert answered[0].spool is not None and answered[0].spool["first_pending_seq"] == k + 1


def test_spool_full_is_lost_with_reason_in_the_ledger(pipeline: Pipeline, tmp_path: Path) -> None:
    """Needs the server to record ``dropped`` as lost (the lead's part of issue 3)."""
    p = pipeline
    with Agent(_config(tmp_path, p.url, p.key, "limited-real")) as agent:
        spool = agent.spool
        assert spool is not None
        before = [_report(agent, i) for i in range(5)]
        p.wait_stored("limited-real", set(before))
        wait_for(lambda: spool.stats().pending_reports == 0, 10, "acks before the outage")
        p.kill9()
        during = [_report(agent, i) for i in range(40)]
        kept = spool.pending_seqs(1000)
        dropped = sorted(set(during) - set(kept))
        assert dropped == list(range(6, 6 + len(dropped))) and len(dropped) >= 20
        p.start()
        wait_for(lambda: spool.stats().pending_reports == 0 and not spool.unreported_drops(), 30, "drain")
        last = during[-1]
        everything = set(range(1, last + 1))

        def settled() -> dict[str, Any] | None:
            lg = p.ledger("limited-real")
            stored = expand(lg["stored"])
            lost = expand([x["range"] for x in lg["lost"]])
            return lg if lg["lost"] and stored | lost == everything else None

        ledger = wait_for(settled, 30, "the ledger to show the drop")
    stored = expand(ledger["stored"])
    assert set(before) | set(kept) <= stored, ledger
    # the dropped seqs are lost with the reason, except any a batch built before the drop delivered
    assert all(x["reason"] == "spool_full" for x in ledger["lost"]), ledger
    assert expand([x["range"] for x in ledger["lost"]]) == set(dropped) - stored, ledger
    assert ledger["missing"] == [], ledger
