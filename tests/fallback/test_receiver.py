"""`lossproof fallback` as a real process: OK only after fsync, kill -9, faults, bad input like ingest."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import threading
import time
from collections.abc import Callable

import urllib3
import zstandard

from lossproof.fallback import journal as jn
from lptest.fallback import HTTP, Fallback, journal_seqs, lossproof, post_raw
from lptest.pipeline import Pipeline, report

T_MS = 1_767_225_600_000  # a plausible point time (unix ms)


def test_ack_and_journal_round_trip(fallback: Fallback) -> None:
    r = fallback.post("a1", [report(1), report(2), report(4)])
    assert r.status == 200, r.data
    assert json.loads(r.data) == {"acked": [[1, 2], [4, 4]], "replay": []}
    assert fallback.post("a1", [report(5)], encoding="zstd").status == 200
    assert fallback.post("a2", [report(1)], encoding="gzip").status == 200
    # a request carrying only what the agent's spool dropped is kept too (replay forwards it)
    body = json.dumps(
        {"agent": "a1", "reports": [], "dropped": [{"first": 3, "last": 3, "reason": "spool_full"}]}
    ).encode()
    r = post_raw(fallback.url, body, "identity", fallback.key)
    assert r.status == 200, r.data
    assert json.loads(r.data) == {"acked": [], "replay": []}

    records = jn.read_all(fallback.journal)
    assert [(r.entry.agent, r.entry.seqs, r.entry.encoding) for r in records] == [
        ("a1", [(1, 2), (4, 4)], ""),
        ("a1", [(5, 5)], "zstd"),
        ("a2", [(1, 1)], "gzip"),
        ("a1", [], ""),
    ]
    assert records[-1].entry.body == body  # exactly as received
    assert {r.entry.tenant for r in records} == {"default"}
    assert [r.entry.reports for r in records] == [3, 1, 1, 0]
    assert [r.entry.points for r in records] == [9, 3, 3, 0]

    metrics = fallback.metrics()
    assert 'lossproof_fallback_requests_total{status="200"} 4.0' in metrics
    assert 'lossproof_fallback_reports_total{tenant="default"} 5.0' in metrics
    assert "lossproof_fallback_fsync_seconds_count" in metrics
    assert "lossproof_fallback_pending_replay_bytes" in metrics
    assert "lossproof_fallback_healthy 1.0" in metrics
    size = sum(p.stat().st_size for p in fallback.journal.glob("*.jnl"))
    assert f"lossproof_fallback_journal_bytes {float(size)}" in metrics


def test_kill9_while_clients_stream_keeps_every_acknowledged_request(fallback: Fallback) -> None:
    """Agents stream (and retry on errors, like real agents); the receiver is kill -9'd at random
    moments and restarted. Every request that got a 200 must be in the journal afterwards."""
    acked: set[tuple[str, int]] = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def agent(i: int) -> None:
        name = f"k{i}"
        seq = 0
        encoding = ("identity", "gzip", "zstd")[i % 3]
        rnd = random.Random(i)
        while not stop.is_set():
            k = rnd.randint(1, 4)
            batch = [report(seq + j, n=rnd.randint(0, 20)) for j in range(1, k + 1)]
            try:
                r = fallback.post(name, batch, encoding)
            except urllib3.exceptions.HTTPError:
                time.sleep(0.02)
                continue  # not acknowledged: send the same reports again
            if r.status == 200:
                with lock:
                    acked.update((name, seq + j) for j in range(1, k + 1))
                seq += k
            else:
                errors.append(f"{r.status} {r.data[:200]!r}")
                time.sleep(0.05)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            time.sleep(random.uniform(0.3, 0.9))
            fallback.kill9()
            time.sleep(0.1)
            fallback.start()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert len(acked) > 200, len(acked)
    stored = journal_seqs(fallback.journal)
    in_journal = {(agent, seq) for _tenant, agent, seq in stored}
    missing = acked - in_journal
    assert not missing, f"{len(missing)} acknowledged reports are not in the journal: {sorted(missing)[:10]}"
    assert fallback.post("after", [report(1)]).status == 200


def _post(url: str, key: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}
    r = HTTP.request("POST", url + "/v1/reports", body=body, headers=h)
    return r.status, dict(r.headers), json.loads(r.data)


def test_bad_input_gets_the_same_answers_as_ingest(
    pipeline: Pipeline, fallback_factory: Callable[..., Fallback]
) -> None:
    fb = fallback_factory(key=pipeline.key)
    fb.start()
    good = json.dumps({"agent": "ok", "reports": [report(1)]}).encode()
    zeros = b"\0" * (200 * 2**20)
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("malformed json", b'{"agent": "x", "reports": [', {}),
        ("not an object", b"[1,2,3]", {}),
        ("wrong type", json.dumps({"agent": "x", "reports": [{"seq": "one", "points": []}]}).encode(), {}),
        ("seq zero", json.dumps({"agent": "x", "reports": [{"seq": 0, "points": []}]}).encode(), {}),
        ("no reports", json.dumps({"agent": "x", "reports": []}).encode(), {}),
        ("missing agent", json.dumps({"reports": [report(1)]}).encode(), {}),
        (
            "value not a number",
            json.dumps(
                {"agent": "x", "reports": [{"seq": 1, "points": [{"metric": "m", "t": T_MS, "v": "high"}]}]}
            ).encode(),
            {},
        ),
        (
            "timestamp in ns",
            json.dumps(
                {"agent": "x", "reports": [{"seq": 1, "points": [{"metric": "m", "t": 10**18, "v": 1}]}]}
            ).encode(),
            {},
        ),
        ("bad gzip", b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}),
        ("bad zstd", b"\x28\xb5\x2f\xfdgarbage", {"Content-Encoding": "zstd"}),
        ("unknown encoding", good, {"Content-Encoding": "br"}),
        ("truncated gzip", gzip.compress(good)[:-10], {"Content-Encoding": "gzip"}),
        ("not utf-8", b'{"agent": "\xff\xfe", "reports": []}', {}),
        ("wrong content type", good, {"Content-Type": "text/plain"}),
        ("gzip bomb", gzip.compress(zeros, 1), {"Content-Encoding": "gzip"}),
        ("zstd bomb", zstandard.ZstdCompressor().compress(zeros), {"Content-Encoding": "zstd"}),
        ("huge body", b" " * (17 * 2**20), {}),
    ]
    for name, body, headers in cases:
        want = _post(pipeline.url, pipeline.key, body, **headers)
        got = _post(fb.url, fb.key, body, **headers)
        assert 400 <= got[0] < 500, (name, got)
        assert (got[0], got[2]) == (want[0], want[2]), name
    for key in ("lp_wrong", ""):
        want = _post(pipeline.url, key, good)
        got = _post(fb.url, key, good)
        assert got[0] == want[0] == 401 and got[2] == want[2], key
        assert got[1]["WWW-Authenticate"] == "Bearer"
    # nothing of that reached the journal; the receiver still serves
    assert jn.read_all(fb.journal) == []
    assert fb.post("ok", [report(1)]).status == 200
    assert len(jn.read_all(fb.journal)) == 1
    assert 'lossproof_fallback_requests_total{status="400"}' in fb.metrics()


def test_fsync_or_write_failure_answers_503_never_200(fallback: Fallback) -> None:
    fb = fallback
    assert fb.post("f", [report(1)]).status == 200
    for faults, needle in (
        ({"fallback.fsync": {"mode": "fail"}}, "injected fsync"),
        ({"fallback.write": {"mode": "enospc"}}, "No space left"),
        ({"fallback.write": {"mode": "fail"}}, "injected write"),
    ):
        fb.faults(faults)
        for seq in (2, 3):
            r = fb.post("f", [report(seq)])
            assert r.status == 503, (faults, r.status, r.data)
            assert r.headers["Retry-After"] == "1"
            assert needle in json.loads(r.data)["error"]
        h = HTTP.request("GET", fb.url + "/healthz")
        assert h.status == 503 and needle in json.loads(h.data)["journal"]
        assert "lossproof_fallback_healthy 0.0" in fb.metrics()
        fb.faults({})
        # it probes the disk by itself: healthy again without traffic
        deadline = time.monotonic() + 5
        while HTTP.request("GET", fb.url + "/healthz").status != 200:
            assert time.monotonic() < deadline, "never became healthy again"
            time.sleep(0.1)
    assert fb.post("f", [report(4)]).status == 200
    assert [s for _t, _a, s in journal_seqs(fb.journal)] == [1, 4]
    assert 'lossproof_fallback_requests_total{status="503"} 6.0' in fb.metrics()


def test_fsync_slower_than_the_timeout_is_a_503(fallback_factory: Callable[..., Fallback]) -> None:
    fb = fallback_factory()
    fb.start(extra_env={"LOSSPROOF_SERVER_APPEND_TIMEOUT_SECONDS": "0.5"})
    fb.faults({"fallback.fsync": {"mode": "delay", "seconds": 1.5}})
    r = fb.post("slow", [report(1)])
    assert r.status == 503 and "no durable confirmation within 0.5s" in json.loads(r.data)["error"], r.data
    fb.faults({})
    time.sleep(1.6)
    assert fb.post("slow", [report(2)]).status == 200


def test_corruption_in_acknowledged_data_refuses_to_start(fallback: Fallback) -> None:
    for seq in range(1, 11):
        assert fallback.post("c", [report(seq)]).status == 200
    fallback.kill9()
    records = jn.read_all(fallback.journal)
    victim = records[5]
    path = jn.segment_path(fallback.journal, victim.segment)
    with open(path, "r+b") as f:
        f.seek(victim.pos + jn.HEADER_SIZE + 5)
        b = f.read(1)
        f.seek(victim.pos + jn.HEADER_SIZE + 5)
        f.write(bytes([b[0] ^ 1]))
    out = subprocess.run(
        lossproof("fallback", "--data-dir", str(fallback.data_dir), "--port", str(fallback.port)),
        capture_output=True,
        text=True,
        timeout=30,
        env={"LOSSPROOF_API_KEY": fallback.key, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1, out
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: journal corrupt: ") and str(path) in last, last
    assert f"at byte {victim.pos}: CRC mismatch" in last and "move the damaged segment aside" in last


def test_one_receiver_per_data_dir(fallback: Fallback) -> None:
    out = subprocess.run(
        lossproof("fallback", "--data-dir", str(fallback.data_dir), "--port", "0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "another fallback receiver" in out.stderr.strip().splitlines()[-1]
    assert fallback.post("x", [report(1)]).status == 200


def test_config_is_created_with_the_given_key_and_other_tenants_work(
    fallback_factory: Callable[..., Fallback],
) -> None:
    fb = fallback_factory()
    fb.start()
    fb.stop()
    out = subprocess.run(
        lossproof("keys", "create", "--tenant", "acme", "--data-dir", str(fb.data_dir)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    acme_key = out.stdout.strip().splitlines()[0]
    fb.start()
    assert fb.post("x", [report(1)], key=acme_key).status == 200
    assert fb.post("x", [report(1)]).status == 200
    assert [(t, a) for t, a, _ in journal_seqs(fb.journal)] == [("acme", "x"), ("default", "x")]
