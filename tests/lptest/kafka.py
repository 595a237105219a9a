"""A real 3-node Kafka cluster shared by every test of the session, plus helpers.

The cluster is started on first use (about 15-20 s) in a temp dir and killed when the test process
exits. Tests that kill brokers restore every node before they return (``ensure_all_up``). Each
test uses its own topic, so tests never see each other's records.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossproof.config import KafkaLogConfig
from lossproof.dev.kafka import DevCluster
from lptest import PROCS, read_lines, subprocess_env

_lock = threading.Lock()
_cluster: DevCluster | None = None


def session_cluster() -> DevCluster:
    """The shared 3-node cluster, started (or repaired) on demand."""
    global _cluster
    with _lock:
        if _cluster is None:
            keep = os.environ.get("LOSSPROOF_TEST_KAFKA_DIR")
            if keep:  # reuse (and leave running) a cluster there: fast iterations while developing
                c = DevCluster(Path(keep), detach=True)
                c.up(3, port=0, heap="384m", timeout=180)
                _cluster = c
                return c
            d = Path(tempfile.mkdtemp(prefix="lossproof-test-kafka-"))
            c = DevCluster(d, detach=False)
            atexit.register(_stop, c, d)
            c.up(3, port=0, heap="384m", timeout=180)
            _cluster = c
        return _cluster


def ensure_all_up(c: DevCluster) -> None:
    c.up(3, port=0, heap="384m", timeout=180)


def _stop(c: DevCluster, d: Path) -> None:
    with contextlib.suppress(Exception):
        for n in c.nodes():
            c.kill(n.id)
    shutil.rmtree(d, ignore_errors=True)


def admin(c: DevCluster):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": c.bootstrap})


def new_topic(
    c: DevCluster,
    *,
    prefix: str = "t",
    partitions: int = 1,
    replication_factor: int = 3,
    min_isr: int = 2,
    **cfg_extra: object,
) -> KafkaLogConfig:
    """A fresh topic created with lossproof's settings; returns a config naming it."""
    from lossproof.log.kafka.admin import create_topic

    cfg = KafkaLogConfig(
        bootstrap_servers=c.bootstrap,
        topic=f"{prefix}-{uuid.uuid4().hex[:12]}",
        partitions=partitions,
        replication_factor=replication_factor,
        min_insync_replicas=min_isr,
        delivery_timeout_seconds=8.0,
        session_timeout_seconds=6.0,
        unsafe=replication_factor < 3 or min_isr < 2,
        **cfg_extra,  # type: ignore[arg-type]
    )
    create_topic(admin(c), cfg)
    return cfg


# --- an appender process with timestamps --------------------------------------------------------------


@dataclass
class Ack:
    partition: int
    offset: int
    key: bytes
    tag: str
    t: float  # time.time() when acknowledged


@dataclass
class Fail:
    tag: str
    t: float
    reason: str


@dataclass
class Appender:
    """tests/kafka/kafka_appender.py in verbose mode: ACK/FAIL lines with partition and time."""

    proc: subprocess.Popen[bytes]
    value_size: int
    acks: list[Ack] = field(default_factory=list)
    fails: list[Fail] = field(default_factory=list)
    _buf: bytes = b""

    @classmethod
    def spawn(cls, cfg: KafkaLogConfig, *, concurrency: int = 8, value_size: int = 1000) -> Appender:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROCS / "kafka_appender.py"),
                "--bootstrap",
                cfg.bootstrap_servers,
                "--topic",
                cfg.topic,
                "--concurrency",
                str(concurrency),
                "--value-size",
                str(value_size),
                "--verbose",
                *(["--unsafe"] if cfg.unsafe else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=subprocess_env(),
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        return cls(proc, value_size)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        lines, self._buf = read_lines(self.proc.stdout.fileno(), self._buf)
        for line in lines:
            self._parse(line.decode())

    def _parse(self, line: str) -> None:
        parts = line.split(" ", 6)
        if parts[0] == "ACK" and len(parts) >= 6:
            _, off, key, tag, p, t = parts[:6]
            self.acks.append(Ack(int(p), int(off), key.encode(), tag, float(t)))
        elif parts[0] == "FAIL" and len(parts) >= 3:
            self.fails.append(Fail(parts[1], float(parts[2]), parts[3] if len(parts) > 3 else ""))

    def wait_acks(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < n:
            self.pump()
            if self.proc.poll() is not None:
                self.pump()
                raise AssertionError(f"appender exited with {self.proc.returncode}")
            assert time.monotonic() < deadline, f"only {len(self.acks)} acks after {timeout}s"
            time.sleep(0.02)

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump()
            time.sleep(0.05)

    def acks_between(self, t0: float, t1: float) -> list[Ack]:
        return [a for a in self.acks if t0 <= a.t < t1]

    def fails_between(self, t0: float, t1: float) -> list[Fail]:
        return [f for f in self.fails if t0 <= f.t < t1]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), True)
        self._buf += self.proc.stdout.read()
        *lines, _torn = self._buf.split(b"\n")
        self._buf = b""
        for line in lines:
            self._parse(line.decode())


def retry_admin(what: str, fn: Callable[[], Any], timeout: float = 90.0) -> Any:
    """``fn()`` (which should make a fresh admin client) until it stops failing. Right after brokers
    restart, leaders move and high watermarks lag (FENCED_LEADER_EPOCH, OFFSET_NOT_AVAILABLE,
    NOT_LEADER...), and librdkafka's admin client neither refreshes its metadata on those errors nor
    always resolves a request sent to a broker that went away: its future then times out."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (KafkaException, TimeoutError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {e!r}") from None
            time.sleep(0.5)


def read_everything(cfg: KafkaLogConfig, group: str, *, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    """All records (and gaps) of the topic as it is now, read by a fresh group: up to each partition's
    end offset (or until nothing is left there), so a slow first fetch (a broker just restarted, a
    group still joining) cannot end the read early."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    from lossproof.log.kafka import KafkaLogReader

    parts = [TopicPartition(cfg.topic, p) for p in range(cfg.partitions)]

    def offsets(spec: object) -> dict[int, int]:
        a = AdminClient({"bootstrap.servers": cfg.bootstrap_servers})
        fs = a.list_offsets({tp: spec for tp in parts}, request_timeout=15)
        return {tp.partition: f.result(timeout=20).offset for tp, f in fs.items()}

    ends: dict[int, int] = retry_admin("end offsets", lambda: offsets(OffsetSpec.latest()))
    starts: dict[int, int] = retry_admin("start offsets", lambda: offsets(OffsetSpec.earliest()))
    pos = dict(starts)  # a partition is read when pos >= end
    r = KafkaLogReader(cfg, group)
    records, gaps = [], []
    deadline = time.monotonic() + timeout
    try:
        while any(pos[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                short = {p: (pos[p], ends[p]) for p in ends if pos[p] < ends[p]}
                raise AssertionError(f"read_everything: partitions not read to their end: {short}")
            res = r.poll(1000, 1.0)
            records += res.records
            gaps += res.gaps
            for p, nxt in res.next_offsets().items():
                pos[p] = max(pos[p], nxt)
    finally:
        r.close()
    return records, gaps


# --- a power cut of every broker, emulated on disk ------------------------------------------------------


def _batches(log: Path) -> list[tuple[int, int, int]]:
    """(base offset, byte position, byte length) of every record batch in a Kafka .log segment."""
    data = log.read_bytes()
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos + 12 <= len(data):
        base = int.from_bytes(data[pos : pos + 8], "big", signed=True)
        length = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True)
        if length <= 0 or pos + 12 + length > len(data):
            break
        out.append((base, pos, 12 + length))
        pos += 12 + length
    return out


def _rewrite_checkpoint(path: Path, keep: Callable[[str, int], int | None]) -> None:
    """Rewrite a Kafka checkpoint file (version, count, one entry a line); ``keep`` maps an entry's key
    and offset to the offset to keep (None drops the entry)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return
    entries = []
    for line in lines[2:]:
        *key, off = line.split(" ")
        new = keep(" ".join(key), int(off))
        if new is not None:
            entries.append(f"{' '.join(key)} {new}")
    path.write_text("\n".join([lines[0], str(len(entries)), *entries]) + "\n")


def truncate_partitions(c: DevCluster, topic: str, targets: dict[int, int]) -> dict[int, int]:
    """What every replica of ``topic`` looks like after all brokers lost their page cache at once:
    each partition's log keeps only the record batches entirely below ``targets[p]``, on every node.
    Every node must be stopped (kill -9). Returns each partition's new log end (the base offset of
    the first batch removed, the same on every replica since followers copy the leader's batches).

    Kafka's checkpoints (fsync'd, so they survive a power cut) still name the old, longer log: the
    leader-epoch cache and the recovery-point and high-watermark files are clamped to the new
    end as Kafka's own recovery does, and the indexes and producer snapshots are removed so that the
    brokers rebuild them from the shorter segments."""
    for n in c.nodes():
        assert not c.running(n.id), f"node {n.id} is running: stop every broker first"
    ends: dict[int, int] = {}
    for n in c.nodes():
        data = c.node_dir(n.id) / "data"
        node_ends: dict[int, int] = {}
        for p, target in targets.items():
            pdir = data / f"{topic}-{p}"
            segments = sorted(pdir.glob("*.log"))
            assert segments, f"no segment of {topic}-{p} on node {n.id}"
            end: int | None = None
            for seg in segments:
                if end is not None:
                    seg.unlink()  # a whole tail segment lost
                    continue
                cut = next(((b, pos) for b, pos, _ in _batches(seg) if b >= target), None)
                if cut is not None:
                    end = cut[0]
                    with open(seg, "r+b") as f:
                        f.truncate(cut[1])
            if end is None:  # every batch is below the target: nothing lost
                end = _last_offset(segments[-1]) + 1
            node_ends[p] = end
            for pattern in ("*.index", "*.timeindex", "*.snapshot", "*.txnindex"):
                for f in pdir.glob(pattern):
                    f.unlink()
            _rewrite_checkpoint(
                pdir / "leader-epoch-checkpoint", lambda _k, start, e=end: start if start < e else None
            )
        for name in ("recovery-point-offset-checkpoint", "replication-offset-checkpoint"):
            _rewrite_checkpoint(
                data / name,
                lambda key, off, ne=node_ends: (
                    min(off, ne.get(int(key.split(" ")[1]), off)) if key.split(" ")[0] == topic else off
                ),
            )
        for p, e in node_ends.items():
            assert ends.setdefault(p, e) == e, f"replicas of {topic}-{p} disagree: {ends[p]} vs {e}"
    return ends


def _last_offset(seg: Path) -> int:
    """The last offset in a segment: base offset + lastOffsetDelta of its last batch."""
    base, pos, _ = _batches(seg)[-1]
    with open(seg, "rb") as f:
        f.seek(pos + 23)
        return base + int.from_bytes(f.read(4), "big", signed=True)
