"""Connection-level abuse against the real app (issue 20, items 6 and 7): a client trickling header
lines or sending nothing is closed after ``server.header_timeout_seconds``; connections over the
per-address cap get 503 + Retry-After; protocol errors aiohttp refuses (bad header bytes, overlong
lines, bad chunk sizes) are counted and logged as a rate-limited warning, never as tracebacks."""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from lossproof.httpguard import MAX_FIELD_BYTES
from lptest.inproc import InProcess
from lptest.pipeline import HTTP

HEADER_TIMEOUT = 1.0
PER_IP = 20


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    pl = InProcess(
        tmp_path_factory.mktemp("conns") / "data",
        "lp_test_" + secrets.token_hex(16),
        env={
            "LOSSPROOF_SERVER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "LOSSPROOF_SERVER_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        },
    )
    pl.start()
    yield pl
    pl.stop()


def _connect(p: InProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.settimeout(10)
    return s


def _closed_within(s: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``s`` (sending ``trickle`` every 0.2 s meanwhile), or inf."""
    started = time.monotonic()
    s.settimeout(0.2)
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


def _refused(p: InProcess, reason: str) -> float:
    m = re.search(rf'lossproof_http_refused_total{{reason="{reason}"}} (\S+)', p.metrics())
    return float(m.group(1)) if m else 0.0


def test_trickled_headers_are_cut_off(p: InProcess) -> None:
    before = _refused(p, "header_timeout")
    s = _connect(p)
    s.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\n")
    took = _closed_within(s, 10, trickle=b"X-Slow: 1\r\n")
    s.close()
    assert took < HEADER_TIMEOUT + 2, took
    assert _refused(p, "header_timeout") >= before + 1


def test_a_connection_that_sends_nothing_is_closed(p: InProcess) -> None:
    s = _connect(p)
    took = _closed_within(s, 10)
    s.close()
    assert took < HEADER_TIMEOUT + 2, took


def test_slow_bodies_and_keep_alive_still_work(p: InProcess) -> None:
    # a request whose headers arrived in time is not cut by the header timeout
    s = _connect(p)
    now = int(time.time() * 1000)
    body = b'{"agent": "slow", "reports": [{"seq": 1, "points": [{"metric": "m", "t": %d, "v": 1}]}]}' % now
    s.sendall(
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + p.key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    time.sleep(HEADER_TIMEOUT * 1.5)
    s.sendall(body)
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first
    # and the same connection serves another request after a pause shorter than the keep-alive
    time.sleep(HEADER_TIMEOUT * 0.5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()


def test_connections_over_the_per_address_cap_get_503(p: InProcess) -> None:
    held = [_connect(p) for _ in range(PER_IP)]
    try:
        time.sleep(0.2)
        extra = _connect(p)
        answer = extra.recv(4096)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: 1" in answer
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert HTTP.request("GET", p.url + "/healthz").status == 200  # capacity comes back


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (MAX_FIELD_BYTES + 100) + b"\r\n\r\n",
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    ],
    ids=["bad-byte", "long-line", "two-lengths", "bad-chunk"],
)
def test_protocol_errors_are_400_counted_and_not_tracebacks(p: InProcess, request_bytes: bytes) -> None:
    before = _refused(p, "protocol_error")
    for _ in range(30):
        s = _connect(p)
        s.sendall(request_bytes)
        answer = s.recv(4096)
        s.close()
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
    log = p.logs()
    assert "Traceback" not in log
    assert "Error handling request" not in log
    if b"chunked" not in request_bytes:  # a bad chunk is the handler's 400 (the body is unreadable)
        assert _refused(p, "protocol_error") >= before + 30
        assert log.count("http.protocol_error") <= 5  # rate-limited: one line per interval
