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

The Retry-After of each is chosen from what its real clients do with it (``retry_after`` below). A
request whose client got no 2xx (refused, unavailable, or its connection ended before the answer) is
counted per tenant and sender (:meth:`ThirdParty.unconfirmed`): third-party senders have no seqs, so
that count is the only trace of a batch the client may have dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from lossproof.config import Config
from lossproof.httputil import CLOSE_STATUSES, ApiError, close_after, json_response, unavailable
from lossproof.ingest.auth import KeyRing
from lossproof.ingest.metrics import IngestMetrics
from lossproof.ingest.reports import Ingest
from lossproof.ingest.series_limit import SeriesLimit
from lossproof.log.base import LogWriter
from lossproof.obs.logging import get
from lossproof.protocol import influx, native, otlp, promrw
from lossproof.protocol.compression import BadEncoding, TooLarge, decompress
from lossproof.protocol.thirdparty import BadBody, Checked, UnsupportedBody

# A body larger than this is checked in a thread, so the event loop keeps serving other requests
# while a big one is validated.
THREAD_CHECK_BYTES = 256 * 1024

log = get(__name__)

# The status counted (lossproof_ingest_requests_total) for a request whose client hung up before its
# body was read: nginx's "client closed request". Never sent: there is no one to send it to.
CLIENT_CLOSED = 499

INFLUX_VERSION = "1.8.10"
INFLUX_HEADERS = {"X-Influxdb-Version": INFLUX_VERSION, "X-Influxdb-Build": "OSS"}


@dataclass
class Decoded:
    """What a protocol learned from a request before the append."""

    content_type: str
    encoding: str
    body: bytes  # decompressed
    check: Callable[[bytes], Checked]
    params: dict[str, str] = field(default_factory=dict)


class ThirdParty(Ingest):
    """The flow shared by the three protocols; subclasses say how to decode and how to answer."""

    protocol = ""
    # Retry-After of a 503, chosen per protocol from what its real clients do with it (measured:
    # docs/protocols.md, "Retry-After"); None sends none, leaving the client's own schedule.
    retry_after: int | None = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        m = self.metrics
        state = _State()
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
            resp = self.error(state, e)
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
        state = _State()
        self.early(request, state)
        self.metrics.requests.labels(self.protocol, str(e.status)).inc()
        self.unconfirmed(request, state, str(e.status))
        return self.error(state, e)

    def unavailable(self, reason: str) -> ApiError:
        return unavailable("log", reason, self.retry_after)

    def unconfirmed(self, request: web.Request, state: _State, status: str) -> None:
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

    def count_sender(self, request: web.Request, state: _State, outcome: str, n: int) -> None:
        pass

    async def _handle(self, request: web.Request, state: _State) -> web.StreamResponse:
        self.early(request, state)
        tenant = self.keys.writer(request, query=self.query_auth)
        state.tenant = tenant
        self.metrics.proto_requests.labels(tenant, self.protocol, "received").inc()
        try:
            decoded = await self.decode(request, state)
            checked = await _run_check(decoded.check, decoded.body)
        except UnsupportedBody as e:
            raise ApiError(415, str(e), "bad_request") from None
        except (TooLarge, promrw.TooLarge) as e:
            raise ApiError(413, str(e), "too_large") from None
        except (BadEncoding, BadBody) as e:
            raise ApiError(400, str(e), "bad_request") from None
        state.checked = checked
        m = self.metrics
        n = checked.points + checked.histograms
        m.proto_points.labels(tenant, self.protocol, "received").inc(n + checked.rejected)
        # Points or remote-write metadata (also alone: the worker stores it) are made durable; a
        # request with neither has nothing to keep.
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
            await self.append_limited(tenant, self.protocol, native.log_key(tenant, sender), record)
        m.proto_requests.labels(tenant, self.protocol, "acked").inc()
        m.proto_points.labels(tenant, self.protocol, "acked").inc(n)
        if checked.rejected:
            m.proto_points.labels(tenant, self.protocol, "rejected").inc(checked.rejected)
        self.count_sender(request, state, "acked", n)
        return self.ok(state, decoded, checked)

    # -- per protocol ------------------------------------------------------------------------------

    def early(self, request: web.Request, state: _State) -> None:
        """Before authentication: note what an error answer needs to know."""

    async def decode(self, request: web.Request, state: _State) -> Decoded:
        raise NotImplementedError

    def ok(self, state: _State, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        raise NotImplementedError

    def error(self, state: _State, e: ApiError) -> web.StreamResponse:
        return json_response({"error": e.message}, e.status, e.headers)


@dataclass
class _State:
    """One request, as far as it got."""

    tenant: str = "-"
    raw: bytes = b""  # the body as received
    ctype: str = ""
    checked: Checked | None = None


async def _run_check(check: Callable[[bytes], Checked], body: bytes) -> Checked:
    if len(body) > THREAD_CHECK_BYTES:
        return await asyncio.to_thread(check, body)
    return check(body)


def _gone(request: web.Request) -> bool:
    """Whether the client's connection has ended, so no answer can reach it any more."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _encoding(request: web.Request) -> str:
    enc = request.headers.get("Content-Encoding", "").strip().lower()
    return "" if enc == "identity" else enc


class RemoteWrite(ThirdParty):
    """``POST /api/v1/write``: remote write 1.0, and 2.0 by Content-Type."""

    protocol = "prom-rw"
    # Prometheus retries a 5xx without limit (2.42 ignores Retry-After; later versions sleep exactly
    # that long instead of their min_backoff..max_backoff schedule): a header cannot lengthen the
    # retry window, only override the operator's backoff settings.
    retry_after = None

    async def decode(self, request: web.Request, state: _State) -> Decoded:
        proto = promrw.proto_of(request.headers.get("Content-Type", ""))
        encoding = _encoding(request)
        promrw.check_encoding(encoding)
        raw = state.raw = await self.read(request)
        body = promrw.snappy_decompress(raw, self.cfg.server.max_decoded_bytes)
        return Decoded(proto, "snappy", body, lambda b: promrw.check(b, proto))

    def ok(self, state: _State, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        headers = {"X-Prometheus-Remote-Write-Version": promrw.VERSION_HEADER[decoded.content_type]}
        if decoded.content_type == promrw.V2:
            headers.update(promrw.samples_written(checked))
        if checked.exemplars:
            self.metrics.proto_skipped.labels(state.tenant, self.protocol, "exemplar").inc(checked.exemplars)
        return web.Response(status=204, headers=headers)

    def error(self, state: _State, e: ApiError) -> web.StreamResponse:
        if e.status == 429:  # never produced here; Prometheus would drop the batch
            e = ApiError(503, e.message, e.reason, e.headers)
        return super().error(state, e)

    def count_sender(self, request: web.Request, state: _State, outcome: str, n: int) -> None:
        sender = self.metrics.sender(request.headers.get("User-Agent", ""), request.remote)
        self.metrics.senders.labels(state.tenant, sender, outcome).inc(n)


class OtlpMetrics(ThirdParty):
    """``POST /v1/metrics``: OTLP/HTTP, protobuf or JSON, identity or gzip."""

    protocol = "otlp"
    # The Python SDK retries 429/502/503/504 within its export timeout (10 s by default) and sleeps
    # exactly Retry-After instead of its 1, 2, 4, 8 s backoff. Measured with the default timeout, its
    # last try comes at 7.8 s without a header, 5.1 s with 1, 8.2 s with 2, 9.1 s with 3, 8.1 s
    # with 4: 3 keeps it retrying longest. The Go SDK and the Collector wait max(backoff, header).
    retry_after = 3

    def early(self, request: web.Request, state: _State) -> None:
        # errors are encoded like the request, also a 401 that comes before the body is looked at
        state.ctype = otlp.CONTENT_TYPES.get(request.content_type, "")

    async def decode(self, request: web.Request, state: _State) -> Decoded:
        ctype = state.ctype = otlp.content_type_of(request.headers.get("Content-Type", ""))
        encoding = _encoding(request)
        raw = state.raw = await self.read(request)
        body = decompress(raw, encoding, self.cfg.server.max_decoded_bytes)
        return Decoded(ctype, encoding, body, lambda b: otlp.check(b, ctype))

    def ok(self, state: _State, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        return web.Response(
            status=200, body=otlp.response(checked, decoded.content_type), content_type=decoded.content_type
        )

    def error(self, state: _State, e: ApiError) -> web.StreamResponse:
        # OTLP/HTTP: the body of a failure is a google.rpc.Status in the request's encoding
        ctype = state.ctype or otlp.JSON
        return web.Response(
            status=e.status,
            body=otlp.status(e.status, e.message, ctype),
            content_type=ctype,
            headers=e.headers,
        )


class InfluxWrite(ThirdParty):
    """``POST /write`` (1.x: ``db``, ``rp``, ``precision``) and ``POST /api/v2/write`` (2.x: ``bucket``,
    ``org``, ``precision``)."""

    protocol = "influx"
    query_auth = True
    # influxdb-client (Python) batching retries 5 times on its own 5-10, 10-20, 20-40, 40-80 and
    # 80-125 s delays (measured: gave up after 246 s), but sleeps exactly Retry-After when there is
    # one: Retry-After: 1 cuts that to 5 s. Telegraf waits max(its backoff, header) and keeps
    # the batch in its buffer; the influx CLI never retries. No header serves all of them best.
    retry_after = None

    def __init__(
        self,
        cfg: Config,
        keys: KeyRing,
        writer: LogWriter,
        metrics: IngestMetrics,
        series_limit: SeriesLimit | None,
        v2: bool,
    ) -> None:
        super().__init__(cfg, keys, writer, metrics, series_limit)
        self.v2 = v2

    async def decode(self, request: web.Request, state: _State) -> Decoded:
        q = request.query
        params: dict[str, str]
        if self.v2:
            bucket = q.get("bucket", "")
            if not bucket:
                raise BadBody("bucket is required (query parameter bucket=)")
            params = {"bucket": bucket}
            if q.get("precision") not in (None, "", "ns", "us", "ms", "s"):
                raise BadBody(f"invalid precision {q.get('precision')!r}: use ns, us, ms or s")
        else:
            db = q.get("db", "")
            if not db:
                raise BadBody("database is required (query parameter db=)")
            params = {"db": db}
            if q.get("rp"):
                params["rp"] = q["rp"]
        influx.check_label_values(params)
        added = tuple(params)
        precision = influx.precision_of(q.get("precision"))
        encoding = _encoding(request)
        raw = state.raw = await self.read(request)
        body = decompress(raw, encoding, self.cfg.server.max_decoded_bytes)
        params["precision"] = precision
        return Decoded("text/plain", encoding, body, lambda b: influx.check(b, precision, added), params)

    def ok(self, state: _State, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        if checked.skipped:
            self.metrics.proto_skipped.labels(state.tenant, self.protocol, "string_field").inc(
                checked.skipped
            )
        return web.Response(status=204, headers=INFLUX_HEADERS)

    def error(self, state: _State, e: ApiError) -> web.StreamResponse:
        headers = {**INFLUX_HEADERS, **e.headers}
        if self.v2:
            code = _INFLUX_V2_CODES.get(e.status, "internal error")
            return json_response({"code": code, "message": e.message, "error": e.message}, e.status, headers)
        return json_response({"error": e.message}, e.status, headers)


_INFLUX_V2_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    413: "request too large",
    415: "unsupported media type",
    503: "unavailable",
}


async def ping(request: web.Request) -> web.Response:
    """``GET|HEAD /ping`` as InfluxDB answers it: 204 with its version headers (200 + JSON verbose)."""
    if request.query.get("verbose", "").lower() in ("true", "1") and request.method == "GET":
        return json_response({"version": INFLUX_VERSION}, 200, INFLUX_HEADERS)
    return web.Response(status=204, headers=INFLUX_HEADERS)


async def health(request: web.Request) -> web.Response:
    """``GET /health`` as InfluxDB 2.x answers it (its clients probe it)."""
    return json_response(
        {
            "name": "influxdb",
            "message": "ready for queries and writes",
            "status": "pass",
            "version": INFLUX_VERSION,
        },
        200,
        INFLUX_HEADERS,
    )


def routes(
    cfg: Config, keys: KeyRing, writer: LogWriter, metrics: IngestMetrics, series_limit: SeriesLimit
) -> list[web.RouteDef]:
    handlers: list[tuple[str, ThirdParty]] = [
        ("/api/v1/write", RemoteWrite(cfg, keys, writer, metrics, series_limit)),
        ("/v1/metrics", OtlpMetrics(cfg, keys, writer, metrics, series_limit)),
        ("/write", InfluxWrite(cfg, keys, writer, metrics, series_limit, v2=False)),
        ("/api/v2/write", InfluxWrite(cfg, keys, writer, metrics, series_limit, v2=True)),
    ]
    return [
        *(web.post(path, h, expect_handler=h.expect) for path, h in handlers),
        web.get("/ping", ping),  # also answers HEAD
        web.get("/health", health),
    ]
