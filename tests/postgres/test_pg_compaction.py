"""Compaction of the PostgreSQL store (#15): batches' parts turned into raw chunks, found through
compact_batches, packed into one chunk per series and window; one compactor at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from lossproof.store import chunks
from lossproof.store.base import COMPACT_WINDOW_MS, Point, WriteBatch
from lossproof.store.pg import parts
from lossproof.store.pg import write as pg_write
from lossproof.store.postgres import PostgresStore

W = COMPACT_WINDOW_MS
BASE = (1_700_000_000_000 // W) * W


def _layout(dsn: str, schema: str) -> list[tuple[int, int, int, int]]:
    """(series, window, chunks, raw chunks) of every series and window with chunks."""
    with psycopg.connect(dsn) as conn:
        q = sql.SQL(
            "SELECT series_id, t_min / %s, count(*), count(*) FILTER (WHERE get_byte(data, 0) & 127 = %s)"
            " FROM {}.chunks GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(sql.Identifier(schema))
        return [tuple(r) for r in conn.execute(q, (W, chunks.RAW))]


def _log_rows(dsn: str, schema: str, table: str = "compact_batches") -> int:
    with psycopg.connect(dsn) as conn:
        q = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(q).fetchone()
        return int(row[0]) if row else -1


def test_batches_are_packed_per_series_and_window(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        for i in range(40):  # 40 batches of 50 series, 10 minutes apart: windows closed and open
            t = BASE + i * 600_000
            samples = [("t1", Point("m", {"s": str(k)}, t + k, float(i * k))) for k in range(50)]
            store.write_batch(WriteBatch(samples=samples, now_ms=t))
        before = store.select("t1", [], 0, 2**62)
        assert _log_rows(pg_dsn, pg_schema, "parts") == 40  # one part per batch
        assert _log_rows(pg_dsn, pg_schema) == 0
        now = BASE + 40 * 600_000
        assert store.compact(now_ms=now, max_series=20).series == 20  # a round in slices
        calls = 1
        while store.compact(now_ms=now, max_series=20).more:
            calls += 1
            assert calls < 50
        assert store.select("t1", [], 0, 2**62) == before
        assert _log_rows(pg_dsn, pg_schema) == 0
        assert _log_rows(pg_dsn, pg_schema, "parts") == 0
        layout = _layout(pg_dsn, pg_schema)
        assert {(n, raw) for _, _, n, raw in layout} == {(1, 0)}  # one packed chunk per series and window
        assert len(layout) == 50 * 4  # 40 x 10 minutes: four windows
        assert store.compact(now_ms=now).series == 0
        # new batches into the open window are packed with its chunk once due
        for i in range(40, 48):
            t = BASE + i * 600_000
            samples = [("t1", Point("m", {"s": str(k)}, t + k, 1.0)) for k in range(50)]
            samples.append(("t1", Point("m", {"s": "0"}, BASE, 99.0)))  # stored already: dropped
            assert store.write_batch(WriteBatch(samples=samples, now_ms=t)).points_written == 50
        while store.compact(now_ms=now).more:
            pass
        assert {(n, raw) for _, _, n, raw in _layout(pg_dsn, pg_schema)} == {(1, 0)}
        [s0] = store.query("t1", "m", 0, 2**62, {"s": "0"})
        assert len(s0.points) == 48 and s0.points[0] == (BASE, 0.0)
    finally:
        store.close()


def test_not_due_until_enough_batches_or_old_enough(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        for i in range(3):
            store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + i, 1.0))], now_ms=BASE + i))
        assert store.compact(now_ms=BASE + 10).series == 0  # 3 batches, the oldest 10 ms old
        assert store.compact(now_ms=BASE + 3_600_000).series == 1  # an hour later: due
        assert [(n, raw) for _, _, n, raw in _layout(pg_dsn, pg_schema)] == [(1, 0)]
    finally:
        store.close()


def test_one_compactor_at_a_time(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    other = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        for i in range(10):
            store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + i, 1.0))], now_ms=0))
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x4C505346, 3))  # a compactor busy
            assert other.compact(now_ms=BASE).series == 0  # returns at once
        assert other.compact(now_ms=BASE).series == 1
    finally:
        store.close()
        other.close()


def test_a_writer_sees_points_compacted_out_of_parts_it_never_saw(pg_dsn: str, pg_schema: str) -> None:
    """A writer knows what is stored from the parts it has looked at; parts another writer wrote
    and a compaction turned into chunks before this one looked are counted (parts_removed), so it
    reads the chunks again: the point stored by the other is not written twice."""
    a = PostgresStore(pg_dsn, schema=pg_schema)
    b = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        assert a.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + 10, 1.0))])).points_written == 1
        assert b.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + 50, 2.0))])).points_written == 1
        while b.compact(now_ms=BASE + 3_600_000).more:
            pass
        assert _log_rows(pg_dsn, pg_schema, "parts") == 0
        again = WriteBatch(
            samples=[("t1", Point("m", {}, BASE + 50, 3.0)), ("t1", Point("m", {}, BASE + 60, 4.0))]
        )
        assert a.write_batch(again).points_written == 1
        [s] = a.query("t1", "m", 0, 2**62, {})
        assert s.points == [(BASE + 10, 1.0), (BASE + 50, 2.0), (BASE + 60, 4.0)]
        # and a point in a part it has seen is dropped without the chunks
        assert b.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + 60, 5.0))])).points_written == 0
    finally:
        a.close()
        b.close()


def test_reads_merge_parts_and_chunks_first_write_winning(pg_dsn: str, pg_schema: str) -> None:
    """Two writers of samples racing may both store one (series, t) (a part written behind the
    other's back stands for it here): a lower part wins over a higher one, a chunk over a part,
    before and after compaction."""
    store = PostgresStore(pg_dsn, schema=pg_schema)

    def racing_part(points: list[tuple[int, float]]) -> None:
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
            row = conn.execute("SELECT id FROM series WHERE labels_json = %s", ('{"k":"0"}',)).fetchone()
            assert row is not None
            ts = np.array([t for t, _ in points], dtype=np.int64)
            data = chunks.encode_part(
                np.full(len(ts), row[0], dtype=np.int64), ts, np.array([v for _, v in points])
            )
            conn.execute(
                "INSERT INTO parts (t_min, t_max, n, series, at_ms, data) VALUES (%s, %s, %s, 1, 0, %s)",
                (int(ts.min()), int(ts.max()), len(ts), data),
            )

    def points() -> list[tuple[int, float]]:
        [s] = store.query("t1", "m", 0, 2**62, {"k": "0"})
        return s.points

    try:
        store.write_batch(
            WriteBatch(samples=[("t1", Point("m", {"k": str(k)}, BASE + k, 1.0)) for k in range(10)])
        )
        racing_part([(BASE, 9.0), (BASE + 200, 7.0)])
        assert points() == [(BASE, 1.0), (BASE + 200, 7.0)]
        while store.compact(now_ms=BASE + 3_600_000).more:
            pass
        assert _log_rows(pg_dsn, pg_schema, "parts") == 0
        assert points() == [(BASE, 1.0), (BASE + 200, 7.0)]
        racing_part([(BASE, 8.0), (BASE + 300, 6.0)])
        assert points() == [(BASE, 1.0), (BASE + 200, 7.0), (BASE + 300, 6.0)]
    finally:
        store.close()


@pytest.mark.parametrize("looks", [8, 1])
def test_a_new_writer_sees_parts_compacted_between_its_probe_and_its_first_look(
    pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch, looks: int
) -> None:
    """A writer's first batch probes the chunks, then looks at the parts: a part another writer
    stored that a compaction turns into chunks in between is in neither. With no earlier look to
    compare parts_removed with, the writer must still notice the removal (and probe again), or it
    stores the point a second time; and when it runs out of looks (compactions each time), it
    reads what is stored rather than trust what it knows."""
    monkeypatch.setattr(pg_write, "_LOOK_ATTEMPTS", looks)
    b = PostgresStore(pg_dsn, schema=pg_schema)
    a = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        assert b.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + 50, 2.0))])).points_written == 1
        real_look = parts.look

        def look_after_a_compaction(conn: psycopg.Connection[Any], seen: set[int]) -> Any:
            if _log_rows(pg_dsn, pg_schema, "parts"):
                while b.compact(now_ms=BASE + 3_600_000).more:
                    pass
            return real_look(conn, seen)

        monkeypatch.setattr(parts, "look", look_after_a_compaction)
        assert a.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + 50, 3.0))])).points_written == 0
        assert _log_rows(pg_dsn, pg_schema, "parts") == 0
        [s] = a.query("t1", "m", 0, 2**62, {})
        assert s.points == [(BASE + 50, 2.0)]
    finally:
        a.close()
        b.close()


def test_a_read_keeps_the_part_directories_a_concurrent_read_evicts(
    pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directories of parts are cached per process and dropped when a read's list of live parts
    no longer holds them; but that list is only the parts in the read's time range. A read of another
    range running meanwhile dropped the directory of a part this read had found cached: the part's
    points were missing from its answer."""
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE, 1.0))]))
        store.write_batch(WriteBatch(samples=[("t1", Point("m", {}, BASE + 10 * W, 2.0))]))
        assert [s.points for s in store.query("t1", "m", BASE, BASE + 1, {})] == [[(BASE, 1.0)]]
        real_fetch = parts.fetch_directories
        other: list[int] = []

        def fetch_while_another_range_is_read(conn: psycopg.Connection[Any], ids: list[int]) -> Any:
            if not other:
                row = conn.execute("SELECT max(id) FROM parts").fetchone()
                assert row is not None
                other.append(int(row[0]))
                store._part_dirs.get(conn, other)  # the other read: only the later part is live to it
            return real_fetch(conn, ids)

        monkeypatch.setattr(parts, "fetch_directories", fetch_while_another_range_is_read)
        assert [s.points for s in store.query("t1", "m", BASE, BASE + 1, {})] == [[(BASE, 1.0)]]
        assert other
    finally:
        store.close()
