"""The agent's relay in this process, in front of the real pipeline in this process (InProcess): bad
input gets exactly ingest's answer and is never acknowledged, a full spool is a 503 each protocol's
clients retry, each local sender is its own agent in the ledger, and the config's checks."""

from __future__ import annotations

import errno
import gzip
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cramjam
import msgspec
import pytest
import urllib3

from lossproof.agent import Agent, AgentConfig, load_config
from lossproof.agent.relay import product_of
from lossproof.agent.spool.format import read_all
from lossproof.config import ConfigError
from lossproof.protocol import promrw
from lptest.agent import free_port, scrape, write_config
from lptest.cli import run_cli
from lptest.inproc import InProcess
from lptest.proto import query, rw_body

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=30), retries=False)
NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    p = InProcess(tmp_path_factory.mktemp("relay") / "data", "lp_test_" + secrets.token_hex(16))
    p.start()
    yield p
    p.stop()


def agent_config(tmp: Path, primary: str, key: str, **relay: Any) -> AgentConfig:
    return AgentConfig(
        agent_id="relay-test",
        api_key=key,
        primary_url=primary,
        spool_dir=tmp / "spool",
        interval_seconds=0.2,
        statsd_port=0,
        metrics_port=free_port(),
        collect_host=False,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.5,
        shutdown_drain_seconds=1,
        relay={"listen": "127.0.0.1:0", **relay},
    )


@pytest.fixture
def agent(tmp_path: Path, pipe: InProcess) -> Iterator[Agent]:
    a = Agent(agent_config(tmp_path, pipe.url, pipe.key))
    a.start()
    yield a
    a.stop()


def relay_url(a: Agent) -> str:
    return f"http://127.0.0.1:{a.relay_port}"


def spooled_samples(spool_dir: Path) -> list[dict[str, Any]]:
    """Every point in every local sender's spool."""
    out: list[dict[str, Any]] = []
    for d in sorted((spool_dir / "relay").glob("*/*")):
        for _, _, payload in read_all(d):
            out.extend(msgspec.msgpack.decode(payload)["points"])
    return out


def otlp_json(value: float, t_ms: int = NOW_MS, name: str = "relay.gauge") -> bytes:
    point = {"timeUnixNano": str(t_ms * 1_000_000), "asDouble": value}
    metric = {"name": name, "gauge": {"dataPoints": [point]}}
    return msgspec.json.encode({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})


RW = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
OTLP_JSON = {"Content-Type": "application/json"}
OTLP_PB = {"Content-Type": "application/x-protobuf"}

# (path, headers, body): requests every parser refuses, in each protocol's ways
BAD: list[tuple[str, dict[str, str], bytes]] = [
    ("/v1/metrics", OTLP_JSON, b"{"),
    ("/v1/metrics", OTLP_PB, b"\xff\xff\xff"),
    ("/v1/metrics", {"Content-Type": "text/plain"}, b"x"),
    ("/v1/metrics", {**OTLP_JSON, "Content-Encoding": "gzip"}, b"not gzip"),
    ("/v1/metrics", {**OTLP_JSON, "Content-Encoding": "br"}, otlp_json(1)),
    ("/v1/metrics", OTLP_JSON, otlp_json(1, t_ms=5_000_000_000_000)),
    ("/api/v1/write", RW, b"not snappy at all"),
    ("/api/v1/write", RW, bytes(cramjam.snappy.compress_raw(b"\xff\xff"))),
    ("/api/v1/write", {**RW, "Content-Encoding": "gzip"}, rw_body([({"__name__": "x"}, [(NOW_MS, 1)])])),
    ("/api/v1/write", {**RW, "Content-Type": "application/json"}, b"{}"),
    ("/api/v1/write", RW, rw_body([({"job": "no-name"}, [(NOW_MS, 1)])])),
    ("/api/v1/write", RW, rw_body([({"__name__": "x"}, [(-5, 1)])])),
    ("/write?db=d", {}, b"cpu v=NaN\n"),
    ("/write", {}, b"cpu v=1\n"),
    ("/write?db=d&precision=fortnight", {}, b"cpu v=1\n"),
    ("/write?db=d", {}, b"cpu,host= v=1\n"),
    ("/api/v2/write?bucket=b", {}, b"garbage\n"),
    ("/api/v2/write", {}, b"cpu v=1\n"),
    ("/api/v2/write?bucket=b&precision=m", {}, b"cpu v=1\n"),
    ("/api/v2/write?bucket=b", {"Content-Encoding": "gzip"}, b"\x1f\x8b broken"),
]


@pytest.mark.parametrize(("path", "headers", "body"), BAD, ids=[f"{p} {b[:12]!r}" for p, _, b in BAD])
def test_bad_input_gets_ingests_answer_and_nothing_is_spooled(
    pipe: InProcess, agent: Agent, path: str, headers: dict[str, str], body: bytes
) -> None:
    with_key = {**pipe.headers(), **headers}
    direct = HTTP.request("POST", pipe.url + path, body=body, headers=with_key)
    relayed = HTTP.request("POST", relay_url(agent) + path, body=body, headers=headers)
    assert 400 <= direct.status < 500, direct.data
    assert (relayed.status, relayed.data) == (direct.status, direct.data)
    assert relayed.headers.get("Content-Type") == direct.headers.get("Content-Type")
    for h in ("Retry-After", "X-Influxdb-Version"):
        assert relayed.headers.get(h) == direct.headers.get(h)
    assert agent.spool is not None
    assert spooled_samples(agent.config.spool_dir) == []
    protocol = "otlp" if path == "/v1/metrics" else "prom-rw" if path.startswith("/api/v1") else "influx"
    m = scrape_agent(agent)
    assert m[f'lossproof_agent_relay_requests_total{{protocol="{protocol}",status="{relayed.status}"}}'] == 1
    assert m.get(f'lossproof_agent_relay_points_total{{outcome="acked",protocol="{protocol}"}}', 0) == 0


def scrape_agent(a: Agent) -> dict[str, float]:
    assert a.metrics_port is not None
    return scrape(a.metrics_port)


def test_each_protocol_is_spooled_then_stored_under_its_own_sender(pipe: InProcess, agent: Agent) -> None:
    url = relay_url(agent)
    t = NOW_MS - 60_000
    r = HTTP.request(
        "POST",
        url + "/v1/metrics",
        body=gzip.compress(otlp_json(7.5, t, "relay.otlp")),
        headers={**OTLP_JSON, "Content-Encoding": "gzip", "User-Agent": "OTel-OTLP-Exporter-Python/1.30.0"},
    )
    assert r.status == 200 and r.headers["Content-Type"] == "application/json", r.data
    r = HTTP.request(
        "POST",
        url + "/api/v1/write",
        body=rw_body([({"__name__": "relay_rw", "job": "j"}, [(t, 1.0), (t + 1000, 2.0)])]),
        headers={**RW, "User-Agent": "Prometheus/2.42.0"},
    )
    assert r.status == 204 and r.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0", r.data
    r = HTTP.request(
        "POST",
        url + "/api/v2/write?bucket=bk&precision=ms",
        body=f"relay_influx,host=h v=3,s=\"text\" {t}\n".encode(),
        headers={"User-Agent": "influxdb-client-python/1.50.0"},
    )
    assert r.status == 204, r.data
    senders = {
        "relay-test/otlp/OTel-OTLP-Exporter-Python": 1,
        "relay-test/prom-rw/Prometheus": 1,
        "relay-test/influx/influxdb-client-python": 1,
    }
    for sender, seqs in senders.items():
        ledger = pipe.wait_stored(quote(sender, safe=""), set(range(1, seqs + 1)))
        assert ledger["lost"] == [] and ledger["missing"] == [], ledger
    got = {
        (s["metric"], p[1])
        for name in ("relay.otlp", "relay_rw", "relay_influx_v")
        for s in series(pipe, name)
        for p in s["points"]
    }
    assert got == {("relay.otlp", 7.5), ("relay_rw", 1.0), ("relay_rw", 2.0), ("relay_influx_v", 3.0)}
    influx = series(pipe, "relay_influx_v")
    assert influx[0]["labels"] == {"bucket": "bk", "host": "h"}  # as ingest stores it: no agent labels
    ok, health = agent.health()
    assert ok and health["relay"]["senders"] == 3, health
    m = scrape_agent(agent)
    assert m['lossproof_agent_relay_samples_spooled_total{protocol="prom-rw"}'] == 2
    assert m['lossproof_agent_relay_points_total{outcome="acked",protocol="influx"}'] == 1
    assert m["lossproof_agent_relay_senders"] == 3


def series(p: InProcess, metric: str) -> list[dict[str, Any]]:
    return query(p, metric)  # type: ignore[arg-type]


def test_a_full_spool_answers_503_with_each_protocols_retry_after(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing is ever acknowledged upstream
    a = Agent(agent_config(tmp_path, dead, "k", max_spool_bytes=4096))
    a.start()
    try:
        url = relay_url(a)
        sent: dict[str, list[float]] = {"otlp": [], "prom-rw": [], "influx": []}
        answers: dict[str, list[urllib3.BaseHTTPResponse]] = {k: [] for k in sent}
        for i in range(200):
            v = float(i)
            reqs = {
                "otlp": ("/v1/metrics", OTLP_JSON, otlp_json(v, NOW_MS + i, "full.otlp")),
                "prom-rw": ("/api/v1/write", RW, rw_body([({"__name__": "full_rw"}, [(NOW_MS + i, v)])])),
                "influx": ("/write?db=d&precision=ms", {}, f"full_influx v={v} {NOW_MS + i}\n".encode()),
            }
            for proto, (path, headers, body) in reqs.items():
                r = HTTP.request("POST", url + path, body=body, headers=headers)
                answers[proto].append(r)
                if r.status < 300:
                    sent[proto].append(v)
        for proto, rs in answers.items():
            statuses = {r.status for r in rs}
            assert 503 in statuses and statuses <= {200, 204, 503}, (proto, statuses)
            full = next(r for r in rs if r.status == 503)
            assert full.headers.get("Retry-After") == {"otlp": "3"}.get(proto), proto
            assert b"agent spool cannot accept data durably" in full.data, full.data
        m = scrape_agent(a)
        assert m['lossproof_agent_relay_requests_total{protocol="otlp",status="503"}'] >= 1
        assert m.get('lossproof_agent_reports_dropped_total{reason="spool_full"}', 0) == 0
    finally:
        a.stop()
    # exactly what was answered 2xx is in the spools: nothing refused slipped in, nothing dropped
    spooled = sorted(p["v"] for p in spooled_samples(tmp_path / "spool"))
    assert spooled == sorted(v for vs in sent.values() for v in vs)


def test_a_relay_key_is_required_when_set(tmp_path: Path, pipe: InProcess) -> None:
    a = Agent(agent_config(tmp_path, pipe.url, pipe.key, api_key="local-secret"))
    a.start()
    try:
        url = relay_url(a)
        r = HTTP.request("POST", url + "/api/v2/write?bucket=b", body=b"k v=1\n")
        assert r.status == 401 and r.json()["code"] == "unauthorized", r.data
        r = HTTP.request("POST", url + "/v1/metrics", body=otlp_json(1), headers={**OTLP_JSON})
        assert r.status == 401 and r.json()["code"] == 16, r.data
        ok = {"Authorization": "Token local-secret"}
        r = HTTP.request("POST", url + "/api/v2/write?bucket=b", body=b"k v=1\n", headers=ok)
        assert r.status == 204, r.data
        r = HTTP.request("POST", url + "/write?db=d&u=x&p=local-secret", body=b"k v=1\n")
        assert r.status == 204, r.data
    finally:
        a.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/write?db=d", f"early v=1 {NOW_MS}\n".encode()),  # ms read as ns: 1970-01-01T00:30
        ("/api/v1/write", rw_body([({"__name__": "early"}, [(NOW_MS // 1000, 1)])])),  # seconds
    ],
    ids=["influx-ms-as-ns", "remote-write-seconds"],  # the bodies hold the time: ids must not
)
def test_a_point_the_native_protocol_would_refuse_is_refused_before_the_2xx(
    agent: Agent, path: str, body: bytes
) -> None:
    """Ingest takes third-party points from 1970 on; the native protocol, which the relay spools
    in, refuses a time before 1973 (most likely seconds). Acknowledged, the report would be refused
    upstream and lost: the relay answers 400 instead, and spools nothing."""
    headers = RW if path.startswith("/api/v1") else {}
    r = HTTP.request("POST", relay_url(agent) + path, body=body, headers=headers)
    assert r.status == 400 and b"before 1973" in r.data, r.data
    assert spooled_samples(agent.config.spool_dir) == []


def test_ping_and_unknown_paths(agent: Agent) -> None:
    r = HTTP.request("GET", relay_url(agent) + "/ping")
    assert r.status == 204 and r.headers["X-Influxdb-Version"]
    r = HTTP.request("GET", relay_url(agent) + "/nope")
    assert r.status == 404 and "error" in r.json()


def test_a_body_over_the_relays_limit_is_413(tmp_path: Path, pipe: InProcess) -> None:
    a = Agent(agent_config(tmp_path, pipe.url, pipe.key, max_body_bytes=1024))
    a.start()
    try:
        r = HTTP.request("POST", relay_url(a) + "/write?db=d", body=b"x v=1\n" * 1000)
        assert r.status == 413, r.data
    finally:
        a.stop()
    assert spooled_samples(tmp_path / "spool") == []


@pytest.mark.parametrize(
    ("ua", "product"),
    [
        ("OTel-OTLP-Exporter-Python/1.25.0", "OTel-OTLP-Exporter-Python"),
        ("Prometheus/2.42.0", "Prometheus"),
        ("Telegraf/1.28.1 Go/1.21", "Telegraf"),
        ("", "unknown"),
        ("../../etc", "unknown"),
        ("a b/c", "a"),
        ("x" * 100 + "/1", "x" * 64),
        ("naïve/1", "na_ve"),
    ],
)
def test_product_of_user_agent(ua: str, product: str) -> None:
    assert product_of(ua) == product


def test_relay_config_checks(tmp_path: Path) -> None:
    base = {"api_key": "k", "primary_url": "http://127.0.0.1:1", "spool_dir": str(tmp_path / "s")}
    path = tmp_path / "agent.toml"
    for relay, msg in [
        ({"listen": "4318"}, "relay.listen: '4318': expected host:port"),
        ({"listen": "127.0.0.1:70000"}, "expected host:port"),
        ({"listen": "0.0.0.0:4318"}, "is not a loopback address: set api_key or api_key_env"),
        ({"listen": "127.0.0.1:0", "api_key": "a", "api_key_env": "B"}, "at most one of api_key"),
        ({"listen": "127.0.0.1:0", "api_key_env": "LP_NOT_SET_ANYWHERE"}, "LP_NOT_SET_ANYWHERE is not set"),
        ({"listen": "127.0.0.1:0", "bogus": 1}, "relay.bogus: unknown key"),
    ]:
        write_config(path, **base, relay=relay)
        with pytest.raises(ConfigError, match=msg):
            load_config(path, env={})
    write_config(path, **base, relay={"listen": "0.0.0.0:4318", "api_key": "x"})
    assert load_config(path).relay.port == 4318
    write_config(path, **base)
    assert load_config(path).relay.listen == ""  # off by default


def test_a_port_in_use_is_a_config_error(tmp_path: Path, pipe: InProcess, agent: Agent) -> None:
    a = Agent(agent_config(tmp_path / "b", pipe.url, pipe.key, listen=f"127.0.0.1:{agent.relay_port}"))
    with pytest.raises(ConfigError, match=r"relay.listen 127.0.0.1:\d+: cannot listen"):
        a.start()


def test_local_senders_are_bounded(tmp_path: Path, pipe: InProcess) -> None:
    a = Agent(agent_config(tmp_path, pipe.url, pipe.key, max_senders=2))
    a.start()
    try:
        for i in range(4):
            r = HTTP.request(
                "POST",
                relay_url(a) + "/write?db=d&precision=ms",
                body=f"bounded v={i} {NOW_MS}\n".encode(),
                headers={"User-Agent": f"client{i}/1"},
            )
            assert r.status == 204
        dirs = sorted(d.name for d in (tmp_path / "spool" / "relay" / "influx").iterdir())
        assert dirs == ["client0", "client1", "other"]
        # the two senders past the bound share one spool: its seqs 1 and 2
        pipe.wait_stored(quote("relay-test/influx/other", safe=""), {1, 2})
    finally:
        a.stop()


def test_a_failing_disk_answers_503_and_acknowledges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    a = Agent(agent_config(tmp_path, dead, "k"))
    a.start()
    try:
        url = relay_url(a) + "/write?db=d&precision=ms"
        assert HTTP.request("POST", url, body=f"disk v=1 {NOW_MS}\n".encode()).status == 204
        real = os.fsync

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken)  # as test_spool.py: the disk refuses every fsync
        r = HTTP.request("POST", url, body=f"disk v=2 {NOW_MS + 1}\n".encode())
        assert r.status == 503 and "Retry-After" not in r.headers, r.data
        assert b"agent spool cannot accept data durably" in r.data and b"Input/output error" in r.data
        otlp = otlp_json(3, NOW_MS + 2)
        r = HTTP.request("POST", relay_url(a) + "/v1/metrics", body=otlp, headers=OTLP_JSON)
        assert r.status == 503 and r.headers["Retry-After"] == "3", r.data
        monkeypatch.setattr(os, "fsync", real)
        assert HTTP.request("POST", url, body=f"disk v=4 {NOW_MS + 3}\n".encode()).status == 204
    finally:
        a.stop()
    assert sorted(p["v"] for p in spooled_samples(tmp_path / "spool")) == [1.0, 4.0]


def test_lossproof_agent_refuses_a_bad_relay_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {
        "api_key": "k",
        "primary_url": "http://127.0.0.1:1",
        "spool_dir": str(tmp_path / "s"),
        "statsd_port": 0,
        "metrics_port": 0,
        "collect_host": False,
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for relay, needle in [
            ({"listen": "nope"}, "relay.listen: 'nope': expected host:port"),
            ({"listen": f"127.0.0.1:{port}"}, f"relay.listen 127.0.0.1:{port}: cannot listen: "),
        ]:
            config = write_config(tmp_path / "agent.toml", **base, relay=relay)
            ran = run_cli(monkeypatch, capsys, "agent", "--config", str(config))
            errors = [ln for ln in ran.err.splitlines() if ln.startswith("Error:")]
            assert ran.code == 1 and "Traceback" not in ran.err and len(errors) == 1, ran.err
            assert needle in errors[0]
        assert "address already in use" in errors[0].lower()


def test_remote_write_2_through_the_relay_answers_as_ingest(pipe: InProcess, agent: Agent) -> None:
    req = promrw.RequestV2()
    req.symbols.extend(["", "__name__", "relay_rw2", "job", "v2"])
    ts = req.timeseries.add()
    ts.labels_refs.extend([1, 2, 3, 4])
    for k in range(3):
        s = ts.samples.add()
        s.timestamp, s.value = NOW_MS - 30_000 + k, float(k)
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    headers = {
        "Content-Encoding": "snappy",
        "Content-Type": f"application/x-protobuf;proto={promrw.V2}",
        "User-Agent": "rw2-client/0.1",
    }
    relayed = HTTP.request("POST", relay_url(agent) + "/api/v1/write", body=body, headers=headers)
    with_key = {**pipe.headers(), **headers}
    direct = HTTP.request("POST", pipe.url + "/api/v1/write", body=body, headers=with_key)
    assert relayed.status == direct.status == 204, relayed.data
    for h in ("X-Prometheus-Remote-Write-Version", "X-Prometheus-Remote-Write-Samples-Written"):
        assert relayed.headers[h] == direct.headers[h], h
    assert relayed.headers["X-Prometheus-Remote-Write-Samples-Written"] == "3"
    pipe.wait_stored(quote("relay-test/prom-rw/rw2-client", safe=""), {1})
    [stored] = series(pipe, "relay_rw2")
    assert stored["labels"] == {"job": "v2"} and [p[1] for p in stored["points"]] == [0.0, 1.0, 2.0]


def test_a_client_hanging_up_mid_body_is_counted_and_spools_nothing(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(("127.0.0.1", agent.relay_port or 0)) as s:
        s.sendall(
            b"POST /write?db=d HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"hangup v=1 1\n"
        )
    key = 'lossproof_agent_relay_requests_total{protocol="influx",status="499"}'
    deadline = time.monotonic() + 10
    while scrape_agent(agent).get(key, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape_agent(agent)[key] == 1
    assert spooled_samples(agent.config.spool_dir) == []
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
