"""OK means durable: fsync faults, kill -9 mid-stream, and a simulated power loss."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from lossproof.heartbeat import ENV as HEARTBEAT_ENV
from lptest import require
from lptest.pipeline import HTTP, Pipeline, Sender, expand, report


def test_fsync_failure_answers_503_never_200(pipeline: Pipeline) -> None:
    p = pipeline
    assert p.post_reports("f", [report(1)]).status == 200
    p.faults({"log.fsync": {"mode": "fail"}})
    statuses = []
    for seq in range(2, 8):
        r = p.post_reports("f", [report(seq)])
        statuses.append(r.status)
        if r.status == 503:
            assert r.headers.get("Retry-After"), r.headers
            assert "durabl" in json.loads(r.data)["error"]
            assert str(p.data_dir) not in r.data.decode(), "a server path in a client's answer"
    assert set(statuses) == {503}, statuses
    h = HTTP.request("GET", p.url + "/healthz")
    assert h.status == 503 and str(p.data_dir) not in h.data.decode(), h.data
    assert "lossproof_log_append_errors_total" in p.metrics()

    p.faults({})
    deadline = time.monotonic() + 10
    while HTTP.request("GET", p.url + "/healthz").status != 200 and time.monotonic() < deadline:
        p.post_reports("f", [report(2)])  # a write is what proves the log healthy again
        time.sleep(0.1)
    for seq in range(2, 8):
        assert p.post_reports("f", [report(seq)]).status == 200
    p.wait_stored("f", set(range(1, 8)))


def test_ok_waits_for_a_slow_fsync(pipeline: Pipeline) -> None:
    p = pipeline
    p.faults({"log.fsync": {"mode": "delay", "seconds": 1.5}})
    start = time.monotonic()
    r = p.post_reports("slow", [report(1)])
    elapsed = time.monotonic() - start
    assert r.status == 200
    assert elapsed >= 1.4, elapsed
    p.faults({})


def test_fsync_that_never_returns_is_a_503_not_a_200(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    p: Pipeline = pipeline_factory()
    p.start(extra_env={"LOSSPROOF_SERVER_APPEND_TIMEOUT_SECONDS": "1"})
    p.faults({"log.fsync": {"mode": "delay", "seconds": 4}})
    r = p.post_reports("stuck", [report(1)])
    assert r.status == 503, r.data
    p.faults({})
    # the append may have landed after all: the retry is harmless and the report is stored once
    time.sleep(4)
    assert p.post_reports("stuck", [report(1)]).status == 200
    ledger = p.wait_stored("stuck", {1})
    assert ledger["stored"] == [[1, 1]]


def test_kill9_mid_stream_loses_nothing_acknowledged(pipeline: Pipeline) -> None:
    p = pipeline
    rng = random.Random(7)
    stop = threading.Event()
    senders = [Sender(p, f"agent-{i}", stop) for i in range(6)]
    for s in senders:
        s.start()
    for _ in range(3):
        time.sleep(rng.uniform(1.0, 2.0))
        p.kill9()
        time.sleep(rng.uniform(0.0, 0.5))
        p.start()
    time.sleep(1.0)
    stop.set()
    for s in senders:
        s.join(30)
    total_acked = 0
    for s in senders:
        assert s.acked, f"{s.agent} got nothing acknowledged: {s.statuses}"
        total_acked += len(s.acked)
        ledger = p.wait_stored(s.agent, s.acked, timeout=60)
        stored = expand(ledger["stored"])
        assert ledger["missing"] == [], ledger
        # exactly once: every stored report's points are there, once each, and nothing else
        for i in (0, s.points - 1):
            status, q = p.get(
                f"/v1/query?metric=cpu.user&from=0&to=9999999999999&label=host:{s.agent}&label=i:{i}"
            )
            assert status == 200 and len(q["series"]) == 1
            ts = [pt[0] for pt in q["series"][0]["points"]]
            assert ts == sorted(1_767_225_600_000 + seq * 1000 for seq in stored)
    assert total_acked > 50


def test_disk_full_answers_503_then_recovers(pipeline_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode == 0
    require(mounted, "a small tmpfs mount (needs root)")
    try:
        # leave about 1 MiB free for the log; deleting the filler later makes room again
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (3 * 2**20))
        p: Pipeline = pipeline_factory()
        p.start(extra_env={"LOSSPROOF_LOG_DIR": str(mnt / "log"), "LOSSPROOF_LOG_SEGMENT_BYTES": "262144"})
        acked: set[int] = set()
        statuses: list[int] = []
        seq = 1
        while len(statuses) < 400 and 503 not in statuses:
            r = p.post_reports("full", [report(seq, 200, host="full")])
            statuses.append(r.status)
            if r.status == 200:
                acked.add(seq)
                seq += 1
        assert 503 in statuses, "the disk never filled"
        assert set(statuses) <= {200, 503}, statuses
        assert "lossproof_log_append_errors_total" in p.metrics()
        # the worker cannot commit its position on a full log disk either: it retries, loses nothing
        (mnt / "filler").unlink()
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            r = p.post_reports("full", [report(seq, 10, host="full")])
            status = r.status
            time.sleep(0.2)
        assert status == 200, "did not recover once the disk had room"
        acked.add(seq)
        p.wait_stored("full", acked, timeout=60)
        p.kill9()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_power_loss_keeps_every_acknowledged_report(pipeline: Pipeline) -> None:
    """kill -9 everything, then drop every log byte that was not fsync'd (a power cut), restart.

    If ingest ever answered 200 before the fsync, the acknowledged report would be in the dropped
    tail and the ledger check at the end would fail."""
    from lptest.pipeline import simulate_power_loss

    p = pipeline
    rng = random.Random(11)
    stop = threading.Event()
    senders = [Sender(p, f"pl-{i}", stop) for i in range(6)]
    for s in senders:
        s.start()
    # slow fsyncs keep written-but-not-yet-durable records in the tail when the power goes
    p.faults({"log.fsync": {"mode": "delay", "seconds": 0.2}})
    dropped = 0
    for _ in range(3):
        time.sleep(rng.uniform(1.0, 2.0))
        p.kill9()
        dropped += simulate_power_loss(p.data_dir / "log", torn_bytes=rng.choice([0, 7, 100]))
        p.start()
    time.sleep(1.0)
    stop.set()
    for s in senders:
        s.join(30)
    assert dropped > 0, "the simulated power cuts dropped nothing: the test proved nothing"
    for s in senders:
        assert s.acked, f"{s.agent}: {s.statuses}"
        p.wait_stored(s.agent, s.acked, timeout=60)


def test_a_crashed_worker_is_restarted_and_ctrl_c_stops_cleanly(pipeline: Pipeline) -> None:
    import psutil

    p = pipeline
    assert p.post_reports("w", [report(1)]).status == 200
    p.wait_stored("w", {1})
    assert p.proc is not None
    workers = [c for c in psutil.Process(p.proc.pid).children() if c.cmdline()[3:4] == ["worker"]]
    assert len(workers) == 1
    workers[0].kill()
    # ingest keeps acknowledging while the worker is down; the restarted worker stores it all
    for seq in range(2, 6):
        assert p.post_reports("w", [report(seq)]).status == 200
    p.wait_stored("w", set(range(1, 6)))
    assert p.stop() == 0
    logs = p.logs()
    assert '"up.child_exited"' in logs and '"ingest.stopped"' in logs and '"worker.stopped"' in logs
    assert "Traceback" not in logs


def _child(p: Pipeline, role: str) -> Any:
    import psutil

    assert p.proc is not None
    found = [c for c in psutil.Process(p.proc.pid).children() if c.cmdline()[3:4] == [role]]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("role", ["worker", "ingest"])
def test_a_stuck_child_is_killed_and_restarted(pipeline_factory, role: str) -> None:  # type: ignore[no-untyped-def]
    """A child that neither exits nor works (stopped here with SIGSTOP, as a deadlock or a thread
    start that never returns would leave it) is killed once its heartbeat is silent for
    server.liveness_timeout_seconds, and the restarted one stores what was acknowledged."""
    p = pipeline_factory()
    # (long enough that no stall of a working child on a loaded machine reaches it)
    p.start(extra_env={"LOSSPROOF_SERVER_LIVENESS_TIMEOUT_SECONDS": "8"})
    assert p.post_reports("s", [report(1)]).status == 200
    p.wait_stored("s", {1})
    time.sleep(9)  # longer than the timeout: a child that works is left alone
    stuck = _child(p, role)
    assert HEARTBEAT_ENV in stuck.environ()
    stuck.suspend()
    if role == "worker":  # ingest still acknowledges; nothing is stored until the worker is replaced
        for seq in range(2, 6):
            assert p.post_reports("s", [report(seq)]).status == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stuck.is_running() and stuck.status() != "zombie":
        time.sleep(0.2)
    assert not stuck.is_running() or stuck.status() == "zombie", "the stuck child was left as it was"
    p.wait_ready()
    for seq in range(6, 9):
        assert p.post_reports("s", [report(seq)]).status == 200
    p.wait_stored("s", set(range(1, 9)) if role == "worker" else {1, 6, 7, 8})
    assert _child(p, role).pid != stuck.pid
    assert p.stop() == 0
    logs = p.logs()
    stuck_events = [e for e in _events(logs) if e.get("event") == "up.child_stuck"]
    assert [(e["child"], e["pid"]) for e in stuck_events] == [(role, stuck.pid)], logs[-3000:]
    assert "Traceback" not in logs


def _wait_event(p: Pipeline, pred: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in _events(p.logs()) if pred(e)]
        if found:
            return found[0]
        assert p.proc is not None and p.proc.poll() is None, p.logs()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no such event after {timeout} s: {p.logs()[-3000:]}")


def test_a_child_hung_while_starting_is_killed_and_restarted(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    """A child that hangs before its first beat (here ingest's log recovery, its fsync blocked as on
    a dead disk or a hung mount) is killed once server.startup_timeout_seconds have passed, and
    restarted until it starts; a child that never beat used to be left starting for good."""
    p: Pipeline = pipeline_factory()
    # (long enough for a start of ingest on a loaded machine: Python's imports alone take seconds)
    p.start(extra_env={"LOSSPROOF_SERVER_STARTUP_TIMEOUT_SECONDS": "8"})
    assert p.post_reports("h", [report(1)]).status == 200
    ingest = _child(p, "ingest")
    p.faults({"log.fsync": {"mode": "hang"}})
    ingest.kill()
    ingest.wait(10)
    timed_out = _wait_event(p, lambda e: e.get("event") == "up.child_start_timeout", 25)
    assert timed_out["child"] == "ingest" and timed_out["starting_seconds"] >= 8, timed_out
    hung = timed_out["pid"]
    assert hung != ingest.pid
    p.faults({})  # the disk is back: the next start gets through
    p.wait_ready()
    assert _child(p, "ingest").pid != hung
    assert p.post_reports("h", [report(2)]).status == 200
    p.wait_stored("h", {1, 2})
    assert p.stop() == 0
    assert "Traceback" not in p.logs()


def test_a_worker_hung_on_the_store_lock_while_starting_is_restarted_and_stores_all(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    """A real hang, no fault hook: another process holds the embedded store's write lock (an open
    BEGIN IMMEDIATE, as a `lossproof store check --set-aside` beside the pipeline would), and the
    worker, killed -9, is restarted into it: its store open waits in SQLite's busy handler (30 s,
    then it would exit with "database is locked") and never beats. `up` kills it at the start-up
    deadline and restarts it, ingest acknowledges meanwhile, and once the lock is released every
    acknowledged point is stored and queryable exactly once, with the same `up`."""
    import sqlite3

    import psutil

    from lossproof import config as config_mod

    p: Pipeline = pipeline_factory()
    # (long enough for a start on a loaded machine; well under SQLite's 30 s busy timeout)
    deadline_s = 8
    p.start(extra_env={"LOSSPROOF_SERVER_STARTUP_TIMEOUT_SECONDS": str(deadline_s)})
    assert p.proc is not None
    up_pid = p.proc.pid

    def post(seq: int) -> None:
        r = p.post_reports("hang", [report(seq, host="hang")], timeout=10)
        assert r.status == 200, (r.status, r.data)

    post(1)
    p.wait_stored("hang", {1})
    holder = sqlite3.connect(config_mod.load(p.data_dir).store_path, timeout=30, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, until ROLLBACK
        first = _child(p, "worker")
        first.kill()
        first.wait(10)
        for seq in range(2, 6):  # ingest does not need the worker
            post(seq)
        timed_out = _wait_event(
            p, lambda e: e.get("event") == "up.child_start_timeout" and e.get("child") == "worker", 40
        )
        assert timed_out["starting_seconds"] >= deadline_s and timed_out["pid"] != first.pid, timed_out
        hung = psutil.Process(timed_out["pid"]) if psutil.pid_exists(timed_out["pid"]) else None
        for seq in range(6, 9):
            post(seq)
        # the hung worker is gone (killed by `up`), and nothing was stored while the lock was held
        end = time.monotonic() + 20
        while hung is not None and time.monotonic() < end and hung.is_running() and hung.status() != "zombie":
            time.sleep(0.1)
        assert hung is None or not hung.is_running() or hung.status() == "zombie", "left hung"
        assert p.ledger("hang")["stored"] == [[1, 1]]
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")  # the lock is released: the next start gets through
        holder.close()
    ledger = p.wait_stored("hang", set(range(1, 9)), timeout=45)
    assert ledger["stored"] == [[1, 8]] and ledger["missing"] == [] and ledger["lost"] == [], ledger
    for i in range(3):  # exactly once: each point of each acknowledged report, once
        status, q = p.get(f"/v1/query?metric=cpu.user&from=0&to=9999999999999&label=host:hang&label=i:{i}")
        assert status == 200 and len(q["series"]) == 1, q
        got = [(pt[0], pt[1]) for pt in q["series"][0]["points"]]
        assert got == [(1_767_225_600_000 + s * 1000, s + i / 10) for s in range(1, 9)], got
    assert p.proc.poll() is None and p.proc.pid == up_pid and p.starts == 1  # the same `up` throughout
    events = _events(p.logs())
    hung_pids = {e["pid"] for e in events if e.get("event") == "up.child_start_timeout"}
    assert hung_pids and _child(p, "worker").pid not in hung_pids | {first.pid}
    assert not [e for e in events if e.get("event") == "up.gave_up"]
    assert p.stop() == 0
    assert "Traceback" not in p.logs()


def test_ingest_whose_log_is_stuck_stops_beating_and_is_restarted(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    """The log's group-commit thread hangs in an fsync (a dead disk): ingest's event loop still turns
    and answers 503s after the append timeout, but nothing gets durable any more. Ingest stops
    beating once an append has waited for the liveness timeout, and `up` restarts it; an idle log
    (before the fault, and the 7 s below) is never taken for a stuck one."""
    p: Pipeline = pipeline_factory()
    # (shorter than the stuck-child test's 8 s: a stuck log is silenced after one timeout, and
    # killed after a second)
    p.start(extra_env={"LOSSPROOF_SERVER_LIVENESS_TIMEOUT_SECONDS": "6"})
    assert p.post_reports("d", [report(1)]).status == 200
    p.wait_stored("d", {1})
    time.sleep(7)  # idle longer than the timeout: not stuck
    ingest = _child(p, "ingest")
    p.faults({"log.fsync": {"mode": "hang"}})
    answers: list[int] = []

    def send() -> None:
        with contextlib.suppress(Exception):  # the connection may die with the process
            answers.append(p.post_reports("d", [report(2)], timeout=40).status)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    stuck = _wait_event(p, lambda e: e.get("event") == "up.child_stuck", 30)
    assert (stuck["child"], stuck["pid"]) == ("ingest", ingest.pid), stuck
    p.faults({})
    p.wait_ready()
    sender.join(40)
    assert 200 not in answers, answers  # never durable while the disk hung
    assert p.post_reports("d", [report(2)]).status == 200
    p.wait_stored("d", {1, 2})
    assert p.stop() == 0
    logs = p.logs()
    assert [e for e in _events(logs) if e.get("event") == "ingest.log_stuck"], logs[-3000:]
    assert "Traceback" not in logs


def _events(logs: str) -> list[dict[str, Any]]:
    out = []
    for line in logs.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def test_liveness_off_leaves_a_stopped_child_alone(pipeline_factory) -> None:  # type: ignore[no-untyped-def]
    p = pipeline_factory()
    # (the start-up deadline off too: it would need the heartbeat; tests/unit/test_heartbeat_watch.py
    # shows that it never judges a child that has started)
    p.start(
        extra_env={
            "LOSSPROOF_SERVER_LIVENESS_TIMEOUT_SECONDS": "0",
            "LOSSPROOF_SERVER_STARTUP_TIMEOUT_SECONDS": "0",
        }
    )
    stuck = _child(p, "worker")
    # no heartbeat handed over at all (a 5 s stop alone would not tell it from the 60 s default)
    assert HEARTBEAT_ENV not in stuck.environ() and HEARTBEAT_ENV not in _child(p, "ingest").environ()
    stuck.suspend()
    time.sleep(5)
    assert stuck.status() == "stopped"
    stuck.resume()
    assert p.post_reports("s", [report(1)]).status == 200
    p.wait_stored("s", {1})
    assert not [e for e in _events(p.logs()) if e.get("event") == "up.child_stuck"]


def test_a_child_that_cannot_start_stops_up_with_a_clear_error(pipeline: Pipeline) -> None:
    """A setup problem (here the data dir's log held by another `up`) is not restarted forever."""
    argv = [sys.executable, "-m", "lossproof", "up", "--data-dir", str(pipeline.data_dir), "--port", "0"]
    second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert "exited with code 1 3 times while starting" in second.stderr.splitlines()[-1]
    assert pipeline.post_reports("s", [report(1)]).status == 200  # the first one is untouched


def test_a_child_that_ran_is_restarted_until_it_can_start_again(pipeline: Pipeline) -> None:
    """Once ingest has run, failing to start again (here its port taken by another process after a
    crash) is an outage, not a setup problem: `up` keeps trying, and ingest is back once the port is
    free. The same would stop `up` on a first start (test above)."""
    import socket

    p = pipeline
    ingest = _child(p, "ingest")
    ingest.kill()
    ingest.wait(10)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", p.port))
        taken.listen()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            quick = [e for e in _events(p.logs()) if e.get("quick_exits_in_a_row", 0) >= 3]
            if quick:
                break
            assert p.proc is not None and p.proc.poll() is None, p.logs()[-3000:]
            time.sleep(0.2)
        assert quick, "ingest did not fail to start 3 times in a row: the test tested nothing"
    p.wait_ready(timeout=60)
    assert p.post_reports("s", [report(1)]).status == 200
    p.wait_stored("s", {1})
