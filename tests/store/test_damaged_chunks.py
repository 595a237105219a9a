"""A damaged chunk or part (a flipped bit: a bad sector) in either store is never answered as points.
A read fails on it, loudly (a query of its metric is an error: readers move nothing); the worker's
store, meeting it while writing or packing, sets it aside: the row, byte for byte with its key columns
and the reason, goes into the ``damaged_chunks`` table in the same transaction, and the write or the
packing goes on as if it were not there (docs/store.md, "A damaged chunk").

Before: PostgreSQL answered a damaged packed chunk with made-up timestamps (found by an outside
review); then a write that had to read one failed as StoreUnavailable for as long as it was there
(the worker retried the batch for ever, its partition stopped), and packing re-encoded the damage
into a chunk that looked valid."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lossproof.points import SeriesSamples
from lossproof.store import chunks
from lossproof.store.base import WriteBatch
from lptest.damaged_store import HOUR, SERIES, T0, M, batch, compact_all, first_chunk, points, stored
from lptest.store_backends import BACKENDS, SqliteBackend, StoreBackend

_QUARANTINED = "SELECT source, source_id, series_id, t_min, t_max, n, data, reason FROM damaged_chunks"


def test_a_damaged_chunk_fails_reads_and_a_replay_over_it_sets_it_aside(backend: StoreBackend) -> None:
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    cid, hit = first_chunk(backend)
    [(sid, t_min, t_max, n)] = backend.fetch(f"SELECT series_id, t_min, t_max, n FROM chunks WHERE id={cid}")
    backend.damage_first("chunks")
    [(damaged,)] = backend.fetch(f"SELECT data FROM chunks WHERE id = {cid}")
    # reads move nothing: a query of the metric fails, never answers other points
    with pytest.raises(chunks.ChunkError):
        store.select("t", M, 0, 1 << 62)
    with pytest.raises(chunks.ChunkError):
        backend.open(readonly=True).select("t", M, 0, 1 << 62)

    # a replay of batch 0 over the damaged chunk, by a writer that must read what is stored (a new
    # one: this one remembers what it stored and asks the store nothing): stored, not retried for ever
    res = backend.open().write_batch(batch(0))
    assert res.chunks_quarantined == 1
    # the row moved byte for byte with its key columns and the reason, in the write's transaction
    [(source, source_id, q_sid, q_min, q_max, q_n, data, reason)] = backend.fetch(_QUARANTINED)
    assert (source, source_id, q_sid, q_min, q_max, q_n) == ("chunks", cid, sid, t_min, t_max, n)
    assert bytes(data) == bytes(damaged) and "checksum does not match" in reason
    assert backend.fetch(f"SELECT count(*) FROM chunks WHERE id = {cid}") == [(0,)]
    # once the row is gone the replay's points of its series are not stored: written again (the
    # recovery); the others' are skipped, as a replay's always are
    assert (res.points_written, res.points_skipped) == (10, 10 * (SERIES - 1))
    got = stored(store)
    assert got.pop(hit) == points(0)  # never made-up points: only what the replay stored again
    assert got == {str(i): points(*range(10)) for i in range(SERIES) if str(i) != hit}
    assert len(backend.open(readonly=True).select("t", M, 0, 1 << 62)) == SERIES


def test_a_damaged_part_seen_by_a_writer_is_set_aside(backend: StoreBackend) -> None:
    store = backend.open()
    store.write_batch(batch(0, series=5))
    [(pid, t_min, t_max, n)] = backend.fetch("SELECT id, t_min, t_max, n FROM parts")
    # the top byte of the part's second series id: the ids are then out of order (a part without
    # a checksum, as before there was one: the structural checks find it)
    backend.damage_first("parts", at=16 + 8 + 7, unsealed=True)
    # another metric, by a writer that has not seen the part: its look reads the part's directory.
    # Before, StoreUnavailable for as long as the part was there (every batch of the partition).
    other = WriteBatch(series=[("t", SeriesSamples("other", {}, [T0], [1.0]))], now_ms=T0)
    res = backend.open().write_batch(other)
    assert (res.points_written, res.chunks_quarantined) == (1, 1)
    [(source, source_id, q_sid, q_min, q_max, q_n, _, reason)] = backend.fetch(_QUARANTINED)
    assert (source, source_id, q_sid, q_min, q_max, q_n) == ("parts", pid, None, t_min, t_max, n)
    assert "ids are out of order" in reason
    assert backend.fetch("SELECT count(*) FROM parts") == [(1,)]  # other's
    # the part's points are not stored any more; a replay of its batch stores them again
    assert stored(store) == {}
    res = backend.open().write_batch(batch(0, series=5))
    assert (res.points_written, res.chunks_quarantined) == (50, 0)
    assert stored(store) == {str(i): points(0) for i in range(5)}


def test_packing_sets_a_damaged_chunk_aside_and_packs_the_others(backend: StoreBackend) -> None:
    store = backend.open()
    for b in range(5):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    _, hit = first_chunk(backend)
    backend.damage_first("chunks")
    for b in range(5, 10):  # newer points: the writer reads nothing stored; packing merges them
        store.write_batch(batch(b))
    # packing reads the damaged chunk with the window's new ones: set aside, not re-encoded into a
    # valid-looking chunk (before, the query below answered the damage's made-up times); the others packed
    assert store.set_aside_count() == (0, 0)
    assert compact_all(backend.open(), T0 + 60 * HOUR) == 1
    [(source, _, _, _, _, n, _, reason)] = backend.fetch(_QUARANTINED)
    assert source == "chunks" and reason  # (what is wrong depends on the bytes flipped)
    # what /metrics (lossproof_store_damaged_rows, _points) and the dashboard's health show
    assert backend.open(readonly=True).set_aside_count() == (1, n) and n == 50
    got = stored(store)
    assert got.pop(hit) == points(*range(5, 10))
    assert got == {str(i): points(*range(10)) for i in range(SERIES) if str(i) != hit}
    # one chunk per series: every window packed, the damaged series' too
    assert backend.fetch("SELECT count(*), count(DISTINCT series_id) FROM chunks") == [(SERIES, SERIES)]
    # the writer that stored those points, told by the set-aside (another handle's) that they are
    # no longer stored: its replay of them stores them again
    res = store.write_batch(batch(0))
    assert (res.points_written, res.chunks_quarantined) == (10, 0)
    assert stored(store)[hit] == points(0, *range(5, 10))


def test_an_embedded_store_from_before_gets_the_quarantine_table(tmp_path: Path) -> None:
    """A store file written before damaged rows were set aside (no ``damaged_chunks``, same schema
    version, as the metadata table was added): readers use it as it is, the worker's writer adds the
    table when it opens it, and then sets damaged rows aside into it."""
    import sqlite3

    from lossproof.store.sqlite import SqliteStore

    db = tmp_path / "store.db"
    store = SqliteStore(db)
    for b in range(2):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    store.close()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE damaged_chunks")
    con.commit()
    con.close()
    reader = SqliteStore(db, readonly=True)
    assert len(stored(reader)) == SERIES
    assert reader.set_aside_count() == (0, 0)  # none set aside: no table yet
    reader.close()
    backend = BACKENDS["sqlite"](tmp_path)
    try:
        backend.damage_first("chunks")
        res = backend.open().write_batch(batch(0))  # (the writer adds the table when it opens)
        assert res.chunks_quarantined == 1 and len(backend.fetch(_QUARANTINED)) == 1
    finally:
        backend.close_all()


# --- found by a review (session 27) -----------------------------------------------------------------


def test_a_replay_over_two_spans_stores_again_what_a_later_span_set_aside(backend: StoreBackend) -> None:
    """A write's look-up of what is stored goes span by span (gaps over 2 h). A part read healthy
    in the first span (series a's slice) and found damaged in the second (series b's) is set aside
    whole: a's points, judged stored in the first span, are then stored nowhere unless the whole
    look-up is made again. PostgreSQL retried only the failing span and skipped a's replay."""
    a_ts = [T0 + k * 15_000 for k in range(10)]  # span 1
    b_ts = [T0 + 10 * HOUR + k * 15_000 for k in range(10)]  # span 2
    b_old = [t + 7_500 for t in b_ts]  # b's older points, compacted into a chunk
    store = backend.open()
    old = WriteBatch(series=[("t", SeriesSamples("m", {"i": "b"}, b_old, [0.0] * 10))], now_ms=T0)
    store.write_batch(old)
    compact_all(store, T0 + 30 * HOUR)
    both = WriteBatch(
        series=[
            ("t", SeriesSamples("m", {"i": "a"}, a_ts, [1.0] * 10)),
            ("t", SeriesSamples("m", {"i": "b"}, b_ts, [2.0] * 10)),
        ],
        now_ms=T0 + 11 * HOUR,
    )
    store.write_batch(both)
    [(pid, data)] = backend.fetch("SELECT id, data FROM parts")
    data = bytes(data)
    backend.damage_first("chunks")  # b's chunk
    # and in the part, b's last time (a's slice stays whole)
    b_sid = next(int(i) for i, lab in backend.fetch("SELECT id, labels_json FROM series") if '"b"' in lab)
    layout = chunks.part_layout(data[:16])
    sids, _, starts = chunks.part_directory(data, layout)
    j = int(np.flatnonzero(sids == b_sid)[0])
    at = layout.ts_offset + 8 * (int(starts[j + 1]) - 1)
    t = int.from_bytes(data[at : at + 8], "little") - 1
    backend.rewrite("parts", int(pid), data[:at] + t.to_bytes(8, "little") + data[at + 8 :])

    res = backend.open().write_batch(both)  # the replay, by a writer that must read what is stored
    assert res.chunks_quarantined == 2  # b's chunk, and the part
    got = {s.labels["i"]: [t for t, _ in s.points] for s in store.select("t", M, 0, 1 << 62)}
    assert got == {"a": a_ts, "b": b_ts}, res


def test_a_set_aside_after_an_operator_emptied_the_table_still_reaches_the_writer(tmp_path: Path) -> None:
    """The embedded writer keeps its memory of what it stored until it sees a set-aside by another
    connection (the compactor's), by the quarantine table's ids. Were they reused (no AUTOINCREMENT),
    an operator emptying the table would make the next set-aside look like none, and a replay of
    the points it took would be skipped as already stored."""
    b = SqliteBackend(tmp_path)
    try:
        worker, compactor = b.open(), b.open()
        worker.write_batch(batch(0, series=5))
        b.damage_first("parts", at=16 + 8 + 7)
        assert compact_all(compactor, T0 + 30 * HOUR) == 1
        assert worker.write_batch(batch(1, series=5)).points_written == 50  # it sees that set-aside
        con = sqlite3.connect(tmp_path / "store.db")  # the operator
        con.execute("DELETE FROM damaged_chunks")
        con.commit()
        con.close()
        b.damage_first("parts", at=16 + 8 + 7)  # batch 1's part
        assert compact_all(compactor, T0 + 60 * HOUR) == 1
        res = worker.write_batch(batch(1, series=5))  # the replay
        assert res.points_written == 50, res
        assert stored(worker) == {str(i): points(1) for i in range(5)}
    finally:
        b.close_all()
