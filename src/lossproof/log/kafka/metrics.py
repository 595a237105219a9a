"""Prometheus metrics of the Kafka log backend (one set per writer / reader, on the given registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lossproof.log.embedded.metrics import LATENCY_BUCKETS


class KafkaWriterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.append_seconds = Histogram(
            "lossproof_log_append_seconds",
            "Time from an append call until Kafka acknowledged it (acks=all, min.insync.replicas met).",
            buckets=LATENCY_BUCKETS,
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
        self.in_flight = Gauge(
            "lossproof_log_kafka_in_flight",
            "Records handed to the producer and not yet acknowledged or failed.",
            registry=registry,
        )
        self.brokers_up = Gauge(
            "lossproof_log_kafka_brokers_up",
            "Brokers the producer is connected to (from librdkafka statistics).",
            registry=registry,
        )
        self.producer_restarts = Counter(
            "lossproof_log_kafka_producer_restarts",
            "Producers replaced after a fatal (idempotence) error.",
            registry=registry,
        )
        self.retention_deleted = Counter(
            "lossproof_log_kafka_retention_deleted_records",
            "Records deleted (delete_records) after every lossproof consumer group committed past them.",
            registry=registry,
        )


class KafkaReaderMetrics:
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        def c(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["group"], registry=registry).labels(group=group)

        self.records = c("lossproof_log_read_records", "Records returned by poll.")
        self.bytes = c("lossproof_log_read_bytes", "Key+value bytes returned by poll.")
        self.gaps = c("lossproof_log_read_gaps", "Missing ranges reported by poll.")
        self.gap_offsets = c(
            "lossproof_log_read_gap_offsets", "Offsets inside missing ranges reported by poll."
        )
        self.truncations = c(
            "lossproof_log_kafka_truncations",
            "Times a partition's end was found below the committed position (log truncated after data "
            "was processed: offsets will be reused).",
        )
        self.rebalances = c("lossproof_log_kafka_rebalances", "Partition assignments and revocations.")
        self.commit_refused = c(
            "lossproof_log_kafka_commits_refused",
            "Commits refused because the partition moved to another worker (it re-reads: harmless).",
        )
        self.consumer_errors = Counter(
            "lossproof_log_kafka_consumer_errors",
            "Errors reported by the consumer, by librdkafka error name.",
            ["group", "error"],
            registry=registry,
        )
        self.assigned = Gauge(
            "lossproof_log_kafka_assigned_partitions",
            "Partitions this reader currently owns.",
            ["group"],
            registry=registry,
        ).labels(group=group)
