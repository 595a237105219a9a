"""The fallback receiver: ``POST /v1/reports`` into a local journal, 200 only after fsync.

Deliberately simple and separate from the ingest API: it shares only parsing and validation
(``lossproof.protocol``), key lookup (``lossproof.config``) and pure HTTP helpers
(``lossproof.httputil``: JSON errors, bounded body read, request accounting). No log, no store, no
worker: every accepted request is one journal record, which ``lossproof replay`` later drains into
the main ingest.

Answers are those of the ingest API: 400/401/413/415 with ``{"error": ...}`` for bad input, 503 +
``Retry-After`` whenever the journal cannot durably accept (write or fsync failed, disk full, no
fsync within ``server.append_timeout_seconds``), and 200 ``{"acked": [[a, b]], "replay": []}`` only
once the request's record is fsync'd.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lossproof.auth import TENANT_HEADER, named_tenant
from lossproof.config import Config, hash_key
from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lossproof.faults import file_system
from lossproof.httputil import (
    ApiError,
    accounted,
    await_durable,
    client_reason,
    continue_or,
    errors_as_json,
    json_response,
    native_content_type,
    protocol_header,
    read_body,
    unavailable,
)
from lossproof.obs.exposition import OperatorKeyRequired, exposition, is_operator
from lossproof.obs.logging import get
from lossproof.protocol import native
from lossproof.protocol.compression import BadEncoding, TooLarge, decompress
from lossproof.receipt import Receipt, ReceiptIssuer, acked, covers_a_record

log = get(__name__)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class FallbackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lossproof_fallback_requests_total", "Requests by HTTP status.", ["status"], registry=registry
        )
        self.latency = Histogram(
            "lossproof_fallback_request_seconds",
            "Time from request start to answer (includes waiting for the fsync).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "lossproof_fallback_rejected_total",
            "Requests refused, by reason (bad_request, unauthorized, too_large, unavailable).",
            ["reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "lossproof_fallback_bytes_total",
            "Request body bytes acknowledged durable (as received).",
            ["tenant"],
            registry=registry,
        )
        self.reports = Counter(
            "lossproof_fallback_reports_total", "Reports acknowledged durable.", ["tenant"], registry=registry
        )
        self.points = Counter(
            "lossproof_fallback_points_total", "Points acknowledged durable.", ["tenant"], registry=registry
        )
        self.fsync = Histogram(
            "lossproof_fallback_fsync_seconds",
            "Duration of one journal fdatasync (one per group commit).",
            buckets=FSYNC_BUCKETS,
            registry=registry,
        )
        self.commit_requests = Histogram(
            "lossproof_fallback_commit_requests",
            "Requests made durable by one fsync (group commit size).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
            registry=registry,
        )
        self.journal_bytes = Gauge(
            "lossproof_fallback_journal_bytes", "Bytes of journal segment files on disk.", registry=registry
        )
        self.journal_segments = Gauge(
            "lossproof_fallback_journal_segments", "Journal segment files on disk.", registry=registry
        )
        self.pending_replay = Gauge(
            "lossproof_fallback_pending_replay_bytes",
            "Journal bytes not yet acknowledged by the main ingest via `lossproof replay`.",
            registry=registry,
        )
        self.healthy = Gauge(
            "lossproof_fallback_healthy", "1 when the journal accepts durable writes.", registry=registry
        )
        self.pruned = Counter(
            "lossproof_fallback_pruned_segments_total",
            "Replayed segments deleted after the retention period.",
            registry=registry,
        )

    def observe_commit(self, requests: int, fsync_seconds: float) -> None:
        self.fsync.observe(fsync_seconds)
        self.commit_requests.observe(requests)


class JournalReceipts(ReceiptIssuer):
    """The journal's durable appends as receipts: the fallback's 200 is built from one alone."""

    receipt_source = "fallback journal"

    def __init__(self, writer: jn.JournalWriter) -> None:
        self.writer = writer

    async def append(self, entry: jn.Entry, received_ms: int) -> Receipt:
        """Append ``entry``; its receipt once the journal has it fsync'd (JournalUnavailable else)."""
        pos = await self.writer.append(entry, received_ms)
        return self._receipt(pos.segment, pos.pos, entry.seqs)


class ReportsHandler:
    def __init__(self, cfg: Config, writer: jn.JournalWriter, metrics: FallbackMetrics) -> None:
        self.cfg = cfg
        self.journal = JournalReceipts(writer)
        self.metrics = metrics
        self.keys = cfg.key_index()

    def tenant(self, request: web.Request) -> str | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        try:
            key.encode("utf-8")  # undecodable header bytes (lone surrogates) are no key: a 401
        except UnicodeEncodeError:
            return None
        return self.keys.get(hash_key(key))

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        m = self.metrics
        return await accounted(
            self._handle, request, requests=m.requests, latency=m.latency, rejected=m.rejected
        )

    def unavailable(self, reason: str) -> ApiError:
        return unavailable("fallback journal", reason, self.cfg.server.retry_after_seconds)

    def authorize(self, request: web.Request) -> str:
        """The tenant to write as, or the 401/403 to answer (the ingest API's rules for a tenant key)."""
        return named_tenant(self.tenant(request), request.headers.get(TENANT_HEADER))

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: a wrong key is answered before the client sends the body."""
        try:
            self.authorize(request)
        except ApiError as e:
            self.metrics.rejected.labels(e.reason).inc()
            self.metrics.requests.labels(str(e.status)).inc()
            return await continue_or(request, json_response({"error": e.message}, e.status, e.headers))
        return await continue_or(request, None)

    async def _handle(self, request: web.Request) -> web.Response:
        srv = self.cfg.server
        tenant = self.authorize(request)
        ctype = native_content_type(request)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        raw = await read_body(request, srv.max_body_bytes, srv.body_idle_seconds, srv.body_read_max_seconds)
        try:
            checked = native.check(decompress(raw, encoding, srv.max_decoded_bytes), ctype)
        except TooLarge as e:
            raise ApiError(413, str(e), "too_large") from None
        except (BadEncoding, native.BadRequest) as e:
            raise ApiError(400, str(e), "bad_request") from None

        entry = jn.Entry(
            tenant=tenant,
            agent=checked.agent,
            content_type=ctype,
            encoding="" if encoding == "identity" else encoding,
            seqs=checked.seqs,
            reports=checked.reports,
            points=checked.points,
            body=raw,
        )
        append = self.journal.append(entry, int(time.time() * 1000))
        timeout = srv.append_timeout_seconds
        receipt = await await_durable(append, timeout, jn.JournalUnavailable, self.unavailable)
        receipt = covers_a_record(receipt)  # before anything counts it as acknowledged
        self.metrics.bytes.labels(tenant).inc(len(raw))
        self.metrics.reports.labels(tenant).inc(checked.reports)
        self.metrics.points.labels(tenant).inc(checked.points)
        return json_response({"acked": acked(receipt), "replay": []})


def build_app(
    cfg: Config,
    writer: jn.JournalWriter,
    data_dir: Path,
    metrics: FallbackMetrics,
    registry: CollectorRegistry,
) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=cfg.server.max_body_bytes)
    app.on_response_prepare.append(protocol_header)
    journal = jn.journal_dir(data_dir)
    reports = ReportsHandler(cfg, writer, metrics)

    async def healthz(request: web.Request) -> web.Response:
        ok, why = writer.healthy()
        return json_response(
            {"status": "ok" if ok else "unavailable", "journal": client_reason(why) or "ok"},
            200 if ok else 503,
        )

    async def metrics_route(request: web.Request) -> web.Response:
        ok, _ = writer.healthy()
        metrics.healthy.set(1 if ok else 0)
        segments, size = jn.journal_bytes(journal)
        metrics.journal_segments.set(segments)
        metrics.journal_bytes.set(size)
        try:
            metrics.pending_replay.set(pg.pending_bytes(journal, pg.load_progress(data_dir)))
        except pg.ProgressError:
            metrics.pending_replay.set(float("nan"))
        try:
            operator = is_operator(request.headers.get("Authorization", ""), cfg.operator.key_hashes)
        except OperatorKeyRequired as e:
            raise ApiError(403, str(e), "forbidden") from None
        body = exposition(registry, operator=operator)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app.add_routes(
        [
            web.post("/v1/reports", reports, expect_handler=reports.expect),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics_route),
        ]
    )
    return app


@dataclass
class ReceiverOptions:
    host: str
    port: int
    segment_bytes: int
    retention_seconds: float
    prune_interval_seconds: float


async def _prune_loop(data_dir: Path, opts: ReceiverOptions, metrics: FallbackMetrics) -> None:
    journal = jn.journal_dir(data_dir)
    while True:
        try:
            deleted = await asyncio.to_thread(
                pg.prune, journal, pg.load_progress(data_dir), opts.retention_seconds
            )
            if deleted:
                metrics.pruned.inc(len(deleted))
                log.info("fallback.pruned", segments=[str(p) for p in deleted])
        except (pg.ProgressError, OSError) as e:
            log.warning("fallback.prune_failed", error=str(e))
        await asyncio.sleep(opts.prune_interval_seconds)


async def serve(cfg: Config, data_dir: Path, opts: ReceiverOptions, ready: Callable[[str], None]) -> None:
    registry = CollectorRegistry()
    metrics = FallbackMetrics(registry)
    writer = jn.JournalWriter(
        jn.journal_dir(data_dir),
        segment_bytes=opts.segment_bytes,
        fs=file_system("fallback"),
        on_commit=metrics.observe_commit,
    )
    await writer.start()
    app = build_app(cfg, writer, data_dir, metrics, registry)
    # auto_decompress off: decompression is ours (bounded), and the journal keeps the bytes as received
    runner = web.AppRunner(app, handle_signals=False, access_log=None, auto_decompress=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, opts.host, opts.port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        await writer.close()
        raise
    port = opts.port or int(runner.addresses[0][1])  # the real port, when the OS picked one
    url = f"http://{opts.host}:{port}"
    log.info("fallback.listening", url=url, data_dir=str(data_dir))
    ready(url)

    pruner = asyncio.create_task(_prune_loop(data_dir, opts, metrics))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("fallback.stopping")
    pruner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pruner
    await runner.cleanup()  # in-flight requests get their durable answer first
    await writer.close()
    log.info("fallback.stopped")
