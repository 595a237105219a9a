"""The fallback journal: group commit, torn tails, bit flips, failed fsyncs, and a model test.

Everything runs in-process against real files (real writes, real fsyncs). A "crash" drops the
writer without closing it properly (its lock is released as a dying process's would be); the file
damage a crash or power loss can leave is then applied by hand.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lossproof.faults import Faults
from lossproof.segments.fs import FaultyFS


class DictFaults(Faults):
    """Fault hooks steered directly by the test (no file, no reload delay)."""

    def __init__(self) -> None:
        super().__init__(path="")
        self.faults: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.faults.get(name)


def entry(n: int, size: int = 40) -> jn.Entry:
    body = (f"body-{n}-".encode() * (size // 8 + 1))[:size]
    return jn.Entry(
        tenant="t" if n % 3 else "other",
        agent=f"a{n % 5}",
        content_type="application/json",
        encoding="zstd" if n % 2 else "",
        seqs=[(n, n)],
        reports=1,
        points=n % 7,
        body=body,
    )


def crash(writer: jn.JournalWriter) -> None:
    """What kill -9 does to the writer: files closed, lock released, nothing flushed or sealed."""
    writer._gc.abandon()
    writer._close_files()


def bodies(directory: Path) -> list[bytes]:
    return [r.entry.body for r in jn.read_all(directory)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_round_trip_group_commit_and_positions(tmp_path: Path) -> None:
    commits: list[int] = []

    async def main() -> list[jn.Position]:
        w = jn.JournalWriter(tmp_path, segment_bytes=4096, on_commit=lambda n, _t: commits.append(n))
        await w.start()
        positions = await asyncio.gather(*(w.append(entry(i), 1000 + i) for i in range(200)))
        await w.close()
        return list(positions)

    positions = run(main())
    records = jn.read_all(tmp_path)
    assert [r.entry for r in records] == [entry(i) for i in range(200)]
    assert [r.received_ms for r in records] == [1000 + i for i in range(200)]
    assert [r.position for r in records] == positions
    assert len(jn.list_segments(tmp_path)) > 3  # rolled by size
    assert max(commits) > 1  # concurrent appends shared an fsync
    assert sum(commits) == 200
    # indices strictly increase across the whole journal
    idx = [r.index for r in records]
    assert idx == sorted(set(idx))


def test_reader_resumes_from_any_position(tmp_path: Path) -> None:
    async def main() -> None:
        w = jn.JournalWriter(tmp_path, segment_bytes=2048)
        await w.start()
        for i in range(60):
            await w.append(entry(i), i)
        await w.close()

    run(main())
    records = jn.read_all(tmp_path)
    for k in (0, 1, 17, 59):
        with jn.JournalReader(tmp_path, records[k].position) as r:
            r.refresh()
            got: list[jn.Record] = []
            while True:
                items, at_end = r.read(max_bytes=500)
                got += [x for x in items if isinstance(x, jn.Record)]
                if at_end:
                    break
        assert [x.entry for x in got] == [x.entry for x in records[k:]]


@pytest.mark.parametrize("damage", ["cut_header", "cut_payload", "garbage", "zeros"])
def test_torn_tail_is_recovered(tmp_path: Path, damage: str) -> None:
    async def write(n: int, start: int, close: bool = False) -> jn.JournalWriter:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        for i in range(start, start + n):
            await w.append(entry(i, 300), i)
        if close:
            await w.close()
        return w

    w = run(write(10, 0))
    crash(w)
    last = jn.segment_path(tmp_path, jn.list_segments(tmp_path)[-1])
    size = last.stat().st_size
    with open(last, "r+b") as f:
        if damage == "cut_header":  # a record whose header was half written
            f.seek(size)
            f.write(jn.encode_record(99, 0, b"x" * 300)[:20])
        elif damage == "cut_payload":  # a record written up to the middle of its payload
            payload = jn.encode_entry(entry(99, 300))
            f.seek(size)
            f.write(jn.encode_record(99, 0, payload) + payload[:100])
        elif damage == "garbage":
            f.seek(size)
            f.write(os.urandom(777))
        else:
            f.seek(size)
            f.write(b"\0" * 4096)
    # a reader of the crashed journal sees the ten records and stops at the tear, without error
    assert bodies(tmp_path) == [entry(i, 300).body for i in range(10)]
    run(write(5, 10, close=True))
    assert bodies(tmp_path) == [entry(i, 300).body for i in range(15)]


def test_power_loss_tail_with_valid_records_after_a_tear_is_not_corruption(tmp_path: Path) -> None:
    """After a power cut, pages of an unacknowledged batch can survive out of order: a torn record
    followed by an intact one, all past the durable watermark. That is a torn tail, not damage."""

    async def write() -> jn.JournalWriter:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        for i in range(5):
            await w.append(entry(i, 200), i)
        return w

    w = run(write())
    crash(w)
    last = jn.segment_path(tmp_path, jn.list_segments(tmp_path)[-1])
    p1, p2 = jn.encode_entry(entry(50, 200)), jn.encode_entry(entry(51, 200))
    with open(last, "ab") as f:
        f.write(jn.encode_record(900, 0, p1) + p1[:50] + b"\0" * (len(p1) - 50))
        f.write(jn.encode_record(901, 0, p2) + p2)
    assert bodies(tmp_path) == [entry(i, 200).body for i in range(5)]

    async def restart() -> None:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        await w.append(entry(6, 200), 6)
        await w.close()

    run(restart())
    assert bodies(tmp_path) == [entry(i, 200).body for i in (0, 1, 2, 3, 4, 6)]


def test_restart_makes_the_inherited_tail_durable_before_vouching_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed receiver can leave written but never fsynced records, still in the page cache. The
    restart's new segment header vouches for them (prev_end), so the old segment must be synced
    before that header exists: else a power loss after the restart leaves a hole mid-journal."""

    async def write() -> jn.JournalWriter:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        await w.append(entry(0, 200), 0)
        return w

    crash(run(write()))
    base = jn.list_segments(tmp_path)[-1]
    last = jn.segment_path(tmp_path, base)
    p = jn.encode_entry(entry(1, 200))
    with open(last, "ab") as f:  # written by the dead receiver, never fsynced, never acknowledged
        f.write(jn.encode_record(base + 1, 0, p) + p)

    events: list[str] = []
    real_fdatasync, real_replace = os.fdatasync, os.replace

    def fdatasync(fd: int) -> None:
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(last.resolve()):
            events.append("old segment synced")
        real_fdatasync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"new segment {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "replace", replace)

    async def restart() -> None:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        await w.close()

    run(restart())
    assert events and events[0] == "old segment synced", events
    assert bodies(tmp_path) == [entry(0, 200).body, entry(1, 200).body]


def _flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))


def test_bit_flip_in_acknowledged_data_of_the_last_segment_is_refused(tmp_path: Path) -> None:
    async def write() -> jn.JournalWriter:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        for i in range(10):
            await w.append(entry(i, 100), i)
        return w

    w = run(write())
    crash(w)
    records = jn.read_all(tmp_path)
    victim = records[4]
    path = jn.segment_path(tmp_path, victim.segment)
    _flip(path, victim.pos + jn.HEADER_SIZE + 30)  # inside the payload: only the CRC sees it

    with pytest.raises(jn.JournalCorrupt) as e:
        jn.read_all(tmp_path)
    assert e.value.path == path and e.value.pos == victim.pos
    assert str(path) in str(e.value) and f"byte {victim.pos}" in str(e.value) and "CRC" in str(e.value)

    # the receiver refuses to start rather than truncate acknowledged data away
    with pytest.raises(jn.JournalCorrupt) as e2:
        run(jn.JournalWriter(tmp_path).start())
    assert e2.value.pos == victim.pos and "watermark" in str(e2.value)
    assert path.stat().st_size == records[-1].end  # nothing was cut


def test_bit_flip_in_an_older_segment_names_file_and_byte(tmp_path: Path) -> None:
    async def write() -> None:
        w = jn.JournalWriter(tmp_path, segment_bytes=1024)
        await w.start()
        for i in range(40):
            await w.append(entry(i, 100), i)
        await w.close()

    run(write())
    records = jn.read_all(tmp_path)
    first_seg = [r for r in records if r.segment == records[0].segment]
    victim = first_seg[len(first_seg) // 2]
    path = jn.segment_path(tmp_path, victim.segment)
    _flip(path, victim.pos + 9)  # in the header's length field
    with pytest.raises(jn.JournalCorrupt) as e:
        jn.read_all(tmp_path)
    assert e.value.path == path and e.value.pos == victim.pos
    # ... and reading up to it works: everything before the damage is served first
    with jn.JournalReader(tmp_path) as r:
        r.refresh()
        got: list[jn.Record] = []
        with pytest.raises(jn.JournalCorrupt):
            while True:
                items, at_end = r.read(max_bytes=1)
                got += [x for x in items if isinstance(x, jn.Record)]
                assert not at_end
    assert [x.entry for x in got] == [x.entry for x in records[: records.index(victim)]]

    # the receiver still starts (it only checks the last segment) and keeps accepting
    async def more() -> None:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        await w.append(entry(100), 1)
        await w.close()

    run(more())


def test_truncated_older_segment_is_corruption(tmp_path: Path) -> None:
    async def write() -> None:
        w = jn.JournalWriter(tmp_path, segment_bytes=1024)
        await w.start()
        for i in range(30):
            await w.append(entry(i, 100), i)
        await w.close()

    run(write())
    first = jn.segment_path(tmp_path, jn.list_segments(tmp_path)[0])
    size = first.stat().st_size
    os.truncate(first, size - 10)
    with pytest.raises(jn.JournalCorrupt, match="durable end"):
        jn.read_all(tmp_path)


@pytest.mark.parametrize(("hook", "mode"), [("fsync", "fail"), ("write", "enospc"), ("write", "fail")])
def test_failed_write_or_fsync_is_never_acknowledged_nor_read(tmp_path: Path, hook: str, mode: str) -> None:
    faults = DictFaults()

    async def main() -> None:
        w = jn.JournalWriter(tmp_path, fs=FaultyFS(faults, "fallback"))
        await w.start()
        await w.append(entry(0), 0)
        faults.faults = {f"fallback.{hook}": {"mode": mode}}
        for i in (1, 2):
            with pytest.raises(jn.JournalUnavailable):
                await w.append(entry(i), i)
        assert not w.healthy()[0]
        faults.faults = {}
        await w.append(entry(3), 3)
        assert w.healthy()[0]
        await w.close()

    run(main())
    assert bodies(tmp_path) == [entry(0).body, entry(3).body]


def test_failed_fsync_bytes_left_behind_are_not_read_after_a_crash(tmp_path: Path) -> None:
    """Even if cutting a failed write off fails too, the next segment's header excludes it."""
    faults = DictFaults()

    async def main() -> jn.JournalWriter:
        w = jn.JournalWriter(tmp_path, fs=FaultyFS(faults, "fallback"))
        await w.start()
        await w.append(entry(0), 0)
        faults.faults = {"fallback.fsync": {"mode": "fail"}}
        orig = os.ftruncate
        os.ftruncate = lambda fd, n: (_ for _ in ()).throw(OSError(5, "no"))  # type: ignore[assignment,misc]
        try:
            with pytest.raises(jn.JournalUnavailable):
                await w.append(entry(1), 1)
        finally:
            os.ftruncate = orig
        faults.faults = {}
        await w.append(entry(2), 2)
        return w

    w = run(main())
    crash(w)
    segs = jn.list_segments(tmp_path)
    assert entry(1).body in jn.segment_path(tmp_path, segs[0]).read_bytes()  # still on disk
    assert bodies(tmp_path) == [entry(0).body, entry(2).body]


def test_live_reader_sees_only_durable_records(tmp_path: Path) -> None:
    faults = DictFaults()

    async def main() -> None:
        w = jn.JournalWriter(tmp_path, fs=FaultyFS(faults, "fallback"))
        await w.start()
        await w.append(entry(0), 0)
        assert jn.writer_live(tmp_path)
        faults.faults = {"fallback.fsync": {"mode": "delay", "seconds": 0.5}}
        pending = asyncio.ensure_future(w.append(entry(1), 1))
        await asyncio.sleep(0.2)  # written, not yet fsync'd
        last = jn.segment_path(tmp_path, jn.list_segments(tmp_path)[-1])
        assert entry(1).body in last.read_bytes()
        assert bodies(tmp_path) == [entry(0).body]
        await pending
        assert bodies(tmp_path) == [entry(0).body, entry(1).body]
        await w.close()
        assert not jn.writer_live(tmp_path)

    run(main())


def test_one_writer_per_journal(tmp_path: Path) -> None:
    async def main() -> None:
        w = jn.JournalWriter(tmp_path)
        await w.start()
        with pytest.raises(jn.JournalLocked, match="another fallback receiver"):
            await jn.JournalWriter(tmp_path).start()
        await w.close()

    run(main())


def test_prune_deletes_only_replayed_segments_past_retention(tmp_path: Path) -> None:
    async def write() -> None:
        w = jn.JournalWriter(tmp_path, segment_bytes=1024)
        await w.start()
        for i in range(40):
            await w.append(entry(i, 100), i)
        await w.close()

    run(write())
    segs = jn.list_segments(tmp_path)
    assert len(segs) >= 5
    now = 10_000_000
    progress = pg.Progress("http://x", segs[3], jn.HEADER_SIZE, completed={segs[0]: now - 5000, segs[1]: now})
    # segs[0] replayed 5 s ago, segs[1] just now, segs[2] replayed but no completion time
    assert pg.prunable(tmp_path, progress, 10, now) == []
    assert pg.prunable(tmp_path, progress, 5, now) == [segs[0]]
    assert pg.prunable(tmp_path, progress, 0, now) == [segs[0], segs[1]]  # a prefix only
    progress.completed[segs[2]] = now
    assert pg.prunable(tmp_path, progress, 0, now) == segs[:3]
    progress.completed.update({s: now for s in segs})
    progress.segment = segs[-1] + 10**9  # even "past everything" never deletes the newest
    assert pg.prunable(tmp_path, progress, 0, now) == segs[:-1]
    assert pg.prunable(tmp_path, None, 0, now) == []

    progress.segment = segs[3]
    pg.prune(tmp_path, progress, 0)
    records = jn.read_all(tmp_path)
    assert records[0].segment == segs[3]
    assert [r.entry.body for r in records] == [
        entry(i, 100).body for i in range(40) if entry(i, 100).body in {r.entry.body for r in records}
    ]
    assert records[-1].entry == entry(39, 100)


# --- model test ----------------------------------------------------------------------------------


class JournalMachine(RuleBasedStateMachine):
    """Random appends (some failing), crashes with torn tails, restarts, rolls and resumed reads,
    against a model: the list of acknowledged entries. Invariants: the journal reads back exactly
    the acknowledged entries, in order; a failed append is never read; resuming a reader at any
    record's position yields exactly the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lp-journal-model-"))
        self.loop = asyncio.new_event_loop()
        self.faults = DictFaults()
        self.writer: jn.JournalWriter | None = None
        self.acked: list[jn.Entry] = []
        self.n = 0

    def teardown(self) -> None:
        if self.writer is not None:
            self.loop.run_until_complete(self.writer.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(segment_bytes=st.sampled_from([200, 1000, 64 * 2**20]))
    def open(self, segment_bytes: int) -> None:
        self.segment_bytes = segment_bytes
        self._start()

    def _start(self) -> None:
        fs = FaultyFS(self.faults, "fallback")
        self.writer = jn.JournalWriter(self.dir, segment_bytes=self.segment_bytes, fs=fs)
        self.loop.run_until_complete(self.writer.start())

    @rule(k=st.integers(1, 6), size=st.integers(0, 300), fault=st.sampled_from([None, None, None, "f", "e"]))
    def append(self, k: int, size: int, fault: str | None) -> None:
        assert self.writer is not None
        self.faults.faults = (
            {"fallback.fsync": {"mode": "fail"}}
            if fault == "f"
            else {"fallback.write": {"mode": "enospc"}}
            if fault == "e"
            else {}
        )
        entries = []
        for _ in range(k):
            self.n += 1
            entries.append(entry(self.n, size))

        async def go() -> list[Any]:
            assert self.writer is not None
            return await asyncio.gather(
                *(self.writer.append(e, self.n) for e in entries), return_exceptions=True
            )

        results = self.loop.run_until_complete(go())
        self.faults.faults = {}
        for e, r in zip(entries, results, strict=True):
            if isinstance(r, jn.Position):
                self.acked.append(e)
            else:
                assert isinstance(r, jn.JournalUnavailable), r
                assert fault is not None

    @rule(tear=st.sampled_from(["none", "garbage", "partial"]), nbytes=st.integers(1, 400))
    def crash_and_restart(self, tear: str, nbytes: int) -> None:
        assert self.writer is not None
        crash(self.writer)
        last = jn.segment_path(self.dir, jn.list_segments(self.dir)[-1])
        with open(last, "ab") as f:
            if tear == "garbage":
                f.write(os.urandom(nbytes))
            elif tear == "partial":
                payload = jn.encode_entry(entry(10**6, nbytes))
                whole = jn.encode_record(10**9, 0, payload) + payload
                f.write(whole[: random.randrange(1, len(whole))])
        self._start()

    @rule()
    def clean_restart(self) -> None:
        assert self.writer is not None
        self.loop.run_until_complete(self.writer.close())
        self._start()

    @invariant()
    def reads_back_exactly_the_acknowledged(self) -> None:
        records = jn.read_all(self.dir)
        assert [r.entry for r in records] == self.acked
        if records:
            k = len(records) // 2
            with jn.JournalReader(self.dir, records[k].position) as r:
                r.refresh()
                rest: list[jn.Entry] = []
                while True:
                    items, at_end = r.read(max_bytes=700)
                    rest += [x.entry for x in items if isinstance(x, jn.Record)]
                    if at_end:
                        break
            assert rest == self.acked[k:]


TestJournalModel = JournalMachine.TestCase
TestJournalModel.settings = settings(
    max_examples=120,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
