"""The audit itself must be trustworthy: hand-made ledgers with known duplicates, gaps, drops and
reused seqs. A report is its marker ``(run, n)``; the seq only says where to look for a reason."""

from __future__ import annotations

from collections.abc import Iterable

from lossproof.chaos.audit import (
    CONFLICT_KEPT,
    WIPED_UNREPORTED,
    AgentTruth,
    AuditReport,
    LedgerView,
    PipelineView,
    audit_agent,
    marker_counts,
)
from lossproof.chaos.journal import Marker


def marked(seqs: Iterable[int], run: str = "r1", n0: int = 0) -> list[Marker]:
    """One marker per seq, numbered in its run from n0 + 1 (so n and seq differ when n0 > 0)."""
    return [Marker(run, n0 + i, seq) for i, seq in enumerate(seqs, 1)]


def truth(last: int, run: str = "r1", n0: int = 0, **kw: object) -> AgentTruth:
    kw.setdefault("incarnations", [(1, "inc-" + run)])
    return AgentTruth("a", [(1, last)], markers=marked(range(1, last + 1), run, n0), **kw)  # type: ignore[arg-type]


def stored(ms: Iterable[Marker]) -> dict[tuple[str, int], int]:
    return marker_counts((m.run, m.n) for m in ms)


def view(counts: dict[tuple[str, int], int], **ledgers: LedgerView) -> PipelineView:
    return PipelineView({k.replace("_", "-"): v for k, v in ledgers.items()}, counts)


def test_a_clean_agent_passes() -> None:
    t = truth(100)
    a = audit_agent(t, view(stored(t.markers), inc_r1=LedgerView([(1, 100)])))
    assert (a.created, a.stored_once, a.duplicated, a.unaccounted_count) == (100, 100, 0, 0)
    assert a.ok


def test_duplicates_are_seen_in_the_store_even_if_the_ledger_is_clean() -> None:
    t = truth(10)
    counts = stored([*t.markers, t.markers[4], t.markers[4], t.markers[6]])
    a = audit_agent(t, view(counts, inc_r1=LedgerView([(1, 10)])))
    assert a.duplicated == 2 and a.stored_once == 8
    assert not a.ok


def test_a_silent_gap_is_unaccounted_even_when_the_ledger_claims_stored() -> None:
    t = truth(20)
    counts = stored(m for m in t.markers if m.seq not in (4, 5, 6))
    a = audit_agent(t, view(counts, inc_r1=LedgerView([(1, 20)])))
    assert a.unaccounted == [(4, 6)]
    assert [k for k, _ in a.unaccounted_reports] == [("r1", 4), ("r1", 5), ("r1", 6)]
    assert a.ledger_disagrees == [(4, 6)]
    assert not a.ok


def test_accounted_drops_and_delays_are_not_silent() -> None:
    t = truth(30, dropped=[(11, 12, "spool_full")], pending=[(26, 30)])
    counts = stored(t.markers[:10])
    a = audit_agent(t, view(counts, inc_r1=LedgerView([(1, 10)], [(13, 15, "replay_window_expired")])))
    assert a.lost_accounted == {"spool_full": 2, "replay_window_expired": 3}
    assert a.delayed == 5
    assert a.unaccounted == [(16, 25)]
    report = AuditReport([a])
    assert report.totals()["unaccounted"] == 10 and not report.ok
    assert report.table()[-1].startswith("audit: FAIL")


def test_markers_the_agent_did_not_create_do_not_count() -> None:
    t = truth(5)
    counts = stored([*t.markers, Marker("other-run", 1, 1), Marker("r1", 99, 99), Marker("r1", 99, 99)])
    a = audit_agent(t, view(counts, inc_r1=LedgerView([(1, 5)])))
    assert a.ok and a.created == 5 and a.duplicated == 0


def test_every_ack_durable_is_no_when_an_acknowledged_report_vanished() -> None:
    t = truth(10)
    lost = audit_agent(t, view(stored(m for m in t.markers if m.seq != 3), inc_r1=LedgerView([(1, 10)])))
    c = truth(2, run="c", pending=[(2, 2)])
    clean = audit_agent(c, view(stored(c.markers[:1]), inc_c=LedgerView([(1, 1)])))
    assert AuditReport([clean]).every_ack_durable
    report = AuditReport([clean, lost])
    assert not report.every_ack_durable
    assert report.as_json()["every_ack_durable"] is False
    assert report.table()[-2].startswith("every 2xx durable: NO")


def test_two_reports_with_one_seq_are_two_reports() -> None:
    """The class of bug in issue 14: a second agent (or a wiped spool) reuses seqs 1-5 under the same
    incarnation, the pipeline keeps the first reports and counts the others as duplicates, and the
    ledger says [1, 5] stored. Keyed by seq this passed; keyed by marker the second five are lost."""
    first = truth(5, run="host-a", incarnations=[(1, "")])
    second = truth(5, run="host-b", incarnations=[(1, "")])
    ledger = LedgerView([(1, 5)], heard=5)
    counts = stored(first.markers)  # only the first host's reports are in the store
    a = audit_agent(first, view(counts, **{"": ledger}))
    b = audit_agent(second, view(counts, **{"": ledger}))
    assert a.ok and a.stored_once == 5
    assert b.stored_once == 0 and b.unaccounted_count == 5 and not b.ok
    assert b.ledger_disagrees == [(1, 5)]
    # the same run when the second report was kept whole as a visible conflict: accounted
    kept = audit_agent(second, view(counts, **{"": LedgerView([(1, 5)], conflicts=[1, 2, 3, 4, 5])}))
    assert kept.ok and kept.lost_accounted == {CONFLICT_KEPT: 5}


def test_a_wiped_spool_holds_nothing_and_its_reports_need_the_ledgers_word() -> None:
    # acknowledged 1-6, pending 7-12; the pipeline heard of seqs up to 10 (its last spool state)
    t = truth(12, run="old", pending=[(7, 12)], gone=True)
    counts = stored(t.markers[:6])
    led = LedgerView([(1, 6)], [(7, 8, "spool_reset")], heard=10)
    a = audit_agent(t, view(counts, inc_old=led))
    assert a.delayed == 0
    assert a.lost_accounted == {"spool_reset": 2, WIPED_UNREPORTED: 2}  # 7-8, and 11-12
    assert a.unaccounted == [(9, 10)]  # heard of, never stored, not lost: silent
    # still held by a live spool, the same reports are only delayed
    live = audit_agent(truth(12, run="old", pending=[(7, 12)]), view(counts, inc_old=led))
    assert live.ok and live.delayed == 4


def test_a_seq_is_looked_up_in_its_own_incarnations_ledger() -> None:
    # after a 409 the spool's seqs from 6 on belong to incarnation B; a loss recorded for seq 7 in
    # A's ledger says nothing about B's seq 7
    t = AgentTruth("a", [(1, 10)], markers=marked(range(1, 11), "r", 3), incarnations=[(1, "A"), (6, "B")])
    counts = stored(t.markers[:5])
    a_led = LedgerView([(1, 5)], [(6, 10, "spool_reset")])
    a = audit_agent(t, view(counts, A=a_led, B=LedgerView(heard=10)))
    assert a.unaccounted == [(6, 10)]
    b = audit_agent(t, view(counts, A=a_led, B=LedgerView(lost=[(6, 10, "replay_window_expired")])))
    assert b.ok and b.lost_accounted == {"replay_window_expired": 5}


def test_seqs_no_marker_names_are_never_proven_stored() -> None:
    # a spool the chaos driver did not write: no journal, so the ledger's "stored" is not evidence
    t = AgentTruth("a", [(1, 8)], dropped=[(1, 2, "spool_full")], pending=[(8, 8)])
    a = audit_agent(t, view({}, **{"": LedgerView([(3, 7)])}))
    assert a.lost_accounted == {"spool_full": 2} and a.delayed == 1
    assert a.unaccounted == [(3, 7)] and a.unaccounted_reports[0] == (None, 3)
