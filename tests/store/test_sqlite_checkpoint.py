"""The embedded store's WAL checkpoints on a thread of their own (store/embedded/checkpoint.py):
the WAL stays small while batches are written, every point is there after, the thread ends with
the store, and a checkpoint that cannot run never fails a write (the writer's own autocheckpoint
is the fallback)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from lossproof.points import SeriesSamples
from lossproof.store.base import Matcher, WriteBatch
from lossproof.store.embedded.checkpoint import FALLBACK_PAGES
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


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def test_the_wal_stays_small_and_every_point_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    wal = tmp_path / "s.db-wal"
    store = SqliteStore(path)
    biggest = 0
    try:
        assert store._con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == FALLBACK_PAGES
        for b in range(40):  # ~80 MB of parts, one batch right after the other
            store.write_batch(_batch(b))
            biggest = max(biggest, wal.stat().st_size)
        assert store._checkpointer is not None and store._checkpointer.checkpoints > 0
        assert len(_threads()) == 1
    finally:
        store.close()
    assert not _threads()  # ended with the store
    # the WAL starts over at the latest when the writer's own checkpoint (the fallback) runs
    assert biggest < (FALLBACK_PAGES * 4096) + 8 * 1024 * 1024, biggest
    assert _count(path) == 40 * SERIES * SAMPLES


def test_a_checkpoint_that_cannot_run_fails_no_write(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        store.write_batch(_batch(0))
        # another connection's read transaction pins the WAL: checkpoints copy nothing past it
        blocker.execute("BEGIN")
        blocker.execute("SELECT count(*) FROM chunks").fetchone()
        for b in range(1, 6):
            store.write_batch(_batch(b))
        blocker.execute("COMMIT")
        store.write_batch(_batch(6))
    finally:
        blocker.close()
        store.close()
    assert _count(path) == 7 * SERIES * SAMPLES


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
