"""Embedded-log specifics of recovery and damage handling (the contract suite covers the rest)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lossproof.log.base import LogCorrupt, LogError, LogGap, LogRecord
from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter, damage
from lossproof.log.embedded import segment as seg
from lptest import PROCS, subprocess_env


def build(d: Path, n: int, *, segment_bytes: int = 2048, size: int = 100) -> dict[int, bytes]:
    async def main() -> dict[int, bytes]:
        w = EmbeddedLogWriter(d, segment_bytes=segment_bytes)
        await w.start()
        out = {}
        for i in range(n):
            v = bytes([65 + i % 26]) * size
            out[(await w.append(b"k%d" % i, v)).offset] = v
        await w.close()
        return out

    return asyncio.run(main())


async def start_and_close(d: Path, **kw: object) -> EmbeddedLogWriter:
    w = EmbeddedLogWriter(d, segment_bytes=2048, **kw)  # type: ignore[arg-type]
    await w.start()
    await w.close()
    return w


def read_all(d: Path, group: str = "t") -> tuple[list[LogRecord], list[LogGap]]:
    r = EmbeddedLogReader(d, group)
    recs: list[LogRecord] = []
    gaps: list[LogGap] = []
    while True:
        res = r.poll(1000, 0.05)
        if not res.records and not res.gaps:
            break
        recs += res.records
        gaps += res.gaps
    r.close()
    return recs, gaps


def covered(gaps: list[LogGap]) -> set[int]:
    return {o for g in gaps for o in range(g.first, g.last + 1)}


def test_bad_record_followed_by_valid_ones_in_last_segment_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "log"
    written = build(d, 10, segment_bytes=2**20)
    loc = damage.corrupt_record(d, 4)
    with pytest.raises(LogCorrupt, match=rf"{loc.path.name}: bad record at byte {loc.pos} \(CRC mismatch\)"):
        asyncio.run(start_and_close(d))
    recs, gaps = read_all(d)  # readers keep going: a gap for exactly the damaged record
    assert [(g.first, g.last) for g in gaps] == [(4, 4)]
    assert loc.path.name in gaps[0].reason and f"byte {loc.pos}" in gaps[0].reason
    assert {r.offset: r.value for r in recs} == {o: v for o, v in written.items() if o != 4}


def test_out_of_order_power_loss_tail_past_the_watermark_is_a_torn_tail(tmp_path: Path) -> None:
    """A power cut during a group's write can persist its pages out of order: a torn record followed
    by an intact one, all past the durable watermark (never acknowledged). That must not stop the
    log from starting; damage below the watermark still does (test above)."""
    d = tmp_path / "log"
    written = build(d, 8, segment_bytes=2**20)
    # as if the group 5..7 was written but its fsync never returned: the watermark stayed at 5
    (d / "p0" / seg.WATERMARK_FILE).write_bytes(seg.encode_watermark(5))
    damage.corrupt_record(d, 5)

    async def main() -> int:
        w = EmbeddedLogWriter(d)
        await w.start()
        off = (await w.append(b"n", b"new")).offset
        await w.close()
        return off

    assert asyncio.run(main()) == 5
    recs, gaps = read_all(d)
    assert gaps == []
    assert {r.offset: r.value for r in recs} == {**{o: written[o] for o in range(5)}, 5: b"new"}


def test_damage_below_what_a_group_committed_is_refused_even_past_a_stale_watermark(tmp_path: Path) -> None:
    """The watermark file may lag after a power cut; what a consumer group committed was read, hence
    durable: damage there is corruption, not a torn tail."""
    from lossproof.log.embedded.offsets import write_committed

    d = tmp_path / "log"
    build(d, 8, segment_bytes=2**20)
    (d / "p0" / seg.WATERMARK_FILE).write_bytes(seg.encode_watermark(5))
    write_committed(d, "workers", {0: 7})
    damage.corrupt_record(d, 5)
    with pytest.raises(LogCorrupt, match="bad record"):
        asyncio.run(start_and_close(d))


def test_a_lost_tail_below_a_committed_offset_is_never_reused(tmp_path: Path) -> None:
    """Records a group read, then lost with the tail (a stale watermark cannot tell): new appends
    start past the commit, and the loss is counted, so no reader skips new data at reused offsets."""
    from lossproof.log.embedded.offsets import write_committed

    d = tmp_path / "log"
    build(d, 8, segment_bytes=2**20)
    (d / "p0" / seg.WATERMARK_FILE).write_bytes(seg.encode_watermark(4))
    write_committed(d, "workers", {0: 7})
    damage.truncate_last_segment(d, damage.locate_record(d, 5).pos)

    async def main() -> int:
        w = EmbeddedLogWriter(d)
        await w.start()
        assert w.registry.get_sample_value("lossproof_log_recovery_lost_records_total") == 2
        off = (await w.append(b"n", b"new")).offset
        await w.close()
        return off

    assert asyncio.run(main()) == 7


def test_damage_in_sealed_segment_is_a_gap_or_refused_with_full_verify(tmp_path: Path) -> None:
    d = tmp_path / "log"
    written = build(d, 40)
    assert len(seg.list_segments(d / "p0")) > 2
    loc = damage.corrupt_record(d, 2)
    asyncio.run(start_and_close(d))  # header walk only: starts
    with pytest.raises(LogCorrupt, match=loc.path.name):
        asyncio.run(start_and_close(d, full_verify=True))
    recs, gaps = read_all(d)
    assert [(g.first, g.last) for g in gaps] == [(2, 2)]
    assert {r.offset for r in recs} == set(written) - {2}


def test_broken_header_in_sealed_segment_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "log"
    build(d, 40)
    loc = damage.corrupt_record(d, 3, where="magic")
    with pytest.raises(LogCorrupt, match=rf"{loc.path.name}: bad record at byte {loc.pos}"):
        asyncio.run(start_and_close(d))
    _recs, gaps = read_all(d)
    assert covered(gaps) == {3}


def test_short_sealed_segment_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "log"
    build(d, 40)
    first = seg.segment_path(d / "p0", 0)
    os.truncate(first, first.stat().st_size - 10)
    with pytest.raises(LogCorrupt, match=first.name):
        asyncio.run(start_and_close(d))
    _recs, gaps = read_all(d)
    assert gaps and all(first.name in g.reason for g in gaps)


def test_watermark_ahead_of_data_never_reuses_offsets(tmp_path: Path) -> None:
    """A power loss that took acknowledged data: new offsets start after the watermark, gap reported."""
    d = tmp_path / "log"
    written = build(d, 20, segment_bytes=2**20)
    cut = damage.locate_record(d, 15)
    damage.truncate_last_segment(d, cut.pos + 7)

    async def main() -> int:
        w = EmbeddedLogWriter(d)
        await w.start()
        assert w.registry.get_sample_value("lossproof_log_recovery_lost_records_total") == 5
        assert w.registry.get_sample_value("lossproof_log_recovery_truncated_bytes_total") == 7
        off = (await w.append(b"n", b"new")).offset
        await w.close()
        return off

    assert asyncio.run(main()) == 20
    recs, gaps = read_all(d)
    assert [(g.first, g.last) for g in gaps] == [(15, 19)]
    assert {r.offset: r.value for r in recs} == {**{o: written[o] for o in range(15)}, 20: b"new"}


def test_crash_between_seal_and_next_segment(tmp_path: Path) -> None:
    d = tmp_path / "log"
    written = build(d, 10, segment_bytes=2**20)
    last = seg.segment_path(d / "p0", 0)
    # as if the writer sealed after a failed append (offsets 10..12 void) and died before rolling
    seg.write_seal(d / "p0", 0, seg.Seal(last.stat().st_size, 10, 13, seg.now_ms()))

    async def main() -> int:
        w = EmbeddedLogWriter(d)
        await w.start()
        off = (await w.append(b"n", b"new")).offset
        await w.close()
        return off

    assert asyncio.run(main()) == 13
    recs, gaps = read_all(d)
    assert not gaps
    assert {r.offset: r.value for r in recs} == {**written, 13: b"new"}


def test_untrusted_tail_of_a_segment_sealed_after_failure_is_never_read(tmp_path: Path) -> None:
    d = tmp_path / "log"
    written = build(d, 5, segment_bytes=2**20)
    first = seg.segment_path(d / "p0", 0)
    end = first.stat().st_size
    with open(first, "ab") as f:  # what a failed fsync left: one complete and one torn record
        f.write(seg.encode_record(5, seg.now_ms(), b"x", b"never-acked"))
        f.write(seg.encode_record(6, seg.now_ms(), b"x", b"torn")[:20])
    seg.write_seal(d / "p0", 0, seg.Seal(end, 5, 7, seg.now_ms()))
    os.close(os.open(seg.segment_path(d / "p0", 7), os.O_CREAT | os.O_WRONLY))

    async def main() -> int:
        w = EmbeddedLogWriter(d)
        await w.start()
        off = (await w.append(b"n", b"new")).offset
        await w.close()
        return off

    assert asyncio.run(main()) == 7
    recs, gaps = read_all(d)
    assert not gaps
    assert {r.offset: r.value for r in recs} == {**written, 7: b"new"}


@pytest.mark.process
def test_reader_tails_a_live_writer_process_across_rolls(tmp_path: Path) -> None:
    d = tmp_path / "log"
    env = subprocess_env()
    proc = subprocess.Popen(
        [sys.executable, str(PROCS / "embedded_appender.py"), str(d), "--concurrency", "8",
         "--value-size", "300", "--segment-bytes", "8192"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"READY")
        r = EmbeddedLogReader(d, "live")
        seen: list[LogRecord] = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            res = r.poll(100, 0.05)
            assert not res.gaps, res.gaps
            seen += res.records
            if len(seen) > 50:
                r.commit(res.next_offsets())
    finally:
        proc.kill()
        proc.wait()
    out = proc.stdout.read() if proc.stdout else b""
    r.close()
    offsets = [x.offset for x in seen]
    assert len(offsets) > 200 and offsets == list(range(len(offsets))), "live reading skipped or repeated"
    assert seg.list_segments(d / "p0")[-1] > 0  # it rolled (and retention removed committed segments)
    acked = {
        int(line.split()[1]): line.split()[3].decode() for line in out.splitlines() if line.startswith(b"ACK")
    }
    for x in seen:
        if x.offset in acked:
            tag = acked[x.offset]
            unit = f"<{tag}>".encode()
            assert x.value == (unit * (300 // len(unit) + 1))[:300]


@pytest.mark.process
def test_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "log"
    env = subprocess_env()
    proc = subprocess.Popen(
        [sys.executable, str(PROCS / "embedded_appender.py"), str(d), "--concurrency", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"READY")
        with pytest.raises(LogError, match=rf"another process is writing the log at {d} \(pid {proc.pid}\)"):
            asyncio.run(start_and_close(d))
    finally:
        proc.kill()
        proc.wait()
    asyncio.run(start_and_close(d))  # the lock died with the process


def test_lag_counts_records_and_age(tmp_path: Path) -> None:
    d = tmp_path / "log"
    build(d, 10)
    time.sleep(0.2)
    r = EmbeddedLogReader(d, "lag")
    lag = r.lag()
    assert lag.records == 10 and lag.seconds >= 0.2
    res = r.poll(4, 1.0)
    r.commit(res.next_offsets())
    lag = r.lag()
    assert lag.records == 6 and lag.seconds >= 0.2
    r.poll(100, 0.1)
    r.commit({0: 10})
    assert r.lag().records == 0 and r.lag().seconds == 0
    r.close()
    r2 = EmbeddedLogReader(d, "lag")  # a fresh reader finds the age from the files
    r2.commit({0: 5})
    assert r2.lag().records == 5 and r2.lag().seconds >= 0.2
    r2.close()


def test_damaged_offsets_file_means_reread_not_skip(tmp_path: Path) -> None:
    d = tmp_path / "log"
    build(d, 10)
    r = EmbeddedLogReader(d, "g")
    r.commit({0: 7})
    r.close()
    p = d / "consumers" / "g.offset"
    p.write_bytes(p.read_bytes().replace(b"7", b"9", 1))
    recs, gaps = read_all(d, "g")
    assert [x.offset for x in recs] == list(range(10)) and not gaps
