"""The ingest API's routes: the native protocol and the third-party ones, for the composition root."""

from __future__ import annotations

from aiohttp import web

from lossproof.auth import KeyRing
from lossproof.config import Config
from lossproof.ingest import protocols
from lossproof.ingest.metrics import IngestMetrics
from lossproof.ingest.reports import ReportsHandler
from lossproof.ingest.series_limit import SeriesLimit
from lossproof.log.base import LogWriter
from lossproof.store.access import StoreAccess


def routes(
    cfg: Config, keys: KeyRing, writer: LogWriter, store: StoreAccess, metrics: IngestMetrics
) -> list[web.RouteDef]:
    """``POST /v1/reports`` (native), remote write, OTLP/HTTP and InfluxDB (docs/protocols.md)."""
    series_limit = SeriesLimit(cfg, store, metrics)
    reports = ReportsHandler(cfg, keys, writer, store, metrics, series_limit)
    return [
        web.post("/v1/reports", reports, expect_handler=reports.expect),
        *protocols.routes(cfg, keys, writer, metrics, series_limit),
    ]
