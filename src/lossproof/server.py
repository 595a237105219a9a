"""The composition root of the HTTP process: builds one app from its parts (ingest API, query API,
dashboard, `/healthz`, `/metrics`) on one port, and serves it."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from lossproof.auth import KeyReloader, KeyRing
from lossproof.config import Config
from lossproof.heartbeat import EVERY_SECONDS, Heartbeat
from lossproof.httpguard import MAX_FIELD_BYTES, MAX_LINE_BYTES, Guard, GuardedSite, Limits
from lossproof.httputil import ApiError, client_reason, errors_as_json, json_response, protocol_header
from lossproof.ingest import IngestMetrics
from lossproof.ingest import routes as ingest_routes
from lossproof.log import LogWriter, open_writer
from lossproof.obs.exposition import OperatorKeyRequired, exposition, is_operator
from lossproof.obs.logging import get
from lossproof.query import QueryApi, register_dashboard
from lossproof.store import StoreAccess, open_store

log = get(__name__)
GUARD = web.AppKey("guard", Guard)


class _BriefReads(Collector):
    """How the metadata endpoints' reads went: answered on the event loop, or handed to a read
    thread (the store was busy, the tenant too large, the index far behind: see StoreAccess.run_brief)."""

    def __init__(self, store: StoreAccess) -> None:
        self._store = store

    def collect(self) -> list[Metric]:
        c = CounterMetricFamily(
            "lossproof_query_metadata_reads",
            "Metadata endpoint reads, by where they were answered.",
            labels=["answered_on"],
        )
        c.add_metric(["event_loop"], self._store.brief_answered)
        c.add_metric(["read_thread"], self._store.brief_handed_on)
        return [c]


def worker_addr_file(cfg: Config) -> Path:
    return cfg.run_dir / "worker.addr"


async def _worker_metrics(cfg: Config, session: aiohttp.ClientSession) -> bytes:
    """The co-located worker's metrics, so one scrape of ``up``'s port sees the whole pipeline."""
    try:
        addr = worker_addr_file(cfg).read_text().strip()
    except OSError:
        return b""
    try:
        async with session.get(f"http://{addr}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return await r.read() if r.status == 200 else b""
    except (aiohttp.ClientError, TimeoutError):
        return b""


KEYS = web.AppKey("keys", KeyRing)


def build_app(
    cfg: Config, writer: LogWriter, store: StoreAccess, registry: CollectorRegistry
) -> web.Application:
    keys = KeyRing(cfg)
    metrics = IngestMetrics(registry)
    registry.register(_BriefReads(store))
    sc = cfg.server
    guard = Guard(Limits(sc.header_timeout_seconds, sc.max_connections, sc.max_connections_per_ip), registry)
    app = web.Application(
        middlewares=[guard.middleware, errors_as_json], client_max_size=cfg.server.max_body_bytes
    )
    app[GUARD] = guard
    app[KEYS] = keys
    quiet = guard.log_filter()

    async def add_filter(app: web.Application) -> None:
        logging.getLogger("aiohttp.server").addFilter(quiet)

    async def remove_filter(app: web.Application) -> None:
        logging.getLogger("aiohttp.server").removeFilter(quiet)

    app.on_startup.append(add_filter)
    app.on_cleanup.append(remove_filter)
    session_holder: dict[str, aiohttp.ClientSession] = {}

    async def healthz(request: web.Request) -> web.Response:
        ok, why = writer.healthy()
        return json_response(
            {"status": "ok" if ok else "unavailable", "log": client_reason(why) or "ok"}, 200 if ok else 503
        )

    async def metrics_route(request: web.Request) -> web.Response:
        session = session_holder.get("s")
        if session is None:
            session = session_holder["s"] = aiohttp.ClientSession()
        try:
            operator = is_operator(request.headers.get("Authorization", ""), keys.operator_hashes)
        except OperatorKeyRequired as e:
            raise ApiError(403, str(e), "forbidden") from None
        body = exposition(registry, await _worker_metrics(cfg, session), operator=operator)
        return web.Response(
            body=body,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def close_session(app: web.Application) -> None:
        if "s" in session_holder:
            await session_holder["s"].close()

    app.on_cleanup.append(close_session)
    app.on_response_prepare.append(protocol_header)
    app.add_routes(
        [
            # native, Prometheus remote write, OTLP/HTTP, InfluxDB line protocol (docs/protocols.md)
            *ingest_routes(cfg, keys, writer, store, metrics),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics_route),
            *QueryApi(keys, store).routes(),
        ]
    )
    register_dashboard(app, cfg, keys, store, registry)  # UI at /, Prometheus API /api/v1
    return app


async def listen(app: web.Application, cfg: Config, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` with the connection limits of ``cfg`` (httpguard)."""
    # auto_decompress off: we decompress ourselves, bounded, and keep the compressed bytes for the log.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        auto_decompress=False,
        keepalive_timeout=cfg.server.keepalive_timeout_seconds,
        # a PromQL GET of the longest valid query (httpguard); aiohttp's 8,190 would be a text 400
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_FIELD_BYTES,
    )
    await runner.setup()
    # Several ingest processes of one `up` share the port (server.ingest_processes).
    reuse_port = cfg.server.ingest_processes > 1
    await GuardedSite(runner, app[GUARD], host, port, reuse_address=True, reuse_port=reuse_port).start()
    return runner


async def _beat(heartbeat: Heartbeat, writer: LogWriter, stuck_after: float) -> None:
    """Beats while the event loop runs (a loop blocked by a call that never returns stops it) and
    the log answers the appends: the loop stays responsive while the log's group-commit thread hangs
    in an fsync on a dead disk, and every append would wait for good. Appends that waited
    ``stuck_after`` seconds (the liveness timeout) with no answer silence it, so that ``up`` restarts
    this process; an idle log is never stuck."""
    stuck = False
    while heartbeat.fd is not None:
        stalled = writer.stalled_seconds()
        if stuck_after <= 0 or stalled <= stuck_after:
            if stuck:
                stuck = False
                log.warning("ingest.log_moving_again", stalled_seconds=round(stalled, 1))
            heartbeat()
        elif not stuck:
            stuck = True
            log.error("ingest.log_stuck", stalled_seconds=round(stalled, 1), beating=False)
        await asyncio.sleep(EVERY_SECONDS)


async def serve(cfg: Config, wrap_writer: Callable[[LogWriter], LogWriter] | None = None) -> None:
    """Serve until SIGINT/SIGTERM. ``wrap_writer``: a wrapper around the log writer, handed in by a
    test harness (chaos: a writer that acknowledges without writing); production passes none."""
    # Requests allocate many short-lived, acyclic objects; the default gen-0 threshold (700) runs
    # the cyclic collector hundreds of times a second for nothing. Freeze start-up objects, and
    # collect less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # taken first: the log's recovery beats as it makes progress (a long log is a slow start)
    beat = Heartbeat.from_env()
    registry = CollectorRegistry()
    writer = open_writer(cfg, registry)
    if wrap_writer is not None:
        writer = wrap_writer(writer)
    await writer.start()
    store = StoreAccess(lambda: open_store(cfg, readonly=True))
    app = build_app(cfg, writer, store, registry)
    reloader = KeyReloader(cfg.data_dir, app[KEYS])
    runner = await listen(app, cfg, cfg.server.host, cfg.server.port)
    log.info("ingest.listening", host=cfg.server.host, port=cfg.server.port, data_dir=str(cfg.data_dir))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reloader.check(force=True))
    polling = asyncio.create_task(reloader.poll())
    beating = asyncio.create_task(_beat(beat, writer, cfg.server.liveness_timeout_seconds))
    await stop.wait()
    polling.cancel()
    beating.cancel()
    log.info("ingest.stopping")
    # Stop accepting, let in-flight requests get their durable answer, then close the log.
    await runner.cleanup()
    await writer.close()
    store.close()
    log.info("ingest.stopped")
