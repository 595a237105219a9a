"""``GET /metrics`` and ``GET /healthz`` for a process without a web app of its own (the worker, the
agent), served by a background thread.

A thread serves each connection, so a client must not be able to hold threads: a connection must
deliver its request's headers within ``timeout`` seconds of being accepted (else it is closed; every
read and the answer's write are bounded by it too), and at most ``max_connections`` are open at once,
``max_per_ip`` of them from one address. One more gets ``503`` with ``Retry-After`` and is closed, as
on the main server (``server.max_connections``). Refusals are counted in
``lossproof_status_http_refused_total{reason}``.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from lossproof.obs.logging import get

log = get(__name__)

# (healthy, the body of /healthz): 200 when healthy, else 503
Health = Callable[[], tuple[bool, dict[str, Any]]]

TIMEOUT = 10.0  # seconds: as the main server's server.header_timeout_seconds
# Scrapers (Prometheus, `up`'s dashboard, a curl) need a few at a time; each is a thread.
MAX_CONNECTIONS = 64
MAX_PER_IP = 32
_BUSY_BODY = b'{"error": "too many connections; retry later"}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


@dataclass
class _Open:
    ip: str
    deadline: float  # monotonic time by which the request's headers must have arrived (inf: they did)
    cut: bool = False  # shut down for being late


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's listen backlog is 5: a burst of connections (refused ones included) would have
    # the kernel drop SYNs, and a scraper wait seconds for its retransmit
    request_queue_size = 128

    def __init__(
        self,
        addr: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        timeout: float,
        max_connections: int,
        max_per_ip: int,
        refused: Counter,
    ) -> None:
        self.header_timeout = timeout
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.refused = refused
        self._lock = threading.Lock()
        self._open: dict[socket.socket, _Open] = {}
        self._per_ip: dict[str, int] = {}
        super().__init__(addr, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection under the caps (on the accepting thread, before a thread is started)."""
        ip = str(client_address[0]) if isinstance(client_address, tuple) else "-"
        with self._lock:
            reason = None
            if len(self._open) >= self.max_connections:
                reason = "too_many_connections"
            elif self._per_ip.get(ip, 0) >= self.max_per_ip:
                reason = "too_many_per_ip"
            else:
                self._open[request] = _Open(ip, time.monotonic() + self.header_timeout)
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
                return True
        self.refused.labels(reason).inc()
        try:  # never blocks the accepting thread: an answer that does not fit the buffer is dropped
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        return False  # socketserver closes it

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            entry = self._open.pop(request, None)
            if entry is not None:
                # late headers: cut by service_actions, or the handler's read timed out first
                if entry.cut or time.monotonic() >= entry.deadline:
                    self.refused.labels("header_timeout").inc()
                n = self._per_ip.get(entry.ip, 1) - 1
                if n:
                    self._per_ip[entry.ip] = n
                else:
                    self._per_ip.pop(entry.ip, None)
            # closed under the lock, so service_actions never shuts down a socket being closed
            super().shutdown_request(request)

    def headers_read(self, request: socket.socket) -> None:
        with self._lock:
            entry = self._open.get(request)
            if entry is not None:
                entry.deadline = math.inf

    def service_actions(self) -> None:
        """Every poll interval (0.5 s) of serve_forever: cut off connections whose headers are late.
        The socket timeout alone bounds each read, not a client trickling a byte at a time."""
        now = time.monotonic()
        with self._lock:
            for sock, entry in self._open.items():
                if entry.deadline < now and not entry.cut:
                    entry.cut = True
                    with contextlib.suppress(OSError):  # the handler's read returns: its thread ends
                        sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for any error; a scraper that gave up (its
        # timeout, a paused process) is no error of ours, anything else is one structured line
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return
        log.error("status_http.error", error=f"{type(e).__name__}: {e}", client=str(client_address[0]))


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_ip: int = MAX_PER_IP,
    ) -> None:
        """``timeout``: seconds for a connection's request headers (and each read or write);
        ``max_connections``, ``max_per_ip``: connections open at once (each holds a thread)."""
        refused = Counter(
            "lossproof_status_http_refused_total",
            "Connections to the /metrics and /healthz server closed without an answer or refused, by "
            "reason (header_timeout, too_many_connections, too_many_per_ip).",
            ["reason"],
            registry=registry,
        )

        class Handler(BaseHTTPRequestHandler):
            # StreamRequestHandler sets it on the socket: no read or write waits longer
            timeout = TIMEOUT

            def parse_request(self) -> bool:
                ok = super().parse_request()
                server.headers_read(self.request)
                return ok

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    ok, body = health()
                    self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not found: use /metrics or /healthz"}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape is noise

        Handler.timeout = timeout
        server = self._server = _Server((host, port), Handler, timeout, max_connections, max_per_ip, refused)
        self.host = str(self._server.server_address[0])
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
