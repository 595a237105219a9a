"""Pick the log implementation the configuration names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from lossproof.config import Config
from lossproof.faults import Faults
from lossproof.log.base import LogReader, LogWriter


def open_writer(cfg: Config, registry: CollectorRegistry) -> LogWriter:
    from lossproof.log.embedded import EmbeddedLogWriter

    return EmbeddedLogWriter(
        cfg.log_dir,
        segment_bytes=cfg.log.segment_bytes,
        retention_seconds=cfg.log.retention_seconds,
        faults=Faults(),
        registry=registry,
    )


def open_reader(cfg: Config, registry: CollectorRegistry, group: str = "workers") -> LogReader:
    from lossproof.log.embedded import EmbeddedLogReader

    return EmbeddedLogReader(cfg.log_dir, group, registry=registry)
