"""Hostile and broken requests against the real ingest app, log, worker and store (in this process, on a
real socket): every one gets a clear 4xx (JSON body naming what is wrong), never a 500, a hang, or a 2xx
for data that would then not be stored."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import cramjam
import pytest

from lossproof.protocol import promrw
from lptest.inproc import InProcess
from lptest.pipeline import HTTP, raw_exchange

NOW = int(time.time() * 1000) // 1000 * 1000
INT64_MAX = 2**63 - 1
IDLE_SECONDS = 0.5  # server.body_idle_seconds: a stalled body's 408 comes after this


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    pl = InProcess(
        tmp_path_factory.mktemp("hardening") / "data",
        "lp_test_" + secrets.token_hex(16),
        env={"LOSSPROOF_SERVER_BODY_IDLE_SECONDS": str(IDLE_SECONDS)},
    )
    pl.start()
    yield pl
    pl.stop()


def head(method: str, path: str, headers: dict[str, str | bytes], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x"]
    for k, v in headers.items():
        lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def json_body(resp: bytes) -> Any:
    return json.loads(resp.split(b"\r\n\r\n", 1)[1])


def post_native(p: InProcess, body: dict[str, Any] | bytes, ctype: str = "application/json") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTP.request(
        "POST", p.url + "/v1/reports", body=data, headers={**p.headers(), "Content-Type": ctype}
    )


def point(agent: str, seq: int, v: float = 1.0) -> dict[str, Any]:
    return {"seq": seq, "points": [{"metric": "hardening", "labels": {"agent": agent}, "t": NOW, "v": v}]}


def spool(**over: int) -> dict[str, int]:
    return {
        "pending_reports": 0,
        "pending_bytes": 0,
        "oldest_pending_ms": 0,
        "first_pending_seq": 0,
        "last_seq": 1,
        **over,
    }


# -- native: every value acknowledged is one the store can hold ----------------------------------


@pytest.mark.parametrize("field", ["pending_reports", "pending_bytes", "first_pending_seq", "last_seq"])
def test_spool_counts_beyond_int64_are_400_naming_the_field(p: InProcess, field: str) -> None:
    r = post_native(
        p, {"agent": "big", "reports": [point("big", 1)], "spool": spool(**{field: INT64_MAX + 1})}
    )
    assert r.status == 400, r.data
    assert f"$.spool.{field}" in json.loads(r.data)["error"]


def test_spool_at_int64_max_is_stored(p: InProcess) -> None:
    body = {
        "agent": "max",
        "reports": [point("max", 1)],
        "spool": spool(pending_bytes=INT64_MAX, pending_reports=INT64_MAX),
    }
    r = post_native(p, body)
    assert r.status == 200, r.data
    ledger = p.wait_stored("max", {1})
    assert ledger["spool"]["pending_bytes"] == INT64_MAX


def test_spool_first_pending_above_last_seq_is_400(p: InProcess) -> None:
    r = post_native(
        p, {"agent": "sp", "reports": [point("sp", 1)], "spool": spool(first_pending_seq=9, last_seq=5)}
    )
    assert r.status == 400, r.data
    assert "$.spool.first_pending_seq" in json.loads(r.data)["error"]
    # consistent: pending 3..5 of 5; or nothing pending (0)
    for sp in (spool(first_pending_seq=3, last_seq=5), spool(first_pending_seq=0, last_seq=5)):
        assert post_native(p, {"agent": "sp", "reports": [], "spool": sp}).status == 200


def test_duplicate_seq_in_one_request_is_400(p: InProcess) -> None:
    body = {"agent": "dup", "reports": [point("dup", 7, 1.0), point("dup", 8), point("dup", 7, 2.0)]}
    r = post_native(p, body)
    assert r.status == 400, r.data
    err = json.loads(r.data)["error"]
    assert "duplicate seq 7" in err and "$.reports[2]" in err
    _status, agents = p.get("/v1/agents")
    assert "dup" not in [a["agent"] for a in agents["agents"]]
    # the same report twice is a harmless resend: stored once
    r = post_native(p, {"agent": "dup", "reports": [point("dup", 7), point("dup", 7)]})
    assert r.status == 200, r.data
    assert json.loads(r.data)["acked"] == [[7, 7]]
    p.wait_stored("dup", {7})


def test_deeply_nested_bodies_are_400(p: InProcess) -> None:
    deep_json = b'{"agent":"n","reports":[],"zz":' + b"[" * 10000 + b"]" * 10000 + b"}"
    deep_msgpack = b"\x83\xa5agent\xa1n\xa7reports\x90\xa2zz" + b"\x91" * 10000 + b"\x90"
    for body, ctype in ((deep_json, "application/json"), (deep_msgpack, "application/msgpack")):
        r = post_native(p, body, ctype)
        assert r.status == 400, (ctype, r.data)
        assert "nested too deeply" in json.loads(r.data)["error"]
    otlp_deep = b'{"resourceMetrics":[{"zz":' + b"[" * 10000 + b"]" * 10000 + b"}]}"
    r = HTTP.request(
        "POST",
        p.url + "/v1/metrics",
        body=otlp_deep,
        headers={"Authorization": f"Bearer {p.key}", "Content-Type": "application/json"},
    )
    assert r.status == 400, r.data


# -- headers that are not UTF-8 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/v1/reports"),
        ("POST", "/api/v1/write"),
        ("POST", "/v1/metrics"),
        ("POST", "/api/v2/write?bucket=b"),
        ("GET", "/v1/agents"),
        ("GET", "/v1/query?metric=m"),
        ("GET", "/api/v1/query?query=up"),
    ],
)
def test_non_utf8_authorization_is_401(p: InProcess, method: str, path: str) -> None:
    hdrs: dict[str, str | bytes] = {
        "Connection": "close",
        "Content-Type": "application/json",
        "Content-Length": "2",
        "Authorization": b"Bearer \xff\xfe",
    }
    resp, _ = raw_exchange(p.port, head(method, path, hdrs, b"{}"))
    assert status_of(resp) == 401, resp[:300]


def test_non_utf8_user_agent_does_not_break_metrics(p: InProcess) -> None:
    body = cramjam.snappy.compress_raw(_rw_v1([({"__name__": "ua_metric"}, NOW, 1.0)]))
    hdrs: dict[str, str | bytes] = {
        "Connection": "close",
        "Authorization": f"Bearer {p.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "User-Agent": b"bad\xff\xfeagent" + b"x" * 500,
        "Content-Length": str(len(body)),
    }
    resp, _ = raw_exchange(p.port, head("POST", "/api/v1/write", hdrs, bytes(body)))
    assert status_of(resp) == 204, resp[:300]
    for _ in range(2):  # and it stays scrapable, in both views
        assert 'sender="bad\ufffd\ufffdagentxx' in p.metrics()
        assert "lossproof_ingest_sender_points_total" in p.metrics(public=True)


# -- HTTP methods, 404s --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("PUT", "/v1/reports", "POST"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/api/v1/query", "GET"),
        ("GET", "/api/v1/write", "POST"),
    ],
)
def test_wrong_method_is_a_json_405_with_allow(p: InProcess, method: str, path: str, allow: str) -> None:
    r = HTTP.request(method, p.url + path)
    assert r.status == 405, r.data
    assert r.headers["Content-Type"].startswith("application/json")
    assert allow in r.headers["Allow"]
    assert "error" in json.loads(r.data)


def test_unknown_path_is_a_json_404(p: InProcess) -> None:
    r = HTTP.request("GET", p.url + "/no/such/thing")
    assert r.status == 404
    assert r.headers["Content-Type"].startswith("application/json")
    assert "error" in json.loads(r.data)


# -- remote write --------------------------------------------------------------------------------


def _rw_v1(series: list[tuple[dict[str, str], int, float]]) -> bytes:
    req = promrw.WriteRequest()
    for labels, t, v in series:
        ts = req.timeseries.add()
        for k, val in labels.items():
            lb = ts.labels.add()
            lb.name, lb.value = k, val
        ts.samples.add(timestamp=t, value=v)
    return bytes(req.SerializeToString())


def _rw_v2(name: str, t: int, v: float) -> bytes:
    req = promrw.RequestV2()
    req.symbols.extend(["", "__name__", name])
    ts = req.timeseries.add()
    ts.labels_refs.extend([1, 2])
    ts.samples.add(timestamp=t, value=v)
    return bytes(req.SerializeToString())


def _rw(p: InProcess, body: bytes, proto: str | None) -> Any:
    ctype = "application/x-protobuf" + (f";proto={proto}" if proto else "")
    return HTTP.request(
        "POST",
        p.url + "/api/v1/write",
        body=bytes(cramjam.snappy.compress_raw(body)),
        headers={"Authorization": f"Bearer {p.key}", "Content-Type": ctype, "Content-Encoding": "snappy"},
    )


def test_remote_write_body_of_the_other_version_is_400(p: InProcess) -> None:
    r = _rw(p, _rw_v1([({"__name__": "rw_swapped"}, NOW, 1.0)]), promrw.V2)
    assert r.status == 400, r.data
    assert "looks like a prometheus.WriteRequest" in json.loads(r.data)["error"]
    for proto in (promrw.V1, None):
        r = _rw(p, _rw_v2("rw_swapped", NOW, 1.0), proto)
        assert r.status == 400, r.data
        assert "looks like a io.prometheus.write.v2.Request" in json.loads(r.data)["error"]
    # an empty request is still fine (nothing to store)
    assert _rw(p, b"", promrw.V2).status == 204
    assert _rw(p, b"", None).status == 204


def test_remote_write_empty_labels_do_not_count(p: InProcess) -> None:
    labels = {"__name__": "rw_empty_labels", "job": "j", **{f"e{i}": "" for i in range(100)}}
    r = _rw(p, _rw_v1([(labels, NOW, 3.0)]), None)
    assert r.status == 204, r.data
    labels = {"__name__": "rw_empty_labels", **{f"l{i}": "x" for i in range(65)}}
    r = _rw(p, _rw_v1([(labels, NOW, 3.0)]), None)
    assert r.status == 400, r.data
    assert "65 labels" in json.loads(r.data)["error"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, q = p.get(f"/v1/query?metric=rw_empty_labels&from={NOW}&to={NOW}")
        if status == 200 and q["series"]:
            break
        time.sleep(0.1)
    assert q["series"] == [{"metric": "rw_empty_labels", "labels": {"job": "j"}, "points": [[NOW, 3.0]]}]


# -- Influx ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,says",
    [
        (b"m v=1 -01", "line 1: timestamp -01"),
        (b"m v=1 1\nm v=1 0999999999999999999", "line 2: timestamp 0999999999999999999"),
        (b"m v=1e999", "float64 range"),
        (b"m v=-1e999,w=1", "float64 range"),
        (b"m v=9223372036854775808i", "integer 9223372036854775808i"),
        (b"m v=-9223372036854775809i", "integer -9223372036854775809i"),
        (b"m v=18446744073709551616u", "unsigned integer 18446744073709551616u"),
    ],
)
def test_influx_values_out_of_range_are_400(p: InProcess, line: bytes, says: str) -> None:
    r = HTTP.request(
        "POST",
        p.url + "/api/v2/write?bucket=b&precision=s",
        body=line,
        headers={"Authorization": f"Token {p.key}"},
    )
    assert r.status == 400, r.data
    assert says in json.loads(r.data)["message"]


# -- connections: stalled bodies, oversized ones, Expect: 100-continue ---------------------------


def test_stalled_body_gets_408_and_the_connection_is_closed(p: InProcess) -> None:
    hdrs: dict[str, str | bytes] = {
        "Authorization": f"Bearer {p.key}",
        "Content-Type": "application/json",
        "Content-Length": "100",
    }
    resp, took = raw_exchange(p.port, head("POST", "/v1/reports", hdrs, b'{"agent":'), timeout=30)
    assert status_of(resp) == 408, resp[:300]
    assert not resp.endswith(b"<<TIMEOUT>>")  # closed by the server
    assert "request body incomplete" in json_body(resp)["error"]
    assert IDLE_SECONDS <= took < 20


def test_oversized_content_length_gets_413_and_the_connection_is_closed(p: InProcess) -> None:
    for path, hdr in (("/v1/reports", {}), ("/api/v1/write", {"Content-Encoding": "snappy"})):
        hdrs: dict[str, str | bytes] = {
            "Authorization": f"Bearer {p.key}",
            "Content-Type": "application/json" if path == "/v1/reports" else "application/x-protobuf",
            "Content-Length": "1000000000",
            **hdr,
        }
        resp, took = raw_exchange(p.port, head("POST", path, hdrs, b"x" * 1000), timeout=8)
        assert status_of(resp) == 413, resp[:300]
        assert not resp.endswith(b"<<TIMEOUT>>"), (path, resp)
        assert b"Connection: close" in resp
        assert took < 5


def test_expect_100_continue_checks_the_key_first(p: InProcess) -> None:
    for path in ("/v1/reports", "/api/v1/write", "/write?db=d"):
        hdrs: dict[str, str | bytes] = {
            "Authorization": "Bearer wrong",
            "Content-Type": "application/json",
            "Content-Length": "100",
            "Expect": "100-continue",
        }
        resp, took = raw_exchange(p.port, head("POST", path, hdrs), timeout=8)
        assert status_of(resp) == 401, (path, resp[:300])
        assert b"100 Continue" not in resp
        assert not resp.endswith(b"<<TIMEOUT>>") and took < 5
    # the right key: 100 Continue, then the body, then the answer
    body = json.dumps({"agent": "cont", "reports": [point("cont", 1)]}).encode()
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.settimeout(10)
        hdrs = {
            "Authorization": f"Bearer {p.key}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Expect": "100-continue",
            "Connection": "close",
        }
        s.sendall(head("POST", "/v1/reports", hdrs))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert status_of(out) == 200, out
    assert json_body(out)["acked"] == [[1, 1]]


def test_tenant_key_naming_another_tenant_is_403(p: InProcess) -> None:
    r = HTTP.request(
        "POST",
        p.url + "/v1/reports",
        body=json.dumps({"agent": "t", "reports": [point("t", 1)]}).encode(),
        headers=p.headers(**{"X-Lossproof-Tenant": "other"}),
    )
    assert r.status == 403, r.data


# -- issue 20: acknowledged, then dead-lettered or stored out of bounds ----------------------------


def _custom_histogram(name: str, offset: int) -> bytes:
    req = promrw.WriteRequest()
    ts = req.timeseries.add()
    lb = ts.labels.add()
    lb.name, lb.value = "__name__", name
    h = ts.histograms.add()
    h.schema, h.count_int, h.sum, h.timestamp = -53, 3, 1.0, NOW
    h.custom_values.extend([1.0, 2.0, 5.0])
    span = h.positive_spans.add()
    span.offset, span.length = offset, 2
    h.positive_deltas.extend([1, 1])  # absolute 1, 2
    return bytes(req.SerializeToString())


@pytest.mark.parametrize("offset", [-5, -1], ids=["worker-IndexError", "wrong-le"])
def test_native_histogram_with_a_negative_span_offset_is_400(p: InProcess, offset: int) -> None:
    r = _rw(p, _custom_histogram(f"hist_neg{-offset}", offset), None)
    assert r.status == 400, r.data
    assert "negative offset" in json.loads(r.data)["error"]
    # a valid one is stored, under the bounds its spans name
    r = _rw(p, _custom_histogram(f"hist_ok{-offset}", 1), None)
    assert r.status == 204, r.data
    deadline = time.monotonic() + 30
    series: list[Any] = []
    while time.monotonic() < deadline and not series:
        status, q = p.get(f"/v1/query?metric=hist_ok{-offset}_bucket&from={NOW}&to={NOW}")
        series = q["series"] if status == 200 else []
        time.sleep(0.05)
    assert {s["labels"]["le"]: s["points"][0][1] for s in series} == {"2": 1.0, "5": 3.0, "+Inf": 3.0}


def test_otlp_json_with_a_lone_surrogate_is_400_with_a_status(p: InProcess) -> None:
    r = HTTP.request(
        "POST",
        p.url + "/v1/metrics",
        body=b'{"resourceMetrics":"\\ud800"}',
        headers={"Authorization": f"Bearer {p.key}", "Content-Type": "application/json"},
    )
    assert r.status == 400, r.data
    assert json.loads(r.data)["code"] == 3


def _otlp_scope(scope: str) -> bytes:
    return json.dumps(
        {
            "resourceMetrics": [
                {
                    "scopeMetrics": [
                        {
                            "scope": {"name": scope},
                            "metrics": [
                                {
                                    "name": "scoped",
                                    "gauge": {
                                        "dataPoints": [{"timeUnixNano": str(NOW * 10**6), "asDouble": 1}]
                                    },
                                }
                            ],
                        }
                    ]
                }
            ]
        }
    ).encode()


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/api/v2/write?bucket=b&precision=s", b"m v=" + b"9" * 250 + b"e99", "float64 range"),
        ("/api/v2/write?bucket=b&precision=s", b"m" * 1020 + b" " + b"f" * 1000 + b"=1", "over 1024"),
        (
            "/write?db=d&rp=r&precision=s",
            b"m," + b",".join(b"t%d=v" % i for i in range(63)) + b" v=1",
            "65 labels",
        ),
        ("/write?db=" + "d" * 5000 + "&precision=s", b"m v=1", "db of 5000 characters"),
        ("/v1/metrics", _otlp_scope("s" * 100_000), "at most 4096"),
    ],
    ids=["influx-inf", "influx-name", "influx-rp-labels", "influx-db", "otlp-scope"],
)
def test_documented_limits_are_enforced_before_the_ack(
    p: InProcess, path: str, body: bytes, says: str
) -> None:
    auth = f"Bearer {p.key}" if path.startswith("/v1/") else f"Token {p.key}"
    ctype = "application/json" if path.startswith("/v1/") else "text/plain"
    r = HTTP.request("POST", p.url + path, body=body, headers={"Authorization": auth, "Content-Type": ctype})
    assert r.status == 400, r.data[:300]
    assert says in r.data.decode(), r.data[:300]


def test_a_point_time_in_seconds_is_400_with_the_reason(p: InProcess) -> None:
    seconds = NOW // 1000
    body = {"agent": "secs", "reports": [{"seq": 1, "points": [{"metric": "m", "t": seconds, "v": 1.0}]}]}
    r = post_native(p, body)
    assert r.status == 400, r.data
    error = json.loads(r.data)["error"]
    assert "in seconds" in error and "$.reports[0].points[0].t" in error
    assert all(a["agent"] != "secs" for a in p.get("/v1/agents")[1]["agents"])  # touched nothing
