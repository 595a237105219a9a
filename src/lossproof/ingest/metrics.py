"""Prometheus metrics of the ingest API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
        self.replay_requested = Counter(
            "lossproof_ingest_replay_requested_total",
            "Seqs that responses asked agents to send again.",
            registry=registry,
        )
