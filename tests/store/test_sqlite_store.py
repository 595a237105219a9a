"""SQLite-specific behaviour: durability settings, schema versioning, multi-process access."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.store import chunks
from lossproof.store.base import (
    CompactResult,
    Point,
    ReportWrite,
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
    WriteBatch,
)
from lossproof.store.sqlite import SCHEMA_VERSION, SqliteStore
from lptest import subprocess_env

T0 = 1_700_000_000_000
ALL = (0, 2**62)


def report(seq: int, agent: str = "a1", n: int = 3) -> ReportWrite:
    return ReportWrite(
        "t1", agent, seq, [Point("cpu", {"agent": agent}, T0 + seq * 1000 + i, 1.0) for i in range(n)]
    )


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = subprocess_env()
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == expected, f"child said {line!r}"


def test_durability_settings(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "s.db")
    con = s._con
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is fsync'd per commit
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    s.close()
    raw = sqlite3.connect(tmp_path / "s.db")
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    raw.close()


def test_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    raw = sqlite3.connect(tmp_path / "s.db")
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    raw.commit()
    raw.close()
    for readonly in (False, True):
        with pytest.raises(StoreSchemaError, match="newer than this lossproof supports"):
            SqliteStore(tmp_path / "s.db", readonly=readonly)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "other.db")
    raw.execute("CREATE TABLE stuff (x)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreSchemaError, match="not a lossproof store"):
        SqliteStore(tmp_path / "other.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "junk.db")


V2_POINTS = """
DROP TABLE chunks; DROP TABLE parts;
CREATE TABLE points (
    bucket INTEGER NOT NULL, series_id INTEGER NOT NULL, t INTEGER NOT NULL, v REAL,
    PRIMARY KEY (bucket, series_id, t)
) STRICT, WITHOUT ROWID;
INSERT INTO meta VALUES ('bucket_shift', '10');
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""


def make_v2(path: Path, series: int, points: int) -> dict[int, list[tuple[int, float]]]:
    """A version 2 file (one row per point, bucket = t >> 10) with ``series`` series of ``points``
    points each (every 7th value NULL: NaN); returns what each series holds."""
    SqliteStore(path).close()
    con = sqlite3.connect(path)
    con.executescript(V2_POINTS)
    want: dict[int, list[tuple[int, float]]] = {}
    for sid in range(1, series + 1):
        labels_json = json.dumps({"s": str(sid)}, separators=(",", ":"))
        con.execute("INSERT INTO series VALUES (?, 't1', 'cpu', ?)", (sid, labels_json))
        pts = [(T0 + 1000 * i + sid, float(i * sid) if i % 7 else math.nan) for i in range(points)]
        con.executemany(
            "INSERT INTO points VALUES (?, ?, ?, ?)",
            [(t >> 10, sid, t, None if math.isnan(v) else v) for t, v in pts],
        )
        want[sid] = pts
    con.commit()
    con.close()
    return want


def _same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    return [t for t, _ in got] == [t for t, _ in want] and all(
        (math.isnan(a) and math.isnan(b)) or a == b for (_, a), (_, b) in zip(got, want, strict=True)
    )


def test_version_2_points_move_into_chunks_on_open(tmp_path: Path) -> None:
    want = make_v2(tmp_path / "s.db", series=5, points=3000)  # 3 s of points per 1.02 s bucket
    s = SqliteStore(tmp_path / "s.db")
    try:
        assert s._meta("schema_version") == str(SCHEMA_VERSION) and s._meta("bucket_shift") is None
        assert not s._con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'points'").fetchone()
        got = {int(x.labels["s"]): x.points for x in s.query("t1", "cpu", *ALL, {})}
        assert got.keys() == want.keys()
        assert all(_same(got[k], want[k]) for k in want)
        # and it is written to as usual afterwards: a point already stored is not stored again
        res = s.write_batch(WriteBatch(samples=[("t1", Point("cpu", {"s": "1"}, want[1][5][0], 9.0))]))
        assert res.points_written == 0
    finally:
        s.close()


@pytest.mark.process
def test_version_2_upgrade_killed_midway_goes_on_without_loss(tmp_path: Path) -> None:
    """Each upgrade transaction moves points into chunks and deletes them together: a kill -9 at
    any moment leaves every point in exactly one table, and the next open finishes the job."""
    want = make_v2(tmp_path / "s.db", series=20, points=4000)
    code = (
        "from lossproof.store import sqlite; from lossproof.store.embedded import core;"
        f" core._MIGRATE_POINTS = 2000; sqlite.SqliteStore({str(tmp_path / 's.db')!r})"
    )
    for progress in (1, 10):  # killed after that many upgrade transactions committed
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        seen = 0
        for line in proc.stdout:
            seen += "store.upgrade_progress" in line
            if seen == progress:
                break
        proc.kill()
        proc.wait()
        assert seen == progress
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    con.close()
    s = SqliteStore(tmp_path / "s.db")
    try:
        got = {int(x.labels["s"]): x.points for x in s.query("t1", "cpu", *ALL, {})}
        assert got.keys() == want.keys()
        assert all(_same(got[k], want[k]) for k in want)
    finally:
        s.close()


def test_sparse_data_over_decades_queries_fast(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "s.db")
    s.write_batch(
        WriteBatch(
            samples=[("t1", Point("m", {}, t, 1.0)) for t in (0, 1, T0, T0 + 10**11, 4 * 10**12)], now_ms=1
        )
    )
    t = time.perf_counter()
    [series] = s.query("t1", "m", *ALL, {})
    assert time.perf_counter() - t < 1.0
    assert [p[0] for p in series.points] == [0, 1, T0, T0 + 10**11, 4 * 10**12]
    s.close()


def test_readonly_on_a_missing_file_creates_an_empty_store(tmp_path: Path) -> None:
    r = SqliteStore(tmp_path / "sub" / "s.db", readonly=True)
    assert r.agents("t1") == [] and r.dead_letter_count() == 0
    with pytest.raises(StoreError, match="readonly"):
        r.write_batch(WriteBatch(reports=[report(1)]))
    w = SqliteStore(tmp_path / "sub" / "s.db")
    w.write_batch(WriteBatch(reports=[report(1)], now_ms=1))
    assert [a.agent for a in r.agents("t1")] == ["a1"]
    r.close()
    w.close()


def test_series_ids_cached_across_label_orders(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "s.db")
    s.write_batch(WriteBatch(samples=[("t1", Point("m", {"a": "1", "b": "2"}, 1, 1.0))], now_ms=1))
    s.write_batch(WriteBatch(samples=[("t1", Point("m", {"b": "2", "a": "1"}, 2, 1.0))], now_ms=1))
    s.write_batch(WriteBatch(samples=[("t2", Point("m", {"a": "1", "b": "2"}, 2, 1.0))], now_ms=1))
    assert s._con.execute("SELECT tenant, labels_json FROM series ORDER BY id").fetchall() == [
        ("t1", '{"a":"1","b":"2"}'),
        ("t2", '{"a":"1","b":"2"}'),
    ]
    s.close()


# --- multi-process ------------------------------------------------------------------------------

HOLD_WRITE_LOCK = """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO meta VALUES ('uncommitted', 'x')")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.execute("COMMIT")
"""

HOLD_READ_SNAPSHOT = """
    import sys, time
    from lossproof.store.sqlite import SqliteStore
    r = SqliteStore(sys.argv[1], readonly=True)
    r._con.execute("BEGIN")
    COUNT = "SELECT (SELECT coalesce(sum(n), 0) FROM chunks) + (SELECT coalesce(sum(n), 0) FROM parts)"
    n = r._con.execute(COUNT).fetchone()[0]
    print("reading", n, flush=True)
    time.sleep(float(sys.argv[2]))
    print("still", r._con.execute(COUNT).fetchone()[0], flush=True)
    r._con.execute("COMMIT")
    print("after", len(r.query("t1", "cpu", 0, 2**62, {})[0].points), flush=True)
"""


@pytest.mark.process
def test_reader_not_blocked_by_a_writer_in_another_process(tmp_path: Path) -> None:
    w = SqliteStore(tmp_path / "s.db")
    w.write_batch(WriteBatch(reports=[report(1)], now_ms=1))
    r = SqliteStore(tmp_path / "s.db", readonly=True)
    child = spawn(HOLD_WRITE_LOCK, str(tmp_path / "s.db"), "2")
    try:
        wait_line(child, "locked")
        t = time.perf_counter()
        assert len(r.query("t1", "cpu", *ALL, {})[0].points) == 3
        assert r.ledger("t1", "a1") is not None
        assert time.perf_counter() - t < 0.5
        # a second writer waits for the lock (busy timeout) instead of failing at once ...
        w.write_batch(WriteBatch(reports=[report(2)], now_ms=2))
        assert time.perf_counter() - t > 1.0
        assert len(r.query("t1", "cpu", *ALL, {})[0].points) == 6
    finally:
        child.wait(10)
    assert child.returncode == 0
    r.close()
    w.close()


@pytest.mark.process
def test_busy_timeout_expires_with_an_error(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    w = SqliteStore(tmp_path / "s.db", busy_timeout_ms=100)
    child = spawn(HOLD_WRITE_LOCK, str(tmp_path / "s.db"), "2")
    try:
        wait_line(child, "locked")
        # transient: the worker retries the batch (a plain error would make it look undecodable)
        with pytest.raises(StoreUnavailable, match="locked"):
            w.write_batch(WriteBatch(reports=[report(1)], now_ms=1))
    finally:
        child.wait(10)
    w.write_batch(WriteBatch(reports=[report(1)], now_ms=1))  # usable afterwards
    assert w.ledger("t1", "a1") is not None
    w.close()


@pytest.mark.process
def test_writer_not_blocked_by_a_reader_in_another_process(tmp_path: Path) -> None:
    w = SqliteStore(tmp_path / "s.db")
    w.write_batch(WriteBatch(reports=[report(1)], now_ms=1))
    child = spawn(HOLD_READ_SNAPSHOT, str(tmp_path / "s.db"), "1.5")
    assert child.stdout is not None
    try:
        wait_line(child, "reading 3")
        t = time.perf_counter()
        for seq in range(2, 12):
            w.write_batch(WriteBatch(reports=[report(seq)], now_ms=seq))
        assert time.perf_counter() - t < 1.0
        assert child.stdout.readline().strip() == "still 3"  # its snapshot is stable ...
        assert child.stdout.readline().strip() == "after 33"  # ... and the next read sees all
    finally:
        child.wait(10)
    assert child.returncode == 0
    w.close()


# The version 1 per-agent tables (before incarnations), as lossproof wrote them.
V1_AGENT_TABLES = (
    V2_POINTS
    + """
DROP TABLE agents; DROP TABLE ledger; DROP TABLE reports; DROP TABLE conflicts;
CREATE TABLE agents (
    tenant TEXT NOT NULL, agent TEXT NOT NULL, max_seq INTEGER NOT NULL, stored_reports INTEGER NOT NULL,
    missing_reports INTEGER NOT NULL, lost_reports INTEGER NOT NULL, last_stored_ms INTEGER NOT NULL,
    delayed_reports INTEGER NOT NULL DEFAULT 0, spool_pending_reports INTEGER NOT NULL DEFAULT 0,
    spool_pending_bytes INTEGER NOT NULL DEFAULT 0, spool_oldest_ms INTEGER NOT NULL DEFAULT 0,
    spool_first_pending INTEGER NOT NULL DEFAULT 0, spool_last_seq INTEGER NOT NULL DEFAULT 0,
    spool_reported_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, agent)
) STRICT, WITHOUT ROWID;
CREATE TABLE ledger (
    tenant TEXT NOT NULL, agent TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('stored', 'missing', 'lost', 'delayed')),
    first INTEGER NOT NULL, last INTEGER NOT NULL, since_ms INTEGER, reason TEXT,
    PRIMARY KEY (tenant, agent, kind, first)
) STRICT, WITHOUT ROWID;
INSERT INTO agents VALUES ('t1', 'a1', 5, 3, 2, 0, 500, 0, 0, 0, 0, 0, 0, 0);
INSERT INTO ledger VALUES ('t1', 'a1', 'stored', 1, 3, NULL, NULL);
INSERT INTO ledger VALUES ('t1', 'a1', 'missing', 4, 5, 400, NULL);
UPDATE meta SET value = '1' WHERE key = 'schema_version';
"""
)


@pytest.mark.parametrize("first_open", ["writer", "reader"])
def test_version_1_file_is_upgraded_keeping_its_ledgers(tmp_path: Path, first_open: str) -> None:
    """#14: schema 2 keys the per-agent tables by incarnation; a version 1 file is rebuilt in place
    (its agents become incarnation ''), also when a reader (the query process) opens it first."""
    path = tmp_path / "store.db"
    SqliteStore(path).close()
    con = sqlite3.connect(path)
    con.executescript(V1_AGENT_TABLES)
    con.close()
    store = SqliteStore(path, readonly=first_open == "reader")
    try:
        ledger = store.ledger("t1", "a1")
        assert ledger is not None
        assert (ledger.incarnation, ledger.stored, ledger.missing) == ("", [(1, 3)], [(4, 5, 400)])
        [summary] = store.agents("t1")
        assert (summary.incarnation, summary.stored_reports, summary.missing_reports) == ("", 3, 2)
        assert store.replay_wanted("t1", "a1", 1000) == [(4, 5)]
    finally:
        store.close()
    writer = SqliteStore(path)
    try:
        assert writer._meta("schema_version") == str(SCHEMA_VERSION) == "6"
        point = Point("cpu", {}, 1_700_000_000_000, 1.0)
        r = writer.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 4, [point])], now_ms=1000))
        assert r.reports_stored == 1
    finally:
        writer.close()


def test_version_3_reports_gain_their_time_on_open(tmp_path: Path) -> None:
    """#18: schema 4 keeps each report's time; reports stored before keep 0 (unknown)."""
    path = tmp_path / "store.db"
    s = SqliteStore(path)
    point = Point("cpu", {}, 1_700_000_000_000, 1.0)
    s.write_batch(WriteBatch(reports=[ReportWrite("t1", "a1", 1, [point])], now_ms=1000))
    s.close()
    con = sqlite3.connect(path)
    con.executescript(
        "ALTER TABLE reports DROP COLUMN time_ms; UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    con.close()
    # The query process, before the worker upgraded it: it reads version 3 as it is (an upgrade
    # would stop an older worker still writing 5 columns), with no report times.
    reader = SqliteStore(path, readonly=True)
    try:
        assert reader._meta("schema_version") == "3"
        assert reader.report_times_around("t1", "a1", "", [(2, 2)]) == [(0, 0)]
        assert reader.ledger("t1", "a1") is not None
    finally:
        reader.close()
    s = SqliteStore(path)
    try:
        assert s._meta("schema_version") == str(SCHEMA_VERSION)
        later = ReportWrite("t1", "a1", 3, [point], time_ms=1_700_000_000_500)
        s.write_batch(WriteBatch(reports=[later], now_ms=2000))
        assert s.report_times_around("t1", "a1", "", [(2, 2)]) == [(0, 1_700_000_000_500)]
    finally:
        s.close()


def test_batches_land_in_parts_then_chunks_then_one_packed_chunk_per_window(tmp_path: Path) -> None:
    """#15: a batch is one row (a part) whatever its number of series; compaction turns 8 parts
    into one raw chunk per series, and 8 of those in an open window into one packed chunk."""
    s = SqliteStore(tmp_path / "s.db")
    window = 2 * 3600 * 1000
    base = (T0 // window) * window
    seen: list[tuple[int, float]] = []
    try:
        for i in range(64):
            s.write_batch(
                WriteBatch(
                    samples=[("t1", Point("cpu", {"h": str(h)}, base + i, i + h)) for h in range(3)],
                    now_ms=base,
                )
            )
            seen.append((base + i, float(i)))
            if i % 8 < 7:
                assert s.compact(now_ms=base + 1).series == 0  # fewer than 8 young parts: left
            else:
                got = s.compact(now_ms=base + 1)
                assert (got.series, got.chunks_in, got.chunks_out, got.points) == (3, 8, 3, 24)
                if i == 63:  # the 8th raw chunk of each series in the window: packed
                    got = s.compact(now_ms=base + 1)
                    assert (got.series, got.chunks_in, got.chunks_out, got.points) == (3, 24, 3, 192)
            assert [p for x in s.query("t1", "cpu", *ALL, {"h": "0"}) for p in x.points] == seen
        assert s._con.execute("SELECT count(*), min(substr(data, 1, 1)) FROM chunks").fetchone() == (
            3,
            bytes((chunks.PACKED | chunks.SEALED,)),
        )
        assert s._con.execute("SELECT count(*) FROM parts").fetchone()[0] == 0
    finally:
        s.close()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_assembled_reads_are_merge_arrays_series_by_series(data: st.DataObject) -> None:
    """The read path's assembly of many series' chunks at once (``_assemble``) answers, for every
    series, what :func:`chunks.merge_arrays` answers for its chunks and part slices: chunks in any
    row order, apart or overlapping in time (the lowest id wins a t), raw or packed (all raw: the
    native path), and bounds."""
    from lossproof.store import chunks
    from lossproof.store.embedded.read import PartBlock, _assemble

    nseries = data.draw(st.integers(1, 5))
    found = [(sid, "m", {}) for sid in data.draw(st.permutations(range(10, 10 + nseries)))]
    raw_only = data.draw(st.booleans())  # every chunk raw: the native path (_native.assemble_rows)
    rows: list[tuple[int, int, int, int, bytes]] = []
    parts: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    extra: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    cid = 0
    for i, (sid, _, _) in enumerate(found):
        end = data.draw(st.integers(-1, 20))
        for _ in range(data.draw(st.integers(0, 4))):
            # mostly after the chunk before (as a store writes them), sometimes touching or overlapping it
            start = (
                end + data.draw(st.sampled_from([1, 1, 1, 5, 0, -3]))
                if end >= 0
                else data.draw(st.integers(0, 60))
            )
            ts = np.array(sorted(data.draw(st.sets(st.integers(start, start + 30), min_size=1, max_size=8))))
            ts[0] = start
            end = int(ts[-1])
            vs = np.array([float(data.draw(st.integers(0, 9))) / 4 for _ in ts])
            cid = cid + data.draw(st.integers(1, 3))
            raw = chunks.encode_batch(ts * 0, ts, vs)[0].data
            blob = chunks.encode(ts, vs) if not raw_only and data.draw(st.booleans()) else raw
            rows.append((sid, cid, int(ts[0]), int(ts[-1]), blob))
            parts.setdefault(i, []).append((cid, ts, vs))
        for k in range(data.draw(st.sampled_from([0, 0, 1, 2]))):  # slices of parts, mostly after the chunks
            first = max(end, 0) + data.draw(st.sampled_from([1, 1, 2, 0, -4]))
            ts = np.array(sorted(data.draw(st.sets(st.integers(first, first + 20), min_size=1, max_size=5))))
            end = int(ts[-1])
            extra.setdefault(i, []).append(((1 << 40) + k, ts, ts * 1.0))
    if data.draw(st.integers(0, 3)) == 0:  # the rows in any order (SQLite gives them by series and time)
        rows = data.draw(st.permutations(rows))
    lo = data.draw(st.integers(-5, 50))
    hi = data.draw(st.integers(lo, 100))
    blocks = []
    if data.draw(st.booleans()):  # the part slices of each rank as one block, as a read of many series
        by_rank: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i, segs in extra.items():
            for order, ts, vs in segs:
                by_rank.setdefault(order, []).append((i, ts, vs))
        for order, segs in by_rank.items():
            # slices of a range of the part's columns: other series' points between them (junk here)
            gap = data.draw(st.sampled_from([0, 0, 3]))
            junk_t, junk_v = np.full(gap, -77, dtype=np.int64), np.full(gap, -7.0)
            lens = np.array([len(t) for _, t, _ in segs])
            starts = np.concatenate(([gap], np.cumsum(lens + gap)[:-1] + gap))
            blocks.append(
                PartBlock(
                    np.array([i for i, _, _ in segs]),
                    order,
                    np.concatenate([x for _, t, _ in segs for x in (junk_t, t)] + [junk_t]),
                    np.concatenate([x for _, _, v in segs for x in (junk_v, v)] + [junk_v]),
                    starts,
                    lens,
                )
            )
    got = _assemble(found, list(rows), {} if blocks else extra, lo, hi, blocks)
    for i in range(len(found)):
        want = chunks.merge_arrays(parts.get(i, []) + extra.get(i, []), lo, hi)
        assert got[i][0].tolist() == want[0].tolist()
        assert got[i][1].tolist() == want[1].tolist()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(-50, 50), max_size=12, unique=True).map(sorted), max_size=6),
    st.integers(-60, 60),
    st.booleans(),
)
def test_search_runs_is_searchsorted_in_each_run(runs: list[list[int]], x: int, right: bool) -> None:
    """The read path's binary search of many sorted runs at once lands where numpy's searchsorted
    lands in each run on its own (empty runs included)."""
    from lossproof.store.chunks import search_runs

    ts = np.array([t for r in runs for t in r], dtype=np.int64)
    ends = np.cumsum([len(r) for r in runs], dtype=np.int64)
    starts = ends - np.array([len(r) for r in runs], dtype=np.int64)
    got = search_runs(ts, starts, ends, x, right).tolist()
    side = "right" if right else "left"
    assert got == [
        int(np.searchsorted(np.array(r, dtype=np.int64), x, side)) + int(a)
        for r, a in zip(runs, starts, strict=True)
    ]


def test_a_chunk_unlike_its_stored_time_range_is_damage() -> None:
    """The read path lays chunks out by their stored time ranges before decoding them: a chunk
    whose points disagree with its row's range is reported as damaged, not read out of order."""
    from lossproof.store import chunks
    from lossproof.store.embedded.read import _assemble

    ts, vs = np.array([10, 20]), np.array([1.0, 2.0])
    found = [(7, "m", {})]
    for blob in (chunks.encode(ts, vs), chunks.encode_batch(ts * 0, ts, vs)[0].data):  # packed, raw
        assert _assemble(found, [(7, 1, 10, 20, blob)], {}, 0, 100)[0][0].tolist() == [10, 20]
        for lo, hi in ((10, 25), (5, 20)):
            with pytest.raises(chunks.ChunkError, match="stored time range"):
                _assemble(found, [(7, 1, lo, hi, blob)], {}, 0, 100)
    # a raw chunk whose times go back (the native path checks them as decode_into does)
    back = bytes((chunks.RAW,)) + np.array([20, 10], "<i8").tobytes() + np.array([1.0, 2.0], "<f8").tobytes()
    with pytest.raises(chunks.ChunkError, match="not increasing"):
        _assemble(found, [(7, 1, 20, 10, back)], {}, 0, 100)


def _samples(ts: list[int], host: str = "h0", v: float = 1.0) -> WriteBatch:
    return WriteBatch(samples=[("t1", Point("m", {"host": host}, T0 + t, v)) for t in ts])


def test_out_of_order_points_are_judged_without_reading_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies of several connections reach the worker out of time order: whether such points are
    stored already is known from what this writer stored, not read back, even after another
    connection compacted; once another connection stores points, the store is read again."""
    s, other = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    reads: list[tuple[list[int], int, int]] = []
    real = s._stored_ts

    def counted(sids: list[int], lo: int, hi: int) -> list[np.ndarray]:
        reads.append((sids, lo, hi))
        return real(sids, lo, hi)

    monkeypatch.setattr(s, "_stored_ts", counted)
    try:
        assert s.write_batch(_samples([0, 2, 4, 6])).points_written == 4
        assert s.write_batch(_samples([1, 2, 3, 8])).points_written == 3  # 2 stored: dropped
        for _ in range(9):  # a compaction in another connection moves points, stores none
            other.write_batch(WriteBatch())
            other.compact(now_ms=T0 + 10**9)
        assert s.write_batch(_samples([5, 6, 7, 9])).points_written == 3
        assert reads == []
        assert other.write_batch(_samples([10, 11], v=2.0)).points_written == 2
        assert s.write_batch(_samples([10, 11, 12])).points_written == 1  # read: other stored 10, 11
        assert reads
        [series] = s.query("t1", "m", *ALL, {})
        assert series.points == [(T0 + t, 2.0 if t in (10, 11) else 1.0) for t in range(13)]
    finally:
        s.close()
        other.close()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_points_written_counts_exactly_the_new_points(data: st.DataObject) -> None:
    """First write wins with exact counts, whatever the order of the points, the reach of the
    writer's memory (tiny here: old entries forgotten), compactions and a second writer."""
    import tempfile

    from lossproof import _native

    with tempfile.TemporaryDirectory() as d:
        a, b = SqliteStore(Path(d) / "s.db"), SqliteStore(Path(d) / "s.db")
        a._stored = _native.StoredTimes(data.draw(st.integers(2, 12), label="capacity"))
        stored: dict[tuple[str, int], float] = {}
        try:
            for step in range(data.draw(st.integers(1, 12), label="steps")):
                op = data.draw(st.sampled_from(["a", "a", "a", "b", "compact"]))
                if op == "compact":
                    a.compact(now_ms=T0 + 10**9) if step % 2 else b.compact(now_ms=T0 + 10**9)
                    continue
                pts = data.draw(
                    st.lists(st.tuples(st.sampled_from(["h0", "h1"]), st.integers(0, 30)), max_size=15)
                )
                v = float(step)
                new = {(h, t) for h, t in pts if (h, t) not in stored}
                w = a if op == "a" else b
                batch = WriteBatch(samples=[("t1", Point("m", {"host": h}, T0 + t, v)) for h, t in pts])
                assert w.write_batch(batch).points_written == len(new)
                for key in new:
                    stored[key] = v
            for h in ("h0", "h1"):
                got = [p for x in a.query("t1", "m", *ALL, {"host": h}) for p in x.points]
                assert got == sorted((T0 + t, v) for (hh, t), v in stored.items() if hh == h)
        finally:
            a.close()
            b.close()


def test_compaction_computes_without_the_write_lock_and_drops_a_step_raced_by_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction step is read and computed in a read transaction: a writer stores a batch
    meanwhile (it used to wait for the whole step). If another compaction commits in between (a
    second worker's), the step is dropped and made again: nothing lost, nothing twice."""
    path = tmp_path / "s.db"
    a, b = SqliteStore(path), SqliteStore(path)
    writer = SqliteStore(path, busy_timeout_ms=50)
    try:
        for i in range(8):
            a.write_batch(_samples([i, i + 100], host=f"h{i % 3}", v=float(i)))
        real = a._compact_read
        raced: list[int] = []
        written: list[int] = []

        def meanwhile(now_ms: int, max_series: int) -> object:
            job = real(now_ms, max_series)
            if len(written) < 4:  # (a part at every step would keep compaction busy for good)
                t = 50 + len(written)
                assert writer.write_batch(_samples([t], host="h9")).points_written == 1
                written.append(t)
            if not raced:
                raced.append(b.compact(now_ms=now_ms).chunks_out)
            return job

        monkeypatch.setattr(a, "_compact_read", meanwhile)
        before = {
            h: [p for x in a.query("t1", "m", *ALL, {"host": h}) for p in x.points]
            for h in ("h0", "h1", "h2")
        }
        assert a.compact(now_ms=T0 + 10**9) == CompactResult(more=True)  # dropped: b flushed first
        assert raced[0] > 0 and written == [50]
        assert a._con.execute("SELECT count(*) FROM parts").fetchone()[0] == 0  # b flushed them all
        while a.compact(now_ms=T0 + 10**9).more:  # packing: the writer goes on meanwhile
            pass
        assert len(written) > 1
        for h, want in before.items():
            assert [p for x in a.query("t1", "m", *ALL, {"host": h}) for p in x.points] == want
        h9 = [p for x in a.query("t1", "m", *ALL, {"host": "h9"}) for p in x.points]
        assert h9 == [(T0 + t, 1.0) for t in written]
    finally:
        for s in (a, b, writer):
            s.close()


@pytest.mark.parametrize("ts", [[10, 50, 20], [10, 10, 20], [10, 30, 25, 40, 20]])
def test_a_chunk_whose_times_are_not_increasing_is_damage(ts: list[int]) -> None:
    """A damaged chunk whose first and last t still match its row's range but whose times inside are
    out of order or repeated: reads binary-search each series' points, so it answered points outside
    the range asked, missed points inside it, or gave two values for one t (a zstd frame has no
    checksum, so a damaged packed body decodes without error). It is a ChunkError instead, on the
    embedded read path (_assemble) and on the one chunks.merge serves (PostgreSQL)."""
    import struct

    from lossproof.store import chunks
    from lossproof.store.embedded.read import _assemble

    blob = b"\x01" + struct.pack(f"<{len(ts)}q", *ts) + struct.pack(f"<{len(ts)}d", *map(float, ts))
    found = [(7, "m", {})]
    for lo, hi in ((0, 30), (0, 100), (15, 30)):
        with pytest.raises(chunks.ChunkError):
            _assemble(found, [(7, 1, ts[0], ts[-1], blob)], {}, lo, hi)
        with pytest.raises(chunks.ChunkError):
            chunks.merge([(1, blob)], lo, hi)
    ok = chunks.encode(np.array([1, 2]), np.array([1.0, 2.0]))
    with pytest.raises(chunks.ChunkError):
        _assemble([(6, "m", {}), *found], [(6, 1, 1, 2, ok), (7, 2, ts[0], ts[-1], blob)], {}, 0, 100)


@pytest.mark.parametrize("ts", [[10, 50, 20], [10, 10, 20]])
def test_a_part_slice_whose_times_are_not_increasing_is_damage(ts: list[int]) -> None:
    """A part's columns are stored raw, without a checksum either: a series' slice of them whose
    times go back or repeat is a ChunkError too, not points outside the range or two values for a t."""
    from lossproof.store import chunks
    from lossproof.store.embedded.read import PartBlock, _assemble

    t = np.array(ts, dtype=np.int64)
    block = PartBlock(np.array([0]), 1 << 40, t, t * 1.0, np.array([0]), np.array([len(t)]))
    for lo, hi in ((0, 30), (0, 100)):
        with pytest.raises(chunks.ChunkError):
            _assemble([(7, "m", {})], [], {}, lo, hi, [block])
        with pytest.raises(chunks.ChunkError):
            _assemble([(7, "m", {})], [], {0: [(1 << 40, t, t * 1.0)]}, lo, hi)


def test_version_4_is_read_as_it_is_and_upgraded_by_a_writer(tmp_path: Path) -> None:
    """Schema 5 only adds PENDING chunks, which a lossproof of version 4 cannot read: a writer marks
    the store 5 on open (so that an older one refuses it, saying so, instead of calling those
    chunks damage); a reader reads a version 4 store as it is."""
    path = tmp_path / "store.db"
    s = SqliteStore(path)
    s.write_batch(WriteBatch(samples=[("t1", Point("cpu", {}, 1_700_000_000_000, 1.0))], now_ms=1000))
    s.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    reader = SqliteStore(path, readonly=True)
    try:
        assert reader._meta("schema_version") == "4"
        assert [x.points for x in reader.query("t1", "cpu", 0, 1 << 62, {})] == [[(1_700_000_000_000, 1.0)]]
    finally:
        reader.close()
    SqliteStore(path).close()
    con = sqlite3.connect(path)
    # (and on to 6: sealed chunks, which version 5 cannot read either)
    got = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert got == (str(SCHEMA_VERSION),)
    con.close()
