"""The agent's durable on-disk spool (format in :mod:`.format`)."""

from lossproof.agent.spool.spool import (
    DAMAGED,
    SPOOL_FULL,
    STATSD_DROPPED,
    UNSPOOLED,
    WINDOW_EXPIRED,
    Recovery,
    Spool,
    SpoolError,
    SpoolFull,
    SpoolLimits,
    SpoolStats,
)

__all__ = [
    "DAMAGED",
    "SPOOL_FULL",
    "STATSD_DROPPED",
    "UNSPOOLED",
    "WINDOW_EXPIRED",
    "Recovery",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "SpoolLimits",
    "SpoolStats",
]
