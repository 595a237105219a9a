"""Append to an embedded log forever; print ``ACK offset key tag`` for every durable append.

The first line is ``READY pid partition end_offset`` (the partition this writer process got, and the
durable end its recovery published: every offset below it is readable from then on). ``--idle`` recovers
and then appends nothing (a restart without traffic, for power-cut tests).

Run as a subprocess by the log tests, which SIGKILL it at a random moment and then check that
every printed offset is readable with the right content. The value of each record is
``make_value(tag, value_size)`` (see tests/contract/log_harness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from lossproof.faults import file_system
from lossproof.log.embedded import EmbeddedLogWriter


def make_value(tag: str, size: int) -> bytes:
    unit = f"<{tag}>".encode()
    return (unit * (size // len(unit) + 1))[:size] if size else b""


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--segment-bytes", type=int, default=256 * 1024)
    ap.add_argument("--count", type=int, default=0, help="stop after this many appends per task (0: never)")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--idle", action="store_true", help="recover, print READY, then wait without appending")
    args = ap.parse_args()
    writer = EmbeddedLogWriter(
        args.directory,
        segment_bytes=args.segment_bytes,
        partitions=args.partitions,
        fs=file_system("log"),
    )
    await writer.start()
    out = sys.stdout.buffer
    out.write(f"READY {os.getpid()} {writer.partition} {writer.end_offset}\n".encode())
    out.flush()
    if args.idle:
        await asyncio.Event().wait()

    async def task(t: int) -> None:
        i = 0
        while not args.count or i < args.count:
            tag = f"{t}.{i}.{os.getpid()}"
            key = f"k{t}"
            pos = await writer.append(key.encode(), make_value(tag, args.value_size))
            out.write(f"ACK {pos.offset} {key} {tag}\n".encode())
            out.flush()
            i += 1

    await asyncio.gather(*(task(t) for t in range(args.concurrency)))
    await writer.close()


if __name__ == "__main__":
    asyncio.run(main())
