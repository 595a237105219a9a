"""The agent spool: durability, recovery, seq uniqueness, the replay window and the spool limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lossproof.agent.spool import DAMAGED, SPOOL_FULL, WINDOW_EXPIRED, Spool, SpoolError, SpoolLimits
from lossproof.agent.spool.format import list_segments, read_all, segment_path


class Clock:
    def __init__(self) -> None:
        self.ms = 1_767_225_600_000

    def __call__(self) -> int:
        return self.ms


def body(tag: str, size: int = 50) -> object:
    return lambda seq: f"{tag}:{seq}:".encode() + os.urandom(size)


def test_append_read_ack_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        assert s.append([body("a"), body("b"), body("c")]) == [1, 2, 3]
        got = dict(s.read([1, 2, 3]))
        assert got[2].startswith(b"b:2:")
        assert s.ack([1, 3]) == 2
        assert s.ack([1]) == 0
        st = s.stats()
        assert (st.pending_reports, st.first_pending_seq, st.last_seq, st.window_reports) == (1, 2, 3, 2)
    with Spool(tmp_path) as s:
        assert s.recovery.pending == 1 and s.recovery.last_seq == 3
        assert s.pending_seqs(10) == [2]
        assert s.append([body("d")]) == [4]  # a new file after reopening, seqs carry on
        assert dict(s.read([1, 4]))[1].startswith(b"a:1:")


def test_one_fsync_group_for_many_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    with Spool(tmp_path) as s:
        s.append([body("first")])  # creates the segment file (and fsyncs its directory)
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
        s.append([body(str(i)) for i in range(100)])
    # the segment and the seq counter: two fsyncs for 100 reports
    assert len(calls) == 2


def test_torn_tail_is_cut_and_seqs_never_reused(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a", 300) for _ in range(5)])
    seg = segment_path(tmp_path, list_segments(tmp_path)[-1])
    size = seg.stat().st_size
    os.truncate(seg, size - 100)  # the last record is torn
    with Spool(tmp_path) as s:
        rec = s.recovery
        assert rec.truncated_bytes > 0 and rec.last_seq == 5
        # seq 5 was handed out (the counter says so) but its report is gone: dropped, not reused
        assert rec.lost == [(5, 5, DAMAGED)]
        assert s.unreported_drops() == [(5, 5, DAMAGED)]
        assert s.pending_seqs(10) == [1, 2, 3, 4]
        assert s.append([body("new")]) == [6]


def test_counter_survives_losing_the_whole_spool_data(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a") for _ in range(10)])
        s.ack(range(1, 11))
    for seg_id in list_segments(tmp_path):
        segment_path(tmp_path, seg_id).unlink()
    with Spool(tmp_path) as s:
        assert s.append([body("b")]) == [11]


def test_garbage_tail_after_a_crash_mid_write(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a") for _ in range(3)])
    seg = segment_path(tmp_path, list_segments(tmp_path)[-1])
    with open(seg, "ab") as f:
        f.write(b"LPAR" + os.urandom(50))
    with Spool(tmp_path) as s:
        assert s.recovery.lost == [] and s.recovery.truncated_bytes == 54
        assert s.pending_seqs(10) == [1, 2, 3]


def test_corrupt_record_in_the_middle(tmp_path: Path) -> None:
    with Spool(tmp_path, SpoolLimits(segment_bytes=4096)) as s:
        s.append([body("a", 100) for _ in range(3)])
    seg = segment_path(tmp_path, list_segments(tmp_path)[-1])
    data = bytearray(seg.read_bytes())
    data[200] ^= 0xFF  # inside record 2
    seg.write_bytes(bytes(data))
    with Spool(tmp_path) as s:
        assert s.recovery.lost == [(2, 3, DAMAGED)]
        assert s.pending_seqs(10) == [1]


def test_spool_full_drops_exactly_the_oldest_pending(tmp_path: Path) -> None:
    limits = SpoolLimits(max_spool_bytes=4096, segment_bytes=4096)
    with Spool(tmp_path, limits) as s:
        for _ in range(40):
            s.append([body("x", 200)])  # incompressible: ~282 bytes a record
        st = s.stats()
        assert st.pending_bytes <= 4096
        pending = s.pending_seqs(1000)
        assert pending == list(range(41 - len(pending), 41))
        drops = s.unreported_drops()
        assert drops == [(1, 40 - len(pending), SPOOL_FULL)]
        s.drops_reported(drops)
        assert s.unreported_drops() == []
        s.maintain()
        # files holding only dropped reports are gone: disk stays bounded during an outage
        assert st.disk_bytes < 40 * 282
    with Spool(tmp_path, limits) as s:
        assert s.pending_seqs(1000) == pending
        assert s.unreported_drops() == []


def test_drops_are_reported_until_confirmed_even_across_a_crash(tmp_path: Path) -> None:
    limits = SpoolLimits(max_spool_bytes=4096)
    with Spool(tmp_path, limits) as s:
        for _ in range(30):
            s.append([body("x", 200)])
        drops = s.unreported_drops()
        assert drops
    with Spool(tmp_path, limits) as s:
        assert s.unreported_drops() == drops


def test_replay_window_by_time(tmp_path: Path) -> None:
    clock = Clock()
    limits = SpoolLimits(window_seconds=60, segment_bytes=4096)
    with Spool(tmp_path, limits, clock=clock) as s:
        for _ in range(30):
            s.append([body("x", 300)])
        s.ack(range(1, 31))
        assert s.maintain() == 0  # acknowledged, but inside the window
        assert dict(s.read([1]))
        clock.ms += 61_000
        deleted = s.maintain()
        assert deleted > 0
        assert s.read([1]) == []
        floor_gone = s.plan_replay([(1, 2)])
        assert floor_gone == []
        assert s.unreported_drops() == [(1, 2, WINDOW_EXPIRED)]
        # the active file is never deleted: the newest reports can still be replayed
        assert s.plan_replay([(30, 30)]) == [30]


def test_replay_window_by_bytes(tmp_path: Path) -> None:
    limits = SpoolLimits(window_bytes=3 * 4096, segment_bytes=4096)
    with Spool(tmp_path, limits) as s:
        for _ in range(100):
            s.append([body("x", 300)])
            s.ack([s.last_seq])
            s.maintain()
        st = s.stats()
        assert st.window_bytes <= 3 * 4096 + 2 * 4096 + 400  # the window plus the active file
        assert s.plan_replay([(100, 100)]) == [100]


def test_pending_data_is_never_deleted_by_the_window(tmp_path: Path) -> None:
    limits = SpoolLimits(window_seconds=0, window_bytes=0, segment_bytes=4096)
    with Spool(tmp_path, limits) as s:
        for _ in range(50):
            s.append([body("x", 300)])
        s.maintain()
        assert len(s.read(range(1, 51))) == 50


def test_replay_of_dropped_seqs_keeps_their_reason(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("x") for _ in range(5)])
        s.drop([2], "rejected: 400 bad")
        s.drops_reported(s.unreported_drops())
        s.ack([1, 3, 4])
        assert s.plan_replay([(1, 4), (9, 20)]) == [1, 3, 4]  # 5 is pending, 9.. never existed
        assert s.unreported_drops() == [(2, 2, "rejected: 400 bad")]


def test_second_agent_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolError, match="in use by another agent"):
        Spool(tmp_path)


def test_failed_write_hands_out_no_seq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a")])
        real = os.fsync

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(SpoolError, match="Input/output error"):
            s.append([body("b")])
        monkeypatch.setattr(os, "fsync", real)
        assert s.append([body("c")]) == [2]  # in a fresh file; seq 2 was never handed out before
    with Spool(tmp_path) as s:
        assert s.recovery.lost == []
        assert dict(s.read([2]))[2].startswith(b"c:2:")
    assert sorted(rec.seq for _, rec, _ in read_all(tmp_path)) in ([1, 2], [1, 2, 2])


def test_many_files_do_not_use_many_descriptors(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    with Spool(tmp_path, SpoolLimits(segment_bytes=4096)) as s:
        for _ in range(60):
            s.append([body("x", 1000) for _ in range(4)])  # ~one file per append
        assert s.stats().segments >= 50
        assert len(s.read(range(1, 241))) == 240
        assert open_fds() - before <= 8 + 4  # a few read files, the active one, lock, seq counter
    with Spool(tmp_path, SpoolLimits(segment_bytes=4096)) as s:
        assert len(s.read(range(1, 241))) == 240
        assert open_fds() - before <= 8 + 4


def test_incarnation_is_made_with_the_spool_and_kept(tmp_path: Path) -> None:
    """#14: a wiped spool (or another host's) must not reuse this one's seq space."""
    with Spool(tmp_path / "a") as s:
        inc, first = s.incarnation
        assert len(inc) == 32 and first == 1
        s.append([body("a")])
    with Spool(tmp_path / "a") as s:
        assert s.incarnation == (inc, 1)  # durable: the same after reopening
    with Spool(tmp_path / "b") as other:
        assert other.incarnation[0] not in ("", inc)


def test_a_spool_from_before_incarnations_keeps_the_empty_one(tmp_path: Path) -> None:
    from lossproof.agent.spool import state as state_mod

    with Spool(tmp_path) as s:
        s.append([body("a")])
    st = state_mod.load(tmp_path)
    assert st is not None
    st.incarnation = ""  # as a state file written before incarnations decodes
    state_mod.save(tmp_path, st)
    with Spool(tmp_path) as s:
        assert s.incarnation == ("", 1)  # its seqs carry on in the seq space the server knows


def test_new_incarnation_starts_at_the_lowest_pending_seq(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a"), body("b"), body("c")])
        s.ack([1])
        old, _ = s.incarnation
        new, first = s.new_incarnation(old)
        assert new != old and first == 2
        assert s.new_incarnation(old) == (new, 2)  # a second 409 for the old one: no third
    with Spool(tmp_path) as s:
        assert s.incarnation == (new, 2)
