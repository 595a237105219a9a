"""What the Kafka writer, reader and admin share: client settings and the librdkafka logger."""

from __future__ import annotations

import logging
import re
from typing import Any

from lossproof.config import KafkaLogConfig
from lossproof.log.base import LogError

# Settings lossproof's guarantees rest on: the user's ``[log.kafka.client]`` may not change them.
PROTECTED_KEYS = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "transactional.id",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "isolation.level",
        "enable.partition.eof",
        "group.protocol",
        "partition.assignment.strategy",
    }
)

_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Offsets librdkafka uses as "no offset".
OFFSET_INVALID = -1001


class KafkaTopicUnsafe(LogError):
    """The topic's settings make "acknowledged" mean less than the contract; refused unless unsafe."""


def librdkafka_logger() -> logging.Logger:
    return logging.getLogger("lossproof.log.kafka.librdkafka")


def base_conf(cfg: KafkaLogConfig) -> dict[str, Any]:
    """bootstrap servers plus the user's pass-through settings (refusing protected keys)."""
    bad = sorted(k for k in cfg.client if k in PROTECTED_KEYS)
    if bad:
        raise LogError(
            f"log.kafka.client may not set {', '.join(bad)}: lossproof's durability guarantees depend on them"
        )
    conf: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers}
    conf.update(cfg.client)
    conf["logger"] = librdkafka_logger()
    return conf


def admin_conf(cfg: KafkaLogConfig) -> dict[str, Any]:
    conf = base_conf(cfg)
    # Admin clients only accept the general (non producer/consumer) settings.
    for k in list(conf):
        if k.startswith(("linger.", "compression.", "batch.", "queue.buffering.", "fetch.", "max.poll")):
            del conf[k]
    return conf


def group_id(topic: str, group: str) -> str:
    """The Kafka consumer group of lossproof group ``group`` on ``topic``: ``<topic>.<group>``.

    Retention only deletes records that every group named ``<topic>.*`` has committed past.
    """
    if not _GROUP_RE.match(group):
        raise ValueError(f"invalid consumer group name {group!r} (letters, digits, '._-', max 128)")
    return f"{topic}.{group}"


def delivery_timeout(cfg: KafkaLogConfig, append_timeout: float) -> float:
    """The producer's delivery timeout in seconds: configured, or 80% of the HTTP append timeout."""
    if cfg.delivery_timeout_seconds > 0:
        return cfg.delivery_timeout_seconds
    return max(0.5, append_timeout * 0.8)


def producer_conf(cfg: KafkaLogConfig, delivery_timeout_s: float) -> dict[str, Any]:
    """The producer settings of KafkaLogWriter (also used by the raw-producer benchmark)."""
    conf = base_conf(cfg)
    conf.setdefault("linger.ms", 5)
    conf.setdefault("partitioner", "murmur2_random")  # the Java client's key -> partition mapping
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            "request.timeout.ms": min(30_000, int(delivery_timeout_s * 1000)),
            "message.max.bytes": cfg.max_message_bytes,
        }
    )
    return conf
