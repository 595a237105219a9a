"""StatsD / DogStatsD: the parser, the aggregation, and real UDP packets through a running agent
into a real pipeline."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from lossproof.agent import Agent, AgentConfig
from lossproof.agent.collect.statsd import Aggregator, Malformed, parse_line
from lptest.agent import free_port, scrape, wait_for
from lptest.pipeline import Pipeline


@pytest.mark.parametrize(
    "line",
    [
        "nocolon|c",
        "x:abc|c",
        "x:1|zz",
        "x:1|c|@2",
        "x:1|c|@0",
        "x:1",
        ":1|c",
        "x:|c",
        "x:nan|g",
        "x:1|c|#:v",
        "x:1|c|?what",
        "x:1:2:zz|d",
    ],
)
def test_malformed_lines_are_refused(line: str) -> None:
    with pytest.raises(Malformed):
        parse_line(line)


def test_parse_and_aggregate() -> None:
    agg = Aggregator()
    for line in [
        "hits:1|c",
        "hits:2|c|@0.5",
        "temp:20|g",
        "temp:+3|g",
        "temp:-1|g",
        "lat:10|ms",
        "lat:20:30|ms",  # DogStatsD: several values in one line
        "lat:40|h|@0.5",
        "users:alice|s",
        "users:bob|s",
        "users:alice|s",
        "tagged:1|c|#env:prod,canary|c:abc123|T1767225600",
    ]:
        s = parse_line(line)
        assert s is not None
        agg.add(s)
    assert parse_line("_e{5,4}:title|text") is None
    pts = {(p.metric, tuple(sorted(p.labels.items()))): p.v for p in agg.flush(1000, {"host": "h"})}
    h = (("host", "h"),)
    assert pts[("hits", h)] == 5.0
    assert pts[("temp", h)] == 22.0
    assert pts[("users", h)] == 2.0
    assert pts[("lat.count", h)] == 5.0  # 10, 20, 30 and 40 at a 0.5 sample rate
    assert pts[("lat.sum", h)] == 140.0
    assert (pts[("lat.min", h)], pts[("lat.max", h)]) == (10.0, 40.0)
    assert (pts[("lat.p50", h)], pts[("lat.p90", h)], pts[("lat.p99", h)]) == (20.0, 40.0, 40.0)
    assert pts[("tagged", (("canary", ""), ("env", "prod"), ("host", "h")))] == 1.0
    # gauges keep their value for later deltas; everything else starts over
    agg.add(parse_line("temp:+1|g"))  # type: ignore[arg-type]
    assert [(p.metric, p.v) for p in agg.flush(2000, {})] == [("temp", 23.0)]


def _query(p: Pipeline, metric: str) -> list[dict[str, Any]]:
    status, body = p.get(f"/v1/query?metric={metric}&from=0&to=9999999999999")
    assert status == 200, body
    return body["series"]  # type: ignore[no-any-return]


def test_udp_packets_become_points(pipeline: Pipeline, tmp_path: Path) -> None:
    cfg = AgentConfig(
        agent_id="statsd-agent",
        api_key=pipeline.key,
        primary_url=pipeline.url,
        spool_dir=tmp_path / "spool",
        interval_seconds=3600,  # the test flushes by hand
        statsd_port=free_port(socket.SOCK_DGRAM),
        metrics_port=free_port(),
        collect_host=False,
        labels={"host": "udp-host"},
    )
    packets = [
        b"app.hits:1|c\napp.hits:2|c|@0.5\napp.temp:20|g\napp.temp:+3|g",
        b"app.lat:10|ms|#route:/a\napp.lat:30|ms|#route:/a\napp.users:ann|s\napp.users:bob|s",
        b"app.tagged:7|g|#env:prod,canary\n",
        # malformed: counted and skipped, never fatal; the good line in the same packet still counts
        b"garbage\napp.bad:abc|c\napp.bad:1|qq\napp.ok:1|c",
        b"\xff\xfe\xfd",
        b"x" * 9000,
    ]
    good_lines, bad_lines = 10, 5
    with Agent(cfg) as agent:
        assert agent.statsd_port == cfg.statsd_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for pkt in packets:
                s.sendto(pkt, ("127.0.0.1", cfg.statsd_port))
        port = agent.metrics_port
        assert port is not None

        def counted() -> bool:
            m = scrape(port)
            return (
                m.get("lossproof_agent_statsd_lines_total") == good_lines
                and m.get("lossproof_agent_statsd_malformed_total") == bad_lines
            )

        wait_for(counted, 10, "the agent to count the UDP lines")
        seqs = agent.flush()
        assert len(seqs) == 1
        pipeline.wait_stored("statsd-agent", set(seqs))

    def one(metric: str, **labels: str) -> float:
        series = [
            s for s in _query(pipeline, metric) if all(s["labels"].get(k) == v for k, v in labels.items())
        ]
        assert len(series) == 1, series
        assert series[0]["labels"]["host"] == "udp-host"
        return float(series[0]["points"][-1][1])

    assert one("app.hits") == 5.0
    assert one("app.temp") == 23.0
    assert one("app.lat.count", route="/a") == 2.0
    assert one("app.lat.max", route="/a") == 30.0
    assert one("app.lat.p50", route="/a") == 10.0
    assert one("app.users") == 2.0
    assert one("app.tagged", env="prod", canary="") == 7.0
    assert one("app.ok") == 1.0
    assert _query(pipeline, "app.bad") == []


def test_statsd_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        cfg = AgentConfig(
            api_key="k",
            primary_url="http://127.0.0.1:1",
            spool_dir=tmp_path / "spool",
            statsd_port=port,
            metrics_port=0,
            collect_host=False,
        )
        agent = Agent(cfg)
        with pytest.raises(OSError, match=f"cannot listen for StatsD on 127.0.0.1:{port}"):
            agent.start()
        # the spool was released: a second try (after the port frees up) can open it
        time.sleep(0)
    cfg.statsd_port = 0
    with Agent(cfg):
        pass
