"""Prometheus metrics of the Kafka log backend (one set per writer / reader, on the given registry).

The metrics every backend has are in :mod:`lossproof.log.metrics`; these add Kafka's own
(``lossproof_log_kafka_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from lossproof.log.metrics import LogReaderMetrics, LogWriterMetrics


class KafkaWriterMetrics(LogWriterMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            registry,
            "Time from an append call until Kafka acknowledged it (acks=all, min.insync.replicas met).",
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


class KafkaReaderMetrics(LogReaderMetrics):
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        super().__init__(registry, group)

        def c(name: str, doc: str) -> Counter:
            return self.group_counter(registry, group, name, doc)

        self.truncations = c(
            "lossproof_log_kafka_truncations",
            "Truncations found: the log lost records this group had read and hands their offsets out "
            "again (every broker lost its page cache, e.g. a power cut).",
        )
        self.truncated_offsets = c(
            "lossproof_log_kafka_truncated_offsets",
            "Offsets that were read, then lost by the brokers and handed out again to new records "
            "(summed over truncations; the new records there are read).",
        )
        self.position_checks = c(
            "lossproof_log_kafka_position_checks",
            "Assignments and resets that checked, by leader epoch, that the log still holds the last "
            "records processed before resuming.",
        )
        self.position_rewinds = c(
            "lossproof_log_kafka_position_rewinds",
            "Times such a check stepped further back because the log diverged earlier than expected.",
        )
        self.rechecked_records = c(
            "lossproof_log_kafka_rechecked_records",
            "Records fetched again during such checks and not returned (already processed).",
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
