"""Compaction runs in a process of its own, a child of the worker (src/lossproof/worker/compactor.py).

Checked on a real `lossproof up`: the compactor's steps reach the worker's /metrics; a compactor
killed with -9 is started again by the worker and compaction goes on; a worker killed with -9 takes
its compactor with it (no orphan left compacting); nothing stored is lost or doubled on the way.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry

from lossproof.config import Config, StoreConfig
from lossproof.store.base import CompactResult
from lossproof.worker.compactor import Compactor, CompactorProcess
from lptest.pipeline import Pipeline, _alive, _children, report
from lptest.proto import metric_value

pytestmark = pytest.mark.process

T0 = 1_767_225_600_000


def roles(p: Pipeline) -> dict[str, psutil.Process]:
    """The pipeline's worker and compactor processes (by their command lines)."""
    assert p.proc is not None
    out = {}
    for pid in _children(p.proc.pid):
        try:
            proc = psutil.Process(pid)
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        for role in ("worker", "compactor"):
            if role in cmd:
                out[role] = proc
    return out


def wait_for(what: str, cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def compaction_seconds(p: Pipeline) -> float:
    return metric_value(p.metrics(), "lossproof_store_compaction_seconds_total")


def test_the_compactor_is_a_child_of_the_worker_restarted_when_killed_and_gone_with_it(
    pipeline: Pipeline,
) -> None:
    agent = "compactor-agent"
    r = pipeline.post_reports(agent, [report(seq, n=50, t0=T0) for seq in range(1, 41)])
    assert r.status == 200, r.data[:300]
    pipeline.wait_stored(agent, set(range(1, 41)))

    wait_for("the worker and its compactor", lambda: {"worker", "compactor"} <= set(roles(pipeline)))
    procs = roles(pipeline)
    worker, compactor = procs["worker"], procs["compactor"]
    assert compactor.ppid() == worker.pid
    # its steps reach the worker's metrics (the step of an idle store too: a call every interval)
    wait_for("compaction steps in the worker's /metrics", lambda: compaction_seconds(pipeline) > 0)
    errors0 = metric_value(pipeline.metrics(), "lossproof_store_compaction_errors_total")

    os.kill(compactor.pid, signal.SIGKILL)
    wait_for(
        "a new compactor",
        lambda: (c := roles(pipeline).get("compactor")) is not None and c.pid != compactor.pid,
    )
    new = roles(pipeline)["compactor"]
    assert new.ppid() == worker.pid, "the worker itself was restarted, not its compactor"
    assert metric_value(pipeline.metrics(), "lossproof_store_compaction_errors_total") == errors0 + 1
    before = compaction_seconds(pipeline)
    wait_for("steps of the new compactor", lambda: compaction_seconds(pipeline) > before)

    r = pipeline.post_reports(agent, [report(seq, n=50, t0=T0) for seq in range(41, 81)])
    assert r.status == 200, r.data[:300]
    os.kill(worker.pid, signal.SIGKILL)
    wait_for("the compactor gone with its worker", lambda: not _alive(new.pid), timeout=10)
    # `up` starts the worker again, which starts a compactor; everything is stored once
    wait_for(
        "a new worker and compactor",
        lambda: (
            (w := roles(pipeline).get("worker")) is not None
            and w.pid != worker.pid
            and "compactor" in roles(pipeline)
        ),
    )
    ledger = pipeline.wait_stored(agent, set(range(1, 81)), timeout=60)
    assert not ledger["missing"] and not ledger.get("conflicts")
    for i in (0, 49):  # every point of two of the series, once
        status, q = pipeline.get(f"/v1/query?metric=cpu.user&from=0&to=9999999999999&label=i:{i}")
        assert status == 200 and len(q["series"]) == 1, q
        assert [pt[0] for pt in q["series"][0]["points"]] == [T0 + seq * 1000 for seq in range(1, 81)]


def _cfg(tmp_path: Path, interval: float = 0.2) -> Config:
    return Config(store=StoreConfig(compact_interval_seconds=interval), data_dir=tmp_path)


def test_a_compactor_that_cannot_start_is_counted_and_tried_again(tmp_path: Path) -> None:
    """fork or exec failing (EAGAIN under a pids limit, ENOMEM, EMFILE) must not end compaction for
    good: each failure is an error in the metrics and a new try, with a backoff."""
    registry = CollectorRegistry()
    stop = threading.Event()
    cp = CompactorProcess(_cfg(tmp_path), registry, stop)
    cp.argv = [str(tmp_path / "no-such-python")]
    cp.start()
    try:
        wait_for(
            "two failed starts",
            lambda: (registry.get_sample_value("lossproof_store_compaction_errors_total") or 0) >= 2,
            timeout=10,
        )
        assert cp._thread.is_alive()
    finally:
        started = time.monotonic()
        cp.join(5)
        assert time.monotonic() - started < 5 and not cp._thread.is_alive()


def test_join_stops_the_compactor_even_when_the_worker_did_not_ask(tmp_path: Path) -> None:
    """The worker's loop can end by an exception (its stop event never set): joining must stop the
    compactor, promptly, and start no new one."""
    registry = CollectorRegistry()
    cp = CompactorProcess(_cfg(tmp_path), registry, threading.Event())
    cp.start()
    try:
        wait_for(
            "a compaction step",
            lambda: (registry.get_sample_value("lossproof_store_compaction_seconds_total") or 0) > 0,
            timeout=30,
        )
        pid = cp.pid
        assert pid is not None
        cp.behind(True)  # (its stdin open and read by a thread of the child's when it is stopped)
        time.sleep(0.2)
    finally:
        started = time.monotonic()
        cp.join(10)
    assert time.monotonic() - started < 5
    assert not _alive(pid) and cp.pid == pid and not cp._thread.is_alive()
    # it ended as SIGTERM asks, not by an abort at its interpreter's exit (-6: a daemon thread
    # blocked in sys.stdin's buffered reader held its lock)
    assert cp._proc is not None and cp._proc.returncode == 0
    assert (registry.get_sample_value("lossproof_store_compaction_errors_total") or 0) == 0


def _compactor(tmp_path: Path, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "lossproof", "compactor", "--data-dir", str(tmp_path)]
    return subprocess.run(
        [*argv, "--parent-pid", str(os.getpid())], input=stdin, capture_output=True, timeout=30
    )


def test_the_compactor_command_takes_its_settings_from_stdin(tmp_path: Path) -> None:
    off = _compactor(tmp_path, StoreConfig(compact_interval_seconds=0).model_dump_json().encode())
    assert off.returncode == 0 and not (tmp_path / "store.db").exists(), off.stderr  # off: ends at once
    bad = _compactor(tmp_path, b'{"compact_interval_seconds": -1}')
    assert bad.returncode != 0
    err = bad.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: store settings on stdin:"), err


def test_the_compactor_steps_aside_while_its_worker_says_it_is_behind(tmp_path: Path) -> None:
    """The real `lossproof compactor`: each call is a JSON line on stdout, one every interval with
    nothing to do; after the worker's ``behind`` line none comes (one step every
    BEHIND_STEP_EVERY = 10 s at most), after ``caught-up`` they come again, and when the worker's
    lines end (it is gone or closed them) compaction goes on as usual."""
    settings = StoreConfig(compact_interval_seconds=0.05).model_dump_json().encode()
    argv = [sys.executable, "-m", "lossproof", "compactor", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [*argv, "--parent-pid", str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[float] = []
    threading.Thread(
        target=lambda: [lines.append(time.monotonic()) for _ in proc.stdout], daemon=True
    ).start()

    def steps_within(seconds: float) -> int:
        t0 = time.monotonic()
        time.sleep(seconds)
        return sum(t0 <= t for t in lines)

    try:
        proc.stdin.write(settings + b"\n")
        proc.stdin.flush()
        wait_for("the compactor's first steps", lambda: len(lines) >= 3, timeout=30)
        assert steps_within(1.0) >= 5
        proc.stdin.write(b"behind\n")
        proc.stdin.flush()
        time.sleep(0.3)  # (a step under way when it was told)
        assert steps_within(1.5) == 0
        proc.stdin.write(b"caught-up\n")
        proc.stdin.flush()
        assert steps_within(1.0) >= 5
        proc.stdin.write(b"behind\n")
        proc.stdin.flush()
        time.sleep(0.3)
        assert steps_within(1.0) == 0
        proc.stdin.close()  # the worker's lines end: as if it had caught up
        assert steps_within(1.0) >= 5
    finally:
        proc.terminate()
        proc.wait(10)


def test_behind_the_compactor_still_takes_a_step_every_so_often() -> None:
    """A long overload does not stop compaction: one step every ``behind_step_every`` while the
    worker is behind (a store that always has more to do), back to back once it has caught up."""
    calls: list[float] = []

    class Busy:  # (a store with endless compaction work: only compact and close are called)
        def compact(self, now_ms: int, max_series: int = 2000) -> CompactResult:
            calls.append(time.monotonic())
            return CompactResult(more=True)

        def close(self) -> None:
            pass

    stop, behind = threading.Event(), threading.Event()
    behind.set()
    c = Compactor(lambda: Busy(), lambda step: None, 0.05, stop, behind, behind_step_every=0.3)  # type: ignore[arg-type,return-value]
    c.start()
    try:
        time.sleep(1.45)
        assert 4 <= len(calls) <= 6, calls  # at 0, 0.3, 0.6, 0.9, 1.2 s
        assert all(b - a >= 0.29 for a, b in itertools.pairwise(calls))
        behind.clear()
        n = len(calls)
        time.sleep(0.3)
        assert len(calls) - n > 20
    finally:
        stop.set()
        c.join(5)


def test_damaged_rows_a_step_set_aside_are_counted_with_the_writes_ones() -> None:
    """A compaction step's damaged rows set aside come back in its report line and count in the
    worker's one counter, next to its writes' (both register in the worker's registry)."""
    from lossproof.worker.compactor import CompactorMetrics, Step, record
    from lossproof.worker.loop import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry)
    m = CompactorMetrics(registry)
    steps: list[Step] = []

    class Store:
        def compact(self, now_ms: int) -> CompactResult:
            return CompactResult(series=3, quarantined=2)

    Compactor(Store, steps.append, 1.0, threading.Event()).once(Store())  # type: ignore[arg-type]
    assert [s.quarantined for s in steps] == [2]
    record(m, steps[0])
    name = "lossproof_store_chunks_quarantined_total"
    assert registry.get_sample_value(name, {"by": "compaction"}) == 2
    assert registry.get_sample_value(name, {"by": "write"}) == 0
