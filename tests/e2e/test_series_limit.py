"""The per-tenant series limit (issue 15, "a per-tenant limit that answers a clear 4xx"): a request
that would take its tenant past the limit is refused with 400 on every protocol, nothing of it is
stored, series the tenant has are always accepted, and the limit survives a restart (the series come
from the store).

On the real app, embedded log (with fault hooks), worker and store in this process."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from lossproof import config as config_mod
from lptest.inproc import InProcess
from lptest.pipeline import HTTP, report
from lptest.proto import metric_value, rw_body

NOW = int(time.time() * 1000) // 1000 * 1000
LIMIT = 6  # server.max_series_per_tenant, for "default"


def start(data_dir: Path, key: str) -> InProcess:
    p = InProcess(data_dir, key, env={"LOSSPROOF_SERVER_MAX_SERIES_PER_TENANT": str(LIMIT)}, faults=True)
    return p


@pytest.fixture
def p(tmp_path: Path) -> Iterator[InProcess]:
    pl = start(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    pl.big_key = pl.add_key("bigcorp")  # type: ignore[attr-defined]
    with config_mod.editing(pl.data_dir) as cfg:
        cfg.tenants["bigcorp"].max_series = 0  # no limit for this one
    pl.start()
    yield pl
    pl.stop()


def rw(p: InProcess, names: list[str], t: int = NOW, key: str | None = None) -> tuple[int, bytes]:
    body = rw_body([({"__name__": "lim_rw", "s": n}, [(t, 1.0)]) for n in names])
    headers = {
        "Authorization": f"Bearer {key or p.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
    }
    r = HTTP.request("POST", p.url + "/api/v1/write", body=body, headers=headers)
    return r.status, r.data


def otlp(p: InProcess, names: list[str]) -> tuple[int, bytes]:
    req = ExportMetricsServiceRequest()
    g = req.resource_metrics.add().scope_metrics.add().metrics.add()
    g.name = "lim_otlp"
    for n in names:
        dp = g.gauge.data_points.add()
        dp.time_unix_nano, dp.as_double = NOW * 1_000_000, 1.0
        a = dp.attributes.add()
        a.key, a.value.string_value = "s", n
    headers = {"Authorization": f"Bearer {p.key}", "Content-Type": "application/x-protobuf"}
    r = HTTP.request("POST", p.url + "/v1/metrics", body=req.SerializeToString(), headers=headers)
    return r.status, r.data


def influx(p: InProcess, names: list[str]) -> tuple[int, bytes]:
    body = "\n".join(f"lim_influx,s={n} value=1 {NOW}" for n in names).encode()
    r = HTTP.request(
        "POST", p.url + "/write?db=x&precision=ms", body=body, headers={"Authorization": f"Token {p.key}"}
    )
    return r.status, r.data


def stored(p: InProcess, metric: str) -> set[str]:
    status, body = p.get(f"/v1/query?metric={metric}&from=0&to=4102444800000")
    assert status == 200, body
    return {s["labels"].get("s", s["labels"].get("i", "")) for s in body["series"]}


def wait_series(p: InProcess, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while metric_value(p.metrics(), "lossproof_store_series", tenant="default") < n:
        assert time.monotonic() < deadline, f"the store has fewer than {n} series of 'default'"
        time.sleep(0.1)


def test_every_protocol_is_refused_past_the_limit_and_known_series_always_pass(p: InProcess) -> None:
    assert rw(p, ["a", "b"])[0] == 204
    assert otlp(p, ["a"])[0] == 200
    assert influx(p, ["a"])[0] == 204
    r = p.post_reports("lim-agent", [report(1, n=2, metric="lim_native")])  # series i=0, i=1
    assert r.status == 200, r.data
    # 6 series now: the limit. One more, on any protocol, is refused whole
    status, body = rw(p, ["a", "c"], t=NOW + 1000)
    assert status == 400 and b"series limit" in body and b"would add 1 new" in body, body
    status, body = otlp(p, ["z"])
    assert status == 400 and b"series limit" in body, body
    status, body = influx(p, ["a", "z"])
    assert status == 400 and b"series limit" in body, body
    r = p.post_reports("lim-agent", [report(2, n=3, metric="lim_native")])  # i=2 is new
    assert r.status == 400 and json.loads(r.data)["reason"] == "series_limit", r.data
    # known series are accepted as ever
    assert rw(p, ["a", "b"], t=NOW + 2000)[0] == 204
    r = p.post_reports("lim-agent", [report(3, n=2, metric="lim_native")])
    assert r.status == 200, r.data
    p.wait_stored("lim-agent", {1, 3})
    wait_series(p, LIMIT)
    assert stored(p, "lim_rw") == {"a", "b"}  # "c" was never stored, nor the "a" beside it:
    status, body = p.get(f"/v1/query?metric=lim_rw&from={NOW + 1000}&to={NOW + 1000}")
    assert body["series"] == [], body
    assert stored(p, "lim_otlp") == {"a"} and stored(p, "lim_influx") == {"a"}
    ops = p.metrics()
    assert metric_value(ops, "lossproof_ingest_series_limited_requests_total", tenant="default") == 4
    assert metric_value(ops, "lossproof_ingest_series_limited_series_total", protocol="prom-rw") == 1
    assert metric_value(ops, "lossproof_store_series", tenant="default") == LIMIT
    status, health = p.get("/ui/api/health")  # the dashboard shows "6 of 6 allowed"
    assert status == 200 and (health["series"], health["series_limit"]) == (LIMIT, LIMIT), health
    # another tenant has its own limit (none here)
    assert rw(p, [str(i) for i in range(20)], key=p.big_key)[0] == 204  # type: ignore[attr-defined]


def test_the_limit_counts_what_is_stored_across_a_restart(p: InProcess) -> None:
    assert rw(p, ["a", "b", "c", "d", "e"])[0] == 204
    wait_series(p, 5)
    p.stop()
    again = start(p.data_dir, p.key)
    again.start()
    try:
        # the new process knows the 5 stored series from the store: 1 more fits, 2 do not
        status, body = rw(again, ["a", "x", "y"])
        assert status == 400 and b"has 5 series" in body, body
        assert rw(again, ["a", "x"])[0] == 204
        assert rw(again, ["y"])[0] == 400
    finally:
        again.stop()


def test_series_of_a_request_the_log_refused_do_not_count(p: InProcess) -> None:
    p.faults({"log.fsync": {"mode": "fail"}})
    assert rw(p, ["a", "b", "c", "d", "e", "f"])[0] == 503
    p.faults({})
    # nothing was acknowledged, so none of those 6 took a place under the limit
    assert rw(p, ["u", "v", "w", "x", "y", "z"])[0] == 204
