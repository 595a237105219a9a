"""Reviewer B: compaction space changes under two connections, readers holding snapshots, migrate
while the worker has the store open, stores of auto_vacuum 0, and compaction's termination."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from lossproof.bench.compare import compaction_state
from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import COMPACT_WINDOW_MS, Matcher, WriteBatch
from lossproof.store.embedded.compact import _Pack
from lossproof.store.sqlite import SqliteStore
from lptest.sqlite_files import unpacked_points

T0 = 1_700_000_000_000


def _batch(b: int, now: int, series: int = 50, value: float = 0.0) -> WriteBatch:
    ts = [T0 + (10 * b + k) * 15_000 for k in range(10)]
    return WriteBatch(
        series=[
            ("t", SeriesSamples("m", {"i": str(i)}, ts, [value + k for k in range(10)]))
            for i in range(series)
        ],
        now_ms=now,
    )


def _points(path: Path) -> dict[tuple[str, int], float]:
    store = SqliteStore(path, readonly=True)
    try:
        out: dict[tuple[str, int], float] = {}
        for s in store.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62):
            for p in s.points:
                key = (s.labels["i"], p[0])
                assert key not in out
                out[key] = p[1]
        return out
    finally:
        store.close()


def _drain(store: SqliteStore, now: int, limit: int = 5000) -> int:
    for k in range(limit):
        if not store.compact(now).more:
            return k
    raise AssertionError(f"compact() still says more after {limit} calls")


def _without_auto_vacuum(path: Path) -> None:
    """The file as a store created before incremental auto-vacuum (``lossproof store migrate``
    converts those)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA auto_vacuum = NONE")
    con.execute("VACUUM")
    con.close()


def _written_without_auto_vacuum(path: Path, batches: int) -> int:
    """A store of ``batches`` batches, made as before incremental auto-vacuum; the next ``now``."""
    store = SqliteStore(path)
    now = T0
    for k in range(batches):
        store.write_batch(_batch(k, now))
        now += 1000
    store.close()
    _without_auto_vacuum(path)
    return now


def _drain_all(store: SqliteStore, now: int) -> None:
    for later in (now, now + 60_000, now + 600_000, now + 3_600_000, now + 10 * 3_600_000):
        _drain(store, later)


def test_two_connections_compacting_and_writing_interleaved_keep_every_point_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a, b = SqliteStore(path), SqliteStore(path)
    now = T0
    try:
        for k in range(120):
            (a if k % 3 else b).write_batch(_batch(k, now))
            # a's and b's steps interleaved: each may read a step the other then commits first
            for _ in range(3):
                ra = a.compact(now + 400_000, max_series=7)
                rb = b.compact(now + 400_000, max_series=5)
                if not (ra.more or rb.more):
                    break
            now += 1000
        # a later write of the same (series, t) with other values: first write wins
        a.write_batch(_batch(5, now, value=1000.0))
        b.write_batch(_batch(6, now, value=1000.0))
        _drain_all(a, now)
        _drain_all(b, now)
    finally:
        a.close()
        b.close()
    got = _points(path)
    assert len(got) == 120 * 50 * 10
    assert all(v < 1000.0 for v in got.values())
    assert unpacked_points(path) == 0


def test_compaction_finishes_while_a_reader_holds_a_snapshot_and_the_reader_sees_its_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    now = T0
    for k in range(200):
        store.write_batch(_batch(k, now))
        now += 1000
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*), sum(length(data)) FROM chunks").fetchone()
    parts_before = reader.execute("SELECT count(*) FROM parts").fetchone()
    try:
        _drain_all(store, now)  # must not spin: the WAL cannot be truncated while the reader is there
        assert reader.execute("SELECT count(*), sum(length(data)) FROM chunks").fetchone() == before
        assert reader.execute("SELECT count(*) FROM parts").fetchone() == parts_before
    finally:
        reader.execute("COMMIT")
        reader.close()
    # the reader gone, the next idle call truncates the WAL
    _drain(store, now + 20 * 3_600_000)
    store.close()
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert len(_points(path)) == 200 * 50 * 10


def test_a_store_of_auto_vacuum_0_compacts_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    now = _written_without_auto_vacuum(path, 60)
    store = SqliteStore(path)
    try:
        _drain_all(store, now)
    finally:
        store.close()
    assert unpacked_points(path) == 0
    assert len(_points(path)) == 60 * 50 * 10


def test_migrate_while_the_worker_has_the_store_open_and_writes_on(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    now = _written_without_auto_vacuum(path, 60)
    worker = SqliteStore(path)
    reader = SqliteStore(path, readonly=True)
    try:
        _drain(worker, now)
        assert len(reader.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62)) == 50
        other = SqliteStore(path)  # what `store migrate` opens
        try:
            assert other.enable_reclaim()
        finally:
            other.close()
        for k in range(60, 120):
            worker.write_batch(_batch(k, now))
            now += 1000
        worker.write_batch(_batch(3, now, value=1000.0))
        _drain_all(worker, now)
        got = reader.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62)
        assert sum(len(s.points) for s in got) == 120 * 50 * 10
    finally:
        reader.close()
        worker.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    con.close()
    got = _points(path)
    assert len(got) == 120 * 50 * 10 and all(v < 1000.0 for v in got.values())
    assert unpacked_points(path) == 0


def test_reclaim_from_a_second_thread_does_not_race_the_writer(tmp_path: Path) -> None:
    # the worker's compaction runs in another thread than its writes (same store object)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    now = T0
    for k in range(150):
        store.write_batch(_batch(k, now))
        now += 1000
    errors: list[BaseException] = []
    stop = threading.Event()
    # compaction's clock, read once: the loop below moves `now` on, and packing is timed from the
    # compaction that flushed (a drain at an earlier time would find nothing due yet)
    later = now + 10 * 3_600_000

    def compactor() -> None:
        try:
            while not stop.is_set():
                store.compact(later)
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=compactor)
    th.start()
    try:
        for k in range(150, 250):
            store.write_batch(_batch(k, now))
            now += 1000
    finally:
        stop.set()
        th.join()
    _drain_all(store, later)
    store.close()
    assert not errors, errors
    assert len(_points(path)) == 250 * 50 * 10
    assert unpacked_points(path) == 0


def test_a_flush_between_two_pack_steps_is_not_forgotten_one_worker(tmp_path: Path) -> None:
    # Packing works through its queue a slice per call; a flush may come between two slices (parts
    # are flushed first). Its raw chunks are above the scan's mark; when the queue is done,
    # meta.unpacked_flushes must not be reset to 0 as if nothing were left, or they stay raw (the
    # bench's compaction_state then says done).
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    now = T0
    k = 0
    try:

        def parts_then_flush() -> None:
            nonlocal k, now
            for _ in range(8):  # _PART_FLUSH_COUNT parts: a flush is due
                store.write_batch(_batch(k, now))
                k += 1
                now += 1000

        for _ in range(10):  # flushes, until packing is due
            parts_then_flush()
            store.compact(now, max_series=5)  # the flush
        store.compact(now, max_series=5)  # packing starts: a slice of the queue
        parts_then_flush()
        _drain_all(store, now)
        state = compaction_state(path)
    finally:
        store.close()
    assert len(_points(path)) == k * 50 * 10
    # bench compare's done condition must not say done with raw chunks left
    assert state["done"] and state["raw_chunks"] == 0, state
    assert unpacked_points(path) == 0


def test_enable_reclaim_does_not_build_the_vacuum_copy_in_memory(tmp_path: Path) -> None:
    # _connect sets temp_store = MEMORY; VACUUM builds its copy of the database in a temp database,
    # so `store migrate` of a store of N GiB needed N GiB of RAM (or got the OOM killer).
    import os
    import subprocess
    import sys

    from lptest import subprocess_env

    path = tmp_path / "s.db"
    SqliteStore(path).close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("CREATE TABLE pad (x BLOB)")
    con.execute("BEGIN")
    for _ in range(1600):
        con.execute("INSERT INTO pad VALUES (?)", (os.urandom(100_000),))
    con.execute("COMMIT")
    con.close()
    _without_auto_vacuum(path)
    size_mib = path.stat().st_size / 2**20
    code = (
        "import resource, sys\n"
        "from lossproof.store.sqlite import SqliteStore\n"
        "s = SqliteStore(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert s.enable_reclaim()\n"
        "s.close()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    grew_mib = float(out.stdout.strip())
    # the page cache (CACHE_KIB, 64 MiB) may fill; not a copy of the whole file
    assert grew_mib < 64 + 0.25 * size_mib, (grew_mib, size_mib)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert con.execute("PRAGMA temp_store").fetchone()[0] in (0, 1, 2)
    con.close()


def test_kill_9_during_store_migrate_vacuum_leaves_the_store_whole(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from lptest import subprocess_env

    path = tmp_path / "s.db"
    store = SqliteStore(path)
    now = T0
    for k in range(40):
        store.write_batch(_batch(k, now))
        now += 1000
    _drain_all(store, now)
    store.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("CREATE TABLE pad (x BLOB)")
    con.execute("BEGIN")
    for _ in range(1200):
        con.execute("INSERT INTO pad VALUES (?)", (os.urandom(100_000),))
    con.execute("COMMIT")
    con.close()
    _without_auto_vacuum(path)
    code = (
        "import sys\nfrom lossproof.store.sqlite import SqliteStore\n"
        "SqliteStore(sys.argv[1]).enable_reclaim()\n"
    )
    for delay in (0.3, 0.8, 1.5):
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], env=subprocess_env())
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        assert len(_points(path)) == 40 * 50 * 10


def test_a_raw_chunk_reaching_past_the_windows_scanned_has_those_windows_packed_whole(tmp_path: Path) -> None:
    """A raw chunk flushed after the scan may reach a window the pack step was not asked for. Its
    piece there must rank against every chunk there: here a raw chunk written after it holds one of
    its (series, t) with another value, which must not win (first write wins)."""
    import numpy as np

    W = COMPACT_WINDOW_MS
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    w = T0 // W
    t_next = (w + 1) * W + 1000  # in the next window

    def raw(cid: int, ts: list[int], v: float) -> tuple[int, int, int, int, int, bytes]:
        (c,) = chunks.encode_batch(np.ones(len(ts), dtype=np.int64), np.array(ts), np.full(len(ts), v))
        return (cid, 1, c.t_min, c.t_max, c.n, c.data)

    con = sqlite3.connect(path, isolation_level=None)
    con.execute("INSERT INTO series VALUES (1, 't', 'm', '{}')")
    con.executemany(
        "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
        [raw(10, [T0, t_next], 0.0), raw(11, [t_next], 7.0), raw(12, [T0 + 1], 0.0)],
    )
    con.execute("INSERT OR REPLACE INTO meta VALUES ('chunk_id_top', '12')")
    con.close()
    store = SqliteStore(path)
    try:
        store._pack_queue = [(1, w, w, 3)]  # the scan saw window w only
        store._con.execute("BEGIN")
        try:
            job = store._compact_read(T0, 2000)
        finally:
            store._rollback()
        assert isinstance(job, _Pack) and sorted(cid for cid, _ in job.found) == [10, 11, 12]
        with store._write({}, "store.compact_before_commit"):
            store._compact_write(job, T0)
        (s,) = store.select_arrays("t", [Matcher("__name__", "=", "m")], T0 - W, T0 + 3 * W)
        assert s.t.tolist() == [T0, T0 + 1, t_next] and s.v.tolist() == [0.0, 0.0, 0.0]
    finally:
        store.close()
