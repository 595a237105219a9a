"""The health page's history survives a restart of the HTTP process, without a rate computed across
the restart (the counters start again at 0)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from lossproof.query.healthhistory import Entry, HistoryFile
from lptest.inproc import InProcess


def _entry(i: int, run: int = 1) -> Entry:
    return Entry(1000.0 + i, run, {("m_total", (("k", "v"),)): float(i), ("g", ()): 0.5})


def test_the_file_keeps_the_newest_samples_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "run" / "h.jsonl"
    f = HistoryFile(path, keep=5)
    held: list[Entry] = []
    for i in range(23):
        held.append(_entry(i))
        f.append(held[-1], held)
    assert HistoryFile(path, keep=5).load() == held[-5:]
    assert len(path.read_text().splitlines()) < 10  # rewritten, not grown forever
    with path.open("a") as out:
        out.write('{"t": 5, "run": 1, "m": [["x", [], ')  # a power cut in the middle of an append
    assert HistoryFile(path, keep=5).load() == held[-5:]
    assert HistoryFile(tmp_path / "none.jsonl", keep=5).load() == []


def _health(p: InProcess) -> dict:  # type: ignore[type-arg]
    status, body = p.get("/ui/api/health", key=p.operator_key)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def test_the_history_survives_a_restart(tmp_path: Path) -> None:
    key = "lp_test_" + secrets.token_hex(16)
    first = InProcess(tmp_path / "data", key)
    first.start(worker=False)
    try:
        deadline = time.monotonic() + 30
        while len(_health(first)["log"]["history_fsync_p99"]) < 1:  # two samples, one step
            assert time.monotonic() < deadline
            time.sleep(0.5)
        before = _health(first)["log"]["history_fsync_p99"]
    finally:
        first.stop()
    restarted = time.time() * 1000
    second = InProcess(tmp_path / "data", key)
    second.start(worker=False)
    try:
        after = _health(second)["log"]["history_fsync_p99"]
    finally:
        second.stop()
    old = [t for t, _ in after if t < restarted]
    assert old and old[: len(before)] == [t for t, _ in before][: len(old)], (before, after)
    # the step from the old run's last sample to the new run's first has no value: not a rate
    # computed from two different processes' counters
    (gap,) = [v for t, v in after if t > restarted][:1]
    assert gap is None
