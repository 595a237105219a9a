"""Third-party senders (remote write, OTLP, Influx) have no seqs, so the ledger cannot see what they drop.
What lossproof can see is every request whose client got no 2xx: refused (4xx), unavailable (5xx), or
unanswered (the client closed the connection while we waited for the log). Each is counted per tenant
and sender, shown to operators on ``/metrics`` (folded for the public view) and to the tenant on the
completeness view's "possibly dropped by the client" section.

On the real app, embedded log (with fault hooks: a slow or failing fsync), worker and store, in this
process (:class:`lptest.inproc.InProcess`); the clients are raw sockets, so a test decides exactly when
a connection ends."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lptest.inproc import InProcess
from lptest.pipeline import HTTP
from lptest.proto import metric_value, rw_body

NOW = int(time.time() * 1000) // 1000 * 1000
APPEND_TIMEOUT = 2.0  # server.append_timeout_seconds: a slower log gets a 503
UNCONFIRMED = "lossproof_ingest_unconfirmed_requests_total"
UNCONFIRMED_POINTS = "lossproof_ingest_unconfirmed_points_total"


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    pl = InProcess(
        tmp_path_factory.mktemp("third-party-loss") / "data",
        "lp_test_" + secrets.token_hex(16),
        env={"LOSSPROOF_SERVER_APPEND_TIMEOUT_SECONDS": str(APPEND_TIMEOUT)},
        faults=True,
    )
    pl.other_key = pl.add_key("othercorp")  # type: ignore[attr-defined]
    pl.start()
    yield pl
    pl.stop()


def _request(path: str, body: bytes, headers: dict[str, str], content_length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {content_length or len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _send_and_hang_up(p: InProcess, data: bytes, after: float) -> bytes:
    """Send ``data``, then close the connection after ``after`` seconds, as a client whose timeout
    fires would; whatever the server answered before that."""
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.sendall(data)
        s.settimeout(after)
        try:
            return s.recv(65536)
        except TimeoutError:
            return b""


def _rw(p: InProcess, user_agent: str, n: int) -> tuple[str, bytes, dict[str, str]]:
    body = rw_body([({"__name__": "tp_loss", "i": str(i)}, [(NOW, float(i))]) for i in range(n)])
    headers = {
        "Authorization": f"Bearer {p.key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "User-Agent": user_agent,
    }
    return "/api/v1/write", body, headers


def _completeness(p: InProcess, key: str | None = None) -> dict[str, Any]:
    status, body = p.get("/ui/api/completeness", key=key)
    assert status == 200, body
    return body["possibly_dropped"]  # type: ignore[no-any-return]


def _row(dropped: dict[str, Any], protocol: str, sender: str) -> dict[str, Any]:
    rows = [r for r in dropped["senders"] if (r["protocol"], r["sender"]) == (protocol, sender)]
    assert len(rows) == 1, dropped
    return rows[0]


def _wait_metric(p: InProcess, name: str, want: float, timeout: float = 15, **labels: str) -> None:
    """The handler counts once it has its answer (up to APPEND_TIMEOUT after the client left)."""
    deadline = time.monotonic() + timeout
    got = 0.0
    while time.monotonic() < deadline:
        got = metric_value(p.metrics(), name, **labels)
        if got >= want:
            break
        time.sleep(0.1)
    assert got == want, (name, labels, got)


def _log_ok(p: InProcess) -> None:
    """Faults off, and the log answers again (a delayed fsync may still be running)."""
    p.faults({})
    path, body, headers = _rw(p, "probe/1", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if HTTP.request("POST", p.url + path, body=body, headers=headers, timeout=30).status == 204:
            return
        time.sleep(0.1)
    raise AssertionError("the log did not recover")


def test_refused_and_unavailable_requests_are_counted_per_sender_and_shown(p: InProcess) -> None:
    # 4xx: a malformed OTLP body, twice, from one exporter; the client drops it for good
    for _ in range(2):
        r = HTTP.request(
            "POST",
            p.url + "/v1/metrics",
            body=b"{not json",
            headers={**p.headers(), "User-Agent": "BrokenExporter/1.0"},
        )
        assert r.status == 400, r.data
    # a wrong key: tenant unknown, so an operator's number only
    r = HTTP.request(
        "POST",
        p.url + "/v1/metrics",
        body=b"{}",
        headers={**p.headers("lp_wrong"), "User-Agent": "BrokenExporter/1.0"},
    )
    assert r.status == 401
    # 5xx: the log fails; two lines from Telegraf, no Retry-After (its own schedule serves it best)
    p.faults({"log.fsync": {"mode": "fail"}})
    try:
        r = HTTP.request(
            "POST",
            p.url + "/api/v2/write?bucket=b",
            body=b"tp_influx v=1\ntp_influx v=2",
            headers={"Authorization": f"Token {p.key}", "User-Agent": "Telegraf/1.30.0"},
        )
        assert r.status == 503, r.data
        assert "Retry-After" not in r.headers
    finally:
        _log_ok(p)

    ops = p.metrics()
    mine = {"tenant": "default", "protocol": "otlp", "sender": "BrokenExporter/1.0"}
    assert metric_value(ops, UNCONFIRMED, **mine, outcome="refused", status="400") == 2
    assert metric_value(ops, UNCONFIRMED, tenant="-", protocol="otlp", outcome="refused", status="401") == 1
    telegraf = {"tenant": "default", "protocol": "influx", "sender": "Telegraf/1.30.0"}
    assert metric_value(ops, UNCONFIRMED, **telegraf, outcome="unavailable", status="503") == 1
    assert metric_value(ops, UNCONFIRMED_POINTS, **telegraf, outcome="unavailable", status="503") == 2

    # the public view keeps the totals, not who sent them
    public = p.metrics(public=True)
    assert "BrokenExporter" not in public and "Telegraf" not in public
    assert metric_value(public, UNCONFIRMED, protocol="otlp", outcome="refused", status="400") >= 2

    dropped = _completeness(p)
    otlp = _row(dropped, "otlp", "BrokenExporter/1.0")
    assert otlp["refused"] == {"requests": 2, "points": 0, "by_status": {"400": 2}}
    influx = _row(dropped, "influx", "Telegraf/1.30.0")
    assert influx["unavailable"] == {"requests": 1, "points": 2, "by_status": {"503": 1}}
    assert dropped["since_ms"] > 0
    # another tenant sees none of it
    other = _completeness(p, key=p.other_key)  # type: ignore[attr-defined]
    assert other["senders"] == [], other
    assert "BrokenExporter" not in json.dumps(other)


def test_a_client_that_hangs_up_while_the_log_is_slow_is_counted_unanswered(p: InProcess) -> None:
    sender = "ImpatientWriter/2.0"
    labels = {"tenant": "default", "protocol": "prom-rw", "sender": sender, "outcome": "unanswered"}
    path, body, headers = _rw(p, sender, 3)

    # The log takes longer than append_timeout_seconds: our 503 comes after the client has left.
    p.faults({"log.fsync": {"mode": "delay", "seconds": APPEND_TIMEOUT + 2}})
    try:
        assert _send_and_hang_up(p, _request(path, body, headers), after=0.5) == b""
        _wait_metric(p, UNCONFIRMED, 1, **labels, status="503")
        assert metric_value(p.metrics(), UNCONFIRMED_POINTS, **labels, status="503") == 3
    finally:
        _log_ok(p)

    # The log is slow but within the timeout: the data is durable, the client never hears the 204.
    p.faults({"log.fsync": {"mode": "delay", "seconds": 1.0}})
    try:
        assert _send_and_hang_up(p, _request(path, body, headers), after=0.3) == b""
        _wait_metric(p, UNCONFIRMED, 1, **labels, status="204")
    finally:
        _log_ok(p)

    # The client leaves before its body is complete: no answer was even decided.
    cut = _request(path, body[:5], headers, content_length=len(body))
    assert _send_and_hang_up(p, cut, after=0.3) == b""
    _wait_metric(p, UNCONFIRMED, 1, **labels, status="-")

    row = _row(_completeness(p), "prom-rw", sender)
    assert row["unanswered"] == {"requests": 2, "points": 3, "by_status": {"503": 1, "-": 1}}
    assert row["answer_lost"] == {"requests": 1, "points": 3, "by_status": {"204": 1}}
    assert row["refused"]["requests"] == 0 and row["unavailable"]["requests"] == 0
    logs = p.logs()
    assert "ingest.unconfirmed" in logs
    assert "Error handling request" not in logs  # a client hanging up is no server error
