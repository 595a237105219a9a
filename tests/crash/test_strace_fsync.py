"""fsync and fdatasync failing for real, injected from outside the process by strace.

The fault hooks of the log (``log.fsync``) fire *before* the real call, so they cannot tell whether
the real call is made. Here strace attaches to every process of a running ``lossproof up`` and makes
each fsync/fdatasync syscall return EIO; the code under test neither knows nor can skip it. While
attached, no write may be answered 2xx (whatever answers, it must not be an OK). Once strace detaches,
the pipeline must recover by itself and store everything it acknowledged.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lptest import require
from lptest.pipeline import Pipeline, _children, report

pytestmark = pytest.mark.process


def attach(pids: list[int], log: str) -> subprocess.Popen[bytes]:
    args = ["strace", "-f", "-qq", "-o", log, "-e", "trace=fsync,fdatasync",
            "-e", "inject=fsync,fdatasync:error=EIO"]  # fmt: skip
    for pid in pids:
        args += ["-p", str(pid)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    time.sleep(1.0)  # strace attaches to every thread of every process before it injects
    assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
    return proc


def test_no_ok_while_fsync_fails_for_real(pipeline: Pipeline, tmp_path: object) -> None:
    require(shutil.which("strace"), "strace (scripts/deps/crash.sh)")
    p = pipeline
    agent = "strace-agent"
    r = p.post_reports(agent, [report(1)])
    assert r.status == 200, r.data
    assert p.proc is not None
    log = str(p.data_dir.parent / "strace.log")
    tracer = attach([p.proc.pid, *_children(p.proc.pid)], log)
    try:
        answers = []
        for seq in range(2, 12):
            try:
                r = p.post_reports(agent, [report(seq)], timeout=15)
                answers.append(r.status)
            except Exception as e:  # a dropped connection is not an OK either
                answers.append(repr(e))
        injected = Path(log).read_text().count("(INJECTED)")
    finally:
        tracer.send_signal(signal.SIGINT)  # strace detaches cleanly on SIGINT
        tracer.wait(30)
    assert injected > 0, "strace injected nothing: no fsync was even tried"
    oks = [a for a in answers if isinstance(a, int) and 200 <= a < 300]
    assert not oks, f"2xx while every fsync failed: {answers}"
    # Detached: the log probes the disk and recovers without a restart; the agent's retries succeed.
    deadline = time.monotonic() + 30
    acked = {1}
    while time.monotonic() < deadline and len(acked) < 11:
        for seq in range(2, 12):
            if seq not in acked:
                r = p.post_reports(agent, [report(seq)], timeout=15)
                if r.status == 200:
                    acked.add(seq)
        time.sleep(0.2)
    assert len(acked) == 11, f"not recovered after the fault: acked {sorted(acked)}"
    p.wait_stored(agent, acked, timeout=60)
