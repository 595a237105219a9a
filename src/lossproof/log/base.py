"""The log boundary: what ingest appends to and what workers read from.

Every log implementation (embedded segment files, Kafka) provides a :class:`LogWriter` and a
:class:`LogReader` with the guarantees below, and passes ``tests/contract/test_log_contract.py``.

Positions
    A log has one or more *partitions*, numbered from 0. Inside a partition every record has an
    *offset*: an integer that strictly increases with append order and is never handed out twice,
    not even after a crash, a torn-tail truncation or a power loss. Offsets need not be dense.

Durability (the contract's first rule)
    ``LogWriter.append`` returns only once the record is durable: for the embedded log, written and
    fsync'd; for Kafka, acknowledged by all in-sync replicas with ``min.insync.replicas`` met. It
    returns the :class:`Receipt` (position and seqs) that every 2xx is built from. If that
    cannot be confirmed (fsync failed, disk full, broker unavailable, timeout) it raises
    :class:`LogUnavailable` and the caller must not report success. There is no "fire and forget".

Reading
    A reader sees only durable records, in offset order per partition. It starts from the committed
    position of its consumer group (or the earliest available record when nothing was committed).
    ``commit`` durably records "everything before these offsets is processed"; after a crash a reader
    resumes from the last commit, so a record may be read more than once (at-least-once) but a
    committed record is never read again and an uncommitted one is never skipped. If the log
    loses its tail below a committed position and hands those offsets out again (Kafka after a
    power loss of every broker), the reader resumes where the surviving log diverges from what was
    read, so no new record at a reused offset is skipped, and reports the truncation as a
    ``LogGap`` with ``reused=True``.

Missing data
    If data between the committed position and the earliest available record has vanished (deleted,
    truncated, lost when every node crashed), ``poll`` does not raise and does not loop: it reports a
    :class:`LogGap` for the missing range and continues with the next available record. Corruption in
    the middle of the log is never skipped silently: it is reported as a gap with a reason naming the
    file and position, or refused at start-up with :class:`LogCorrupt`.

Retention
    Data is deleted only once every consumer group has committed past it (and any configured
    retention time has passed). Unconsumed data is never deleted by retention.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lossproof.receipt import Receipt as Receipt
from lossproof.receipt import ReceiptIssuer


class LogError(Exception):
    """Base class of log failures."""


class LogUnavailable(LogError):
    """The log cannot durably accept (or serve) data right now; retrying later may succeed."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class LogCorrupt(LogError):
    """Damage that cannot be repaired without losing acknowledged data; names file and offset."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where an appended record landed."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A durable record as a reader sees it. ``timestamp_ms`` is the append time."""

    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class LogGap:
    """Offsets ``[first, last]`` of ``partition`` that should have existed but cannot be read.

    ``reused``: the log lost its tail after these offsets were read (Kafka after every broker lost
    power at once), and the offsets are being handed out again to new records, which the reader
    returns normally. The records that were at ``[first, last]`` had been processed; what was
    appended after them and never read cannot be named by offset (the ledger's holes find it).
    Such a gap is an event to record, never a position: :meth:`PollResult.next_offsets` ignores it.
    """

    partition: int
    first: int
    last: int
    reason: str
    detected_ms: int
    reused: bool = False


@dataclass(slots=True)
class PollResult:
    records: list[LogRecord] = field(default_factory=list)
    gaps: list[LogGap] = field(default_factory=list)

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the offset to commit once every record here is processed."""
        nxt: dict[int, int] = {}
        for g in self.gaps:
            if not g.reused:
                nxt[g.partition] = max(nxt.get(g.partition, 0), g.last + 1)
        for r in self.records:
            nxt[r.partition] = max(nxt.get(r.partition, 0), r.offset + 1)
        return nxt


@dataclass(frozen=True, slots=True)
class LogLag:
    """How far a consumer group is behind: records not yet committed, and the age of the oldest."""

    records: int
    seconds: float


class LogWriter(ReceiptIssuer, abc.ABC):
    """Appends records durably. Safe to call ``append`` concurrently from one event loop."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open (and for the embedded log, recover) the log. Raises LogCorrupt on mid-log damage."""

    @abc.abstractmethod
    async def append(self, key: bytes, value: bytes, seqs: Sequence[tuple[int, int]] = ()) -> Receipt:
        """Append one record and return its durable :class:`Receipt` (position, and the ``seqs``
        ranges the record holds) once it is durable. Raises LogUnavailable otherwise.

        Records with the same key appended through one writer keep their relative order (same
        partition). Across writer processes (several ingest processes) there is no order; the
        store's idempotency and the ledger's replay grace make that harmless."""

    @abc.abstractmethod
    def healthy(self) -> tuple[bool, str]:
        """Whether appends are expected to succeed now, with a human-readable reason if not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Wait for in-flight appends to finish (or fail), then release files/connections."""

    def stalled_seconds(self) -> float:
        """For how long appends have been waiting on a log that answers none of them, beyond the time
        within which it answers when it works (its group-commit thread or its producer's delivery
        thread stuck); 0 while none waits, or while answers (acks or errors) keep coming. Ingest
        stops beating its heartbeat once this passes the liveness timeout (``lossproof.heartbeat``),
        so that ``up`` restarts it."""
        return 0.0


class LogReader(abc.ABC):
    """Reads durable records for one consumer group. Not thread-safe; one per worker."""

    @abc.abstractmethod
    def poll(self, max_records: int, timeout: float) -> PollResult:
        """Return up to ``max_records`` records (and any gaps met), waiting at most ``timeout`` s."""

    @abc.abstractmethod
    def commit(self, offsets: Mapping[int, int]) -> None:
        """Durably record that, per partition, every offset below the given one is processed."""

    @abc.abstractmethod
    def lag(self) -> LogLag:
        """Records appended but not yet committed by this group, and the age of the oldest."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources. Uncommitted progress is lost (and will be re-read)."""
