"""The relay's HTTP listener: OTLP/HTTP ``/v1/metrics``, remote write ``/api/v1/write``, Influx
``/write``, ``/api/v2/write``, ``/ping`` and ``/health``, answered like the ingest API answers them.

A request is decoded and checked by the same code as ingest's (:mod:`lossproof.protocol_http`: the
same 4xx and error bodies), turned into native reports of at most ``max_points_per_report`` points,
appended to its local sender's spool (fsync) and only then answered 2xx. A spool that is full or
cannot be written is a 503 with the protocol's own Retry-After (what its clients retry), and
nothing is acknowledged. aiohttp (as ingest) on an event loop of its own in one thread; the CPU
work and the fsync run in the loop's thread pool so that one slow disk does not stop the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import msgspec
from aiohttp import web

from lossproof.agent.config import RelayConfig
from lossproof.agent.metrics import AgentMetrics
from lossproof.agent.relay.channels import Channels
from lossproof.agent.report import encode_encoded_report, encode_points
from lossproof.agent.spool import SpoolError
from lossproof.config import ConfigError
from lossproof.httputil import (
    CLOSE_STATUSES,
    ApiError,
    close_after,
    continue_or,
    errors_as_json,
    read_body,
    unavailable,
)
from lossproof.obs.logging import get
from lossproof.protocol import relayed
from lossproof.protocol.thirdparty import BadBody, Checked
from lossproof.protocol_http import (
    Attempt,
    Decoded,
    Endpoint,
    check_request,
    endpoints,
    health,
    ping,
    presented_key,
)

log = get(__name__)

UNAUTHORIZED = "missing or wrong relay key ([relay] api_key of the agent; Authorization: Bearer <key>)"
CLIENT_CLOSED = 499
# One log line per protocol and outcome this often at most: a client retrying against a full spool
# must not flood the agent's log.
LOG_EVERY = 10.0


class RelayHandler:
    """One write path: check, spool, answer."""

    def __init__(
        self,
        endpoint: Endpoint,
        cfg: RelayConfig,
        key: str | None,
        channels: Channels,
        metrics: AgentMetrics,
        max_points: int,
    ) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        self.key = key
        self.channels = channels
        self.metrics = metrics
        self.max_points = max_points
        self._logged: dict[str, float] = {}

    def _authorize(self, request: web.Request) -> None:
        if self.key is not None and presented_key(request, self.endpoint.query_auth) != self.key:
            raise ApiError(401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": "Bearer"})

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: a wrong key is refused before the body is sent."""
        try:
            self._authorize(request)
        except ApiError as e:
            state = Attempt()
            self.endpoint.early(request, state)
            self.metrics.relay_requests.labels(self.endpoint.protocol, str(e.status)).inc()
            return await continue_or(request, self.endpoint.error(state, e))
        return await continue_or(request, None)

    async def _read(self, request: web.Request) -> bytes:
        c = self.cfg
        return await read_body(request, c.max_body_bytes, c.body_idle_seconds, c.body_read_max_seconds)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        ep, m = self.endpoint, self.metrics
        state = Attempt()
        ep.early(request, state)
        try:
            self._authorize(request)
            decoded, checked = await check_request(ep, request, state, self._read, self.cfg.max_decoded_bytes)
            if checked.points + checked.histograms:
                user_agent = request.headers.get("User-Agent", "")
                samples = await asyncio.to_thread(
                    self._spool, user_agent, decoded, checked, time.time_ns() // 10**6
                )
                m.relay_samples.labels(ep.protocol).inc(samples)
            resp = ep.ok(decoded, checked)
            outcome = "acked"
        except ApiError as e:
            resp = ep.error(state, e)
            outcome = "refused" if e.status < 500 else "unavailable"
            if outcome == "unavailable":
                self._log(outcome, e.message)
        except Exception:
            transport = request.transport
            if transport is not None and not transport.is_closing():
                raise
            # The client hung up before its body was read: nothing was spooled, nobody to answer.
            # Counted (status 499, nginx's "client closed request") instead of aiohttp's traceback.
            resp, outcome = web.Response(status=CLIENT_CLOSED), "unanswered"
        n = state.checked.points + state.checked.histograms if state.checked is not None else 0
        m.relay_points.labels(ep.protocol, outcome).inc(n)
        m.relay_requests.labels(ep.protocol, str(resp.status)).inc()
        m.relay_latency.labels(ep.protocol).observe(time.perf_counter() - started)
        if resp.status in CLOSE_STATUSES:
            await close_after(request, resp)
        return resp

    def _spool(self, user_agent: str, decoded: Decoded, checked: Checked, received_ms: int) -> int:
        """Spool the body's points as reports (in the loop's thread pool: decoding and the fsync);
        returns the samples spooled. Raises the ApiError to answer."""
        protocol = self.endpoint.protocol
        builders: list[Callable[[int], bytes]] = []
        samples = 0
        try:
            for points in relayed.iter_points(
                protocol,
                decoded.content_type,
                decoded.body,
                decoded.params,
                received_ms,
                self.max_points,
                checked.decoding,
            ):
                builders.append(_builder(received_ms, encode_points(points)))
                samples += len(points)
        except BadBody as e:
            raise ApiError(400, str(e), "bad_request") from None
        if not builders:
            return 0  # e.g. Influx lines of string fields only: accepted, nothing to store (as ingest)
        try:
            self.channels.get(protocol, user_agent).append(builders)
        except (SpoolError, OSError) as e:  # SpoolFull included: the client keeps the data and retries
            raise unavailable("agent spool", str(e), self.endpoint.retry_after) from None
        return samples

    def _log(self, outcome: str, error: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(outcome, -1e18) >= LOG_EVERY:
            self._logged[outcome] = now
            log.warning("relay.unavailable", protocol=self.endpoint.protocol, error=error)


def _builder(time_ms: int, points: msgspec.Raw) -> Callable[[int], bytes]:
    return lambda seq: encode_encoded_report(seq, time_ms, points)


def build_app(
    cfg: RelayConfig, key: str | None, channels: Channels, metrics: AgentMetrics, max_points: int
) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=cfg.max_body_bytes)
    for path, ep in endpoints(keep=True):
        h = RelayHandler(ep, cfg, key, channels, metrics, max_points)
        app.router.add_post(path, h.handle, expect_handler=h.expect)
    app.router.add_get("/ping", ping)  # also answers HEAD
    app.router.add_get("/health", health)
    return app


class RelayServer:
    """The app on ``host:port`` in a thread of its own. Binds in the constructor, so a port in use
    is an error at start (a ConfigError naming ``relay.listen``)."""

    def __init__(self, host: str, port: int, app: web.Application) -> None:
        self._loop = asyncio.new_event_loop()
        # auto_decompress off: the endpoints decompress themselves, bounded (as ingest does)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
        except OSError as e:
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()
            # the address comes from the config file: say which key to change
            raise ConfigError(f"relay.listen {host}:{port}: cannot listen: {e.strerror or e}") from None
        self.port = int(self._runner.addresses[0][1])
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop answering (requests in progress get up to a few seconds to finish their append)."""

        async def shutdown() -> None:
            await self._runner.cleanup()
            await self._loop.shutdown_default_executor()

        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception as e:  # a stuck request must not keep the agent from stopping
                log.warning("relay.stop_incomplete", error=str(e))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        else:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()
