"""The agent: collectors → buffer → reporter → spool → sender, each in its own thread.

::

    Agent.record ─┐
    host (psutil) ─┼─▶ Buffer ─▶ Reporter ──append, fsync──▶ Spool ──▶ Sender ──▶ primary / fallback
    StatsD (UDP) ──┘  (per interval)      (seq per report)   (pending, window)   (acked → not pending)

Usage::

    with Agent(load_config(Path("agent.toml"))) as agent:
        agent.record("queue.depth", 17, {"queue": "mail"})
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from lossproof.agent.collect.host import HostCollector
from lossproof.agent.collect.statsd import Aggregator, StatsdListener
from lossproof.agent.config import AgentConfig
from lossproof.agent.metrics import AgentMetrics, reason_kind
from lossproof.agent.report import MAX_LABELS, Buffer, Point, make_point
from lossproof.agent.reporter import Reporter
from lossproof.agent.sender import Sender
from lossproof.agent.spool import Spool, SpoolLimits
from lossproof.obs.logging import get
from lossproof.obs.status_http import StatusServer

if TYPE_CHECKING:
    from lossproof.agent.relay import Relay

log = get(__name__)


class Agent:
    def __init__(self, config: AgentConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = AgentMetrics(registry)
        self.labels = dict(config.labels)
        self.buffer = Buffer(config.max_points_per_report, on_full=self._buffer_full)
        self._aggregator = Aggregator()
        self.spool: Spool | None = None
        self._sender: Sender | None = None
        self._reporter: Reporter | None = None
        self._statsd: StatsdListener | None = None
        self._host: HostCollector | None = None
        self._http: StatusServer | None = None
        self._relay: Relay | None = None
        self._started = False

    # -- in-process use -----------------------------------------------------------------------------

    def record(
        self,
        metric: str,
        value: float,
        labels: Mapping[str, str] | None = None,
        t_ms: int | None = None,
    ) -> None:
        """Add one point to the next report (``t_ms`` defaults to now). Raises ValueError for a point
        the protocol would refuse, so it never spoils a whole report."""
        t = time.time_ns() // 1_000_000 if t_ms is None else t_ms
        self.buffer.add(make_point(metric, value, labels, t, self.labels))

    def flush(self) -> list[int]:
        """Spool what was collected so far as reports right now (normally once per interval)."""
        if self._reporter is None:
            raise RuntimeError("the agent is not started")
        return self._reporter.report(include_sources=True)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.spool is not None:
            raise RuntimeError("an Agent is started once; make a new one to start again")
        cfg = self.config
        limits = SpoolLimits(
            max_spool_bytes=cfg.max_spool_bytes,
            window_seconds=cfg.replay_window_seconds,
            window_bytes=cfg.replay_window_bytes,
            segment_bytes=cfg.spool_segment_bytes,
        )
        spool = Spool(cfg.spool_dir, limits, on_drop=self._dropped)
        self.spool = spool
        try:
            rec = spool.recovery
            stats = spool.stats()
            log.info(
                "agent.started",
                agent=cfg.agent_id,
                spool_dir=str(cfg.spool_dir),
                last_seq=rec.last_seq,
                next_seq=rec.last_seq + 1,
                pending=rec.pending,
                truncated_bytes=rec.truncated_bytes,
                damaged_bytes=rec.damaged_bytes,
                lost_on_recovery=[[a, b] for a, b, _ in rec.lost],
                window_reports=stats.window_reports,
                primary=cfg.primary_url,
                fallbacks=cfg.fallback_urls,
            )
            self.metrics.watch_spool(spool.stats)
            sender = self._sender = Sender(cfg, spool, self.metrics)
            sources: list[Callable[[int], list[Point]]] = [self._flush_statsd] if cfg.statsd_port else []
            self._reporter = Reporter(
                cfg.interval_seconds,
                cfg.max_points_per_report,
                self.buffer,
                spool,
                self.metrics,
                sender.wake,
                sources,
            )
            if cfg.statsd_port:
                self._statsd = StatsdListener(
                    cfg.statsd_port,
                    self._aggregator,
                    self.metrics.statsd_lines.inc,
                    self.metrics.statsd_malformed.inc,
                    max_tags=MAX_LABELS - len(self.labels),
                    on_dropped=self._reporter.statsd_dropped,
                )
            if cfg.relay.listen:
                # imported only when used: the protocols' decoders are most of the relay's memory
                from lossproof.agent.relay import Relay

                self._relay = Relay(cfg, self.metrics)
            if cfg.metrics_port:
                self._http = StatusServer("127.0.0.1", cfg.metrics_port, self.metrics.registry, self.health)
            if cfg.collect_host:
                self._host = HostCollector(
                    cfg.interval_seconds,
                    self.labels,
                    self.buffer.extend,
                    self.metrics.record_errors.labels("host").inc,
                )
        except BaseException:
            self._close_partial()
            raise
        sender.start()
        self._reporter.start()
        for part in (self._statsd, self._http, self._host):
            if part is not None:
                part.start()
        if self._relay is not None:
            try:
                self._relay.start()
            except BaseException:
                self._started = True
                self.stop()
                raise
            log.info(
                "relay.started",
                listen=f"{cfg.relay.host}:{self._relay.port}",
                senders=[ch.agent_id for ch in self._relay.channels.channels()],
            )
        self._started = True

    def stop(self) -> None:
        """Stop collecting, spool the last points, send what is pending for up to
        ``shutdown_drain_seconds``, and close the spool. What is unsent stays for the next start."""
        if not self._started:
            return
        self._started = False
        for part in (self._host, self._statsd):
            if part is not None:
                part.stop()
        assert self._reporter is not None and self._sender is not None and self.spool is not None
        relay_stopped = None
        if self._relay is not None:
            # the local senders drain alongside the agent's own sender, not after it
            relay_stopped = threading.Thread(
                target=self._relay.stop, args=(self.config.shutdown_drain_seconds,), name="agent-relay-stop"
            )
            relay_stopped.start()
        self._reporter.stop()
        self._sender.stop(self.config.shutdown_drain_seconds)
        if relay_stopped is not None:
            relay_stopped.join()
        if self._http is not None:
            self._http.stop()
        stats = self.spool.stats()
        self.spool.close()
        log.info("agent.stopped", last_seq=stats.last_seq, pending=stats.pending_reports)

    def _close_partial(self) -> None:
        if self._relay is not None:
            self._relay.stop(0)
        if self._statsd is not None:
            self._statsd.stop()
        if self._http is not None:
            self._http.stop()
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- status -------------------------------------------------------------------------------------

    @property
    def statsd_port(self) -> int | None:
        return self._statsd.port if self._statsd else None

    @property
    def relay_port(self) -> int | None:
        return self._relay.port if self._relay else None

    @property
    def metrics_port(self) -> int | None:
        return self._http.port if self._http else None

    @property
    def destination(self) -> str:
        return self._sender.router.mode if self._sender else "primary"

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: unhealthy only when reports cannot be spooled (then data is at risk)."""
        if self.spool is None or self._sender is None or self._reporter is None:
            return False, {"status": "starting"}
        s = self.spool.stats()
        ok = self._reporter.spool_ok
        relay = {}
        if self._relay is not None:
            senders = self._relay.channels.stats()
            relay = {
                "relay": {
                    "listen": f"{self.config.relay.host}:{self._relay.port}",
                    "senders": len(senders),
                    "pending_reports": sum(st.pending_reports for _, st in senders),
                }
            }
        return ok, {
            "status": "ok" if ok else "spool_unwritable",
            "agent": self.config.agent_id,
            "destination": self._sender.router.mode,
            "last_seq": s.last_seq,
            "pending_reports": s.pending_reports,
            "oldest_pending_age_seconds": round(time.time() - s.oldest_pending_ms / 1000, 3)
            if s.oldest_pending_ms
            else 0,
            "last_send_error": self._sender.last_error,
            **relay,
        }

    # -- plumbing -----------------------------------------------------------------------------------

    def _buffer_full(self) -> None:
        if self._reporter is not None:
            self._reporter.kick()

    def _flush_statsd(self, t_ms: int) -> list[Point]:
        return self._aggregator.flush(t_ms, self.labels)

    def _dropped(self, n: int, reason: str) -> None:
        self.metrics.dropped.labels(reason_kind(reason)).inc(n)
