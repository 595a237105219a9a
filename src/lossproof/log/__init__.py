"""The log boundary (docs/architecture.md): ingest appends, workers read; embedded or Kafka.

The contract is in :mod:`lossproof.log.base`; :func:`open_writer` and :func:`open_reader` pick the
configured implementation. An append returns the durable :class:`Receipt` every 2xx is built from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.log.base import LogCorrupt as LogCorrupt
    from lossproof.log.base import LogError as LogError
    from lossproof.log.base import LogGap as LogGap
    from lossproof.log.base import LogLag as LogLag
    from lossproof.log.base import LogReader as LogReader
    from lossproof.log.base import LogRecord as LogRecord
    from lossproof.log.base import LogUnavailable as LogUnavailable
    from lossproof.log.base import LogWriter as LogWriter
    from lossproof.log.base import PollResult as PollResult
    from lossproof.log.base import Position as Position
    from lossproof.log.base import Receipt as Receipt
    from lossproof.log.factory import open_reader as open_reader
    from lossproof.log.factory import open_writer as open_writer

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "LogCorrupt": "lossproof.log.base",
        "LogError": "lossproof.log.base",
        "LogGap": "lossproof.log.base",
        "LogLag": "lossproof.log.base",
        "LogReader": "lossproof.log.base",
        "LogRecord": "lossproof.log.base",
        "LogUnavailable": "lossproof.log.base",
        "LogWriter": "lossproof.log.base",
        "PollResult": "lossproof.log.base",
        "Position": "lossproof.log.base",
        "Receipt": "lossproof.log.base",
        "open_reader": "lossproof.log.factory",
        "open_writer": "lossproof.log.factory",
    },
)
