"""Prometheus metrics of the ingest API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from lossproof.httputil import header_text

MAX_SENDERS = 100  # distinct sender label values per process: bounds the label cardinality
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lossproof_ingest_requests_total",
            "Ingest requests by protocol and HTTP status.",
            ["protocol", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "lossproof_ingest_request_seconds",
            "Time from request start to answer (includes waiting for the durable log).",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.reports = Counter(
            "lossproof_ingest_reports_total", "Reports acknowledged durable.", ["tenant"], registry=registry
        )
        self.points = Counter(
            "lossproof_ingest_points_total", "Points acknowledged durable.", ["tenant"], registry=registry
        )
        self.bytes = Counter(
            "lossproof_ingest_bytes_total",
            "Request body bytes acknowledged durable (as received, compressed).",
            ["tenant"],
            registry=registry,
        )
        self.rejected = Counter(
            "lossproof_ingest_rejected_total",
            "Requests refused, by reason (bad_request, unauthorized, too_large, unavailable...).",
            ["reason"],
            registry=registry,
        )
        # Third-party protocols (prom-rw, otlp, influx). "points" are each protocol's own unit: remote
        # write samples and native histograms, OTLP data points, Influx lines.
        self.proto_requests = Counter(
            "lossproof_ingest_protocol_requests_total",
            "Third-party protocol requests by outcome: received, acked (durable, 2xx), rejected (4xx/5xx).",
            ["tenant", "protocol", "outcome"],
            registry=registry,
        )
        self.proto_points = Counter(
            "lossproof_ingest_protocol_points_total",
            "Third-party points by outcome: received (in a body that decoded), acked (durable), rejected "
            "(in a refused request, or refused inside an accepted one: OTLP partial success).",
            ["tenant", "protocol", "outcome"],
            registry=registry,
        )
        self.proto_skipped = Counter(
            "lossproof_ingest_protocol_skipped_total",
            "Values acknowledged but not stored, by reason (influx string fields, remote-write exemplars).",
            ["tenant", "protocol", "reason"],
            registry=registry,
        )
        self.senders = Counter(
            "lossproof_ingest_sender_points_total",
            f"Remote-write points per sender (User-Agent and remote address; the first {MAX_SENDERS} "
            "senders seen by this process, later ones as 'other'), by outcome.",
            ["tenant", "sender", "outcome"],
            registry=registry,
        )
        self._senders: set[str] = set()
        self.replay_requested = Counter(
            "lossproof_ingest_replay_requested_total",
            "Seqs that responses asked agents to send again.",
            registry=registry,
        )

    def sender(self, user_agent: str, remote: str | None) -> str:
        """The sender label for a request: ``<User-Agent> <address>``, or ``other`` past MAX_SENDERS.
        The User-Agent is made safe text first (:func:`lossproof.httputil.header_text`): a label that
        is not valid UTF-8 would break every later scrape of /metrics."""
        label = f"{header_text(user_agent) or '-'} {remote or '-'}"
        if label in self._senders:
            return label
        if len(self._senders) >= MAX_SENDERS:
            return "other"
        self._senders.add(label)
        return label
