"""The OpenTelemetry Python SDK exporting over OTLP/HTTP to a real `lossproof up`.

A counter, a histogram and a gauge: the stored values are what the SDK exported. For a few seconds
the log refuses durable writes, so lossproof answers 503 + Retry-After: the SDK retries, every export
ends in success, and nothing it exported is missing.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from lptest.pipeline import Pipeline
from lptest.proto import metric_value, query


class RecordingExporter(OTLPMetricExporter):
    """The real exporter; remembers what each export carried and how it ended."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.exports: list[tuple[MetricExportResult, list[tuple[str, dict[str, str], int, Any]]]] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kw: Any) -> Any:
        points = []
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for dp in m.data.data_points:
                        attrs = {k: str(v) for k, v in (dp.attributes or {}).items()}
                        t = dp.time_unix_nano // 1_000_000
                        if isinstance(m.data, Histogram):
                            points.append((m.name, attrs, t, (dp.count, dp.sum, tuple(dp.bucket_counts))))
                        else:
                            points.append((m.name, attrs, t, dp.value))
        result = super().export(metrics_data, timeout_millis, **kw)
        self.exports.append((result, points))
        return result


def _stored(p: Pipeline, metric: str, **labels: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for s in query(p, metric, **labels):
        out.update({int(t): v for t, v in s["points"]})
    return out


def test_sdk_counter_histogram_gauge_survive_503s(pipeline: Pipeline) -> None:
    p = pipeline
    exporter = RecordingExporter(
        endpoint=f"{p.url}/v1/metrics", headers={"Authorization": f"Bearer {p.key}"}, timeout=20
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=400)
    provider = MeterProvider(resource=Resource.create({"service.name": "otel-e2e"}), metric_readers=[reader])
    meter = provider.get_meter("lossproof.test", "1.0")
    counter = meter.create_counter("e2e.requests", unit="1")
    hist = meter.create_histogram("e2e.latency", unit="ms")
    gauge = meter.create_gauge("e2e.temperature")

    def record(i: int) -> None:
        counter.add(1 + i % 3, {"route": "/a"})
        counter.add(2, {"route": "/b"})
        hist.record(0.5 + i * 7 % 40, {"route": "/a"})
        gauge.set(20.0 + i / 10, {"room": "lab"})

    for i in range(10):
        record(i)
        time.sleep(0.1)
    time.sleep(0.5)
    p.faults({"log.fsync": {"mode": "fail"}})  # lossproof answers 503 + Retry-After: 3
    for i in range(10, 30):
        record(i)
        time.sleep(0.1)
    p.faults({})
    for i in range(30, 40):
        record(i)
        time.sleep(0.1)
    assert provider.force_flush(30_000)
    provider.shutdown()

    assert metric_value(p.metrics(), "lossproof_ingest_requests_total", protocol="otlp", status="503") >= 1
    results = [r for r, _ in exporter.exports]
    assert results and all(r is MetricExportResult.SUCCESS for r in results), results

    # every point of every export is stored, with the value the SDK exported
    deadline = time.monotonic() + 30
    missing = _missing(p, exporter)
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = _missing(p, exporter)
    assert not missing, missing[:10]
    exported = sum(len(points) for _, points in exporter.exports)
    assert exported >= 3 * 4, exported  # several exports of the four series
    counters = _stored(p, "e2e.requests", route="/b")
    assert max(counters.values()) == 80.0  # 40 adds of 2, cumulative


def _missing(p: Pipeline, exporter: RecordingExporter) -> list[Any]:
    base = {"service.name": "otel-e2e", "otel.scope.name": "lossproof.test"}
    cache: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = {}

    def stored(metric: str, labels: dict[str, str]) -> dict[int, float]:
        key = (metric, tuple(sorted(labels.items())))
        if key not in cache:
            cache[key] = _stored(p, metric, **labels)
        return cache[key]

    missing: list[Any] = []
    for _, points in exporter.exports:
        for name, attrs, t, value in points:
            labels = {**base, **attrs}
            if isinstance(value, tuple):
                count, total, buckets = value
                want = {f"{name}_count": float(count), f"{name}_sum": float(total)}
                le_inf = stored(f"{name}_bucket", {**labels, "le": "+Inf"}).get(t)
                if le_inf != float(count) or sum(buckets) != count:
                    missing.append((name, "+Inf", t, count, le_inf))
            else:
                want = {name: float(value)}
            for metric, v in want.items():
                got = stored(metric, labels).get(t)
                if got != v:
                    missing.append((metric, labels, t, v, got))
    return missing
