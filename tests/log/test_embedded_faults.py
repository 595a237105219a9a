"""Embedded log under injected faults: failed fsync, slow fsync, full disk."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from lossproof.faults import Faults, write_faults
from lossproof.log.base import LogError, LogUnavailable, Position
from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.segments.fs import FaultyFS


def read_everything(d: Path, group: str = "check") -> tuple[dict[int, bytes], list]:
    r = EmbeddedLogReader(d, group)
    got: dict[int, bytes] = {}
    gaps = []
    while True:
        res = r.poll(1000, 0.1)
        if not res.records and not res.gaps:
            break
        for x in res.records:
            assert x.offset not in got
            got[x.offset] = x.value
        gaps += res.gaps
    r.close()
    return got, gaps


@pytest.mark.parametrize(
    ("fault", "label"),
    [({"log.fsync": {"mode": "fail"}}, "fsync_eio"), ({"log.write": {"mode": "enospc"}}, "write_enospc")],
)
def test_failed_fsync_or_full_disk_never_acks_and_recovers(tmp_path: Path, fault: dict, label: str) -> None:
    d = tmp_path / "log"
    ff = tmp_path / "faults.json"

    async def main() -> dict[int, bytes]:
        w = EmbeddedLogWriter(d, fs=FaultyFS(Faults(str(ff)), "log"))
        await w.start()
        acked: dict[int, bytes] = {}
        for i in range(10):
            acked[(await w.append(b"k", b"ok-%d" % i)).offset] = b"ok-%d" % i

        write_faults(str(ff), fault)
        results = await asyncio.gather(
            *(w.append(b"k", b"bad-%d" % i) for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, LogUnavailable) for r in results), results
        assert "failed" in results[0].reason  # type: ignore[union-attr]
        ok, reason = w.healthy()
        assert not ok and reason
        assert w.registry.get_sample_value("lossproof_log_healthy") == 0
        # Counted per failed append: the first group under the fault's stage, and, when the appends
        # did not all make one group (a loaded machine), the later ones under the failed roll to a
        # new segment that every group after a failure begins with.
        errors = w.registry.get_sample_value
        first = errors("lossproof_log_append_errors_total", {"reason": label}) or 0
        later = errors("lossproof_log_append_errors_total", {"reason": "roll_" + label.split("_")[1]}) or 0
        assert first >= 1 and first + later == 20, (first, later)
        # still failing while the fault is on: and the background probe must not flip health
        with pytest.raises(LogUnavailable):
            await w.append(b"k", b"bad-again")
        await asyncio.sleep(0.3)
        assert not w.healthy()[0]

        write_faults(str(ff), {})
        pos = await w.append(b"k", b"after")
        assert w.healthy() == (True, "")
        assert w.registry.get_sample_value("lossproof_log_healthy") == 1
        assert pos.offset >= 10 + 20, "an offset handed to a failed append was reused"
        acked[pos.offset] = b"after"
        for i in range(10):
            acked[(await w.append(b"k", b"more-%d" % i)).offset] = b"more-%d" % i
        await w.close()
        return acked

    acked = asyncio.run(main())
    got, gaps = read_everything(d)
    assert not gaps, "void offsets of failed appends were reported as lost data"
    assert got == acked, "a failed append became visible, or an acked one is missing"

    async def reopen() -> Position:  # recovery over the sealed failed segment
        w = EmbeddedLogWriter(d)
        await w.start()
        pos = await w.append(b"k", b"reopened")
        await w.close()
        return pos

    pos = asyncio.run(reopen())
    assert pos.offset > max(acked)
    got, gaps = read_everything(d, "check2")
    assert not gaps and got == {**acked, pos.offset: b"reopened"}


def test_fault_flapping_under_load_never_loses_an_ack(tmp_path: Path) -> None:
    d = tmp_path / "log"
    ff = tmp_path / "faults.json"

    async def main() -> tuple[dict[int, bytes], int]:
        w = EmbeddedLogWriter(d, fs=FaultyFS(Faults(str(ff)), "log"), segment_bytes=64 * 1024)
        await w.start()
        acked: dict[int, bytes] = {}
        failures = 0
        stop = False

        async def appender(t: int) -> None:
            nonlocal failures
            i = 0
            while not stop:
                v = b"%d-%d" % (t, i) * 20
                i += 1
                try:
                    pos = await w.append(b"t%d" % t, v)
                except LogUnavailable:
                    failures += 1
                    await asyncio.sleep(0.001)
                    continue
                assert pos.offset not in acked
                acked[pos.offset] = v

        tasks = [asyncio.create_task(appender(t)) for t in range(8)]
        for mode in ("fail", None, "fail", None, "enospc", None):
            if mode == "enospc":
                write_faults(str(ff), {"log.write": {"mode": "enospc"}})
            elif mode:
                write_faults(str(ff), {"log.fsync": {"mode": mode}})
            else:
                write_faults(str(ff), {})
            await asyncio.sleep(0.15)
        stop = True
        await asyncio.gather(*tasks)
        await w.close()
        return acked, failures

    acked, failures = asyncio.run(main())
    assert failures > 0 and len(acked) > 100
    got, gaps = read_everything(d)
    assert not gaps
    assert got == acked


def test_slow_fsync_delays_the_ack(tmp_path: Path) -> None:
    d = tmp_path / "log"
    ff = tmp_path / "faults.json"
    write_faults(str(ff), {"log.fsync": {"mode": "delay", "seconds": 0.4}})

    async def main() -> None:
        w = EmbeddedLogWriter(d, fs=FaultyFS(Faults(str(ff)), "log"))
        await w.start()
        t0 = time.monotonic()
        task = asyncio.create_task(w.append(b"k", b"slow"))
        await asyncio.sleep(0.15)
        assert not task.done(), "append returned before its fsync"
        # A reader in another thread must not see the written-but-not-fsync'd record.
        seen: list[int] = []
        th = threading.Thread(target=lambda: seen.extend(x.offset for x in _poll_once(d, 0.1)))
        th.start()
        await asyncio.to_thread(th.join)
        assert seen == [], "a reader saw a record before it was durable"
        pos = await task
        assert time.monotonic() - t0 >= 0.4
        write_faults(str(ff), {})
        await w.append(b"k", b"fast")
        await w.close()
        assert pos.offset == 0

    asyncio.run(main())
    got, _ = read_everything(d)
    assert got == {0: b"slow", 1: b"fast"}


def _poll_once(d: Path, timeout: float) -> list:
    r = EmbeddedLogReader(d, "peek")
    try:
        return r.poll(10, timeout).records
    finally:
        r.close()


def test_second_writer_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    import os

    d = tmp_path / "log"

    async def main() -> None:
        w = EmbeddedLogWriter(d)
        await w.start()
        w2 = EmbeddedLogWriter(d)
        with pytest.raises(
            LogError, match=rf"another process is writing the log at .* \(pid {os.getpid()}\)"
        ):
            await w2.start()
        await w.close()
        w3 = EmbeddedLogWriter(d)  # released on close
        await w3.start()
        await w3.close()

    asyncio.run(main())


def test_append_after_close_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        w = EmbeddedLogWriter(tmp_path / "log")
        assert not w.healthy()[0]
        await w.start()
        await w.close()
        with pytest.raises(LogUnavailable):
            await w.append(b"k", b"v")
        assert not w.healthy()[0]

    asyncio.run(main())


def test_writer_becomes_healthy_again_without_traffic(tmp_path: Path) -> None:
    d = tmp_path / "log"
    ff = tmp_path / "faults.json"

    async def main() -> None:
        w = EmbeddedLogWriter(d, fs=FaultyFS(Faults(str(ff)), "log"))
        await w.start()
        write_faults(str(ff), {"log.fsync": {"mode": "fail"}})
        with pytest.raises(LogUnavailable):
            await w.append(b"k", b"v")
        await asyncio.sleep(0.2)
        assert not w.healthy()[0]
        write_faults(str(ff), {})
        deadline = time.monotonic() + 5
        while not w.healthy()[0]:  # a probe (seal + new segment + fsync) clears it, no append needed
            assert time.monotonic() < deadline, w.healthy()
            await asyncio.sleep(0.02)
        assert (await w.append(b"k", b"v2")).offset >= 1
        await w.close()

    asyncio.run(main())


def test_open_reader_never_returns_the_untrusted_tail_of_a_failed_segment(tmp_path: Path) -> None:
    """A reader positioned in the segment when its fsync failed must skip what was written but
    never acknowledged (the write reached the page cache, the fsync failed)."""
    d = tmp_path / "log"
    ff = tmp_path / "faults.json"

    async def main() -> None:
        w = EmbeddedLogWriter(d, fs=FaultyFS(Faults(str(ff)), "log"))
        await w.start()
        for i in range(5):
            await w.append(b"k", b"ok-%d" % i)
        r = EmbeddedLogReader(d, "tail")
        assert [x.offset for x in r.poll(100, 1.0).records] == [0, 1, 2, 3, 4]
        write_faults(str(ff), {"log.fsync": {"mode": "fail"}})
        failed = await asyncio.gather(*(w.append(b"k", b"failed") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(x, LogUnavailable) for x in failed)
        write_faults(str(ff), {})
        pos = await w.append(b"k", b"after")
        res = await asyncio.to_thread(r.poll, 100, 0.3)
        assert [(x.offset, x.value) for x in res.records] == [(pos.offset, b"after")]
        assert res.gaps == []
        r.close()
        await w.close()

    asyncio.run(main())
