"""The worker process: the loop plus a small HTTP server for ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from prometheus_client import CollectorRegistry, generate_latest

from lossproof.config import Config
from lossproof.log.factory import open_reader
from lossproof.obs.logging import get
from lossproof.store.factory import open_store
from lossproof.worker.compactor import Compactor
from lossproof.worker.loop import Worker

log = get(__name__)


def _status_server(cfg: Config, registry: CollectorRegistry, worker: Worker) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, ctype, code = generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8", 200
            elif self.path == "/healthz":
                ok = not worker.last_error
                status = {"status": "ok"} if ok else {"status": "unavailable", "error": worker.last_error}
                body, ctype, code = json.dumps(status).encode(), "application/json", 200 if ok else 503
            else:
                body, ctype, code = b'{"error": "not found"}', "application/json", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((cfg.worker.http_host, cfg.worker.http_port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    return server


def run(cfg: Config) -> None:
    gc.freeze()  # see ingest.server: the same allocation pattern
    gc.set_threshold(50_000, 20, 20)
    registry = CollectorRegistry()
    store = open_store(cfg)
    reader = open_reader(cfg, registry)
    w = cfg.worker
    worker = Worker(
        reader,
        store,
        registry,
        w.batch_records,
        w.batch_wait_seconds,
        batch_bytes=w.batch_bytes,
        batch_points=w.batch_points,
        batch_decoded_bytes=w.batch_decoded_bytes,
    )
    server = _status_server(cfg, registry, worker)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    addr_file = cfg.run_dir / "worker.addr"
    tmp = addr_file.with_suffix(".tmp")
    tmp.write_text(f"{host}:{port}\n")
    os.replace(tmp, addr_file)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    compactor = None
    if cfg.store.compact_interval_seconds > 0:
        interval = cfg.store.compact_interval_seconds
        compactor = Compactor(lambda: open_store(cfg), registry, interval, worker.stop)
        compactor.start()
    log.info("worker.started", metrics=f"http://{host}:{port}/metrics", log_dir=str(cfg.log_dir))
    try:
        worker.run()
    finally:
        if compactor is not None:
            compactor.join(timeout=30)
        server.shutdown()
        reader.close()
        store.close()
        log.info("worker.stopped")
