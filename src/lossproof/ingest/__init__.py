"""The ingest API (docs/architecture.md): authenticate, check, append to the log, wait until
durable, and only then answer 2xx, built from the log's receipt (:mod:`lossproof.receipt`).

:func:`routes` are its HTTP routes (native, remote write, OTLP, InfluxDB), mounted by
:mod:`lossproof.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossproof.ingest.api import routes as routes
    from lossproof.ingest.metrics import IngestMetrics as IngestMetrics
    from lossproof.ingest.series_limit import SeriesLimit as SeriesLimit

# The public API, name -> module; loaded on first use, so a process pays only for what it touches.
_API = {
    "routes": "lossproof.ingest.api",
    "IngestMetrics": "lossproof.ingest.metrics",
    "SeriesLimit": "lossproof.ingest.series_limit",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
