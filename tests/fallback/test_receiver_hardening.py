"""Hostile and broken requests against the fallback receiver: the ingest API's answers (a clear 4xx
with a JSON body), never a 500 or a hang."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from lossproof.config import init_data_dir
from lossproof.fallback import journal as jn
from lossproof.fallback.receiver import FallbackMetrics, build_app
from lptest.fallback import HTTP, Fallback, post_raw
from lptest.pipeline import raw_exchange


def request(method: str, path: str, headers: dict[str, bytes], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x"]
    lines += [k.encode() + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def test_non_utf8_authorization_is_401(fallback: Fallback) -> None:
    hdrs = {
        "Connection": b"close",
        "Content-Type": b"application/json",
        "Content-Length": b"2",
        "Authorization": b"Bearer \xff\xfe",
    }
    resp, _ = raw_exchange(fallback.port, request("POST", "/v1/reports", hdrs, b"{}"))
    assert status_of(resp) == 401, resp[:300]
    assert b'"error"' in resp


def test_wrong_method_is_a_json_405_with_allow(fallback: Fallback) -> None:
    for method, path, allow in (("GET", "/v1/reports", "POST"), ("POST", "/healthz", "GET")):
        r = HTTP.request(method, fallback.url + path)
        assert r.status == 405, r.data
        assert allow in r.headers["Allow"]
        assert r.headers["Content-Type"].startswith("application/json")
        assert "error" in json.loads(r.data)


def test_deeply_nested_bodies_are_400(fallback: Fallback) -> None:
    body = b'{"agent":"n","reports":[],"zz":' + b"[" * 10000 + b"]" * 10000 + b"}"
    r = post_raw(fallback.url, body, "identity", fallback.key)
    assert r.status == 400, r.data
    assert "nested too deeply" in json.loads(r.data)["error"]
    body = b"\x83\xa5agent\xa1n\xa7reports\x90\xa2zz" + b"\x91" * 10000 + b"\x90"
    r = HTTP.request(
        "POST",
        fallback.url + "/v1/reports",
        body=body,
        headers={"Authorization": f"Bearer {fallback.key}", "Content-Type": "application/msgpack"},
    )
    assert r.status == 400, r.data


def test_tenant_header_naming_another_tenant_is_403_as_on_ingest(fallback: Fallback) -> None:
    body = json.dumps({"agent": "a", "reports": [{"seq": 1, "points": []}]}).encode()
    for named, status in (("other", 403), ("default", 200)):
        r = HTTP.request(
            "POST",
            fallback.url + "/v1/reports",
            body=body,
            headers={**fallback.headers(), "X-Lossproof-Tenant": named},
        )
        assert r.status == status, r.data


def test_expect_100_continue_checks_the_key_first(fallback: Fallback) -> None:
    hdrs = {
        "Authorization": b"Bearer wrong",
        "Content-Type": b"application/json",
        "Content-Length": b"100",
        "Expect": b"100-continue",
    }
    resp, took = raw_exchange(fallback.port, request("POST", "/v1/reports", hdrs), timeout=8)
    assert status_of(resp) == 401, resp[:300]
    assert b"100 Continue" not in resp
    assert not resp.endswith(b"<<TIMEOUT>>") and took < 5


def test_oversized_content_length_gets_413_and_the_connection_is_closed(fallback: Fallback) -> None:
    hdrs = {
        "Authorization": f"Bearer {fallback.key}".encode(),
        "Content-Type": b"application/json",
        "Content-Length": b"1000000000",
    }
    resp, took = raw_exchange(fallback.port, request("POST", "/v1/reports", hdrs, b"{"), timeout=8)
    assert status_of(resp) == 413, resp[:300]
    assert not resp.endswith(b"<<TIMEOUT>>") and took < 5


def test_stalled_body_gets_408_and_the_connection_is_closed(tmp_path: Path) -> None:
    """In process, with a short idle limit; the real receiver app on a real socket."""
    cfg, key = init_data_dir(tmp_path / "fb", None)
    assert key is not None
    cfg.server.body_idle_seconds = 0.5

    async def run() -> tuple[bytes, float]:
        registry = CollectorRegistry()
        metrics = FallbackMetrics(registry)
        writer = jn.JournalWriter(jn.journal_dir(tmp_path / "fb"))
        await writer.start()
        app = build_app(cfg, writer, tmp_path / "fb", metrics, registry)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        hdrs = {
            "Authorization": f"Bearer {key}".encode(),
            "Content-Type": b"application/json",
            "Content-Length": b"100",
        }
        try:
            stalled = request("POST", "/v1/reports", hdrs, b'{"agent":')
            return await asyncio.to_thread(raw_exchange, port, stalled, 10)
        finally:
            await runner.cleanup()
            await writer.close()

    resp, took = asyncio.run(run())
    assert status_of(resp) == 408, resp[:300]
    assert b"Connection: close" in resp
    assert not resp.endswith(b"<<TIMEOUT>>") and took < 5
    assert "request body incomplete" in json.loads(resp.split(b"\r\n\r\n", 1)[1])["error"]
