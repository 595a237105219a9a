"""``GET /metrics`` and ``GET /healthz`` for a process without a web app of its own (the worker, the
agent), served by a background thread."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from lossproof.obs.logging import get

log = get(__name__)

# (healthy, the body of /healthz): 200 when healthy, else 503
Health = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for any error; a scraper that gave up (its
        # timeout, a paused process) is no error of ours, anything else is one structured line
        e = sys.exc_info()[1]
        if isinstance(e, ConnectionError):
            return
        log.error("status_http.error", error=f"{type(e).__name__}: {e}", client=str(client_address[0]))


class StatusServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        class Handler(BaseHTTPRequestHandler):
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

        self._server = _Server((host, port), Handler)
        self.host = str(self._server.server_address[0])
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
