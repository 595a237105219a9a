"""Single steps of the durable code on the power-cut file system (tests/lptest/pcfs.py): each makes a
promise ("registered", "deleted", "written down"), then the power goes, then the promise is checked.

The round-based tests (test_power_cut_log.py, test_power_cut_spool_journal.py) cover the data paths;
these cover what they cannot see: a consumer group known before its first commit, deletions that stay
done, the fallback replay's own files. Everything runs in this process and closes its files before the
cut, as a process that exited would.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from lossproof.agent.spool import Spool, SpoolLimits
from lossproof.agent.spool.format import list_segments as spool_segments
from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lossproof.fallback.replay import Replay, ReplayOptions
from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.offsets import forget_group, list_groups, read_committed
from lptest.powercut import PowerCutFS, require_fuse

pytestmark = pytest.mark.process


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def fs(tmp_path: Path) -> PowerCutFS:
    require_fuse()
    with PowerCutFS(tmp_path) as f:
        yield f  # type: ignore[misc]


async def _append(log: Path, n: int, **kw: float) -> EmbeddedLogWriter:
    w = EmbeddedLogWriter(log, segment_bytes=1024, **kw)  # type: ignore[arg-type]
    await w.start()
    for i in range(n):
        await w.append(b"k", b"v" * 200 + str(i).encode())
    return w


def test_consumer_group_known_before_its_first_commit_survives(fs: PowerCutFS) -> None:
    """A group that never committed is known by its member lock alone, and a known group holds back
    retention: its name must survive a power cut."""
    log = fs.root / "log"

    async def write() -> None:
        w = await _append(log, 3)
        await w.close()

    asyncio.run(write())
    EmbeddedLogReader(log, "late").close()
    fs.power_cut()
    assert "late" in list_groups(log)


def test_forgotten_consumer_group_stays_forgotten(fs: PowerCutFS) -> None:
    log = fs.root / "log"
    with EmbeddedLogReader(log, "old") as r:
        r.commit({0: 0})
    fs.power_cut()
    assert read_committed(log, "old") is not None
    forget_group(log, "old")
    fs.power_cut()
    assert read_committed(log, "old") is None and "old" not in list_groups(log)


def test_log_retention_deletions_stay_deleted(fs: PowerCutFS) -> None:
    log = fs.root / "log"

    async def run() -> list[int]:
        w = await _append(log, 40, retention_seconds=0.0, retention_check_seconds=0.02)
        with EmbeddedLogReader(log, "g") as r:
            r.commit({0: w.end_offset})
        deadline = time.monotonic() + 10
        pdir = seg.partition_dir(log, 0)
        while len(seg.list_segments(pdir)) > 1 and time.monotonic() < deadline:
            await w.append(b"k", b"x")  # retention runs in the writer thread, after a group
            await asyncio.sleep(0.05)
        await w.close()
        return seg.list_segments(pdir)

    left = asyncio.run(run())
    assert len(left) <= 2, left
    fs.power_cut()
    assert seg.list_segments(seg.partition_dir(log, 0)) == left, "deleted segments came back"


def test_spool_deletions_stay_deleted(fs: PowerCutFS) -> None:
    d = fs.root / "spool"
    with Spool(d, SpoolLimits(segment_bytes=256, window_seconds=0.0, window_bytes=0)) as spool:
        for _ in range(10):
            spool.append([lambda s: b"r" * 300])
        spool.ack(spool.pending_seqs(100))
        assert spool.maintain() > 0
        left = spool_segments(d)
    fs.power_cut()
    assert spool_segments(d) == left, "files the spool deleted came back"


def test_journal_prune_deletions_stay_deleted(fs: PowerCutFS) -> None:
    data = fs.root / "fb"
    jdir = jn.journal_dir(data)

    async def write() -> None:
        w = jn.JournalWriter(jdir, segment_bytes=200)
        await w.start()
        for i in range(6):
            await w.append(jn.Entry("t", "a", "x", "", [(i, i)], 1, 1, b"b" * 100), 0)
        await w.close()

    asyncio.run(write())
    bases = jn.list_segments(jdir)
    assert len(bases) >= 3
    p = pg.Progress("http://x", bases[-1], jn.HEADER_SIZE, completed={b: 0 for b in bases[:-1]})
    deleted = pg.prune(jdir, p, 0.0)
    assert deleted
    fs.power_cut()
    assert jn.list_segments(jdir) == [b for b in bases if jn.segment_path(jdir, b) not in deleted]


def test_replay_progress_and_rejections_survive(fs: PowerCutFS) -> None:
    """What replay writes down (its position, and a request the primary refused for good, kept for an
    operator) is on disk once written: a power cut neither loses it nor turns it into garbage. Each in
    a data directory of its own whose replay/ directory does not exist yet."""
    data, data2 = fs.root / "fb", fs.root / "fb2"
    for d in (data, data2):
        d.mkdir()
    sync_dir(fs.root)  # by hand: the test's own directories are not under test
    replay = Replay(ReplayOptions(data_dir=data, url="http://127.0.0.1:9", api_key="k"))
    entry = jn.Entry("t", "agent-1", "application/json", "", [(1, 2)], 2, 4, b"{}")
    replay._write_rejected(jn.Record(7, 32, 100, 7, 0, entry), 422, "bad report", {"reported": True})
    pg.save_progress(data2, pg.Progress("http://x", 7, 99, requests=3, completed={1: 5}))
    fs.power_cut()
    got = pg.load_progress(data2)
    assert got is not None and (got.segment, got.pos, got.completed) == (7, 99, {1: 5})
    lines = (pg.replay_dir(data) / pg.REJECTED_FILE).read_text().splitlines()
    assert [json.loads(x)["agent"] for x in lines] == ["agent-1"]


def test_second_partition_of_a_running_log_survives(fs: PowerCutFS) -> None:
    """A writer that takes a partition nobody wrote before creates its directory in a log directory
    that already exists (and whose consumers directory exists): only its own sync makes it durable."""
    log = fs.root / "log"

    async def run() -> list[bytes]:
        first = EmbeddedLogWriter(log, partitions=2)
        await first.start()
        second = EmbeddedLogWriter(log, partitions=2)
        await second.start()
        assert second.partition == 1
        values = [f"p1-{i}".encode() for i in range(5)]
        for v in values:
            await second.append(b"k", v)
        await second.close()
        await first.close()
        return values

    values = asyncio.run(run())
    fs.power_cut()

    async def read() -> list[bytes]:
        w = EmbeddedLogWriter(log, partitions=2)  # recovery of partition 0; partition 1 read below
        await w.start()
        await w.close()
        with EmbeddedLogReader(log, "check", partitions=2, claim_grace=0) as r:
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(got) < len(values) and time.monotonic() < deadline:
                got += [x.value for x in r.poll(100, 0.1).records if x.partition == 1]
            return got

    assert asyncio.run(read()) == values


def test_recreated_watermark_survives(fs: PowerCutFS) -> None:
    """A log whose watermark file is gone gets a new one at start; it is the floor below which damage
    is refused, so its name must be durable like its content."""
    log = fs.root / "log"
    pdir = seg.partition_dir(log, 0)

    async def write(n: int) -> int:
        w = await _append(log, n)
        end = w.end_offset
        await w.close()
        return end

    asyncio.run(write(5))
    (pdir / seg.WATERMARK_FILE).unlink()
    sync_dir(pdir)
    end = asyncio.run(write(0))
    fs.power_cut()
    assert seg.read_watermark(pdir) == end == 5


def test_a_store_created_in_new_directories_survives(fs: PowerCutFS) -> None:
    """``store.path`` may name directories that do not exist yet: the store creates them, and their
    entries must be durable before it acknowledges a write (SQLite syncs its own files, not the
    directories above them)."""
    from lossproof.points import SeriesSamples
    from lossproof.store.base import Matcher, WriteBatch
    from lossproof.store.sqlite import SqliteStore

    path = fs.root / "stores" / "new" / "store.db"
    store = SqliteStore(path)
    point = SeriesSamples("m", {}, [1_700_000_000_000], [1.5])
    store.write_batch(WriteBatch(series=[("t", point)], now_ms=1))
    store.close()
    fs.power_cut()
    store = SqliteStore(path)
    try:
        got = store.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62)
        assert [s.points for s in got] == [[(1_700_000_000_000, 1.5)]]
    finally:
        store.close()
