"""The agent as a local, lossless endpoint for OTLP, remote write and Influx clients (docs/agent.md,
"Relay"): :class:`Relay` starts the listener and the local senders' spools and senders."""

from __future__ import annotations

from lossproof.agent.config import AgentConfig
from lossproof.agent.metrics import AgentMetrics
from lossproof.agent.relay.channels import Channels, product_of
from lossproof.agent.relay.server import RelayServer, build_app

__all__ = ["Relay", "product_of"]


class Relay:
    def __init__(self, cfg: AgentConfig, metrics: AgentMetrics) -> None:
        relay = cfg.relay
        self.channels = Channels(cfg, metrics)
        app = build_app(relay, relay.key(), self.channels, metrics, cfg.max_points_per_report)
        self._server = RelayServer(relay.host, relay.port, app)
        metrics.watch_relay(self.channels.stats)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self.channels.start()
        self._server.start()

    def stop(self, drain_seconds: float) -> None:
        """Stop answering first (nothing is acknowledged any more), then drain and close the spools."""
        self._server.stop()
        self.channels.stop(drain_seconds)
