"""The third-party protocols over HTTP, written once for the two places that receive them: the
ingest API (``ingest/protocols.py``, which appends the body to the log) and the agent's relay
(``agent/relay/``, which appends it to its spool as native reports).

Per protocol an :class:`Endpoint` knows how a request becomes a decompressed body and the check
to run on it, how the protocol answers a success, and how it answers an error (each protocol's
error body, ``Retry-After`` and status rules: the table in docs/protocols.md). :func:`check_request`
turns what the parsers raise into the 4xx both places answer, so a client sees the same answer
from the agent as from ingest. Nothing here touches a log, a spool or metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from lossproof.credentials import presented_key as presented_key  # the relay's and ingest's one rule
from lossproof.httputil import ApiError, json_response
from lossproof.protocol import influx, otlp, promrw
from lossproof.protocol.compression import BadEncoding, TooLarge, decompress, is_known
from lossproof.protocol.thirdparty import BadBody, Checked, UnsupportedBody

# A body larger than this is checked in a thread, so the event loop keeps serving other requests
# while a big one is validated.
THREAD_CHECK_BYTES = 256 * 1024

INFLUX_VERSION = "1.8.10"
INFLUX_HEADERS = {"X-Influxdb-Version": INFLUX_VERSION, "X-Influxdb-Build": "OSS"}

# Reads a request's body, bounded (the caller's limits: ingest's server section, the agent's relay).
Reader = Callable[[web.Request], Awaitable[bytes]]


@dataclass
class Decoded:
    """What a protocol learned from a request before it is made durable."""

    content_type: str
    encoding: str
    body: bytes  # decompressed
    check: Callable[[bytes], Checked]
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Attempt:
    """One request, as far as it got (what an error answer and the accounting need)."""

    tenant: str = "-"
    raw: bytes = b""  # the body as received
    ctype: str = ""
    checked: Checked | None = None


class Endpoint:
    """One protocol's HTTP side; subclasses say how to decode and how to answer."""

    protocol = ""
    # Retry-After of a 503, chosen per protocol from what its real clients do with it (measured:
    # docs/protocols.md, "Retry-After"); None sends none, leaving the client's own schedule.
    retry_after: int | None = None
    query_auth = False  # may the key come in the query string (InfluxDB 1.x)?

    def early(self, request: web.Request, state: Attempt) -> None:
        """Before authentication: note what an error answer needs to know."""

    async def decode(self, request: web.Request, state: Attempt, read: Reader, max_decoded: int) -> Decoded:
        raise NotImplementedError

    def ok(self, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        raise NotImplementedError

    def error(self, state: Attempt, e: ApiError) -> web.StreamResponse:
        return json_response({"error": e.message}, e.status, e.headers)


async def check_request(
    endpoint: Endpoint, request: web.Request, state: Attempt, read: Reader, max_decoded: int
) -> tuple[Decoded, Checked]:
    """Read, decompress and check a request's body; the parsers' errors become the protocol's 4xx
    (415 unsupported, 413 too large, 400 malformed or out of bounds)."""
    try:
        decoded = await endpoint.decode(request, state, read, max_decoded)
        checked = await run_check(decoded.check, decoded.body)
    except UnsupportedBody as e:
        raise ApiError(415, str(e), "bad_request") from None
    except (TooLarge, promrw.TooLarge) as e:
        raise ApiError(413, str(e), "too_large") from None
    except (BadEncoding, BadBody) as e:
        raise ApiError(400, str(e), "bad_request") from None
    state.checked = checked
    return decoded, checked


async def run_check(check: Callable[[bytes], Checked], body: bytes) -> Checked:
    if len(body) > THREAD_CHECK_BYTES:
        return await asyncio.to_thread(check, body)
    return check(body)


def encoding_of(request: web.Request) -> str:
    enc = request.headers.get("Content-Encoding", "").strip().lower()
    return "" if enc == "identity" else enc


class RemoteWrite(Endpoint):
    """``POST /api/v1/write``: remote write 1.0, and 2.0 by Content-Type."""

    protocol = "prom-rw"
    # Prometheus retries a 5xx without limit (2.42 ignores Retry-After; later versions sleep exactly
    # that long instead of their min_backoff..max_backoff schedule): a header cannot lengthen the
    # retry window, only override the operator's backoff settings.
    retry_after = None

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep  # the check keeps its decoding (Checked.decoding) for the relay

    async def decode(self, request: web.Request, state: Attempt, read: Reader, max_decoded: int) -> Decoded:
        proto = promrw.proto_of(request.headers.get("Content-Type", ""))
        promrw.check_encoding(encoding_of(request))
        raw = state.raw = await read(request)
        body = promrw.snappy_decompress(raw, max_decoded)
        keep = self.keep
        return Decoded(proto, "snappy", body, lambda b: promrw.check(b, proto, keep))

    def ok(self, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        headers = {"X-Prometheus-Remote-Write-Version": promrw.VERSION_HEADER[decoded.content_type]}
        if decoded.content_type == promrw.V2:
            headers.update(promrw.samples_written(checked))
        return web.Response(status=204, headers=headers)

    def error(self, state: Attempt, e: ApiError) -> web.StreamResponse:
        if e.status == 429:  # never produced here; Prometheus would drop the batch
            e = ApiError(503, e.message, e.reason, e.headers)
        return super().error(state, e)


class Otlp(Endpoint):
    """``POST /v1/metrics``: OTLP/HTTP, protobuf or JSON, identity, gzip, deflate or zstd."""

    protocol = "otlp"
    # The Python SDK retries 429/502/503/504 within its export timeout (10 s by default) and sleeps
    # exactly Retry-After instead of its 1, 2, 4, 8 s backoff. Measured with the default timeout, its
    # last try comes at 7.8 s without a header, 5.1 s with 1, 8.2 s with 2, 9.1 s with 3, 8.1 s
    # with 4: 3 keeps it retrying longest. The Go SDK and the Collector wait max(backoff, header).
    retry_after = 3

    def early(self, request: web.Request, state: Attempt) -> None:
        # errors are encoded like the request, also a 401 that comes before the body is looked at
        state.ctype = otlp.CONTENT_TYPES.get(request.content_type, "")

    async def decode(self, request: web.Request, state: Attempt, read: Reader, max_decoded: int) -> Decoded:
        ctype = state.ctype = otlp.content_type_of(request.headers.get("Content-Type", ""))
        encoding = encoding_of(request)
        if not is_known(encoding):  # OTLP/HTTP: an encoding the server does not take is a 415
            raise UnsupportedBody(
                f"unsupported Content-Encoding {encoding!r}: use gzip, deflate, zstd or identity"
            )
        raw = state.raw = await read(request)
        body = decompress(raw, encoding, max_decoded)
        return Decoded(ctype, encoding, body, lambda b: otlp.check(b, ctype))

    def ok(self, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        return web.Response(
            status=200, body=otlp.response(checked, decoded.content_type), content_type=decoded.content_type
        )

    def error(self, state: Attempt, e: ApiError) -> web.StreamResponse:
        # OTLP/HTTP: the body of a failure is a google.rpc.Status in the request's encoding
        ctype = state.ctype or otlp.JSON
        return web.Response(
            status=e.status,
            body=otlp.status(e.status, e.message, ctype),
            content_type=ctype,
            headers=e.headers,
        )


class Influx(Endpoint):
    """``POST /write`` (1.x: ``db``, ``rp``, ``precision``) and ``POST /api/v2/write`` (2.x: ``bucket``,
    ``org``, ``precision``)."""

    protocol = "influx"
    query_auth = True
    # influxdb-client (Python) batching retries 5 times on its own 5-10, 10-20, 20-40, 40-80 and
    # 80-125 s delays (measured: gave up after 246 s), but sleeps exactly Retry-After when there is
    # one: Retry-After: 1 cuts that to 5 s. Telegraf waits max(its backoff, header) and keeps
    # the batch in its buffer; the influx CLI never retries. No header serves all of them best.
    retry_after = None

    def __init__(self, v2: bool) -> None:
        self.v2 = v2

    async def decode(self, request: web.Request, state: Attempt, read: Reader, max_decoded: int) -> Decoded:
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
        encoding = encoding_of(request)
        raw = state.raw = await read(request)
        body = decompress(raw, encoding, max_decoded)
        params["precision"] = precision
        return Decoded("text/plain", encoding, body, lambda b: influx.check(b, precision, added), params)

    def ok(self, decoded: Decoded, checked: Checked) -> web.StreamResponse:
        return web.Response(status=204, headers=INFLUX_HEADERS)

    def error(self, state: Attempt, e: ApiError) -> web.StreamResponse:
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


def endpoints(keep: bool = False) -> list[tuple[str, Endpoint]]:
    """Every write path and its endpoint, as ingest and the relay serve them. ``keep``: the checks
    keep what they decoded (``Checked.decoding``) for a receiver that stores points (the relay)."""
    return [
        ("/api/v1/write", RemoteWrite(keep)),
        ("/v1/metrics", Otlp()),
        ("/write", Influx(v2=False)),
        ("/api/v2/write", Influx(v2=True)),
    ]


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
