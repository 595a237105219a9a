"""HTTP plumbing shared by the ingest API, the query API and the fallback receiver.

JSON answers, :class:`ApiError` and the middleware that turns it (and aiohttp's own 4xx) into
``{"error": ...}``, a bounded body read, the native Content-Type check, per-request accounting, and
the shielded wait for a durable append that ends in 200 or 503. Pure helpers on top of aiohttp,
msgspec and prometheus_client: nothing here touches the log or the store, so the fallback receiver
can use them and still work when ingest's code paths fail.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp import HttpVersion11, web
from aiohttp.base_protocol import BaseProtocol
from multidict import MultiDict
from prometheus_client import Counter, Histogram

from lossproof.config import ServerConfig
from lossproof.protocol import native
from lossproof.protocol.ack import PROTOCOL_HEADER, PROTOCOL_VERSION

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


async def protocol_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of the ingest and fallback apps: every answer says it comes from
    lossproof (protocol/ack.py), so a client gives data up only on a lossproof refusal and deletes it
    only on a lossproof acknowledgement."""
    response.headers[PROTOCOL_HEADER] = PROTOCOL_VERSION


def json_body(data: Any) -> bytes:
    try:
        return msgspec.json.encode(data)
    except UnicodeEncodeError:
        # A message quoting the request can hold a lone surrogate (a JSON "\\ud800" escape, a
        # header byte aiohttp kept as one), which UTF-8 cannot carry: written as its escape.
        return msgspec.json.encode(_utf8_safe(data))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = json_body(data)
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _utf8_safe(data: Any) -> Any:
    if isinstance(data, str):
        return data.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(data, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_utf8_safe(x) for x in data]
    return data


class ApiError(Exception):
    """Answered as ``{"error": message}`` with the given status; ``reason`` labels the rejection."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        headers: dict[str, str] | None = None,
        detail: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}
        self.detail = detail or {}  # machine-readable fields answered beside "error"


# Headers of aiohttp's own HTTPException that describe its text body, not ours (a JSON one).
_BODY_HEADERS = frozenset(("content-type", "content-length", "content-encoding", "transfer-encoding"))
# Answers after which the rest of the request body is not worth reading: the connection is closed.
CLOSE_STATUSES = frozenset((408, 413))


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a JSON body with a clear message; aiohttp's own 4xx (413, 405, 404...) too,
    keeping their headers (``Allow`` of a 405) except those about aiohttp's text body."""
    try:
        return await handler(request)
    except ApiError as e:
        resp = json_response({"error": e.message, **e.detail}, e.status, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        text = e.text or e.reason
        if e.status == 413:
            text = f"request body too large ({text})"
        headers = {k: v for k, v in e.headers.items() if k.lower() not in _BODY_HEADERS}
        resp = json_response({"error": text}, e.status, headers)
    if resp.status in CLOSE_STATUSES:
        await close_after(request, resp)
    return resp


async def close_after(request: web.Request, resp: web.StreamResponse) -> None:
    """Send ``resp`` with ``Connection: close`` and close the connection once it is written, even if
    the request body was not read (a 413 before the body, a 408 for a stalled one): aiohttp would
    otherwise keep reading and discarding the unread body ("lingering") for up to 10 s."""
    resp.force_close()
    if request.content.is_eof():
        return  # nothing unread: aiohttp closes the connection after the answer on its own
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()


async def continue_or(request: web.Request, refusal: web.StreamResponse | None) -> web.StreamResponse | None:
    """An ``expect_handler`` answer to ``Expect: 100-continue``: ``refusal`` (e.g. the 401 of a
    request whose key is wrong; the client never sent the body, so the connection is closed after
    it), else ``100 Continue`` and the request goes on (aiohttp's own behaviour)."""
    if refusal is not None:
        await close_after(request, refusal)
        return refusal
    if request.version != HttpVersion11:
        return None
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        resp = json_response({"error": f"unsupported Expect: {header_text(expect)!r}"}, 417)
        await close_after(request, resp)
        return resp
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not part of the response
    return None


async def read_body(request: web.Request, limit: int, idle_seconds: float, max_seconds: float) -> bytes:
    """The raw body, refusing more than ``limit`` bytes before reading them when possible, and a
    408 for a body that stalls for ``idle_seconds`` or takes over ``max_seconds`` in all. A body in
    a transfer coding other than chunked (``Transfer-Encoding: gzip, chunked``) is refused with a
    400 that says so: aiohttp only undoes the chunking, so it was read as if it were plain."""
    codings = request.headers.get("Transfer-Encoding", "").split(",")
    if any(c.strip().lower() not in ("chunked", "") for c in codings):
        raise ApiError(
            400,
            f"unsupported Transfer-Encoding {header_text(request.headers['Transfer-Encoding'])!r}: only"
            " chunked is read (compress the body with Content-Encoding instead)",
            "bad_request",
        )
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"body of {request.content_length} bytes exceeds limit of {limit}", "too_large")
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    while True:
        wait = min(idle_seconds, deadline - loop.time())
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                chunk = await request.content.readany()
        except web.RequestPayloadError as e:  # a bad chunk size, a body cut short: the client's fault
            raise ApiError(400, f"malformed request body: {e}", "bad_request") from None
        except TimeoutError:
            expected = "?" if request.content_length is None else str(request.content_length)
            raise ApiError(
                408,
                f"request body incomplete: got {size} of {expected} bytes, then nothing for "
                f"{min(idle_seconds, max(wait, 0.0)):g}s (whole body within {max_seconds:g}s)",
                "timeout",
            ) from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds limit of {limit} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class BodyLimits:
    """The bounds of every request body the server reads (``[server]``: ``max_body_bytes``,
    ``body_idle_seconds``, ``body_read_max_seconds``), for handlers that have no config of their own."""

    max_bytes: int
    idle_seconds: float
    max_seconds: float

    @classmethod
    def of(cls, srv: ServerConfig) -> BodyLimits:
        return cls(srv.max_body_bytes, srv.body_idle_seconds, srv.body_read_max_seconds)

    async def read(self, request: web.Request) -> bytes:
        return await read_body(request, self.max_bytes, self.idle_seconds, self.max_seconds)


# Form fields in one body: aiohttp's default, kept; a form with more is a 400 naming this number.
MAX_FORM_FIELDS = 1000
FORM_TYPES = frozenset(("", "application/x-www-form-urlencoded", "multipart/form-data"))


async def read_form(request: web.Request, limits: BodyLimits) -> MultiDict[str]:
    """The text fields of a form body (urlencoded or multipart; file parts and non-text parts are left
    out, as Go's ``FormValue``), read with :func:`read_body`'s bounds: aiohttp's ``request.post()``
    waits for a stalled body forever. Another content type's body is read (bounded) and ignored.
    Errors are :class:`ApiError`: 408/413 from the read, 400 for a malformed form or one of more than
    :data:`MAX_FORM_FIELDS` fields."""
    body = await limits.read(request)
    ctype = request.content_type
    if ctype not in FORM_TYPES or not body:
        return MultiDict()
    try:
        if ctype == "multipart/form-data":
            return await _multipart(request, body)
        charset = request.charset or "utf-8"
        text = body.rstrip().decode(charset)
        _check_fields(text.count("&") + 1 if text else 0)
        return MultiDict(
            urllib.parse.parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
        )
    except ApiError:
        raise
    except Exception as e:  # malformed multipart, bad charset, undecodable bytes, ...
        raise ApiError(
            400, f"cannot parse the form body: {str(e) or type(e).__name__}", "bad_request"
        ) from None


def _check_fields(n: int) -> None:
    if n > MAX_FORM_FIELDS:
        raise ApiError(
            400, f"form body of {n} fields exceeds the limit of {MAX_FORM_FIELDS} fields", "bad_request"
        )


async def _multipart(request: web.Request, body: bytes) -> MultiDict[str]:
    # The body is already in memory: aiohttp's multipart reader reads it from a stream of its own,
    # not from the connection (whose protocol it must not pause or resume).
    loop = asyncio.get_running_loop()
    stream = aiohttp.StreamReader(BaseProtocol(loop), len(body) + 1, loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    reader = aiohttp.MultipartReader(request.headers, stream)
    out: MultiDict[str] = MultiDict()
    n = 0
    while (part := await reader.next()) is not None:
        n += 1
        _check_fields(n)
        if not isinstance(part, aiohttp.BodyPartReader):
            raise ValueError("nested multipart bodies are not supported")
        if part.name is None:
            raise ValueError("multipart field without a name")
        value = await part.read(decode=True)
        ctype = part.headers.get("Content-Type")
        if part.filename is None and (ctype is None or ctype.startswith("text/")):
            out.add(part.name, value.decode(part.get_charset(default="utf-8")))
    return out


def header_text(value: str, limit: int = 64) -> str:
    """A request header's value made safe for a metric label or a message: at most ``limit``
    characters of valid UTF-8 (aiohttp keeps undecodable bytes as lone surrogates, which no encoder
    accepts: they become U+FFFD) without control characters."""
    value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "replace")
        value = raw.decode("utf-8", "replace")[:limit]
    if not value.isprintable():
        value = "".join(c if c.isprintable() else "\ufffd" for c in value)
    return value


async def accounted(
    handle: Handler,
    request: web.Request,
    *,
    requests: Counter,
    latency: Histogram,
    rejected: Counter,
    labels: tuple[str, ...] = (),
) -> web.StreamResponse:
    """``handle(request)``, counted: ``requests`` by ``labels`` and status, ``latency`` by ``labels``,
    ``rejected`` by the :class:`ApiError`'s reason. The ApiError is re-raised for
    :func:`errors_as_json` to answer; any other exception counts as status 500."""
    started = time.perf_counter()
    status = 500
    try:
        resp = await handle(request)
        status = resp.status
        return resp
    except ApiError as e:
        status = e.status
        rejected.labels(e.reason).inc()
        raise
    finally:
        requests.labels(*labels, str(status)).inc()
        (latency.labels(*labels) if labels else latency).observe(time.perf_counter() - started)


# An absolute file path inside a message (not the path of a URL: no word, ':' or '/' just before it).
_PATH = re.compile(r"(?<![\w:/.])/[^\s'\"`,;:()\[\]]+")


def client_reason(reason: str) -> str:
    """``reason`` for a client's eyes: the server's file paths become ``<path>`` (they stay in the
    server's own log, which has the full reason)."""
    return _PATH.sub("<path>", reason)


def unavailable(what: str, reason: str, retry_after: int | None) -> ApiError:
    """The 503 for "cannot accept data durably": the client keeps the data and retries, after
    ``retry_after`` seconds (None: no ``Retry-After``, the client's own schedule)."""
    return ApiError(
        503,
        f"{what} cannot accept data durably: {client_reason(reason)}",
        "unavailable",
        {} if retry_after is None else {"Retry-After": str(retry_after)},
    )


async def await_durable(
    append: Awaitable[T], timeout: float, refused: type[Exception], fail: Callable[[str], ApiError]
) -> T:
    """Wait for a durable append; ``fail(reason)`` (a 503) when it is ``refused`` or takes over
    ``timeout``. Shielded: on timeout the append goes on, and if it lands the client's retry is a
    duplicate the ledger drops. Its late error is retrieved, so it is never logged as unhandled."""
    fut = asyncio.ensure_future(append)
    fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        raise fail(f"no durable confirmation within {timeout:g}s") from None
    except refused as e:
        raise fail(str(getattr(e, "reason", e))) from None


def native_content_type(request: web.Request) -> str:
    """The native protocol's content type of ``request``, or a 415 naming the accepted ones."""
    ctype = native.CONTENT_TYPES.get(request.content_type)
    if ctype is None:
        raise ApiError(
            415,
            f"unsupported Content-Type {request.content_type!r}: use application/json or application/msgpack",
            "bad_request",
        )
    return ctype
