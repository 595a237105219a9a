"""The agent's own metrics (Prometheus text on ``/metrics``) and ``/healthz``, on 127.0.0.1 only."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lossproof.agent.spool import SpoolStats


def reason_kind(reason: str) -> str:
    """Drop reasons as a metric label: ``rejected: <server message>`` would have unbounded values."""
    return reason.split(":", 1)[0]


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.reports_created = Counter(
            "lossproof_agent_reports_created", "Reports written to the spool.", registry=r
        )
        self.points = Counter("lossproof_agent_points", "Points put into reports.", registry=r)
        self.acked = Counter(
            "lossproof_agent_reports_acked",
            "Pending reports acknowledged durable, by where they went.",
            ["destination"],
            registry=r,
        )
        self.seq_conflicts = Counter(
            "lossproof_agent_seq_conflicts",
            "Requests answered 409 seq_conflict (another agent with this agent_id, or a copied spool):"
            " each started a new incarnation and the reports were sent again.",
            registry=r,
        )
        self.replayed = Counter(
            "lossproof_agent_reports_replayed",
            "Reports sent again from the replay window because the server asked.",
            registry=r,
        )
        self.dropped = Counter(
            "lossproof_agent_reports_dropped",
            "Reports given up on (and reported to the server as dropped), by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "lossproof_agent_requests",
            "Requests sent, by destination and HTTP status (0: no answer).",
            ["destination", "status"],
            registry=r,
        )
        self.send_errors = Counter(
            "lossproof_agent_send_errors",
            "Requests not answered 200, by status ('connection' when there was no answer).",
            ["status"],
            registry=r,
        )
        self.destination = Gauge(
            "lossproof_agent_destination",
            "1 for where requests go now (primary or fallback), else 0.",
            ["destination"],
            registry=r,
        )
        self.spool_errors = Counter(
            "lossproof_agent_spool_errors", "Reports that could not be written to the spool.", registry=r
        )
        self.points_dropped = Counter(
            "lossproof_agent_points_dropped",
            "Points that never got into a report because the spool could not be written for long.",
            registry=r,
        )
        self.statsd_lines = Counter("lossproof_agent_statsd_lines", "StatsD lines accepted.", registry=r)
        self.statsd_dropped = Counter(
            "lossproof_agent_statsd_packets_dropped",
            "StatsD packets the kernel dropped because the agent did not read them in time (its receive"
            " buffer was full); reported to the server as lost (reason statsd_dropped).",
            registry=r,
        )
        self.statsd_malformed = Counter(
            "lossproof_agent_statsd_malformed", "StatsD lines ignored because they are malformed.", registry=r
        )
        self.record_errors = Counter(
            "lossproof_agent_collect_errors", "Collector failures, by collector.", ["collector"], registry=r
        )
        self.relay_requests = Counter(
            "lossproof_agent_relay_requests",
            "Requests of local clients to the relay, by protocol and HTTP status answered.",
            ["protocol", "status"],
            registry=r,
        )
        self.relay_points = Counter(
            "lossproof_agent_relay_points",
            "Points of local clients' requests (the protocol's unit: remote-write samples, OTLP data"
            " points, Influx lines), by protocol and outcome (acked: in the spool and answered 2xx;"
            " refused: 4xx; unavailable: 503, the client keeps them).",
            ["protocol", "outcome"],
            registry=r,
        )
        self.relay_samples = Counter(
            "lossproof_agent_relay_samples_spooled",
            "Samples the relay put into reports in a local sender's spool, by protocol.",
            ["protocol"],
            registry=r,
        )
        self.relay_latency = Histogram(
            "lossproof_agent_relay_request_seconds",
            "Time from a relay request's start to its answer (includes the spool's fsync).",
            ["protocol"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.destination.labels("primary").set(1)
        self.destination.labels("fallback").set(0)

    def watch_spool(self, stats: Callable[[], SpoolStats]) -> None:
        self.registry.register(_SpoolCollector(stats))

    def watch_relay(self, stats: Callable[[], list[tuple[str, SpoolStats]]]) -> None:
        self.registry.register(_RelayCollector(stats))

    def set_destination(self, kind: str) -> None:
        self.destination.labels("primary").set(1 if kind == "primary" else 0)
        self.destination.labels("fallback").set(1 if kind == "fallback" else 0)


class _SpoolCollector(Collector):
    """Spool gauges computed at scrape time from the spool itself, so they can never drift."""

    def __init__(self, stats: Callable[[], SpoolStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        b = GaugeMetricFamily("lossproof_agent_spool_bytes", "Spool bytes on disk.", labels=["state"])
        b.add_metric(["pending"], s.pending_bytes)
        b.add_metric(["window"], s.window_bytes)
        yield b
        n = GaugeMetricFamily("lossproof_agent_spool_reports", "Reports in the spool.", labels=["state"])
        n.add_metric(["pending"], s.pending_reports)
        n.add_metric(["window"], s.window_reports)
        yield n
        age = time.time() - s.oldest_pending_ms / 1000 if s.oldest_pending_ms else 0.0
        yield GaugeMetricFamily(
            "lossproof_agent_oldest_pending_age_seconds",
            "Age of the oldest unacknowledged report (0 when none).",
            value=max(0.0, age),
        )
        yield GaugeMetricFamily("lossproof_agent_last_seq", "Highest seq handed out.", value=s.last_seq)
        yield GaugeMetricFamily("lossproof_agent_spool_segments", "Spool segment files.", value=s.segments)


class _RelayCollector(Collector):
    """The local senders' spools, by sender (their agent id upstream), read at scrape time."""

    def __init__(self, stats: Callable[[], list[tuple[str, SpoolStats]]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        all_stats = self._stats()
        n = GaugeMetricFamily(
            "lossproof_agent_relay_spool_reports",
            "Reports in a local sender's spool.",
            labels=["sender", "state"],
        )
        b = GaugeMetricFamily(
            "lossproof_agent_relay_spool_bytes", "A local sender's spool bytes.", labels=["sender", "state"]
        )
        age = GaugeMetricFamily(
            "lossproof_agent_relay_oldest_pending_age_seconds",
            "Age of a local sender's oldest unacknowledged report (0 when none).",
            labels=["sender"],
        )
        now = time.time()
        for sender, s in all_stats:
            n.add_metric([sender, "pending"], s.pending_reports)
            n.add_metric([sender, "window"], s.window_reports)
            b.add_metric([sender, "pending"], s.pending_bytes)
            b.add_metric([sender, "window"], s.window_bytes)
            oldest = now - s.oldest_pending_ms / 1000 if s.oldest_pending_ms else 0.0
            age.add_metric([sender], max(0.0, oldest))
        yield n
        yield b
        yield age
        yield GaugeMetricFamily(
            "lossproof_agent_relay_senders", "Local senders with a spool of their own.", value=len(all_stats)
        )
