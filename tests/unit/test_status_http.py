"""The worker's and the agent's ``/metrics`` and ``/healthz`` server: a scraper that gives up before
its answer is written (its timeout, a paused process) costs no traceback on stderr."""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lossproof.obs.status_http import StatusServer


class Slow(Collector):
    def collect(self) -> Iterator[Metric]:
        time.sleep(0.3)  # the scraper is gone by the time the answer is written
        yield GaugeMetricFamily("slow_gauge", "A gauge that takes its time.", value=1)


def test_metrics_healthz_and_unknown_paths() -> None:
    registry = CollectorRegistry()
    Counter("probe_total", "A probe.", registry=registry).inc(3)
    healthy = [True]
    server = StatusServer("127.0.0.1", 0, registry, lambda: (healthy[0], {"status": "x"}))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(url + "/metrics") as r:
            assert b"probe_total 3.0" in r.read()
        with urllib.request.urlopen(url + "/healthz") as r:
            assert json.loads(r.read()) == {"status": "x"}
        healthy[0] = False
        for path, status in (("/healthz", 503), ("/nope", 404)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + path)
            assert e.value.code == status
    finally:
        server.stop()


def test_an_abandoned_scrape_is_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    registry = CollectorRegistry()
    registry.register(Slow())
    server = StatusServer("127.0.0.1", 0, registry, lambda: (True, {}))
    server.start()
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            # close with a reset, so the server's write fails (BrokenPipe / ConnectionReset)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        time.sleep(1.2)
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
