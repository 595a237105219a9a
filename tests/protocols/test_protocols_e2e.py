"""The third-party endpoints against a real `lossproof up`: auth forms, hostile bodies, replays,
status codes under log trouble, /ping, accounting."""

from __future__ import annotations

import base64
import gzip
import json
import time
from urllib.parse import urlencode

import cramjam
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from lossproof import config as config_mod
from lossproof.bench.protocols import request as bench_request
from lossproof.protocol import promrw
from lptest.pipeline import HTTP, Pipeline
from lptest.proto import metric_value, post, query, rw_body, wait_points

NOW = int(time.time() * 1000) // 1000 * 1000


def rw_headers(p: Pipeline, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {p.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "User-Agent": "Prometheus/2.42.0",
        **extra,
    }


def otlp_gauge(name: str, t_ms: int, value: float, **attrs: str) -> bytes:
    req = ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = name
    pt = m.gauge.data_points.add()
    pt.time_unix_nano, pt.as_double = t_ms * 1_000_000, value
    for k, v in attrs.items():
        a = pt.attributes.add()
        a.key, a.value.string_value = k, v
    return bytes(req.SerializeToString())


def test_every_auth_form_maps_to_the_tenant(pipeline: Pipeline) -> None:
    p = pipeline
    basic = base64.b64encode(f"anyone:{p.key}".encode()).decode()
    basic_user_only = base64.b64encode(f"{p.key}:".encode()).decode()
    cases = [
        ("/write?db=a", {"Authorization": f"Basic {basic}"}),
        ("/write?db=a", {"Authorization": f"Basic {basic_user_only}"}),
        (f"/write?db=a&u=me&p={p.key}", {}),
        (f"/write?db=a&token={p.key}", {}),
        ("/write?db=a", {"Authorization": f"Token {p.key}"}),
        ("/api/v2/write?bucket=a&org=o", {"Authorization": f"Token {p.key}"}),
        ("/api/v2/write?bucket=a&org=o", {"Authorization": f"Token me:{p.key}"}),
        ("/write?db=a", {"Authorization": f"Bearer {p.key}"}),
    ]
    for i, (path, headers) in enumerate(cases):
        r = post(p, path, b"auth,case=%d v=%d %d" % (i, i, NOW * 1_000_000), headers)
        assert r.status == 204, (path, headers, r.data)
        assert r.headers["X-Influxdb-Version"]
    r = post(
        p,
        "/api/v1/write",
        rw_body([({"__name__": "auth_rw"}, [(NOW, 1.0)])]),
        {**rw_headers(p), "Authorization": f"Basic {basic}"},
    )
    assert r.status == 204, r.data
    wait_points(p, "auth_v", len(cases))
    wait_points(p, "auth_rw", 1)

    # wrong or missing keys, and a key in the query string where it is not accepted
    for path, headers in [
        ("/write?db=a", {"Authorization": "Token wrong"}),
        ("/write?db=a&u=me&p=wrong", {}),
        ("/write?db=a", {}),
        ("/api/v2/write?bucket=a", {"Authorization": "Basic !!notbase64"}),
    ]:
        r = post(p, path, b"noauth v=1", headers)
        assert r.status == 401, (path, r.data)
        assert json.loads(r.data)["error"]
    r = post(
        p,
        f"/api/v1/write?token={p.key}",
        rw_body([({"__name__": "x"}, [(NOW, 1.0)])]),
        {**rw_headers(p), "Authorization": ""},
    )
    assert r.status == 401
    r = post(p, "/v1/metrics", otlp_gauge("x", NOW, 1.0), {"Content-Type": "application/x-protobuf"})
    assert r.status == 401
    assert status_pb2.Status.FromString(r.data).code == 16  # UNAUTHENTICATED


def test_hostile_bodies_get_a_clear_4xx_and_store_nothing(pipeline: Pipeline) -> None:
    p = pipeline
    rw = rw_headers(p)
    otlp_h = {"Authorization": f"Bearer {p.key}", "Content-Type": "application/x-protobuf"}
    otlp_j = {**otlp_h, "Content-Type": "application/json"}
    influx_h = {"Authorization": f"Token {p.key}"}
    zeros = b"\0" * (100 << 20)
    gzip_bomb = gzip.compress(zeros, 1)
    good_rw = rw_body([({"__name__": "hostile_rw"}, [(NOW, 1.0)])])
    cases: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
        # remote write
        ("rw bad snappy", "/api/v1/write", b"\x10garbage-garbage", rw, 400, "snappy"),
        (
            "rw truncated protobuf",
            "/api/v1/write",
            bytes(cramjam.snappy.compress_raw(promrw.snappy_decompress(good_rw, 1 << 20)[:-2])),
            rw,
            400,
            "protobuf",
        ),
        (
            "rw no name",
            "/api/v1/write",
            rw_body([({"job": "hostile_rw"}, [(NOW, 1.0)])]),
            rw,
            400,
            "__name__",
        ),
        (
            "rw huge label set",
            "/api/v1/write",
            rw_body([({"__name__": "hostile_rw", **{f"l{i}": "v" for i in range(200)}}, [(NOW, 1.0)])]),
            rw,
            400,
            "labels",
        ),
        (
            "rw far future",
            "/api/v1/write",
            rw_body([({"__name__": "hostile_rw"}, [(NOW * 1000, 1.0)])]),
            rw,
            400,
            "timestamp",
        ),
        (
            "rw snappy bomb",
            "/api/v1/write",
            bytes(cramjam.snappy.compress_raw(zeros)),
            rw,
            413,
            "decompresses",
        ),
        (
            "rw gzip",
            "/api/v1/write",
            gzip.compress(good_rw),
            {**rw, "Content-Encoding": "gzip"},
            415,
            "snappy",
        ),
        (
            "rw json",
            "/api/v1/write",
            good_rw,
            {**rw, "Content-Type": "application/json"},
            415,
            "Content-Type",
        ),
        # OTLP
        ("otlp truncated", "/v1/metrics", otlp_gauge("hostile_otlp", NOW, 1.0)[:-3], otlp_h, 400, "protobuf"),
        ("otlp bad json", "/v1/metrics", b'{"resourceMetrics": [{', otlp_j, 400, "JSON"),
        ("otlp wrong type", "/v1/metrics", b'{"resourceMetrics": [{"scopeMetrics": "x"}]}', otlp_j, 400, ""),
        ("otlp empty request", "/v1/metrics", b"", otlp_h, 200, ""),  # valid, nothing to store
        ("otlp far future", "/v1/metrics", otlp_gauge("hostile_otlp", 10**13, 1.0), otlp_h, 400, "timestamp"),
        (
            "otlp huge labels",
            "/v1/metrics",
            otlp_gauge("hostile_otlp", NOW, 1.0, **{f"k{i}": "v" for i in range(100)}),
            otlp_h,
            400,
            "labels",
        ),
        ("otlp gzip bomb", "/v1/metrics", gzip_bomb, {**otlp_h, "Content-Encoding": "gzip"}, 413, "exceeds"),
        (
            "otlp bad gzip",
            "/v1/metrics",
            b"\x1f\x8b\x08\x00junk",
            {**otlp_h, "Content-Encoding": "gzip"},
            400,
            "gzip",
        ),
        ("otlp text", "/v1/metrics", b"hi", {**otlp_h, "Content-Type": "text/plain"}, 415, "Content-Type"),
        (
            "otlp brotli",
            "/v1/metrics",
            otlp_gauge("hostile_otlp", NOW, 1.0),
            {**otlp_h, "Content-Encoding": "br"},
            415,
            "gzip, deflate, zstd or identity",
        ),
        # InfluxDB
        ("influx nan", "/write?db=h", b"hostile_influx v=NaN", influx_h, 400, "NaN"),
        ("influx inf", "/write?db=h", b"hostile_influx v=1\nhostile_influx v=+Inf", influx_h, 400, "line 2"),
        ("influx no db", "/write", b"hostile_influx v=1", influx_h, 400, "database"),
        ("influx no bucket", "/api/v2/write?org=o", b"hostile_influx v=1", influx_h, 400, "bucket"),
        ("influx precision", "/write?db=h&precision=x", b"hostile_influx v=1", influx_h, 400, "precision"),
        (
            "influx far",
            "/write?db=h&precision=s",
            b"hostile_influx v=1 %d" % (NOW * 1000),
            influx_h,
            400,
            "outside",
        ),
        (
            "influx escapes",
            "/write?db=h",
            b'hostile_influx,t\\=1=x v=1 1\nhostile_influx v="a',
            influx_h,
            400,
            "unterminated",
        ),
        (
            "influx tags",
            "/write?db=h",
            b"hostile_influx" + b"".join(b",t%d=v" % i for i in range(80)) + b" v=1",
            influx_h,
            400,
            "tags",
        ),
        (
            "influx gzip bomb",
            "/api/v2/write?bucket=h",
            gzip_bomb,
            {**influx_h, "Content-Encoding": "gzip"},
            413,
            "exceeds",
        ),
        ("influx not utf-8", "/write?db=h", b"hostile_influx,t=\xff v=1", influx_h, 400, "UTF-8"),
    ]
    for name, path, body, headers, status, needle in cases:
        r = post(p, path, body, headers)
        assert r.status == status, (name, r.status, r.data[:300])
        assert r.status < 500, name
        if status >= 400:
            if path == "/v1/metrics" and headers.get("Content-Type") == "application/x-protobuf":
                msg = status_pb2.Status.FromString(r.data).message
            else:
                msg = json.loads(r.data).get("error") or json.loads(r.data).get("message")
            assert needle in msg, (name, msg)

    # a good request after all that: stored; nothing of the refused ones is
    r = post(p, "/api/v1/write", rw_body([({"__name__": "hostile_marker"}, [(NOW, 1.0)])]), rw)
    assert r.status == 204
    wait_points(p, "hostile_marker", 1)
    for metric in ("hostile_rw", "hostile_otlp", "hostile_influx_v", "x"):
        assert query(p, metric) == [], metric
    text = p.metrics()
    assert metric_value(text, "lossproof_worker_dead_letters_total") == 0
    assert (
        metric_value(text, "lossproof_ingest_protocol_requests_total", outcome="rejected") >= len(cases) - 1
    )


def test_replays_are_harmless_for_every_protocol(pipeline: Pipeline) -> None:
    p = pipeline
    for protocol in ("prom-rw", "otlp", "influx"):
        path, headers, body = bench_request(protocol, p.key, 20, NOW, series=f"replay-{protocol}")
        for _ in range(3):
            r = post(p, path, body, headers)
            assert r.status in (200, 204), (protocol, r.data)
    checks = [("bench_promrw_m0", {}), ("bench.otlp.m0", {}), ("bench_influx_f0", {"bucket": "bench"})]
    time.sleep(0.5)
    for metric, labels in checks:
        series = wait_points(p, metric, 1, **labels)
        assert series and all(s["points"] == [[NOW, s["points"][0][1]]] for s in series), (metric, series)
    # 20 points per protocol: each once; the two replays of each counted as skipped, not dropped unseen
    skipped = "lossproof_worker_points_skipped_total"
    deadline = time.monotonic() + 30
    while metric_value(p.metrics(), skipped) < 120 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = p.metrics()
    assert metric_value(text, "lossproof_worker_points_total") == 60
    assert metric_value(text, skipped) == 120


def test_remote_write_2_answers_the_written_headers(pipeline: Pipeline) -> None:
    p = pipeline
    req = promrw.RequestV2()
    req.symbols.extend(["", "__name__", "rw2_metric", "job", "j"])
    for i in range(3):
        ts = req.timeseries.add()
        ts.labels_refs.extend([1, 2, 3, 4])
        s = ts.samples.add()
        s.timestamp, s.value = NOW + i, float(i)
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    headers = rw_headers(
        p,
        **{
            "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            "X-Prometheus-Remote-Write-Version": "2.0.0",
        },
    )
    r = post(p, "/api/v1/write", body, headers)
    assert r.status == 204, r.data
    assert r.headers["X-Prometheus-Remote-Write-Samples-Written"] == "3"
    assert r.headers["X-Prometheus-Remote-Write-Histograms-Written"] == "0"
    assert r.headers["X-Prometheus-Remote-Write-Exemplars-Written"] == "0"
    [series] = wait_points(p, "rw2_metric", 3)
    assert series["labels"] == {"job": "j"}


def rw_metadata(entries: list[tuple[int, str, str, str]], body: bytes = b"") -> bytes:
    """A remote write 1.0 body with these (type, family, help, unit) metadata entries, added to
    ``body`` (an uncompressed WriteRequest) if given."""
    req = promrw.WriteRequest.FromString(body)
    for type_, name, help_, unit in entries:
        md = req.metadata.add()
        md.type, md.metric_family_name, md.help, md.unit = type_, name, help_, unit
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def wait_metadata(
    p: Pipeline, want: dict[str, object], timeout: float = 30, key: str | None = None, **params: str
) -> dict[str, object]:
    """Wait until ``/api/v1/metadata`` with ``params`` answers ``want``."""
    deadline = time.monotonic() + timeout
    data: dict[str, object] = {}
    while time.monotonic() < deadline:
        status, body = p.get(f"/api/v1/metadata?{urlencode(params)}", key=key)
        assert status == 200 and body["status"] == "success", body
        data = body["data"]
        if data == want:
            return data
        time.sleep(0.1)
    raise AssertionError(f"metadata {params}: {data} after {timeout}s, want {want}")


def test_remote_write_metadata_is_kept_and_served(pipeline_factory: type[Pipeline]) -> None:
    p = pipeline_factory()
    config_mod.init_data_dir(p.data_dir, p.key, p.port)
    other = p.add_key("other")
    p.start()
    status, body = p.get("/api/v1/metadata")
    assert (status, body) == (200, {"status": "success", "data": {}})
    # metadata next to samples
    samples = bytes(cramjam.snappy.decompress_raw(rw_body([({"__name__": "md_reqs_total"}, [(NOW, 1.0)])])))
    body_ = rw_metadata([(1, "md_reqs_total", "Requests served.", "")], samples)
    assert post(p, "/api/v1/write", body_, rw_headers(p)).status == 204
    wait_points(p, "md_reqs_total", 1)
    counter = {"md_reqs_total": [{"type": "counter", "help": "Requests served.", "unit": ""}]}
    wait_metadata(p, counter)
    # metadata alone, as Prometheus sends it every metadata_config.send_interval: durable like
    # samples, and the last write wins
    for help_ in ("Old help.", "Request latency."):
        body_ = rw_metadata([(3, "md_latency_seconds", help_, "seconds")])
        r = post(p, "/api/v1/write", body_, rw_headers(p))
        assert r.status == 204, r.data
    latency = {"md_latency_seconds": [{"type": "histogram", "help": "Request latency.", "unit": "seconds"}]}
    wait_metadata(p, {**latency, **counter})
    wait_metadata(p, latency, metric="md_latency_seconds")
    wait_metadata(p, latency, limit="1")  # sorted by metric: md_latency_seconds first
    wait_metadata(p, {**latency, **counter}, limit="-1")
    wait_metadata(p, {}, metric="md_nope")
    status, body = p.get("/api/v1/metadata?limit=x")
    assert status == 400 and body["errorType"] == "bad_data", body
    # tenant-scoped: another tenant's metadata of the same metric is its own
    body_ = rw_metadata([(2, "md_reqs_total", "Other tenant.", "")])
    assert post(p, "/api/v1/write", body_, rw_headers(p, Authorization=f"Bearer {other}")).status == 204
    wait_metadata(p, {"md_reqs_total": [{"type": "gauge", "help": "Other tenant.", "unit": ""}]}, key=other)
    wait_metadata(p, {**latency, **counter})
    status, body = p.get("/api/v1/metadata", key="lp_nobody")
    assert status == 401, body
    text = p.metrics()
    acked = metric_value(
        text,
        "lossproof_ingest_protocol_requests_total",
        tenant="default",
        protocol="prom-rw",
        outcome="acked",
    )
    assert acked == 3


def test_log_trouble_is_a_retryable_503_per_protocol(pipeline: Pipeline) -> None:
    p = pipeline
    p.faults({"log.fsync": {"mode": "fail"}})
    rw = post(p, "/api/v1/write", rw_body([({"__name__": "trouble_rw"}, [(NOW, 1.0)])]), rw_headers(p))
    otlp_r = post(
        p,
        "/v1/metrics",
        otlp_gauge("trouble_otlp", NOW, 1.0),
        {"Authorization": f"Bearer {p.key}", "Content-Type": "application/x-protobuf"},
    )
    influx_r = post(p, "/api/v2/write?bucket=b", b"trouble_influx v=1", {"Authorization": f"Token {p.key}"})
    p.faults({})
    # Retry-After per protocol, as chosen from the real clients (docs/protocols.md, "Retry-After")
    assert rw.status == 503, rw.data  # never 429: Prometheus drops 429s by default
    assert "Retry-After" not in rw.headers  # Prometheus retries 5xx without limit on its own backoff
    assert otlp_r.status == 503 and otlp_r.headers["Retry-After"] == "3", otlp_r.data  # never 500
    assert status_pb2.Status.FromString(otlp_r.data).code == 14  # UNAVAILABLE
    assert influx_r.status == 503, influx_r.data
    assert "Retry-After" not in influx_r.headers  # influxdb-client's own schedule: about 4 min
    assert json.loads(influx_r.data)["code"] == "unavailable"
    # once the log is back, the same requests succeed
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = post(p, "/api/v1/write", rw_body([({"__name__": "trouble_rw"}, [(NOW, 1.0)])]), rw_headers(p))
        if r.status == 204:
            break
        time.sleep(0.2)
    assert r.status == 204


def test_ping_and_health_as_influxdb_answers(pipeline: Pipeline) -> None:
    p = pipeline
    r = HTTP.request("GET", p.url + "/ping")
    assert r.status == 204 and r.headers["X-Influxdb-Version"] and r.headers["X-Influxdb-Build"] == "OSS"
    r = HTTP.request("HEAD", p.url + "/ping")
    assert r.status == 204 and r.headers["X-Influxdb-Version"]
    r = HTTP.request("GET", p.url + "/ping?verbose=true")
    assert r.status == 200 and json.loads(r.data)["version"]
    r = HTTP.request("GET", p.url + "/health")
    assert r.status == 200 and json.loads(r.data)["status"] == "pass"


def test_per_tenant_protocol_and_sender_accounting(pipeline: Pipeline) -> None:
    p = pipeline
    body = rw_body([({"__name__": "acct"}, [(NOW, 1.0), (NOW + 1, 2.0)])])
    assert post(p, "/api/v1/write", body, rw_headers(p)).status == 204
    assert post(p, "/api/v1/write", b"junk", rw_headers(p)).status == 400
    text = p.metrics()
    assert (
        metric_value(
            text,
            "lossproof_ingest_protocol_requests_total",
            tenant="default",
            protocol="prom-rw",
            outcome="acked",
        )
        == 1
    )
    assert (
        metric_value(
            text,
            "lossproof_ingest_protocol_requests_total",
            tenant="default",
            protocol="prom-rw",
            outcome="rejected",
        )
        == 1
    )
    assert (
        metric_value(
            text,
            "lossproof_ingest_protocol_points_total",
            tenant="default",
            protocol="prom-rw",
            outcome="acked",
        )
        == 2
    )
    assert (
        metric_value(
            text,
            "lossproof_ingest_sender_points_total",
            sender="Prometheus/2.42.0 127.0.0.1",
            outcome="acked",
        )
        == 2
    )
