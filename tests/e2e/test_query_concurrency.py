"""Long queries on a real server (the in-process pipeline: the real app, socket, store and worker):
a short query does not wait for them to end, and a query whose client has gone away stops instead
of holding a read thread. The long queries are made long by slowing each block of windows of
``quantile_over_time`` (the evaluator checks its timeout and cancellation between blocks)."""

from __future__ import annotations

import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from lossproof.query import promwindows
from lptest.inproc import InProcess
from lptest.pipeline import HTTP

BLOCK_SECONDS = 0.2


@pytest.fixture()
def slow(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[InProcess, list[int], int]]:
    p = InProcess(tmp_path_factory.mktemp("concurrency") / "data", "lp_test_" + secrets.token_hex(16))
    p.start()
    t = (int(time.time() * 1000) - 120_000) // 1000 * 1000
    points = [
        {"metric": "m", "labels": {"i": str(i)}, "t": t + k * 1000, "v": float(k)}
        for i in range(4)
        for k in range(60)
    ]
    r = p.post_reports("a1", [{"seq": 1, "points": points}])
    assert r.status == 200, r.data
    p.wait_stored("a1", {1})
    calls = [0]
    real = promwindows._range_block

    def slowed(*args: object, **kw: object) -> object:
        calls[0] += 1
        time.sleep(BLOCK_SECONDS)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(promwindows, "BLOCK", 1)  # a series a block: 4 blocks a query
    monkeypatch.setattr(promwindows, "_range_block", slowed)
    try:
        yield p, calls, t
    finally:
        p.stop()


def _range_path(t: int, query: str) -> str:
    q = {"query": query, "start": str(t / 1000), "end": str(t / 1000 + 60), "step": "1"}
    return "/api/v1/query_range?" + urllib.parse.urlencode(q)


def test_a_short_query_does_not_wait_for_long_ones(slow: tuple[InProcess, list[int], int]) -> None:
    """Six long queries at once (more than the read threads there were, 4): a short one sent after
    them is answered while they still run."""
    p, calls, t = slow
    long_path = _range_path(t, "quantile_over_time(0.5, m[10s])")
    done: list[float] = []

    def long_query() -> None:
        r = HTTP.request("GET", p.url + long_path, headers=p.headers(), timeout=60)
        assert r.status == 200, r.data
        done.append(time.monotonic())

    threads = [threading.Thread(target=long_query) for _ in range(6)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    while calls[0] < 6 and time.monotonic() < deadline:  # all six under way
        time.sleep(0.01)
    t0 = time.monotonic()
    r = HTTP.request("GET", p.url + _range_path(t, "m"), headers=p.headers(), timeout=60)
    short = time.monotonic() - t0
    assert r.status == 200, r.data
    for th in threads:
        th.join()
    assert short < 2 * BLOCK_SECONDS, short  # not after a long one's 4 blocks
    assert len(done) == 6 and min(done) > t0 + short, (short, done)


def test_a_query_whose_client_went_away_stops(slow: tuple[InProcess, list[int], int]) -> None:
    p, calls, t = slow
    path = _range_path(t, "quantile_over_time(0.5, m[10s]) + quantile_over_time(0.5, m[20s])")
    host, port = p.url.split("//")[1].split(":")
    auth = p.headers()["Authorization"]
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
        )
        time.sleep(2 * BLOCK_SECONDS)
    # gone: the evaluation stops within a check of the client (0.5 s) and a block, not 8 blocks
    time.sleep(0.5 + 3 * BLOCK_SECONDS)
    stopped_at = calls[0]
    time.sleep(4 * BLOCK_SECONDS)
    assert calls[0] == stopped_at < 8, (stopped_at, calls[0])
