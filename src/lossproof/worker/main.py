"""The worker process: the loop plus a small HTTP server for ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import gc
import os
import signal
import time
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from lossproof.config import Config
from lossproof.heartbeat import Heartbeat
from lossproof.log.factory import open_reader
from lossproof.obs.logging import get
from lossproof.obs.status_http import StatusServer
from lossproof.store.base import Store, StoreUnavailable
from lossproof.store.factory import open_store
from lossproof.worker.compactor import CompactorProcess
from lossproof.worker.loop import Worker

log = get(__name__)


def _open_store(cfg: Config, beat: Heartbeat) -> Store:
    """The store, waiting for it while it is unavailable (PostgreSQL down or still recovering when
    the host comes back): exiting would make ``up`` take it for a setup problem and stop ingest too,
    while the log can keep acknowledging. What waiting does not mend (a bad DSN or password, a
    schema too new) raises at once."""
    backoff = 0.5
    while True:
        try:
            return open_store(cfg)
        except StoreUnavailable as e:
            log.error("worker.store_unavailable", error=str(e), retry_in=backoff)
            beat()
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


def run(cfg: Config) -> None:
    gc.freeze()  # see lossproof.server: the same allocation pattern
    gc.set_threshold(50_000, 20, 20)
    registry = CollectorRegistry()
    beat = Heartbeat.from_env()
    store = _open_store(cfg, beat)
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
    worker.beat = beat

    def health() -> tuple[bool, dict[str, Any]]:
        if worker.last_error:
            return False, {"status": "unavailable", "error": worker.last_error}
        return True, {"status": "ok"}

    # a header timeout as the main server's, so a slow client cannot hold the status threads
    timeout = cfg.server.header_timeout_seconds
    server = StatusServer(cfg.worker.http_host, cfg.worker.http_port, registry, health, timeout=timeout)
    server.start()
    host, port = server.host, server.port
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
    if cfg.store.compact_interval_seconds <= 0 and cfg.store.scrub_interval_seconds > 0:
        # (not a config error: a config that turned compaction off before the scrub existed is valid)
        log.warning(
            "store.scrub_off",
            why="store.compact_interval_seconds is 0: the compactor, which scrubs, is not started; "
            "damaged rows nothing reads are found only by `lossproof store check`",
        )
    if cfg.store.compact_interval_seconds > 0:
        compactor = CompactorProcess(cfg, registry, worker.stop)
        worker.on_behind = compactor.behind
        compactor.start()
    log.info("worker.started", metrics=f"http://{host}:{port}/metrics", log_dir=str(cfg.log_dir))
    try:
        worker.run()
    finally:
        if compactor is not None:
            compactor.join(timeout=30)
        server.stop()
        reader.close()
        store.close()
        log.info("worker.stopped")
