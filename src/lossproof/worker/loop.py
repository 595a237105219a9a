"""The worker: log → decode → one store transaction (points + ledger) → commit log position.

Order is what makes a crash harmless: the log position is committed only after the store
transaction, so a crash anywhere re-reads at most one batch, and the store's idempotency makes
the re-read a no-op. A store failure never advances the position; the batch is retried.

Memory is bounded per batch, not per record: records are gathered up to ``batch_bytes`` (as they
are in the log), decoded a part at a time (:func:`record_parts`), and a store batch is written as
soon as it holds ``batch_points`` points or ``batch_decoded_bytes`` decoded bytes. The log position
then advances only past records whose every part is stored; the record a write cut in two stays
uncommitted, so a crash re-reads it whole and the parts already stored are idempotent no-ops. A
native report is never cut (see :func:`record_parts`): it is stored whole, once, with its ledger
update, as the store contract says; only third-party bodies (samples, each stored once per series
and timestamp) and native requests of several reports may be stored over several transactions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lossproof.log.base import LogGap, LogReader, LogRecord, PollResult
from lossproof.obs.logging import get
from lossproof.protocol.decode import merge, record_parts
from lossproof.store.base import DeadLetter, Store, StoreUnavailable, WriteBatch, WriteResult
from lossproof.worker.memory import release_memory
from lossproof.worker.quarantine_metric import quarantined_counter

log = get(__name__)

# The worker is behind when its oldest record not committed is older than this: a backlog, not the
# batch it is gathering (batch_wait) or writing (a transaction: tens of ms); and has caught up when
# it is younger than CAUGHT_UP_S (apart: a lag about one of them does not flip it every update).
BEHIND_S = 2.0
CAUGHT_UP_S = 1.0

MiB = 1 << 20




class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("lossproof_worker_records_total", "Log records processed.", registry=registry)
        self.points = Counter(
            "lossproof_worker_points_total", "Points written to the store.", registry=registry
        )
        self.points_skipped = Counter(
            "lossproof_worker_points_skipped_total",
            "Points not written because the store (or the same batch, earlier) holds a point of that series"
            " at that timestamp (first write wins): a replay's, harmless, or a different value, not kept.",
            registry=registry,
        )
        # one counter for the worker's writes and its compactor's steps (CompactorProcess records
        # into it): an operator alerts on any increase
        self.quarantined = quarantined_counter(registry)
        self.reports = Counter(
            "lossproof_worker_reports_total",
            "Reports by outcome (stored; duplicate = already stored with the same content, skipped"
            " whole; conflict = its seq is stored with other content: kept whole in the conflicts table).",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "lossproof_worker_dead_letters_total", "Records sent to the dead-letter table.", registry=registry
        )
        self.gaps = Counter(
            "lossproof_worker_log_gaps_total", "Ranges of log records found missing.", registry=registry
        )
        self.gap_records = Counter(
            "lossproof_worker_log_gap_records_total", "Log records found missing.", registry=registry
        )
        self.store_errors = Counter(
            "lossproof_worker_store_errors_total", "Failed store transactions (retried).", registry=registry
        )
        self.batch_seconds = Histogram(
            "lossproof_worker_batch_seconds",
            "Time to decode and store one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.lag_records = Gauge(
            "lossproof_worker_lag_records", "Log records not yet committed by the worker.", registry=registry
        )
        self.lag_seconds = Gauge(
            "lossproof_worker_lag_seconds", "Age of the oldest record not yet committed.", registry=registry
        )
        self.behind = Gauge(
            "lossproof_worker_behind",
            "1 while the worker is behind (its oldest record not committed older than 2 s, until it is "
            "under 1 s again): compaction then takes a step every 10 s at most.",
            registry=registry,
        )
        self.e2e_seconds = Histogram(
            "lossproof_worker_end_to_end_seconds",
            "From ingest receiving a record to it being stored.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.healthy = Gauge(
            "lossproof_worker_healthy", "1 when the last store write succeeded.", registry=registry
        )


class Worker:
    def __init__(
        self,
        reader: LogReader,
        store: Store,
        registry: CollectorRegistry,
        batch_records: int = 512,
        batch_wait: float = 0.05,
        batch_bytes: int = 16 * MiB,
        batch_points: int = 131_072,
        batch_decoded_bytes: int = 16 * MiB,
    ) -> None:
        self.reader = reader
        self.store = store
        self.metrics = WorkerMetrics(registry)
        self.batch_records = batch_records
        self.batch_wait = batch_wait
        self.batch_bytes = batch_bytes
        self.batch_points = batch_points
        self.batch_decoded_bytes = batch_decoded_bytes
        # Parts of a record are smaller than a batch, so that several records share a transaction.
        self.part_points = max(1, min(65_536, batch_points // 2))
        self.part_bytes = max(1, min(8 * MiB, batch_decoded_bytes // 2))
        # Estimated log bytes per record, for how many records one poll may ask for (see _gather).
        self._record_bytes = max(1.0, batch_bytes / 16)
        self.stop = threading.Event()
        self.last_error = ""
        self._lag_checked = 0.0
        # told whether the worker is behind (its oldest record not committed is older than
        # BEHIND_S), on every lag update: the compactor steps aside meanwhile
        self.on_behind: Callable[[bool], None] | None = None
        self._behind = False
        # proves to ``up`` that this loop still runs (lossproof.heartbeat); nothing on its own
        self.beat: Callable[[], None] = lambda: None

    def run(self) -> None:
        pending: PollResult | None = None
        backoff = 0.1
        while not self.stop.is_set():
            self.beat()
            if pending is None:
                pending = self._gather()
            if pending.records or pending.gaps:
                try:
                    self.process(pending)
                except Exception as e:
                    # Never crash-loop and never skip: keep the batch, wait, try again.
                    self.metrics.store_errors.inc()
                    self.metrics.healthy.set(0)
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.error("worker.store_failed", error=self.last_error, retry_in=backoff)
                    self._update_lag()  # lag must keep showing while the store is down
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
            pending = None
            self._update_lag()

    def _gather(self) -> PollResult:
        """Up to ``batch_records`` records and about ``batch_bytes`` of them as they are in the log,
        waiting at most ``batch_wait`` once the first arrived.

        A store transaction (and its fsync) per handful of records would cap the worker far below
        what one big transaction achieves, so a batch fills up under load; when idle, the first
        record is still processed within ``batch_wait``. A poll asks for as many records as fit the
        byte budget at the recent record size, so big bodies (up to ``server.max_body_bytes`` each)
        are not read 512 at a time."""
        got = self.reader.poll(self._poll_size(0, 0), self.batch_wait)
        if not got.records:
            return got
        size = self._note_sizes(got.records)
        deadline = time.monotonic() + self.batch_wait
        while len(got.records) < self.batch_records and size < self.batch_bytes and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self.reader.poll(self._poll_size(len(got.records), size), left)
            got.records.extend(more.records)
            got.gaps.extend(more.gaps)
            size += self._note_sizes(more.records)
            if not more.records and not more.gaps:
                break
        return got

    def _poll_size(self, have: int, size: int) -> int:
        room = (self.batch_bytes - size) / self._record_bytes
        return max(1, min(self.batch_records - have, int(room)))

    def _note_sizes(self, records: Sequence[LogRecord]) -> int:
        size = sum(len(r.value) for r in records)
        if records:  # a moving average that follows a change of sizes within a few polls
            self._record_bytes = max(1.0, 0.5 * self._record_bytes + 0.5 * size / len(records))
        return size

    def process(self, polled: PollResult) -> None:
        """Decode and store ``polled``, one bounded store batch at a time (see the module docstring),
        committing the log position after each. Raises StoreUnavailable, leaving ``polled.records``
        at the records not committed yet (the first possibly partly stored), for the retry."""
        decoded = self._process(polled)
        # Only after a batch bigger than the steady state (a big request, written over several
        # transactions): trimming after every full batch cost throughput (the next batch faults the
        # same pages in again), and a steady state keeps reusing the memory it has anyway.
        if decoded > 2 * self.batch_decoded_bytes:
            release_memory()  # the batch's objects are gone by now: hand their memory back

    def _process(self, polled: PollResult) -> int:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        for gap in polled.gaps:
            log.error(
                "worker.log_gap", partition=gap.partition, first=gap.first, last=gap.last, reason=gap.reason
            )
        records = list(polled.records)
        batch = WriteBatch(gaps=list(polled.gaps), now_ms=now_ms)
        first = 0  # records[first:] are not committed; records[first] may be partly stored
        points = decoded = total_decoded = 0
        for i, record in enumerate(records):
            self.beat()
            for part in record_parts(record, self.part_points, self.part_bytes):
                over = points + part.points > self.batch_points
                if (over or decoded + part.size > self.batch_decoded_bytes) and (points or decoded):
                    self._write(batch, records[first : i + 1])  # the first write has the gaps
                    # records before ``i`` are stored whole; ``i`` is, at most, in part
                    self._commit(records[first:i], polled.gaps, records[i:])
                    self._committed(records[first:i])
                    polled.records[:] = records[i:]
                    first = i
                    batch = WriteBatch(now_ms=now_ms)
                    points = decoded = 0
                merge(batch, part.batch)
                points += part.points
                decoded += part.size
                total_decoded += part.size
        self._write(batch, records[first:])
        self._commit(records[first:], polled.gaps, [])
        self._committed(records[first:])
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.healthy.set(1)
        self.last_error = ""
        return total_decoded

    def _commit(self, done: list[LogRecord], gaps: list[LogGap], pending: list[LogRecord]) -> None:
        """Commit past ``done`` and ``gaps``, but never past a record of ``pending`` (not stored whole
        yet: its partition's position stops at it)."""
        offsets = PollResult(list(done), list(gaps)).next_offsets()
        for r in pending:
            if offsets.get(r.partition, -1) > r.offset:
                offsets[r.partition] = r.offset
        if offsets:
            self.reader.commit(offsets)

    def _committed(self, records: list[LogRecord]) -> None:
        now = time.time()
        for record in records:
            self.metrics.e2e_seconds.observe(max(0.0, now - record.timestamp_ms / 1000))
        self.metrics.records.inc(len(records))

    def _write(self, batch: WriteBatch, records: list[LogRecord]) -> None:
        """Store ``batch`` (the parts of ``records``, gaps included); record the outcome."""
        try:
            result = self.store.write_batch(batch)
        except StoreUnavailable:
            raise
        except Exception as e:
            # The store refused the data itself (not an outage): find the record(s) responsible and
            # dead-letter them, so one poison record never blocks the partition.
            log.error("worker.batch_rejected", error=f"{type(e).__name__}: {e}", records=len(records))
            batch.dead_letters, result = self._isolate(records, batch.gaps, batch.now_ms)
        self.metrics.points.inc(result.points_written)
        self.metrics.points_skipped.inc(result.points_skipped)
        self.metrics.quarantined.labels("write").inc(result.chunks_quarantined)
        self.metrics.reports.labels("stored").inc(result.reports_stored)
        self.metrics.reports.labels("duplicate").inc(result.reports_duplicate)
        if result.reports_conflict:
            self.metrics.reports.labels("conflict").inc(result.reports_conflict)
            log.error(
                "worker.seq_conflict",
                reports=result.reports_conflict,
                hint="reports reused stored seqs with other content (two agents with one id, or a reset"
                " spool): kept whole in the conflicts table (listed by the ledger API and the dashboard)",
            )
        if batch.gaps:
            self.metrics.gaps.inc(len(batch.gaps))
            self.metrics.gap_records.inc(sum(g.last - g.first + 1 for g in batch.gaps))
        self.metrics.dead_letters.inc(len(batch.dead_letters))
        for dl in batch.dead_letters:
            log.warning("worker.dead_letter", partition=dl.partition, offset=dl.offset, reason=dl.reason)

    def _isolate(
        self, records: list[LogRecord], gaps: list[LogGap], now_ms: int
    ) -> tuple[list[DeadLetter], WriteResult]:
        """Write the records one by one (a big one a part per transaction, as it was decoded);
        returns every dead letter written and the totals. A record the store refuses is dead-lettered
        whole, though parts of it stored before stay (idempotent samples or whole reports)."""
        points = stored = duplicate = conflict = skipped = quarantined = 0
        rejected = WriteBatch(gaps=list(gaps), now_ms=now_ms)
        dead: list[DeadLetter] = []
        for record in records:
            self.beat()
            for part in record_parts(record, self.part_points, self.part_bytes):
                one = part.batch
                one.now_ms = now_ms
                try:
                    r = self.store.write_batch(one)
                except StoreUnavailable:
                    raise
                except Exception as e:
                    rejected.dead_letters.append(
                        DeadLetter(
                            record.partition,
                            record.offset,
                            "",
                            f"store rejected: {type(e).__name__}: {e}",
                            record.value,
                        )
                    )
                    break
                dead.extend(one.dead_letters)
                points += r.points_written
                stored += r.reports_stored
                duplicate += r.reports_duplicate
                conflict += r.reports_conflict
                skipped += r.points_skipped
                quarantined += r.chunks_quarantined
        self.store.write_batch(rejected)
        result = WriteResult(points, stored, duplicate, conflict, skipped, quarantined)
        return dead + rejected.dead_letters, result

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_checked < 0.5:
            return
        self._lag_checked = now
        try:
            lag = self.reader.lag()
        except Exception as e:
            log.warning("worker.lag_unknown", error=str(e))
            return
        self.metrics.lag_records.set(lag.records)
        self.metrics.lag_seconds.set(lag.seconds)
        if lag.seconds > BEHIND_S:
            self._behind = True
        elif lag.seconds < CAUGHT_UP_S:
            self._behind = False
        self.metrics.behind.set(self._behind)
        if self.on_behind is not None:
            self.on_behind(self._behind)
