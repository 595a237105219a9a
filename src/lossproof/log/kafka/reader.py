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
    loops on it. A committed offset *above* the log end (the log was truncated after the data was
    processed; its offsets will be handed out again) is logged and counted
    (``lossproof_log_kafka_truncations``) and reading resumes at the log end, so the new records at
    the reused offsets are not skipped; records that were appended but never read before such a
    truncation cannot be named by offset: the ledger's per-agent holes find them.

Rebalances
    The worker commits after every batch and only then polls again, so when partitions are
    revoked (inside ``poll``) nothing returned earlier is uncommitted. If a commit is refused
    because the partition already moved (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``,
    ``REBALANCE_IN_PROGRESS``), nothing is lost: the new owner re-reads from the last commit and the
    store's idempotency absorbs the duplicate.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from lossproof.config import KafkaLogConfig
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
_OUT_OF_RANGE = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})
_MAX_TRACKED = 1 << 16
LAG_CACHE_SECONDS = 2.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class KafkaLogReader(LogReader):
    def __init__(
        self,
        cfg: KafkaLogConfig,
        group: str = "workers",
        *,
        registry: CollectorRegistry | None = None,
        join_timeout: float = 30.0,
        data_grace: float = 5.0,
        request_timeout: float = 10.0,
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
        # lag(): records returned but not committed (offset, timestamp) per partition, oldest first,
        # the timestamp of the last record returned per partition, and when a lagging partition
        # without either was first seen lagging.
        self._uncommitted: dict[int, collections.deque[tuple[int, int]]] = {}
        self._last_ts: dict[int, int] = {}
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
        if self._closed:
            raise LogError("reader is closed")
        tps = []
        for p, o in offsets.items():
            if int(o) < 0:
                raise ValueError(f"negative offset {o} for partition {p}")
            tps.append(TopicPartition(self.topic, int(p), int(o)))
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
            q = self._uncommitted.get(p)
            while q and q[0][0] < o:
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
        if err is not None:
            if err.code() in _OUT_OF_RANGE and p is not None and p >= 0:
                off = m.offset()
                self._reset(p, off if off is not None and off >= 0 else None, err.str())
            elif err.code() == KafkaError._LOG_TRUNCATION and p is not None and p >= 0:
                self._truncated(p, m.offset(), err.str())
            else:
                self._count_error(err)
            return
        off = m.offset()
        if p is None or off is None or p not in self._assigned:
            return  # left over from a partition that was revoked: its new owner reads it
        _, ts = m.timestamp()
        if ts <= 0:
            ts = _now_ms()
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
        self._last_ts[p] = ts
        q = self._uncommitted.setdefault(p, collections.deque())
        if len(q) < _MAX_TRACKED:
            q.append((off, ts))

    def _count_error(self, err: KafkaError) -> None:
        self._m.consumer_errors.labels(self.group, err.name()).inc()
        log.warning("log.kafka.consumer_error", group=self.group_id, error=err.str(), fatal=err.fatal())

    def _on_error(self, err: KafkaError) -> None:
        self._count_error(err)

    # --- missing data --------------------------------------------------------------------------------

    def _watermarks(self, p: int) -> tuple[int, int]:
        lo, hi = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, p), timeout=self._timeout, cached=False
        )
        return int(lo), int(hi)

    def _reset(self, p: int, offset: int | None, why: str) -> None:
        """The fetch position of ``p`` is out of range: report what is gone and move on."""
        expected = offset if offset is not None else self._next.get(p)
        try:
            lo, hi = self._watermarks(p)
        except KafkaException as e:
            # Cannot tell what exists: try again shortly (the partition stays paused in error state).
            self._stuck[p] = (expected if expected is not None else -1, time.monotonic() + 1.0)
            log.warning("log.kafka.reset_deferred", partition=p, error=e.args[0].str())
            return
        self._stuck.pop(p, None)
        if expected is None or expected < 0:
            start = lo
        elif expected < lo:
            self._gap(p, expected, lo - 1, f"offset out of range ({why})", lo)
            start = lo
        elif expected > hi:
            self._truncation(p, expected, hi)
            start = hi
        else:
            start = expected  # in range again (e.g. a leader change): continue where we were
        self._reassign(p, start)

    def _truncated(self, p: int, offset: int | None, why: str) -> None:
        self._m.truncations.inc()
        log.error("log.kafka.log_truncation", topic=self.topic, partition=p, offset=offset, error=why)
        start = offset if offset is not None and offset >= 0 else self._next.get(p, 0)
        try:
            lo, hi = self._watermarks(p)
            start = min(max(start, lo), hi)
        except KafkaException:
            pass
        self._reassign(p, start)

    def _truncation(self, p: int, expected: int, hi: int) -> None:
        self._m.truncations.inc()
        log.error(
            "log.kafka.truncated_below_position",
            topic=self.topic,
            partition=p,
            position=expected,
            log_end=hi,
            note="records up to the position were processed; offsets from the log end on will be reused",
        )

    def _gap(self, p: int, first: int, last: int, why: str, lo: int) -> None:
        reason = (
            f"Kafka topic {self.topic} partition {p}: offsets {first}..{last} no longer exist "
            f"(earliest available {lo}; deleted by delete_records/retention or lost by the brokers; {why})"
        )
        gap = LogGap(p, first, last, reason, _now_ms())
        self._pending_gaps.append(gap)
        log.error("log.kafka.gap", topic=self.topic, partition=p, first=first, last=last, reason=reason)

    def _reassign(self, p: int, start: int) -> None:
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
            committed = {tp.partition: tp.offset for tp in consumer.committed(mine, timeout=self._timeout)}
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
            p = tp.partition
            c = committed.get(p, OFFSET_INVALID)
            try:
                lo, hi = self._watermarks(p)
            except KafkaException:
                starts.append(TopicPartition(self.topic, p, c if c >= 0 else -2))  # -2: earliest
                self._next.pop(p, None)
                self._committed.pop(p, None)
                continue
            self._hw[p] = hi
            if c < 0:
                start = lo
            elif c < lo:
                self._gap(p, c, lo - 1, "the committed offset points at deleted data", lo)
                start = lo
            elif c > hi:
                self._truncation(p, c, hi)
                start = hi
            else:
                start = c
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
            for d in (self._next, self._hw, self._committed, self._uncommitted, self._last_ts, self._stuck):
                d.pop(p, None)
        self._pending_gaps = [g for g in self._pending_gaps if g.partition in self._assigned]
        self._m.assigned.set(len(self._assigned))
        log.info("log.kafka.revoked", group=self.group_id, partitions=[tp.partition for tp in partitions])

    # --- lag -------------------------------------------------------------------------------------------

    def _oldest_ts(self, p: int, committed: int) -> float | None:
        """Timestamp (ms) of the record at ``committed`` on ``p``, or an upper bound of its age."""
        q = self._uncommitted.get(p)
        if q:
            for off, ts in q:
                if off >= committed:
                    return float(ts)
        # The record at ``committed`` was appended no earlier than the last record we returned
        # (which is before it): using that timestamp overestimates the age by at most the spacing
        # of two records.
        last = self._last_ts.get(p)
        return None if last is None else float(last)
