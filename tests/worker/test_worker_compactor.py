"""Compaction runs in a process of its own, a child of the worker (src/lossproof/worker/compactor.py).

Checked on a real `lossproof up`: the compactor's steps reach the worker's /metrics; a compactor
killed with -9 is started again by the worker and compaction goes on; a worker killed with -9 takes
its compactor with it (no orphan left compacting); nothing stored is lost or doubled on the way.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

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
