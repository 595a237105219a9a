"""A real Prometheus client against lossproof's query API: Debian's ``promtool query`` (Go, the
Prometheus client library Grafana's backend and other tools use) asks ``lossproof up`` for an
instant query, a range query, series and label values, authenticated by the API key as the basic
auth password of the server URL, and must read what was written."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from lptest import require
from lptest.pipeline import Pipeline
from lptest.proto import post, rw_body, wait_points

pytestmark = pytest.mark.process

promtool = shutil.which("promtool")
T0 = (int(time.time()) // 60 - 10) * 60_000  # whole minutes, ten minutes ago


def run(p: Pipeline, *args: str) -> str:
    server = p.url.replace("http://", f"http://lossproof:{p.key}@")
    argv = [str(promtool), "query", *args[:1], server, *args[1:]]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_promtool_queries_what_was_written(pipeline: Pipeline) -> None:
    require(promtool, "promtool (Debian's prometheus)")
    p = pipeline
    series = [
        (
            {"__name__": "pt_requests_total", "job": "api", "instance": f"h{i}"},
            [(T0 + k * 15_000, 10.0 * k * (i + 1)) for k in range(21)],
        )
        for i in range(2)
    ]
    headers = {
        "Authorization": f"Bearer {p.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    r = post(p, "/api/v1/write", rw_body(series), headers)
    assert r.status == 204, r.data
    wait_points(p, "pt_requests_total", 42)
    at = str((T0 + 300_000) // 1000)

    # instant: rate over the last 5 minutes of a counter growing by 10 (h0) and 20 (h1) per 15 s
    got = run(p, "instant", "--time", at, "sum by (instance) (rate(pt_requests_total[5m]))")
    lines = sorted(got.strip().splitlines())
    assert len(lines) == 2, got
    assert lines[0].startswith('{instance="h0"} => 0.6666666666666') and f"@[{at}]" in lines[0], got
    assert lines[1].startswith('{instance="h1"} => 1.3333333333333'), got

    # range: one value a minute over the five minutes (h1 grows by 80 a minute)
    start = T0 // 1000
    h1 = 'pt_requests_total{instance="h1"}'
    got = run(p, "range", "--start", str(start), "--end", at, "--step", "1m", h1)
    assert got.strip().splitlines() == [
        'pt_requests_total{instance="h1", job="api"} =>',
        *(f"{80 * m} @[{start + 60 * m}]" for m in range(6)),
    ], got

    got = run(p, "series", "--match", 'pt_requests_total{job="api"}')
    assert sorted(got.strip().splitlines()) == [
        '{__name__="pt_requests_total", instance="h0", job="api"}',
        '{__name__="pt_requests_total", instance="h1", job="api"}',
    ], got
    assert run(p, "labels", "instance").split() == ["h0", "h1"]


def test_promtool_is_refused_without_the_key(pipeline: Pipeline) -> None:
    require(promtool, "promtool (Debian's prometheus)")
    out = subprocess.run(
        [str(promtool), "query", "instant", pipeline.url, "up"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "401" in out.stdout + out.stderr, out.stdout + out.stderr
