"""The Kafka log reader: one member of a consumer group; commits exactly what the worker commits.

Consumer settings
    ``enable.auto.commit=false`` (offsets are committed only by :meth:`commit`, which the worker
    calls after its store transaction), ``auto.offset.reset=error`` (never jump silently),
    ``partition.assignment.strategy=cooperative-sticky``. The Kafka group id is
    ``<topic>.<group>``.

Start positions and missing data
    On every assignment the reader fetches the group's committed offsets and the partitions'
    watermarks itself. No commit: start at the earliest record. Committed offset below the low
    watermark (records deleted with ``delete_records``/retention, or lost when every broker
    crashed): a :class:`LogGap` ``[committed, low - 1]`` is returned by the next ``poll`` and
    reading starts at the low watermark. Records that vanish while being read surface as
    ``_AUTO_OFFSET_RESET`` (offset out of range) consumer errors, handled the same way: gap,
    re-assign at the low watermark, carry on. ``poll`` never raises for missing data and never
    loops on it.

Truncation (every broker lost its page cache at once)
    Kafka then comes back with a shorter log and hands the lost offsets out again to new records,
    so an offset alone cannot say whether the log still holds what was read. Each commit therefore
    carries the leader epoch of the last record processed (``TopicPartition.leader_epoch``, as
    KIP-320 clients do) and, in the commit metadata, that record's offset, epoch and timestamp
    (``{"o":..,"e":..,"t":..}``). On assignment, and whenever librdkafka reports the fetch position
    out of range or the log truncated (its own KIP-320 check on a leader change), the reader does
    not trust the position: it re-fetches from at or before the last processed record (found with
    ``offsets_for_times`` on its timestamp, within the watermarks) and compares leader epochs. A
    record below the position with an epoch no newer than the processed one is the same record
    (one leader per epoch writes an offset once), already processed: it is dropped, not returned.
    The first record below the position with a newer epoch is where the surviving log diverges:
    the truncation is logged, counted (``lossproof_log_kafka_truncations``,
    ``..._truncated_offsets``) and returned as a ``LogGap(first=divergence, last=position - 1,
    reused=True)``, and every record from the divergence on is returned. If the first record
    fetched is already a new one, the log may diverge earlier: the reader steps back (4x further
    each time, never below the low watermark) until it starts on a processed record. Nothing at
    a reused offset is skipped; at worst a few processed records are fetched again (never
    returned). Until the first new record arrives, a position above the log end is only logged:
    the surviving records may still be catching up (the high watermark trails after a restart).
    librdkafka's own validation is not used on assignment because with ``auto.offset.reset=error``
    it reports the divergence point only inside an error string.

    Commits without an epoch (made by lossproof before this rule, or by another client) cannot be
    checked. Such a position at or below the log end is trusted, as before; above the log end, the
    log was truncated somewhere below it, so the partition is read again from the low watermark
    (a ``LogGap`` ``[log end, position - 1]`` with ``reused=True`` reports it). The next commit
    carries an epoch. Records appended but never read before a truncation cannot be named by
    offset by any consumer: the ledger's per-agent holes find them and ask the agents to replay.

Rebalances
    The worker commits after every batch and only then polls again, so when partitions are
    revoked (inside ``poll``) nothing returned earlier is uncommitted. If a commit is refused
    because the partition already moved (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``,
    ``REBALANCE_IN_PROGRESS``), nothing is lost: the new owner re-reads from the last commit and the
    store's idempotency absorbs the duplicate.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from lossproof import heartbeat
from lossproof.config import KAFKA_JOIN_WAIT_S, KAFKA_REQUEST_WAIT_S, KafkaLogConfig
from lossproof.log.base import LogError, LogGap, LogLag, LogReader, LogRecord, LogUnavailable, PollResult
from lossproof.log.kafka.common import OFFSET_INVALID, base_conf, group_id
from lossproof.log.kafka.metrics import KafkaReaderMetrics
from lossproof.obs.logging import get

log = get(__name__)

_MOVED = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.STALE_MEMBER_EPOCH,
    }
)
_OUT_OF_RANGE = frozenset(
    {KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._LOG_TRUNCATION}
)
_MAX_TRACKED = 1 << 16
LAG_CACHE_SECONDS = 2.0
# How far the first step back goes when the log diverges before the first record re-fetched; each
# further step goes 4x as far, so even a truncation of millions of records takes a few round trips.
FIRST_REWIND = 256


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Mark:
    """A record this reader processed: what a commit just past it vouches for. ``epoch`` and
    ``ts`` are -1 when unknown."""

    offset: int
    epoch: int
    ts: int

    def metadata(self) -> str:
        return json.dumps({"o": self.offset, "e": self.epoch, "t": self.ts}, separators=(",", ":"))


def committed_mark(tp: TopicPartition) -> Mark | None:
    """The last record processed before a committed position, from the commit's metadata (written
    by :meth:`KafkaLogReader.commit`) or else its KIP-320 leader epoch; None if the commit has no
    epoch (an older lossproof, or another client)."""
    c = int(tp.offset)
    try:
        doc = json.loads(tp.metadata) if tp.metadata else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        o, e, t = doc.get("o"), doc.get("e"), doc.get("t")
        if all(type(x) is int for x in (o, e, t)) and 0 <= o < c and e >= 0:  # type: ignore[operator]
            return Mark(int(o), int(e), int(t))  # type: ignore[arg-type]
    epoch = tp.leader_epoch
    if epoch is not None and epoch >= 0 and c > 0:
        return Mark(c - 1, int(epoch), -1)
    return None


@dataclass(slots=True)
class _Check:
    """A partition whose log must be shown to still hold ``anchor`` before anything below
    ``position`` may be returned again."""

    position: int
    anchor: Mark
    start: int  # where fetching (re)started
    low: int  # the low watermark: no step back below it
    step: int = FIRST_REWIND
    proven: bool = False  # a record at or after ``start`` was shown to be one already processed


class KafkaLogReader(LogReader):
    def __init__(
        self,
        cfg: KafkaLogConfig,
        group: str = "workers",
        *,
        registry: CollectorRegistry | None = None,
        join_timeout: float = KAFKA_JOIN_WAIT_S,
        data_grace: float = 5.0,
        request_timeout: float = KAFKA_REQUEST_WAIT_S,
    ) -> None:
        self.cfg = cfg
        self.topic = cfg.topic
        self.group = group
        self.group_id = group_id(cfg.topic, group)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = KafkaReaderMetrics(self.registry, group)
        self._join_timeout = join_timeout
        self._data_grace = data_grace
        self._timeout = request_timeout
        session_ms = int(cfg.session_timeout_seconds * 1000)
        conf = base_conf(cfg)
        conf.setdefault("fetch.max.bytes", 64 * 2**20)
        conf.setdefault("max.partition.fetch.bytes", 8 * 2**20)
        conf.setdefault("receive.message.max.bytes", max(100 * 2**20, cfg.max_message_bytes + 2**20))
        conf.update(
            {
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "error",
                "enable.partition.eof": False,
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(500, session_ms // 4),
                "error_cb": self._on_error,
            }
        )
        try:
            self._consumer = Consumer(conf)
        except KafkaException as e:
            raise LogError(f"invalid Kafka consumer settings: {e.args[0].str()}") from None
        self._closed = False
        self._joined = False
        self._assigned: set[int] = set()
        self._next: dict[int, int] = {}  # next offset expected per assigned partition
        self._hw: dict[int, int] = {}  # last known high watermark per assigned partition
        self._committed: dict[int, int] = {}
        self._pending_gaps: list[LogGap] = []
        self._stuck: dict[int, tuple[int, float]] = {}  # partition -> (offset, retry at) after a failed reset
        # What a commit vouches for: the last record processed before the committed position (from
        # the commit itself, or a record re-checked after a truncation), and the last one returned.
        self._anchor: dict[int, Mark] = {}
        self._last: dict[int, Mark] = {}
        self._checks: dict[int, _Check] = {}
        self._restarted: set[int] = set()  # re-positioned during this consume batch: rest is stale
        # lag(): records returned but not committed per partition, oldest first, and when a lagging
        # partition without any was first seen lagging.
        self._uncommitted: dict[int, collections.deque[Mark]] = {}
        self._lag_since: dict[int, float] = {}
        self._lag_cache: tuple[float, LogLag] | None = None
        self._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # --- LogReader --------------------------------------------------------------------------------

    def poll(self, max_records: int, timeout: float) -> PollResult:
        if self._closed:
            raise LogError("reader is closed")
        res = PollResult()
        if max_records <= 0:
            return res
        start = time.monotonic()
        deadline = start + max(0.0, timeout)
        join_deadline = start + self._join_timeout
        while True:
            self._retry_stuck()
            now = time.monotonic()
            if now < deadline:
                wait = deadline - now
            elif not self._joined or self._data_available():
                wait = 0.1  # still joining, or records are known to exist: a little longer
            else:
                wait = 0.0
            try:
                msgs = self._consumer.consume(max_records - len(res.records), wait)
            except KafkaException as e:  # e.g. a fatal consumer error: report, never crash the worker
                self._count_error(e.args[0])
                msgs = []
            self._restarted.clear()
            for m in msgs:
                self._handle(m, res)
            if self._pending_gaps:
                res.gaps.extend(g for g in self._pending_gaps if g.partition in self._assigned)
                self._pending_gaps.clear()
            if res.records or res.gaps or len(res.records) >= max_records:
                break
            now = time.monotonic()
            if now < deadline:
                continue
            if not self._joined and now < join_deadline:
                continue
            if self._joined and self._data_available() and now < deadline + self._data_grace:
                continue
            break
        if res.records:
            self._m.records.inc(len(res.records))
            self._m.bytes.inc(sum(len(r.key) + len(r.value) for r in res.records))
        if res.gaps:
            self._m.gaps.inc(len(res.gaps))
            self._m.gap_offsets.inc(sum(g.last - g.first + 1 for g in res.gaps))
        return res

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit, with each position the leader epoch and (metadata) offset, epoch and timestamp of
        the last record processed below it, so a later assignment can check the log still holds it."""
        if self._closed:
            raise LogError("reader is closed")
        tps = []
        marks: dict[int, Mark | None] = {}
        for p, o in offsets.items():
            if int(o) < 0:
                raise ValueError(f"negative offset {o} for partition {p}")
            mark = marks[int(p)] = self._mark_below(int(p), int(o))
            if mark is None:
                tps.append(TopicPartition(self.topic, int(p), int(o)))
            elif mark.epoch < 0:
                tps.append(TopicPartition(self.topic, int(p), int(o), mark.metadata()))
            else:
                tps.append(TopicPartition(self.topic, int(p), int(o), mark.metadata(), mark.epoch))
        if not tps:
            return
        try:
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:
            err = e.args[0]
            if err.code() in _MOVED:
                self._m.commit_refused.inc()
                log.warning(
                    "log.kafka.commit_refused", group=self.group_id, error=err.str(), offsets=dict(offsets)
                )
                return
            raise LogUnavailable(f"Kafka commit failed: {err.str()}") from None
        done = {}
        for tp in result or []:
            if tp.error is not None:
                if tp.error.code() in _MOVED:
                    self._m.commit_refused.inc()
                    continue
                raise LogUnavailable(f"Kafka commit of partition {tp.partition} failed: {tp.error.str()}")
            done[tp.partition] = tp.offset
        for p, o in done.items():
            self._committed[p] = o
            mark = marks.get(p)
            if mark is not None:
                self._anchor[p] = mark
            q = self._uncommitted.get(p)
            while q and q[0].offset < o:
                q.popleft()
            self._lag_since.pop(p, None)
        self._lag_cache = None

    def lag(self) -> LogLag:
        now = time.monotonic()
        if self._lag_cache is not None and now - self._lag_cache[0] < LAG_CACHE_SECONDS:
            return self._lag_cache[1]
        t = min(self._timeout, 2.0)  # the worker calls this between batches: never block it for long
        try:
            md = self._consumer.list_topics(self.topic, timeout=t).topics.get(self.topic)
            partitions = sorted(md.partitions) if md is not None and md.partitions else []
            tps = [TopicPartition(self.topic, p) for p in partitions]
            committed = {tp.partition: tp.offset for tp in self._consumer.committed(tps, timeout=t)}
            records = 0
            oldest_ms: float | None = None
            for p in partitions:
                lo, hi = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=t, cached=False
                )
                c = committed.get(p, OFFSET_INVALID)
                c = lo if c < 0 else max(c, lo)  # below lo is a gap, not lag
                n = max(0, hi - c)
                records += n
                if n == 0:
                    self._lag_since.pop(p, None)
                    continue
                ts = self._oldest_ts(p, c)
                if ts is None:
                    ts = 1000 * (time.time() - (now - self._lag_since.setdefault(p, now)))
                oldest_ms = ts if oldest_ms is None else min(oldest_ms, ts)
        except KafkaException as e:
            raise LogUnavailable(f"cannot compute lag: {e.args[0].str()}") from None
        seconds = 0.0 if oldest_ms is None or records == 0 else max(0.0, (_now_ms() - oldest_ms) / 1000.0)
        lag = LogLag(records, seconds)
        self._lag_cache = (now, lag)
        return lag

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()  # leaves the group at once; commits nothing
        except (KafkaException, RuntimeError) as e:
            log.warning("log.kafka.close_failed", group=self.group_id, error=str(e))

    def __enter__(self) -> KafkaLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def assignment(self) -> set[int]:
        return set(self._assigned)

    # --- messages ----------------------------------------------------------------------------------

    def _handle(self, m: Message, res: PollResult) -> None:
        err = m.error()
        p = m.partition()
        if p is not None and p in self._restarted:
            return  # fetched before this batch re-positioned the partition
        if err is not None:
            if err.code() in _OUT_OF_RANGE and p is not None and p >= 0:
                if p not in self._assigned:
                    return  # raised before the partition was revoked: its next owner checks it
                off = m.offset()
                self._reset(p, off if off is not None and off >= 0 else None, err.str())
            else:
                self._count_error(err)
            return
        off = m.offset()
        if p is None or off is None or p not in self._assigned:
            return  # left over from a partition that was revoked: its new owner reads it
        _, ts = m.timestamp()
        if ts <= 0:
            ts = _now_ms()
        epoch = m.leader_epoch()
        mark = Mark(off, epoch if epoch is not None and epoch >= 0 else -1, ts)
        check = self._checks.get(p)
        if check is not None and not self._passes(p, check, mark):
            return
        key, value = m.key(), m.value()
        res.records.append(
            LogRecord(
                p,
                off,
                key if isinstance(key, bytes) else (key or "").encode(),
                value if isinstance(value, bytes) else (value or "").encode(),
                ts,
            )
        )
        self._next[p] = off + 1
        self._last[p] = mark
        q = self._uncommitted.setdefault(p, collections.deque())
        if len(q) < _MAX_TRACKED:
            q.append(mark)

    def _count_error(self, err: KafkaError) -> None:
        self._m.consumer_errors.labels(self.group, err.name()).inc()
        log.warning("log.kafka.consumer_error", group=self.group_id, error=err.str(), fatal=err.fatal())

    def _on_error(self, err: KafkaError) -> None:
        self._count_error(err)

    def _mark_below(self, p: int, offset: int) -> Mark | None:
        """The last record processed below ``offset`` on ``p`` (what a commit at ``offset`` vouches for)."""
        last = self._last.get(p)
        if last is not None and last.offset < offset:
            return last
        for mark in reversed(self._uncommitted.get(p, ())):
            if mark.offset < offset:
                return mark
        anchor = self._anchor.get(p)
        return anchor if anchor is not None and anchor.offset < offset else None

    # --- truncation: does the log still hold what was processed? -------------------------------------

    def _passes(self, p: int, check: _Check, rec: Mark) -> bool:
        """Whether ``rec``, fetched while checking ``p``, is returned (False: dropped or re-positioned)."""
        old = 0 <= rec.epoch <= check.anchor.epoch
        if rec.offset < check.position and old:
            # The same record as before the loss (one leader per epoch writes an offset once), and
            # below the position: processed already.
            check.proven = True
            self._m.rechecked_records.inc()
            self._next[p] = rec.offset + 1
            self._last[p] = self._anchor[p] = rec
            return False
        if rec.offset >= check.position and (check.proven or old):
            self._end_check(p, check, None)
            return True
        if rec.epoch < 0:
            # No epoch to compare (an old message format): return it; re-reading is harmless.
            log.warning("log.kafka.check_without_epoch", topic=self.topic, partition=p, offset=rec.offset)
            self._end_check(p, check, None)
            return True
        if not check.proven and check.start > check.low:
            # The first record fetched is already a new one: the log may diverge further back.
            start = max(check.low, check.start - check.step)
            check.step *= 4
            check.start = start
            self._m.position_rewinds.inc()
            log.info(
                "log.kafka.check_rewind", topic=self.topic, partition=p, start=start, position=check.position
            )
            self._reassign(p, start)
            return False
        if rec.offset >= check.position:
            self._end_check(p, check, None)  # nothing at all below the position: nothing to compare
            return True
        self._end_check(p, check, rec.offset)
        return True

    def _end_check(self, p: int, check: _Check, divergence: int | None) -> None:
        self._checks.pop(p, None)
        if divergence is None:
            log.info("log.kafka.position_checked", topic=self.topic, partition=p, position=check.position)
            return
        self._truncation(
            p,
            divergence,
            check.position - 1,
            f"from offset {divergence} on, the log no longer holds the records read before (leader "
            f"epoch {check.anchor.epoch} or older); new records now carry those offsets and are read",
        )

    def _truncation(self, p: int, first: int, last: int, detail: str) -> None:
        reason = (
            f"Kafka topic {self.topic} partition {p}: log truncated, offsets {first}..{last} were read "
            f"and then lost by the brokers (every replica lost its tail, e.g. a power cut) and are being "
            f"handed out again; {detail}. Records appended after offset {last} and never read cannot "
            f"be named by offset: the ledger asks the agents to replay them."
        )
        self._m.truncations.inc()
        self._m.truncated_offsets.inc(max(0, last - first + 1))
        self._pending_gaps.append(LogGap(p, first, last, reason, _now_ms(), reused=True))
        log.error(
            "log.kafka.truncation", topic=self.topic, partition=p, first=first, last=last, reason=reason
        )

    def _resume(self, p: int, position: int, anchor: Mark | None, lo: int, hi: int, why: str) -> int:
        """Where to start reading ``p`` again, given the position reached (committed, or reached by
        this reader) and the last record processed below it; sets up the check (module doc)."""
        self._checks.pop(p, None)
        if position < 0:
            return lo
        if position < lo:
            self._gap(p, position, lo - 1, why, lo)
            return lo
        if anchor is None:
            if position > hi:
                self._truncation(
                    p,
                    hi,
                    position - 1,
                    "the position was committed without a leader epoch (an older lossproof), so "
                    f"where the log diverges is unknown: partition read again from offset {lo}",
                )
                return lo
            return position
        if position <= lo:
            return position  # nothing below it is readable: nothing to compare with
        self._m.position_checks.inc()
        start = min(anchor.offset, position - 1)
        if anchor.ts >= 0:
            at = self._offset_at(p, anchor.ts)
            if at is not None and at >= 0:
                start = min(start, at)
        start = max(lo, min(start, hi - 1))
        self._checks[p] = _Check(position, anchor, start, lo)
        if position > hi:
            log.warning(
                "log.kafka.position_above_log_end",
                topic=self.topic,
                partition=p,
                position=position,
                log_end=hi,
                note="truncated, or the high watermark is still catching up; checking from start",
                start=start,
            )
        return start

    def _offset_at(self, p: int, ts: int) -> int | None:
        """The first offset of ``p`` with a timestamp at or after ``ts`` (-1: none), None if unknown."""
        try:
            got = self._consumer.offsets_for_times([TopicPartition(self.topic, p, ts)], timeout=self._timeout)
        except KafkaException as e:
            log.warning("log.kafka.offsets_for_times_failed", partition=p, error=e.args[0].str())
            return None
        if not got or got[0].error is not None:
            return None
        return int(got[0].offset)

    # --- missing data --------------------------------------------------------------------------------

    def _watermarks(self, p: int) -> tuple[int, int]:
        lo, hi = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, p), timeout=self._timeout, cached=False
        )
        return int(lo), int(hi)

    def _reset(self, p: int, offset: int | None, why: str) -> None:
        """The fetch position of ``p`` is out of range, or librdkafka found the log truncated (its
        KIP-320 check after a leader change): report what is gone and go on without skipping."""
        check = self._checks.get(p)
        if check is not None:
            position: int | None = check.position
            anchor: Mark | None = check.anchor
        else:
            position = self._next.get(p, offset)
            last = self._last.get(p) or self._anchor.get(p)
            anchor = last if last is not None and position is not None and last.offset < position else None
        try:
            lo, hi = self._watermarks(p)
        except KafkaException as e:
            # Cannot tell what exists: try again shortly (the partition stays paused in error state).
            self._stuck[p] = (position if position is not None else -1, time.monotonic() + 1.0)
            log.warning("log.kafka.reset_deferred", partition=p, error=e.args[0].str())
            return
        self._stuck.pop(p, None)
        log.warning(
            "log.kafka.reset", topic=self.topic, partition=p, position=position, low=lo, high=hi, why=why
        )
        start = self._resume(
            p, -1 if position is None else position, anchor, lo, hi, f"offset out of range ({why})"
        )
        self._reassign(p, start)

    def _gap(self, p: int, first: int, last: int, why: str, lo: int) -> None:
        reason = (
            f"Kafka topic {self.topic} partition {p}: offsets {first}..{last} no longer exist "
            f"(earliest available {lo}; deleted by delete_records/retention or lost by the brokers; {why})"
        )
        gap = LogGap(p, first, last, reason, _now_ms())
        self._pending_gaps.append(gap)
        log.error("log.kafka.gap", topic=self.topic, partition=p, first=first, last=last, reason=reason)

    def _reassign(self, p: int, start: int) -> None:
        self._restarted.add(p)
        tp = TopicPartition(self.topic, p)
        try:
            self._consumer.incremental_unassign([tp])
            self._consumer.incremental_assign([TopicPartition(self.topic, p, start)])
        except KafkaException as e:
            self._stuck[p] = (start, time.monotonic() + 1.0)
            log.warning("log.kafka.reassign_failed", partition=p, error=e.args[0].str())
            return
        self._next[p] = start

    def _retry_stuck(self) -> None:
        if not self._stuck:
            return
        now = time.monotonic()
        for p, (offset, at) in list(self._stuck.items()):
            if p not in self._assigned:
                self._stuck.pop(p, None)
            elif now >= at:
                self._reset(p, offset if offset >= 0 else None, "retry")

    def _data_available(self) -> bool:
        """True if an assigned partition is known to have records at or after our position."""
        for p in self._assigned:
            if p in self._stuck:
                continue
            try:
                _, hi = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except KafkaException:
                hi = -1
            if hi >= 0:
                self._hw[p] = max(self._hw.get(p, 0), int(hi))
            if self._next.get(p, 0) < self._hw.get(p, 0):
                return True
        return False

    # --- rebalance callbacks (run inside consume) -------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True
        if not partitions:
            return
        self._m.rebalances.inc()
        mine = [TopicPartition(self.topic, tp.partition) for tp in partitions]
        try:
            committed = {tp.partition: tp for tp in consumer.committed(mine, timeout=self._timeout)}
        except KafkaException as e:
            # Let librdkafka fetch the committed offsets itself; "no commit" and "out of range" then
            # come back as _AUTO_OFFSET_RESET errors, handled by _reset.
            log.warning("log.kafka.committed_unknown", group=self.group_id, error=e.args[0].str())
            consumer.incremental_assign(mine)
            for tp in mine:
                self._assigned.add(tp.partition)
                self._next.pop(tp.partition, None)
            self._m.assigned.set(len(self._assigned))
            return
        starts = []
        for tp in mine:
            heartbeat.beat()  # each partition may take the brokers' timeouts: see heartbeat.beat
            p = tp.partition
            ctp = committed.get(p)
            c = int(ctp.offset) if ctp is not None else OFFSET_INVALID
            anchor = committed_mark(ctp) if ctp is not None and c >= 0 else None
            try:
                lo, hi = self._watermarks(p)
            except KafkaException:
                # Unknown watermarks: let librdkafka fetch the commit and check it by its leader
                # epoch (KIP-320); a truncation it finds comes back as an error, handled by _reset.
                starts.append(TopicPartition(self.topic, p, -1000))  # -1000: the committed offset
                self._next.pop(p, None)
                self._committed.pop(p, None)
                continue
            self._hw[p] = hi
            self._last.pop(p, None)
            if anchor is not None:
                self._anchor[p] = anchor
            else:
                self._anchor.pop(p, None)
            start = self._resume(p, c, anchor, lo, hi, "the committed offset points at deleted data")
            if c >= 0:
                self._committed[p] = c
            self._next[p] = start
            starts.append(TopicPartition(self.topic, p, start))
        consumer.incremental_assign(starts)
        self._assigned.update(tp.partition for tp in mine)
        self._m.assigned.set(len(self._assigned))
        log.info(
            "log.kafka.assigned", group=self.group_id, partitions={tp.partition: tp.offset for tp in starts}
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        try:
            consumer.incremental_unassign(partitions)
        except KafkaException as e:
            log.warning("log.kafka.unassign_failed", error=e.args[0].str())

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning(
            "log.kafka.partitions_lost", group=self.group_id, partitions=[tp.partition for tp in partitions]
        )
        self._on_revoke(consumer, partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._m.rebalances.inc()
        for tp in partitions:
            p = tp.partition
            self._assigned.discard(p)
            for d in (
                self._next,
                self._hw,
                self._committed,
                self._uncommitted,
                self._last,
                self._anchor,
                self._checks,
                self._stuck,
            ):
                d.pop(p, None)
        self._pending_gaps = [g for g in self._pending_gaps if g.partition in self._assigned]
        self._m.assigned.set(len(self._assigned))
        log.info("log.kafka.revoked", group=self.group_id, partitions=[tp.partition for tp in partitions])

    # --- lag -------------------------------------------------------------------------------------------

    def _oldest_ts(self, p: int, committed: int) -> float | None:
        """Timestamp (ms) of the record at ``committed`` on ``p``, or an upper bound of its age."""
        q = self._uncommitted.get(p)
        if q:
            for mark in q:
                if mark.offset >= committed:
                    return float(mark.ts)
        # The record at ``committed`` was appended no earlier than the last record we returned
        # (which is before it): using that timestamp overestimates the age by at most the spacing
        # of two records.
        last = self._last.get(p)
        return None if last is None else float(last.ts)
