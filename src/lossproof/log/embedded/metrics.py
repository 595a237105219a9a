"""Prometheus metrics of the embedded log (one set per writer / reader, on the given registry).

The metrics every backend has are in :mod:`lossproof.log.metrics`; these add the embedded log's own
(fsync, segments on disk, recovery, retention, partitions owned)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lossproof.log.metrics import LATENCY_BUCKETS, LogReaderMetrics, LogWriterMetrics

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class WriterMetrics(LogWriterMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            registry, "Time from an append call until the record is durable (written and fsync'd)."
        )
        self.fsync_seconds = Histogram(
            "lossproof_log_fsync_seconds",
            "Duration of each data fsync (one per group commit).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fsync_batch_records = Histogram(
            "lossproof_log_fsync_batch_records",
            "Records made durable by one fsync (group commit size).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.bytes = Gauge("lossproof_log_bytes", "Bytes of segment files on disk.", registry=registry)
        self.end_offset = Gauge(
            "lossproof_log_end_offset",
            "Next durable offset (every offset below it is fsync'd).",
            registry=registry,
        )
        self.recovery_truncated_bytes = Counter(
            "lossproof_log_recovery_truncated_bytes",
            "Bytes of torn tail removed from the last segment at start-up.",
            registry=registry,
        )
        self.recovery_lost_records = Counter(
            "lossproof_log_recovery_lost_records",
            "Offsets below the durable watermark that were missing at start-up (data loss).",
            registry=registry,
        )
        self.partition = Gauge(
            "lossproof_log_partition", "The log partition this writer process appends to.", registry=registry
        )
        self.segments_deleted = Counter(
            "lossproof_log_segments_deleted",
            "Segments deleted by retention after every consumer group committed past them.",
            registry=registry,
        )


class ReaderMetrics(LogReaderMetrics):
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        super().__init__(registry, group)
        self.partitions = Gauge(
            "lossproof_log_read_partitions",
            "Log partitions this reader owns for its group (0: standby, waiting for one to free up).",
            ["group"],
            registry=registry,
        ).labels(group=group)
