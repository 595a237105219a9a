"""The embedded store merges the packed chunks of windows that have ended into one chunk per series
and ``_MERGE_WINDOW_MS`` window (compact.py, ``_merge_read``): what queries see never changes, a
series of many points a window keeps its chunks, a late point joins its merged window (first write
winning), and a kill -9 inside a merge step leaves the chunks as they were."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lossproof.points import SeriesSamples
from lossproof.store.base import Matcher, WriteBatch
from lossproof.store.embedded.common import _MERGE_MAX_POINTS, _MERGE_WINDOW_MS
from lossproof.store.sqlite import SqliteStore
from lptest import subprocess_env

W = _MERGE_WINDOW_MS
T0 = 1_700_000_000_000 // W * W  # a window's start
H = 3_600_000


def _batch(series: list[str], ts: list[int], value: float, now: int) -> WriteBatch:
    return WriteBatch(
        series=[("t", SeriesSamples("m", {"i": i}, ts, [value + t / 1000 for t in ts])) for i in series],
        now_ms=now,
    )


def _drain(store: SqliteStore, now: int, limit: int = 5000) -> None:
    for _ in range(limit):
        if not store.compact(now).more:
            return
    raise AssertionError(f"compact() still says more after {limit} calls")


def _points(path: Path) -> dict[tuple[str, int], float]:
    store = SqliteStore(path, readonly=True)
    try:
        out: dict[tuple[str, int], float] = {}
        for s in store.select("t", [Matcher("__name__", "=", "m")], -(1 << 63), (1 << 63) - 1):
            for t, v in s.points:
                assert (s.labels["i"], t) not in out, "a point twice"
                out[(s.labels["i"], t)] = v
        return out
    finally:
        store.close()


def _chunks(path: Path) -> Counter[tuple[int, int]]:
    """Chunks per (series, merge window of the chunk's first point)."""
    con = sqlite3.connect(path)
    try:
        return Counter((sid, t_min // W) for sid, t_min in con.execute("SELECT series_id, t_min FROM chunks"))
    finally:
        con.close()


def _load(store: SqliteStore, series: list[str], hours: int, every_ms: int) -> dict[tuple[str, int], float]:
    """Batches of 10 minutes of points, compacted as they come (with the clock at the data's time:
    every window open when it is written, so packed in 2 h windows first)."""
    want: dict[tuple[str, int], float] = {}
    for b in range(hours * 6):
        ts = list(range(T0 + b * 600_000, T0 + (b + 1) * 600_000, every_ms))
        store.write_batch(_batch(series, ts, 0.0, ts[-1]))
        for i in series:
            want.update({(i, t): t / 1000 for t in ts})
        store.compact(ts[-1])
    return want


def test_windows_that_ended_become_one_chunk_a_series_and_queries_see_the_same(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        want = _load(store, ["a", "b", "c"], 40, 15_000)
        end = T0 + 40 * H
        _drain(store, end)  # packed, the last window still open: 2 h chunks
        before = _chunks(path)
        assert max(before.values()) > 1
        assert _points(path) == want
        _drain(store, end + W)  # every window has ended
    finally:
        store.close()
    after = _chunks(path)
    assert set(after) == set(before)
    assert set(after.values()) == {1}
    assert _points(path) == want


def test_a_series_of_many_points_a_window_keeps_its_chunks(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        # 1 s apart: 43,200 points a window, past _MERGE_MAX_POINTS; "slow" is merged
        want = _load(store, ["fast"], 14, 1000)
        ts = list(range(T0, T0 + 14 * H, 15_000))
        store.write_batch(_batch(["slow"], ts, 0.0, ts[-1]))
        want.update({("slow", t): t / 1000 for t in ts})
        _drain(store, T0 + 14 * H)
        _drain(store, T0 + 14 * H + W)
    finally:
        store.close()
    assert _MERGE_MAX_POINTS < 12 * 3600
    con = sqlite3.connect(path)
    ids = dict(con.execute("SELECT json_extract(labels_json, '$.i'), id FROM series").fetchall())
    con.close()
    got = _chunks(path)
    assert got[(ids["fast"], T0 // W)] == 6  # its 2 h chunks of the first window
    assert got[(ids["slow"], T0 // W)] == 1
    assert _points(path) == want


def test_one_window_of_many_points_keeps_its_chunks_and_the_others_of_the_series_merge(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        for b in range(4 * 12 * 6):  # 4 windows in batches of 10 min
            every = 4000 if b < 72 else 60_000  # the first window: 10,800 points, then 720 each
            ts = list(range(T0 + b * 600_000, T0 + (b + 1) * 600_000, every))
            store.write_batch(_batch(["x"], ts, 0.0, ts[-1]))
            store.compact(ts[-1])
        _drain(store, T0 + 4 * W - 1)
        _drain(store, T0 + 5 * W)
    finally:
        store.close()
    assert sorted((w - T0 // W, n) for (_, w), n in _chunks(path).items()) == [(0, 6), (1, 1), (2, 1), (3, 1)]


@pytest.mark.parametrize("far", [-(1 << 63) + 1000, -(1 << 62), 0, 86_400_000])
def test_points_far_in_the_past_end_the_passes_soon(tmp_path: Path, far: int) -> None:
    # a pass walks no empty years, and windows before 1970 are not merged: compaction settles
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        want = _load(store, ["a"], 30, 15_000)
        now = T0 + 30 * H + W
        _drain(store, now, limit=50)
        store.write_batch(_batch(["a", "b"], [far, far + 1000], 0.0, now))
        want.update({(i, t): t / 1000 for i in ("a", "b") for t in (far, far + 1000)})
        _drain(store, now, limit=50)
    finally:
        store.close()
    assert _points(path) == want


def test_a_late_point_joins_its_merged_window_and_the_first_write_wins(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        want = _load(store, ["a", "b"], 26, 15_000)
        now = T0 + 26 * H + W
        _drain(store, now)
        merged = _chunks(path)
        assert set(merged.values()) == {1}
        # a point stored before (another value: not kept) and a new one, 5 s after it
        late = [T0 + 3 * H, T0 + 3 * H + 5000]
        store.write_batch(_batch(["a"], late, 1e6, now))
        want[("a", late[1])] = 1e6 + late[1] / 1000
        _drain(store, now)
        _drain(store, now + W)
    finally:
        store.close()
    assert _chunks(path) == merged
    assert _points(path) == want


MERGE_CHILD = """
import os, sys
from lossproof.store.sqlite import SqliteStore

store = SqliteStore(sys.argv[1])
now = int(sys.argv[2])
store.compact(now)  # the merge pass begins (meta only)
with open(os.environ["LOSSPROOF_FAULTS_FILE"], "w") as f:
    f.write(sys.argv[3])
while store.compact(now).more:
    pass
print("merged", flush=True)
"""


@pytest.mark.process
def test_a_merge_killed_before_commit_leaves_the_chunks_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    end = T0 + 30 * H
    try:
        want = _load(store, ["a", "b", "c"], 30, 15_000)
        _drain(store, end + H)  # all packed; the windows that ended merged, the last one open
    finally:
        store.close()
    before = _chunks(path)
    assert max(before.values()) > 1  # the last window's chunks
    env = subprocess_env()
    env["LOSSPROOF_FAULTS_FILE"] = str(tmp_path / "faults.json")
    crash = json.dumps({"store.compact_before_commit": {}})
    argv = [sys.executable, "-c", MERGE_CHILD, str(path), str(end + W)]
    died = subprocess.run([*argv, crash], env=env, capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert "merged" not in died.stdout
    assert _chunks(path) == before
    assert _points(path) == want
    (tmp_path / "faults.json").write_text("{}")
    done = subprocess.run([*argv, "{}"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "merged" in done.stdout, done.stderr
    assert set(_chunks(path).values()) == {1}
    assert _points(path) == want
