"""The fallback on a disk that is really full (a small tmpfs): the receiver refuses without piling up
files.

Injected faults (``fallback.write``) fail every write alike; only a real file system has room for a
32-byte segment header and none for a record.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lossproof.fallback import journal as jn
from lptest.fallback import HTTP, Fallback, journal_seqs
from lptest.pipeline import report


def fill_up(mnt: Path, leave: int = 0) -> Path:
    """Fill the file system at ``mnt`` but for about ``leave`` bytes; returns the filler file
    (deleting it makes room again)."""
    slack = mnt / "slack"
    if leave:
        slack.write_bytes(b"\1" * leave)
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096):  # to the last block
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    if leave:
        slack.unlink()
    return filler


def health(fb: Fallback) -> int:
    return HTTP.request("GET", fb.url + "/healthz").status


def test_a_full_disk_costs_no_new_segment_file_per_refused_write(
    tiny_fs: Path, fallback_factory: Callable[..., Fallback]
) -> None:
    fb = fallback_factory("tiny")  # its data dir is the tmpfs
    fb.start()
    assert fb.post("full", [report(1)]).status == 200
    # Room for a segment header (a page), none for these ~360 KB requests: each one fails after its
    # write took what was left, which cutting it off frees again.
    filler = fill_up(tiny_fs, leave=256 * 1024)
    files_before = len(jn.list_segments(fb.journal))
    statuses = [fb.post("full", [report(seq, 4000)]).status for seq in range(2, 32)]
    assert statuses == [503] * 30, statuses
    time.sleep(2.5)  # the writer probes the disk every second meanwhile
    files = jn.list_segments(fb.journal)
    # at most the one segment it moved to after the first failure, however many attempts
    assert len(files) <= files_before + 1, (files_before, files)
    assert health(fb) == 503  # the probe is as large as the write that failed

    filler.unlink()
    deadline = time.monotonic() + 10
    while health(fb) != 200:  # healthy again by itself, without traffic
        assert time.monotonic() < deadline, "never healthy again once the disk had room"
        time.sleep(0.1)
    assert fb.post("full", [report(40, 4000)]).status == 200
    assert fb.post("full", [report(41)]).status == 200
    # exactly what was acknowledged, nothing of the refused writes
    assert [s for _t, _a, s in journal_seqs(fb.journal)] == [1, 40, 41]
    assert len(jn.list_segments(fb.journal)) <= files_before + 1


def _entry(n: int, size: int) -> jn.Entry:
    return jn.Entry("t", f"a{n}", "application/json", "", [(n, n)], 1, 1, os.urandom(size))


def test_the_segment_written_again_after_failed_writes_reads_back_exactly_the_acknowledged(
    tiny_fs: Path,
) -> None:
    """The writer stays in a segment that holds no record yet after its writes failed (it cuts
    them off): what it writes there once the disk has room is read back, before and after a crash
    and a restart, and nothing of the failed writes is."""
    journal = tiny_fs / "journal"

    async def full_then_room() -> jn.JournalWriter:
        w = jn.JournalWriter(journal)
        await w.start()
        await w.append(_entry(1, 100), 1)
        filler = fill_up(tiny_fs, leave=128 * 1024)
        for n in range(2, 8):  # room for a segment header, not for these
            with pytest.raises(jn.JournalUnavailable, match="No space left"):
                await w.append(_entry(n, 200_000), n)
        bases = jn.list_segments(journal)
        assert len(bases) == 2, bases  # the first one, and the one it moved to after the first failure
        assert jn.segment_path(journal, bases[-1]).stat().st_size == jn.HEADER_SIZE  # failed bytes cut off
        filler.unlink()
        await w.append(_entry(8, 200_000), 8)
        await w.append(_entry(9, 100), 9)
        assert [r.entry.agent for r in jn.read_all(journal)] == ["a1", "a8", "a9"]  # a live reader
        assert jn.list_segments(journal) == bases
        return w

    w = asyncio.run(full_then_room())
    w._gc.abandon()  # kill -9
    w._close_files()
    assert [r.entry.agent for r in jn.read_all(journal)] == ["a1", "a8", "a9"]

    async def restart() -> None:
        w = jn.JournalWriter(journal)
        await w.start()
        await w.append(_entry(10, 100), 10)
        await w.close()

    asyncio.run(restart())
    records = jn.read_all(journal)
    assert [r.entry.agent for r in records] == ["a1", "a8", "a9", "a10"]
