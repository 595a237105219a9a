"""The real OpenTelemetry Python SDK exporter gives up on a batch after its export timeout (10 s by
default) and drops it. lossproof has no seqs for it, but counts every request the exporter got no 2xx
for: a batch the SDK dropped shows up on the completeness view as possibly dropped by that sender,
with its points.

Two ways to drop: the log refuses writes (503 + Retry-After: 3, retried until the SDK's deadline),
and the log hangs longer than the exporter waits (the SDK hangs up; our 503 comes after it left).
On the real app, log, worker and store in this process; the exporter is the SDK's own."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult, MetricsData

from lptest.inproc import InProcess
from lptest.pipeline import HTTP
from lptest.proto import rw_body

pytestmark = pytest.mark.process  # a real third-party client

APPEND_TIMEOUT = 4.0  # server.append_timeout_seconds


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    pl = InProcess(
        tmp_path_factory.mktemp("otel-dropped") / "data",
        "lp_test_" + secrets.token_hex(16),
        env={"LOSSPROOF_SERVER_APPEND_TIMEOUT_SECONDS": str(APPEND_TIMEOUT)},
        faults=True,
    )
    pl.start()
    yield pl
    pl.stop()


def _batch(service: str) -> tuple[MetricsData, int]:
    """One export's worth of metrics from the SDK itself, and its number of data points."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter(service)
    counter = meter.create_counter("dropped.requests")
    for route in ("/a", "/b", "/c"):
        counter.add(1, {"route": route})
    meter.create_gauge("dropped.temperature").set(21.5, {"room": "lab"})
    data = reader.get_metrics_data()
    assert data is not None
    provider.shutdown()
    return data, 4


NO_ROW = {
    k: {"requests": 0, "points": 0} for k in ("refused", "unavailable", "unanswered", "answer_lost")
}


def _otlp_row(p: InProcess) -> dict[str, Any]:
    """The SDK's row of possibly dropped requests (all zero before its first: another test of this
    module may have run in another process, with a pipeline of its own)."""
    status, body = p.get("/ui/api/completeness")
    assert status == 200, body
    rows = [
        r
        for r in body["possibly_dropped"]["senders"]
        if r["protocol"] == "otlp" and r["sender"].startswith("OTel-OTLP-Exporter-Python/")
    ]
    assert len(rows) <= 1, body["possibly_dropped"]
    return rows[0] if rows else NO_ROW  # type: ignore[no-any-return]


def _log_ok(p: InProcess) -> None:
    p.faults({})
    headers = {"Authorization": f"Bearer {p.key}", "Content-Encoding": "snappy"}
    body = rw_body([({"__name__": "probe"}, [(int(time.time() * 1000), 1.0)])])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = HTTP.request("POST", p.url + "/api/v1/write", body=body, headers=headers, timeout=30)
        if r.status == 204:
            return
        time.sleep(0.2)
    raise AssertionError("the log did not recover")


def test_a_batch_the_sdk_drops_after_503s_is_shown_possibly_dropped(p: InProcess) -> None:
    data, points = _batch("otel-503")
    exporter = OTLPMetricExporter(
        endpoint=f"{p.url}/v1/metrics", headers={"Authorization": f"Bearer {p.key}"}
    )  # the default export timeout: 10 s
    p.faults({"log.fsync": {"mode": "fail"}})
    try:
        started = time.monotonic()
        result = exporter.export(data)
        retried_for = time.monotonic() - started
    finally:
        _log_ok(p)
    assert result is MetricExportResult.FAILURE  # the SDK gave up: the batch is gone
    # Retry-After: 3 keeps it trying to ~9 s of its 10 (Retry-After: 1 would stop it at ~5 s)
    assert retried_for > 8, retried_for
    row = _otlp_row(p)
    tries = row["unavailable"]["requests"]
    assert tries >= 3, row
    assert row["unavailable"] == {"requests": tries, "points": tries * points, "by_status": {"503": tries}}


def test_a_batch_the_sdk_abandons_on_a_hanging_log_is_shown_possibly_dropped(p: InProcess) -> None:
    data, points = _batch("otel-hang")
    before = _otlp_row(p)["unanswered"]["requests"]
    # the exporter waits 2 s; the log takes longer than our append timeout, so the 503 finds it gone
    exporter = OTLPMetricExporter(
        endpoint=f"{p.url}/v1/metrics", headers={"Authorization": f"Bearer {p.key}"}, timeout=2
    )
    p.faults({"log.fsync": {"mode": "delay", "seconds": APPEND_TIMEOUT + 3}})
    try:
        result = exporter.export(data)
        assert result is MetricExportResult.FAILURE
        deadline = time.monotonic() + APPEND_TIMEOUT + 10
        while _otlp_row(p)["unanswered"]["requests"] == before and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _log_ok(p)
    unanswered = _otlp_row(p)["unanswered"]
    tries = unanswered["requests"] - before
    assert tries >= 1, unanswered
    assert unanswered["points"] == tries * points
    assert set(unanswered["by_status"]) == {"503"}, unanswered
