"""Reading an agent's truth from its spool, without the agent and without changing the spool."""

from __future__ import annotations

import os
from pathlib import Path

from lossproof.agent.spool import SPOOL_FULL, Spool, SpoolLimits
from lossproof.agent.spool.format import list_segments, segment_path
from lossproof.chaos.journal import MarkerJournal, journal_path, read_journal
from lossproof.chaos.truth import parse_spool_arg, read_truth, wiped_mark


def body(seq: int) -> bytes:
    return f"r{seq}:".encode() + os.urandom(40)


def snapshot(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def test_created_acked_dropped_and_pending(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        assert s.append([body] * 10) == list(range(1, 11))
        s.ack(range(1, 5))
        s.drop([5, 6], "rejected: 400 bad")
    before = snapshot(tmp_path)
    t = read_truth("a", tmp_path)
    assert snapshot(tmp_path) == before  # read-only
    assert t.created == [(1, 10)]
    assert (5, 6, "rejected: 400 bad") in t.dropped
    assert t.pending == [(7, 10)]


def test_a_spool_full_drop_is_the_agents_truth(tmp_path: Path) -> None:
    with Spool(tmp_path, SpoolLimits(max_spool_bytes=4096, segment_bytes=4096)) as s:
        for _ in range(100):
            s.append([body])
        last = s.stats().last_seq
    t = read_truth("a", tmp_path)
    assert t.created == [(1, last)]
    dropped = sum(b - a + 1 for a, b, r in t.dropped if r == SPOOL_FULL)
    pending = sum(b - a + 1 for a, b in t.pending)
    assert dropped > 0 and dropped + pending == last


def test_a_lost_record_is_spool_damaged_and_the_counter_still_counts_it(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body] * 5)
    for seg_id in list_segments(tmp_path):
        segment_path(tmp_path, seg_id).unlink()  # the disk lost the data, not the seq counter
    t = read_truth("a", tmp_path)
    assert t.created == [(1, 5)]
    assert t.pending == []
    assert t.dropped == [(1, 5, "spool_damaged")]


def test_an_empty_or_new_spool_created_nothing(tmp_path: Path) -> None:
    t = read_truth("a", tmp_path)
    assert t.created == [] and t.pending == [] and t.dropped == []


def test_spool_argument_forms(tmp_path: Path) -> None:
    assert parse_spool_arg(f"web-1={tmp_path}") == ("web-1", tmp_path)
    d = tmp_path / "spool"
    assert parse_spool_arg(str(d)) == ("spool", d)
    (tmp_path / "spool.agent_id").write_text("chaos-7\n")
    assert parse_spool_arg(str(d)) == ("chaos-7", d)


def test_the_marker_journal_resolves_a_kill_during_the_flush(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    j = MarkerJournal(journal_path(spool), "r1")
    j.incarnation("inc1", 1)
    for n in (1, 2, 3):
        j.intent(n, n)
        j.made(n, n)
    j.intent(4, 4)  # killed during this flush; the spool did write seq 4
    j.close()
    j = MarkerJournal(journal_path(spool), "r2")
    j.incarnation("inc1", 1)
    j.intent(1, 5)  # killed before the spool wrote seq 5: the next process journals 5 again
    j.close()
    j = MarkerJournal(journal_path(spool), "r3")
    j.intent(1, 5)
    j.made(1, 5)
    j.intent(2, 6)
    j.not_made(2)  # the spool was full
    j.incarnation("inc2", 5)  # a 409 started a new incarnation at the lowest pending seq
    j.close()
    with open(journal_path(spool), "a") as f:
        f.write("m r3 9")  # a line cut short by a kill: never read
    got = read_journal(journal_path(spool), last_seq=5)
    assert [(m.run, m.n, m.seq) for m in got.markers] == [
        ("r1", 1, 1),
        ("r1", 2, 2),
        ("r1", 3, 3),
        ("r1", 4, 4),
        ("r3", 1, 5),
    ]
    assert got.unresolved == 1  # r2's intent: superseded by r3's claim of seq 5
    assert got.incarnations == [(1, "inc1"), (5, "inc2")]


def test_truth_carries_markers_incarnations_and_the_wiped_mark(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with Spool(spool) as s:
        j = MarkerJournal(journal_path(spool), "r1")
        j.incarnation(*s.incarnation)
        for n in (1, 2, 3):
            j.intent(n, n)
            j.made(n, s.append([body])[0])
        j.close()
        inc = s.incarnation
    t = read_truth("a", spool, name="a #1")
    assert t.label == "a #1" and not t.gone
    assert [m.seq for m in t.markers] == [1, 2, 3]
    assert t.incarnations == [(inc[1], inc[0])] and t.incarnation_of(2) == inc[0]
    wiped_mark(spool).write_text("wiped\n")
    assert read_truth("a", spool).gone
