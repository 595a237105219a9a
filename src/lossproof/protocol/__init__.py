"""Wire formats (docs/architecture.md): the native protocol and the ones agents already speak
(Prometheus remote write, OTLP/HTTP, InfluxDB line protocol), and the log record's envelope.

Each format is a module (:mod:`~lossproof.protocol.native`, ``promrw``, ``otlp``, ``influx``,
``compression``, ``ack``); :func:`record_parts` decodes a log record into store batches, for the
worker and the ingest's series limit alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.protocol.ack import NotAcknowledged as NotAcknowledged
    from lossproof.protocol.ack import acknowledged as acknowledged
    from lossproof.protocol.compression import BadEncoding as BadEncoding
    from lossproof.protocol.compression import TooLarge as TooLarge
    from lossproof.protocol.compression import decompress as decompress
    from lossproof.protocol.decode import DecodeError as DecodeError
    from lossproof.protocol.decode import add_record as add_record
    from lossproof.protocol.decode import record_parts as record_parts
    from lossproof.protocol.native import Envelope as Envelope

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "Envelope": "lossproof.protocol.native",
        "DecodeError": "lossproof.protocol.decode",
        "add_record": "lossproof.protocol.decode",
        "record_parts": "lossproof.protocol.decode",
        "NotAcknowledged": "lossproof.protocol.ack",
        "acknowledged": "lossproof.protocol.ack",
        "BadEncoding": "lossproof.protocol.compression",
        "TooLarge": "lossproof.protocol.compression",
        "decompress": "lossproof.protocol.compression",
    },
)
