"""The worker's and the agent's ``/metrics`` and ``/healthz`` server: a scraper that gives up before
its answer is written (its timeout, a paused process) costs no traceback on stderr."""

from __future__ import annotations

import json
import socket
import struct
import threading
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


def _closed_within(s: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``s`` (sending ``trickle`` every 0.1 s meanwhile), or inf."""
    started = time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                s.sendall(trickle)
            if s.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return time.monotonic() - started
    return float("inf")


def test_slow_clients_cannot_hold_the_threads() -> None:
    """Half-sent requests are closed after the timeout (a trickled one too); connections over the cap
    get 503 at once; /healthz and /metrics are answered throughout and after."""
    registry = CollectorRegistry()
    timeout, cap = 1.0, 8
    server = StatusServer("127.0.0.1", 0, registry, lambda: (True, {"status": "ok"}), timeout, cap, cap)
    server.start()
    threads_before = threading.active_count()
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            held.append(s)
        time.sleep(0.2)
        assert threading.active_count() <= threads_before + cap
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert extra.recv(4096).startswith(b"HTTP/1.0 503"), "over the cap: 503 at once"
        extra.close()
        # every held connection is closed within the timeout (plus the 0.5 s poll), one trickling too
        trickler = held.pop()
        assert _closed_within(trickler, timeout + 3, trickle=b"X") < timeout + 1.5
        for s in held:
            assert _closed_within(s, timeout + 3) < timeout + 1.5
        deadline = time.monotonic() + 5
        while threading.active_count() > threads_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= threads_before
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'lossproof_status_http_refused_total{reason="too_many_connections"} 1.0' in text
        assert f'lossproof_status_http_refused_total{{reason="header_timeout"}} {float(cap)}' in text
    finally:
        for s in held:
            s.close()
        server.stop()
