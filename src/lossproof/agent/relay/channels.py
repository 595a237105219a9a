"""One spool and one sender per local sender, so the ledger accounts for each like for an agent.

A local sender is a protocol and the product of the client's User-Agent (``OTel-OTLP-Exporter-Python``
of ``OTel-OTLP-Exporter-Python/1.25.0``: an upgrade keeps its spool). Its reports go upstream under
the agent id ``<agent_id>/<protocol>/<product>`` with seqs of their own, so the completeness view
shows stored / delayed / lost per local sender, and one sender's backlog or refusals never touch
another's (or the agent's own reports). Each has a spool directory
``<spool_dir>/relay/<protocol>/<product>/``, made on first use and reopened at every start (it may
hold reports from before a crash). At most ``relay.max_senders`` are made; past that, new senders of
a protocol share ``<protocol>/other``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from lossproof.agent.config import AgentConfig
from lossproof.agent.metrics import AgentMetrics, reason_kind
from lossproof.agent.sender import Sender
from lossproof.agent.spool import Spool, SpoolLimits, SpoolStats
from lossproof.obs.logging import get

log = get(__name__)

RELAY_DIR = "relay"
PROTOCOLS = ("prom-rw", "otlp", "influx")
OTHER = "other"
UNKNOWN = "unknown"
MAX_PRODUCT = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def product_of(user_agent: str) -> str:
    """The product of a User-Agent (its first token, without the version), safe as a directory
    name and an agent id part: ``Prometheus/2.45.3`` → ``Prometheus``; none → ``unknown``."""
    first = user_agent.strip().split(" ", 1)[0].split("/", 1)[0]
    name = _UNSAFE.sub("_", first)[:MAX_PRODUCT].strip(".")
    return name or UNKNOWN


class Channel:
    """A local sender's spool and sender."""

    def __init__(self, base: AgentConfig, protocol: str, product: str, metrics: AgentMetrics) -> None:
        relay = base.relay
        self.protocol, self.product = protocol, product
        self.agent_id = f"{base.agent_id}/{protocol}/{product}"
        directory = base.spool_dir / RELAY_DIR / protocol / product
        own = {"agent_id": self.agent_id, "spool_dir": directory, "max_spool_bytes": relay.max_spool_bytes}
        cfg = base.model_copy(update=own)
        limits = SpoolLimits(
            max_spool_bytes=relay.max_spool_bytes,
            window_seconds=base.replay_window_seconds,
            window_bytes=base.replay_window_bytes,
            segment_bytes=base.spool_segment_bytes,
        )

        def dropped(n: int, reason: str) -> None:
            metrics.dropped.labels(reason_kind(reason)).inc(n)

        self.spool = Spool(directory, limits, on_drop=dropped)
        try:
            self.sender = Sender(cfg, self.spool, metrics)
        except BaseException:
            self.spool.close()
            raise
        rec = self.spool.recovery
        log.info(
            "relay.sender_opened",
            agent=self.agent_id,
            spool_dir=str(directory),
            last_seq=rec.last_seq,
            pending=rec.pending,
            lost_on_recovery=[[a, b] for a, b, _ in rec.lost],
        )

    def append(self, builders: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Durably append reports; raises SpoolFull rather than drop older ones (the client, not
        yet answered, keeps the data and retries)."""
        seqs = self.spool.append(builders, require_room=True)
        self.sender.wake()
        return seqs

    def stop(self, drain_seconds: float) -> None:
        self.sender.stop(drain_seconds)
        self.spool.close()


class Channels:
    """The open channels, bounded in number; thread-safe."""

    def __init__(self, cfg: AgentConfig, metrics: AgentMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], Channel] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._maintain, name="agent-relay-maintain", daemon=True)

    def start(self) -> None:
        """Reopen every local sender's spool found on disk (it may hold unsent reports), then keep
        the spools' replay windows trimmed."""
        root = self.cfg.spool_dir / RELAY_DIR
        with self._lock:
            for protocol in PROTOCOLS:
                for d in sorted(_subdirs(root / protocol)):
                    if d.name == product_of(d.name):  # only names this module makes
                        self._open_locked(protocol, d.name)
        self._thread.start()

    def get(self, protocol: str, user_agent: str) -> Channel:
        """The channel of a local sender, made on first use (opening a spool: call off the event
        loop). Raises SpoolError / OSError when its spool cannot be opened."""
        product = product_of(user_agent)
        with self._lock:
            ch = self._open.get((protocol, product))
            if ch is not None:
                return ch
            named = sum(1 for _, p in self._open if p != OTHER)
            if product != OTHER and named >= self.cfg.relay.max_senders:
                product = OTHER
                ch = self._open.get((protocol, product))
                if ch is not None:
                    return ch
            return self._open_locked(protocol, product)

    def _open_locked(self, protocol: str, product: str) -> Channel:
        ch = Channel(self.cfg, protocol, product, self.metrics)
        ch.sender.start()
        self._open[(protocol, product)] = ch
        return ch

    def channels(self) -> list[Channel]:
        with self._lock:
            return list(self._open.values())

    def stats(self) -> list[tuple[str, SpoolStats]]:
        return [(ch.agent_id, ch.spool.stats()) for ch in self.channels()]

    def stop(self, drain_seconds: float) -> None:
        """Drain every sender for up to ``drain_seconds`` (all at once), then close the spools."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        threads = [
            threading.Thread(target=ch.stop, args=(drain_seconds,), name="agent-relay-stop", daemon=True)
            for ch in self.channels()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _maintain(self) -> None:
        every = max(1.0, self.cfg.interval_seconds)
        while not self._stop.wait(every):
            for ch in self.channels():
                try:
                    ch.spool.maintain()
                except Exception as e:  # a closed or failing spool must not end maintenance of the others
                    log.error("relay.spool_maintenance_failed", agent=ch.agent_id, error=str(e))


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
