"""kill -9 a process writing batches at random moments; the store must hold all or nothing.

After every kill the store is reopened and checked: each stored report has all its points
(report atomicity), nothing is both stored and missing or lost, missing is exactly the holes,
the points count equals the sum over stored reports, and every batch the writer saw committed is
there.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lossproof.store import ledger as lg
from lossproof.store.sqlite import SqliteStore
from lptest import subprocess_env

AGENTS = ["a0", "a1", "a2", "a3"]
ALL = (0, 2**62)

WRITER = """
    import random, sys
    from pathlib import Path
    from lossproof.store.base import DeadLetter, LostRange, Point, ReportWrite, WriteBatch
    from lossproof.log.base import LogGap
    from lossproof.store.sqlite import SqliteStore

    AGENTS = ["a0", "a1", "a2", "a3"]
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = SqliteStore(Path(path))

    def npoints(agent, seq):
        return 1 + (seq * 7 + AGENTS.index(agent)) % 40

    def report(agent, seq):
        labels = [{"agent": agent, "k": str(j % 5)} for j in range(npoints(agent, seq))]
        pts = [Point("m", lab, seq * 1000 + j, float(seq)) for j, lab in enumerate(labels)]
        return ReportWrite("t", agent, seq, pts)

    print("ready", flush=True)
    n = seed * 1_000_000
    while True:
        n += 1
        reports = [report(rng.choice(AGENTS), rng.randint(1, 700)) for _ in range(rng.randint(20, 200))]
        lost = []
        if rng.random() < 0.3:
            a = rng.randint(1, 700)
            lost.append(LostRange("t", rng.choice(AGENTS), a, a + rng.randint(0, 5), "spool full"))
        samples = [("t", Point("s", {"k": str(t % 3)}, t, t * 0.5)) for t in rng.sample(range(100_000), 50)]
        dead = [DeadLetter(0, rng.randint(0, 10**6), "t", "bad", b"x")] if rng.random() < 0.2 else []
        gaps = [LogGap(0, n, n, "gone", n)] if rng.random() < 0.2 else []
        store.write_batch(WriteBatch(reports, samples, lost, dead, gaps, now_ms=n))
        print("ok " + ",".join(f"{r.agent}:{r.seq}" for r in reports), flush=True)
"""


def npoints(agent: str, seq: int) -> int:
    return 1 + (seq * 7 + AGENTS.index(agent)) % 40


def check_invariants(path: Path, committed: set[tuple[str, int]]) -> int:
    store = SqliteStore(path)
    try:
        total_expected = 0
        total_stored = 0
        for agent in AGENTS:
            led = store.ledger("t", agent)
            series = store.query("t", "m", *ALL, {"agent": agent})
            by_seq: dict[int, list[tuple[int, float]]] = {}
            for s in series:
                for t, v in s.points:
                    by_seq.setdefault(t // 1000, []).append((t, v))
            if led is None:
                assert not by_seq
                assert not any(a == agent for a, _ in committed)
                continue
            stored = lg.from_seqs(s for a, b in led.stored for s in range(a, b + 1))
            missing = lg.untag(led.missing)
            lost = lg.untag(led.lost)
            assert stored == led.stored
            assert lg.intersect(stored, missing) == []
            assert lg.intersect(stored, lost) == []
            assert lg.intersect(missing, lost) == []
            assert missing == lg.holes(stored, lost)
            stored_seqs = {s for a, b in stored for s in range(a, b + 1)}
            assert set(by_seq) == stored_seqs, (
                "points of a report not stored, or a stored report without points"
            )
            for seq, pts in by_seq.items():
                assert len(pts) == npoints(agent, seq), f"{agent} seq {seq}: report stored partially"
                assert all(v == float(seq) for _, v in pts)
            total_expected += sum(npoints(agent, s) for s in stored_seqs)
            total_stored += len(stored_seqs)
            assert {s for a, s in committed if a == agent} <= stored_seqs, "a committed batch vanished"
            [summary] = [x for x in store.agents("t") if x.agent == agent]
            assert summary.stored_reports == lg.count(led.stored)
            assert summary.missing_reports == lg.count(led.missing)
            assert summary.lost_reports == lg.count(led.lost)
            assert summary.max_seq == max(b for _, b in [*stored, *lost])
        assert sum(len(s.points) for s in store.query("t", "m", *ALL, {})) == total_expected
        for s in store.query("t", "s", *ALL, {}):
            assert all(v == t * 0.5 and str(t % 3) == s.labels["k"] for t, v in s.points)
        return total_stored
    finally:
        store.close()


@pytest.mark.process
def test_kill_9_while_writing_leaves_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = subprocess_env()
    rng = random.Random()
    committed: set[tuple[str, int]] = set()
    progress = []
    for round_no in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(path), str(round_no + 1)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.15, 0.7))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        for line in out.splitlines():
            if line.startswith("ok "):
                committed.update((a, int(s)) for a, s in (x.split(":") for x in line[3:].split(",")))
        progress.append(check_invariants(path, committed))
    assert progress[-1] > 0 and progress == sorted(progress), progress
