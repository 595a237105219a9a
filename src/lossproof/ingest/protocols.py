"""The protocols agents already speak: Prometheus remote write (``POST /api/v1/write``), OTLP/HTTP
metrics (``POST /v1/metrics``) and InfluxDB line protocol (``POST /write``, ``POST /api/v2/write``,
``GET /ping``). See docs/protocols.md.

Every request takes the native flow: authenticate, read the body bounded, decompress it bounded,
check it decodes and is within bounds (in C where possible: no loop over samples in Python), append
the body as received to the log in an :class:`~lossproof.protocol.native.Envelope`, wait until it is
durable, and only then answer 2xx. The worker decodes the samples. Status codes are chosen per
protocol so real clients retry what can succeed later and drop only what never can:

- remote write: 204; 400 malformed (Prometheus drops it); 503 when the log cannot take it durably
  (Prometheus retries 5xx; never 429, which Prometheus drops by default).
- OTLP: 200 with an ExportMetricsServiceResponse (partial success when points were refused); 400
  malformed; 503 + Retry-After for log trouble (the SDKs retry it; never 500, which they drop).
- InfluxDB: 204; 400 malformed; 503 for log trouble.

How each protocol decodes a request and answers (the same for the agent's relay) is in
:mod:`lossproof.protocol_http`; the Retry-After of each is chosen from what its real clients do with it. A
request whose client got no 2xx (refused, unavailable, or its connection ended before the answer) is
counted per tenant and sender (:meth:`ThirdParty.unconfirmed`): third-party senders have no seqs, so
that count is the only trace of a batch the client may have dropped.
"""

from __future__ import annotations

import time

from aiohttp import web

from lossproof.auth import KeyRing
from lossproof.config import Config
from lossproof.httputil import CLOSE_STATUSES, ApiError, close_after, unavailable
from lossproof.ingest.metrics import IngestMetrics
from lossproof.ingest.reports import Ingest
from lossproof.ingest.series_limit import SeriesLimit
from lossproof.log.base import LogWriter
from lossproof.obs.logging import get
from lossproof.protocol import native
from lossproof.protocol.thirdparty import Checked
from lossproof.protocol_http import Attempt, Decoded, Endpoint, check_request, endpoints, health, ping
from lossproof.receipt import Receipt, nothing_to_keep
from lossproof.receipt import checked as check_receipt

log = get(__name__)

# The status counted (lossproof_ingest_requests_total) for a request whose client hung up before its
# body was read: nginx's "client closed request". Never sent: there is no one to send it to.
CLIENT_CLOSED = 499


class ThirdParty(Ingest):
    """The ingest flow shared by the three protocols; ``endpoint`` says how to decode and answer."""

    def __init__(
        self,
        cfg: Config,
        keys: KeyRing,
        writer: LogWriter,
        metrics: IngestMetrics,
        endpoint: Endpoint,
        series_limit: SeriesLimit | None = None,
    ) -> None:
        super().__init__(cfg, keys, writer, metrics, series_limit)
        self.endpoint = endpoint
        self.protocol = endpoint.protocol
        self.query_auth = endpoint.query_auth

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        m = self.metrics
        state = Attempt()
        try:
            resp = await self._handle(request, state)
        except ApiError as e:
            m.rejected.labels(e.reason).inc()
            if state.tenant == "-":  # refused before authentication: received all the same
                m.proto_requests.labels(state.tenant, self.protocol, "received").inc()
            m.proto_requests.labels(state.tenant, self.protocol, "rejected").inc()
            if state.checked is not None:
                n = state.checked.points + state.checked.histograms
                m.proto_points.labels(state.tenant, self.protocol, "rejected").inc(n)
                self.count_sender(request, state, "rejected", n)
            resp = self.endpoint.error(state, e)
        except Exception:
            if not _gone(request):
                self.unconfirmed(request, state, "500")  # aiohttp answers it 500
                raise
            # The client hung up while its body was being read: no answer was even decided ("-").
            # A hang-up is no server error: counted and logged here instead of aiohttp's traceback.
            self.unconfirmed(request, state, "-")
            m.requests.labels(self.protocol, str(CLIENT_CLOSED)).inc()
            return web.Response(status=CLIENT_CLOSED)  # never delivered: the connection is gone
        m.requests.labels(self.protocol, str(resp.status)).inc()
        m.latency.labels(self.protocol).observe(time.perf_counter() - started)
        if _gone(request):
            # The client closed the connection (its timeout, a crash, a proxy) while we waited for
            # the log: it never hears this answer, so for all it knows the batch failed.
            self.unconfirmed(request, state, str(resp.status))
        elif resp.status >= 400:
            self.unconfirmed(request, state, str(resp.status))
        if resp.status in CLOSE_STATUSES:  # answered by self.error, not errors_as_json
            await close_after(request, resp)
        return resp

    def refusal(self, request: web.Request, e: ApiError) -> web.StreamResponse:
        state = Attempt()
        self.endpoint.early(request, state)
        self.metrics.requests.labels(self.protocol, str(e.status)).inc()
        self.unconfirmed(request, state, str(e.status))
        return self.endpoint.error(state, e)

    def unavailable(self, reason: str) -> ApiError:
        return unavailable("log", reason, self.endpoint.retry_after)

    def unconfirmed(self, request: web.Request, state: Attempt, status: str) -> None:
        """Count a request whose client got no 2xx: ``status`` is what we answered (or would have:
        the connection is gone) or ``-`` when no answer was decided. These requests carry no seqs;
        this count, per tenant and sender, is the only trace of what the client may have dropped."""
        m = self.metrics
        if _gone(request):
            outcome = "unanswered"
        elif status.startswith("4"):
            outcome = "refused"
        else:
            outcome = "unavailable"
        sender = m.client_sender(state.tenant, request.headers.get("User-Agent", ""))
        labels = (state.tenant, self.protocol, sender, outcome, status)
        m.unconfirmed_requests.labels(*labels).inc()
        points = 0
        if state.checked is not None:
            points = state.checked.points + state.checked.histograms
            m.unconfirmed_points.labels(*labels).inc(points)
        if outcome != "refused":  # refusals are the client's mistake, logged by rate in /metrics
            log.warning(
                "ingest.unconfirmed",
                tenant=state.tenant,
                protocol=self.protocol,
                sender=sender,
                outcome=outcome,
                status=status,
                points=points,
            )

    def count_sender(self, request: web.Request, state: Attempt, outcome: str, n: int) -> None:
        pass

    async def _handle(self, request: web.Request, state: Attempt) -> web.StreamResponse:
        self.endpoint.early(request, state)
        tenant = self.keys.writer(request, query=self.query_auth)
        state.tenant = tenant
        self.metrics.proto_requests.labels(tenant, self.protocol, "received").inc()
        decoded, checked = await check_request(
            self.endpoint, request, state, self.read, self.cfg.server.max_decoded_bytes
        )
        m = self.metrics
        n = checked.points + checked.histograms
        m.proto_points.labels(tenant, self.protocol, "received").inc(n + checked.rejected)
        # Points or remote-write metadata (also alone: the worker stores it) are made durable; a
        # request with neither has nothing to keep (and its receipt acknowledges nothing).
        receipt = nothing_to_keep()
        if n or checked.metadata:
            env = native.Envelope(
                version=1,
                tenant=tenant,
                protocol=self.protocol,
                content_type=decoded.content_type,
                encoding=decoded.encoding,
                received_ms=int(time.time() * 1000),
                agent="",
                seqs=[],
                body=state.raw,
                params=decoded.params,
            )
            sender = f"{self.protocol}/{request.remote or '-'}"
            record = native.encode_envelope(env)
            receipt = await self.append_limited(tenant, self.protocol, native.log_key(tenant, sender), record)
        m.proto_requests.labels(tenant, self.protocol, "acked").inc()
        m.proto_points.labels(tenant, self.protocol, "acked").inc(n)
        if checked.rejected:
            m.proto_points.labels(tenant, self.protocol, "rejected").inc(checked.rejected)
        self.count_sender(request, state, "acked", n)
        return self.ok(receipt, state, decoded, checked)

    def ok(self, receipt: Receipt, state: Attempt, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        """The protocol's 2xx: made only from the log's durable receipt (:mod:`lossproof.receipt`)."""
        check_receipt(receipt)
        return self.endpoint.ok(decoded, checked)


def _gone(request: web.Request) -> bool:
    """Whether the client's connection has ended, so no answer can reach it any more."""
    transport = request.transport
    return transport is None or transport.is_closing()


class RemoteWrite(ThirdParty):
    def ok(self, receipt: Receipt, state: Attempt, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        if checked.exemplars:
            self.metrics.proto_skipped.labels(state.tenant, self.protocol, "exemplar").inc(checked.exemplars)
        return super().ok(receipt, state, decoded, checked)

    def count_sender(self, request: web.Request, state: Attempt, outcome: str, n: int) -> None:
        sender = self.metrics.sender(request.headers.get("User-Agent", ""), request.remote)
        self.metrics.senders.labels(state.tenant, sender, outcome).inc(n)


class InfluxWrite(ThirdParty):
    def ok(self, receipt: Receipt, state: Attempt, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        if checked.skipped:
            self.metrics.proto_skipped.labels(state.tenant, self.protocol, "string_field").inc(
                checked.skipped
            )
        return super().ok(receipt, state, decoded, checked)


_HANDLERS: dict[str, type[ThirdParty]] = {"prom-rw": RemoteWrite, "influx": InfluxWrite}


def routes(
    cfg: Config, keys: KeyRing, writer: LogWriter, metrics: IngestMetrics, series_limit: SeriesLimit
) -> list[web.RouteDef]:
    handlers = [
        (path, _HANDLERS.get(ep.protocol, ThirdParty)(cfg, keys, writer, metrics, ep, series_limit))
        for path, ep in endpoints()
    ]
    return [
        *(web.post(path, h, expect_handler=h.expect) for path, h in handlers),
        web.get("/ping", ping),  # also answers HEAD
        web.get("/health", health),
    ]
