"""The audit itself must be trustworthy: hand-made ledgers with known duplicates, gaps and drops."""

from __future__ import annotations

from lossproof.chaos.audit import AgentTruth, AuditReport, PipelineView, audit_agent, marker_counts


def test_a_clean_agent_passes() -> None:
    a = audit_agent(AgentTruth("a", [(1, 100)]), PipelineView([(1, 100)], [], marker_counts(range(1, 101))))
    assert (a.created, a.stored_once, a.duplicated, a.unaccounted_count) == (100, 100, 0, 0)
    assert a.ok


def test_duplicates_are_seen_in_the_store_even_if_the_ledger_is_clean() -> None:
    counts = marker_counts([*range(1, 11), 5, 5, 7])
    a = audit_agent(AgentTruth("a", [(1, 10)]), PipelineView([(1, 10)], [], counts))
    assert a.duplicated == 2 and a.stored_once == 8
    assert not a.ok


def test_a_silent_gap_is_unaccounted_even_when_the_ledger_claims_stored() -> None:
    counts = marker_counts(s for s in range(1, 21) if s not in (4, 5, 6))
    a = audit_agent(AgentTruth("a", [(1, 20)]), PipelineView([(1, 20)], [], counts))
    assert a.unaccounted == [(4, 6)]
    assert a.ledger_disagrees == [(4, 6)]
    assert not a.ok


def test_accounted_drops_and_delays_are_not_silent() -> None:
    counts = marker_counts(range(1, 11))
    truth = AgentTruth("a", [(1, 30)], dropped=[(11, 12, "spool_full")], pending=[(26, 30)])
    view = PipelineView([(1, 10)], [(13, 15, "replay_window_expired")], counts)
    a = audit_agent(truth, view)
    assert a.lost_accounted == {"spool_full": 2, "replay_window_expired": 3}
    assert a.delayed == 5
    assert a.unaccounted == [(16, 25)]
    report = AuditReport([a])
    assert report.totals()["unaccounted"] == 10 and not report.ok
    assert report.table()[-1].startswith("audit: FAIL")


def test_seqs_outside_what_the_agent_created_do_not_count() -> None:
    counts = marker_counts([*range(1, 6), 99, 99])
    a = audit_agent(AgentTruth("a", [(1, 5)]), PipelineView([(1, 5)], [], counts))
    assert a.ok and a.created == 5 and a.duplicated == 0


def test_every_ack_durable_is_no_when_an_acknowledged_seq_vanished() -> None:
    counts = marker_counts(s for s in range(1, 11) if s != 3)
    lost = audit_agent(AgentTruth("a", [(1, 10)]), PipelineView([(1, 10)], [], counts))
    clean = audit_agent(AgentTruth("b", [(1, 2)], pending=[(2, 2)]), PipelineView([], [], marker_counts([1])))
    assert AuditReport([clean]).every_ack_durable
    report = AuditReport([clean, lost])
    assert not report.every_ack_durable
    assert report.as_json()["every_ack_durable"] is False
    assert report.table()[-2].startswith("every 2xx durable: NO")
