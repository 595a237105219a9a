"""The native protocol against a real `lossproof up`: round trip, ledger, replay, bad input, tenancy."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time

import zstandard

from lptest.pipeline import HTTP, Pipeline, expand, report

T_MS = 1_767_225_600_000  # a plausible point time (unix ms)


def test_round_trip_query_and_ledger(pipeline: Pipeline) -> None:
    r = pipeline.post_reports("a1", [report(1), report(2), report(4)])
    assert r.status == 200, r.data
    body = json.loads(r.data)
    assert body["acked"] == [[1, 2], [4, 4]]
    assert body["replay"] == []

    ledger = pipeline.wait_stored("a1", {1, 2, 4})
    assert ledger["stored"] == [[1, 2], [4, 4]]
    assert ledger["missing"] == [[3, 3]]

    status, q = pipeline.get("/v1/query?metric=cpu.user&from=0&to=9999999999999&label=i:1")
    assert status == 200
    assert len(q["series"]) == 1
    s = q["series"][0]
    assert s["labels"] == {"host": "h", "i": "1"}
    assert [p[1] for p in s["points"]] == [1.1, 2.1, 4.1]

    status, agents = pipeline.get("/v1/agents")
    assert status == 200
    assert [a["agent"] for a in agents["agents"]] == ["a1"]


def test_replay_is_requested_for_a_hole_and_duplicates_are_harmless(pipeline: Pipeline) -> None:
    assert pipeline.post_reports("a2", [report(1), report(3)]).status == 200
    pipeline.wait_stored("a2", {1, 3})
    # the hole at 2 is older than the grace period (1 s in tests) after a moment: the server asks
    deadline = time.monotonic() + 10
    replay = []
    while time.monotonic() < deadline and not replay:
        time.sleep(0.3)
        r = pipeline.post_reports("a2", [report(3)])  # a resend: harmless
        assert r.status == 200
        replay = json.loads(r.data)["replay"]
    assert replay == [[2, 2]]
    assert pipeline.post_reports("a2", [report(2)]).status == 200
    ledger = pipeline.wait_stored("a2", {1, 2, 3})
    assert ledger["missing"] == []
    _status, q = pipeline.get("/v1/query?metric=cpu.user&from=0&to=9999999999999&label=i:0")
    assert [p[1] for p in q["series"][0]["points"]] == [1.0, 2.0, 3.0]  # each point once


def test_compressed_and_msgpack_bodies(pipeline: Pipeline) -> None:
    import msgspec

    raw = json.dumps({"agent": "c", "reports": [report(1)]}).encode()
    for enc, body in (("gzip", gzip.compress(raw)), ("zstd", zstandard.ZstdCompressor().compress(raw))):
        r = HTTP.request(
            "POST",
            pipeline.url + "/v1/reports",
            body=body,
            headers=pipeline.headers(**{"Content-Encoding": enc}),
        )
        assert r.status == 200, (enc, r.data)
    mp = msgspec.msgpack.encode({"agent": "c", "reports": [report(2)]})
    r = HTTP.request(
        "POST",
        pipeline.url + "/v1/reports",
        body=mp,
        headers=pipeline.headers(**{"Content-Type": "application/msgpack"}),
    )
    assert r.status == 200, r.data
    pipeline.wait_stored("c", {1, 2})


def _post(p: Pipeline, body: bytes, **headers: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = HTTP.request("POST", p.url + "/v1/reports", body=body, headers={**p.headers(), **headers})
    return r.status, json.loads(r.data)


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(pipeline: Pipeline) -> None:
    p = pipeline
    good = json.dumps({"agent": "ok", "reports": [report(1)]}).encode()
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("malformed json", b'{"agent": "x", "reports": [', {}, 400, "malformed"),
        ("not an object", b"[1,2,3]", {}, 400, "Expected"),
        (
            "wrong type",
            json.dumps({"agent": "x", "reports": [{"seq": "one", "points": []}]}).encode(),
            {},
            400,
            "$.reports[0].seq",
        ),
        (
            "seq zero",
            json.dumps({"agent": "x", "reports": [{"seq": 0, "points": []}]}).encode(),
            {},
            400,
            "seq",
        ),
        ("no reports", json.dumps({"agent": "x", "reports": []}).encode(), {}, 400, "reports"),
        ("missing agent", json.dumps({"reports": [report(1)]}).encode(), {}, 400, "agent"),
        (
            "value not a number",
            json.dumps(
                {"agent": "x", "reports": [{"seq": 1, "points": [{"metric": "m", "t": T_MS, "v": "high"}]}]}
            ).encode(),
            {},
            400,
            "points[0].v",
        ),
        (
            "timestamp in ns",
            json.dumps(
                {
                    "agent": "x",
                    "reports": [
                        {"seq": 1, "points": [{"metric": "m", "t": 1_767_225_600_000_000_000, "v": 1}]}
                    ],
                }
            ).encode(),
            {},
            400,
            ".t",
        ),
        ("bad gzip", b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "gzip"),
        ("bad zstd", b"\x28\xb5\x2f\xfdgarbage", {"Content-Encoding": "zstd"}, 400, "zstd"),
        ("unknown encoding", good, {"Content-Encoding": "br"}, 400, "Content-Encoding"),
        ("truncated gzip", gzip.compress(good)[:-10], {"Content-Encoding": "gzip"}, 400, "gzip"),
        ("not utf-8", b'{"agent": "\xff\xfe", "reports": []}', {}, 400, ""),
        ("wrong content type", good, {"Content-Type": "text/plain"}, 415, "Content-Type"),
    ]
    for name, body, headers, status, needle in cases:
        got, answer = _post(p, body, **headers)
        assert got == status, (name, got, answer)
        assert needle in answer["error"], (name, answer)

    # zip bombs: 200 MiB of zeros compress to a few hundred KiB; refused without inflating it all
    zeros = b"\0" * (200 * 2**20)
    for enc, bomb in (
        ("gzip", gzip.compress(zeros, 1)),
        ("zstd", zstandard.ZstdCompressor().compress(zeros)),
    ):
        got, answer = _post(p, bomb, **{"Content-Encoding": enc})
        assert got == 413, (enc, answer)
    # a huge raw body is refused by its Content-Length
    got, answer = _post(p, b" " * (17 * 2**20))
    assert got == 413, answer

    # keys
    r = HTTP.request("POST", p.url + "/v1/reports", body=good, headers={"Content-Type": "application/json"})
    assert r.status == 401 and "API key" in json.loads(r.data)["error"]
    r = HTTP.request("POST", p.url + "/v1/reports", body=good, headers=p.headers(key="lp_wrong"))
    assert r.status == 401
    r = HTTP.request("GET", p.url + "/v1/query?metric=m", headers={})
    assert r.status == 401

    # nothing of the above was stored, and the server still serves
    assert p.post_reports("ok", [report(1)]).status == 200
    p.wait_stored("ok", {1})
    status, agents = p.get("/v1/agents")
    assert [a["agent"] for a in agents["agents"]] == ["ok"]
    metrics = p.metrics()
    assert 'lossproof_ingest_requests_total{protocol="native",status="400"}' in metrics
    assert "lossproof_worker_dead_letters_total 0.0" in metrics


def test_query_parameters_are_checked(pipeline: Pipeline) -> None:
    for path, needle in (
        ("/v1/query", "metric"),
        ("/v1/query?metric=m&from=abc", "from"),
        ("/v1/query?metric=m&from=10&to=5", "after"),
        ("/v1/query?metric=m&label=nocolon", "label"),
    ):
        status, body = pipeline.get(path)
        assert status == 400 and needle in body["error"], (path, body)
    status, body = pipeline.get("/v1/agents/nobody/ledger")
    assert status == 404


def test_tenants_are_isolated(pipeline: Pipeline) -> None:
    pipeline.stop()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lossproof",
            "keys",
            "create",
            "--tenant",
            "other",
            "--data-dir",
            str(pipeline.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    other_key = out.stdout.strip().splitlines()[0]
    assert other_key not in (pipeline.data_dir / "lossproof.toml").read_text()  # stored hashed
    pipeline.start()

    assert pipeline.post_reports("mine", [report(1, metric="secret.metric")]).status == 200
    pipeline.wait_stored("mine", {1})
    status, q = pipeline.get("/v1/query?metric=secret.metric&from=0&to=9999999999999", key=other_key)
    assert status == 200 and q["series"] == []
    status, agents = pipeline.get("/v1/agents", key=other_key)
    assert agents["agents"] == []
    status, _ = pipeline.get("/v1/agents/mine/ledger", key=other_key)
    assert status == 404
    status, _body = pipeline.get("/v1/agents?tenant=default", key=other_key)
    assert status == 403
    # the other tenant's own agent named like ours is a different agent
    assert pipeline.post_reports("mine", [report(7)], key=other_key).status == 200
    status, ledger = pipeline.get("/v1/agents/mine/ledger", key=other_key)
    deadline = time.monotonic() + 20
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        status, ledger = pipeline.get("/v1/agents/mine/ledger", key=other_key)
    assert expand(ledger["stored"]) == {7}
    assert expand(pipeline.ledger("mine")["stored"]) == {1}


def test_healthz_and_metrics(pipeline: Pipeline) -> None:
    r = HTTP.request("GET", pipeline.url + "/healthz")
    assert r.status == 200
    assert pipeline.post_reports("m", [report(1)]).status == 200
    pipeline.wait_stored("m", {1})
    text = pipeline.metrics()
    for name in (
        "lossproof_ingest_requests_total",
        "lossproof_log_append_seconds_bucket",
        "lossproof_log_fsync_seconds_bucket",
        "lossproof_log_bytes",
        "lossproof_worker_lag_records",
        "lossproof_worker_lag_seconds",
        "lossproof_worker_behind",
        "lossproof_worker_dead_letters_total",
    ):
        assert name in text, name
