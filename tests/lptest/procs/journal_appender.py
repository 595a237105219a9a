"""Append records to a fallback journal forever; print ``ACK segment pos index tag`` once each is durable.

The first line is ``READY pid``. Run by tests/crash, which kill -9 it and cut the power under it. The
record's entry carries the tag in ``agent`` and ``body`` (``body_bytes(tag)``), so content can be checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from lossproof.fallback.journal import Entry, JournalWriter
from lossproof.faults import file_system


def body_bytes(tag: str) -> bytes:
    return (f"<{tag}>" * 20).encode()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--segment-bytes", type=int, default=8192)
    args = ap.parse_args()
    writer = JournalWriter(args.directory, segment_bytes=args.segment_bytes, fs=file_system("fallback"))
    await writer.start()
    out = sys.stdout
    out.write(f"READY {os.getpid()}\n")
    out.flush()

    async def task(t: int) -> None:
        i = 0
        while True:
            tag = f"{t}.{i}.{os.getpid()}"
            entry = Entry("t", tag, "application/x-test", "", [(i, i)], 1, 1, body_bytes(tag))
            pos = await writer.append(entry, 0)
            out.write(f"ACK {pos.segment} {pos.pos} {tag}\n")
            out.flush()
            i += 1

    await asyncio.gather(*(task(t) for t in range(args.concurrency)))


if __name__ == "__main__":
    asyncio.run(main())
