"""Prometheus metrics every log backend exposes, defined once (names, help, buckets, labels).

Each backend's writer / reader metrics extend these with its own (``lossproof/log/embedded/metrics.py``,
``lossproof/log/kafka/metrics.py``). The names are what dashboards and ``deploy/alerts.yml`` use, the
same whichever backend runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 0.25 ms to 10 s: fsync on a good SSD is ~0.1-2 ms, a sick disk takes seconds.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LogWriterMetrics:
    """A writer's append latency, failed appends and health; ``append_help`` says when an append
    counts as done for the backend."""

    def __init__(self, registry: CollectorRegistry, append_help: str) -> None:
        self.append_seconds = Histogram(
            "lossproof_log_append_seconds", append_help, buckets=LATENCY_BUCKETS, registry=registry
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


class LogReaderMetrics:
    """What a reader returned by poll, for its consumer ``group``."""

    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.records = self.group_counter(
            registry, group, "lossproof_log_read_records", "Records returned by poll."
        )
        self.bytes = self.group_counter(
            registry, group, "lossproof_log_read_bytes", "Key+value bytes returned by poll."
        )
        self.gaps = self.group_counter(
            registry, group, "lossproof_log_read_gaps", "Missing ranges reported by poll."
        )
        self.gap_offsets = self.group_counter(
            registry,
            group,
            "lossproof_log_read_gap_offsets",
            "Offsets inside missing ranges reported by poll.",
        )

    @staticmethod
    def group_counter(registry: CollectorRegistry, group: str, name: str, doc: str) -> Counter:
        """A counter labelled by consumer group, already bound to ``group``."""
        return Counter(name, doc, ["group"], registry=registry).labels(group=group)
