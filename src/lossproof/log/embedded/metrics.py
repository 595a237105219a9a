"""Prometheus metrics of the embedded log (one set per writer / reader, on the given registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 0.25 ms to 10 s: fsync on a good SSD is ~0.1-2 ms, a sick disk takes seconds.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class WriterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.append_seconds = Histogram(
            "lossproof_log_append_seconds",
            "Time from an append call until the record is durable (written and fsync'd).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
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
        self.append_errors = Counter(
            "lossproof_log_append_errors",
            "Appends answered with LogUnavailable, by reason.",
            ["reason"],
            registry=registry,
        )
        self.healthy = Gauge(
            "lossproof_log_healthy", "1 if appends are expected to succeed, 0 otherwise.", registry=registry
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


class ReaderMetrics:
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.records = Counter(
            "lossproof_log_read_records", "Records returned by poll.", ["group"], registry=registry
        ).labels(group=group)
        self.bytes = Counter(
            "lossproof_log_read_bytes", "Key+value bytes returned by poll.", ["group"], registry=registry
        ).labels(group=group)
        self.gaps = Counter(
            "lossproof_log_read_gaps", "Missing ranges reported by poll.", ["group"], registry=registry
        ).labels(group=group)
        self.partitions = Gauge(
            "lossproof_log_read_partitions",
            "Log partitions this reader owns for its group (0: standby, waiting for one to free up).",
            ["group"],
            registry=registry,
        ).labels(group=group)
        self.gap_offsets = Counter(
            "lossproof_log_read_gap_offsets",
            "Offsets inside missing ranges reported by poll.",
            ["group"],
            registry=registry,
        ).labels(group=group)
