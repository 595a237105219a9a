"""Connection-level limits for the HTTP server, which aiohttp does not have, and quiet accounting of
requests it refuses before any handler runs.

- **Header-read timeout**: a connection must deliver a request's complete headers within
  ``header_timeout`` of its first byte (or of being opened). A client trickling header lines, or
  opening connections and sending nothing, is closed instead of holding a socket and a handler
  forever. A request whose headers arrived is bounded by the body timeouts in :mod:`httputil`.
- **Keep-alive timeout**: aiohttp's own (``keepalive_timeout``), passed to the runner by the caller.
- **Connection caps**: at most ``max_connections`` open connections, and ``max_per_ip`` from one
  address. One over the cap gets ``503`` with ``Retry-After`` and is closed: nothing was acknowledged,
  so a client retries later and loses nothing.
- **Request line and header lengths**: a URL may be up to ``MAX_LINE_BYTES`` (aiohttp's default,
  8,190, is shorter than a valid PromQL GET: 16,384 characters, percent-encoded), a header line up to
  ``MAX_FIELD_BYTES``. Longer is a protocol error.
- **Protocol errors** (a bad header byte, a line over the limit, a bad chunk size): aiohttp answers
  400 and logs each at error level with a traceback, for anyone who can open a socket. They become
  one warning line per ``LOG_INTERVAL`` (with the number suppressed) and a counter, and the 400's body
  is JSON in Prometheus' error shape (``{"status": "error", "errorType": "bad_data", "error": ...}``,
  which has the ``error`` every other JSON error of the server has) instead of aiohttp's plain text.

Everything is counted in ``lossproof_http_refused_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge

from lossproof.httputil import Handler, json_response
from lossproof.obs.logging import get

log = get(__name__)

LOG_INTERVAL = 10.0  # seconds between two warnings of one kind
# The request line: a PromQL query of 16,384 characters, each up to 4 UTF-8 bytes percent-encoded
# (12 bytes: 196,608), plus start/end/step/timeout and the path, fits with room to spare. aiohttp
# buffers at most this per connection while the line arrives (within the header timeout).
MAX_LINE_BYTES = 256 * 1024
# One header line (a long Cookie or Referer carrying a query); headers stay at aiohttp's 128 lines.
MAX_FIELD_BYTES = 64 * 1024
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
)


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    max_connections: int
    max_per_ip: int


class RateLimitedWarning:
    """One warning line per ``interval`` for a recurring event, saying how many were not logged."""

    def __init__(self, event: str, interval: float = LOG_INTERVAL) -> None:
        self.event = event
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        log.warning(self.event, suppressed=self._suppressed, **fields)
        self._last = now
        self._suppressed = 0


class Guard:
    """The limits of one listening socket: a protocol factory wrapping aiohttp's, and a middleware
    that tells a connection its request's headers have arrived."""

    def __init__(self, limits: Limits, registry: CollectorRegistry) -> None:
        self.limits = limits
        self.refused = Counter(
            "lossproof_http_refused_total",
            "Connections and requests refused by the HTTP server before any handler ran, by reason "
            "(header_timeout, too_many_connections, too_many_per_ip, protocol_error).",
            ["reason"],
            registry=registry,
        )
        self.open = Gauge("lossproof_http_connections", "Open HTTP connections.", registry=registry)
        self._per_ip: dict[str, int] = {}
        self._total = 0
        self._by_transport: dict[asyncio.BaseTransport, _Conn] = {}
        self._warn = {
            reason: RateLimitedWarning(f"http.{reason}")
            for reason in ("header_timeout", "too_many_connections", "too_many_per_ip", "protocol_error")
        }

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Conn(self, _json_errors(inner()))

    def count(self, reason: str, **fields: Any) -> None:
        self.refused.labels(reason).inc()
        self._warn[reason](**fields)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._by_transport.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.request_started()
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_done()

    def log_filter(self) -> logging.Filter:
        """For aiohttp's server logger: protocol errors become a count and a rate-limited line."""
        guard = self

        class _ProtocolErrors(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                exc = record.exc_info[1] if record.exc_info else None
                if not isinstance(exc, HttpProcessingError):
                    return True
                guard.count("protocol_error", status=exc.code, error=str(exc.message)[:200])
                return False

        return _ProtocolErrors()

    # bookkeeping for _Conn

    def _admit(self, conn: _Conn, ip: str) -> str | None:
        if self._total >= self.limits.max_connections:
            return "too_many_connections"
        if self._per_ip.get(ip, 0) >= self.limits.max_per_ip:
            return "too_many_per_ip"
        self._total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self.open.set(self._total)
        assert conn.transport is not None
        self._by_transport[conn.transport] = conn
        return None

    def _release(self, conn: _Conn, ip: str) -> None:
        self._total -= 1
        n = self._per_ip.get(ip, 1) - 1
        if n:
            self._per_ip[ip] = n
        else:
            self._per_ip.pop(ip, None)
        self.open.set(self._total)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)


class _JsonErrors(RequestHandler):
    """aiohttp's protocol, whose own 4xx (a request it could not parse: an over-long line, a bad
    byte) have a JSON body; its 5xx are left as they are."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        resp = super().handle_error(request, status, exc, message)  # logs, checks nothing was sent
        if not 400 <= status < 500:
            return resp
        text = message or (exc.message if isinstance(exc, HttpProcessingError) else str(exc or ""))
        out = json_response(
            {"status": "error", "errorType": "bad_data", "error": text or "bad request"}, status
        )
        out.force_close()  # as aiohttp's: the connection's state is unknown after a parse error
        return out


def _json_errors(protocol: asyncio.Protocol) -> asyncio.Protocol:
    # aiohttp's Server makes the RequestHandler and has no hook for its class: the instance's class is
    # swapped for the subclass (same slots, only handle_error differs).
    if type(protocol) is RequestHandler:
        protocol.__class__ = _JsonErrors
    return protocol


class _Conn(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard: every call is passed on."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.ip = "-"
        self.admitted = False
        self.waiting = False  # bytes of a request arrived, its headers not yet complete
        self.in_request = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        refused = self.guard._admit(self, self.ip)
        if refused is not None:
            self.guard.count(refused, ip=self.ip)
            body = b'{"error": "too many connections; retry later"}'
            transport.write(_BUSY % (len(body), body))
            transport.close()
            return
        self.admitted = True
        self.inner.connection_made(transport)
        self._arm()  # a connection that never sends a byte is a header timeout too

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if not self.waiting and not self.in_request:
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.admitted:
            self.guard._release(self, self.ip)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def request_started(self) -> None:
        self.in_request = True
        self._disarm()

    def request_done(self) -> None:
        self.in_request = False

    def _arm(self) -> None:
        self.waiting = True
        if self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.guard.limits.header_timeout, self._expired)

    def _disarm(self) -> None:
        self.waiting = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.waiting and not self.in_request and self.transport is not None:
            self.guard.count("header_timeout", ip=self.ip, seconds=self.guard.limits.header_timeout)
            self.transport.abort()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through :class:`Guard`."""

    def __init__(self, runner: web.BaseRunner, guard: Guard, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
