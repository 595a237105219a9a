"""The agent spool: durability, recovery, seq uniqueness, the replay window and the spool limit."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from lossproof.agent.spool import (
    DAMAGED,
    SPOOL_FULL,
    UNSPOOLED,
    WINDOW_EXPIRED,
    Spool,
    SpoolError,
    SpoolLimits,
)
from lossproof.agent.spool.format import list_segments, read_all, scan_segment, segment_path


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
        # the damaged record is lost; the one after it is intact and kept
        assert s.recovery.lost == [(2, 2, DAMAGED)]
        assert s.recovery.truncated_bytes == 0 and s.recovery.damaged_bytes > 0
        assert s.pending_seqs(10) == [1, 3]
        assert dict(s.read([3]))[3].startswith(b"a:3:")


def test_damage_inside_a_file_costs_only_the_records_it_hit(tmp_path: Path) -> None:
    """One bad sector in a closed spool file: the reports it held are lost (and said so), every
    intact report before and after it is kept and sent, in this and every later start."""
    limits = SpoolLimits(segment_bytes=4096)
    with Spool(tmp_path, limits) as s:
        for _ in range(30):
            s.append([body("x", 200)])  # ~282 bytes a record: 15 a file
    first, second = (segment_path(tmp_path, i) for i in list_segments(tmp_path)[:2])

    def hit(path: Path, at: int) -> int:
        return next(r.seq for r in scan_segment(path).records if r.pos <= at < r.pos + r.size)

    gone = {hit(first, 2000), hit(first, 2015), hit(second, 1500)}
    assert len(gone) >= 2 and max(gone) < 30  # two files, neither record the last of its file
    with open(first, "r+b") as f:
        f.seek(2000)
        f.write(bytes(16))
    data = bytearray(second.read_bytes())
    data[1500] ^= 0xFF
    second.write_bytes(bytes(data))
    for newly_lost in (gone, set()):  # and again: the damage is skipped the same way, known lost
        with Spool(tmp_path, limits) as s:
            lost = [(a, b) for a, b, why in s.recovery.lost if why == DAMAGED]
            assert {q for a, b in lost for q in range(a, b + 1)} == newly_lost
            assert {q for a, b, why in s.dropped() if why == DAMAGED for q in range(a, b + 1)} == gone
            assert s.recovery.truncated_bytes == 0
            assert s.pending_seqs(100) == [q for q in range(1, 31) if q not in gone]
            got = dict(s.read(range(1, 31)))
            assert sorted(got) == s.pending_seqs(100)
            assert all(got[q].startswith(f"x:{q}:".encode()) for q in got)
            # a replay request for a lost seq answers with its reason, never its damaged bytes
            assert s.plan_replay([(max(gone), max(gone))]) == []
    with Spool(tmp_path, limits) as s:
        assert s.append([body("y")]) == [31]
        s.ack(range(1, 32))
        s.limits = SpoolLimits(segment_bytes=4096, window_seconds=0, window_bytes=0)
        assert s.maintain() == 2  # the damaged files go once everything in them is resolved


def test_damage_then_only_garbage_is_a_torn_tail(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a", 100) for _ in range(3)])
    seg = segment_path(tmp_path, list_segments(tmp_path)[-1])
    size = seg.stat().st_size
    second = scan_segment(seg).records[1]
    with open(seg, "r+b") as f:
        f.seek(second.pos + 20)  # record 2, then record 3 torn
        f.write(bytes(20))
    os.truncate(seg, size - 10)
    with Spool(tmp_path) as s:
        assert s.recovery.lost == [(2, 3, DAMAGED)]
        assert s.recovery.truncated_bytes == size - 10 - second.pos and s.recovery.damaged_bytes == 0
        assert s.pending_seqs(10) == [1]


def test_a_foreign_record_past_damage_is_not_adopted(tmp_path: Path) -> None:
    """A valid record far past the seqs this spool handed out (stale bytes of another spool that a
    file system showed after a crash) is not taken for one of its reports."""
    from lossproof.agent.spool.format import Codec

    with Spool(tmp_path) as s:
        s.append([body("a", 100) for _ in range(2)])
    seg = segment_path(tmp_path, list_segments(tmp_path)[-1])
    for foreign in (9, 10**9):  # a seq this spool could not have handed out (its counter is at 2)
        with open(seg, "ab") as f:
            f.write(bytes(40) + Codec().encode(foreign, 0, b"not mine"))
        with Spool(tmp_path) as s:
            assert s.recovery.lost == [] and s.recovery.last_seq == 2
            assert s.pending_seqs(10) == [1, 2]
            assert s.read([foreign]) == []
    with Spool(tmp_path) as s:
        assert s.append([body("b")]) == [3]


def test_an_acknowledged_report_lost_to_damage_is_answered_as_lost_on_replay(tmp_path: Path) -> None:
    """The server asks again for a report it lost after acknowledging it; the spool's copy was
    damaged since: it is not promised (and then silently not sent), it is reported lost."""
    with Spool(tmp_path) as s:
        s.append([body("a", 100) for _ in range(5)])
        s.ack(range(1, 6))
    seg = segment_path(tmp_path, list_segments(tmp_path)[-1])
    third = next(r for r in scan_segment(seg).records if r.seq == 3)
    data = bytearray(seg.read_bytes())
    data[third.pos + 40] ^= 0xFF
    seg.write_bytes(bytes(data))
    with Spool(tmp_path) as s:
        assert s.recovery.lost == [] and s.pending_seqs(10) == []  # acknowledged: nothing to send
        assert s.plan_replay([(2, 4)]) == [2, 4]
        assert s.unreported_drops() == [(3, 3, DAMAGED)]
        assert s.stats().pending_bytes == 0


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


def test_a_missing_state_file_is_refused_not_guessed(tmp_path: Path) -> None:
    """Without ``state`` the spool cannot tell what was acknowledged nor the incarnation the seqs
    belong to: starting anyway (as a spool made before incarnations) counted stored reports twice
    and reported acknowledged ones lost. A spool never used is still made from nothing."""
    with Spool(tmp_path) as s:
        s.append([body("a") for _ in range(3)])
        s.ack([1])
    (tmp_path / "state").unlink()
    with pytest.raises(SpoolError, match="state is missing, but the spool holds reports"):
        Spool(tmp_path)
    fresh = tmp_path / "fresh"
    with Spool(fresh) as s:
        assert s.incarnation[0]
        assert s.append([body("b")]) == [1]


def test_the_spool_opens_on_a_full_disk(tmp_path: Path) -> None:
    """An agent restarted on a full disk must start, to send what it holds: opening writes nothing
    that did not change, and a state it cannot save is saved later."""
    import subprocess

    from lptest import require

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode == 0
    require(mounted, "a small tmpfs mount (needs root)")
    try:
        limits = SpoolLimits(segment_bytes=64 * 1024)
        (mnt / "filler").write_bytes(bytes(128 * 1024))  # freed at the end, to make room
        with Spool(mnt / "spool", limits) as s:
            appended = s.append([body("x", 1000) for _ in range(5)])
            s.ack(appended)
            with pytest.raises(SpoolError):
                for _ in range(10_000):
                    appended += s.append([body("x", 1000)])

        def fill(name: str) -> None:
            fd = os.open(mnt / name, os.O_WRONLY | os.O_CREAT, 0o644)  # whatever room is left
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(512))
            os.close(fd)

        fill("rest")
        with Spool(mnt / "spool", limits) as s:
            assert s.pending_seqs(100_000) == appended[5:]
            assert dict(s.read(appended[-1:]))[appended[-1]].startswith(f"x:{appended[-1]}:".encode())
        # a change found on opening (a damaged record) cannot be saved: logged, and it opens
        seg = segment_path(mnt / "spool", list_segments(mnt / "spool")[-1])
        hit = scan_segment(seg).records[-2]
        with open(seg, "r+b") as f:
            f.seek(hit.pos + 40)
            f.write(b"\xff")
        lost = [(hit.seq, hit.seq, DAMAGED)]
        with Spool(mnt / "spool", limits) as s:
            assert s.recovery.lost == lost
            assert s.pending_seqs(100_000) == [q for q in appended[5:] if q != hit.seq]
        (mnt / "filler").unlink()
        with Spool(mnt / "spool", limits) as s:  # found again, and saved now
            assert s.recovery.lost == lost
        with Spool(mnt / "spool", limits) as s:
            assert s.recovery.lost == []
            assert s.unreported_drops() == lost
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_loss_before_the_spool_gets_a_seq_recorded_as_dropped(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        s.append([body("a"), body("b")])
        seq = s.record_lost(f"{UNSPOOLED}: 120 points dropped (No space left on device)")
        assert seq == 3 and s.last_seq == 3
        assert s.unreported_drops() == [(3, 3, f"{UNSPOOLED}: 120 points dropped (No space left on device)")]
        assert s.append([body("c")]) == [4]  # in a new file: a file's seqs follow one another
        assert s.pending_seqs(10) == [1, 2, 4]
        assert s.plan_replay([(3, 3)]) == []  # never sent: it has no record, and is lost with why
    with Spool(tmp_path) as s:
        # no damage found in the files, no other loss: the drop was durable with its reason
        assert s.recovery.lost == [] and s.recovery.damaged_bytes == 0 and s.recovery.truncated_bytes == 0
        assert [d[:2] for d in s.unreported_drops()] == [(3, 3)]
        assert s.unreported_drops()[0][2].startswith(f"{UNSPOOLED}: 120 points")
        assert s.pending_seqs(10) == [1, 2, 4]
        assert s.append([body("d")]) == [5]


def test_a_loss_is_recorded_on_a_full_disk_and_stays_counted_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lossproof.agent.spool import state as state_mod

    with Spool(tmp_path) as s:
        s.append([body("a")])

        def full(directory: Path, st: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(state_mod, "save", full)
        # the counter is written in place: the seq is handed out and the drop carried from memory
        assert s.record_lost(f"{UNSPOOLED}: 7 points") == 2
        assert [d[:2] for d in s.unreported_drops()] == [(2, 2)]
        monkeypatch.undo()
    with Spool(tmp_path) as s:
        # the state never said why: the seq without a record is still reported lost, not forgotten
        assert s.recovery.lost == [(2, 2, DAMAGED)]
