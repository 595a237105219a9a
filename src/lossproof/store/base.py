"""The store boundary: where workers write points and the ledger, and what the query API reads.

Every store implementation (embedded SQLite, PostgreSQL) provides :class:`Store` with the
guarantees below, and passes ``tests/contract/test_store_contract.py``.

Atomicity
    ``write_batch`` applies a whole :class:`WriteBatch` in one transaction: the points, the ledger
    update, dead letters and log gaps become visible together or not at all. A crash at any instant
    leaves either the state before or the state after. Only after it returns may the worker commit
    its log position.

Incarnations
    An agent id may have several *incarnations* (a random id the agent creates with its spool, see
    docs/protocol.md; ``""`` for agents that send none). Each incarnation of ``(tenant, agent)`` has
    its own seq space and its own ledger, starting at the ``first_seq`` it declared (default 1). When
    a new incarnation of a known agent id appears, the seqs its other incarnations still had delayed
    (pending in their last spool state) become lost with reason ``spool_reset``.

Idempotency (the contract's third rule)
    A native report is stored at most once per ``(tenant, agent, incarnation, seq)``, with a content
    digest (:func:`report_digest`). A report whose seq is already stored with the same digest (or
    stored before digests were kept) is skipped whole and counted as a duplicate delivery, never
    written twice. One with a *different* digest is a conflict: it is not stored as the seq and never
    dropped either; it is kept whole in the conflicts table (:meth:`Store.conflicts`), counted in the
    agent's summary, and can be applied by an operator (:meth:`Store.apply_conflict`). A sample is
    stored at most once per ``(tenant, series, timestamp)``, the first write winning, so a retried
    third-party batch never doubles a point. Replaying any batch any number of times has the effect
    of applying it once.

Ledger
    Per ``(tenant, agent)`` the store keeps four disjoint sets of seq ranges: *stored*; *delayed*
    (still in the agent's spool by its last :class:`SpoolState`); *missing* (up to the highest seq
    known, neither stored, delayed nor lost: recoverable by asking the agent to send them again,
    each with the time the hole was first seen); and *lost* (given up, with a reason). Storing a
    missing, delayed or lost seq moves it to stored; lost is final unless the report arrives.

Metric metadata
    Per ``(tenant, metric)`` the store keeps one :class:`MetricMetadata` (type, help, unit), written
    in the same transaction as the rest of the batch. The last write wins: a later batch, or a later
    entry of the same batch, replaces it. Rewriting the same metadata is idempotent.

Tenancy
    Every read takes a tenant and returns only that tenant's data.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import re2

from lossproof.log.base import LogGap as LogGap  # the log gaps the store records, for its readers

# The point types live in lossproof.points (no numpy: the agent's relay decodes into them); the store's
# modules and callers keep importing them from here.
from lossproof.points import Point as Point
from lossproof.points import PointLike as PointLike
from lossproof.points import SeriesBlock as SeriesBlock
from lossproof.points import SeriesSamples as SeriesSamples
from lossproof.points import decode_points as decode_points
from lossproof.points import encode_points as encode_points
from lossproof.points import labels_text as labels_text
from lossproof.points import report_digest as report_digest
from lossproof.store.quarantine import Damaged

SeqRange = tuple[int, int]


class StoreError(Exception):
    """Base class of store failures."""


class StoreUnavailable(StoreError):
    """A transient failure (connection lost, disk full, database locked or down): nothing was
    written; the same batch may be retried later. Any other exception from ``write_batch`` means
    the batch itself cannot be stored."""


class StoreDamaged(StoreError):
    """A read met stored data that is damaged (a chunk or part that is not what its row says:
    :class:`~lossproof.store.chunks.ChunkError`), on the query side, which moves nothing: the
    answer is an error, never made-up points, until the row is set aside (docs/store.md, "A
    damaged chunk")."""


class StoreWouldWait(Exception):
    """A read on a handle switched to brief reads (:meth:`StoreReader.brief_reads`) that it cannot
    answer at once: it would wait (a lock, a busy database) or have much work to do. Nothing is
    wrong; the caller asks again on a handle that may wait."""


class StoreSchemaError(StoreError):
    """The database was written by a newer lossproof (or is not a lossproof store): refuse to touch it."""


@dataclass(slots=True)
class ReportWrite:
    """One agent report: stored whole, once, per (tenant, agent, incarnation, seq)."""

    tenant: str
    agent: str
    seq: int
    points: Sequence[PointLike]
    incarnation: str = ""
    time_ms: int = 0  # when the agent made the report (0: not given); places the ledger's holes in time


# The stores cache series ids by (tenant, metric, *label items): one dict lookup per point. The key
# keeps its label strings alive, ~1-2 KB a series with ten labels, so the cache is bounded by an
# estimate of its memory, not only by its length: 2M Prometheus-shaped series would hold gigabytes.
SERIES_CACHE_BYTES = 128 << 20


def series_key_bytes(key: tuple[Any, ...]) -> int:
    """About what a series cache entry keeps alive (CPython: a str is ~49 bytes plus its text, a
    2-tuple 56, a dict slot ~100 with the int id), counting every string as its own."""
    n = 200 + 57 * len(key)
    for item in key[2:]:
        n += 154 + len(item[0]) + len(item[1])
    return n


SERIES_CACHE_MAX = 2_000_000  # entries, whatever their size


_cache_tokens = itertools.count(1)


class SeriesCache(dict[tuple[Any, ...], int]):
    """Series ids by in-memory key (see :func:`series_key_bytes`), bounded in length and in an
    estimate of the memory it keeps alive: it starts over rather than grow past either. Only ids of
    committed series go in (:meth:`add_committed`): a rolled-back id could be handed out again.

    ``token`` is a number no other cache, nor this one before, had: a new one whenever the cache
    forgets anything. The native code that turns points into columns remembers the ids it was
    given under a token and uses them only while the cache still has it (native/src/lib.rs,
    ``KEYS``): an id, once in, is never changed while it is held (a key is one row of the store's
    series table)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.token = next(_cache_tokens)

    def _forgets(self) -> None:
        # after the change: an id read meanwhile was read under the old token
        self.token = next(_cache_tokens)

    def __setitem__(self, key: tuple[Any, ...], sid: int) -> None:
        changed = self.get(key, sid) != sid
        super().__setitem__(key, sid)
        if changed:
            self._forgets()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, sid in dict(*args, **kwargs).items():
            self[key] = sid

    def __ior__(self, other: Any) -> SeriesCache:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # a copy (copy, deepcopy, pickle) is another cache: a token of its own
        return (_rebuilt, (dict(self), self.bytes))

    def clear(self) -> None:
        super().clear()
        self.bytes = 0
        self._forgets()

    def __delitem__(self, key: tuple[Any, ...]) -> None:
        super().__delitem__(key)
        self._forgets()

    def pop(self, key: tuple[Any, ...], *default: Any) -> Any:
        try:
            return super().pop(key, *default)
        finally:
            self._forgets()

    def popitem(self) -> tuple[tuple[Any, ...], int]:
        try:
            return super().popitem()
        finally:
            self._forgets()

    def add_committed(self, new: dict[tuple[Any, ...], int]) -> None:
        if not new:
            return
        size = sum(map(series_key_bytes, new))
        if len(self) + len(new) > SERIES_CACHE_MAX or self.bytes + size > SERIES_CACHE_BYTES:
            self.clear()
        for key, sid in new.items():
            self[key] = sid
        self.bytes += size


def _rebuilt(items: dict[tuple[Any, ...], int], size: int) -> SeriesCache:
    c = SeriesCache()
    dict.update(c, items)
    c.bytes = size
    return c


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
    incarnation: str = ""


@dataclass(frozen=True, slots=True)
class Incarnation:
    """An incarnation a request named, with the first seq of its seq space (the first one seen wins)."""

    tenant: str
    agent: str
    incarnation: str
    first_seq: int = 1


@dataclass(frozen=True, slots=True)
class Conflict:
    """A report whose seq was already stored with other content: kept whole, never dropped."""

    id: int
    tenant: str
    agent: str
    incarnation: str
    seq: int
    digest: bytes
    points: int
    detected_ms: int
    applied_ms: int  # 0: not applied yet


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
    incarnation: str = ""


@dataclass(frozen=True, slots=True)
class MetricMetadata:
    """What a sender says about a metric family (Prometheus remote-write metadata)."""

    tenant: str
    metric: str  # the metric family name, e.g. ``http_requests_total``, ``request_seconds``
    type: str  # Prometheus' lower-case name: counter, gauge, histogram, summary, ..., unknown
    help: str
    unit: str


def latest_metadata(entries: Sequence[MetricMetadata]) -> list[MetricMetadata]:
    """One entry per (tenant, metric), the last one given winning (in order of first appearance)."""
    return list({(m.tenant, m.metric): m for m in entries}.values())


@dataclass(slots=True)
class WriteBatch:
    reports: list[ReportWrite] = field(default_factory=list)
    # Points without an agent seq (third-party protocols): idempotent by (tenant, series, t) only.
    # Within a batch, of two with the same series and t the first wins: reports' points first, then
    # samples, then series (a batch is one transaction: which of them came first is its own order).
    samples: list[tuple[str, Point]] = field(default_factory=list)
    lost: list[LostRange] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    gaps: list[LogGap] = field(default_factory=list)
    now_ms: int = 0
    spool: list[SpoolState] = field(default_factory=list)  # per agent, the last one wins
    metadata: list[MetricMetadata] = field(default_factory=list)  # per (tenant, metric), the last wins
    incarnations: list[Incarnation] = field(default_factory=list)
    # samples as columns (see above): a series each, or a remote-write body's many series in one block
    series: list[tuple[str, SeriesSamples | SeriesBlock]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WriteResult:
    points_written: int
    reports_stored: int
    reports_duplicate: int
    reports_conflict: int = 0  # same seq, other content: kept in the conflicts table
    # points of the batch not written because the store (or the batch, earlier) holds a point of that
    # series at that timestamp: first write wins (a replay's, harmless, or another value, not kept)
    points_skipped: int = 0
    # damaged chunks or parts the write had to read, moved to the quarantine table in its transaction
    # (docs/store.md, "A damaged chunk"): their points are no longer stored
    chunks_quarantined: int = 0


@dataclass(frozen=True, slots=True)
class CompactResult:
    """What one :meth:`Store.compact` call did."""

    series: int = 0  # series whose chunks were merged
    chunks_in: int = 0
    chunks_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    points: int = 0
    more: bool = False  # work was left over: call again soon
    quarantined: int = 0  # damaged chunks or parts set aside (see WriteResult.chunks_quarantined)


@dataclass(frozen=True, slots=True)
class RowsChecked:
    """What one :meth:`Store.check_rows` call read."""

    checked: int  # rows read and checked
    last_id: int | None  # the highest id read: the next call's ``after_id`` (None: no row was left)
    damaged: list[Damaged]  # those of them that are damaged, in id order


CHECKED_TABLES = ("chunks", "parts")  # the tables of stored points that :meth:`Store.check_rows` walks
# rows a check_rows call of `store check` and of the compactor's scrub reads (each a short read beside
# a running worker; memory bounded by the batch: a 2 h chunk of a 1 s scrape holds 7,200 points, and
# 2,000 of them decoded at once took ~440 MB more RSS, 256 ~60 MB; a part is up to a few MB)
CHECK_BATCH = {"chunks": 256, "parts": 16}


COMPACT_WINDOW_MS = 2 * 3600 * 1000  # a packed chunk holds one series' points of one window
COMPACT_MIN_CHUNKS = 8  # an open window is packed once it holds this many chunks


@dataclass(frozen=True, slots=True)
class Ledger:
    stored: list[SeqRange]
    missing: list[tuple[int, int, int]]  # (first, last, first seen unix ms)
    lost: list[tuple[int, int, str]]  # (first, last, reason)
    delayed: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last, pending since ms)
    spool: SpoolState | None = None  # the agent's last report of its spool
    incarnation: str = ""
    first_seq: int = 1  # the incarnation's seq space starts here
    conflicts: list[SeqRange] = field(default_factory=list)  # seqs with a conflicting report kept


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
    incarnation: str = ""
    first_seq: int = 1
    first_seen_ms: int = 0  # ``now_ms`` of the batch that first wrote this incarnation
    conflict_reports: int = 0  # conflicting reports kept (see :class:`Conflict`)

    @property
    def heard_ms(self) -> int:
        """When the agent was last heard from: its last spool report or its last stored report
        (a sender that reports no spool, like ``lossproof send``, has only the latter)."""
        return max(self.last_seen_ms, self.last_stored_ms)

    @property
    def one_shot(self) -> bool:
        """A sender that is run now and then (``lossproof send``, a script), not an agent reporting
        on an interval: it never reported its spool state, which the lossproof agent sends with
        every request. Its silence is not a sign of trouble."""
        return self.last_seen_ms == 0


@dataclass(frozen=True, slots=True)
class Series:
    metric: str
    labels: dict[str, str]
    points: list[tuple[int, float]]


MATCH_OPS = ("=", "!=", "=~", "!~")


class InvalidMatcher(ValueError):
    """A matcher that cannot be built: an unknown operator, or a regex RE2 does not accept."""


def _re2_options() -> re2.Options:
    opts = re2.Options()
    opts.never_capture = True  # only "does it match" is asked
    opts.log_errors = False  # a bad pattern is the caller's error, answered to it, not logged by RE2
    return opts


_RE2_OPTIONS = _re2_options()


@lru_cache(maxsize=1024)
def _anchored(pattern: str) -> Any:  # a compiled re2 regex
    """The compiled matcher regex. RE2 (linear time, as Prometheus' Go regexp: no backreferences or
    lookarounds, so no catastrophic backtracking); anchored at both ends by ``fullmatch``, with
    ``.`` matching newlines, as Prometheus' ``^(?s:pattern)$``. The pattern is checked on its own
    first, so that one like ``a)|(b`` is refused rather than spliced into the wrapper."""
    try:
        re2.compile(pattern, _RE2_OPTIONS)
        return re2.compile(f"(?s:{pattern})", _RE2_OPTIONS)
    except re2.error as e:
        why = e.args[0] if e.args else ""
        if isinstance(why, bytes):
            why = why.decode(errors="replace")
        raise InvalidMatcher(f"invalid regex {pattern!r}: {why or 'not a valid RE2 pattern'}") from None


@lru_cache(maxsize=16384)
def _fullmatch(pattern: str, value: str) -> bool:
    # Memoized: the same few metric names and label values are asked about for every series, and a
    # call into RE2 from Python costs a few microseconds.
    return _anchored(pattern).fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Matcher:
    """A label matcher as in PromQL: ``name`` is a label name or ``__name__`` (the metric name); ``op``
    one of ``=``, ``!=``, ``=~``, ``!~``; regexes use RE2 syntax, as Prometheus, and are anchored at
    both ends. A series without the label has the empty string for it (``{dc=""}`` matches series
    without ``dc``), as in Prometheus. A bad operator or regex raises :class:`InvalidMatcher`."""

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op not in MATCH_OPS:
            raise InvalidMatcher(f"matcher operator {self.op!r} is not one of {', '.join(MATCH_OPS)}")
        if self.op in ("=~", "!~"):
            _anchored(self.value)  # raises InvalidMatcher on a bad pattern

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = _fullmatch(self.value, value)
        return hit if self.op == "=~" else not hit


def matches_all(matchers: Sequence[Matcher], metric: str, labels: dict[str, str]) -> bool:
    """Whether the series ``metric{labels}`` satisfies every matcher."""
    return all(m.matches(metric if m.name == "__name__" else labels.get(m.name, "")) for m in matchers)


@dataclass(frozen=True, slots=True)
class SeriesArrays:
    """One series' points as columns: ``t`` (int64 unix ms, increasing, one point per t) and ``v``
    (float64). What the stores decode chunks into, and what PromQL and the charts compute on."""

    metric: str
    labels: dict[str, str]
    t: npt.NDArray[np.int64]
    v: npt.NDArray[np.float64]

    def to_series(self) -> Series:
        return Series(self.metric, self.labels, list(zip(self.t.tolist(), self.v.tolist(), strict=True)))


@dataclass(frozen=True, slots=True)
class RateWindows:
    """What :meth:`StoreReader.select_rate_each` computes of each series: PromQL's ``rate``
    (``is_rate`` and ``is_counter``), ``increase`` (``is_counter``) or ``delta`` (neither) over the
    windows ``(at[k] - rng, at[k]]`` (``closed``: ``[at[k] - rng, at[k]]``, Prometheus 2's),
    staleness markers left out; ``of_arrays`` computes them from a piece's arrays
    (``promwindows.rate_windows``), for what a store does not compute itself. A store
    that does must answer exactly what ``of_arrays`` would, and must not compute the windows of a
    piece once ``wanted()`` is false (the pieces given to ``each`` so far are past a limit of the
    caller's: the query fails, and its windows would only cost memory and time; ``of_arrays`` then
    answers zeros without computing them)."""

    at: npt.NDArray[np.int64]
    rng: int
    is_rate: bool
    is_counter: bool
    of_arrays: Callable[[list[SeriesArrays]], tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]]
    wanted: Callable[[], bool] = lambda: True
    closed: bool = False


@dataclass(frozen=True, slots=True)
class RatePiece:
    """A piece of :meth:`StoreReader.select_rate_each`'s answer: the labels of its series that have
    points in the range (without the metric name), how many points those have in all, and their
    windows' values and presence, one row per series (shaped (series, windows))."""

    labels: list[dict[str, str]]
    points: int
    values: npt.NDArray[np.float64]
    present: npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SteppedArrays:
    """:class:`SteppedSeries` as columns, one entry per step: ``present[k]`` says whether step k has
    a sample, ``t[k]`` and ``v[k]`` are its time and value (0 and NaN where it has none)."""

    metric: str
    labels: dict[str, str]
    t: npt.NDArray[np.int64]
    v: npt.NDArray[np.float64]
    present: npt.NDArray[np.bool_]

    def to_stepped(self) -> SteppedSeries:
        tl, vl = self.t.tolist(), self.v.tolist()
        samples: list[tuple[int, float] | None] = [
            (tl[k], vl[k]) if ok else None for k, ok in enumerate(self.present.tolist())
        ]
        return SteppedSeries(self.metric, self.labels, samples)


def stepped(s: SeriesArrays, start_ms: int, n: int, step_ms: int, window_ms: int) -> SteppedArrays | None:
    """``s`` sampled at ``T = start_ms + k * step_ms`` for k < n: the latest point with
    ``T - window_ms < t <= T`` (see :meth:`Store.select_last`); None when no step has one."""
    grid = start_ms + step_ms * np.arange(n, dtype=np.int64)
    idx = np.searchsorted(s.t, grid, side="right") - 1
    ok = idx >= 0
    ok[ok] = s.t[idx[ok]] > grid[ok] - window_ms
    if not ok.any():
        return None
    at = np.where(ok, idx, 0)  # (the series has a point: ok has a step)
    return SteppedArrays(s.metric, s.labels, np.where(ok, s.t[at], 0), np.where(ok, s.v[at], np.nan), ok)


@dataclass(frozen=True, slots=True)
class SteppedSeries:
    """One series sampled on a grid: ``samples[k]`` is the latest point ``(t, v)`` with
    ``T - window < t <= T`` for ``T = start + k * step``, or None when there is none."""

    metric: str
    labels: dict[str, str]
    samples: list[tuple[int, float] | None]


class StoreWriter(abc.ABC):
    """The write side of the store: what the worker (and the conflict tool) needs. One instance
    per process; not thread-safe."""

    @abc.abstractmethod
    def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Apply the batch atomically and idempotently (see module docstring). The rules of what a
        batch does to reports, conflicts and the ledger are :func:`lossproof.store.plan.plan_batch`."""

    @abc.abstractmethod
    def apply_conflict(self, tenant: str, conflict_id: int, now_ms: int) -> int:
        """Write a kept conflict's points as samples (idempotent per (series, t), first write winning)
        and mark it applied; returns the points written. Raises KeyError for an unknown id."""

    def compact(self, now_ms: int, max_series: int = 2000) -> CompactResult:
        """Do a bounded piece of the store's background work: merge the small chunks batches leave
        into packed ones, one per series and window of ``COMPACT_WINDOW_MS`` in the end (when and in
        how many steps is the backend's choice: see its docstring), for at most ``max_series``
        series, in one transaction, so that a writer waits for one call at most. A merged chunk
        keeps which write came first (first write wins, as before). Atomic: a crash leaves the old
        chunks or the new, never both or neither; queries see the same points before and after.
        ``more`` in the result asks for another call soon. This default does nothing."""
        return CompactResult()

    @abc.abstractmethod
    def close(self) -> None: ...


class StoreReader(abc.ABC):
    """The read side of the store: points, the ledger, conflicts, dead letters, log gaps and
    metadata, for the query API, the dashboard and ingest's ledger look-ups (a store opened
    readonly is all a reader needs). One instance per thread; not thread-safe."""

    def query(
        self, tenant: str, metric: str, from_ms: int, to_ms: int, labels: dict[str, str]
    ) -> list[Series]:
        """Series of ``metric`` whose labels include ``labels``, points with from_ms <= t <= to_ms;
        series without a point in the range are left out. Sorted by labels."""
        want = labels.items()
        matchers = [Matcher("__name__", "=", metric)]
        matchers += [Matcher(k, "=", v) for k, v in labels.items() if k != "__name__"]
        # a matcher also takes a missing label for "": the inclusion test decides
        return [
            a.to_series()
            for a in self.select_arrays(tenant, matchers, from_ms, to_ms)
            if want <= a.labels.items()
        ]

    def brief_reads(self) -> bool:
        """Switch this handle to brief reads, if the backend has them, and say whether it did. A
        brief handle answers :meth:`series`, :meth:`label_names`, :meth:`label_values` and
        :meth:`metric_names` only when it can at once, from what it holds in memory: it never waits
        (for a lock, a busy database, the network) and does a bounded amount of work; anything else
        raises :class:`StoreWouldWait`, and so does every other read. What such a handle answers is
        what a normal one would answer at that moment. For the metadata endpoints, which are answered
        on the event loop with one (see :meth:`lossproof.store.access.StoreAccess.run_brief`). Each
        call starts a new budget of work, shared by the reads until the next call (one request's).
        This default has no brief reads."""
        return False

    def charge_brief(self, units: int) -> None:
        """Work a brief read's caller does with what the store handed it (a regex asked of every
        metric name, about a microsecond a unit), charged to the budget :meth:`brief_reads` started:
        past it, :class:`StoreWouldWait`. Nothing on a handle without brief reads."""
        return None

    @abc.abstractmethod
    def agents(self, tenant: str) -> list[AgentSummary]:
        """One summary per (agent, incarnation), sorted by agent, then by ``first_seen_ms``."""

    @abc.abstractmethod
    def ledger(self, tenant: str, agent: str, incarnation: str | None = None) -> Ledger | None:
        """The ledger of one incarnation of the agent (None: the one first seen last), or None if
        the store has never seen it."""

    @abc.abstractmethod
    def replay_wanted(
        self, tenant: str, agent: str, seen_before_ms: int, incarnation: str = ""
    ) -> list[SeqRange]:
        """Missing ranges first seen before ``seen_before_ms``: the ones to ask the agent for."""

    @abc.abstractmethod
    def stored_digests(
        self, tenant: str, agent: str, incarnation: str, seqs: Sequence[SeqRange]
    ) -> dict[int, bytes]:
        """The content digests of the reports among ``seqs`` that are stored (with a digest): what
        ingest compares a request against before acknowledging it. One index range read per range."""

    @abc.abstractmethod
    def max_stored_seq(self, tenant: str, agent: str, incarnation: str) -> int:
        """The highest seq stored with a digest for this incarnation, 0 if none: a request whose seqs
        are all above it cannot conflict with a stored report (one index seek)."""

    @abc.abstractmethod
    def report_times_around(
        self, tenant: str, agent: str, incarnation: str, runs: Sequence[SeqRange]
    ) -> list[tuple[int, int]]:
        """For each run of seqs, the times (``ReportWrite.time_ms``) of the nearest stored report
        before it and after it, 0 where there is none or it has no time: where in time the run's
        reports were made, for placing the ledger's holes on a chart. Two index seeks per run."""

    @abc.abstractmethod
    def conflicts(self, tenant: str, agent: str | None = None) -> list[Conflict]:
        """The tenant's conflicting reports (of ``agent`` when given), oldest first."""

    @abc.abstractmethod
    def dead_letter_count(self, tenant: str | None = None) -> int:
        """Records in the dead-letter store: all of them, or those of ``tenant`` (records whose
        tenant could not be read have none)."""

    @abc.abstractmethod
    def set_aside_count(self) -> tuple[int, int]:
        """Damaged rows the store set aside into ``damaged_chunks`` (docs/store.md, "A damaged
        chunk"), and the points they held: no longer stored until replayed. (0, 0) for a store
        without that table yet (written by a lossproof from before it)."""

    @abc.abstractmethod
    def log_gaps(self) -> list[LogGap]: ...

    @abc.abstractmethod
    def metadata(
        self, tenant: str, metric: str | None = None, limit: int | None = None
    ) -> list[MetricMetadata]:
        """The tenant's metric metadata sorted by metric: only ``metric``'s when given, at most
        ``limit`` entries when given."""

    # --- reads for the query API and the dashboard (PromQL selectors) ----------------------------

    @abc.abstractmethod
    def series(self, tenant: str, matchers: Sequence[Matcher]) -> list[tuple[str, dict[str, str]]]:
        """``(metric, labels)`` of every series of ``tenant`` matching all ``matchers`` (see
        :class:`Matcher`), whatever the time of its points, sorted by metric then labels. No matchers:
        every series of the tenant."""

    @abc.abstractmethod
    def series_after(self, tenant: str, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        """``(id, metric, labels_json)`` (:func:`labels_text`) of the tenant's series whose id is
        above ``after_id``, by id, at most ``limit``. Ids grow as series are created, so a reader
        keeps up with new series by asking for those after the last id it saw. Where concurrent
        writers create series (PostgreSQL), an id can become visible after a higher one: a reader
        that must see every series re-reads a margin below its last id (or everything now and then)."""

    def series_counts(self) -> dict[str, int]:
        """The number of series each tenant has (its cardinality): what a series costs in memory and
        on disk, shown on /metrics and the dashboard. This default knows none; backends count their
        series table."""
        return {}

    def metric_names(self, tenant: str) -> list[str]:
        """The distinct metric names of the tenant's series, sorted. This default goes through
        :meth:`series`; a backend may read an index instead."""
        return sorted({metric for metric, _ in self.series(tenant, [])})

    def _series_of(
        self, tenant: str, selectors: Sequence[Sequence[Matcher]] | None
    ) -> list[tuple[str, dict[str, str]]]:
        if selectors is None:
            return self.series(tenant, [])
        return [x for ms in selectors for x in self.series(tenant, ms)]

    def label_names(self, tenant: str, selectors: Sequence[Sequence[Matcher]] | None = None) -> list[str]:
        """The label names of the tenant's series matching any of ``selectors`` (each a list of
        matchers; None: every series), sorted, ``__name__`` among them when any series matches (every
        series has a metric). This default goes through :meth:`series`; a backend may read an index."""
        names: set[str] = set()
        found = self._series_of(tenant, selectors)
        for _, labels in found:
            names.update(labels)
        if found:
            names.add("__name__")
        return sorted(names)

    def label_values(
        self, tenant: str, name: str, selectors: Sequence[Sequence[Matcher]] | None = None
    ) -> list[str]:
        """The values label ``name`` has among the tenant's series matching any of ``selectors`` (None:
        every series), sorted; ``__name__``: their metric names, as stored. A series without the label
        adds nothing. This default goes through :meth:`series`; a backend may read an index."""
        found = self._series_of(tenant, selectors)
        if name == "__name__":
            return sorted({metric for metric, _ in found})
        return sorted({labels[name] for _, labels in found if name in labels})

    @abc.abstractmethod
    def select_arrays(
        self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int
    ) -> list[SeriesArrays]:
        """The points with ``from_ms <= t <= to_ms`` of every series matching all ``matchers``, as
        columns, from one snapshot of the store; series without a point in the range are left out.
        Sorted like :meth:`series`."""

    def select_arrays_each(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        from_ms: int,
        to_ms: int,
        each: Callable[[list[SeriesArrays]], None],
        series_per_call: int = 256,
    ) -> None:
        """What :meth:`select_arrays` answers, handed to ``each`` in pieces, in order (of a few
        series each, up to ``series_per_call`` of those matching; a piece may be empty), from one
        snapshot: a caller that is done with a piece before the next keeps only that piece's points
        in memory (a day of 10,000 series is 600 MB of columns, and fresh memory of that size costs
        as much as decoding it). A piece's arrays are ``each``'s to read until it returns, not to
        keep: a store may reuse their memory for the next piece (the embedded store does). This
        default hands over the whole answer at once."""
        each(self.select_arrays(tenant, matchers, from_ms, to_ms))

    def select_rate_each(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        from_ms: int,
        to_ms: int,
        rate: RateWindows,
        each: Callable[[RatePiece], None],
    ) -> None:
        """:meth:`select_arrays_each`, each piece's windows (``rate``) computed before ``each`` sees
        it: ``each`` gets the piece's labels, points and windows, not its arrays. A store may compute
        them as it reads (the embedded store decodes a series and computes its windows while its
        points are in the CPU's cache); this default computes them from each piece's arrays."""

        def windows(piece: list[SeriesArrays]) -> None:
            points = sum(len(s.t) for s in piece)
            each(RatePiece([dict(s.labels) for s in piece], points, *rate.of_arrays(piece)))

        self.select_arrays_each(tenant, matchers, from_ms, to_ms, windows)

    def select(self, tenant: str, matchers: Sequence[Matcher], from_ms: int, to_ms: int) -> list[Series]:
        """:meth:`select_arrays` as lists of ``(t, v)``."""
        return [a.to_series() for a in self.select_arrays(tenant, matchers, from_ms, to_ms)]

    def select_last(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        start_ms: int,
        end_ms: int,
        step_ms: int,
        window_ms: int,
    ) -> list[SteppedSeries]:
        """:meth:`select_last_arrays` as lists: ``samples[k]`` is ``(t, v)`` or None."""
        return [
            a.to_stepped()
            for a in self.select_last_arrays(tenant, matchers, start_ms, end_ms, step_ms, window_ms)
        ]

    def select_last_arrays(
        self,
        tenant: str,
        matchers: Sequence[Matcher],
        start_ms: int,
        end_ms: int,
        step_ms: int,
        window_ms: int,
    ) -> list[SteppedArrays]:
        """Each matching series sampled at ``T = start_ms + k * step_ms`` for every ``T <= end_ms``:
        the latest point with ``T - window_ms < t <= T`` (PromQL's instant-vector lookup with a
        lookback of ``window_ms``; a chart at one step per pixel uses ``window_ms = step_ms``, so
        that a pixel without any point is a hole). Series without any sample are left out.

        It decodes the chunks overlapping the whole range (:meth:`select_arrays`), then samples them
        with numpy (:func:`stepped`): no Python per point."""
        if step_ms <= 0 or window_ms <= 0:
            raise ValueError("step_ms and window_ms must be positive")
        if end_ms < start_ms:
            return []
        n = (end_ms - start_ms) // step_ms + 1
        out: list[SteppedArrays] = []
        for a in self.select_arrays(tenant, matchers, start_ms - window_ms + 1, start_ms + (n - 1) * step_ms):
            got = stepped(a, start_ms, n, step_ms, window_ms)
            if got is not None:
                out.append(got)
        return out

    @abc.abstractmethod
    def close(self) -> None: ...


class Store(StoreWriter, StoreReader):
    """Points, the ledger, dead letters and log gaps: the writer and the reader in one handle (what
    both backends are). Code that only reads takes a :class:`StoreReader`."""

    # --- the operator's check of every stored row (``lossproof store check``; docs/store.md,
    # "A damaged chunk"): for damaged rows that no write or compaction reads, which would fail
    # every query of their metric for good

    @abc.abstractmethod
    def check_rows(self, table: str, after_id: int | None, limit: int) -> RowsChecked:
        """Check the rows of ``table`` (``chunks`` or ``parts``: :data:`CHECKED_TABLES`) whose id is
        above ``after_id`` (None: from the first), at most ``limit`` of them, in id order, with the
        checks every read makes (a chunk: :func:`~lossproof.store.quarantine.check_chunk_rows`, its
        points against its row's range; a part: :func:`~lossproof.store.quarantine.damaged_parts`),
        and name the damaged ones. Guarantee: it only reads (a readonly handle may call it), in
        one short read of at most ``limit`` rows, so memory is bounded by ``limit`` and a running
        worker is not held up; calls from ``after_id=None``, each given the last one's
        ``last_id``, until ``last_id`` is None, see every row committed before the first call and
        still there when its batch is read (rows written meanwhile may or may not be seen)."""

    @abc.abstractmethod
    def set_aside_rows(self, rows: Sequence[Damaged], by: str = "check") -> list[Damaged]:
        """Move those of ``rows`` (as :meth:`check_rows` named them) that are still damaged into the
        quarantine table, as a worker does with the damaged rows it meets: in one write
        transaction, each row read and checked again inside it first, so a row gone meanwhile (set
        aside or packed by a worker, deleted by retention) or no longer damaged is left alone. Same
        effects as a worker's set-aside (the backend's caches of what is stored are told; its
        compaction plans made again). Returns the rows moved, each logged
        (``store.chunk_quarantined``, ``by``) once the transaction has committed. Safe beside a
        running worker: a bounded transaction (the embedded store waits for the write lock up to
        its busy timeout; PostgreSQL locks only the rows it moves). Raises :class:`StoreError` on
        a readonly handle."""
