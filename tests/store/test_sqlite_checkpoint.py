"""The embedded store's WAL checkpoints on a thread of their own (store/embedded/checkpoint.py):
the WAL stays small while batches are written, every point is there after, the thread ends with
the store (closed or collected), the writer bounds the WAL itself once the thread finds it large,
and a checkpoint that cannot copy everything never fails a write."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

from lossproof.points import SeriesSamples
from lossproof.store.base import Matcher, WriteBatch
from lossproof.store.embedded.checkpoint import LIMIT_FRAMES
from lossproof.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
SERIES = 200
SAMPLES = 500  # 100,000 points a batch: a part of ~2 MB, past SQLite's default 1,000 pages


def _batch(b: int) -> WriteBatch:
    ts = [T0 + (SAMPLES * b + k) * 1000 for k in range(SAMPLES)]
    return WriteBatch(
        series=[("t", SeriesSamples("m", {"i": str(i)}, ts, [float(b)] * SAMPLES)) for i in range(SERIES)],
        now_ms=T0,
    )


def _count(path: Path) -> int:
    store = SqliteStore(path, readonly=True)
    try:
        return sum(len(s.points) for s in store.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62))
    finally:
        store.close()


def _wal_frames(store: SqliteStore) -> int:
    con = sqlite3.connect(store.path)
    try:
        # (a PASSIVE checkpoint that copies what it can and says how many frames the WAL holds;
        # not while the store's thread runs one: it would be refused, busy)
        with store._checkpointer.lock:  # type: ignore[union-attr]
            return int(con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        con.close()


def test_the_wal_stays_small_and_every_point_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    wal = tmp_path / "s.db-wal"
    store = SqliteStore(path)
    biggest = 0
    try:
        assert store._con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == LIMIT_FRAMES
        for b in range(40):  # ~80 MB of parts, one batch right after the other
            store.write_batch(_batch(b))
            biggest = max(biggest, wal.stat().st_size)
        state = store._checkpointer._state  # type: ignore[union-attr]
        assert store._checkpointer.checkpoints > 0  # type: ignore[union-attr]
        thread = state.thread
        assert thread is not None and thread.is_alive()
    finally:
        store.close()
    assert not thread.is_alive()  # ended with the store
    # the WAL starts over at the latest at the writer's bound (plus the batch that crossed it)
    assert biggest < LIMIT_FRAMES * 4096 + 8 * 1024 * 1024, biggest
    assert _count(path) == 40 * SERIES * SAMPLES


def test_a_store_never_closed_stops_its_thread_when_collected(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    for b in range(3):
        store.write_batch(_batch(b))
    state = store._checkpointer._state  # type: ignore[union-attr]
    thread = state.thread
    assert thread is not None and thread.is_alive()
    del store
    gc.collect()
    assert state.stopping  # told to end (not joined: that is close()'s)
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_writer_bounds_the_wal_once_the_thread_found_it_large(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        store.write_batch(_batch(0))
        # a reader pins the WAL: nothing after its snapshot is copied back, the WAL grows (and
        # every write still succeeds)
        blocker.execute("BEGIN")
        blocker.execute("SELECT count(*) FROM chunks").fetchone()
        for b in range(1, 12):
            store.write_batch(_batch(b))
        blocker.execute("COMMIT")
        assert _wal_frames(store) >= LIMIT_FRAMES
        state = store._checkpointer._state  # type: ignore[union-attr]
        # the thread stopped first: its own checkpoint, running beside the write below, could keep
        # the WAL from starting over at that write (seen once under CI's load: 4,791 frames left)
        state.signal_stop()
        if state.thread is not None:
            state.thread.join(timeout=30)
        state.frames = LIMIT_FRAMES  # what the thread would have found
        store.write_batch(_batch(12))  # checkpoints what is left first: the WAL starts over
        assert state.frames == 0
        assert _wal_frames(store) < LIMIT_FRAMES // 2
    finally:
        blocker.close()
        store.close()
    assert _count(path) == 13 * SERIES * SAMPLES


def test_readers_and_the_compactors_handle_start_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    reader = SqliteStore(path, readonly=True)
    compactor = SqliteStore(path, sync_commits=False)
    try:
        assert reader._checkpointer is None and compactor._checkpointer is None
    finally:
        reader.close()
        compactor.close()
