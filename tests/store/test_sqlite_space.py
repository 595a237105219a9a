"""The embedded store's file once compaction is done: every raw chunk packed (whatever ids SQLite
hands out), free pages given back, the WAL truncated; and stores from before both upgraded."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lossproof import config as config_mod
from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import Matcher, WriteBatch
from lossproof.store.embedded import compact as compact_mod
from lossproof.store.sqlite import SqliteStore
from lptest import subprocess_env
from lptest.sqlite_files import unpacked_points

T0 = 1_700_000_000_000


def _batch(b: int, now: int, series: int = 100) -> WriteBatch:
    ts = [T0 + (10 * b + k) * 15_000 for k in range(10)]
    return WriteBatch(
        series=[
            ("t", SeriesSamples("m", {"i": str(i)}, ts, [float(k) for k in range(10)])) for i in range(series)
        ],
        now_ms=now,
    )


def _compact_all(store: SqliteStore, now: int) -> None:
    for later in (now, now + 60_000, now + 600_000, now + 3_600_000):
        for _ in range(10_000):
            if not store.compact(later).more:
                break
        else:
            raise AssertionError("compaction never finished")


def _stored(path: Path) -> int:
    store = SqliteStore(path, readonly=True)
    try:
        return sum(len(s.points) for s in store.select("t", [Matcher("__name__", "=", "m")], 0, 1 << 62))
    finally:
        store.close()


def _load(store: SqliteStore, batches: int, compact_each: bool) -> int:
    now = T0
    for b in range(batches):
        store.write_batch(_batch(b, now))
        if compact_each:
            while store.compact(now).more:
                pass
        now += 1000
    return now


def test_raw_chunks_written_after_packing_deleted_the_top_ids_are_packed_too(tmp_path: Path) -> None:
    # Packing keeps the lowest id of what it merges: the highest ids go, and SQLite's max(id) + 1
    # used to give the next flush ids at or below meta.compact_after, which the scan skips (80,000
    # of these 400,000 points stayed raw for good).
    store = SqliteStore(tmp_path / "s.db")
    now = _load(store, 400, compact_each=True)
    _compact_all(store, now)
    store.close()
    assert unpacked_points(tmp_path / "s.db") == 0
    assert _stored(tmp_path / "s.db") == 400 * 100 * 10


def test_a_store_with_stranded_raw_chunks_is_rescanned_once_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every series flushed raw (these have 400 points each: the flush would pack them itself)
    monkeypatch.setattr(compact_mod, "_PACK_AT_FLUSH", 10**9)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    now = _load(store, 40, compact_each=False)
    while store.compact(now).more:  # parts flushed into raw chunks, nothing packed yet
        pass
    store.close()
    assert unpacked_points(path) > 0
    # What an older lossproof left: the mark past raw chunks it will never scan, no chunk_id_top.
    con = sqlite3.connect(path)
    con.execute("INSERT OR REPLACE INTO meta VALUES ('compact_after', '999999999')")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('unpacked_flushes', '0')")
    con.execute("DELETE FROM meta WHERE key = 'chunk_id_top'")
    con.commit()
    con.close()
    store = SqliteStore(path)
    _compact_all(store, now + 10 * 3_600_000)
    store.close()
    assert unpacked_points(path) == 0


def test_compaction_gives_free_pages_back_and_truncates_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    now = _load(store, 300, compact_each=False)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from creation
    _compact_all(store, now)
    free, total = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_count"))
    wal = Path(f"{path}-wal").stat().st_size
    store.close()
    con.close()
    assert total > 0 and free <= max(2048, total // 10), (free, total)
    assert wal == 0


def test_store_migrate_converts_a_store_without_auto_vacuum(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config_mod.init_data_dir(data, "lp_test_key")
    path = config_mod.load(data).store_path
    store = SqliteStore(path)
    _load(store, 5, compact_each=False)
    store.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA auto_vacuum = NONE")
    con.execute("VACUUM")  # the file as a store created before incremental auto-vacuum
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    con.close()

    def migrate() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lossproof", "store", "migrate", "--data-dir", str(data)]
        return subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), timeout=120)

    first = migrate()
    assert first.returncode == 0, first.stderr
    assert "incremental auto-vacuum" in first.stdout
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    con.close()
    again = migrate()
    assert again.returncode == 0 and "rewrote" not in again.stdout, again.stdout + again.stderr
    assert _stored(path) == 5 * 100 * 10


def test_a_window_filled_by_several_flushes_ends_as_one_chunk(tmp_path: Path) -> None:
    """Review: a flush packs a series of 128 points or more itself, as PACKED into a window none of
    the series' chunks is in yet; the next flushes' points of that window are written PENDING
    (packed, but marked for packing, which merges them: it scans raw and pending chunks only, and
    packed chunks of six flushes in one window used to stay six for good). Until then the pending
    chunks are read as any other. (Packed here well before the 12 h window ends, so that it is
    packing that merges them, not the pass that merges ended windows.)"""
    from lossproof.store.embedded.common import _PACK_AGE_MS, _PART_FLUSH_AGE_MS

    path = tmp_path / "s.db"
    s = SqliteStore(path)
    now = T0 + 1_300_000  # (T0's 12 h window ends 6,400 s after it)
    for k in range(6):  # six batches of 200 points of one series in one window, a flush after each
        ts = [T0 + 1000 * (200 * k + i) for i in range(200)]
        vs = [float(200 * k + i) / 8 for i in range(200)]
        s.write_batch(WriteBatch(series=[("t", SeriesSamples("m", {}, ts, vs))], now_ms=now))
        while s.compact(now + _PART_FLUSH_AGE_MS).more:  # flushed (its age), not packed yet
            pass

    def kinds() -> list[tuple[int, int]]:
        con = sqlite3.connect(path)
        try:
            kind = "unicode(substr(data, 1, 1)) & 127"  # (sealed or not)
            return con.execute(f"SELECT n, {kind} FROM chunks ORDER BY id").fetchall()
        finally:
            con.close()

    assert kinds() == [(200, chunks.PACKED)] + [(200, chunks.PENDING)] * 5
    want = [(T0 + 1000 * i, i / 8) for i in range(1200)]
    ms = [Matcher("__name__", "=", "m")]
    assert [p for ser in s.select("t", ms, 0, 1 << 62) for p in ser.points] == want
    while s.compact(now + _PACK_AGE_MS + _PART_FLUSH_AGE_MS).more:
        pass
    assert kinds() == [(1200, chunks.PACKED)]
    assert [p for ser in s.select("t", ms, 0, 1 << 62) for p in ser.points] == want
    s.close()


def test_a_flush_is_packed_once_no_part_comes_for_a_while_not_before(tmp_path: Path) -> None:
    """Packing waits for COMPACT_MIN_CHUNKS flushes or _PACK_AGE_MS; but once the load stops (no part
    left, none written for _PACK_IDLE_MS) what is left is packed then, not 5 minutes later (a
    drained backlog's last flushes waited that long). Right after a flush took every part, while
    the last one is recent, it still waits."""
    from lossproof.bench.compare import packing_done
    from lossproof.store.embedded.common import _PACK_AGE_MS, _PACK_IDLE_MS, _PART_FLUSH_COUNT

    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        now = T0 + 3_600_000
        for flush in range(2):
            for b in range(_PART_FLUSH_COUNT):
                store.write_batch(_batch(flush * _PART_FLUSH_COUNT + b, now))
            while store.compact(now + 1).more:  # flushed (their count), every part taken
                pass
            assert not packing_done(path)
        n = 2000 * _PART_FLUSH_COUNT
        assert unpacked_points(path) == n
        assert not store.compact(now + _PACK_IDLE_MS - 1).more
        assert unpacked_points(path) == n and _PACK_IDLE_MS < _PACK_AGE_MS
        while store.compact(now + _PACK_IDLE_MS).more:
            pass
        assert unpacked_points(path) == 0 and packing_done(path)
        assert _stored(path) == n
    finally:
        store.close()
