"""`lossproof replay` end to end: real fallback, real pipeline, replay killed -9 midway, run again."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lossproof import config as config_mod
from lossproof.fallback import journal as jn
from lossproof.fallback import progress as pg
from lossproof.protocol.ack import PROTOCOL_HEADER
from lptest.fallback import (
    Fallback,
    Target,
    ack_of_raw,
    create_key,
    encode_body,
    lossproof,
    post_raw,
    record_seqs,
    run_replay,
    sent_seqs,
)
from lptest.pipeline import Pipeline, expand, report

T0 = 1_767_225_600_000
ONE_A_REQUEST = ("--batch-points", "0")  # each journal record in a request of its own


def numbered(seq: int, agent: str, n: int = 5) -> dict[str, Any]:
    """A report whose points name their agent and seq, so the query shows each one exactly."""
    return {
        "seq": seq,
        "points": [
            {"metric": "replay.m", "labels": {"agent": agent, "i": str(i)}, "t": T0 + seq * 1000, "v": seq}
            for i in range(n)
        ],
    }


def fill(fb: Fallback, keys: dict[str, str], agents: dict[str, str], reports: int) -> None:
    """Each agent posts ``reports`` numbered reports in batches of 1-3, in mixed encodings."""
    rnd = random.Random(7)

    def one(agent: str, tenant: str) -> None:
        seq = 1
        while seq <= reports:
            k = min(rnd.randint(1, 3), reports - seq + 1)
            body, enc = encode_body(
                {"agent": agent, "reports": [numbered(s, agent) for s in range(seq, seq + k)]},
                rnd.choice(["identity", "gzip", "zstd"]),
            )
            r = post_raw(fb.url, body, enc, keys[tenant])
            assert r.status == 200, r.data
            seq += k

    threads = [threading.Thread(target=one, args=(a, t)) for a, t in agents.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def check_stored_once(p: Pipeline, keys: dict[str, str], agents: dict[str, str], reports: int) -> None:
    for agent, tenant in agents.items():
        deadline = time.monotonic() + 30
        while True:
            status, ledger = p.get(f"/v1/agents/{agent}/ledger", key=keys[tenant])
            if status == 200 and expand(ledger["stored"]) == set(range(1, reports + 1)):
                break
            assert time.monotonic() < deadline, (agent, status, ledger)
            time.sleep(0.2)
        assert ledger["stored"] == [[1, reports]] and ledger["missing"] == [] and ledger["lost"] == []
        status, q = p.get(
            f"/v1/query?metric=replay.m&from=0&to=9999999999999&label=agent:{agent}&label=i:0",
            key=keys[tenant],
        )
        assert status == 200
        assert len(q["series"]) == 1
        assert [pt[1] for pt in q["series"][0]["points"]] == [float(s) for s in range(1, reports + 1)]
    # tenants are kept apart: the replay key wrote each record as the tenant the fallback recorded
    for agent, tenant in agents.items():
        other = next(t for t in keys if t != tenant)
        status, _ = p.get(f"/v1/agents/{agent}/ledger", key=keys[other])
        assert status == 404, (agent, tenant, other)


@pytest.fixture
def setup(
    tmp_path: Path, pipeline_factory: Callable[[str], Pipeline], fallback_factory: Callable[..., Fallback]
) -> Iterator[tuple[Pipeline, Fallback, dict[str, str], str]]:
    """A pipeline and a fallback sharing tenants `default` and `acme`, plus a replay key."""
    p = pipeline_factory("main")
    config_mod.init_data_dir(p.data_dir, p.key)
    acme = create_key(p.data_dir, "--tenant", "acme")
    replay_key = create_key(p.data_dir, "--replay")
    fb = fallback_factory(key=p.key, extra_args=["--segment-bytes", "32K"])
    config_mod.init_data_dir(fb.data_dir, p.key)
    fb_acme = create_key(fb.data_dir, "--tenant", "acme")
    fb.start()
    keys = {"default": p.key, "acme": acme}
    fb_keys = {"default": p.key, "acme": fb_acme}
    fb.fb_keys = fb_keys  # type: ignore[attr-defined]
    yield p, fb, keys, replay_key


def test_replay_killed_midway_then_resumed_stores_every_report_once(
    setup: tuple[Pipeline, Fallback, dict[str, str], str],
) -> None:
    p, fb, keys, replay_key = setup
    agents = {"web-1": "default", "web-2": "default", "db-1": "default", "acme-1": "acme", "acme-2": "acme"}
    reports = 120
    fill(fb, fb.fb_keys, agents, reports)  # type: ignore[attr-defined]
    records = jn.read_all(fb.journal)
    assert len(jn.list_segments(fb.journal)) > 3
    p.start()

    # first run: slow (rate-limited), killed -9 after a while
    args = lossproof("replay", "--from", str(fb.data_dir), "--to", p.url, "--api-key", replay_key)
    proc = subprocess.Popen([*args, "--rate", "80"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        progress = pg.load_progress(fb.data_dir)
        if progress is not None and progress.requests >= 40:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = pg.load_progress(fb.data_dir)
    assert first is not None and first.requests < len(records)
    assert first.target == p.url

    # second run, with the main log refusing writes for a moment: 503s are retried, never skipped
    p.faults({"log.fsync": {"mode": "fail"}})
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while 'lossproof_ingest_requests_total{protocol="native",status="503"}' not in p.metrics():
        assert time.monotonic() < deadline and proc.poll() is None, "no 503 seen"
        time.sleep(0.05)
    time.sleep(0.5)
    p.faults({})
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, (stdout, stderr)
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("replayed ") and " requests/s" in summary, summary
    assert "retries" in summary, summary
    assert "503" in stderr
    done = pg.load_progress(fb.data_dir)
    assert done is not None and done.requests >= len(records)
    assert done.position == records[-1].next_position

    check_stored_once(p, keys, agents, reports)

    # a third run has nothing to do
    out = run_replay(fb.data_dir, p.url, replay_key)
    assert out.returncode == 0 and out.stdout.startswith("replayed 0 requests"), out


def test_replay_while_receiving_then_follow(setup: tuple[Pipeline, Fallback, dict[str, str], str]) -> None:
    """Without --follow a replay takes what is durable and stops; --follow keeps draining."""
    p, fb, keys, replay_key = setup
    p.start()
    agents = {"f-1": "default", "f-2": "acme"}
    fill(fb, fb.fb_keys, agents, 30)  # type: ignore[attr-defined]
    stop = threading.Event()

    def more() -> None:
        seq = 31
        while not stop.is_set() and seq <= 200:
            for agent, tenant in agents.items():
                assert fb.post(agent, [numbered(seq, agent)], key=fb.fb_keys[tenant]).status == 200  # type: ignore[attr-defined]
            seq += 1
            time.sleep(0.005)

    t = threading.Thread(target=more)
    t.start()
    try:
        out = run_replay(fb.data_dir, p.url, replay_key)
        assert out.returncode == 0, out.stderr
        assert not stop.is_set()
    finally:
        t.join(60)
    args = lossproof("replay", "--from", str(fb.data_dir), "--to", p.url, "--api-key", replay_key, "--follow")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        for seq in range(201, 221):  # sent while the replay follows
            for agent, tenant in agents.items():
                assert fb.post(agent, [numbered(seq, agent)], key=fb.fb_keys[tenant]).status == 200  # type: ignore[attr-defined]
        check_stored_once(p, keys, agents, 220)
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted" in stdout


def test_prune_deletes_only_replayed_segments(setup: tuple[Pipeline, Fallback, dict[str, str], str]) -> None:
    p, fb, keys, replay_key = setup
    p.start()
    agents = {"p-1": "default"}
    fill(fb, fb.fb_keys, agents, 400)  # type: ignore[attr-defined]
    before = jn.list_segments(fb.journal)
    assert len(before) > 3
    out = run_replay(fb.data_dir, p.url, replay_key, "--prune", "--retention", "1h")
    assert out.returncode == 0, out.stderr
    assert jn.list_segments(fb.journal) == before  # replayed, but retention has not passed
    out = run_replay(fb.data_dir, p.url, replay_key, "--prune", "--retention", "0")
    assert out.returncode == 0, out.stderr
    after = jn.list_segments(fb.journal)
    assert after == before[-1:], (before, after)  # everything but the newest
    assert "pruned" in out.stdout
    # new data after pruning is replayed as usual
    assert fb.post("p-1", [numbered(401, "p-1")]).status == 200
    out = run_replay(fb.data_dir, p.url, replay_key)
    assert out.returncode == 0 and out.stdout.startswith("replayed 1 requests"), out.stdout
    check_stored_once(p, keys, agents, 401)

    # the receiver prunes by itself too (retention 0, checked every 0.2 s)
    fb.stop()
    fb.extra_args = ["--segment-bytes", "32K", "--retention", "0", "--prune-interval", "0.2"]
    fb.start()
    fill(fb, fb.fb_keys, {"p-2": "default"}, 300)  # type: ignore[attr-defined]
    assert len(jn.list_segments(fb.journal)) > 3
    out = run_replay(fb.data_dir, p.url, replay_key)
    assert out.returncode == 0
    deadline = time.monotonic() + 5
    while len(jn.list_segments(fb.journal)) > 1:
        assert time.monotonic() < deadline, jn.list_segments(fb.journal)
        time.sleep(0.1)
    assert "lossproof_fallback_pruned_segments_total" in fb.metrics()
    check_stored_once(p, keys, {"p-2": "default"}, 300)


# --- against a scripted target: headers, retries, rejections -------------------------------------


def test_headers_retries_and_rejections_against_a_scripted_target(fallback: Fallback) -> None:
    fb = fallback
    sent = []
    for i in range(1, 21):
        body, enc = encode_body(
            {"agent": "bad" if i == 7 else f"s{i % 3}", "reports": [report(i)]},
            ("identity", "gzip", "zstd")[i % 3],
        )
        assert post_raw(fb.url, body, enc, fb.key).status == 200
        sent.append((body, enc))
    attempts: dict[bytes, int] = {}

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        attempts[body] = attempts.get(body, 0) + 1
        if body == sent[6][0]:  # the request of agent "bad"
            return 400, {}, b'{"error": "malformed: something - at `$.reports[0]`"}'
        if n < 3:
            return 503, {"Retry-After": "0"}, b'{"error": "log cannot accept data durably"}'
        if n == 5:
            return 0, {}, b""  # connection dropped
        if n == 8:
            return 429, {"Retry-After": "0"}, b'{"error": "slow down"}'
        return ack_of_raw(headers, body)

    target = Target(script)
    try:
        # a request per record (merged requests: test_merged_requests_...)
        out = run_replay(fb.data_dir, target.url, "lp_replay_key", "--concurrency", "2", *ONE_A_REQUEST)
    finally:
        target.close()
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "1 REJECTED" in out.stdout and "retries" in out.stdout, out.stdout
    assert "REJECTED 400" in out.stderr
    records = jn.read_all(fb.journal)
    for headers, _body in target.requests:
        assert headers["Authorization"] == "Bearer lp_replay_key"
        assert headers["X-Lossproof-Tenant"] == "default"
        assert headers["Content-Type"] == "application/json"
    by_body = {b: h for h, b in target.requests}
    for (body, enc), rec in zip(sent, records, strict=True):
        assert rec.entry.body == body
        assert body in by_body, "a request was skipped"
        assert by_body[body].get("Content-Encoding", "identity") == enc
    assert sum(attempts.values()) >= len(sent) + 4  # the 503s, the dropped connection, the 429

    rejected = (fb.data_dir / "replay" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1
    rej = json.loads(rejected[0])
    assert rej["status"] == 400 and "malformed" in rej["error"] and rej["agent"] == "bad"
    assert base64.b64decode(rej["body_base64"]) == sent[6][0]
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position


def test_wrong_key_stops_without_skipping_anything(fallback: Fallback) -> None:
    for i in range(1, 6):
        assert fallback.post("w", [report(i)]).status == 200

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if n < 2:
            return ack_of_raw(headers, body)
        return 401, {}, b'{"error": "missing or unknown API key (Authorization: Bearer <key>)"}'

    target = Target(script)
    try:
        out = run_replay(fallback.data_dir, target.url, "lp_wrong", "--concurrency", "1", *ONE_A_REQUEST)
    finally:
        target.close()
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "401" in last and "nothing was skipped" in last, last
    records = jn.read_all(fallback.journal)
    progress = pg.load_progress(fallback.data_dir)
    assert progress is not None and progress.position == records[1].next_position
    assert not (fallback.data_dir / "replay" / "rejected.jsonl").exists()


@pytest.mark.parametrize(
    "answer",
    [
        (200, {PROTOCOL_HEADER: ""}, b'{"acked": [[1, 100]], "replay": []}'),  # not lossproof
        (200, {}, b"{}"),  # no acked list
        (204, {}, b""),  # a 2xx that acknowledges nothing
        (400, {PROTOCOL_HEADER: ""}, b"<html>The plain HTTP request was sent to HTTPS port</html>"),
    ],
)
def test_an_answer_that_is_not_lossproof_s_stops_without_skipping(
    fallback: Fallback, answer: tuple[int, dict[str, str], bytes]
) -> None:
    for i in range(1, 4):  # (three agents: a request each, none merged)
        assert fallback.post(f"n{i}", [report(i)]).status == 200

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        return ack_of_raw(headers, body) if n < 1 else answer

    target = Target(script)
    try:
        out = run_replay(fallback.data_dir, target.url, "k", "--concurrency", "1")
    finally:
        target.close()
    assert out.returncode == 1, (out.stdout, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    assert ("without acknowledging" in last or "not as lossproof" in last) and "nothing was skipped" in last
    assert not (fallback.data_dir / "replay" / "rejected.jsonl").exists()
    records = jn.read_all(fallback.journal)
    progress = pg.load_progress(fallback.data_dir)
    assert progress is not None and progress.position == records[0].next_position


def test_bad_arguments_are_one_line_errors(tmp_path: Path, fallback: Fallback) -> None:
    def err(*args: str) -> str:
        out = subprocess.run(lossproof("replay", *args), capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, out
        lines = out.stderr.strip().splitlines()
        assert lines and "Traceback" not in out.stderr, out.stderr
        return lines[-1]

    url = "http://127.0.0.1:9"
    assert "no such directory" in err("--from", str(tmp_path / "nope"), "--to", url, "--api-key", "k")
    assert "not a fallback data dir" in err("--from", str(tmp_path), "--to", url, "--api-key", "k")
    assert "cannot reach http://127.0.0.1:9" in err(
        "--from", str(fallback.data_dir), "--to", url, "--api-key", "k"
    )
    fb_dir = str(fallback.data_dir)
    assert "expected http://" in err("--from", fb_dir, "--to", "localhost:1", "--api-key", "k")
    assert "--api-key" in err("--from", str(fallback.data_dir), "--to", url)
    assert "--rate" in err("--from", str(fallback.data_dir), "--to", url, "--api-key", "k", "--rate", "-1")
    # progress made towards one pipeline is not silently applied to another
    progress = pg.Progress("http://127.0.0.1:1", 1, jn.HEADER_SIZE)
    pg.save_progress(fallback.data_dir, progress)
    assert "--from-start" in err("--from", str(fallback.data_dir), "--to", url, "--api-key", "k")
    os.unlink(pg.progress_path(fallback.data_dir))


def test_corrupt_record_stops_replay_after_everything_before_it(
    fallback_factory: Callable[..., Fallback],
) -> None:
    fb = fallback_factory(extra_args=["--segment-bytes", "4K"])
    fb.start()
    for i in range(1, 41):
        assert fb.post("c", [report(i)]).status == 200
    records = jn.read_all(fb.journal)
    first = [r for r in records if r.segment == records[0].segment]
    assert len(first) < len(records)  # the damage is in an older segment, not the one being written
    victim = first[len(first) // 2]
    path = jn.segment_path(fb.journal, victim.segment)
    with open(path, "r+b") as f:
        f.seek(victim.pos + jn.HEADER_SIZE + 3)
        b = f.read(1)
        f.seek(victim.pos + jn.HEADER_SIZE + 3)
        f.write(bytes([b[0] ^ 0x40]))
    target = Target(lambda n, h, b: ack_of_raw(h, b))
    try:
        out = run_replay(fb.data_dir, target.url, "k")
    finally:
        target.close()
    assert out.returncode == 1, out
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: journal corrupt: {path} at byte {victim.pos}: CRC mismatch ("), last
    assert "run again with --skip-damaged" in last, last  # (test_replay_damaged.py)
    # (merged: test_merged_requests_...)
    assert sorted(sent_seqs(target.requests)) == sorted(record_seqs(records[: records.index(victim)]))
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == victim.position


def test_merged_requests_carry_one_agent_s_records_and_a_refused_one_is_split(fallback: Fallback) -> None:
    """One agent's records go in one request (up to --batch-points), encoded as they came (zstd
    again at the replay's level, identity as is; gzip records each alone); a transient answer to a
    merged request is retried as it is; a 4xx to one is answered by sending its records one by
    one, so that only the record the main ingest refuses is rejected."""
    fb = fallback
    encodings = {"z": "zstd", "i": "identity", "g": "gzip"}
    bad = ("i", 12)  # the main ingest refuses any request holding this report (409)
    for seq in range(1, 21):
        for agent, enc in encodings.items():
            body, _ = encode_body({"agent": agent, "reports": [report(seq)]}, enc)
            assert post_raw(fb.url, body, enc, fb.key).status == 200
    by_n: dict[int, tuple[int, list[tuple[str, int]]]] = {}  # request n (target.requests[n]): answer

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        got = sent_seqs([(headers, body)])
        if n < 2:
            status, extra, answer = 503, {"Retry-After": "0"}, b'{"error": "log cannot accept data durably"}'
        elif bad in got:
            status, extra, answer = 409, {}, b'{"error": "seq conflict", "reason": "seq_conflict"}'
        else:
            status, extra, answer = ack_of_raw(headers, body)
        by_n[n] = (status, got)
        return status, extra, answer

    target = Target(script)
    try:
        out = run_replay(fb.data_dir, target.url, "lp_replay_key", "--batch-points", "24", "--concurrency=2")
    finally:
        target.close()
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "60 requests" in out.stdout and "1 REJECTED" in out.stdout, out.stdout
    answered = [by_n[n] for n in range(len(target.requests))]
    # every report was acknowledged, but the refused one, which is rejected alone
    acked = [s for status, got in answered if status == 200 for s in got]
    assert sorted(set(acked)) == sorted(set(record_seqs(jn.read_all(fb.journal))) - {bad})
    [line] = [json.loads(x) for x in (fb.data_dir / "replay" / "rejected.jsonl").read_text().splitlines()]
    assert (line["status"], line["agent"], line["seqs"]) == (409, "i", [[12, 12]])
    by_agent: dict[str, list[int]] = {}
    for (headers, _body), (status, got) in zip(target.requests, answered, strict=True):
        if not got:
            continue  # the ledger's report of the rejected seq (test_replay_rejected.py)
        agents = {a for a, _ in got}
        assert len(agents) == 1, got  # one agent's records a request
        agent = agents.pop()
        assert headers.get("Content-Encoding", "identity") == encodings[agent]
        if agent == "g":
            assert len(got) == 1, got  # gzip: never merged
        if status == 200:
            by_agent.setdefault(agent, []).append(len(got))
    # merged at --batch-points 24 (reports of 3 points: 8 a request)
    assert max(by_agent["z"]) == 8 and max(by_agent["i"]) == 8, by_agent
    first_two = [got for _s, got in answered[:2]]  # (requests 0 and 1: the 503s)
    assert all(len(got) > 1 for got in first_two)  # the 503s were answered to merged requests...
    assert all(got in [g for s, g in answered[2:]] for got in first_two)  # ...sent again as they were
    # the refused merged request was sent again as its records, one by one
    split = [got for status, got in answered if status == 409 and len(got) > 1]
    assert len(split) == 1 and all([s] in [g for _st, g in answered] for s in split[0]), answered
    records = jn.read_all(fb.journal)
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position


def test_a_merged_request_stops_as_one_alone_does_and_a_split_one_is_done_record_by_record(
    fallback: Fallback,
) -> None:
    """A fatal answer (401) to a merged request stops the replay, nothing rejected nor skipped, as
    for a request alone. A merged request refused (400) is split; its records are done one by one:
    when the replay stops after the first was rejected, the next run does not reject it again."""
    fb = fallback
    for seq in range(1, 5):
        body, enc = encode_body({"agent": "m", "reports": [report(seq)]}, "zstd")
        assert post_raw(fb.url, body, enc, fb.key).status == 200
    records = jn.read_all(fb.journal)
    unauthorized = 401, {}, b'{"error": "missing or unknown API key (Authorization: Bearer <key>)"}'
    run = ["fatal"]

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        got = sent_seqs([(headers, body)])
        if run[0] == "fatal":
            return unauthorized
        if run[0] == "split" and (len(got) > 1 or got == [("m", 1)]):
            return 400, {}, b'{"error": "malformed: something - at `$.reports[0]`"}'
        if run[0] == "split" and got == [("m", 2)]:
            return unauthorized
        return ack_of_raw(headers, body)  # (and the ledger's report of seq 1)

    target = Target(script)
    try:
        out = run_replay(fb.data_dir, target.url, "lp_wrong")
        assert out.returncode == 1 and "nothing was skipped" in out.stderr, (out.stdout, out.stderr)
        assert [len(sent_seqs([r])) for r in target.requests] == [4]  # one merged request, not split
        assert not (fb.data_dir / "replay" / "rejected.jsonl").exists()
        progress = pg.load_progress(fb.data_dir)
        assert progress is None or progress.position < records[0].next_position

        run[0] = "split"
        target.requests.clear()
        out = run_replay(fb.data_dir, target.url, "lp_replay_key")
        assert out.returncode == 1, (out.stdout, out.stderr)
        # merged (400), seq 1 alone (400), the ledger's report of seq 1, seq 2 alone (401)
        assert [len(sent_seqs([r])) for r in target.requests] == [4, 1, 0, 1]
        progress = pg.load_progress(fb.data_dir)
        assert progress is not None and progress.position == records[0].next_position  # seq 1: done

        run[0] = "ack"
        target.requests.clear()
        out = run_replay(fb.data_dir, target.url, "lp_replay_key")
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert [sent_seqs([r]) for r in target.requests] == [[("m", 2), ("m", 3), ("m", 4)]]  # merged
    finally:
        target.close()
    lines = (fb.data_dir / "replay" / "rejected.jsonl").read_text().splitlines()
    assert [json.loads(x)["seqs"] for x in lines] == [[[1, 1]]]  # rejected once
    progress = pg.load_progress(fb.data_dir)
    assert progress is not None and progress.position == records[-1].next_position


def test_merged_requests_in_flight_are_bounded_by_their_points(fallback: Fallback) -> None:
    """At most 8 x --batch-points points in flight: a target that holds each request 50 ms never
    has more than 8 full merged ones at once (64 may be in flight by --concurrency), and the replay
    still finishes (each request's points are given back)."""
    fb = fallback
    for seq in range(1, 41):
        body, enc = encode_body({"agent": "p", "reports": [report(seq)]}, "zstd")  # 3 points each
        assert post_raw(fb.url, body, enc, fb.key).status == 200
    lock = threading.Lock()
    inside = [0, 0]  # now, most

    def script(n: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
        time.sleep(0.05)  # (requests in flight pile up meanwhile, up to the bound)
        with lock:
            inside[0] -= 1
        return ack_of_raw(headers, body)

    target = Target(script)
    try:
        out = run_replay(fb.data_dir, target.url, "lp_replay_key", "--batch-points", "6", timeout=60)
    finally:
        target.close()
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert [len(sent_seqs([r])) for r in target.requests] == [2] * 20  # 6 points: 2 reports a request
    assert 2 <= inside[1] <= 8, inside  # 8 x 6 points in flight at most: 8 requests of 6
