"""HTTP plumbing shared by the ingest API, the query API and the fallback receiver.

JSON answers, :class:`ApiError` and the middleware that turns it (and aiohttp's own 4xx) into
``{"error": ...}``, a bounded body read, the native Content-Type check, per-request accounting, and
the shielded wait for a durable append that ends in 200 or 503. Pure helpers on top of aiohttp,
msgspec and prometheus_client: nothing here touches the log or the store, so the fallback receiver
can use them and still work when ingest's code paths fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import Counter, Histogram

from lossproof.protocol import native

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class ApiError(Exception):
    """Answered as ``{"error": message}`` with the given status; ``reason`` labels the rejection."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a JSON body with a clear message; aiohttp's own 4xx (413, 405, 404) too."""
    try:
        return await handler(request)
    except ApiError as e:
        return json_response({"error": e.message}, e.status, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        text = e.text or e.reason
        if e.status == 413:
            text = f"request body too large ({text})"
        return json_response({"error": text}, e.status, dict(e.headers) if e.status == 405 else None)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes before reading them when possible."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"body of {request.content_length} bytes exceeds limit of {limit}", "too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds limit of {limit} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


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


def unavailable(what: str, reason: str, retry_after: int) -> ApiError:
    """The 503 for "cannot accept data durably": the client keeps the data and retries."""
    return ApiError(
        503, f"{what} cannot accept data durably: {reason}", "unavailable", {"Retry-After": str(retry_after)}
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
