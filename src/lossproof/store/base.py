"""The store boundary: where workers write points and the ledger, and what the query API reads.

Every store implementation (embedded SQLite, PostgreSQL) provides :class:`Store` with the
guarantees below, and passes ``tests/contract/test_store_contract.py``.

Atomicity
    ``write_batch`` applies a whole :class:`WriteBatch` in one transaction: the points, the ledger
    update, dead letters and log gaps become visible together or not at all. A crash at any instant
    leaves either the state before or the state after. Only after it returns may the worker commit
    its log position.

Idempotency (the contract's third rule)
    A native report is stored at most once per ``(tenant, agent, seq)``: a report whose seq is already
    stored is skipped whole and counted as a duplicate delivery, never written twice. A sample is
    stored at most once per ``(tenant, series, timestamp)``, the first write winning, so a retried
    third-party batch never doubles a point. Replaying any batch any number of times has the effect
    of applying it once.

Ledger
    Per ``(tenant, agent)`` the store keeps four disjoint sets of seq ranges: *stored*; *delayed*
    (still in the agent's spool by its last :class:`SpoolState`); *missing* (up to the highest seq
    known, neither stored, delayed nor lost: recoverable by asking the agent to send them again,
    each with the time the hole was first seen); and *lost* (given up, with a reason). Storing a
    missing, delayed or lost seq moves it to stored; lost is final unless the report arrives.

Tenancy
    Every read takes a tenant and returns only that tenant's data.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from lossproof.log.base import LogGap

SeqRange = tuple[int, int]


class StoreError(Exception):
    """Base class of store failures."""


class StoreUnavailable(StoreError):
    """A transient failure (connection lost, disk full, database locked or down): nothing was
    written; the same batch may be retried later. Any other exception from ``write_batch`` means
    the batch itself cannot be stored."""


class StoreSchemaError(StoreError):
    """The database was written by a newer lossproof (or is not a lossproof store): refuse to touch it."""


class PointLike(Protocol):
    """Anything with a point's four attributes: a store reads nothing else, so decoders can hand
    over their own structs without a copy."""

    @property
    def metric(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def t(self) -> int: ...
    @property
    def v(self) -> float: ...


class Point(msgspec.Struct, gc=False):
    """One sample. A msgspec Struct so workers decode request bodies straight into it, in C."""

    metric: str
    labels: dict[str, str]
    t: int  # unix ms
    v: float  # may be NaN or +-Inf (Prometheus staleness markers); stores must round-trip them


@dataclass(slots=True)
class ReportWrite:
    """One agent report: stored whole, once, per (tenant, agent, seq)."""

    tenant: str
    agent: str
    seq: int
    points: Sequence[PointLike]


@dataclass(slots=True)
class DeadLetter:
    """A log record that could not be decoded, kept with the reason instead of stopping the worker."""

    partition: int
    offset: int
    tenant: str
    reason: str
    payload: bytes


@dataclass(slots=True)
class LostRange:
    tenant: str
    agent: str
    first: int
    last: int
    reason: str


@dataclass(frozen=True, slots=True)
class SpoolState:
    """What an agent said about its own spool when it built a request (see docs/protocol.md).

    Seqs in ``[first_pending_seq, last_seq]`` are still in the agent's spool, not yet acknowledged:
    *delayed*, not missing. Seqs up to ``last_seq`` outside that range were acknowledged, so if the
    store does not have them they are *missing* (lost inside the pipeline) and can be replayed."""

    tenant: str
    agent: str
    pending_reports: int
    pending_bytes: int
    oldest_pending_ms: int
    first_pending_seq: int  # 0: nothing pending
    last_seq: int
    reported_ms: int


@dataclass(slots=True)
class WriteBatch:
    reports: list[ReportWrite] = field(default_factory=list)
    # Points without an agent seq (third-party protocols): idempotent by (tenant, series, t) only.
    samples: list[tuple[str, Point]] = field(default_factory=list)
    lost: list[LostRange] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    gaps: list[LogGap] = field(default_factory=list)
    now_ms: int = 0
    spool: list[SpoolState] = field(default_factory=list)  # per agent, the last one wins


@dataclass(frozen=True, slots=True)
class WriteResult:
    points_written: int
    reports_stored: int
    reports_duplicate: int


@dataclass(frozen=True, slots=True)
class Ledger:
    stored: list[SeqRange]
    missing: list[tuple[int, int, int]]  # (first, last, first seen unix ms)
    lost: list[tuple[int, int, str]]  # (first, last, reason)
    delayed: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last, pending since ms)
    spool: SpoolState | None = None  # the agent's last report of its spool


@dataclass(frozen=True, slots=True)
class AgentSummary:
    agent: str
    max_seq: int  # highest seq stored or lost
    stored_reports: int
    missing_reports: int
    lost_reports: int
    last_stored_ms: int  # ``now_ms`` of the last batch that stored one of its reports (0: never)
    delayed_reports: int = 0
    last_seen_ms: int = 0  # when the agent last reported its spool state (0: never)


@dataclass(frozen=True, slots=True)
class Series:
    metric: str
    labels: dict[str, str]
    points: list[tuple[int, float]]


class Store(abc.ABC):
    """Points, the ledger, dead letters and log gaps. One instance per process; not thread-safe."""

    @abc.abstractmethod
    def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Apply the batch atomically and idempotently (see module docstring)."""

    @abc.abstractmethod
    def query(
        self, tenant: str, metric: str, from_ms: int, to_ms: int, labels: dict[str, str]
    ) -> list[Series]:
        """Series of ``metric`` whose labels include ``labels``, points with from_ms <= t <= to_ms."""

    @abc.abstractmethod
    def agents(self, tenant: str) -> list[AgentSummary]: ...

    @abc.abstractmethod
    def ledger(self, tenant: str, agent: str) -> Ledger | None:
        """The agent's ledger, or None if the store has never seen the agent."""

    @abc.abstractmethod
    def replay_wanted(self, tenant: str, agent: str, seen_before_ms: int) -> list[SeqRange]:
        """Missing ranges first seen before ``seen_before_ms``: the ones to ask the agent for."""

    @abc.abstractmethod
    def dead_letter_count(self) -> int: ...

    @abc.abstractmethod
    def log_gaps(self) -> list[LogGap]: ...

    @abc.abstractmethod
    def close(self) -> None: ...
