"""Prometheus metrics of the ingest API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from lossproof.httputil import header_text

MAX_SENDERS = 100  # distinct sender label values per process: bounds the label cardinality
UNCONFIRMED_LABELS = ("tenant", "protocol", "sender", "outcome", "status")
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
        self.seq_conflicts = Counter(
            "lossproof_ingest_seq_conflicts_total",
            "Reports refused with 409: their seq is already stored with other content (a reused seq).",
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
        # Third-party requests whose client never got a 2xx: they carry no seqs, so these counters are
        # the only trace of data a client may have dropped (docs/protocols.md, "Possibly dropped").
        self.unconfirmed_requests = Counter(
            "lossproof_ingest_unconfirmed_requests_total",
            "Third-party requests the client got no 2xx for, per sender: refused (4xx: the client drops "
            "the batch), unavailable (5xx: it retries for a while, then drops), unanswered (the connection "
            "ended before our answer was delivered; status is the answer we had, '-' if none yet).",
            UNCONFIRMED_LABELS,
            registry=registry,
        )
        self.unconfirmed_points = Counter(
            "lossproof_ingest_unconfirmed_points_total",
            "Points in the requests of lossproof_ingest_unconfirmed_requests_total whose body decoded.",
            UNCONFIRMED_LABELS,
            registry=registry,
        )
        self._client_senders: dict[str, set[str]] = {}
        self.series_limited = Counter(
            "lossproof_ingest_series_limited_requests_total",
            "Requests refused (400) because they would take the tenant past its series limit.",
            ["tenant", "protocol"],
            registry=registry,
        )
        self.series_refused = Counter(
            "lossproof_ingest_series_limited_series_total",
            "New series in the requests of lossproof_ingest_series_limited_requests_total.",
            ["tenant", "protocol"],
            registry=registry,
        )
        self.replay_requested = Counter(
            "lossproof_ingest_replay_requested_total",
            "Seqs that responses asked agents to send again.",
            registry=registry,
        )

    def client_sender(self, tenant: str, user_agent: str) -> str:
        """The sender label of the unconfirmed counters: the User-Agent as safe text
        (:func:`lossproof.httputil.header_text`), ``-`` without one, ``other`` past MAX_SENDERS per
        tenant. Bounded per tenant, so one tenant sending random User-Agents cannot push another
        tenant's senders into ``other``; tenants are configured, so the whole stays bounded."""
        label = header_text(user_agent) or "-"
        seen = self._client_senders.setdefault(tenant, set())
        if label in seen:
            return label
        if len(seen) >= MAX_SENDERS:
            return "other"
        seen.add(label)
        return label

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
