"""HTTP-level limits of the query side, on real sockets against the real app (in this process): a
stalled or dribbled form body on ``/api/v1/*`` gets its 408 within ``server.body_idle_seconds`` /
``body_read_max_seconds`` (as an ingest body does) and cannot fill ``max_connections``; a PromQL GET of
the longest valid query fits the request line; an over-long line and a form of too many fields are
4xx in Prometheus' error shape."""

from __future__ import annotations

import gzip
import json
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from lossproof.httpguard import MAX_LINE_BYTES
from lossproof.httputil import MAX_FORM_FIELDS
from lptest.inproc import InProcess
from lptest.pipeline import HTTP, raw_exchange

IDLE_SECONDS = 0.5  # server.body_idle_seconds
READ_MAX_SECONDS = 2.0  # server.body_read_max_seconds
MAX_CONNECTIONS = 40  # server.max_connections (and per address: every test connects from 127.0.0.1)
PROM_PATHS = ("/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels")
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    pl = InProcess(
        tmp_path_factory.mktemp("httplimits") / "data",
        "lp_test_" + secrets.token_hex(16),
        env={
            "LOSSPROOF_SERVER_BODY_IDLE_SECONDS": str(IDLE_SECONDS),
            "LOSSPROOF_SERVER_BODY_READ_MAX_SECONDS": str(READ_MAX_SECONDS),
            "LOSSPROOF_SERVER_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "LOSSPROOF_SERVER_MAX_CONNECTIONS_PER_IP": str(MAX_CONNECTIONS),
        },
    )
    pl.start()
    yield pl
    pl.stop()


def _head(p: InProcess, path: str, length: int, ctype: str = FORM) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {p.key}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _answer(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _prometheus_error(raw: bytes, status: int, error_type: str) -> str:
    got, body = _answer(raw)
    assert got == status, raw[:400]
    assert body["status"] == "error" and body["errorType"] == error_type, body
    return str(body["error"])


# --- stalled and dribbled form bodies (D4) -------------------------------------------------------


@pytest.mark.parametrize("path", PROM_PATHS)
def test_a_stalled_form_body_gets_408_and_the_connection_is_closed(p: InProcess, path: str) -> None:
    body = b"query=count(m)"
    resp, took = raw_exchange(p.port, _head(p, path, len(body)) + body[:5], timeout=15)
    assert not resp.endswith(b"<<TIMEOUT>>"), resp  # answered and closed by the server
    assert "request body incomplete: got 5 of 14 bytes" in _prometheus_error(resp, 408, "timeout")
    assert b"Connection: close" in resp
    assert IDLE_SECONDS <= took < IDLE_SECONDS + 5, took


def test_a_dribbled_form_body_gets_408_after_body_read_max_seconds(p: InProcess) -> None:
    body = b"query=" + b"m" * 200
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.settimeout(0.2)
        s.sendall(_head(p, "/api/v1/query", len(body)))
        started = time.monotonic()
        out = b""
        # a byte every 0.2 s (never idle for body_idle_seconds), until shortly before the server must
        # answer: a byte sent after it closed could make the kernel reset the connection, and the
        # reset can discard the answer before this side reads it
        for byte in body:
            if time.monotonic() - started > READ_MAX_SECONDS - 0.5:
                break
            s.sendall(bytes([byte]))
            try:
                if chunk := s.recv(65536):
                    out += chunk
                    break
            except TimeoutError:
                continue
        took = 0.0
        s.settimeout(READ_MAX_SECONDS + 5)
        while chunk := s.recv(65536):
            took = took or time.monotonic() - started
            out += chunk
        took = took or time.monotonic() - started
    assert "whole body within 2s" in _prometheus_error(out, 408, "timeout"), out
    assert READ_MAX_SECONDS - 0.3 <= took < READ_MAX_SECONDS + 3, took  # (its clock starts with the head)


def test_stalled_form_bodies_cannot_fill_the_connection_limit(p: InProcess) -> None:
    body = b"query=count(m)"
    held = []
    for _ in range(MAX_CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", p.port))
        s.sendall(_head(p, "/api/v1/query", len(body)) + body[:5])
        held.append(s)
    try:
        time.sleep(IDLE_SECONDS + 1.0)
        for s in held:  # each has its 408, and the server closed it
            s.settimeout(5)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            _prometheus_error(out, 408, "timeout")
        # capacity is back for everyone else
        assert HTTP.request("GET", p.url + "/healthz").status == 200
    finally:
        for s in held:
            s.close()


def test_form_bodies_still_work(p: InProcess) -> None:
    form = urllib.parse.urlencode({"query": "1+1", "time": "100"}).encode()
    resp, _ = raw_exchange(p.port, _head(p, "/api/v1/query", len(form)) + form, timeout=0.5)
    status, body = _answer(resp.removesuffix(b"<<TIMEOUT>>"))  # (keep-alive: open after the answer)
    assert status == 200 and body["data"]["result"] == [100, "2"], body
    # multipart, as Go's FormValue reads it (file parts are left out)
    mp = (
        b'--b\r\nContent-Disposition: form-data; name="query"\r\n\r\n1+2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="time"\r\n\r\n100\r\n'
        b'--b\r\nContent-Disposition: form-data; name="query"; filename="q.txt"\r\n\r\nnope\r\n--b--\r\n'
    )
    r = HTTP.request(
        "POST",
        p.url + "/api/v1/query",
        body=mp,
        headers={**p.headers(), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status == 200 and json.loads(r.data)["data"]["result"] == [100, "3"], r.data


# --- long URLs and many fields (D8) --------------------------------------------------------------


def test_a_get_of_the_longest_valid_query_is_answered(p: InProcess) -> None:
    # 16,384 characters (MAX_QUERY_CHARS), most of them 2 UTF-8 bytes: ~98 KB percent-encoded
    value = "é" * (16_384 - len('m{k=""}'))
    query = 'm{k="' + value + '"}'
    assert len(query) == 16_384
    url = p.url + "/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": "100"})
    assert len(url) > 90_000
    r = HTTP.request("GET", url, headers=p.headers())
    assert r.status == 200, r.data[:300]
    assert json.loads(r.data) == {"status": "success", "data": {"resultType": "vector", "result": []}}


def test_an_overlong_request_line_is_a_json_400(p: InProcess) -> None:
    line = b"GET /api/v1/query?query=" + b"m" * (MAX_LINE_BYTES + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    resp, _ = raw_exchange(p.port, line, timeout=10)
    assert b"Content-Type: application/json" in resp
    assert "Got more than" in _prometheus_error(resp, 400, "bad_data")


@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
def test_more_form_fields_than_the_limit_is_400_bad_data(p: InProcess, kind: str) -> None:
    n = MAX_FORM_FIELDS + 1
    if kind == "urlencoded":
        body, ctype = "&".join(["match[]=m"] * n).encode(), FORM
    else:
        part = b'--b\r\nContent-Disposition: form-data; name="match[]"\r\n\r\nm\r\n'
        body, ctype = part * n + b"--b--\r\n", "multipart/form-data; boundary=b"
    r = HTTP.request(
        "POST", p.url + "/api/v1/series", body=body, headers={**p.headers(), "Content-Type": ctype}
    )
    assert r.status == 400, r.data
    answer = json.loads(r.data)
    assert answer["status"] == "error" and answer["errorType"] == "bad_data", answer
    assert f"exceeds the limit of {MAX_FORM_FIELDS} fields" in answer["error"], answer


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/v1/reports", "application/json"),
        ("/api/v1/write", "application/x-protobuf"),
        ("/api/v1/query", FORM),
    ],
)
def test_a_body_in_a_transfer_coding_other_than_chunked_is_a_clear_400(
    p: InProcess, path: str, ctype: str
) -> None:
    # aiohttp undoes only the chunking: the gzip'd bytes were read as the body itself ("malformed json")
    body = gzip.compress(b'{"agent": "te", "reports": []}')
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {p.key}\r\nContent-Type: {ctype}\r\n"
        "Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    resp, _ = raw_exchange(p.port, head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n", timeout=10)
    status, answer = _answer(resp)
    assert status == 400, resp[:400]
    assert "unsupported Transfer-Encoding 'gzip, chunked'" in json.dumps(answer), answer
