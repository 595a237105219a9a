"""The worker: log → decode → one store transaction (points + ledger) → commit log position.

Order is what makes a crash harmless: the log position is committed only after the store
transaction, so a crash anywhere re-reads at most one batch, and the store's idempotency makes
the re-read a no-op. A store failure never advances the position; the batch is retried.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lossproof.log.base import LogReader, PollResult
from lossproof.obs.logging import get
from lossproof.store.base import DeadLetter, Store, StoreUnavailable, WriteBatch, WriteResult
from lossproof.worker.decode import add_record

log = get(__name__)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("lossproof_worker_records_total", "Log records processed.", registry=registry)
        self.points = Counter(
            "lossproof_worker_points_total", "Points written to the store.", registry=registry
        )
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
        batch_records: int = 128,
        batch_wait: float = 0.05,
    ) -> None:
        self.reader = reader
        self.store = store
        self.metrics = WorkerMetrics(registry)
        self.batch_records = batch_records
        self.batch_wait = batch_wait
        self.stop = threading.Event()
        self.last_error = ""
        self._lag_checked = 0.0

    def run(self) -> None:
        pending: PollResult | None = None
        backoff = 0.1
        while not self.stop.is_set():
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
        """Up to ``batch_records`` records, waiting at most ``batch_wait`` once the first arrived.

        A store transaction (and its fsync) per handful of records would cap the worker far below
        what one big transaction achieves, so a batch fills up under load; when idle, the first
        record is still processed within ``batch_wait``."""
        got = self.reader.poll(self.batch_records, self.batch_wait)
        if not got.records:
            return got
        deadline = time.monotonic() + self.batch_wait
        while len(got.records) < self.batch_records and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self.reader.poll(self.batch_records - len(got.records), left)
            got.records.extend(more.records)
            got.gaps.extend(more.gaps)
            if not more.records and not more.gaps:
                break
        return got

    def process(self, polled: PollResult) -> None:
        started = time.perf_counter()
        batch = WriteBatch(gaps=list(polled.gaps), now_ms=int(time.time() * 1000))
        for gap in polled.gaps:
            log.error(
                "worker.log_gap", partition=gap.partition, first=gap.first, last=gap.last, reason=gap.reason
            )
        for record in polled.records:
            add_record(batch, record)
        try:
            result = self.store.write_batch(batch)
        except StoreUnavailable:
            raise
        except Exception as e:
            # The store refused the data itself (not an outage): find the record(s) responsible and
            # dead-letter them, so one poison record never blocks the partition.
            log.error("worker.batch_rejected", error=f"{type(e).__name__}: {e}", records=len(polled.records))
            batch.dead_letters, result = self._isolate(polled, batch.now_ms)
        self.reader.commit(polled.next_offsets())

        now = time.time()
        for record in polled.records:
            self.metrics.e2e_seconds.observe(max(0.0, now - record.timestamp_ms / 1000))
        self.metrics.records.inc(len(polled.records))
        self.metrics.points.inc(result.points_written)
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
        self.metrics.dead_letters.inc(len(batch.dead_letters))
        self.metrics.gaps.inc(len(polled.gaps))
        self.metrics.gap_records.inc(sum(g.last - g.first + 1 for g in polled.gaps))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.healthy.set(1)
        self.last_error = ""
        for dl in batch.dead_letters:
            log.warning("worker.dead_letter", partition=dl.partition, offset=dl.offset, reason=dl.reason)

    def _isolate(self, polled: PollResult, now_ms: int) -> tuple[list[DeadLetter], WriteResult]:
        """Write the records one by one; returns every dead letter written and the totals."""
        points = stored = duplicate = conflict = 0
        rejected = WriteBatch(gaps=list(polled.gaps), now_ms=now_ms)
        dead: list[DeadLetter] = []
        for record in polled.records:
            one = WriteBatch(now_ms=now_ms)
            add_record(one, record)
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
                continue
            dead.extend(one.dead_letters)
            points += r.points_written
            stored += r.reports_stored
            duplicate += r.reports_duplicate
            conflict += r.reports_conflict
        self.store.write_batch(rejected)
        return dead + rejected.dead_letters, WriteResult(points, stored, duplicate, conflict)

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
