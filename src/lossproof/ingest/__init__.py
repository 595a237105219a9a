"""The ingest API (docs/architecture.md): authenticate, check, append to the log, wait until
durable, and only then answer 2xx, built from the log's receipt (:mod:`lossproof.receipt`).

:func:`routes` are its HTTP routes (native, remote write, OTLP, InfluxDB), mounted by
:mod:`lossproof.server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.ingest.api import routes as routes
    from lossproof.ingest.metrics import IngestMetrics as IngestMetrics
    from lossproof.ingest.series_limit import SeriesLimit as SeriesLimit

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "routes": "lossproof.ingest.api",
        "IngestMetrics": "lossproof.ingest.metrics",
        "SeriesLimit": "lossproof.ingest.series_limit",
    },
)
