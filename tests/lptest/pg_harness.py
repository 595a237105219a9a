"""Writer processes (``pg_writer.py``) and the invariants of the store they wrote."""

from __future__ import annotations

import subprocess
import sys
import threading

from lossproof.store import ledger as lg
from lossproof.store.base import Store
from lptest import PROCS, subprocess_env
from lptest.procs.pg_writer import AGENTS, MAX_SEQ, npoints, point_time

ALL = (0, 2**62)


class Writer:
    def __init__(self, dsn: str, schema: str, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PROCS / "pg_writer.py"), dsn, schema, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=subprocess_env(),
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def oks(self) -> int:
        return sum(1 for x in self.lines if x.startswith("ok "))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(10)


def parse_ok(lines: list[str]) -> tuple[set[tuple[str, int]], int]:
    """(agent, seq) of every report in a committed batch, and the sum of reports_stored reported."""
    acked: set[tuple[str, int]] = set()
    stored = 0
    for line in lines:
        if not line.startswith("ok "):
            continue
        _, n_stored, _, keys = line.split(" ", 3)
        stored += int(n_stored)
        for k in keys.strip().split(","):
            a, s = k.split(":")
            acked.add((a, int(s)))
    return acked, stored


def check_store(store: Store, acked: set[tuple[str, int]], reported_stored: int) -> int:
    """Every acknowledged report is stored, whole, once; nothing else is. Returns the number of
    reports stored."""
    total = 0
    for agent in AGENTS:
        led = store.ledger("t", agent)
        stored = set() if led is None else {s for a, b in led.stored for s in range(a, b + 1)}
        for a, s in acked:
            if a == agent:
                assert s in stored, f"{agent}:{s} acknowledged but not stored"
        got: dict[int, set[int]] = {}
        writers: dict[int, set[int]] = {}
        for series in store.query("t", "m", *ALL, {"agent": agent}):
            for t, v in series.points:
                seq = (t - point_time(0, 0)) // 3_600_000
                got.setdefault(seq, set()).add(t)
                assert int(v) // 100 == seq
                writers.setdefault(seq, set()).add(int(v) % 100)
        # a report is written whole, by one writer: its points all carry that writer's id
        assert all(len(w) == 1 for w in writers.values()), writers
        for seq in stored:
            assert 1 <= seq <= MAX_SEQ
            want = {point_time(seq, j) for j in range(npoints(agent, seq))}
            assert got.get(seq) == want, f"{agent}:{seq} stored but its points are {got.get(seq)}"
        assert set(got) == stored, f"{agent}: points of reports not in the ledger: {set(got) - stored}"
        if led is not None:
            # nothing both stored and missing/lost; missing = the holes below the top
            lost = lg.untag(led.lost)
            assert lg.intersect(led.stored, lost) == []
            assert lg.untag(led.missing) == lg.holes(led.stored, lost)
            [summary] = [x for x in store.agents("t") if x.agent == agent]
            assert summary.stored_reports == len(stored)
        total += len(stored)
    # No report counted as newly stored by two writers: each decision was taken once.
    assert reported_stored <= total, (reported_stored, total)
    return total
