"""Embedded log retention: only whole segments every consumer group committed past, and old enough."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lossproof.log.base import LogError
from lossproof.log.embedded import EmbeddedLogReader, EmbeddedLogWriter
from lossproof.log.embedded import segment as seg
from lossproof.log.embedded.offsets import forget_group


async def fill(w: EmbeddedLogWriter, n: int) -> None:
    for i in range(n):
        await w.append(b"k", b"%d" % i * 60)


async def first_segment_after(d: Path, w: EmbeddedLogWriter, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await w.append(b"k", b"tick")
        await asyncio.sleep(0.02)
    return seg.list_segments(d / "p0")[0]


def test_group_that_never_committed_holds_back_retention_until_forgotten(tmp_path: Path) -> None:
    d = tmp_path / "log"

    async def main() -> None:
        w = EmbeddedLogWriter(d, segment_bytes=1024, retention_check_seconds=0.02)
        await w.start()
        assert await first_segment_after(d, w, 0.1) == 0  # no group at all: nothing is deleted
        await fill(w, 30)
        # exists (before anyone commits: retention runs concurrently), never commits
        idle = EmbeddedLogReader(d, "idle")
        a = EmbeddedLogReader(d, "a")
        a.commit({0: 25})
        a.close()
        assert await first_segment_after(d, w, 0.3) == 0
        with pytest.raises(LogError):
            forget_group(d, "idle")  # its reader is still open
        idle.close()
        forget_group(d, "idle")
        first = await first_segment_after(d, w, 0.3)
        assert 0 < first <= 25
        deleted = w.registry.get_sample_value("lossproof_log_segments_deleted_total")
        assert deleted is not None and deleted >= 1
        await w.close()

    asyncio.run(main())


def test_retention_time_is_respected(tmp_path: Path) -> None:
    d = tmp_path / "log"

    async def main() -> None:
        w = EmbeddedLogWriter(d, segment_bytes=1024, retention_seconds=1.0, retention_check_seconds=0.02)
        await w.start()
        await fill(w, 30)
        r = EmbeddedLogReader(d, "a")
        r.commit({0: 30})
        r.close()
        assert await first_segment_after(d, w, 0.3) == 0  # committed, but younger than 1 s
        assert await first_segment_after(d, w, 1.0) > 0
        await w.close()

    asyncio.run(main())
