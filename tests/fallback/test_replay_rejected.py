"""`lossproof replay` and requests the main ingest refuses for good (a 4xx that is not retryable).

The agent had those reports acknowledged by the fallback and will never send them again, so replay
must tell the main ingest's ledger that their seqs are lost, with the reason, before it moves on;
and a server answering 503 with ``Retry-After: 0`` must not be hammered.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from lossproof import config as config_mod
from lossproof.fallback import journal as jn
from lossproof.fallback import pacing, rejected
from lossproof.fallback import progress as pg
from lossproof.protocol.ack import ACK_HEADERS
from lptest.fallback import (
    Fallback,
    ack_of,
    create_key,
    encode_body,
    lossproof,
    post_raw,
    run_replay,
)
from lptest.pipeline import Pipeline, expand

T0 = 1_767_225_600_000
MAX_DECODED = 8192  # the main ingest's limit: a report of BIG points decodes to more than this
BIG = 120


def rep(seq: int, agent: str, n: int = 1) -> dict[str, Any]:
    return {
        "seq": seq,
        "points": [
            {"metric": "rej.m", "labels": {"agent": agent, "i": str(i)}, "t": T0 + seq * 1000, "v": seq}
            for i in range(n)
        ],
    }


def send(fb: Fallback, key: str, agent: str, seqs: list[int], n: int = 1, **extra: Any) -> None:
    """As an agent would: one request to the fallback, which must acknowledge it."""
    body, enc = encode_body(
        {"agent": agent, "reports": [rep(s, agent, n) for s in seqs], **extra}, "identity"
    )
    r = post_raw(fb.url, body, enc, key)
    assert r.status == 200, r.data


def lost_by_seq(ledger: dict[str, Any]) -> dict[int, str]:
    return {s: d["reason"] for d in ledger["lost"] for s in range(d["range"][0], d["range"][1] + 1)}


def wait_ledger(
    p: Pipeline, agent: str, key: str, stored: set[int], lost: set[int], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    ledger: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = p.get(f"/v1/agents/{agent}/ledger", key=key)
        if status == 200:
            ledger = body
            if expand(ledger["stored"]) == stored and set(lost_by_seq(ledger)) == lost:
                return ledger
        time.sleep(0.2)
    raise AssertionError(f"agent {agent}: want stored {stored} lost {lost}, ledger {ledger}")


def query_values(p: Pipeline, agent: str, key: str) -> list[float]:
    status, q = p.get(
        f"/v1/query?metric=rej.m&from=0&to=9999999999999&label=agent:{agent}&label=i:0", key=key
    )
    assert status == 200, q
    return [pt[1] for s in q["series"] for pt in s["points"]]


@pytest.fixture
def setup(
    pipeline_factory: Callable[[str], Pipeline], fallback_factory: Callable[..., Fallback]
) -> tuple[Pipeline, Fallback, dict[str, str], dict[str, str], str]:
    """A pipeline (not started) and a running fallback sharing tenants `default` and `acme`."""
    p = pipeline_factory("main")
    config_mod.init_data_dir(p.data_dir, p.key)
    acme = create_key(p.data_dir, "--tenant", "acme")
    replay_key = create_key(p.data_dir, "--replay")
    fb = fallback_factory(key=p.key)
    config_mod.init_data_dir(fb.data_dir, p.key)
    fb_acme = create_key(fb.data_dir, "--tenant", "acme")
    fb.start()
    return p, fb, {"default": p.key, "acme": acme}, {"default": p.key, "acme": fb_acme}, replay_key


def test_rejected_seqs_are_lost_with_the_reason_in_the_ledger(
    setup: tuple[Pipeline, Fallback, dict[str, str], dict[str, str], str],
) -> None:
    p, fb, keys, fb_keys, replay_key = setup
    # The agents fell back; the fallback (default limits) takes every request. Some are too big
    # for the main ingest, which was restarted with a much smaller server.max_decoded_bytes.
    send(fb, fb_keys["default"], "web-1", [1, 2, 3])
    send(fb, fb_keys["default"], "web-1", [4, 5], n=BIG)  # 413
    send(fb, fb_keys["default"], "web-1", [6])
    send(fb, fb_keys["default"], "web-1", [7], n=BIG)  # 413
    send(fb, fb_keys["default"], "web-1", [8, 9])
    # a rejected request that also carried ranges the agent's spool had dropped
    send(
        fb,
        fb_keys["default"],
        "web-1",
        [12],
        n=BIG,
        dropped=[{"first": 10, "last": 11, "reason": "spool_full"}],
    )
    send(fb, fb_keys["default"], "web-1", [13])
    send(fb, fb_keys["acme"], "acme-1", [1])
    send(fb, fb_keys["acme"], "acme-1", [2], n=BIG)  # 413, for tenant acme
    send(fb, fb_keys["acme"], "acme-1", [3])
    p.start(extra_env={"LOSSPROOF_SERVER_MAX_DECODED_BYTES": str(MAX_DECODED)})

    out = run_replay(fb.data_dir, p.url, replay_key)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "4 REJECTED" in out.stdout and "could NOT" not in out.stdout, out.stdout

    web1 = wait_ledger(p, "web-1", keys["default"], {1, 2, 3, 6, 8, 9, 13}, {4, 5, 7, 10, 11, 12})
    acme1 = wait_ledger(p, "acme-1", keys["acme"], {1, 3}, {2})
    for ledger in (web1, acme1):
        assert ledger["missing"] == [], ledger
        for seq, why in lost_by_seq(ledger).items():
            if seq in (10, 11):
                assert why == "spool_full", ledger  # the agent's own reason, forwarded
            else:
                assert why.startswith("replay rejected: 413 ") and str(MAX_DECODED) in why, ledger
                assert len(why) <= 1024
    assert "REJECTED 413" in out.stderr and "recorded as lost in the ledger" in out.stderr, out.stderr
    # each tenant's seqs went to that tenant only
    assert p.get("/v1/agents/acme-1/ledger", key=keys["default"])[0] == 404
    assert p.get("/v1/agents/web-1/ledger", key=keys["acme"])[0] == 404

    lines = [json.loads(x) for x in (fb.data_dir / "replay" / "rejected.jsonl").read_text().splitlines()]
    assert sorted((x["tenant"], x["agent"], tuple(map(tuple, x["seqs"]))) for x in lines) == [
        ("acme", "acme-1", ((2, 2),)),
        ("default", "web-1", ((4, 5),)),
        ("default", "web-1", ((7, 7),)),
        ("default", "web-1", ((12, 12),)),
    ]
    for x in lines:
        assert x["status"] == 413 and x["ledger"]["reported"] is True, x
    by_seqs = {tuple(map(tuple, x["seqs"])): x for x in lines}
    assert by_seqs[((12, 12),)]["ledger"]["lost"] == [[12, 12], [10, 11]]
    records = jn.read_all(fb.journal)
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position

    # running replay again duplicates nothing: nothing to do, then a full replay from the start
    out = run_replay(fb.data_dir, p.url, replay_key)
    assert out.returncode == 0 and out.stdout.startswith("replayed 0 requests"), out
    out = run_replay(fb.data_dir, p.url, replay_key, "--from-start")
    assert out.returncode == 3 and "4 REJECTED" in out.stdout, (out.stdout, out.stderr)
    # a marker sent afterwards: once it is stored, the worker has had the whole second replay
    assert p.post_reports("web-1", [rep(14, "web-1")]).status == 200
    again = wait_ledger(p, "web-1", keys["default"], {1, 2, 3, 6, 8, 9, 13, 14}, {4, 5, 7, 10, 11, 12})
    assert again["lost"] == web1["lost"] and again["missing"] == []
    assert wait_ledger(p, "acme-1", keys["acme"], {1, 3}, {2}) == acme1
    assert query_values(p, "web-1", keys["default"]) == [1, 2, 3, 6, 8, 9, 13, 14]
    assert query_values(p, "acme-1", keys["acme"]) == [1, 3]

    # "stored wins": the agent re-sends seq 7 (smaller) to the main ingest; the earlier lost mark
    # does not hide it, and the seq is stored, no longer lost
    assert p.post_reports("web-1", [rep(7, "web-1")]).status == 200
    wait_ledger(p, "web-1", keys["default"], {1, 2, 3, 6, 7, 8, 9, 13, 14}, {4, 5, 10, 11, 12})


# --- against a scripted aiohttp target -----------------------------------------------------------


class Target:
    """A real aiohttp server in a thread; ``script(kind, body)`` answers each POST, where kind is
    "lost" for a ledger report (no reports, only `dropped`) and "data" otherwise."""

    def __init__(self, script: Callable[[str, dict[str, Any]], tuple[int, dict[str, str], dict[str, Any]]]):
        self.script = script
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.url = ""

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def reports(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            kind = "lost" if not body.get("reports") and body.get("dropped") else "data"
            with self.lock:
                self.requests.append((kind, dict(request.headers), body))
                status, headers, answer = self.script(kind, body)
            return web.json_response(answer, status=status, headers={**ACK_HEADERS, **headers})

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/healthz", healthz)
            app.router.add_post("/v1/reports", reports)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def of(self, kind: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [r for r in self.requests if r[0] == kind]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def target_factory() -> Iterator[Callable[..., Target]]:
    made: list[Target] = []

    def make(script: Callable[[str, dict[str, Any]], tuple[int, dict[str, str], dict[str, Any]]]) -> Target:
        t = Target(script)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def rejected_lines(fb: Fallback) -> list[dict[str, Any]]:
    path = fb.data_dir / "replay" / "rejected.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_ledger_report_shape_retries_and_split(
    fallback: Fallback, target_factory: Callable[..., Target]
) -> None:
    fb = fallback
    send(fb, fb.key, "a", [1, 2, 4, 7, 8, 9])  # refused: 400; three seq ranges
    send(fb, fb.key, "a", [10])
    error = "malformed: " + "x" * 3000  # a long error: the ledger's reason is cut short
    lost_answers: list[int] = []

    def script(kind: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        if kind == "data":
            # as the main ingest refuses a request holding a malformed report, merged or not
            if {1, 2, 4, 7, 8, 9} & {r["seq"] for r in body["reports"]}:
                return 400, {}, {"error": error}
            return ack_of(body)
        if len(lost_answers) < 2:  # the ledger report is retried like any request
            lost_answers.append(503)
            return 503, {"Retry-After": "0"}, {"error": "log cannot accept data durably"}
        if len(body["dropped"]) > 1:  # too big for this ingest: replay halves it
            return 413, {}, {"error": "request body too large"}
        return ack_of(body)

    t = target_factory(script)
    out = run_replay(fb.data_dir, t.url, "lp_replay_key")
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "1 REJECTED" in out.stdout and "could NOT" not in out.stdout, out.stdout
    lost = t.of("lost")
    for _kind, headers, body in lost:
        assert headers["Authorization"] == "Bearer lp_replay_key"
        assert headers["X-Lossproof-Tenant"] == "default"
        assert headers["Content-Type"] == "application/json"
        assert body["agent"] == "a" and body["reports"] == [] and set(body) == {"agent", "reports", "dropped"}
    reasons = {d["reason"] for _k, _h, b in lost for d in b["dropped"]}
    assert len(reasons) == 1
    why = reasons.pop()
    assert why.startswith("replay rejected: 400 malformed: xxx") and len(why) == rejected.REASON_MAX, why
    accepted = [(d["first"], d["last"]) for _k, _h, b in lost if len(b["dropped"]) == 1 for d in b["dropped"]]
    assert sorted(accepted) == [(1, 2), (4, 4), (7, 9)]
    [line] = rejected_lines(fb)
    assert line["status"] == 400 and line["error"] == error and line["seqs"] == [[1, 2], [4, 4], [7, 9]]
    assert line["ledger"]["reported"] is True
    assert sorted(line["ledger"]["lost"]) == [[1, 2], [4, 4], [7, 9]]
    records = jn.read_all(fb.journal)
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position


def test_a_refused_ledger_report_is_written_down(
    fallback: Fallback, target_factory: Callable[..., Target]
) -> None:
    fb = fallback
    send(fb, fb.key, "b", [1])
    send(fb, fb.key, "b", [2])

    def script(kind: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        if kind == "lost":
            return 400, {}, {"error": "agent not allowed"}
        if body["reports"][0]["seq"] == 1:
            return 413, {}, {"error": "decompressed body exceeds 1024 bytes"}
        return ack_of(body)

    t = target_factory(script)
    out = run_replay(fb.data_dir, t.url, "k")
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "1 REJECTED" in out.stdout and "1 of them could NOT be recorded as lost" in out.stdout, out.stdout
    assert "ledger NOT told" in out.stderr, out.stderr
    [line] = rejected_lines(fb)
    assert line["seqs"] == [[1, 1]] and line["status"] == 413
    assert line["ledger"]["reported"] is False and line["ledger"]["not_reported"] == [[1, 1]]
    assert line["ledger"]["error"] == "could not report these seqs as lost: 400 agent not allowed"
    records = jn.read_all(fb.journal)
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position


def test_stopped_before_the_ledger_heard_of_it_keeps_the_request(
    fallback: Fallback, target_factory: Callable[..., Target]
) -> None:
    """A rejection is done only once the ledger report is answered: interrupted before, nothing is
    counted as done and the next run does it all again."""
    fb = fallback
    send(fb, fb.key, "c", [1])
    send(fb, fb.key, "c", [2])
    ledger_up = threading.Event()

    def script(kind: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        if kind == "lost" and not ledger_up.is_set():
            return 503, {"Retry-After": "0"}, {"error": "log cannot accept data durably"}
        if kind == "data" and body["reports"][0]["seq"] == 1:
            return 400, {}, {"error": "bad"}
        return ack_of(body)

    t = target_factory(script)
    args = lossproof(
        "replay", "--from", str(fb.data_dir), "--to", t.url, "--api-key", "k", "--concurrency", "1"
    )
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(t.of("lost")) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert rejected_lines(fb) == []
    records = jn.read_all(fb.journal)
    progress = pg.load_progress(fb.data_dir)
    assert progress is None or progress.position <= records[0].position, progress

    ledger_up.set()
    out = run_replay(fb.data_dir, t.url, "k")
    assert out.returncode == 3, (out.stdout, out.stderr)
    [line] = rejected_lines(fb)
    assert line["seqs"] == [[1, 1]] and line["ledger"]["reported"] is True
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position


def test_retry_after_zero_does_not_mean_no_backoff(
    fallback: Fallback, target_factory: Callable[..., Target]
) -> None:
    fb = fallback
    for seq in range(1, 5):
        send(fb, fb.key, "d", [seq])

    t = target_factory(lambda kind, body: (503, {"Retry-After": "0"}, {"error": "log cannot accept"}))
    args = lossproof(
        "replay", "--from", str(fb.data_dir), "--to", t.url, "--api-key", "k", "--concurrency", "4"
    )
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not t.of("data"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.02)
        time.sleep(3.0)
        n = len(t.of("data"))
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    # 4 requests in flight, each backing off 0.1 s doubling (full jitter): about 25 in 3 s. With
    # Retry-After: 0 taken as "at once", it was hundreds.
    assert 4 <= n <= 80, n


def test_backoff_delay_takes_retry_after_as_a_floor_only() -> None:
    assert pacing.retry_after("0") == 0.0
    assert pacing.retry_after("5") == 5.0
    assert pacing.retry_after("86400") == pacing.RETRY_AFTER_CAP == 60.0
    assert pacing.retry_after("inf") == 60.0
    assert pacing.retry_after("nan") is None
    assert pacing.retry_after("-3") == 0.0
    assert pacing.retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    for attempt in range(12):
        cap = min(pacing.BACKOFF_CAP, pacing.BACKOFF_BASE * 2**attempt)
        for ra in (None, 0.0):
            delays = [pacing.backoff_delay(attempt, ra) for _ in range(200)]
            assert all(0 <= d <= cap + 0.05 for d in delays), (attempt, ra)
            assert sum(delays) / len(delays) > cap / 4, (attempt, ra)  # not "at once"
        assert all(5.0 <= pacing.backoff_delay(attempt, 5.0) <= max(cap, 6.0) for _ in range(50))
        assert all(pacing.backoff_delay(attempt, 60.0) <= 61.0 for _ in range(50))
    assert pacing.backoff_delay(10_000, None) <= pacing.BACKOFF_CAP  # no overflow on a long outage
