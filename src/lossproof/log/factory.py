"""Pick the log implementation the configuration names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from lossproof.config import Config, ConfigError
from lossproof.faults import Faults, file_system
from lossproof.log.base import LogReader, LogWriter


def open_writer(cfg: Config, registry: CollectorRegistry, faults: Faults | None = None) -> LogWriter:
    """The configured log's writer. ``faults``: the embedded log's disk faults (``log.write``,
    ``log.fsync``), handed in by tests (default: those of LOSSPROOF_FAULTS_FILE, which production
    never sets); they reach the writer as the file system it is given."""
    if cfg.log.backend == "kafka":
        from lossproof.log.kafka import KafkaLogWriter
        from lossproof.log.kafka.common import delivery_timeout

        kc = cfg.log.kafka
        if delivery_timeout(kc, cfg.server.append_timeout_seconds) >= cfg.server.append_timeout_seconds:
            raise ConfigError(
                f"log.kafka.delivery_timeout_seconds ({kc.delivery_timeout_seconds}) must be below "
                f"server.append_timeout_seconds ({cfg.server.append_timeout_seconds})"
            )
        return KafkaLogWriter(
            kc,
            append_timeout=cfg.server.append_timeout_seconds,
            retention_seconds=cfg.log.retention_seconds,
            registry=registry,
        )

    from lossproof.log.embedded import EmbeddedLogWriter

    return EmbeddedLogWriter(
        cfg.log_dir,
        partitions=cfg.log.partitions,
        segment_bytes=cfg.log.segment_bytes,
        retention_seconds=cfg.log.retention_seconds,
        fs=file_system("log", faults),
        registry=registry,
    )


def open_reader(cfg: Config, registry: CollectorRegistry, group: str = "workers") -> LogReader:
    if cfg.log.backend == "kafka":
        from lossproof.log.kafka import KafkaLogReader

        return KafkaLogReader(cfg.log.kafka, group, registry=registry)

    from lossproof.log.embedded import EmbeddedLogReader

    return EmbeddedLogReader(cfg.log_dir, group, partitions=cfg.log.partitions, registry=registry)
