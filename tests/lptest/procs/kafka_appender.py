"""Append to a Kafka topic through KafkaLogWriter forever; print one line per acknowledged append.

Default output (the contract harness's format): ``ACK offset key tag``. With ``--verbose``:
``ACK offset key tag partition unix_time`` and ``FAIL tag unix_time reason`` for every append
answered with LogUnavailable (the task waits 50 ms and goes on with a new record).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from lossproof.config import KafkaLogConfig
from lossproof.log.base import LogUnavailable
from lossproof.log.kafka import KafkaLogWriter


def make_value(tag: str, size: int) -> bytes:
    unit = f"<{tag}>".encode()
    return (unit * (size // len(unit) + 1))[:size] if size else b""


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--unsafe", action="store_true")
    args = ap.parse_args()
    cfg = KafkaLogConfig(
        bootstrap_servers=args.bootstrap, topic=args.topic, delivery_timeout_seconds=8.0, unsafe=args.unsafe
    )
    writer = KafkaLogWriter(cfg, append_timeout=10.0, retention_check_seconds=3600.0)
    await writer.start()
    out = sys.stdout.buffer
    out.write(f"READY {os.getpid()}\n".encode())
    out.flush()

    async def task(t: int) -> None:
        i = 0
        while True:
            tag = f"{t}.{i}.{os.getpid()}"
            key = f"k{t}"
            i += 1
            try:
                pos = await writer.append(key.encode(), make_value(tag, args.value_size))
            except LogUnavailable as e:
                if args.verbose:
                    reason = e.reason.replace("\n", " ")
                    out.write(f"FAIL {tag} {time.time():.3f} {reason}\n".encode())
                    out.flush()
                await asyncio.sleep(0.05)
                continue
            if args.verbose:
                line = f"ACK {pos.offset} {key} {tag} {pos.partition} {time.time():.3f}\n"
            else:
                line = f"ACK {pos.offset} {key} {tag}\n"
            out.write(line.encode())
            out.flush()

    await asyncio.gather(*(task(t) for t in range(args.concurrency)))


if __name__ == "__main__":
    asyncio.run(main())
