"""The embedded log on the power-cut file system (tests/lptest/pcfs.py): kill -9 + power cut, in rounds.

The file system, not the log, decides what survives: only what a real fsync/fdatasync (files) or a
directory fsync (names) covered. So a missing sync anywhere on the log's path loses acknowledged data
here, whatever the log's own watermark says. Checked after every cut:

- every acknowledged offset reads back with its value (no acknowledged record lost or changed), up
  to the segments retention deleted after the consumer group had read them;
- no offset was acknowledged twice with different values (offsets never handed out again);
- the log reports no gap: after a clean restart it never published as durable what a cut took;
- a consumer group's committed offset survives the cut.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lossproof.log.base import LogCorrupt, LogGap
from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.log.embedded.damage import corrupt_record
from lptest import PROCS
from lptest.log_harness import make_value
from lptest.powercut import LineProc, PowerCutFS, require_fuse

pytestmark = pytest.mark.process

VALUE_SIZE = 300
SEGMENT_BYTES = 8192  # small: rolls, seals and new segment files every few groups
GROUP = "check"


def appender(log: Path, tmp: Path, *extra: str) -> LineProc:
    args = [str(PROCS / "embedded_appender.py"), str(log), "--value-size", str(VALUE_SIZE),
            "--segment-bytes", str(SEGMENT_BYTES), "--concurrency", "8", *extra]  # fmt: skip
    return LineProc(args, tmp / "appender.log")


def acked_of(lines: list[str]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for line in lines:
        if line.startswith("ACK "):
            _, off, _key, tag = line.split(" ")
            out[int(off)] = make_value(tag, VALUE_SIZE)
    return out


async def read_back(log: Path, committed_before: int | None) -> tuple[dict[int, bytes], list[LogGap], int]:
    """Restart the log (recovery) and read all of it as consumer group ``GROUP``; commit the end."""
    writer = EmbeddedLogWriter(log, segment_bytes=SEGMENT_BYTES)
    await writer.start()
    try:
        end = writer.end_offset
        reader = EmbeddedLogReader(log, GROUP, poll_interval=0.002)
        try:
            # The commit of the previous round returned, so it was durable: the cut cannot undo it.
            assert reader.committed == committed_before, "a committed consumer offset did not survive"
            records: dict[int, bytes] = {}
            gaps: list[LogGap] = []
            pos = 0
            deadline = time.monotonic() + 30
            while pos < end and time.monotonic() < deadline:
                res = reader.poll(10_000, 0.05)
                for r in res.records:
                    records[r.offset] = r.value
                gaps.extend(res.gaps)
                pos = max(pos, res.next_offsets().get(0, pos))
            if end:
                reader.commit({0: end})
        finally:
            reader.close()
    finally:
        await writer.close()
    return records, gaps, end


def test_log_survives_kill9_and_power_cuts(tmp_path: Path) -> None:
    require_fuse()
    with PowerCutFS(tmp_path, seed=1) as fs:
        log = fs.root / "data" / "log"
        # A consumer group registers before any writer exists (the order of a fresh `up`'s processes
        # varies): the writer must make its own partition directory durable.
        EmbeddedLogReader(log, GROUP).close()
        acked: dict[int, bytes] = {}
        published = 0  # every offset below it was announced durable by a restart
        committed: int | None = None
        for rnd, how in enumerate(["clean", "tear", "pages", "clean", "pages", "tear"]):
            app = appender(log, tmp_path)
            ready = app.wait("READY")[0].split()
            published = max(published, int(ready[3]))
            app.wait("ACK ", 60 * (rnd + 1) // 2 + 40)
            if rnd % 2:
                # The disk stops answering fsyncs, so the kill -9 lands between a group's write and
                # its sync: the killed writer leaves unsynced records behind, which the restart
                # without traffic below finds and publishes.
                fs.hang_fsync()
                time.sleep(0.3)
                app.proc.kill()  # dies once the hung fsync is answered, with EIO, below
                fs.slow_fsync(0)
            new = acked_of(app.kill9())
            for off, value in new.items():
                assert acked.get(off, value) == value, f"offset {off} acknowledged twice, with other data"
            acked.update(new)
            fs.slow_fsync(0)
            if rnd % 2:
                # Restart without traffic before the cut: what this recovery publishes as durable
                # (the killed writer's unsynced tail included) must be durable.
                idle = appender(log, tmp_path, "--idle")
                published = max(published, int(idle.wait("READY")[0].split()[3]))
                idle.kill9()
            fs.power_cut(how)
            committed_prev = committed
            records, gaps, end = asyncio.run(read_back(log, committed))
            committed = end or committed
            assert not gaps, f"round {rnd} ({how}): the log lost records it had published: {gaps}"
            # Below the previous commit the writer's retention may delete whole segments (they were
            # read and checked in an earlier round); what is still there must be intact.
            floor = committed_prev or 0
            lost = sorted(
                o for o, v in acked.items() if records.get(o, None if o < floor else b"") not in (None, v)
            )
            assert not lost, f"round {rnd} ({how}): {len(lost)} acknowledged records lost, e.g. {lost[:5]}"
            assert end >= published, f"round {rnd}: the log end went back from {published} to {end}"
        assert len(acked) > 200


def test_damage_inside_acknowledged_data_is_refused_after_a_power_cut(tmp_path: Path) -> None:
    """A bit flip in an acknowledged record with acknowledged records after it is corruption, even
    after a power cut that kept only what was fsync'd (the watermark included): recovery must refuse
    it (LogCorrupt), never cut it off as the torn tail of an unacknowledged group."""
    require_fuse()
    with PowerCutFS(tmp_path, seed=2) as fs:
        log = fs.root / "log"
        app = appender(log, tmp_path, "--segment-bytes", str(1 << 20))  # one segment: no seal vouches
        app.wait("ACK ", 200)
        acked = acked_of(app.kill9())
        fs.power_cut("pages")
        # Damage an acknowledged record in the middle of what was acknowledged: valid ones follow.
        victim = sorted(acked)[len(acked) // 2]
        corrupt_record(log, victim, where="value")
        writer = EmbeddedLogWriter(log, segment_bytes=1 << 20)
        with pytest.raises(LogCorrupt):
            asyncio.run(writer.start())
        asyncio.run(writer.close())
