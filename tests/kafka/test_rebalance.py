"""Two worker processes in one consumer group; one is killed with SIGKILL during a rebalance.

Each stand-in worker "stores" records by appending ``partition offset`` to its own file (fsync'd)
before it commits. Nothing may be skipped: at the end, the union of the files holds every record.
Re-reads (the killed worker's uncommitted batch) are allowed: the real store is idempotent.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

from lossproof.config import KafkaLogConfig
from lossproof.dev.kafka import DevCluster
from lossproof.log.kafka import KafkaLogWriter
from lptest import PROCS, subprocess_env
from lptest.kafka import new_topic


def spawn(cfg: KafkaLogConfig, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(PROCS / "kafka_reader.py"),
            "--bootstrap",
            cfg.bootstrap_servers,
            "--topic",
            cfg.topic,
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )


def stored(*files: Path) -> list[tuple[int, int]]:
    out = []
    for f in files:
        if f.exists():
            for line in f.read_text().splitlines():
                p, o = line.split()
                out.append((int(p), int(o)))
    return out


def append_all(cfg: KafkaLogConfig, n: int) -> set[tuple[int, int]]:
    async def main() -> set[tuple[int, int]]:
        w = KafkaLogWriter(cfg, retention_check_seconds=3600)
        await w.start()
        positions = await asyncio.gather(*(w.append(f"agent{i % 40}".encode(), b"x" * 200) for i in range(n)))
        await w.close()
        return {(p.partition, p.offset) for p in positions}

    return asyncio.run(main())


def test_reader_killed_during_rebalance_skips_nothing(cluster: DevCluster, tmp_path: Path) -> None:
    cfg = new_topic(cluster, prefix="rebalance", partitions=4)
    written = append_all(cfg, 3000)
    a_out, b_out, a2_out = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "a2.txt"
    procs = [spawn(cfg, a_out)]
    try:
        deadline = time.monotonic() + 60
        while len(stored(a_out)) < 400:
            assert time.monotonic() < deadline, "worker A stored nothing"
            time.sleep(0.05)
        procs.append(spawn(cfg, b_out))  # joins: a rebalance starts
        time.sleep(random.uniform(0.3, 1.5))
        procs[0].kill()  # kill -9 A in the middle of it
        procs[0].wait()
        time.sleep(2)
        procs.append(spawn(cfg, a2_out))  # a replacement joins: one more rebalance
        deadline = time.monotonic() + 120
        while not written <= set(stored(a_out, b_out, a2_out)):
            assert time.monotonic() < deadline, (
                f"{len(written - set(stored(a_out, b_out, a2_out)))} records never stored"
            )
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    got = stored(a_out, b_out, a2_out)
    assert written <= set(got), "records skipped"
    dup = len(got) - len(set(got))
    print(f"{len(written)} records, {dup} read twice (the killed worker's uncommitted batch)")
