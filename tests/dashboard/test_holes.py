"""Hole classification (lossproof.query.holes) on hand-made ledgers."""

from __future__ import annotations

from lossproof.query import holes
from lossproof.store.base import AgentSummary, Ledger, SpoolState

S = 10_000
NOW = 10_000 * S


def summary(seen: int = NOW) -> AgentSummary:
    return AgentSummary("a", 100, 80, 5, 10, seen, 5, seen)


def times(missing_seqs: set[int], n: int = 100) -> list[int | None]:
    """One point per report every 10 s, report s at s*S; step = 10 s."""
    return [None if s in missing_seqs else s * S for s in range(1, n + 1)]


def test_gaps_and_threshold() -> None:
    found, threshold = holes.gaps(times({5, 6, 7}), S, S, 100 * S)
    assert found == [(4 * S, 8 * S, False)] and threshold == 1.6 * S
    found, _ = holes.gaps(times({99, 100}), S, S, 100 * S)
    assert found == [(98 * S, 100 * S, True)]
    assert holes.gaps([None, None], 0, S, S) == ([], 0.0)


def test_pairs_gaps_with_seq_holes_newest_first() -> None:
    ledger = Ledger(
        stored=[(1, 9), (13, 19), (26, 100)],
        missing=[(20, 25, 7)],
        lost=[(10, 12, "spool_full")],
    )
    found, th = holes.gaps(times(set(range(10, 13)) | set(range(20, 26))), S, S, 100 * S)
    got = holes.classify(found, summary(), ledger, NOW, reaches_now=True, threshold=th)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("lost", 9 * S, 13 * S),
        ("missing", 19 * S, 26 * S),
    ]
    assert "spool_full" in got[0].text


def test_mixed_run_is_split_by_seqs() -> None:
    ledger = Ledger(
        stored=[(1, 9), (20, 100)], missing=[(15, 19, 7)], lost=[(10, 14, "replay_window_expired")]
    )
    found, th = holes.gaps(times(set(range(10, 20))), S, S, 100 * S)
    got = holes.classify(found, summary(), ledger, NOW, reaches_now=True, threshold=th)
    assert [(h.kind, h.start_ms, h.end_ms) for h in got] == [
        ("lost", 9 * S, 145_000),
        ("missing", 145_000, 20 * S),
    ]


def test_delayed_tail_and_silent_agent() -> None:
    spool = SpoolState("t", "a", 10, 1000, 91 * S, 91, 100, NOW)
    ledger = Ledger(stored=[(1, 90)], missing=[], lost=[], delayed=[(91, 100, 91 * S)], spool=spool)
    found, th = holes.gaps(times(set(range(91, 101))), S, S, 100 * S)
    [h] = holes.classify(found, summary(), ledger, NOW, reaches_now=True, threshold=th)
    assert (h.kind, h.start_ms, h.end_ms) == ("delayed", 91 * S, 100 * S) and "spool" in h.text
    # nothing pending, not heard from for long: silent
    quiet = Ledger(stored=[(1, 90)], missing=[], lost=[])
    [h] = holes.classify(found, summary(seen=NOW - 3_600_000), quiet, NOW, reaches_now=True, threshold=th)
    assert h.kind == "silent"


def test_no_agent_and_no_missing_report() -> None:
    found, th = holes.gaps(times({50, 51, 52}), S, S, 100 * S)
    [h] = holes.classify(found, None, None, NOW, reaches_now=True, threshold=th)
    assert h.kind == "nodata"
    complete = Ledger(stored=[(1, 97)], missing=[], lost=[])
    [h] = holes.classify(found, summary(), complete, NOW, reaches_now=True, threshold=th)
    assert h.kind == "nodata" and "no report" in h.text


def test_agent_of() -> None:
    assert holes.agent_of({"host": "web-01"}, {"web-01"}) == "web-01"
    assert holes.agent_of({"agent": "x", "host": "web-01"}, {"x", "web-01"}) == "x"
    assert holes.agent_of({"host": "other"}, {"web-01"}) is None


def test_a_one_shot_sender_after_its_last_point_is_no_data_not_silent() -> None:
    quiet = Ledger(stored=[(1, 90)], missing=[], lost=[])
    found, th = holes.gaps(times(set(range(91, 101))), S, S, 100 * S)
    once = AgentSummary("a", 90, 90, 0, 0, NOW - 3_600_000)  # no spool state ever: last_seen_ms 0
    [h] = holes.classify(found, once, quiet, NOW, reaches_now=True, threshold=th)
    assert h.kind == "nodata" and "one-shot" in h.text
