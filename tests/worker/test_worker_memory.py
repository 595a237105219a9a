"""The worker's memory is bounded per batch, whatever the size of one request (issue 20, item 8).

A remote-write body near the documented limits (`server.max_decoded_bytes`, 64 MiB) used to cost the
worker ~25 bytes of RSS per decoded byte, and the memory was not given back. Here big bodies go
through a real `lossproof up`: the worker's peak RSS must stay bounded, and bounding it must not
change what is stored (every sample once; a native request split over several store transactions
stored whole, report by report, with its ledger).
"""

from __future__ import annotations

import time
from pathlib import Path

import cramjam
import psutil
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from lossproof.protocol import promrw
from lossproof.store.base import Matcher
from lossproof.store.sqlite import SqliteStore
from lptest.pipeline import HTTP, Pipeline, _children, expand, report
from lptest.proto import metric_value

pytestmark = pytest.mark.process

MiB = 1 << 20
T0 = 1_767_225_600_000
SERIES = 2000
SAMPLES = 1000  # per series: 2M samples, ~32 MiB decoded, per body
# What the worker may hold at its peak while storing such bodies one after the other: its own
# ~55 MB, SQLite's page cache (64 MiB), one decoded body, its series view and one bounded batch,
# plus one compaction step of the background compactor (measured: 290-312 MiB; 319 MiB with
# compaction off). The compactor once added 40-80 MiB (peaks 358-398 MiB): its connection's own
# 64 MiB page cache, now 2 MiB (it reads each part and chunk once), and the arrays of its steps,
# kept by glibc in the compactor thread's arena until it trims after each step.
# Before the per-batch bound the peak grew with the body (~25 bytes of RSS per decoded byte):
# 800 MiB for these bodies, ~1.5 GB at the 64 MiB limit. The bound leaves room for noise.
PEAK_RSS_BOUND = 400 * MiB


def big_rw_body(tag: str) -> tuple[bytes, int]:
    """A snappy remote-write 1.0 body of SERIES series of SAMPLES samples; its decoded size."""
    req = promrw.WriteRequest()
    for i in range(SERIES):
        ts = req.timeseries.add()
        for k, v in (("__name__", f"mem_probe_{i % 20}"), ("body", tag), ("series", str(i))):
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for j in range(SAMPLES):
            s = ts.samples.add()
            s.timestamp, s.value = T0 + j * 1000, float(j % 7)
    raw = req.SerializeToString()
    return bytes(cramjam.snappy.compress_raw(raw)), len(raw)


OTLP_METRICS = 1000  # of 1,000 points: 1M points, ~37 MiB of protobuf


def big_otlp_body() -> tuple[bytes, int]:
    """A gzipped OTLP protobuf body of OTLP_METRICS gauges of SAMPLES points; its decoded size."""
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    for i in range(OTLP_METRICS):
        g = sm.metrics.add()
        g.name = f"mem_otlp_{i % 20}"
        for j in range(SAMPLES):
            p = g.gauge.data_points.add()
            p.time_unix_nano, p.as_double = (T0 + j * 1000) * 1_000_000, float(j % 7)
            a = p.attributes.add()
            a.key, a.value.string_value = "series", str(i)
    raw = req.SerializeToString()
    return bytes(cramjam.gzip.compress(raw)), len(raw)


def worker_status(p: Pipeline) -> dict[str, int]:
    """The worker process' current and peak RSS, in bytes."""
    assert p.proc is not None
    for pid in _children(p.proc.pid):
        if "worker" in psutil.Process(pid).cmdline():
            out = {}
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmHWM"):
                        out[key] = int(value.split()[0]) * 1024
            return out
    raise AssertionError("no worker process")


def wait_points(p: Pipeline, n: float, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while metric_value(p.metrics(), "lossproof_worker_points_total") < n:
        assert time.monotonic() < deadline, f"worker stored fewer than {n} points in {timeout}s"
        time.sleep(0.25)


def test_big_bodies_cost_the_worker_bounded_memory_and_are_stored_exactly_once(
    pipeline: Pipeline,
) -> None:
    headers = {
        "Authorization": f"Bearer {pipeline.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
    }
    per_body = SERIES * SAMPLES
    for k, tag in enumerate(("a", "b")):
        body, decoded = big_rw_body(tag)
        assert decoded > 30 * MiB and len(body) < 16 * MiB  # within the documented limits
        r = HTTP.request("POST", pipeline.url + "/api/v1/write", body=body, headers=headers, timeout=120)
        assert r.status == 204, r.data[:300]
        if k == 0:  # the client's retry of the same body: harmless
            r = HTTP.request("POST", pipeline.url + "/api/v1/write", body=body, headers=headers, timeout=120)
            assert r.status == 204, r.data[:300]
        del body
        wait_points(pipeline, per_body * (k + 1))

    # OTLP is decoded a metric at a time too (it used to be decoded whole: ~750 MiB for this body)
    body, decoded = big_otlp_body()
    assert decoded > 30 * MiB and len(body) < 16 * MiB
    otlp_headers = {**headers, "Content-Encoding": "gzip"}
    r = HTTP.request("POST", pipeline.url + "/v1/metrics", body=body, headers=otlp_headers, timeout=120)
    assert r.status == 200, r.data[:300]
    del body
    per_otlp = OTLP_METRICS * SAMPLES
    wait_points(pipeline, 2 * per_body + per_otlp)

    # A native request of 150 reports of 1,000 points: more than one store batch (131,072 points), so
    # it is stored over several transactions, each report whole with its ledger update.
    reports = [report(seq, n=1000, metric="mem.native") for seq in range(1, 151)]
    r = pipeline.post_reports("mem-agent", reports, timeout=120)
    assert r.status == 200, r.data[:300]
    ledger = pipeline.wait_stored("mem-agent", set(range(1, 151)), timeout=120)
    wait_points(pipeline, 2 * per_body + per_otlp + 150_000)

    peak = worker_status(pipeline)["VmHWM"]
    print(f"worker peak RSS {peak / MiB:.0f} MiB")
    metrics = pipeline.metrics()
    assert metric_value(metrics, "lossproof_worker_dead_letters_total") == 0
    assert metric_value(metrics, "lossproof_worker_reports_total", outcome="stored") == 150
    assert metric_value(metrics, "lossproof_worker_reports_total", outcome="duplicate") == 0
    assert ledger["missing"] == [] and ledger["lost"] == [] and expand(ledger["stored"]) == set(range(1, 151))
    pipeline.stop()
    store = SqliteStore(Path(pipeline.data_dir) / "store.db", readonly=True)
    try:
        # exactly once: every sample of both bodies (the retried one included) and every point
        everything = (-(2**62), 2**62)
        probes = store.select_arrays("default", [Matcher("__name__", "=~", "mem_probe_.*")], *everything)
        rw = (sum(len(a.t) for a in probes), len(probes))
        otlps = store.select_arrays("default", [Matcher("__name__", "=~", "mem_otlp_.*")], *everything)
        otel = (sum(len(a.t) for a in otlps), len(otlps))
        natives = store.select_arrays("default", [Matcher("__name__", "=", "mem.native")], *everything)
        native = sum(len(a.t) for a in natives)
    finally:
        store.close()
    assert rw == (2 * per_body, 2 * SERIES)
    assert otel == (per_otlp, OTLP_METRICS)
    assert native == 150_000
    assert peak < PEAK_RSS_BOUND, f"worker peak RSS {peak / MiB:.0f} MiB, bound {PEAK_RSS_BOUND / MiB:.0f}"
