"""Backend harnesses for the log contract suite (``test_log_contract.py``).

Everything backend-specific lives here: how to build a writer/reader, how to run a writer in a
separate process that can be killed with SIGKILL, how to damage the stored data, and which
metrics to read. A Kafka harness implements the same class; operations a backend cannot do
(e.g. tearing a file's tail) raise ``pytest.skip``.
"""

from __future__ import annotations

import abc
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lossproof.log.base import LogGap, LogReader, LogRecord, LogWriter
from lptest import PROCS, read_lines, subprocess_env


def make_value(tag: str, size: int) -> bytes:
    """A deterministic value of ``size`` bytes derived from ``tag`` (so content can be checked)."""
    unit = f"<{tag}>".encode()
    return (unit * (size // len(unit) + 1))[:size] if size else b""


@dataclass
class Acked:
    offset: int
    key: bytes
    value: bytes


class AppenderProcess:
    """A writer in its own process appending forever; stdout has one line per acknowledged append."""

    def __init__(self, proc: subprocess.Popen[bytes], value_size: int) -> None:
        self.proc = proc
        self.value_size = value_size
        self._buf = b""
        self.acked: list[Acked] = []
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        lines, self._buf = read_lines(self.proc.stdout.fileno(), self._buf)
        for line in lines:
            self._parse(line)

    def wait_acks(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            if self.proc.poll() is not None:
                self._pump()
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"appender exited with {self.proc.returncode}: {err}")
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks after {timeout}s"
            time.sleep(0.01)
            self._pump()

    def kill9(self) -> list[Acked]:
        """SIGKILL the process; returns every append it acknowledged (printed) before dying."""
        self.proc.kill()
        self.proc.wait(10)
        os.set_blocking(self.proc.stdout.fileno(), True)  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        self._buf += self.proc.stdout.read()
        *lines, _torn = self._buf.split(b"\n")  # a torn last line is simply not counted as an ack
        self._buf = b""
        for line in lines:
            self._parse(line)
        return self.acked

    def _parse(self, line: bytes) -> None:
        if line.startswith(b"ACK "):
            _, off, key, tag = line.decode().split(" ")
            self.acked.append(Acked(int(off), key.encode(), make_value(tag, self.value_size)))


class LogHarness(abc.ABC):
    name: str

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    # -- construction --
    @abc.abstractmethod
    def writer(self, *, small_segments: bool = False, retention: bool = False) -> LogWriter:
        """A writer (not started). ``small_segments``: roll every few records; ``retention``: delete
        committed data promptly (retention time 0, checked often)."""

    @abc.abstractmethod
    def reader(self, group: str = "workers") -> LogReader: ...

    @abc.abstractmethod
    def spawn_appender(self, *, concurrency: int, value_size: int) -> AppenderProcess:
        """A writer in a subprocess appending continuously from ``concurrency`` tasks."""

    # -- observation --
    def fsync_count(self, writer: LogWriter) -> float | None:
        """How many durability round-trips (fsyncs) the writer did; None if not measurable."""
        return None

    def earliest_offset(self) -> int | None:
        """The lowest offset still stored (None if unknown)."""
        return None

    def recovery_truncated_bytes(self, writer: LogWriter) -> float | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most harnesses hold nothing
        """Release whatever the harness holds (called after each test)."""

    # -- damage (call with no writer/reader open) --
    def tear_tail(self) -> None:
        pytest.skip(f"{self.name}: cannot tear the tail of the log")

    def corrupt(self, offset: int) -> str:
        """Damage the stored bytes of record ``offset``; returns a name the error should mention."""
        pytest.skip(f"{self.name}: cannot corrupt stored records")

    def lose(self, first: int, last: int) -> None:
        """Make records [first, last] vanish as a data-losing log would."""
        pytest.skip(f"{self.name}: cannot make records vanish")


class EmbeddedHarness(LogHarness):
    name = "embedded"
    partitions = 1
    part = 0  # the partition the writers under test land in
    claim_grace = 0.2  # readers of one group: how soon a free partition is taken over

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.dir = tmp_path / "log"

    def writer(self, *, small_segments: bool = False, retention: bool = False) -> LogWriter:
        from lossproof.log.embedded import EmbeddedLogWriter

        return EmbeddedLogWriter(
            self.dir,
            partitions=self.partitions,
            segment_bytes=2048 if small_segments else 64 * 2**20,
            retention_seconds=0.0,
            retention_check_seconds=0.05 if retention else 3600.0,
        )

    def reader(self, group: str = "workers") -> LogReader:
        from lossproof.log.embedded import EmbeddedLogReader

        return EmbeddedLogReader(
            self.dir,
            group,
            partitions=self.partitions,
            poll_interval=0.002,
            claim_grace=self.claim_grace,
            claim_interval=0.02,
        )

    def spawn_appender(self, *, concurrency: int, value_size: int) -> AppenderProcess:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROCS / "embedded_appender.py"),
                str(self.dir),
                "--concurrency",
                str(concurrency),
                "--value-size",
                str(value_size),
                "--segment-bytes",
                str(256 * 1024),
                "--partitions",
                str(self.partitions),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
        )
        return AppenderProcess(proc, value_size)

    def fsync_count(self, writer: LogWriter) -> float | None:
        reg: Any = getattr(writer, "registry", None)
        return None if reg is None else reg.get_sample_value("lossproof_log_fsync_seconds_count")

    def recovery_truncated_bytes(self, writer: LogWriter) -> float | None:
        reg: Any = getattr(writer, "registry", None)
        return None if reg is None else reg.get_sample_value("lossproof_log_recovery_truncated_bytes_total")

    def earliest_offset(self) -> int | None:
        from lossproof.log.embedded.damage import record_locations

        for _ in range(10):
            try:
                locs = record_locations(self.dir, self.part)
            except FileNotFoundError:  # retention removed a segment between the listing and the read
                continue
            return locs[0].offset if locs else None
        raise AssertionError("segments kept vanishing while being listed")

    def tear_tail(self) -> None:
        from lossproof.log.embedded.damage import tear_tail

        tear_tail(self.dir, keep=0.6, partition=self.part)

    def corrupt(self, offset: int) -> str:
        from lossproof.log.embedded.damage import corrupt_record

        return corrupt_record(self.dir, offset, where="value", partition=self.part).path.name

    def lose(self, first: int, last: int) -> None:
        from lossproof.log.embedded.damage import lose_records

        lose_records(self.dir, first, last, self.part)


class EmbeddedSecondPartitionHarness(EmbeddedHarness):
    """The embedded log with 2 partitions, partition 0 held by another (idle) writer, so the writers
    under test write partition 1; readers take every free partition at once (claim grace 0)."""

    name = "embedded-p1of2"
    partitions = 2
    part = 1
    claim_grace = 0.0

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        from lossproof.log.embedded import segment as seg
        from lossproof.log.embedded.offsets import acquire_lock

        self.dir.mkdir(parents=True)
        self._p0_lock: int | None = acquire_lock(seg.writer_lock_path(self.dir, 0), "p0 stand-in")

    def close(self) -> None:
        from lossproof.log.embedded.offsets import release_lock

        if self._p0_lock is not None:
            release_lock(self._p0_lock)
            self._p0_lock = None


class KafkaHarness(LogHarness):
    """A fresh 1-partition topic (RF 3, min.insync.replicas 2) on the session's 3-node dev cluster.

    One partition, so offsets form one sequence as the contract tests expect; readers of one group
    share it through Kafka's group protocol (cooperative-sticky). What Kafka cannot do is skipped:
    tearing or corrupting segment files, and losing records in the middle of a partition (Kafka can
    only lose a prefix: ``delete_records``; see tests/kafka/test_gaps.py).
    """

    name = "kafka"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        from lptest.kafka import new_topic, session_cluster

        self.cluster = session_cluster()
        self.cfg = new_topic(self.cluster, prefix="contract", partitions=1)
        self._readers: list[LogReader] = []

    def writer(self, *, small_segments: bool = False, retention: bool = False) -> LogWriter:
        from lossproof.log.kafka import KafkaLogWriter

        return KafkaLogWriter(
            self.cfg,
            append_timeout=10.0,
            retention_seconds=0.0,
            retention_check_seconds=0.1 if retention else 3600.0,
        )

    def reader(self, group: str = "workers") -> LogReader:
        from lossproof.log.kafka import KafkaLogReader

        r = KafkaLogReader(self.cfg, group)
        self._readers.append(r)
        return r

    def close(self) -> None:
        for r in self._readers:  # a reader a failed test left open would stay in its group
            r.close()
        self._readers.clear()

    def spawn_appender(self, *, concurrency: int, value_size: int) -> AppenderProcess:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROCS / "kafka_appender.py"),
                "--bootstrap",
                self.cfg.bootstrap_servers,
                "--topic",
                self.cfg.topic,
                "--concurrency",
                str(concurrency),
                "--value-size",
                str(value_size),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
        )
        return AppenderProcess(proc, value_size)

    def _watermarks(self) -> tuple[int, int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        from lptest.kafka import retry_admin

        tp = TopicPartition(self.cfg.topic, 0)

        def ask(spec: object) -> int:
            admin = AdminClient({"bootstrap.servers": self.cfg.bootstrap_servers})
            return int(admin.list_offsets({tp: spec}, request_timeout=15)[tp].result(timeout=20).offset)

        lo = retry_admin("earliest offset", lambda: ask(OffsetSpec.earliest()))
        hi = retry_admin("latest offset", lambda: ask(OffsetSpec.latest()))
        return lo, hi

    def earliest_offset(self) -> int | None:
        lo, hi = self._watermarks()
        return lo if hi > lo else None

    def lose(self, first: int, last: int) -> None:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient

        lo, _ = self._watermarks()
        if first > lo:
            pytest.skip("kafka: records can only vanish from the start of a partition (delete_records)")
        admin = AdminClient({"bootstrap.servers": self.cfg.bootstrap_servers})
        for f in admin.delete_records([TopicPartition(self.cfg.topic, 0, last + 1)]).values():
            f.result(timeout=60)


HARNESSES: dict[str, type[LogHarness]] = {"embedded": EmbeddedHarness, "kafka": KafkaHarness}
HARNESSES["embedded-p1of2"] = EmbeddedSecondPartitionHarness


# --- helpers shared by the contract tests ------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def read_all(
    reader: LogReader, *, batch: int = 100, idle: float = 0.15, timeout: float = 20.0
) -> tuple[list[LogRecord], list[LogGap]]:
    """Poll until nothing new arrives for ``idle`` seconds."""
    records: list[LogRecord] = []
    gaps: list[LogGap] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = reader.poll(batch, idle)
        if not res.records and not res.gaps:
            break
        records += res.records
        gaps += res.gaps
    return records, gaps


def gap_offsets(gaps: Iterable[LogGap]) -> set[int]:
    out: set[int] = set()
    for g in gaps:
        out.update(range(g.first, g.last + 1))
    return out
